"""Unusable training samples (unreadable, truncated, missing images, missing segmentation
maps, broken annotation entries) are skipped with a warning that names the file and why,
counted and summed up per epoch; past a share of the data training stops."""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.model import BaseModel
from mmengine.registry import DATASETS, init_default_scope
from mmengine.runner import Runner

import quadmamba_mm  # noqa: F401  (registers SkipBadSamples and the hooks)
from quadmamba_mm.datasets import BadSampleWarning, SkipBadSamples, skip_bad_samples_in
from quadmamba_mm.engine import BadDataError, add_training_guards
from quadmamba_mm.engine.elastic import STOP_RECORD

from tiny import write_tiny_classifier_config

ROOT = Path(__file__).resolve().parents[1]


def image(seed: int, size=32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)


def class_folders(root: Path, n: int = 100) -> list:
    """``n`` PNG images in two class folders; returns their paths."""
    paths = []
    for i in range(n):
        path = root / ('dark' if i % 2 else 'bright') / f'{i:03d}.png'
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), image(i))
        paths.append(path)
    return paths


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def bad_files(paths: list) -> dict:
    """Three kinds of unusable file; {path: what the warning says}."""
    truncate(paths[10])
    paths[40].write_bytes(b'')
    paths[70].write_text('not an image at all')
    return {paths[10]: 'truncated image', paths[40]: 'the file is empty',
            paths[70]: 'not an image'}


