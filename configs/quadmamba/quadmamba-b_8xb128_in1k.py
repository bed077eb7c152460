_base_ = ['./quadmamba-t_8xb128_in1k.py']

model = dict(
    backbone=dict(arch='b', drop_path_rate=0.3),
    head=dict(in_channels=768))
