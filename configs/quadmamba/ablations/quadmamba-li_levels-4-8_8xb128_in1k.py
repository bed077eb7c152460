# Ablation of QuadMamba-Li: levels H/4 x W/4 (coarse) and H/8 x W/8 (fine).
# Minimum input size: 64x64 (the other configs take 32x32). Stage 2 runs at stride 8 and
# needs 4 coarse x 2 fine = 8 tokens per side; a smaller input raises a ValueError.
_base_ = ['../quadmamba-li_8xb128_in1k.py']

model = dict(backbone=dict(quadtree_grid=4))
