"""Scan patterns: what an :class:`~.quadmamba.SS2D` block scans, as small objects.

Each pattern knows its orders (for a scan that reads them in place, through
:func:`quadmamba_kernels.selective_scan`) and, where the scan must run on gathered
sequences (a gradient to the window choice, the released code's layout), its sequences
and their merge. The block's shift is folded into the orders (see :mod:`.token_orders`).
"""
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from quadmamba_kernels import ScanOrders

from .quadtree import quadtree_gather, upstream_quadtree_sequences
from .token_orders import Shift, cross_scan_orders_of, merge_sequences, quadtree_scan_orders

Merge = Callable[[Tensor], Tensor]


class ScanPattern:
    """How an SS2D block scans its ``(B, D, H*W)`` map: the base of the patterns.

    Args:
        directions: K, the number of scanned sequences.
    """
    directions: int = 1
    learns_window = False

    def map_orders(self, choice: Optional[Tensor], height: int, width: int, shift: Shift,
                   device: torch.device) -> Optional[Tuple[ScanOrders, Optional[Tensor]]]:
        """``(orders, order_index)`` to scan the map in place, or None when the scan must
        run on :meth:`sequences`."""
        raise NotImplementedError

    def sequences(self, flat: Tensor, choice: Optional[Tensor], height: int, width: int,
                  shift: Shift) -> Tuple[Tensor, Merge]:
        """The K sequences ``(B, K, D, L)`` of the map and the function that merges the
        K scan outputs back into one ``(B, D, L)`` map."""
        orders, index = self.map_orders(choice, height, width, shift, flat.device)
        return orders.to_scan_order(flat[:, None], index), lambda y: orders.to_map_order(y, index)

    def scored(self, token_scores: Tensor, shift: Shift) -> Tensor:
        """The ``(B, H, W)`` token scores as the windows see them (after the shift)."""
        if shift is None:
            return token_scores
        return torch.roll(token_scores, shifts=shift, dims=(1, 2))


class CrossScan(ScanPattern):
    """VMamba's cross scan: rows, columns and both reversed (K=4)."""
    directions = 4

    def map_orders(self, choice, height, width, shift, device):
        return cross_scan_orders_of(height, width, shift, device), None


class QuadtreeScan(ScanPattern):
    """QuadMamba's quadtree scan (K=2: the sequence and its reverse) over ``grid x grid``
    coarse windows, the chosen one split ``split x split``.

    The per-sample choice picks one of the ``grid**2`` cached candidate orders by index, so
    the scan reads them in place without a sync. When the choice needs its straight-through
    gradient (learned windows in training), the sequences are gathered instead: the
    gradient to the choice comes from them.
    """
    directions = 2

    def __init__(self, grid: int, split: int, learned: bool) -> None:
        self.grid, self.split, self.learns_window = grid, split, learned

    def _orders(self, height, width, shift, device) -> ScanOrders:
        return quadtree_scan_orders(height, width, self.grid, self.split, shift, device)

    def map_orders(self, choice, height, width, shift, device):
        if choice.requires_grad:
            return None
        return self._orders(height, width, shift, device), choice.argmax(-1)

    def sequences(self, flat, choice, height, width, shift):
        orders = self._orders(height, width, shift, flat.device)
        inverse = orders.select(choice.argmax(-1), inverse=True)
        return (quadtree_gather(flat, choice, orders.orders, orders.inverses),
                lambda y: merge_sequences(y, inverse))


class UpstreamQuadtreeScan(QuadtreeScan):
    """The released code's masked quadtree layout (not a permutation: always gathered),
    with windows scored on the map before the shift; see
    :func:`~.quadtree.upstream_quadtree_sequences`."""

    def __init__(self, learned: bool) -> None:
        super().__init__(2, 2, learned)

    def map_orders(self, choice, height, width, shift, device):
        return None

    def sequences(self, flat, choice, height, width, shift):
        if shift is None:
            return upstream_quadtree_sequences(flat, choice, height, width)
        batch, dim, length = flat.shape
        rolled = torch.roll(flat.view(batch, dim, height, width), shift, dims=(2, 3))
        xs, merge = upstream_quadtree_sequences(rolled.flatten(2), choice, height, width)

        def merge_back(y: Tensor) -> Tensor:
            back = merge(y).view(batch, dim, height, width)
            return torch.roll(back, (-shift[0], -shift[1]), dims=(2, 3)).flatten(2)

        return xs, merge_back

    def scored(self, token_scores, shift):
        return token_scores
