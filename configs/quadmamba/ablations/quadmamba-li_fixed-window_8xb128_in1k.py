# Ablation of QuadMamba-Li: always refine the top-left quadrant; no locality predictor.
_base_ = ['../quadmamba-li_8xb128_in1k.py']

model = dict(backbone=dict(quadtree_fixed_window=0))
