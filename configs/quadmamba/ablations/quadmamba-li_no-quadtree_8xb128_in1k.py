# Ablation of QuadMamba-Li: plain 4-direction cross scan in every stage.
_base_ = ['../quadmamba-li_8xb128_in1k.py']

model = dict(backbone=dict(quadtree_stages=()))
