"""Token orders: the permutations that turn one 2-D token map into the K scanned sequences.

Every order is a permutation of the ``L = H * W`` tokens of a row-major map, held as a
gather index ``order`` (sequence position -> token) together with its ``inverse``
(token -> sequence position). Gathering with ``order`` builds the sequences; gathering the
scan outputs with ``inverse`` and summing over directions merges them back.

Two families of orders:

* cross scan (VMamba, stages 3-4): row-major, column-major, and both reversed (K=4);
* quadtree (QuadMamba, stages 1-2): the map is cut into ``g x g`` coarse windows; one
  chosen coarse window is cut again into ``s x s`` fine windows. The sequence visits the
  coarse windows in raster order with the chosen one replaced by its fine windows, tokens
  in raster order inside each window; then the same sequence reversed (K=2). There are
  ``g*g`` candidate orders, one per choice, built once per map size and cached.

Sizes that the grids do not divide are cut into near-equal windows (``ceil`` splits), so
every order stays a true permutation of the real tokens: no padded token is ever scanned.

A block's shift (rolling the map around its scan) is folded into the orders: scanning the
rolled map in order ``o`` is scanning the map itself in order ``roll^-1[o]``, and the
outputs land back in place. No rolled copy of the map or of the outputs is made.
"""
from functools import lru_cache, wraps
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from quadmamba_kernels import ScanOrders

Shift = Optional[Tuple[int, int]]


