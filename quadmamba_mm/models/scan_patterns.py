"""Scan patterns: what an :class:`~.quadmamba.SS2D` block scans, as small objects.

Each pattern knows its orders, which the scan reads in place (through
:func:`quadmamba_kernels.selective_scan`), and the map it reads (with the gradient to a
learned window choice attached); the released code's layout, which is not a permutation,
knows its gathered sequences and their merge instead. The block's shift is folded into the
orders (see :mod:`.token_orders`).
"""
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from quadmamba_kernels import ScanOrders

from .quadtree import upstream_quadtree_sequences, with_choice_gradient
from .token_orders import (Shift, cross_scan_orders_of, quadtree_relabelings,
                           quadtree_scan_orders)

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

    def scanned_map(self, flat: Tensor, choice: Optional[Tensor], height: int, width: int,
                    shift: Shift) -> Tensor:
        """The ``(B, D, L)`` map the scan reads in place: ``flat``, with the gradient to the
        window choice attached where the choice learns."""
        return flat

    def sequences(self, flat: Tensor, choice: Optional[Tensor], height: int, width: int,
                  shift: Shift) -> Tuple[Tensor, Merge]:
        """For a pattern with no map orders: the K sequences ``(B, K, D, L)`` of the map and
        the function that merges the K scan outputs back into one ``(B, D, L)`` map."""
        raise NotImplementedError

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
    the scan reads them in place without a sync, in training too: the straight-through
    gradient of a learned choice is computed from the map's gradient
    (:func:`~.quadtree.with_choice_gradient`).
    """
    directions = 2

    def __init__(self, grid: int, split: int, learned: bool) -> None:
        self.grid, self.split, self.learns_window = grid, split, learned

    def _orders(self, height, width, shift, device) -> ScanOrders:
        return quadtree_scan_orders(height, width, self.grid, self.split, shift, device)

    def map_orders(self, choice, height, width, shift, device):
        return self._orders(height, width, shift, device), choice.argmax(-1)

    def scanned_map(self, flat, choice, height, width, shift):
        if not choice.requires_grad:
            return flat
        relabel = quadtree_relabelings(height, width, self.grid, self.split, shift, flat.device)
        return with_choice_gradient(flat, choice, relabel)


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
