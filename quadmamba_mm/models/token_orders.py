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
from contextlib import nullcontext
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torch.fx.experimental.symbolic_shapes import statically_known_true
from torch.utils._python_dispatch import _disable_current_modes

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


class _Tables:
    """Index tensors, built once per (builder, arguments, device) and kept as attributes."""

    def __init__(self) -> None:
        self.names: Dict[tuple, str] = {}


_TABLES = _Tables()


def _device_name(device) -> str:
    return str(torch.device('cpu' if device is None else device))


def _build(builder, args: tuple, device):
    built = builder(*args)
    device = _device_name(device)
    return tuple(t.to(device) for t in built) if isinstance(built, tuple) else built.to(device)


# torch.compile runs this for real (it returns a constant name) instead of tracing the build
# into the graph, where it would run again on every call. It returns a name, not the tables:
# compile reads them as attributes of ``_TABLES``, each under its own name.
@torch.compiler.assume_constant_result
def _table_name(builder, args: tuple, device) -> str:
    key = (builder.__name__, args, _device_name(device))
    name = _TABLES.names.get(key)
    if name is None:
        # Outside fake/proxy tracing (torch.export: the tables become constants of the
        # program) and inference mode (a cache filled there must serve autograd too).
        with torch._C.DisableTorchFunction(), _disable_current_modes(), torch.inference_mode(
                False) if torch.is_inference_mode_enabled() else nullcontext():
            found = _build(builder, args, device)
        name = f'{builder.__name__.strip("_")}_{len(_TABLES.names)}'
        setattr(_TABLES, name, found)
        _TABLES.names[key] = name
    return name


def _cached(builder, *args, device=None):
    """``builder(*args)`` (tensors or a tuple of them) on ``device``, built once and kept: a
    forward pass never builds or copies index tensors again, compiled or exported too."""
    if not all(_known(a) for arg in args for a in (arg if isinstance(arg, tuple) else (arg, ))):
        # A size torch.compile treats as dynamic: the build is traced, so that one graph
        # serves every size (and builds the tables on every call).
        return _build(builder, args, device)
    return getattr(_TABLES, _table_name(builder, args, device))


def _known(value) -> bool:
    """Whether a size argument has one known value: a plain int in eager mode, not a dynamic
    size while torch.compile traces (a symbol without an upper bound, which torch.compile
    passes off as an int to ``isinstance``) nor a size the ONNX tracer records as a tensor."""
    return value is None or isinstance(value, int) and statically_known_true(value < 2**62)


def _coarse_window_ids(height: int, width: int, grid: int) -> Tensor:
    rows = _band_index(height, split_bounds(0, height, grid))
    cols = _band_index(width, split_bounds(0, width, grid))
    return (rows[:, None] * grid + cols[None, :]).flatten()


def coarse_window_ids(height: int, width: int, grid: int, device=None) -> Tensor:
    """``(H*W,)`` index of the coarse window each token belongs to, ``g*g`` windows."""
    return _cached(_coarse_window_ids, height, width, grid, device=device)


def _window_members(height: int, width: int, grid: int) -> Tuple[Tensor, Tensor]:
    ids = _coarse_window_ids(height, width, grid)
    members = torch.nn.functional.one_hot(ids, grid * grid).float()
    return members, members.sum(0)


def window_members(height: int, width: int, grid: int, device=None) -> Tuple[Tensor, Tensor]:
    """``(H*W, g*g)`` one-hot window membership of each token and ``(g*g,)`` token counts."""
    return _cached(_window_members, height, width, grid, device=device)


def _cross_scan_orders(height: int, width: int) -> Tensor:
    raster = torch.arange(height * width)
    column_major = raster.view(height, width).t().flatten()
    return torch.stack([raster, column_major, raster.flip(0), column_major.flip(0)])[None]


def cross_scan_orders(height: int, width: int, device=None) -> Tuple[Tensor, Tensor]:
    """``(order, inverse)`` of shape ``(1, 4, H*W)``: the 4 VMamba cross-scan directions."""
    return _cached(_cross_scan_tables, height, width, None, device=device)


def _quadtree_orders(height: int, width: int, grid: int, split: int) -> Tensor:
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
    return torch.stack(orders)


def quadtree_orders(height: int, width: int, grid: int = 2, split: int = 2,
                    device=None) -> Tuple[Tensor, Tensor]:
    """``(order, inverse)`` of shape ``(g*g, 2, H*W)``: per choice of the refined coarse
    window, the quadtree sequence and its reverse.

    Args:
        grid: coarse windows per side (2: quadrants of ``H/2 x W/2``).
        split: fine windows per side inside the chosen coarse window (2: ``H/4 x W/4``).
    """
    check_quadtree_size(height, width, grid, split)
    return _cached(_quadtree_scan_tables, height, width, grid, split, None, device=device)


def check_quadtree_size(height: int, width: int, grid: int, split: int) -> None:
    if height < grid * split or width < grid * split:
        raise ValueError(f'a {height}x{width} map is too small for a quadtree of {grid}x{grid} '
                         f'coarse windows split {split}x{split}: each side needs at least '
                         f'{grid * split} tokens')


