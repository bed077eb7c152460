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
