"""QuadMamba for the OpenMMLab toolboxes: one backbone for mmpretrain, mmdet and mmseg.

Importing the package (configs do it with ``custom_imports=dict(imports=['quadmamba_mm'])``)
registers the models, allow-lists the types of Runner checkpoints for safe loading and adds
the classification model names to mmpretrain's model hub (see :mod:`quadmamba_mm.model_index`).
"""
from . import engine, models  # noqa: F401  (registers QuadMamba and the LR-decay constructor)
from .checkpoints.safe_load import allow_runner_checkpoint_types
from .model_index import register_mmpretrain_models
from .version import __version__

allow_runner_checkpoint_types()
register_mmpretrain_models()

__all__ = ['__version__']
