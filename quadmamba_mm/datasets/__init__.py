"""Small generated datasets for the demo and the tests, and the wrapper that skips unusable
training samples."""
from .bad_samples import (BadSampleWarning, SkipBadSamples, find_skipping_datasets,
                          skip_bad_samples_in)
from .synthetic_shapes import CLASSES, make_all

__all__ = [
    'BadSampleWarning', 'CLASSES', 'SkipBadSamples', 'find_skipping_datasets', 'make_all',
    'skip_bad_samples_in'
]
