# Mask R-CNN with QuadMamba-T on COCO, 1x (12 epochs), 8 GPUs x 2 images: mmdet's Swin recipe
# (AdamW lr 1e-4, weight decay 0.05), as VMamba and QuadMamba use.
_base_ = [
    'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', '../_base_/quadmamba_no_decay.py'
]
custom_imports = dict(imports=['quadmamba_mm'], allow_failed_imports=False)

# An ImageNet checkpoint of the same arch: trained with configs/quadmamba/, or converted from
# the upstream release with tools/model_converters/quadmamba2mm.py.
pretrained = 'checkpoints/quadmamba-t_in1k.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='QuadMamba',
        arch='t',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=[64, 128, 256, 512]))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg={{_base_.quadmamba_paramwise_cfg}})
