# Mask R-CNN with QuadMamba-Li on your own COCO-format instance segmentation data. Copy this
# file and edit the lines marked EDIT.
#
#   data/custom_coco/annotations/train.json    COCO instances files: images, annotations with
#   data/custom_coco/annotations/val.json      bbox and segmentation (polygons or RLE), and
#   data/custom_coco/train/*.jpg               categories whose names are the `classes` below
#   data/custom_coco/val/*.jpg
#
#   python tools/train.py configs/mask_rcnn/mask-rcnn_quadmamba-li_fpn_custom-coco.py
#
# For QuadMamba-T or -S, inherit mask-rcnn_quadmamba-{t,s}_fpn_1x_coco.py instead.
_base_ = ['./mask-rcnn_quadmamba-li_fpn_1x_coco.py']

data_root = 'data/custom_coco/'  # EDIT
train_ann, train_images = 'annotations/train.json', 'train/'  # EDIT: relative to data_root
val_ann, val_images = 'annotations/val.json', 'val/'  # EDIT
# EDIT: the category names of the annotation files (mmdet matches them by name; the order
# here is the label order). A palette is optional (random colours without one).
classes = ('cat', 'dog')
metainfo = dict(classes=classes)
# EDIT: the image scale (longer side, shorter side) images are resized to, keeping their
# aspect ratio. Use about your images' size for small images; at least 32 per side.
img_scale = (1333, 800)
batch_size = 2  # EDIT: images per GPU
max_epochs = 12  # EDIT
lr_steps = [8, 11]  # EDIT: the epochs the learning rate drops at, below max_epochs
# EDIT: the ImageNet checkpoint of the backbone (trained with configs/quadmamba/ or converted);
# None trains the backbone from scratch too.
pretrained = 'checkpoints/quadmamba-li_in1k.pth'

# Required by the new class count: both heads predict len(classes) classes.
model = dict(
    backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')
                  if pretrained else None),
    roi_head=dict(bbox_head=dict(num_classes=len(classes)),
                  mask_head=dict(num_classes=len(classes))))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=batch_size,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file=train_ann,
                 data_prefix=dict(img=train_images), pipeline=train_pipeline))
val_dataloader = dict(
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file=val_ann,
                 data_prefix=dict(img=val_images), pipeline=test_pipeline))
test_dataloader = val_dataloader
# The COCO evaluator reads the annotation file itself.
val_evaluator = dict(ann_file=data_root + val_ann)
test_evaluator = val_evaluator

# The base's AdamW (lr 1e-4 for a total batch of 16, weight decay 0.05); mmdet's schedule:
# 500 warm-up iterations, then steps at lr_steps.
auto_scale_lr = dict(base_batch_size=16)
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=lr_steps,
         gamma=0.1)
]
