# UperNet with QuadMamba-T on your own semantic segmentation data in mmseg's folder format.
# Copy this file and edit the lines marked EDIT.
#
#   data/custom_seg/images/training/*.jpg         images
#   data/custom_seg/annotations/training/*.png    one label map per image, same file stem:
#   data/custom_seg/images/validation/*.jpg       8-bit, pixel value = class index
#   data/custom_seg/annotations/validation/*.png  (255 = ignored)
#
#   python tools/train.py configs/upernet/upernet_quadmamba-t_custom-seg.py
#   python tools/test.py configs/upernet/upernet_quadmamba-t_custom-seg.py CKPT [--tta]
#
# For QuadMamba-S or -B, inherit upernet_quadmamba-{s,b}_8xb2-160k_ade20k-512x512.py instead.
_base_ = ['./upernet_quadmamba-t_8xb2-160k_ade20k-512x512.py']

data_root = 'data/custom_seg/'  # EDIT
img_suffix, seg_map_suffix = '.jpg', '.png'  # EDIT
# EDIT: the class names, in label order, and one RGB colour per class for drawing.
classes = ('background', 'foreground')
palette = [[0, 0, 0], [255, 0, 0]]
# EDIT: True when label 0 means "unlabelled" and is not a class (ADE20K's convention): labels
# are then shifted down by one and 0 becomes 255 (ignored); `classes` lists the others.
reduce_zero_label = False
# EDIT: training crop (height, width) and the scale test images are resized to (longer side,
# shorter side, aspect ratio kept). Both at least 32 per side.
crop_size = (512, 512)
img_scale = (2048, 512)
batch_size = 2  # EDIT: images per GPU
max_iters = 40000  # EDIT
warmup_iters = 1500  # EDIT: below max_iters
val_interval = 4000  # EDIT: also the checkpoint interval
# EDIT: the ImageNet checkpoint of the backbone (trained with configs/quadmamba/ or converted);
# None trains the backbone from scratch too.
pretrained = 'checkpoints/quadmamba-t_in1k.pth'

metainfo = dict(classes=classes, palette=palette)
# Required by the new class count: both heads predict len(classes) classes. Training crops
# are padded to crop_size by the data preprocessor.
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')
                  if pretrained else None),
    decode_head=dict(num_classes=len(classes)),
    auxiliary_head=dict(num_classes=len(classes)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=reduce_zero_label),
    dict(type='RandomResize', scale=img_scale, ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=reduce_zero_label),
    dict(type='PackSegInputs')
]
# (tools/test.py --tta uses the base's multi-scale and flip pipeline, scales relative to each
# image's own size.)

# _delete_=True: the base's ADE20KDataset fixes its classes and suffixes; BaseSegDataset takes
# them from here.
dataset = dict(type='BaseSegDataset', data_root=data_root, metainfo=metainfo,
               img_suffix=img_suffix, seg_map_suffix=seg_map_suffix,
               reduce_zero_label=reduce_zero_label)
train_dataloader = dict(
    batch_size=batch_size,
    dataset=dict(_delete_=True, **dataset, pipeline=train_pipeline,
                 data_prefix=dict(img_path='images/training',
                                  seg_map_path='annotations/training')))
val_dataloader = dict(
    dataset=dict(_delete_=True, **dataset, pipeline=test_pipeline,
                 data_prefix=dict(img_path='images/validation',
                                  seg_map_path='annotations/validation')))
test_dataloader = val_dataloader

# The base's AdamW (lr 6e-5 for a total batch of 16): linear warm-up, then poly decay to 0.
train_cfg = dict(max_iters=max_iters, val_interval=val_interval)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=warmup_iters),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=warmup_iters, end=max_iters,
         by_epoch=False)
]
default_hooks = dict(checkpoint=dict(interval=val_interval))
