# Classification demo: QuadMamba-Li, from scratch, on the generated ImageNet-style shapes
# class folders (3 classes, 128x128 images).
_base_ = ['../quadmamba/quadmamba-li_8xb128_in1k.py']

data_root = 'data/demo/imagenet/'
data_preprocessor = dict(num_classes=3)
model = dict(backbone=dict(drop_path_rate=0.), head=dict(num_classes=3), train_cfg=None)

pipeline = [dict(type='LoadImageFromFile'), dict(type='RandomFlip', prob=0.5, direction='horizontal'),
            dict(type='PackInputs')]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
train_dataloader = dict(
    batch_size=16, num_workers=1,
    dataset=dict(_delete_=True, type='CustomDataset', data_root=data_root, data_prefix='train',
                 pipeline=pipeline))
val_dataloader = dict(
    batch_size=16, num_workers=1,
    dataset=dict(_delete_=True, type='CustomDataset', data_root=data_root, data_prefix='val',
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator

train_cfg = dict(max_epochs=10)
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=20),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=10, eta_min=1e-5)
]
default_hooks = dict(logger=dict(interval=5))
