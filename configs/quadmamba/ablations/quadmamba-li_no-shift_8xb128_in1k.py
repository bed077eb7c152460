# Ablation of QuadMamba-Li: no omnidirectional shift.
_base_ = ['../quadmamba-li_8xb128_in1k.py']

model = dict(backbone=dict(shift=False))
