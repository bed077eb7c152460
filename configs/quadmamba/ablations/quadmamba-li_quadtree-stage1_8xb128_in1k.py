# Ablation of QuadMamba-Li: quadtree blocks in stage 1 only.
_base_ = ['../quadmamba-li_8xb128_in1k.py']

model = dict(backbone=dict(quadtree_stages=(0, )))
