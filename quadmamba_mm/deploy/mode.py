"""Export mode: the selective scans switch to their exact standard-operator form.

The model's scan (:class:`~quadmamba_mm.models.SelectiveScan`) runs as the custom op
``torch.ops.quadmamba.selective_scan`` with the fastest kernel of the device. An exporter that
writes standard operators cannot take that op, so the scan switches to
:func:`quadmamba_kernels.segsum.selective_scan_projected_segsum` (the exact recurrence in
MatMul, Gather, Exp, Log, Mul, Add, ...) whenever

* ``torch.onnx.export`` runs, with either exporter (``torch.onnx.is_in_onnx_export()``: the
  default dynamo exporter and the TorchScript one); nothing needs switching by hand;
* or code runs inside :func:`export_mode`, for any other tracer that should see standard
  operators only (``torch.export.export`` for a runtime without this package, say).

``torch.compile`` and a plain ``torch.export.export`` keep the custom op: one graph node that
the C and Triton kernels serve.

This module imports nothing from the models, so the scan module can import it.
"""
import threading
from contextlib import contextmanager
from typing import Iterator

import torch

_STATE = threading.local()


def is_export_mode() -> bool:
    """Whether the selective scans run in their standard-operator form now: inside
    :func:`export_mode` or while ``torch.onnx.export`` traces the model."""
    return getattr(_STATE, 'enabled', False) or torch.onnx.is_in_onnx_export() or _onnx_exporting()


def _onnx_exporting() -> bool:
    """The dynamo exporter's own flag, read as a module attribute: when the exporter falls back
    to a strict ``torch.export`` (a dynamo trace), dynamo takes
    ``torch.onnx.is_in_onnx_export()`` as the constant False, but reads (and guards on) a
    module attribute as it is."""
    flags = getattr(getattr(getattr(torch.onnx, '_internal', None), 'exporter', None), '_flags',
                    None)
    return bool(getattr(flags, '_is_onnx_exporting', False))


@contextmanager
def export_mode(enabled: bool = True) -> Iterator[None]:
    """Run the selective scans as the exact standard-operator form inside the block.

    Example::

        >>> from quadmamba_mm.deploy import export_mode
        >>> with export_mode():
        ...     program = torch.export.export(model, (x, ))  # no quadmamba.selective_scan node

    Args:
        enabled: False switches the mode off inside the block (``torch.onnx.export`` still
            switches it on). Nested blocks restore the previous setting on exit.
    """
    previous = getattr(_STATE, 'enabled', False)
    _STATE.enabled = bool(enabled)
    try:
        yield
    finally:
        _STATE.enabled = previous
