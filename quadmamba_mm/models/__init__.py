"""QuadMamba models, registered for mmpretrain, mmdet and mmseg.

``QuadMamba`` is registered in the ``quadmamba_mm`` registry (``type='quadmamba_mm.QuadMamba'``
from any scope) and, as the same class object, in mmengine's root registry: the mmdet,
mmseg and mmpretrain registries fall back to the root for names they do not hold, so
``type='QuadMamba'`` works in their configs once ``quadmamba_mm`` is imported. The same holds
for ``SelectiveScan``, the scan module named by ``scan_cfg``.
"""
from mmengine.registry import MODELS as ROOT_MODELS

from .quadmamba import QuadMamba, QuadMambaBlock, SS2D
from .selective_scan import SelectiveScan

ROOT_MODELS.register_module(module=QuadMamba)
ROOT_MODELS.register_module(module=SelectiveScan)

__all__ = ['QuadMamba', 'QuadMambaBlock', 'SS2D', 'SelectiveScan']
