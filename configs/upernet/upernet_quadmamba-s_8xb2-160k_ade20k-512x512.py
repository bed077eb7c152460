_base_ = ['./upernet_quadmamba-t_8xb2-160k_ade20k-512x512.py']

pretrained = 'checkpoints/quadmamba-s_in1k.pth'
model = dict(
    backbone=dict(arch='s', drop_path_rate=0.3, init_cfg=dict(checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
