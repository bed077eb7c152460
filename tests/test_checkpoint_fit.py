"""Checkpoints must fit the model they are loaded into: load_from, the backbone's Pretrained
init_cfg and the tools' checkpoint arguments refuse a foreign or half-fitting checkpoint by
name, while expected partial loads (another class count, a classifier backbone in a detector)
and the documented checkpoint_fit=dict(partial=True) pass."""
import logging
import runpy
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.model import BaseModel
from mmengine.runner import Runner
from tiny import TINY_ARCH, tiny_backbone
from torch import nn
from torch.utils.data import Dataset

import quadmamba_mm  # noqa: F401  (registers QuadMamba and the hooks)
from quadmamba_mm.checkpoints.fit import (CheckpointFileError, CheckpointFitError, check_fit,
                                          resolve_policy)
from quadmamba_mm.runtime.toolbox import build_model

ROOT = Path(__file__).resolve().parents[1]
DIMS = [TINY_ARCH['embed_dims'] * 2**i for i in range(4)]


class TinyClassifier(BaseModel):
    """An mmpretrain-like classifier (``backbone.*``, ``head.fc.*``) on the tiny QuadMamba."""

    def __init__(self, num_classes: int = 2, backbone_init_cfg=None):
        super().__init__()
        self.backbone = tiny_backbone(init_cfg=backbone_init_cfg)
        self.head = nn.Module()
        self.head.fc = nn.Linear(DIMS[-1], num_classes)

    def forward(self, inputs, labels=None, mode='loss'):
        features = self.backbone(torch.stack(inputs))[-1].mean((2, 3))
        logits = self.head.fc(features)
        if mode == 'loss':
            return dict(loss=nn.functional.cross_entropy(logits, torch.stack(labels)))
        return logits


class Images(Dataset):

    def __len__(self):
        return 2

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return dict(inputs=torch.randn(3, 32, 32, generator=g), labels=torch.tensor(i % 2))


def train_one_iteration(work_dir, model, **kwargs):
    """mmengine's Runner with the fit hook, one iteration at learning rate 0 (the loaded
    weights stay as loaded)."""
    runner = Runner(
        model=model,
        work_dir=str(work_dir),
        experiment_name=f'fit-{Path(work_dir).name}',
        train_dataloader=dict(dataset=Images(), sampler=dict(type='DefaultSampler',
                                                             shuffle=False),
                              batch_size=2, num_workers=0),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.)),
        train_cfg=dict(by_epoch=False, max_iters=1),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=10, by_epoch=False,
                                           save_last=False)),
        custom_hooks=[dict(type='CheckpointFitHook')],
        default_scope='mmengine',
        **kwargs)
    runner.train()
    return runner


def resnet18_state_dict(prefix: str = '') -> dict:
    from torchvision.models import resnet18
    return {prefix + k: v for k, v in resnet18().state_dict().items()}


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """ResNet-18 checkpoints in torchvision's and mmpretrain's key layout, a garbage file,
    and checkpoints of the tiny classifier (10 classes; and its first 35% of the backbone)."""
    folder = tmp_path_factory.mktemp('checkpoints')
    made = dict(garbage=folder / 'garbage.pth', truncated=folder / 'truncated.pth')
    made['garbage'].write_bytes(b'not a checkpoint at all')
    made['resnet18'] = folder / 'resnet18.pth'
    torch.save(resnet18_state_dict(), made['resnet18'])
    made['resnet18_mmpretrain'] = folder / 'resnet18_mmpretrain.pth'
    torch.save({'state_dict': resnet18_state_dict('backbone.'), 'meta': {}},
               made['resnet18_mmpretrain'])
    torch.manual_seed(0)
    classifier = TinyClassifier(num_classes=10).state_dict()
    made['classifier'] = folder / 'classifier_10_classes.pth'
    torch.save({'state_dict': classifier, 'meta': {}}, made['classifier'])
    made['truncated'].write_bytes(made['classifier'].read_bytes()[:2000])
    first_stage = {k: v for k, v in classifier.items()
                   if k.startswith(('backbone.patch_embed.', 'backbone.stages.0.'))}
    made['first_stage'] = folder / 'first_stage.pth'
    torch.save({'state_dict': first_stage}, made['first_stage'])
    return made


def loaded(path) -> dict:
    return torch.load(path, weights_only=True)['state_dict']


