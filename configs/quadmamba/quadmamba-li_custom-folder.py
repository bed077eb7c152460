# QuadMamba-Li on your own classification data: ImageNet-style class folders, any image size,
# any number of classes. Copy this file and edit the lines marked EDIT.
#
#   data/custom/train/<class name>/*.jpg      one folder per class; the sorted folder names
#   data/custom/val/<class name>/*.jpg        are the classes (the same folders in both)
#
#   python tools/train.py configs/quadmamba/quadmamba-li_custom-folder.py
#   python tools/test.py configs/quadmamba/quadmamba-li_custom-folder.py CKPT [--tta]
#
# For another arch, inherit its config instead (quadmamba-{t,s,b}_8xb128_in1k.py) and set
# head.in_channels as that config does.
_base_ = ['./quadmamba-li_8xb128_in1k.py']

data_root = 'data/custom/'  # EDIT: the folder that holds train/ and val/
num_classes = 10  # EDIT: the number of class folders
# EDIT: the square side the model sees. Images of any size are cropped (training) or resized
# and centre-cropped (testing) to it. At least the backbone's minimum input: 32 for every
# QuadMamba config here except the levels-4-8 ablation (64). For images smaller than 224 use
# about their own size (e.g. 32 for 32x32 images).
crop_size = 224
batch_size = 64  # EDIT: images per GPU
max_epochs = 100  # EDIT
warmup_epochs = 5  # EDIT: from 1 to max_epochs - 1 (the cosine decay runs after it)
# EDIT: fine-tune from an ImageNet checkpoint (backbone weights only, the head is new), e.g.
# 'checkpoints/quadmamba-li_in1k.pth'; None trains from scratch.
pretrained = None

# Required by the new class count: the head, and the one-hot labels that Mixup/CutMix make
# in the data preprocessor.
data_preprocessor = dict(num_classes=num_classes)
model = dict(
    backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')
                  if pretrained else None),
    head=dict(num_classes=num_classes))

# Pipelines at crop_size (the in1k base crops to 224 and resizes test images to 256). The
# base's RandAugment and RandomErasing are left out; its Mixup/CutMix (model.train_cfg) stay:
# set model.train_cfg=None to train without them.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=crop_size, backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=crop_size * 256 // 224, edge='short', backend='pillow',
         interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=crop_size),
    dict(type='PackInputs'),
]
# tools/test.py --tta: this test pipeline on the image and on its mirror, scores averaged.
tta_pipeline = test_pipeline[:-1] + [
    dict(type='TestTimeAug',
         transforms=[[dict(type='RandomFlip', prob=0.),
                      dict(type='RandomFlip', prob=1., direction='horizontal')],
                     [test_pipeline[-1]]])
]

# _delete_=True: the base's ImageNet dataset takes split/ann_file arguments that CustomDataset
# does not; the class folders replace it whole.
train_dataloader = dict(
    batch_size=batch_size,
    dataset=dict(_delete_=True, type='CustomDataset', data_root=data_root, data_prefix='train',
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=batch_size,
    dataset=dict(_delete_=True, type='CustomDataset', data_root=data_root, data_prefix='val',
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
# Top-5 accuracy needs at least 5 classes.
val_evaluator = dict(type='Accuracy', topk=(1, 5) if num_classes >= 5 else (1, ))
test_evaluator = val_evaluator

# AdamW at 5e-4 for a total batch of 64 (tools/train.py --auto-scale-lr scales it linearly to
# the total batch you run with), linear warm-up, cosine decay to the last epoch.
optim_wrapper = dict(optimizer=dict(lr=5e-4))
auto_scale_lr = dict(base_batch_size=64)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=warmup_epochs,
         end=max_epochs)
]
train_cfg = dict(max_epochs=max_epochs)