def split_bounds(start: int, stop: int, parts: int) -> List[int]:
    """``parts + 1`` boundaries cutting ``[start, stop)`` into near-equal pieces."""
    size = stop - start
    return [start + -(-i * size // parts) for i in range(parts + 1)]


def _band_index(size: int, bounds: List[int]) -> Tensor:
    """For each coordinate in ``[bounds[0], bounds[-1])``: which piece it falls in."""
    index = torch.empty(size, dtype=torch.long)
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        index[lo:hi] = i
    return index


def with_inverse(order: Tensor) -> Tuple[Tensor, Tensor]:
    """``(order, inverse)`` for permutations along the last dimension."""
    inverse = torch.empty_like(order)
    positions = torch.arange(order.shape[-1]).expand_as(order)
    inverse.scatter_(-1, order, positions)
    return order, inverse


def index_cache(builder):
    """Cache ``builder``'s index tensors per arguments, built outside inference mode: a
    cache filled under ``torch.inference_mode()`` must still serve autograd later."""
    cached = lru_cache(maxsize=None)(builder)

    @wraps(builder)
    def build(*args):
        with torch.inference_mode(False):
            return cached(*args)

    build.cache_clear = cached.cache_clear
    return build


@index_cache
def _on_device(builder, args: tuple, device: str):
    """``builder(*args)`` (cached on the CPU) as tensors on ``device``, cached there too: a
    forward pass never copies index tensors to its device again."""
    built = builder(*args)
    return tuple(t.to(device) for t in built) if isinstance(built, tuple) else built.to(device)


def _cached(builder, *args, device=None):
    return _on_device(builder, args, _device_name(device))


@index_cache
def _coarse_window_ids(height: int, width: int, grid: int) -> Tensor:
    rows = _band_index(height, split_bounds(0, height, grid))
    cols = _band_index(width, split_bounds(0, width, grid))
    return (rows[:, None] * grid + cols[None, :]).flatten()


def coarse_window_ids(height: int, width: int, grid: int, device=None) -> Tensor:
    """``(H*W,)`` index of the coarse window each token belongs to, ``g*g`` windows."""
    return _cached(_coarse_window_ids, height, width, grid, device=device)


@index_cache
def _cross_scan_orders(height: int, width: int) -> Tuple[Tensor, Tensor]:
    raster = torch.arange(height * width)
    column_major = raster.view(height, width).t().flatten()
    order = torch.stack([raster, column_major, raster.flip(0), column_major.flip(0)])
    return with_inverse(order[None])


def cross_scan_orders(height: int, width: int, device=None) -> Tuple[Tensor, Tensor]:
    """``(order, inverse)`` of shape ``(1, 4, H*W)``: the 4 VMamba cross-scan directions."""
    return _cached(_cross_scan_orders, height, width, device=device)


@index_cache
def _quadtree_orders(height: int, width: int, grid: int, split: int) -> Tuple[Tensor, Tensor]:
    rows_bounds, cols_bounds = split_bounds(0, height, grid), split_bounds(0, width, grid)
    coarse = _coarse_window_ids(height, width, grid).view(height, width)
    row = torch.arange(height)[:, None].expand(height, width)
    col = torch.arange(width)[None, :].expand(height, width)
    orders = []
    for choice in range(grid * grid):
        r0, r1 = rows_bounds[choice // grid], rows_bounds[choice // grid + 1]
        c0, c1 = cols_bounds[choice % grid], cols_bounds[choice % grid + 1]
        fine = torch.zeros(height, width, dtype=torch.long)
        fine[r0:r1, c0:c1] = (
            _band_index(r1 - r0, [b - r0 for b in split_bounds(r0, r1, split)])[:, None] * split +
            _band_index(c1 - c0, [b - c0 for b in split_bounds(c0, c1, split)])[None, :])
        # Lexicographic key: coarse window, fine window (0 outside the chosen one), row, col.
        key = ((coarse * split * split + fine) * height + row) * width + col
        forward = key.flatten().argsort()
        orders.append(torch.stack([forward, forward.flip(0)]))
    return with_inverse(torch.stack(orders))


def quadtree_orders(height: int, width: int, grid: int = 2, split: int = 2,
                    device=None) -> Tuple[Tensor, Tensor]:
    """``(order, inverse)`` of shape ``(g*g, 2, H*W)``: per choice of the refined coarse
    window, the quadtree sequence and its reverse.

    Args:
        grid: coarse windows per side (2: quadrants of ``H/2 x W/2``).
        split: fine windows per side inside the chosen coarse window (2: ``H/4 x W/4``).
    """
    if height < grid * split or width < grid * split:
        raise ValueError(f'a {height}x{width} map is too small for a quadtree of {grid}x{grid} '
                         f'coarse windows split {split}x{split}: each side needs at least '
                         f'{grid * split} tokens')
    return _cached(_quadtree_orders, height, width, grid, split, device=device)


def cross_merge(y: Tensor, height: int, width: int) -> Tensor:
    """``(B, 4, D, H*W)`` cross-scan outputs -> ``(B, D, H*W)``, back in map order and
    summed; equal to ``merge_sequences`` with the cross-scan inverses, without a gather."""
    batch, _, dim, length = y.shape
    rows = y[:, 0] + y[:, 2].flip(-1)
    cols = (y[:, 1] + y[:, 3].flip(-1)).view(batch, dim, width, height).transpose(2, 3)
    return rows + cols.reshape(batch, dim, length)


def gather_sequences(x: Tensor, order: Tensor) -> Tensor:
    """``(B, D, L)`` map and ``(1 or B, K, L)`` orders -> ``(B, K, D, L)`` sequences."""
    batch, dim, length = x.shape
    index = order[:, :, None, :].expand(batch, order.shape[1], dim, length)
    return x[:, None].expand(batch, order.shape[1], dim, length).gather(-1, index)


def merge_sequences(y: Tensor, inverse: Tensor) -> Tensor:
    """``(B, K, D, L)`` scan outputs back to map order, summed over K -> ``(B, D, L)``."""
    return y.gather(-1, inverse[:, :, None, :].expand_as(y)).sum(1)


def shifted(orders: Tensor, height: int, width: int, shift: Shift) -> Tensor:
    """``orders`` of the map rolled by ``shift`` (``torch.roll`` semantics), as positions of
    the map itself."""
    if shift is None or shift == (0, 0):
        return orders
    rows = (torch.arange(height) - shift[0]) % height
    cols = (torch.arange(width) - shift[1]) % width
    source = (rows[:, None] * width + cols[None, :]).flatten().to(orders.device)
    return source[orders]


class CrossScanOrders(ScanOrders):
    """The 4 cross-scan orders of an unshifted ``H x W`` map, gathered with a transpose and
    flips instead of an index (several times faster on CPUs; equal values)."""

    def __init__(self, height: int, width: int, device=None) -> None:
        super().__init__(_cross_scan_orders(height, width)[0].to(device))
        self.height, self.width = height, width

    def to_scan_order(self, t: Tensor, order_index: Optional[Tensor] = None) -> Tensor:
        batch, _, width, length = t.shape
        t = t.expand(batch, 4, width, length)
        rows = t[:, 0::2]
        cols = t[:, 1::2].unflatten(-1, (self.height, self.width)).transpose(-1, -2).flatten(-2)
        return torch.stack([rows[:, 0], cols[:, 0], rows[:, 1].flip(-1), cols[:, 1].flip(-1)],
                           dim=1)

    def to_map_order(self, y: Tensor, order_index: Optional[Tensor] = None) -> Tensor:
        return cross_merge(y, self.height, self.width)


@index_cache
def _cross_scan_orders_shifted(height: int, width: int, shift: Shift, device: str) -> ScanOrders:
    if shift is None or tuple(shift) == (0, 0):
        return CrossScanOrders(height, width, device)
    orders = shifted(_cross_scan_orders(height, width)[0][0], height, width, shift)
    return ScanOrders(orders[None].to(device))


@index_cache
def _quadtree_scan_orders(height: int, width: int, grid: int, split: int, shift: Shift,
                          device: str) -> ScanOrders:
    orders = shifted(_quadtree_orders(height, width, grid, split)[0], height, width, shift)
    return ScanOrders(orders.to(device))


def _device_name(device) -> str:
    return str(torch.device('cpu' if device is None else device))


def cross_scan_orders_of(height: int, width: int, shift: Shift = None,
                         device=None) -> ScanOrders:
    """The cross scan of an ``H x W`` map rolled by ``shift``, as cached, checked orders."""
    return _cross_scan_orders_shifted(height, width, shift, _device_name(device))


def quadtree_scan_orders(height: int, width: int, grid: int, split: int, shift: Shift = None,
                         device=None) -> ScanOrders:
    """The ``g*g`` candidate quadtree orders of an ``H x W`` map rolled by ``shift``, as
    cached, checked orders (one candidate set per choice of the refined window)."""
    quadtree_orders(height, width, grid, split)  # checks the size
    return _quadtree_scan_orders(height, width, grid, split, shift, _device_name(device))