def test_resnet18_as_backbone_init_cfg_is_refused_by_name(files):
    backbone = tiny_backbone(init_cfg=dict(type='Pretrained', prefix='backbone.',
                                           checkpoint=str(files['resnet18_mmpretrain'])))
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(CheckpointFitError) as error:
        backbone.init_weights()
    message = str(error.value)
    assert str(files['resnet18_mmpretrain']) in message and 'QuadMamba' in message
    assert 'none of its tensors loads into the model' in message
    assert 'unexpected (122): conv1.weight, bn1.weight' in message
    assert 'missing (' in message and 'patch_embed.conv1.weight' in message
    assert all(torch.equal(v, before[k]) for k, v in backbone.state_dict().items())

    # torchvision's own layout has no 'backbone.' keys at all.
    backbone = tiny_backbone(init_cfg=dict(type='Pretrained', prefix='backbone.',
                                           checkpoint=str(files['resnet18'])))
    with pytest.raises(CheckpointFitError, match=r"none of its keys starts with the prefix "
                       r"'backbone\.' \(its keys start with \['bn1\.', 'conv1\.', 'fc\.'"):
        backbone.init_weights()


def test_resnet18_as_load_from_is_refused_by_name(files, tmp_path):
    model = TinyClassifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointFitError) as error:
        train_one_iteration(tmp_path, model, load_from=str(files['resnet18_mmpretrain']))
    message = str(error.value)
    assert f'checkpoint {files["resnet18_mmpretrain"]} does not match the model ' \
           'TinyClassifier (backbone QuadMamba)' in message
    assert 'none of its tensors loads into the model' in message
    assert 'tensors loaded by module: backbone 0/170 (0.0%), head 0/2 (0.0%)' in message
    assert 'unexpected (122): backbone.conv1.weight' in message
    assert 'checkpoint_fit=dict(partial=True)' not in message  # it would not help
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize('name, expected', [('garbage', 'is not a torch checkpoint'),
                                            ('truncated', 'is not a torch checkpoint')])
def test_garbage_file_gets_the_tools_message(files, tmp_path, name, expected):
    path = str(files[name])
    with pytest.raises(CheckpointFileError, match=f'{path} {expected}'):
        train_one_iteration(tmp_path, TinyClassifier(), load_from=path)
    backbone = tiny_backbone(init_cfg=dict(type='Pretrained', checkpoint=path,
                                           prefix='backbone.'))
    with pytest.raises(CheckpointFileError, match=f'{path} {expected}'):
        backbone.init_weights()


def test_head_with_another_class_count_is_allowed(files, tmp_path):
    model = TinyClassifier(num_classes=2)
    head = model.head.fc.weight.detach().clone()
    train_one_iteration(tmp_path, model, load_from=str(files['classifier']))
    saved = loaded(files['classifier'])
    for key, value in model.state_dict().items():
        if key.startswith('backbone.'):
            assert torch.equal(value, saved[key]), key
    assert torch.equal(model.head.fc.weight, head)  # kept its initialisation

    report = check_fit(model, saved, 'classifier_10_classes.pth')
    assert report.allowed == ['head.fc.weight', 'head.fc.bias']
    assert report.modules['head'] == (0, 2) and report.modules['backbone'][0] == len(
        [k for k in saved if k.startswith('backbone.')])


def test_too_little_fits_unless_checkpoint_fit_partial(files, tmp_path):
    saved = loaded(files['first_stage'])
    with pytest.raises(CheckpointFitError, match=r'backbone: \d+ of its 170 tensors load, at '
                       r'least 50% needed(.|\n)*checkpoint_fit=dict\(partial=True\)'):
        train_one_iteration(tmp_path / 'strict', TinyClassifier(),
                            load_from=str(files['first_stage']))

    model = TinyClassifier()
    train_one_iteration(tmp_path / 'partial', model, load_from=str(files['first_stage']),
                        cfg=dict(checkpoint_fit=dict(partial=True)))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())

    # The same setting reaches the backbone's Pretrained init_cfg through the hook.
    init_cfg = dict(type='Pretrained', checkpoint=str(files['first_stage']), prefix='backbone.')
    with pytest.raises(CheckpointFitError, match='the model: .* at least 50% needed'):
        train_one_iteration(tmp_path / 'init_strict', TinyClassifier(backbone_init_cfg=init_cfg))
    model = TinyClassifier(backbone_init_cfg=init_cfg)
    train_one_iteration(tmp_path / 'init_partial', model,
                        cfg=dict(checkpoint_fit=dict(partial=True)))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())


