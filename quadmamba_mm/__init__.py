"""QuadMamba for the OpenMMLab toolboxes: one backbone for mmpretrain, mmdet and mmseg.

Importing the package (configs do it with ``custom_imports=dict(imports=['quadmamba_mm'])``)
registers the models and allow-lists the types of Runner checkpoints for safe loading.
"""
from . import engine, models  # noqa: F401  (registers QuadMamba and the LR-decay constructor)
from .checkpoints.safe_load import allow_runner_checkpoint_types
from .version import __version__

allow_runner_checkpoint_types()

__all__ = ['__version__']
