"""The own-data recipes: each, edited where it says EDIT, trains on generated data and
evaluates; --tta runs with the shipped test-time-augmentation settings; the classification
configs take exactly the input sizes they state."""
import pickle
import re
import runpy
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

import quadmamba_mm  # noqa: F401  (allow-lists the Runner's checkpoint types)
from quadmamba_mm.datasets import CLASSES, make_all
from quadmamba_mm.runtime.toolbox import build_model

ROOT = Path(__file__).resolve().parents[1]
TINY_ARCH = dict(_delete_=True, embed_dims=8, depths=(1, 1, 1, 1), ssm_ratio=1.0)
# Smaller models than the recipes' (not one of their EDIT settings): only for speed.
TINY_MODEL = {
    'mmpretrain': dict(backbone=dict(arch=TINY_ARCH, drop_path_rate=0.), head=dict(in_channels=64)),
    'mmdet': dict(
        backbone=dict(arch=TINY_ARCH, drop_path_rate=0.),
        neck=dict(in_channels=[8, 16, 32, 64], out_channels=16),
        rpn_head=dict(in_channels=16, feat_channels=16),
        roi_head=dict(bbox_roi_extractor=dict(out_channels=16),
                      bbox_head=dict(in_channels=16, fc_out_channels=32),
                      mask_roi_extractor=dict(out_channels=16),
                      mask_head=dict(in_channels=16, conv_out_channels=16)),
        train_cfg=dict(rpn_proposal=dict(nms_pre=200, max_per_img=100),
                       rcnn=dict(sampler=dict(num=32))),
        test_cfg=dict(rpn=dict(nms_pre=100, max_per_img=50), rcnn=dict(max_per_img=5))),
    'mmseg': dict(
        backbone=dict(arch=TINY_ARCH, drop_path_rate=0.),
        decode_head=dict(in_channels=[8, 16, 32, 64], channels=16, norm_cfg=dict(type='BN')),
        auxiliary_head=dict(in_channels=32, channels=16, norm_cfg=dict(type='BN'))),
}
LOADER = dict(num_workers=0, persistent_workers=False)


@pytest.fixture(autouse=True)
def one_thread():
    """Models this small train faster on one thread (more only wait for each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_all(tmp_path_factory.mktemp('recipe_data'), num_train=4, num_val=2, size=64)


def marked_for_editing(lines: list, index: int) -> bool:
    """Line ``index`` carries ``# EDIT``, or belongs to a group of lines (no blank line
    between) under a comment that starts with ``# EDIT``."""
    if '# EDIT' in lines[index]:
        return True
    above = index - 1
    while above >= 0 and lines[above].strip():
        if lines[above].startswith('# EDIT'):
            return True
        above -= 1
    return False


def edit_recipe(recipe: str, out: Path, edits: dict) -> Path:
    """A copy of ``recipe`` with its settings marked EDIT set as a user sets them: ``edits``
    maps each left-hand side (``name`` or ``a, b``) to the new value. Each must be one
    assignment the recipe marks EDIT, so a renamed or unmarked setting fails here."""
    base = (ROOT / recipe).parent
    lines = (ROOT / recipe).read_text().splitlines()
    for name, value in edits.items():
        found = [i for i, line in enumerate(lines) if line.startswith(f'{name} = ')]
        assert len(found) == 1 and marked_for_editing(lines, found[0]), \
            f'{recipe} has no EDIT setting {name}'
        lines[found[0]] = f'{name} = {value!r}' if not isinstance(value, str) else \
            f'{name} = {value}'
    text = '\n'.join(lines) + '\n'
    text = re.sub(r"_base_ = \['\./(.+?)'\]", lambda m: f'_base_ = [{str(base / m[1])!r}]', text)
    out.write_text(text)
    return out


def tiny_child(path: Path, toolbox: str) -> Path:
    """A config inheriting ``path`` with the tiny model and in-process data loading."""
    child = path.with_name(f'{path.stem}_tiny.py')
    child.write_text(f'''_base_ = [{str(path)!r}]
model = {TINY_MODEL[toolbox]!r}
train_dataloader = {LOADER!r}
val_dataloader = {LOADER!r}
test_dataloader = {LOADER!r}
default_hooks = dict(logger=dict(interval=1))
randomness = dict(seed=0)
''')
    return child


def run_config(path: Path, work_dir: Path) -> Config:
    cfg = Config.fromfile(str(path))
    cfg.work_dir = str(work_dir)
    return cfg


def run_test_tool(*args) -> None:
    argv = sys.argv
    sys.argv = ['tools/test.py', *map(str, args)]
    try:
        runpy.run_path(str(ROOT / 'tools' / 'test.py'), run_name='__main__')
    finally:
        sys.argv = argv


