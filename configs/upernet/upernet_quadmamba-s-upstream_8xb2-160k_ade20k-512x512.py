# UperNet with QuadMamba-S on ADE20K, 160k iterations at 512x512, initialised from the released
# QuadMamba-v3 ImageNet weights (the only public ones), converted with
# tools/model_converters/quadmamba2mm.py:
#
#   .venv/bin/python tools/model_converters/quadmamba2mm.py QUADMAMBA_V3.pth \
#       checkpoints/quadmamba-s-upstream_in1k.pth
#
# Those weights were trained with the released scan layout, so the backbone uses it too.
# scan_layout='upstream' needs input sides divisible by 32. Training crops are 512x512 (smaller
# images are padded to 512x512 by the data preprocessor). Testing resizes to a short side of
# 512 with the aspect ratio kept (e.g. 512x683), so the data preprocessor pads test images to
# multiples of 32 as well; the prediction is cropped back to the image.
_base_ = ['./upernet_quadmamba-s_8xb2-160k_ade20k-512x512.py']

pretrained = 'checkpoints/quadmamba-s-upstream_in1k.pth'
model = dict(
    data_preprocessor=dict(test_cfg=dict(size_divisor=32)),
    backbone=dict(scan_layout='upstream', init_cfg=dict(checkpoint=pretrained)))
