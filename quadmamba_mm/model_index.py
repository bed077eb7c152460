"""Model names of QuadMamba-MM, as the OpenMMLab toolboxes look models up.

``model-index.yml`` (repository root) imports ``configs/{quadmamba,mask_rcnn,upernet}/
metafile.yml``: one entry per shipped config, named after the config file, with its parameters,
FLOPs and training data. No entry has ``Results`` or ``Weights``: none of these models has
been trained yet.

Classification. Importing ``quadmamba_mm`` adds the classification entries to mmpretrain's
``ModelHub`` (when mmpretrain is installed), so mmpretrain's own API finds them by name::

    import mmpretrain
    import quadmamba_mm  # noqa: F401
    mmpretrain.list_models('*quadmamba*')
    model = mmpretrain.get_model('quadmamba-s_8xb128_in1k', pretrained=False)
    inferencer = mmpretrain.ImageClassificationInferencer('quadmamba-s_8xb128_in1k')

(``mmpretrain.inference_model`` picks its inferencer from an entry's ``Results``, so it needs
an inferencer given explicitly until results exist.)

Detection and segmentation. mmdet's ``DetInferencer`` and mmseg's ``MMSegInferencer`` look a
name up only in the model index of the package their ``scope`` names
(``<package>/.mim/model-index.yml``, or the ``configs`` next to a source checkout), and that
scope is also the registry the model is built in, so it must stay ``'mmdet'`` / ``'mmseg'``:
no argument gives them another index. Pass them the config of a name instead::

    from mmdet.apis import DetInferencer
    inferencer = DetInferencer(model_config('mask-rcnn_quadmamba-t_fpn_1x_coco'), weights=None)

or use :func:`build_inferencer`, which takes a name or a config of any of the three tasks.

The index lives in the source checkout next to this package (the project installs in
editable mode, ``pip install -e .``); without it, :func:`list_models` and
:func:`model_config` raise ``FileNotFoundError`` and nothing is registered.
"""
import copy
import fnmatch
import functools
import importlib.util
import os.path as osp
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Union

import yaml
from mmengine.config import Config

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_INDEX = REPO_ROOT / 'model-index.yml'
# The metafile whose entries are mmpretrain models; ModelHub builds every entry it is given
# in mmpretrain's scope, so the detection and segmentation metafiles are not registered there.
MMPRETRAIN_METAFILE = REPO_ROOT / 'configs' / 'quadmamba' / 'metafile.yml'


@functools.lru_cache(maxsize=None)
def _entries() -> Dict[str, dict]:
    """Every model of the index, by lower-case name, ``Config`` made an absolute path."""
    if not MODEL_INDEX.is_file():
        raise FileNotFoundError(
            f'{MODEL_INDEX} not found: the model names need the source checkout of '
            'QuadMamba-MM (install it with `pip install -e .` from the repository)')
    index = yaml.safe_load(MODEL_INDEX.read_text())
    entries = {}
    for metafile in index['Import']:
        for model in yaml.safe_load((REPO_ROOT / metafile).read_text())['Models']:
            name = model['Name'].lower()
            if name in entries:
                raise ValueError(f'model name {name!r} appears twice in {MODEL_INDEX}')
            entries[name] = dict(model, Config=str(REPO_ROOT / model['Config']))
    return entries


def list_models(pattern: str = '*') -> List[str]:
    """The names of QuadMamba-MM's models that match the wildcard ``pattern``, sorted.

    Args:
        pattern: an ``fnmatch`` pattern, e.g. ``'mask-rcnn_*'``. Default: every model.
    """
    return sorted(fnmatch.filter(_entries(), pattern.lower()))


def model_info(name: str) -> dict:
    """The index entry of model ``name`` (``Name``, ``In Collection``, ``Config`` as an
    absolute path, ``Metadata``; ``Weights`` and ``Results`` where they exist).

    Args:
        name: a model name, as :func:`list_models` gives it (case does not matter).

    Raises:
        ValueError: ``name`` is not in the index; the message lists the names.
    """
    entry = _entries().get(name.lower())
    if entry is None:
        raise ValueError(f'unknown QuadMamba-MM model {name!r}; the models are: '
                         f'{", ".join(list_models())}')
    return copy.deepcopy(entry)


def model_config(name: str) -> str:
    """The absolute path of the config of model ``name`` (see :func:`model_info`)."""
    return model_info(name)['Config']


def register_mmpretrain_models() -> bool:
    """Add the classification models of the index to mmpretrain's ``ModelHub``, once.

    ``quadmamba_mm`` calls this on import. Returns whether the models are registered: False
    where mmpretrain is not installed or the index is not there (an install that is not a
    source checkout). If mmpretrain is installed but fails to import, a warning says why and
    the rest of ``quadmamba_mm`` still works.
    """
    if importlib.util.find_spec('mmpretrain') is None or not MMPRETRAIN_METAFILE.is_file():
        return False
    try:
        from mmpretrain.apis import ModelHub
    except Exception as error:  # a broken mmpretrain must not break mmdet or mmseg users
        warnings.warn(f'QuadMamba-MM model names not registered with mmpretrain: importing '
                      f'mmpretrain failed with {type(error).__name__}: {error}')
        return False
    names = [m['Name'] for m in yaml.safe_load(MMPRETRAIN_METAFILE.read_text())['Models']]
    if not all(ModelHub.has(name.lower()) for name in names):
        # Config paths in the metafile are relative to the repository root.
        ModelHub.register_model_index(MMPRETRAIN_METAFILE, config_prefix=REPO_ROOT)
    return True


