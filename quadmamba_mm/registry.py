"""The registry node of quadmamba_mm, a child of mmengine's root registries.

Registering here (and not into mmdet, mmseg or mmpretrain) keeps one class object for all
three toolboxes: ``type='quadmamba_mm.QuadMamba'`` resolves from any scope, and
``type='QuadMamba'`` resolves from mmdet, mmseg and mmpretrain configs through the
unprefixed-name bridge in :mod:`quadmamba_mm.models`.
"""
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import Registry

MODELS = Registry(
    'model', parent=MMENGINE_MODELS, scope='quadmamba_mm', locations=['quadmamba_mm.models'])
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    'optimizer wrapper constructor',
    parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
    scope='quadmamba_mm',
    locations=['quadmamba_mm.engine'])
