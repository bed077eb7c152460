# Ablation of QuadMamba-Li: levels H/4 x W/4 (coarse) and H/8 x W/8 (fine).
_base_ = ['../quadmamba-li_8xb128_in1k.py']

model = dict(backbone=dict(quadtree_grid=4))
