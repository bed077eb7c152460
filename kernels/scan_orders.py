"""The map-order layout of the selective scan: scan orders, their checks, and the gather and
scatter that the backends without in-place orders run around the scan."""
import weakref
from typing import Dict, Tuple

import torch
from torch import Tensor

# Orders that passed the check (by id, while alive), with the version they had then: the
# check costs a sort and a device sync, and the backbone reuses its cached orders.
_CHECKED: Dict[int, Tuple[weakref.ref, int]] = {}


def _checked_before(orders: Tensor) -> bool:
    ref, version = _CHECKED.get(id(orders), (None, None))
    return ref is not None and ref() is orders and version == orders._version


def _remember(orders: Tensor) -> None:
    key = id(orders)
    _CHECKED[key] = (weakref.ref(orders, lambda _: _CHECKED.pop(key, None)), orders._version)


def check_orders(orders: Tensor, batch: int, directions: int, length: int) -> None:
    """Raise ``ValueError`` unless ``orders`` is ``(1 or batch, K, L)`` integer permutations."""
    shape = tuple(orders.shape)
    if orders.dim() != 3 or shape[0] not in (1, batch) or shape[1:] != (directions, length):
        raise ValueError(f'selective_scan: orders must be (1 or batch={batch}, K={directions}, '
                         f'L={length}), got {shape}')
    if orders.dtype.is_floating_point or orders.dtype.is_complex or orders.dtype == torch.bool:
        raise ValueError(f'selective_scan: orders must be an integer tensor, got {orders.dtype}')
    if _checked_before(orders):
        return
    steps = torch.arange(length, device=orders.device)
    if not bool((orders.sort(-1).values == steps).all()):
        raise ValueError('selective_scan: every row of orders must be a permutation of '
                         f'0..{length - 1} (a position of the map per scan step)')
    _remember(orders)


def to_scan_order(t: Tensor, orders: Tensor) -> Tensor:
    """``(B, 1 or K, W, L)`` map-order values -> ``(B, K, W, L)`` in scan order:
    ``out[b, k, :, i] = t[b, k, :, orders[b, k, i]]``."""
    batch, _, width, length = t.shape
    directions = orders.shape[1]
    index = orders.long()[:, :, None, :].expand(batch, directions, width, length)
    return t.expand(batch, directions, width, length).gather(-1, index)


def to_map_order(y: Tensor, orders: Tensor) -> Tensor:
    """``(B, K, W, L)`` scan-order outputs -> ``(B, W, L)``: each put back at its map
    position and the K directions summed (the inverse of :func:`to_scan_order`)."""
    index = orders.long()[:, :, None, :].expand_as(y)
    return torch.zeros_like(y).scatter_(-1, index, y).sum(1)
