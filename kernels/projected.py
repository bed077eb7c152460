"""The selective scan with its input projections: what one SS2D block hands the kernels.

``selective_scan_projected`` takes the block's activations and weights and returns the
scan's output: "scan these K orders of this map". Where the K sequences are formed is the
kernels' choice: a backend that reads orders in place (Triton) gets the map and the
projections computed on it (they act per token, so this is the same math); for the others
the map's K sequences are gathered once and projected in scan order, which moves ``D``
channels through the gather instead of the ``K*D`` channels of ``delta``. A backend that
prefers channel-last tensors (the C kernel) gets the projections computed per token in that
layout: with the map stored channel-last, as SS2D's conv leaves it, nothing is transposed,
and ``dt_proj``'s low-rank input and weight go to :func:`~.interface.selective_scan`.
"""
from typing import Optional, Union

import torch
from torch import Tensor

from .backends import resolve_backend
from .interface import as_scan_orders, selective_scan
from .map_order import ScanOrders


def selective_scan_projected(x: Tensor,
                             x_proj_weight: Tensor,
                             dt_proj_weight: Tensor,
                             dt_bias: Tensor,
                             A: Tensor,
                             D: Optional[Tensor] = None,
                             *,
                             orders: Union[None, Tensor, ScanOrders] = None,
                             order_index: Optional[Tensor] = None,
                             backend: str = 'auto') -> Tensor:
    """VMamba's SS2D scan core, fp32 out.

    ``x_dbl = x_proj(x)`` split into ``(dt, B, C)``, ``delta = dt_proj(dt)``, then the
    selective scan with softplus on ``delta + dt_bias``.

    Args:
        x: with ``orders``, the ``(B, D, L)`` map (``y`` is then ``(B, D, L)``, the K
            directions summed in map order); without, ``(B, K, D, L)`` sequences in scan
            order (``y`` is ``(B, K*D, L)``).
        x_proj_weight: ``(K, R + 2N, D)``.
        dt_proj_weight: ``(K, D, R)``.
        dt_bias: ``(K, D)`` or ``(K*D,)``.
        A: ``(K*D, N)``; D: ``(K*D,)`` or None.
        orders, order_index, backend: as for :func:`~.interface.selective_scan`.
    """
    dt_rank = dt_proj_weight.shape[-1]
    n_state = (x_proj_weight.shape[1] - dt_rank) // 2
    impl = resolve_backend(backend, x.device, x.dtype)
    if orders is not None and not impl.gathers_orders:
        if x.dim() != 3:
            raise ValueError('selective_scan_projected: with orders, x is the (batch, D, L) '
                             f'map, got shape {tuple(x.shape)}')
        if not isinstance(orders, ScanOrders):
            orders, order_index = as_scan_orders(orders, x.shape[0])
        try:  # the check selective_scan makes on the in-place path
            orders.check_index(order_index, x.shape[0])
        except ValueError as error:
            raise ValueError(f'selective_scan_projected: {error}') from None
        sequences = orders.to_scan_order(x[:, None], order_index)
        y = selective_scan_projected(sequences, x_proj_weight, dt_proj_weight, dt_bias, A, D,
                                     backend=impl.name)
        return orders.to_map_order(y.view(sequences.shape), order_index)
    if orders is None and x.dim() != 4:
        raise ValueError('selective_scan_projected: without orders, x is (batch, K, D, L) '
                         f'sequences, got shape {tuple(x.shape)}')
    delta_proj_weight = None
    if orders is not None and impl.channels_last:
        # Per token, channel-last: (B, L, D) tokens (a view of a channel-last map) give
        # x_dbl as (B, L, K, R + 2N); dts, B and C are passed on as views of it, and
        # dt_proj is applied by selective_scan (inside the kernel where the backend can:
        # the full delta, the largest tensor of the block, then never exists).
        x_dbl = torch.einsum('bld,kcd->blkc', x.transpose(1, 2), x_proj_weight)
        dts, Bs, Cs = (t.permute(0, 2, 3, 1)
                       for t in torch.split(x_dbl, [dt_rank, n_state, n_state], dim=3))
        delta, delta_proj_weight = dts, dt_proj_weight
    else:
        # Per direction k: (C, D) @ (D, L), broadcast over the batch. As matmuls, not
        # einsums: exporters write MatMul, which ONNX Runtime runs several times faster.
        x_dbl = torch.matmul(x_proj_weight, x if orders is None else x[:, None])
        dts, Bs, Cs = torch.split(x_dbl, [dt_rank, n_state, n_state], dim=2)
        delta = torch.matmul(dt_proj_weight, dts).flatten(1, 2)
        Bs, Cs = Bs.contiguous(), Cs.contiguous()
    u = x if orders is not None else x.flatten(1, 2)
    return selective_scan(u, delta, A, Bs, Cs, D, dt_bias.flatten(), True, orders=orders,
                          order_index=order_index, output_fp32=True,
                          # 'auto' goes on as 'auto': the scan may still fall back (it takes
                          # the map either way; a projected delta it applies itself)
                          backend=backend if backend == 'auto' else impl.name,
                          delta_proj_weight=delta_proj_weight)
