# Segmentation demo: UperNet with QuadMamba-Li, from scratch, on the generated ADE20K-style
# shapes dataset (0 = background). BN instead of SyncBN so it also runs on a CPU.
_base_ = ['../upernet/upernet_quadmamba-t_8xb2-160k_ade20k-512x512.py']

data_root = 'data/demo/ade/'
metainfo = dict(classes=('background', 'circle', 'square', 'triangle'),
                palette=[[0, 0, 0], [220, 20, 60], [0, 128, 255], [255, 200, 0]])
crop_size = (128, 128)
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(arch='li', init_cfg=None, drop_path_rate=0.),
    decode_head=dict(in_channels=[48, 96, 192, 384], channels=128, num_classes=4,
                     norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=192, channels=64, num_classes=4, norm_cfg=norm_cfg))

pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='PackSegInputs')
]
dataset = dict(type='BaseSegDataset', data_root=data_root, metainfo=metainfo,
               img_suffix='.jpg', seg_map_suffix='.png', reduce_zero_label=False,
               pipeline=pipeline)
train_dataloader = dict(
    batch_size=4, num_workers=1,
    dataset=dict(_delete_=True, **dataset,
                 data_prefix=dict(img_path='images/training', seg_map_path='annotations/training')))
val_dataloader = dict(
    batch_size=4, num_workers=1,
    dataset=dict(_delete_=True, **dataset,
                 data_prefix=dict(img_path='images/validation',
                                  seg_map_path='annotations/validation')))
test_dataloader = val_dataloader

train_cfg = dict(type='IterBasedTrainLoop', max_iters=300, val_interval=300)
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=30, end=300, by_epoch=False)
]
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=300))
