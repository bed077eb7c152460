"""QuadMamba models, registered for mmpretrain, mmdet and mmseg.

``QuadMamba`` is registered in the ``quadmamba_mm`` registry (``type='quadmamba_mm.QuadMamba'``
from any scope) and, as the same class object, in mmengine's root registry: the mmdet,
mmseg and mmpretrain registries fall back to the root for names they do not hold, so
``type='QuadMamba'`` works in their configs once ``quadmamba_mm`` is imported. The same holds
for ``SelectiveScan``, the scan module named by ``scan_cfg``.

With timm installed, the import also registers the timm models ``quadmamba_li``,
``quadmamba_t``, ``quadmamba_s`` and ``quadmamba_b`` (:mod:`.timm_models`).
"""
from importlib.util import find_spec

from mmengine.registry import MODELS as ROOT_MODELS

from .quadmamba import QuadMamba, QuadMambaBlock, SS2D
from .selective_scan import SelectiveScan

ROOT_MODELS.register_module(module=QuadMamba)
ROOT_MODELS.register_module(module=SelectiveScan)

if find_spec('timm') is not None:  # timm is optional
    from . import timm_models  # noqa: F401  (registers the quadmamba_* timm models)

__all__ = ['QuadMamba', 'QuadMambaBlock', 'SS2D', 'SelectiveScan']
