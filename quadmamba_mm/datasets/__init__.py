"""Small generated datasets for the demo and the tests."""
from .synthetic_shapes import CLASSES, make_all

__all__ = ['CLASSES', 'make_all']
