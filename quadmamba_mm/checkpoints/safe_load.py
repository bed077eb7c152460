"""Safe checkpoint loading with mmengine on torch >= 2.6.

torch >= 2.6 unpickles with ``weights_only=True`` by default: only tensors, containers and
allow-listed classes and functions load, so a crafted checkpoint cannot run code. mmengine 0.10.7 calls
``torch.load`` without ``weights_only``, so that default applies to it, but a checkpoint
the Runner saved holds a few more types (the message hub's ``HistoryBuffer`` and the numpy
arrays and scalars inside it, and ``getattr(HistoryBuffer, <statistic>)`` references), so
resuming fails with ``Unsupported global``.

:func:`allow_runner_checkpoint_types` allow-lists exactly those types, instead of turning
``weights_only`` off. It runs when ``quadmamba_mm`` is imported, which every config of this
project does through ``custom_imports``.
"""
import pickle

import numpy as np
import torch

# The numpy dtypes that appear in a Runner checkpoint's logged scalars and counters.
_NUMERIC_DTYPES = (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
                   np.uint8, np.bool_)


def history_buffer_statistic(owner, name: str):
    """Stands in for ``builtins.getattr`` while unpickling.

    mmengine pickles ``HistoryBuffer``'s statistics methods by reference, as
    ``getattr(HistoryBuffer, 'mean')``. A general ``getattr`` would let a checkpoint walk
    from any allowed object to ``__globals__`` and run code, so this resolves exactly those
    methods and refuses everything else.
    """
    from mmengine.logging import HistoryBuffer
    if not HistoryBuffer._statistics_methods:  # filled by the first HistoryBuffer created
        HistoryBuffer()
    if owner is HistoryBuffer and name in HistoryBuffer._statistics_methods:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'refusing getattr({owner!r}, {name!r}) in a checkpoint: only the HistoryBuffer '
        'statistics methods that mmengine saves are allowed')


def runner_checkpoint_types() -> list:
    """The non-tensor classes and functions a checkpoint saved by mmengine's Runner needs."""
    from mmengine.logging import HistoryBuffer

    multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    dtype_classes = [type(np.dtype(t)) for t in _NUMERIC_DTYPES]
    # _reconstruct/ndarray/dtype rebuild arrays; scalar rebuilds numpy scalars. Their
    # contents are unpickled by the same restricted unpickler.
    return [
        HistoryBuffer, multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype,
        (history_buffer_statistic, 'builtins.getattr')
    ] + dtype_classes


def allow_runner_checkpoint_types() -> None:
    """Allow-list the Runner's checkpoint types for ``torch.load(weights_only=True)``."""
    add_safe_globals = getattr(torch.serialization, 'add_safe_globals', None)
    if add_safe_globals is not None:  # torch < 2.4 has no weights_only allow-list
        add_safe_globals(runner_checkpoint_types())
