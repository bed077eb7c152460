"""Selective-scan kernels for QuadMamba, installed as ``quadmamba_kernels``.

``selective_scan`` is the entry point; backends (``reference``, ``chunked``, ...) share the
mamba signature and are picked by name or by ``'auto'``.
"""
from .chunked import selective_scan_chunked
from .interface import (ScanBackend, SelectiveScanFn, available_backends, register_backend,
                        resolve_backend, selective_scan)
from .map_order import ScanOrders
from .reference import selective_scan_reference

__all__ = [
    'selective_scan', 'ScanOrders', 'selective_scan_reference', 'selective_scan_chunked', 'ScanBackend',
    'SelectiveScanFn', 'register_backend', 'resolve_backend', 'available_backends'
]
