"""QuadMamba for the OpenMMLab toolboxes: one backbone for mmpretrain, mmdet and mmseg."""
from .version import __version__

__all__ = ['__version__']
