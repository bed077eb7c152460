"""Model names: the index names every shipped config with its measured size; mmpretrain finds
the classifiers by name; the inferencers of all three tasks come by name and draw the
config's classes with random weights; tools/inference.py takes a name and ``none``."""
import copy
import runpy
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from mmengine.config import Config
from mmengine.registry import DefaultScope

from quadmamba_mm import model_index
from quadmamba_mm.runtime.toolbox import build_model

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ('quadmamba', 'mask_rcnn', 'upernet')
TINY_ARCH = dict(_delete_=True, embed_dims=8, depths=(1, 1, 1, 1), ssm_ratio=1.0)
# UperNet on ADE20K with a small backbone and small test images: the class names are the
# config's, the cost is not.
TINY_SEG = dict(
    model=dict(backbone=dict(arch=TINY_ARCH, init_cfg=None),
               decode_head=dict(in_channels=[8, 16, 32, 64], channels=16, norm_cfg=dict(type='BN')),
               auxiliary_head=dict(in_channels=32, channels=16, norm_cfg=dict(type='BN'))),
    test_dataloader=dict(dataset=dict(pipeline=[
        dict(type='LoadImageFromFile'), dict(type='Resize', scale=(64, 64), keep_ratio=True),
        dict(type='PackSegInputs')])))


