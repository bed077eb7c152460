_base_ = ['./mask-rcnn_quadmamba-t_fpn_ms-3x_coco.py']

pretrained = 'checkpoints/quadmamba-li_in1k.pth'
model = dict(
    backbone=dict(arch='li', drop_path_rate=0.1, init_cfg=dict(checkpoint=pretrained)),
    neck=dict(in_channels=[48, 96, 192, 384]))
