"""The selective scan as a configurable, registered module.

``scan_cfg=dict(type='SelectiveScan', backend='auto')`` in a QuadMamba config builds it, from
mmpretrain, mmdet and mmseg configs alike, so an ablation or a deployment picks the scan
implementation by config: ``'auto'`` (Triton on CUDA, the fused C scan on CPUs, the chunked
scan where neither runs), ``'cpu'``, ``'chunked'``, ``'triton'``, ``'reference'`` (sequential)
or ``'segsum'`` (exact, static PyTorch operators: what ONNX export uses).
"""
from typing import Optional

import torch.nn as nn
from torch import Tensor

from quadmamba_kernels import ScanOrders, available_backends, selective_scan_projected

from ..registry import MODELS


@MODELS.register_module()
class SelectiveScan(nn.Module):
    """The selective scan with its input projections, fp32 out
    (:func:`quadmamba_kernels.selective_scan_projected`).

    Args:
        backend: a registered scan backend or ``'auto'``. Default: ``'auto'``.
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
        return selective_scan_projected(x, x_proj_weight, dt_proj_weight, dt_bias, A, D,
                                        orders=orders, order_index=order_index,
                                        backend=self.backend)

    def extra_repr(self) -> str:
        return f'backend={self.backend!r}'
