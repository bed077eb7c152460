"""The selective scan as a configurable, registered module.

``scan_cfg=dict(type='SelectiveScan', backend='auto')`` in a QuadMamba config builds it, from
mmpretrain, mmdet and mmseg configs alike, so an ablation or a deployment picks the scan
implementation by config: ``'auto'`` (Triton on CUDA, the chunked scan elsewhere),
``'chunked'``, ``'triton'``, ``'reference'`` (sequential) or ``'segsum'`` (exact, static
PyTorch operators: what ONNX export uses).
"""
from typing import Optional

import torch.nn as nn
from torch import Tensor

from quadmamba_kernels import ScanOrders, available_backends, selective_scan

from ..registry import MODELS


@MODELS.register_module()
class SelectiveScan(nn.Module):
    """The selective scan of :func:`quadmamba_kernels.selective_scan`, fp32 out.

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
                u: Tensor,
                delta: Tensor,
                A: Tensor,
                B: Tensor,
                C: Tensor,
                D: Optional[Tensor] = None,
                delta_bias: Optional[Tensor] = None,
                delta_softplus: bool = False,
                orders: Optional[ScanOrders] = None,
                order_index: Optional[Tensor] = None) -> Tensor:
        return selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus, orders=orders,
                              order_index=order_index, backend=self.backend, output_fp32=True)

    def extra_repr(self) -> str:
        return f'backend={self.backend!r}'
