_base_ = ['./upernet_quadmamba-t_8xb2-160k_ade20k-512x512.py']

pretrained = 'checkpoints/quadmamba-b_in1k.pth'
model = dict(
    backbone=dict(arch='b', drop_path_rate=0.4, init_cfg=dict(checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
