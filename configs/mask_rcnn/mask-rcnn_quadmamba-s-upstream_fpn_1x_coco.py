# Mask R-CNN with QuadMamba-S on COCO, 1x, initialised from the released QuadMamba-v3 ImageNet
# weights (the only public ones), converted with tools/model_converters/quadmamba2mm.py:
#
#   .venv/bin/python tools/model_converters/quadmamba2mm.py QUADMAMBA_V3.pth \
#       checkpoints/quadmamba-s-upstream_in1k.pth
#
# Those weights were trained with the released scan layout, so the backbone uses it too.
# scan_layout='upstream' needs input sides divisible by 32: the data preprocessor of the base
# (mmdet's DetDataPreProcessor, pad_size_divisor=32) pads every batch to multiples of 32, in
# training and in testing.
_base_ = ['./mask-rcnn_quadmamba-s_fpn_1x_coco.py']

pretrained = 'checkpoints/quadmamba-s-upstream_in1k.pth'
model = dict(
    data_preprocessor=dict(pad_size_divisor=32),
    backbone=dict(scan_layout='upstream', init_cfg=dict(checkpoint=pretrained)))
