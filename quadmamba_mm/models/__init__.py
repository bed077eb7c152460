"""QuadMamba models, registered for mmpretrain, mmdet and mmseg.

``QuadMamba`` is registered in the ``quadmamba_mm`` registry (``type='quadmamba_mm.QuadMamba'``
from any scope) and, as the same class object, in mmengine's root registry: the mmdet,
mmseg and mmpretrain registries fall back to the root for names they do not hold, so
``type='QuadMamba'`` works in their configs once ``quadmamba_mm`` is imported.
"""
from mmengine.registry import MODELS as ROOT_MODELS

from .quadmamba import QuadMamba, QuadMambaBlock, SS2D

ROOT_MODELS.register_module(module=QuadMamba)

__all__ = ['QuadMamba', 'QuadMambaBlock', 'SS2D']