def test_other_shapes_are_refused_with_the_shapes_named(files):
    other = tiny_backbone(embed_dims=24).state_dict()
    with pytest.raises(CheckpointFitError) as error:
        check_fit(tiny_backbone(), other, 'wide.pth')
    message = str(error.value)
    assert 'tensors have another shape than in the model' in message
    assert 'wrong shapes (' in message and \
        'patch_embed.conv1.weight (12, 3, 3, 3) in the checkpoint, (8, 3, 3, 3) in the model' \
        in message


def test_check_fit_settings_and_policies():
    class TimmLike(nn.Module):  # a timm model: no 'backbone', a plain 'head'

        def __init__(self, classes):
            super().__init__()
            self.stem, self.head = nn.Conv2d(3, 4, 3), nn.Linear(4, classes)

    model, other = TimmLike(10), TimmLike(1000).state_dict()
    assert check_fit(model, other, 'in1k.pth').allowed == ['head.weight', 'head.bias']
    with pytest.raises(CheckpointFitError, match='the model: 1 of its 4 tensors load, at least '
                       '80% needed'):
        check_fit(model, {'stem.weight': other['stem.weight']}, 'x.pth', allow=[r'^head\.'],
                  min_fraction=0.8)
    check_fit(model, {'stem.weight': other['stem.weight']}, 'x.pth', allow=[r'^(head|stem)\.'])
    with pytest.raises(CheckpointFitError, match='head: 0 of its 2 tensors load, at least 100% '
                       'needed'):
        check_fit(model, other, 'in1k.pth', policy='evaluate')
    with pytest.raises(CheckpointFitError, match='must hold exactly'):
        check_fit(model, dict(model.state_dict(), extra=torch.zeros(1)), 'r.pth', 'resume',
                  partial=True)  # resuming is always exact
    with pytest.raises(ValueError, match=r"unknown keys \['partail'\]"):
        resolve_policy('init', dict(partail=True))
    with pytest.raises(ValueError, match='not a regular expression'):
        resolve_policy('init', dict(allow=['head.(']))
    with pytest.raises(ValueError, match=r'min_fraction must be a number in \[0, 1\]'):
        resolve_policy('init', dict(min_fraction=50))


TINY_HEADS = {
    'configs/mask_rcnn/mask-rcnn_quadmamba-li_fpn_1x_coco.py': dict(
        model=dict(neck=dict(in_channels=DIMS, out_channels=16),
                   rpn_head=dict(in_channels=16, feat_channels=16),
                   roi_head=dict(bbox_roi_extractor=dict(out_channels=16),
                                 bbox_head=dict(in_channels=16, fc_out_channels=32),
                                 mask_roi_extractor=dict(out_channels=16),
                                 mask_head=dict(in_channels=16, conv_out_channels=16)))),
    'configs/upernet/upernet_quadmamba-t_8xb2-160k_ade20k-512x512.py': dict(
        model=dict(decode_head=dict(in_channels=DIMS, channels=16),
                   auxiliary_head=dict(in_channels=DIMS[2], channels=16))),
}


def tiny_config(name: str, **backbone) -> Config:
    """The detection or segmentation config ``name`` with the tiny backbone and heads."""
    cfg = Config.fromfile(ROOT / name)
    cfg.merge_from_dict(TINY_HEADS[name])
    cfg.model.backbone.update(arch=dict(TINY_ARCH), **backbone)
    return cfg


DET = 'configs/mask_rcnn/mask-rcnn_quadmamba-li_fpn_1x_coco.py'


def test_classifier_backbone_into_a_detector_is_allowed(files):
    cfg = tiny_config(DET)
    cfg.model.backbone.init_cfg.checkpoint = str(files['classifier'])
    detector = build_model(cfg)
    saved = loaded(files['classifier'])
    report = check_fit(detector, saved, 'classifier_10_classes.pth')  # as load_from
    assert report.modules['backbone'][0] == len([k for k in saved if k.startswith('backbone.')])
    assert report.modules['neck'][0] == 0 and report.modules['roi_head'][0] == 0
    with pytest.raises(CheckpointFitError, match=r'neck: 0 of its \d+ tensors load'):
        check_fit(detector, saved, 'classifier_10_classes.pth', policy='evaluate')

    detector.init_weights()  # through the backbone's Pretrained init_cfg
    state = detector.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items() if k.startswith('backbone.'))


