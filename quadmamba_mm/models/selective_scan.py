"""The selective scan as a configurable, registered module.

``scan_cfg=dict(type='SelectiveScan', backend='auto')`` in a QuadMamba config builds it, from
mmpretrain, mmdet and mmseg configs alike, so an ablation or a deployment picks the scan
implementation by config: ``'auto'`` (Triton on CUDA, the fused C scan on CPUs, the chunked
scan where neither runs), ``'cpu'``, ``'chunked'``, ``'triton'``, ``'reference'`` (sequential)
or ``'segsum'`` (exact, static PyTorch operators).

Whatever the backend, the module runs the ``segsum`` form while a model is exported to ONNX
(either of torch's exporters) or inside :func:`quadmamba_mm.deploy.export_mode`: the custom op
of the fast kernels is no standard operator (see :mod:`quadmamba_mm.deploy.mode`).
``torch.compile`` keeps the configured backend.
"""
from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from quadmamba_kernels import ScanOrders, available_backends, selective_scan_projected
from quadmamba_kernels.segsum import selective_scan_projected_segsum

from ..deploy.mode import is_export_mode
from ..registry import MODELS


@MODELS.register_module()
class SelectiveScan(nn.Module):
    """The selective scan with its input projections, fp32 out
    (:func:`quadmamba_kernels.selective_scan_projected`).

    Args:
        backend: a registered scan backend or ``'auto'``. Default: ``'auto'``. In export mode
            (:func:`quadmamba_mm.deploy.is_export_mode`) and for ``'segsum'`` the scan runs
            as :func:`quadmamba_kernels.segsum.selective_scan_projected_segsum`.
    """

    def __init__(self, backend: str = 'auto') -> None:
        super().__init__()
        if backend != 'auto' and backend not in available_backends():
            raise ValueError(f'unknown scan backend {backend!r}; choose one of '
                             f"{['auto'] + available_backends()}")
        self.backend = backend

    def forward(self,
                x: Tensor,
                x_proj_weight: Tensor,
                dt_proj_weight: Tensor,
                dt_bias: Tensor,
                A: Tensor,
                D: Optional[Tensor] = None,
                orders: Optional[ScanOrders] = None,
                order_index: Optional[Tensor] = None) -> Tensor:
        """The SS2D scan core of :func:`quadmamba_kernels.selective_scan_projected`: the
        ``(B, D, L)`` map with its orders, or ``(B, K, D, L)`` sequences without."""
        if self.backend == 'segsum' or is_export_mode():
            args = (x, x_proj_weight, dt_proj_weight, dt_bias, A, D)
            if torch.is_autocast_enabled(x.device.type):  # fp32, as the kernels compute
                with torch.autocast(device_type=x.device.type, enabled=False):
                    return selective_scan_projected_segsum(*args, orders=orders,
                                                           order_index=order_index)
            return selective_scan_projected_segsum(*args, orders=orders, order_index=order_index)
        return selective_scan_projected(x, x_proj_weight, dt_proj_weight, dt_bias, A, D,
                                        orders=orders, order_index=order_index,
                                        backend=self.backend)

    def extra_repr(self) -> str:
        return f'backend={self.backend!r}'