def resolve_config(model: Union[str, Path, Config]) -> Config:
    """A ``Config`` from a model name, a config file or a ``Config`` (copied).

    Raises:
        ValueError: ``model`` is neither an existing file nor a model name.
    """
    if isinstance(model, Config):
        return copy.deepcopy(model)
    if osp.isfile(model):
        return Config.fromfile(str(model))
    if str(model).endswith('.py'):
        raise ValueError(f'config file not found: {model}')
    return Config.fromfile(model_config(str(model)))


def config_dataset_meta(cfg: Config) -> dict:
    """The metainfo (``classes``, ``palette``...) of the config's test dataset, built in the
    config's toolbox scope without reading any annotation file (``lazy_init``)."""
    from mmengine.registry import DATASETS, DefaultScope

    from .runtime.toolbox import toolbox_of
    dataset_cfg = copy.deepcopy(cfg.test_dataloader.dataset)
    dataset_cfg['lazy_init'] = True
    with DefaultScope.overwrite_default_scope(toolbox_of(cfg)):
        return dict(DATASETS.build(dataset_cfg).metainfo)


def checkpoint_dataset_meta(weights: str) -> Optional[dict]:
    """The ``meta['dataset_meta']`` a Runner checkpoint stores, or None. Local files are
    read weights-only; other locations through mmengine's loader (which caches downloads)."""
    from .checkpoints.fit import is_local, read_checkpoint
    if is_local(weights):
        checkpoint = read_checkpoint(weights)
    else:
        from mmengine.runner.checkpoint import _load_checkpoint
        checkpoint = _load_checkpoint(weights, map_location='cpu')
    meta = checkpoint.get('meta', {}) if isinstance(checkpoint, dict) else {}
    return meta.get('dataset_meta') or None


def build_inferencer(model: Union[str, Path, Config],
                     weights: Optional[str] = None,
                     device: Optional[str] = None,
                     **kwargs):
    """The toolbox inferencer of a QuadMamba-MM model: mmdet ``DetInferencer``, mmseg
    ``MMSegInferencer`` or mmpretrain ``ImageClassificationInferencer``, chosen by the
    config's ``default_scope``.

    The toolboxes draw COCO (mmdet) or Cityscapes (mmseg) class names when the checkpoint
    stores none, random weights included. Here the class names and palette then come from the
    config's test dataset (ADE20K for the UperNet configs, the ``metainfo`` of an own-data
    config), as they would for a checkpoint the config's training wrote.

    Args:
        model: a model name (:func:`list_models`), a config file or a ``Config``.
        weights: a checkpoint path or URL; None for random weights.
        device: e.g. ``'cpu'``, ``'cuda:0'``; None picks the available device.
        **kwargs: more arguments of the toolbox inferencer (e.g. ``show_progress=False``
            for mmdet, ``classes=`` for mmpretrain and mmseg, which then take precedence).
    """
    from .runtime.toolbox import toolbox_of
    cfg = resolve_config(model)
    toolbox = toolbox_of(cfg)
    if toolbox == 'mmdet':
        from mmdet.apis import DetInferencer
        inferencer = DetInferencer(model=cfg, weights=weights, device=device, **kwargs)
    elif toolbox == 'mmseg':
        from mmseg.apis import MMSegInferencer
        inferencer = MMSegInferencer(model=cfg, weights=weights, device=device, **kwargs)
    else:
        from mmengine.registry import init_default_scope
        from mmpretrain.apis import ImageClassificationInferencer

        # As DetInferencer and MMSegInferencer do: mmpretrain's builds its pipeline in the
        # current default scope, which another toolbox may have set.
        init_default_scope('mmpretrain')
        inferencer = ImageClassificationInferencer(model=cfg, pretrained=weights or False,
                                                   device=device, **kwargs)
    if toolbox == 'mmseg' and any(kwargs.get(k) is not None
                                  for k in ('classes', 'palette', 'dataset_name')):
        # MMSegInferencer gives these to its visualizer, but its visualize() redraws with
        # model.dataset_meta: the names given must be the ones drawn.
        inferencer.model.dataset_meta = dict(inferencer.visualizer.dataset_meta)
        return inferencer
    if weights is not None and checkpoint_dataset_meta(weights) is not None:
        return inferencer  # the toolbox has taken the checkpoint's classes
    meta = config_dataset_meta(cfg)
    if meta.get('classes') is None:
        return inferencer
    if toolbox == 'mmpretrain':
        if kwargs.get('classes') is None:
            inferencer.classes = list(meta['classes'])
        return inferencer
    dataset_meta = dict(inferencer.model.dataset_meta, classes=meta['classes'])
    if meta.get('palette') is not None or toolbox == 'mmseg':
        # mmseg's datasets always make a palette as long as their classes.
        dataset_meta['palette'] = meta.get('palette')
    inferencer.model.dataset_meta = dataset_meta
    if toolbox == 'mmdet':  # DetInferencer's visualizer keeps the meta it was built with
        inferencer.visualizer.dataset_meta = dataset_meta
    return inferencer
