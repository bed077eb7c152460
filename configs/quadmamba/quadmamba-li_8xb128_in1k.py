_base_ = ['./quadmamba-t_8xb128_in1k.py']

model = dict(
    backbone=dict(arch='li', drop_path_rate=0.1),
    head=dict(in_channels=384))
