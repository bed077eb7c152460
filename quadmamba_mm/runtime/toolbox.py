"""Which OpenMMLab toolbox a config belongs to, and building its model."""
import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

TOOLBOXES = ('mmpretrain', 'mmdet', 'mmseg')


def toolbox_of(cfg: Config) -> str:
    """The toolbox a config is written for, from its ``default_scope``."""
    scope = cfg.get('default_scope')
    if scope not in TOOLBOXES:
        raise ValueError(f'config default_scope is {scope!r}; expected one of {TOOLBOXES} '
                         '(inherit the toolbox default_runtime.py)')
    return scope


def build_model(cfg: Config) -> nn.Module:
    """Build ``cfg.model`` in its toolbox's scope (the toolbox registers itself lazily)."""
    init_default_scope(toolbox_of(cfg))
    return MODELS.build(cfg.model)


def dummy_data_samples(cfg: Config, height: int, width: int):
    """Data samples for a ``mode='tensor'`` forward on a bare image tensor: detectors need
    image metadata, classifiers and segmentors need none (None)."""
    if toolbox_of(cfg) != 'mmdet':
        return None
    from mmdet.structures import DetDataSample
    meta = dict(img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width),
                scale_factor=(1., 1.), batch_input_shape=(height, width))
    return [DetDataSample(metainfo=meta)]
