# QuadMamba-T on ImageNet-1k, the paper's recipe: 300 epochs, AdamW lr 1e-3 at batch 1024
# (8 GPUs x 128), weight decay 0.05, 20 warm-up epochs, cosine, label smoothing 0.1,
# Mixup 0.8 / CutMix 1.0, RandAugment, random erasing.
_base_ = [
    '../_base_/models/quadmamba_in1k.py',
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
    '../_base_/quadmamba_no_decay.py',
]

train_dataloader = dict(batch_size=128)
val_dataloader = dict(batch_size=128)
test_dataloader = val_dataloader

# No weight decay on norms, biases and the state-space parameters A_logs and Ds.
optim_wrapper = dict(
    paramwise_cfg={{_base_.quadmamba_paramwise_cfg}})

# Test-time augmentation (tools/test.py --tta): the test pipeline on the image and on its
# horizontal mirror, class scores averaged.
tta_model = dict(type='AverageClsScoreTTA')
tta_pipeline = _base_.test_pipeline[:-1] + [
    dict(type='TestTimeAug',
         transforms=[[dict(type='RandomFlip', prob=0.),
                      dict(type='RandomFlip', prob=1., direction='horizontal')],
                     [_base_.test_pipeline[-1]]])
]