def test_one_bad_image_in_100_is_skipped_by_tools_train(tmp_path):
    """tools/train.py on a class-folder dataset with one truncated image in 100 (DataLoader
    worker processes read them): training completes, the file is named once with its
    reason, and the epoch summary counts it."""
    paths = class_folders(tmp_path / 'data')
    truncate(paths[37])
    config = write_tiny_classifier_config(tmp_path / 'tiny_cls.py', tmp_path / 'data',
                                          batch_size=25, num_workers=1)
    work = tmp_path / 'work'
    result = subprocess.run([sys.executable, 'tools/train.py', str(config), '--work-dir',
                             str(work)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    warned = [line for line in log.splitlines() if 'BadSampleWarning' in line]
    assert len(warned) == 1 and f'{paths[37]}: unusable image: truncated image' in warned[0]
    assert f'epoch 1: 1 unusable training samples skipped (1.00% of 100' in log
    assert (work / 'epoch_1.pth').exists()


class PixelClassifier(BaseModel):
    """The smallest model for class-folder images: mean pixel -> 2 logits."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        x = torch.stack([i.float().mean((1, 2)) / 255 for i in inputs])
        logits = self.linear(x)
        if mode != 'loss':
            return logits
        labels = torch.stack([s.gt_label for s in data_samples]).reshape(-1)
        return dict(loss=torch.nn.functional.cross_entropy(logits, labels))


def train_in_process(tmp_path, data_root: Path, **bad_data_cfg):
    cfg = Config(dict(
        work_dir=str(tmp_path / 'work'),
        train_dataloader=dict(
            batch_size=10, num_workers=0,
            sampler=dict(type='DefaultSampler', shuffle=False),
            dataset=dict(type='CustomDataset', data_root=str(data_root),
                         pipeline=[dict(type='LoadImageFromFile'), dict(type='PackInputs')])),
        **({'bad_data_cfg': bad_data_cfg} if bad_data_cfg else {})))
    add_training_guards(cfg)  # what tools/train.py does
    runner = Runner(model=PixelClassifier(), work_dir=cfg.work_dir,
                    train_dataloader=cfg.train_dataloader,
                    optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
                    train_cfg=dict(by_epoch=True, max_epochs=2),
                    custom_hooks=cfg.custom_hooks, default_scope='mmpretrain',
                    default_hooks=dict(logger=dict(type='LoggerHook', interval=1)))
    return runner


def test_past_the_share_training_stops_with_a_clear_error(tmp_path):
    """Unusable files at samples 11, 41 and 71 of 100 (truncated, empty, not an image) with
    the default limit of 1%: training stops at the second, in iteration 3 of epoch 1, with an
    error that names both files."""
    bad = list(bad_files(class_folders(tmp_path / 'data')).items())
    runner = train_in_process(tmp_path, tmp_path / 'data')
    with pytest.warns(BadSampleWarning) as warned, pytest.raises(BadDataError) as error:
        runner.train()
    message = str(error.value)
    assert message.startswith('Training stopped at iteration 3 (epoch 1): 2 of 100 training '
                              'samples (2.00%) are unusable, more than the allowed 1.00%')
    for path, reason in bad[:2]:
        assert str(path) in message
        assert any(str(w.message).startswith(f'{path}: unusable image: ') and
                   reason in str(w.message) for w in warned)
    assert str(bad[2][0]) not in message
    assert message in (tmp_path / 'work' / STOP_RECORD).read_text()


def test_a_higher_share_lets_training_finish_and_sums_up_each_epoch(tmp_path, capsys):
    bad = bad_files(class_folders(tmp_path / 'data'))
    runner = train_in_process(tmp_path, tmp_path / 'data', max_share=0.05)
    with pytest.warns(BadSampleWarning):
        runner.train()
    hook = next(h for h in runner.hooks if type(h).__name__ == 'BadSampleHook')
    assert hook.skipped == []  # each epoch's records were summed up and cleared
    log = (Path(runner.log_dir) / f'{runner.timestamp}.log').read_text()
    for epoch in (1, 2):
        line = next(line for line in log.splitlines() if f'epoch {epoch}: ' in line)
        assert '3 unusable training samples skipped (3.00% of 100' in line
        assert all(str(path) in line for path in bad)


def coco(root: Path, broken_image: int, broken_annotation: int, missing_image: int) -> Path:
    """6 COCO images of 64x64 with one box each; one image file truncated, one missing,
    one annotation entry with a 3-number box."""
    (root / 'images').mkdir(parents=True)
    images, annotations = [], []
    for i in range(6):
        name = f'{i:02d}.jpg'
        cv2.imwrite(str(root / 'images' / name), image(i, 64))
        images.append(dict(id=i, file_name=name, width=64, height=64))
        box = [8, 8, 20, 20] if i != broken_annotation else [8, 8, 20]
        annotations.append(dict(id=100 + i, image_id=i, category_id=1, bbox=box, area=400,
                                iscrowd=0))
    truncate(root / 'images' / f'{broken_image:02d}.jpg')
    (root / 'images' / f'{missing_image:02d}.jpg').unlink()
    ann_file = root / 'instances.json'
    ann_file.write_text(json.dumps(dict(images=images, annotations=annotations,
                                        categories=[dict(id=1, name='box')])))
    return ann_file


def test_coco_broken_image_and_annotation_entry(tmp_path):
    """A truncated JPEG, a missing one and an annotation entry with a malformed box: without
    the wrapper the dataset does not even load (and says nothing about which entry); with
    it, the entry's image is dropped and named at load time, the truncated and the missing
    image are skipped when drawn, and every sample the dataset gives is a good one."""
    ann_file = coco(tmp_path, broken_image=2, broken_annotation=4, missing_image=5)
    init_default_scope('mmdet')
    cfg = dict(type='CocoDataset', data_root=str(tmp_path), ann_file=str(ann_file),
               data_prefix=dict(img='images/'), metainfo=dict(classes=('box', )),
               filter_cfg=dict(filter_empty_gt=True),
               pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                         dict(type='PackDetInputs')])
    with pytest.raises(ValueError, match='not enough values to unpack'):
        DATASETS.build(cfg)

    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter('always')
        dataset = DATASETS.build(skip_bad_samples_in(cfg))
        assert isinstance(dataset, SkipBadSamples) and len(dataset) == 5
        loaded = [dataset[i] for i in range(len(dataset))]
    names = [str(w.message) for w in warned if issubclass(w.category, BadSampleWarning)]
    assert any(n.startswith(f'{tmp_path / "images" / "04.jpg"}: broken annotation entry (id '
                            '104): ValueError: not enough values to unpack')
               and 'dropped it from the training set' in n for n in names)
    assert any(n.startswith(f'{tmp_path / "images" / "02.jpg"}: unusable image: truncated')
               and 'another sample is drawn' in n for n in names)
    assert any(n.startswith(f'{tmp_path / "images" / "05.jpg"}: unusable image: cannot open '
                            'the file: No such file or directory') for n in names)
    assert all(s['data_samples'].img_path[-6:] not in ('02.jpg', '05.jpg') for s in loaded)
    assert all(s['inputs'].shape == (3, 64, 64) for s in loaded)
    records, _ = dataset.records.read()
    assert [r['stage'] for r in records].count('load') == 1
    assert {r['sample'] for r in records if r['stage'] == 'fetch'} == {
        str(tmp_path / 'images' / '02.jpg'), str(tmp_path / 'images' / '05.jpg')}


def test_missing_segmentation_map_is_named(tmp_path):
    for folder in ('img', 'ann'):
        (tmp_path / folder).mkdir()
    for i in range(4):
        cv2.imwrite(str(tmp_path / 'img' / f'{i}.jpg'), image(i))
        if i != 1:
            cv2.imwrite(str(tmp_path / 'ann' / f'{i}.png'), np.zeros((32, 32), np.uint8))
    init_default_scope('mmseg')
    cfg = dict(type='BaseSegDataset', data_root=str(tmp_path),
               data_prefix=dict(img_path='img', seg_map_path='ann'), img_suffix='.jpg',
               seg_map_suffix='.png', metainfo=dict(classes=('a', 'b')),
               pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                         dict(type='PackSegInputs')])
    dataset = DATASETS.build(skip_bad_samples_in(cfg))
    with pytest.warns(BadSampleWarning) as warned:
        samples = [dataset[i] for i in range(4)]
    assert len(samples) == 4
    [message] = {str(w.message) for w in warned}
    assert message.startswith(f'{tmp_path / "ann" / "1.png"}: unusable segmentation map: '
                              'cannot open the file: No such file or directory')


@pytest.mark.parametrize('config', [
    'configs/demo/quadmamba-li_shapes.py',
    'configs/demo/mask-rcnn_quadmamba-li_fpn_shapes.py',
    'configs/demo/upernet_quadmamba-li_shapes-128x128.py',
    'configs/quadmamba/quadmamba-t_8xb128_in1k.py',
    'configs/mask_rcnn/mask-rcnn_quadmamba-t_fpn_ms-3x_coco.py',
    'configs/upernet/upernet_quadmamba-t_8xb2-160k_ade20k-512x512.py',
])
def test_tools_guard_every_config(config):
    """tools/train.py wraps the training dataset of our configs and adds both guards;
    bad_data_cfg=None / nonfinite_loss_cfg=None turn them off."""
    cfg = Config.fromfile(str(ROOT / config))
    add_training_guards(cfg)
    dataset = cfg.train_dataloader.dataset
    while dataset.type in ('RepeatDataset', 'ClassBalancedDataset', 'ConcatDataset'):
        dataset = dataset.dataset
    assert dataset.type == 'SkipBadSamples' and 'pipeline' in dataset.dataset
    assert {'BadSampleHook', 'NonFiniteLossHook'} <= {h['type'] for h in cfg.custom_hooks}
    assert cfg.val_dataloader is None or cfg.val_dataloader.dataset.type != 'SkipBadSamples'

    off = Config.fromfile(str(ROOT / config))
    off.bad_data_cfg = off.nonfinite_loss_cfg = None
    add_training_guards(off)
    assert 'SkipBadSamples' not in str(off.train_dataloader)
    assert not {'BadSampleHook', 'NonFiniteLossHook'} & {h['type'] for h in off.custom_hooks}


def test_wrapper_keeps_the_dataset_picklable(tmp_path):
    """DataLoader workers started with spawn receive the dataset pickled."""
    import pickle
    class_folders(tmp_path / 'data', n=4)
    init_default_scope('mmpretrain')
    dataset = DATASETS.build(skip_bad_samples_in(dict(
        type='CustomDataset', data_root=str(tmp_path / 'data'),
        pipeline=[dict(type='LoadImageFromFile'), dict(type='PackInputs')])))
    copy = pickle.loads(pickle.dumps(dataset))
    assert len(copy) == 4 and copy.records.path == dataset.records.path
    assert copy[0]['inputs'].shape == (3, 32, 32) and copy.metainfo == dataset.metainfo
    assert os.path.exists(dataset.records.path)
