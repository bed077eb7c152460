"""The map-order layout of the selective scan: K scan orders of one 2-D token map.

A :class:`ScanOrders` holds ``G`` candidate sets of ``K`` orders over the ``L`` positions of
a map, ``(G, K, L)``, each row a permutation; a per-sample index ``(B,)`` picks one
candidate set per sample (no index: ``G`` is 1 and every sample scans the same orders).
The permutation check (a sort and a device sync) runs once, when the object is made, so
callers build one per map size and reuse it: nothing syncs per forward pass.

Backends that read orders in place get ``orders`` and ``order_index``; for the others
:meth:`ScanOrders.to_scan_order` gathers the sequences and :meth:`ScanOrders.to_map_order`
puts the outputs back and sums the directions (both differentiable): the unfused path.
Subclasses may replace those two with faster equivalents (the cross scan uses flips and a
transpose, several times faster than a gather on CPUs).
"""
from typing import Optional

import torch
from torch import Tensor


class ScanOrders:
    """Candidate scan orders ``(G, K, L)``, checked once.

    Args:
        orders: integer tensor ``(G, K, L)``; ``orders[g, k, i]`` is the map position that
            step ``i`` of direction ``k`` visits in candidate set ``g``.
        check: check that every row is a permutation (a sort and a device sync).
    """

    def __init__(self, orders: Tensor, check: bool = True) -> None:
        if orders.dim() != 3:
            raise ValueError('scan orders must be (candidates G, directions K, length L), '
                             f'got shape {tuple(orders.shape)}')
        if orders.dtype.is_floating_point or orders.dtype.is_complex or orders.dtype == torch.bool:
            raise ValueError(f'scan orders must be an integer tensor, got {orders.dtype}')
        length = orders.shape[-1]
        # Made outside inference mode: cached orders must stay usable by autograd later.
        with torch.inference_mode(False), torch.no_grad():
            orders = orders.long()
            steps = torch.arange(length, device=orders.device)
            if check and not bool((orders.sort(-1).values == steps).all()):
                raise ValueError('every row of the scan orders must be a permutation of '
                                 f'0..{length - 1} (a map position per scan step)')
            self.orders = orders.contiguous()
            self.inverses = torch.empty_like(self.orders).scatter_(
                -1, self.orders, steps.expand_as(self.orders).contiguous())

    @classmethod
    def from_checked(cls, orders: Tensor, inverses: Tensor, **attributes) -> 'ScanOrders':
        """Wrap the ``orders`` and ``inverses`` of a :class:`ScanOrders` made before, without
        checking them again (cheap, and traceable by ``torch.compile``)."""
        made = cls.__new__(cls)
        made.orders = orders
        made.inverses = inverses
        for name, value in attributes.items():
            setattr(made, name, value)
        return made

    @property
    def orders_int32(self) -> Tensor:
        """The orders as kernels index them."""
        return self.orders.to(torch.int32)

    def check_index(self, order_index: Optional[Tensor], batch: int) -> None:
        """Raise ``ValueError`` unless ``order_index`` fits ``batch`` samples. The range is
        asserted on the device, without a sync."""
        candidates = self.orders.shape[0]
        if order_index is None:
            if candidates != 1:
                raise ValueError(f'{candidates} candidate order sets need an order_index '
                                 '(batch,) that picks one per sample')
            return
        if order_index.dim() != 1 or order_index.shape[0] != batch:
            raise ValueError(f'order_index must be (batch={batch},), got '
                             f'{tuple(order_index.shape)}')
        if order_index.dtype.is_floating_point or order_index.dtype == torch.bool:
            raise ValueError(f'order_index must be an integer tensor, got {order_index.dtype}')
        if order_index.device != self.orders.device:
            raise ValueError(f'order_index is on {order_index.device}, the orders on '
                             f'{self.orders.device}')
        if not torch.jit.is_tracing():  # the ONNX exporter has no assertion op
            torch._assert_async(((order_index >= 0) & (order_index < candidates)).all(),
                                f'order_index must pick one of the {candidates} candidate '
                                'order sets')

    def select(self, order_index: Optional[Tensor], inverse: bool = False) -> Tensor:
        """``(1 or B, K, L)`` int64 orders (or inverses) of each sample."""
        table = self.inverses if inverse else self.orders
        return table if order_index is None else table[order_index]

    def to_scan_order(self, t: Tensor, order_index: Optional[Tensor] = None) -> Tensor:
        """``(B, 1 or K, W, L)`` map-order values -> ``(B, K, W, L)`` in scan order."""
        return to_scan_order(t, self.select(order_index))

    def to_map_order(self, y: Tensor, order_index: Optional[Tensor] = None) -> Tensor:
        """``(B, K, W, L)`` scan-order outputs -> ``(B, W, L)``, the K directions summed."""
        return to_map_order(y, self.select(order_index, inverse=True))


def to_scan_order(t: Tensor, orders: Tensor) -> Tensor:
    """``(B, 1 or K, W, L)`` map-order values and ``(1 or B, K, L)`` orders -> ``(B, K, W, L)``
    in scan order: ``out[b, k, :, i] = t[b, k, :, orders[b, k, i]]``."""
    batch, _, width, length = t.shape
    directions = orders.shape[1]
    index = orders[:, :, None, :].expand(batch, directions, width, length)
    return t.expand(batch, directions, width, length).gather(-1, index)


def to_map_order(y: Tensor, inverses: Tensor) -> Tensor:
    """``(B, K, W, L)`` scan-order outputs and ``(1 or B, K, L)`` inverse orders ->
    ``(B, W, L)``: each value back at its map position and the K directions summed (the
    adjoint of :func:`to_scan_order`)."""
    return y.gather(-1, inverses[:, :, None, :].expand_as(y)).sum(1)