def test_classification_recipe_trains_evaluates_and_runs_tta(tmp_path, data):
    path = edit_recipe('configs/quadmamba/quadmamba-li_custom-folder.py', tmp_path / 'cls.py', {
        'data_root': repr(f'{data}/imagenet/'), 'num_classes': len(CLASSES), 'crop_size': 32,
        'batch_size': 4, 'max_epochs': 2, 'warmup_epochs': 1})
    path = tiny_child(path, 'mmpretrain')
    cfg = run_config(path, tmp_path / 'work')
    assert cfg.model.head.num_classes == cfg.data_preprocessor.num_classes == 3
    assert cfg.param_scheduler[1].end == cfg.train_cfg.max_epochs == 2
    assert cfg.val_evaluator.topk == (1, )  # 3 classes: no top-5
    runner = Runner.from_cfg(cfg)
    runner.train()  # 2 epochs of 1 iteration, Mixup/CutMix one-hot labels of 3 classes
    assert runner.iter == 2
    assert 'accuracy/top1' in runner.val()

    checkpoint = tmp_path / 'work' / 'epoch_2.pth'
    run_test_tool(path, checkpoint, '--tta', '--work-dir', tmp_path / 'tta',
                  '--out', tmp_path / 'tta.pkl')
    with open(tmp_path / 'tta.pkl', 'rb') as f:
        predictions = pickle.load(f)
    assert len(predictions) == 2 and all(p['pred_score'].shape == (3, ) for p in predictions)


def test_detection_recipe_trains_and_evaluates(tmp_path, data):
    path = edit_recipe('configs/mask_rcnn/mask-rcnn_quadmamba-li_fpn_custom-coco.py',
                       tmp_path / 'det.py', {
                           'data_root': repr(f'{data}/coco/'),
                           'train_ann, train_images':
                               "'annotations/instances_train.json', 'train/'",
                           'val_ann, val_images': "'annotations/instances_val.json', 'val/'",
                           'classes': repr(CLASSES), 'img_scale': (64, 64), 'batch_size': 4,
                           'max_epochs': 1, 'lr_steps': [1], 'pretrained': None})
    path = tiny_child(path, 'mmdet')
    cfg = run_config(path, tmp_path / 'work')
    heads = cfg.model.roi_head
    assert heads.bbox_head.num_classes == heads.mask_head.num_classes == 3
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter == 1
    metrics = runner.val()  # COCO evaluation against the edited annotation file
    assert 'coco/bbox_mAP' in metrics and 'coco/segm_mAP' in metrics

    # mmdet's DetTTAModel merges boxes only: no Mask R-CNN config ships a TTA, and --tta says so.
    with pytest.raises(SystemExit, match='--tta needs tta_model'):
        run_test_tool(path, tmp_path / 'work' / 'epoch_1.pth', '--tta')


def test_segmentation_recipe_trains_evaluates_and_runs_tta(tmp_path, data):
    path = edit_recipe('configs/upernet/upernet_quadmamba-t_custom-seg.py', tmp_path / 'seg.py', {
        'data_root': repr(f'{data}/ade/'),
        'classes': repr(('background', ) + CLASSES),
        'palette': [[0, 0, 0], [220, 20, 60], [0, 128, 255], [255, 200, 0]],
        'crop_size': (64, 64), 'img_scale': (64, 64), 'batch_size': 4, 'max_iters': 2,
        'warmup_iters': 1, 'val_interval': 2, 'pretrained': None})
    path = tiny_child(path, 'mmseg')
    cfg = run_config(path, tmp_path / 'work')
    assert cfg.model.decode_head.num_classes == cfg.model.auxiliary_head.num_classes == 4
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter == 2
    assert 'mIoU' in runner.val()

    run_test_tool(path, tmp_path / 'work' / 'iter_2.pth', '--tta', '--work-dir', tmp_path / 'tta',
                  '--out', tmp_path / 'tta.pkl')
    with open(tmp_path / 'tta.pkl', 'rb') as f:
        predictions = pickle.load(f)
    assert len(predictions) == 2
    assert all(p['pred_sem_seg']['data'].shape[-2:] == (64, 64) for p in predictions)


CLS_CONFIGS = sorted(p for p in (ROOT / 'configs' / 'quadmamba').rglob('*.py'))


@pytest.mark.parametrize('config', CLS_CONFIGS, ids=[p.name for p in CLS_CONFIGS])
def test_stated_minimum_input_size(config):
    """A config that takes other sizes than 32x32 and up says so (``Minimum input size: NxN``);
    the classifier runs at that size, non-square included, and refuses one pixel less."""
    stated = re.search(r'Minimum input size: (\d+)x\1', config.read_text())
    minimum = int(stated[1]) if stated else 32
    model = build_model(Config.fromfile(str(config))).eval()
    assert model.backbone.min_input_size == minimum
    with torch.no_grad():
        for size in ((minimum, minimum), (minimum, minimum + 7)):
            assert torch.isfinite(model(torch.randn(1, 3, *size), mode='tensor')).all()
        for size in ((minimum - 1, minimum), (minimum, minimum - 1)):
            with pytest.raises(ValueError, match='below the minimum'):
                model(torch.randn(1, 3, *size), mode='tensor')