def cross_merge(y: Tensor, height: int, width: int) -> Tensor:
    """``(B, 4, D, H*W)`` cross-scan outputs -> ``(B, D, H*W)``, back in map order and
    summed; equal to ``to_map_order`` with the cross-scan inverses, without a gather."""
    batch, _, dim, length = y.shape
    rows, cols, rows_back, cols_back = y.unbind(1)  # not y[:, k]: no zero-filled gradients
    cols = (cols + cols_back.flip(-1)).view(batch, dim, width, height).transpose(2, 3)
    return (rows + rows_back.flip(-1)).add_(cols.reshape(batch, dim, length))


def shifted(orders: Tensor, height: int, width: int, shift: Shift) -> Tensor:
    """``orders`` of the map rolled by ``shift`` (``torch.roll`` semantics), as positions of
    the map itself."""
    if shift is None or tuple(shift) == (0, 0):
        return orders
    rows = (torch.arange(height) - shift[0]) % height
    cols = (torch.arange(width) - shift[1]) % width
    source = (rows[:, None] * width + cols[None, :]).flatten().to(orders.device)
    return source[orders]


class CrossScanOrders(ScanOrders):
    """The 4 cross-scan orders of an unshifted ``H x W`` map, gathered with a transpose and
    flips instead of an index (several times faster on CPUs; equal values). Made by
    :func:`cross_scan_orders_of`."""
    height: int
    width: int

    def to_scan_order(self, t: Tensor, order_index: Optional[Tensor] = None) -> Tensor:
        # unbind/squeeze and stack, not indexing: their gradients need no zero-filled buffers.
        rows, cols, rows_back, cols_back = t.unbind(1) if t.shape[1] == 4 else [t.squeeze(1)] * 4
        return torch.stack([rows, self._columns(cols), rows_back.flip(-1),
                            self._columns(cols_back).flip(-1)], dim=1)

    def _columns(self, t: Tensor) -> Tensor:
        return t.unflatten(-1, (self.height, self.width)).transpose(-1, -2).flatten(-2)

    def to_map_order(self, y: Tensor, order_index: Optional[Tensor] = None) -> Tensor:
        return cross_merge(y, self.height, self.width)


def _checked(orders: Tensor) -> Tuple[Tensor, Tensor]:
    # The permutation check (a sync), once per cached table; not while a compiler traces.
    checked = ScanOrders(orders, check=not torch.compiler.is_compiling())
    return checked.orders, checked.inverses


def _cross_scan_tables(height: int, width: int, shift: Shift) -> Tuple[Tensor, Tensor]:
    return _checked(shifted(_cross_scan_orders(height, width), height, width, shift))


def _quadtree_scan_tables(height: int, width: int, grid: int, split: int,
                          shift: Shift) -> Tuple[Tensor, Tensor]:
    return _checked(shifted(_quadtree_orders(height, width, grid, split), height, width, shift))


def _quadtree_relabelings(height: int, width: int, grid: int, split: int,
                          shift: Shift) -> Tensor:
    orders, inverses = _cached(_quadtree_scan_tables, height, width, grid, split, shift)
    candidates, directions, length = orders.shape
    # relabel[w, g, k, p] = orders[w, k, inverses[g, k, p]]
    relabel = orders[:, None].expand(candidates, candidates, directions, length).gather(
        -1, inverses[None].expand(candidates, candidates, directions, length))
    # Checked once per cached table (a sync); not while a compiler traces.
    if not torch.compiler.is_compiling() and not bool((relabel == relabel[:, :, :1]).all()):
        raise ValueError('the quadtree directions must visit the tokens of every candidate '
                         'in one order (forward and reversed) to pass the window choice its '
                         'gradient through the map')
    return relabel[:, :, 0].contiguous()


def quadtree_relabelings(height: int, width: int, grid: int, split: int, shift: Shift = None,
                         device=None) -> Tensor:
    """``(g*g, g*g, H*W)`` token relabelings between the quadtree candidates: entry
    ``[w, g, p]`` is the token that sits, in candidate ``w``'s sequences, where token ``p``
    sits in candidate ``g``'s. Every direction gives the same relabeling (checked), which is
    what lets :func:`~.quadtree.with_choice_gradient` work from the map's gradient alone.
    Built once per size and cached."""
    check_quadtree_size(height, width, grid, split)
    shift = None if shift is None else tuple(shift)
    return _cached(_quadtree_relabelings, height, width, grid, split, shift, device=device)


def cross_scan_orders_of(height: int, width: int, shift: Shift = None,
                         device=None) -> ScanOrders:
    """The cross scan of an ``H x W`` map rolled by ``shift``, checked once and cached."""
    shift = None if shift is None or tuple(shift) == (0, 0) else tuple(shift)
    tables = _cached(_cross_scan_tables, height, width, shift, device=device)
    if shift is None:
        return CrossScanOrders.from_checked(*tables, height=height, width=width)
    return ScanOrders.from_checked(*tables)


def quadtree_scan_orders(height: int, width: int, grid: int, split: int, shift: Shift = None,
                         device=None) -> ScanOrders:
    """The ``g*g`` candidate quadtree orders of an ``H x W`` map rolled by ``shift`` (one
    candidate set per choice of the refined window), checked once and cached."""
    check_quadtree_size(height, width, grid, split)
    shift = None if shift is None else tuple(shift)
    return ScanOrders.from_checked(
        *_cached(_quadtree_scan_tables, height, width, grid, split, shift, device=device))
