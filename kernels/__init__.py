"""Selective-scan kernels for QuadMamba, installed as ``quadmamba_kernels``.

``selective_scan`` is the entry point; backends (``reference``, ``cpu``, ``chunked``,
``triton``, ``segsum``) share the mamba signature and are picked by name or by ``'auto'``. The scan
runs as the custom op ``torch.ops.quadmamba.selective_scan`` (the Triton backend as
``torch.ops.quadmamba.selective_scan_triton``).
"""
from .backends import (ScanBackend, available_backends, get_backend, register_backend,
                       resolve_backend)
from .chunked import selective_scan_chunked
from .custom_op import selective_scan_op
from .interface import selective_scan
from .map_order import ScanOrders
from .projected import selective_scan_projected
from .reference import selective_scan_reference
from .segsum import selective_scan_segsum

__all__ = [
    'selective_scan', 'selective_scan_projected', 'ScanOrders', 'selective_scan_op', 'selective_scan_reference',
    'selective_scan_chunked', 'selective_scan_segsum', 'ScanBackend', 'register_backend',
    'resolve_backend', 'get_backend', 'available_backends'
]
