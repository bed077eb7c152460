_base_ = ['./mask-rcnn_quadmamba-t_fpn_1x_coco.py']

pretrained = 'checkpoints/quadmamba-s_in1k.pth'
model = dict(
    backbone=dict(arch='s', drop_path_rate=0.2, init_cfg=dict(checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
