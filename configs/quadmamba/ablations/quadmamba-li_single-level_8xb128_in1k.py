# Ablation of QuadMamba-Li: one quadtree level: H/2 x W/2 windows, no fine split.
_base_ = ['../quadmamba-li_8xb128_in1k.py']

model = dict(backbone=dict(quadtree_split=1))