@pytest.fixture(autouse=True)
def one_thread():
    """Models this small run faster on one thread (more only wait for each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_seg_config() -> Config:
    cfg = Config.fromfile(model_index.model_config('upernet_quadmamba-t_8xb2-160k_ade20k-512x512'))
    cfg.merge_from_dict(copy.deepcopy(TINY_SEG))  # merging pops its _delete_ keys
    return cfg


@pytest.fixture(scope='module')
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp('image') / 'scene.png'
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    cv2.circle(picture, (30, 24), 12, (40, 180, 220), -1)
    cv2.imwrite(str(path), picture)
    return path


def test_index_names_every_shipped_config_once():
    index = yaml.safe_load((ROOT / 'model-index.yml').read_text())
    assert index['Import'] == [f'configs/{folder}/metafile.yml' for folder in FOLDERS]
    # The own-data recipes are templates to edit, not models.
    configs = {p.relative_to(ROOT).as_posix() for folder in FOLDERS
               for p in (ROOT / 'configs' / folder).rglob('*.py') if '_custom-' not in p.name}
    entries = [model_index.model_info(name) for name in model_index.list_models()]
    assert sorted(Path(e['Config']).relative_to(ROOT).as_posix() for e in entries) == \
        sorted(configs)
    for entry in entries:
        assert entry['Name'] == Path(entry['Config']).stem
        assert entry['Metadata']['Training Data'] in ('ImageNet-1k', 'COCO', 'ADE20K')
        assert entry['Metadata']['Parameters'] > 0 and entry['Metadata']['FLOPs'] > 0
        assert Path(entry['Config']).is_file()


# One per arch of the classifiers, and the smallest detector and segmentor: building all 21
# would cost most of a minute on 2 cores.
@pytest.mark.parametrize('name', ['quadmamba-li_8xb128_in1k', 'quadmamba-t_8xb128_in1k',
                                  'quadmamba-li_fixed-window_8xb128_in1k',
                                  'quadmamba-li_no-quadtree_8xb128_in1k',
                                  'mask-rcnn_quadmamba-li_fpn_1x_coco',
                                  'upernet_quadmamba-t_8xb2-160k_ade20k-512x512'])
def test_listed_parameters_are_the_models(name):
    entry = model_index.model_info(name)
    model = build_model(Config.fromfile(entry['Config']))
    assert sum(p.numel() for p in model.parameters()) == entry['Metadata']['Parameters']


def test_unknown_name_lists_the_models():
    with pytest.raises(ValueError, match='unknown QuadMamba-MM model .*quadmamba-s_8xb128_in1k'):
        model_index.model_info('quadmamba-xl_8xb128_in1k')
    with pytest.raises(ValueError, match='config file not found'):
        model_index.resolve_config('configs/quadmamba/missing.py')


def test_mmpretrain_finds_the_classifiers_by_name(image):
    import mmpretrain
    from mmpretrain.datasets import ImageNet
    classifiers = model_index.list_models('quadmamba-*')
    assert len(classifiers) == 10
    assert mmpretrain.list_models('*quadmamba*') == classifiers
    model = mmpretrain.get_model('quadmamba-li_8xb128_in1k', pretrained=False)
    assert type(model).__name__ == 'ImageClassifier' and model.head.num_classes == 1000
    assert model_index.register_mmpretrain_models()  # a second call registers nothing twice

    # (mmpretrain builds the pipeline in the current default scope, as a fresh process has it.)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        inferencer = mmpretrain.ImageClassificationInferencer('quadmamba-li_8xb128_in1k',
                                                              pretrained=False)
    result = inferencer(str(image))[0]
    assert result['pred_class'] in ImageNet.METAINFO['classes']


def test_detection_inferencer_by_name():
    from mmdet.apis import DetInferencer
    from mmdet.datasets import CocoDataset
    inferencer = model_index.build_inferencer('mask-rcnn_quadmamba-li_fpn_1x_coco', device='cpu',
                                              show_progress=False)
    assert isinstance(inferencer, DetInferencer)
    assert inferencer.model.dataset_meta['classes'] == CocoDataset.METAINFO['classes']
    assert inferencer.visualizer.dataset_meta['palette'] == CocoDataset.METAINFO['palette']


def test_segmentation_inferencer_draws_the_configs_classes(image, tmp_path):
    from mmseg.apis import MMSegInferencer
    from mmseg.datasets import ADE20KDataset
    ade = ADE20KDataset.METAINFO
    # mmseg's own inferencer falls back to Cityscapes names without a checkpoint.
    plain = MMSegInferencer(tiny_seg_config(), weights=None, device='cpu')
    assert len(plain.model.dataset_meta['classes']) == 19

    inferencer = model_index.build_inferencer(tiny_seg_config(), device='cpu')
    assert isinstance(inferencer, MMSegInferencer)
    inferencer(str(image), return_vis=True)
    assert inferencer.visualizer.dataset_meta['classes'] == ade['classes']
    assert [list(c) for c in inferencer.visualizer.dataset_meta['palette']] == \
        [list(c) for c in ade['palette']]

    # A checkpoint that stores its classes keeps them.
    cfg = tiny_seg_config()
    meta = dict(classes=('sky', 'road'), palette=[[0, 0, 255], [128, 128, 128]])
    checkpoint = tmp_path / 'seg.pth'
    torch.save(dict(state_dict=build_model(cfg).state_dict(), meta=dict(dataset_meta=meta)),
               checkpoint)
    inferencer = model_index.build_inferencer(cfg, weights=str(checkpoint), device='cpu')
    assert tuple(inferencer.model.dataset_meta['classes']) == meta['classes']

    # So do classes given to the inferencer (mmseg's visualize() would otherwise redraw with
    # the model's).
    inferencer = model_index.build_inferencer(cfg, device='cpu', classes=['a', 'b'],
                                              palette=[[1, 2, 3], [4, 5, 6]])
    inferencer(str(image), return_vis=True)
    assert inferencer.visualizer.dataset_meta['classes'] == ['a', 'b']


def run_inference_tool(capsys, *args):
    argv = sys.argv
    sys.argv = ['tools/inference.py', *map(str, args)]
    try:
        runpy.run_path(str(ROOT / 'tools' / 'inference.py'), run_name='__main__')
        status = 0
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else str(exit_.code)
    finally:
        sys.argv = argv
    return status, capsys.readouterr().out


def test_inference_tool_takes_a_name_and_random_weights(image, tmp_path, capsys):
    from mmpretrain.datasets import ImageNet
    status, out = run_inference_tool(capsys, 'quadmamba-li_8xb128_in1k', 'none', image,
                                     '--out-dir', tmp_path / 'cls')
    assert status == 0, out
    line = next(line for line in out.splitlines() if line.startswith(str(image)))
    assert line.split(': ', 1)[1].rsplit(' (', 1)[0] in ImageNet.METAINFO['classes']
    assert (tmp_path / 'cls' / 'vis' / image.name).is_file()

    config = tmp_path / 'tiny_seg.py'
    base = model_index.model_config('upernet_quadmamba-t_8xb2-160k_ade20k-512x512')
    config.write_text(f'_base_ = [{base!r}]\n' +
                      '\n'.join(f'{key} = {value!r}' for key, value in TINY_SEG.items()))
    status, out = run_inference_tool(capsys, config, 'none', image, '--out-dir', tmp_path / 'seg')
    assert status == 0, out
    labels = cv2.imread(str(tmp_path / 'seg' / 'preds' / f'{image.stem}.png'), cv2.IMREAD_UNCHANGED)
    assert labels.shape == (48, 64) and labels.max() < 150

    status, _ = run_inference_tool(capsys, 'quadmamba-xl', 'none', image)
    assert 'unknown QuadMamba-MM model' in status