@pytest.mark.parametrize('name', list(TINY_HEADS))
def test_missing_imagenet_checkpoint_warns_once_and_keeps_random_init(name, tmp_path,
                                                                      monkeypatch, files):
    monkeypatch.chdir(tmp_path)  # the configs' checkpoints/quadmamba-*_in1k.pth is not here
    cfg = tiny_config(name)
    missing = cfg.model.backbone.init_cfg.checkpoint
    assert missing.startswith('checkpoints/quadmamba-') and not Path(missing).exists()
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        model.init_weights()
    finally:
        logger.removeHandler(handler)
    about = [r.getMessage() for r in records if missing in r.getMessage()]
    assert len(about) == 1, about
    assert 'starts from random weights' in about[0] and 'quadmamba2mm.py' in about[0]
    assert 'configs/quadmamba/' in about[0]
    assert all(torch.equal(v, before[k]) for k, v in model.backbone.state_dict().items())

    # A file that is there and does not fit is refused.
    cfg = tiny_config(name, init_cfg=dict(type='Pretrained', prefix='backbone.',
                                          checkpoint=str(files['resnet18_mmpretrain'])))
    with pytest.raises(CheckpointFitError, match='does not match the model QuadMamba'):
        build_model(cfg).init_weights()


@pytest.fixture(scope='module')
def tiny_cls_config(tmp_path_factory):
    """4 images in 2 classes and the tiny classifier config of the train/test tools."""
    tmp = tmp_path_factory.mktemp('fit_tools')
    for label, base in (('dark', 40), ('bright', 200)):
        (tmp / 'data' / label).mkdir(parents=True)
        for i in range(2):
            cv2.imwrite(str(tmp / 'data' / label / f'{i}.png'), np.full((32, 32, 3), base,
                                                                        np.uint8))
    loader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                  dataset=dict(type='CustomDataset', data_root=str(tmp / 'data'), _delete_=True,
                               pipeline=[dict(type='LoadImageFromFile'), dict(type='PackInputs')]),
                  sampler=dict(type='DefaultSampler', shuffle=False))
    config = tmp / 'tiny_cls.py'
    config.write_text(f'''
_base_ = [{str(ROOT / 'configs/quadmamba/quadmamba-li_8xb128_in1k.py')!r}]
data_preprocessor = dict(num_classes=2)
model = dict(backbone=dict(arch=dict(_delete_=True, embed_dims=16, depths=(1, 1, 1, 1),
                                     ssm_ratio=1.0), drop_path_rate=0.),
             head=dict(num_classes=2, in_channels=128), train_cfg=None)
train_dataloader = {loader!r}
val_dataloader = {loader!r}
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator
train_cfg = dict(max_epochs=1)
param_scheduler = [dict(type='LinearLR', start_factor=0.5, by_epoch=True, begin=0, end=1)]
''')
    return tmp, config


def run_in_process(*args) -> str:
    """Run a tool in this process (its imports are already paid for); the message it exits
    with ('' for a clean exit)."""
    argv = sys.argv
    sys.argv = [str(a) for a in args]
    try:
        runpy.run_path(str(ROOT / args[0]), run_name='__main__')
    except SystemExit as exit_:
        return '' if exit_.code in (None, 0) else str(exit_.code)
    finally:
        sys.argv = argv
    return ''


def test_tools_refuse_a_resnet18_checkpoint(tiny_cls_config, files):
    tmp, config = tiny_cls_config
    resnet = files['resnet18_mmpretrain']
    refused = f'checkpoint {resnet} does not match the model ImageClassifier (backbone QuadMamba)'
    message = run_in_process('tools/train.py', config, '--work-dir', tmp / 'train',
                             '--cfg-options', f'load_from={resnet}')
    assert message.startswith(refused), message
    assert not (tmp / 'train' / 'epoch_1.pth').exists()
    message = run_in_process('tools/test.py', config, resnet, '--work-dir', tmp / 'test')
    assert message.startswith(refused), message
