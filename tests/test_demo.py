"""The embedded data and the demo configs: each toolbox reads the data, each demo trains."""
import re
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from mmengine.config import Config
from mmengine.registry import DATASETS, init_default_scope

from quadmamba_mm.datasets import make_all

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / 'configs' / 'demo'


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_all(tmp_path_factory.mktemp('demo_data'), num_train=8, num_val=4, size=128)


def test_generation_is_deterministic(tmp_path, data):
    again = make_all(tmp_path / 'again', num_train=8, num_val=4, size=128)
    files = sorted(p.relative_to(data) for p in data.rglob('*') if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob('*') if p.is_file())
    for name in files:
        assert (data / name).read_bytes() == (again / name).read_bytes(), name


def overrides(data):
    return {
        'mask-rcnn_quadmamba-li_fpn_shapes.py': [
            f'train_dataloader.dataset.data_root={data}/coco/',
            f'val_dataloader.dataset.data_root={data}/coco/',
            f'test_dataloader.dataset.data_root={data}/coco/',
            f'val_evaluator.ann_file={data}/coco/annotations/instances_val.json',
            f'test_evaluator.ann_file={data}/coco/annotations/instances_val.json',
            'train_cfg.max_epochs=1', 'train_cfg.val_interval=1'],
        'upernet_quadmamba-li_shapes-128x128.py': [
            f'train_dataloader.dataset.data_root={data}/ade/',
            f'val_dataloader.dataset.data_root={data}/ade/',
            f'test_dataloader.dataset.data_root={data}/ade/',
            'train_cfg.max_iters=2', 'train_cfg.val_interval=2'],
        'quadmamba-li_shapes.py': [
            f'train_dataloader.dataset.data_root={data}/imagenet/',
            f'val_dataloader.dataset.data_root={data}/imagenet/',
            f'test_dataloader.dataset.data_root={data}/imagenet/',
            'train_cfg.max_epochs=1'],
    }


@pytest.mark.parametrize('config', ['mask-rcnn_quadmamba-li_fpn_shapes.py',
                                    'upernet_quadmamba-li_shapes-128x128.py',
                                    'quadmamba-li_shapes.py'])
def test_toolbox_reads_the_data(data, config):
    cfg = Config.fromfile(DEMO / config)
    cfg.merge_from_dict(dict(o.split('=', 1) for o in overrides(data)[config]))
    init_default_scope(cfg.default_scope)
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    assert len(dataset) > 0
    sample = dataset[0]
    assert sample['inputs'].shape[-2:] == (128, 128)


@pytest.mark.parametrize('config', ['mask-rcnn_quadmamba-li_fpn_shapes.py',
                                    'upernet_quadmamba-li_shapes-128x128.py',
                                    'quadmamba-li_shapes.py'])
def test_demo_config_trains_and_evaluates(tmp_path, data, config):
    result = subprocess.run(
        [sys.executable, 'tools/train.py', str(DEMO / config), '--work-dir', str(tmp_path),
         '--cfg-options', *overrides(data)[config]],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    # The evaluation of this config's own task ran and logged a number.
    metric = {'mask-rcnn': r'coco/bbox_mAP: ', 'upernet': r'mIoU: ',
              'quadmamba-li': r'accuracy/top1: '}[config.split('_')[0]]
    values = [float(v) for v in re.findall(metric + r'(-?[0-9.]+)', log)]
    assert values and all(v == v and v >= 0 for v in values), log[-2000:]

    # The trained checkpoint through the inference tool, on a folder of images.
    checkpoint = (tmp_path / 'last_checkpoint').read_text().strip()
    images = {'mask-rcnn': data / 'coco' / 'val', 'upernet': data / 'ade' / 'images' / 'validation',
              'quadmamba-li': data / 'imagenet' / 'val' / 'circle'}[config.split('_')[0]]
    result = subprocess.run(
        [sys.executable, 'tools/inference.py', str(DEMO / config), checkpoint, str(images),
         '--out-dir', str(tmp_path / 'inference')],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    count = len([p for p in images.iterdir() if p.is_file()])
    assert f'{count} images; outputs in' in result.stdout
    assert len(list((tmp_path / 'inference').rglob('*.png')) +
               list((tmp_path / 'inference').rglob('*.jpg'))) >= count


def test_visualize_quadtree_tool(tmp_path, data):
    image = sorted((data / 'coco' / 'val').glob('*.png'))[0]
    result = subprocess.run(
        [sys.executable, 'tools/visualize_quadtree.py', str(DEMO / 'mask-rcnn_quadmamba-li_fpn_shapes.py'),
         'none', str(image), '--out-dir', str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    drawn = cv2.imread(str(tmp_path / f'{image.stem}_quadtree.png'))
    # The input plus one panel per quadtree block (QuadMamba-Li: 2 stages x 2 blocks).
    assert drawn.shape == (128, 128 * 5, 3)
