"""One entry point for the selective scan, with interchangeable backends.

Every backend has the mamba signature ``fn(u, delta, A, B, C, D, delta_bias,
delta_softplus) -> y``. :func:`selective_scan` validates the shapes (so bad input fails
here with a message, not inside a kernel), turns autocast off so the scan runs in fp32,
and picks the backend: ``'auto'`` takes the highest-priority backend that runs on the
tensors' device.

With ``orders``, the inputs are in 2-D map order and the K directions' outputs come back
summed in map order (see :func:`selective_scan`): the caller says "scan these K orders of
this map" and the backend decides how. Backends that read the orders in place
(``gathers_orders``) get them; for the others the sequences are gathered and the outputs
scattered around the scan in PyTorch: the unfused reference path.
"""
import weakref
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor

from .chunked import selective_scan_chunked, selective_scan_chunked_backward
from .reference import selective_scan_reference
from .map_order import ScanOrders

ScanFn = Callable[..., Tensor]


@dataclass(frozen=True)
class ScanBackend:
    """A selective-scan implementation.

    Args:
        name: the value of ``scan_backend`` that selects it.
        fn: the forward scan, with the signature of :func:`selective_scan_reference`.
        supports: whether it can run on a given device.
        priority: ``'auto'`` picks the supporting backend with the highest priority.
        backward: ``backward(grad_y, u, delta, A, B, C, D, delta_bias, delta_softplus)``
            returning the gradients of the 7 tensor inputs (None where an input is None).
            Without it, ``fn`` must be differentiable by autograd: it then runs without
            autograd in the forward pass and is recomputed in backward (as mamba's CUDA
            kernel does), which keeps its intermediates out of memory either way.
            ``fn`` may return ``(y, saved)`` instead of ``y``: the tensor ``saved`` (chunk
            states, say) is then passed to ``backward`` after ``delta_softplus``.
        auto: whether ``'auto'`` may pick it on a device it supports (a backend can run on
            the CPU for tests without being the CPU's default).
        gathers_orders: ``fn`` and ``backward`` take ``orders=`` (``(G, K, L)`` int32
            candidate orders) and ``order_index=`` (``(B,)`` or None) and read the
            map-order layout of :func:`selective_scan` themselves.
    """
    name: str
    fn: ScanFn
    supports: Callable[[torch.device], bool]
    priority: int
    backward: Optional[Callable[..., Tuple[Optional[Tensor], ...]]] = None
    auto: Callable[[torch.device], bool] = lambda device: True
    gathers_orders: bool = False


_BACKENDS: Dict[str, ScanBackend] = {}


def register_backend(backend: ScanBackend) -> None:
    if backend.name in _BACKENDS or backend.name == 'auto':
        raise KeyError(f'scan backend {backend.name!r} is already registered')
    _BACKENDS[backend.name] = backend


def available_backends(device: Optional[torch.device] = None) -> List[str]:
    """Registered backend names (those that run on ``device`` if it is given)."""
    return [
        name for name, b in _BACKENDS.items() if device is None or b.supports(torch.device(device))
    ]


def resolve_backend(name: str, device: torch.device) -> ScanBackend:
    """The backend called ``name``, or for ``'auto'`` the best one for ``device``."""
    device = torch.device(device)
    if name == 'auto':
        candidates = [b for b in _BACKENDS.values() if b.supports(device) and b.auto(device)]
        return max(candidates, key=lambda b: b.priority)
    if name not in _BACKENDS:
        raise ValueError(f'unknown scan backend {name!r}; choose one of '
                         f"{['auto'] + sorted(_BACKENDS)}")
    backend = _BACKENDS[name]
    if not backend.supports(device):
        raise ValueError(f'scan backend {name!r} cannot run on device {device}; '
                         f'backends for it: {available_backends(device)}')
    return backend


class SelectiveScanFn(torch.autograd.Function):
    """Every backend runs inside this one autograd node: its forward without autograd,
    its backward by the backend's own ``backward`` or else by recomputation.

    Being one ``autograd.Function`` also makes the scan a single traced node
    (``prim::PythonOp.SelectiveScanFn``), which the FLOP counter in
    ``tools/analysis_tools/get_flops.py`` counts as ``9 * B * L * D * N``.
    """

    @staticmethod
    def forward(ctx, backend, delta_softplus, orders, order_index, u, delta, A, B, C, D,
                delta_bias):
        options = {} if orders is None else {'orders': orders, 'order_index': order_index}
        with torch.no_grad():
            out = backend.fn(u, delta, A, B, C, D, delta_bias, delta_softplus, **options)
        y, saved = out if isinstance(out, tuple) else (out, None)
        ctx.backend, ctx.delta_softplus, ctx.options = backend, delta_softplus, options
        ctx.has_saved = saved is not None
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, saved)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        *saved, extra = ctx.saved_tensors
        needed = ctx.needs_input_grad[4:]
        if ctx.backend.backward is not None:
            grads = ctx.backend.backward(grad_y, *saved, ctx.delta_softplus,
                                         *([extra] if ctx.has_saved else []), **ctx.options)
        else:
            inputs = [None if t is None else t.detach().requires_grad_(need)
                      for t, need in zip(saved, needed)]
            with torch.enable_grad():
                y = ctx.backend.fn(*inputs, ctx.delta_softplus, **ctx.options)
            wanted = [t for t in inputs if t is not None and t.requires_grad]
            found = iter(torch.autograd.grad(y, wanted, grad_y) if wanted else [])
            grads = [next(found) if t is not None and t.requires_grad else None for t in inputs]
        return (None, None, None, None) + tuple(
            g.to(t.dtype) if need and g is not None else None
            for g, t, need in zip(grads, saved, needed))


def _check_inputs(u, delta, A, B, C, D, delta_bias,
                  orders: Union[None, Tensor, ScanOrders]) -> None:

    def fail(msg):
        raise ValueError(f'selective_scan: {msg}')

    if delta.dim() != 3:
        fail(f'delta must be (batch, K*D, L), got shape {tuple(delta.shape)}')
    batch, channels, length = delta.shape
    if B.dim() != 4 or C.dim() != 4 or C.shape[1] != B.shape[1] or channels % B.shape[1]:
        fail(f'B and C must be (batch, K, N, L) with one K that divides the {channels} '
             f'channels of delta; got {tuple(B.shape)} and {tuple(C.shape)}')
    groups = B.shape[1]
    if orders is None and u.shape != delta.shape:
        fail(f'u must have the shape of delta {tuple(delta.shape)}, got {tuple(u.shape)}')
    if orders is not None and tuple(u.shape) != (batch, channels // groups, length):
        fail(f'with orders, u is the map (batch, D={channels // groups}, L={length}), '
             f'got {tuple(u.shape)}')
    if A.dim() != 2 or A.shape[0] != channels:
        fail(f'A must be (K*D={channels}, N), got {tuple(A.shape)}')
    n_state = A.shape[1]
    for name, t in (('B', B), ('C', C)):
        if t.shape[0] != batch or t.shape[2] != n_state or t.shape[3] != length:
            fail(f'{name} must be (batch={batch}, K, N={n_state}, L={length}), '
                 f'got {tuple(t.shape)}')
    for name, t in (('D', D), ('delta_bias', delta_bias)):
        if t is not None and tuple(t.shape) != (channels, ):
            fail(f'{name} must be ({channels},), got {tuple(t.shape)}')
    devices = {t.device for t in (u, delta, A, B, C, D, delta_bias, orders) if t is not None}
    if len(devices) > 1:
        fail(f'all inputs must be on one device, got {sorted(map(str, devices))}')
    if isinstance(orders, Tensor):
        if orders.dim() != 3 or orders.shape[0] not in (1, batch) or tuple(
                orders.shape[1:]) != (groups, length):
            fail(f'orders must be (1 or batch={batch}, K={groups}, L={length}), '
                 f'got {tuple(orders.shape)}')
        if orders.dtype.is_floating_point or orders.dtype.is_complex or orders.dtype == torch.bool:
            fail(f'orders must be an integer tensor, got {orders.dtype}')
    elif orders is not None and tuple(orders.shape[1:]) != (groups, length):
        fail(f'orders must be (candidates, K={groups}, L={length}), got {tuple(orders.shape)}')


# Raw order tensors that were checked, by id while alive, with the version they had then.
_CHECKED: Dict[int, Tuple[weakref.ref, int, ScanOrders]] = {}


def as_scan_orders(orders: Union[Tensor, ScanOrders], batch: int) -> Tuple[ScanOrders,
                                                                           Optional[Tensor]]:
    """``(ScanOrders, order_index)`` for a :class:`ScanOrders` or a raw ``(1 or batch, K, L)``
    tensor (checked once per tensor and version: the check syncs)."""
    if isinstance(orders, ScanOrders):
        return orders, None
    key = id(orders)
    ref, version, checked = _CHECKED.get(key, (None, None, None))
    if ref is None or ref() is not orders or version != orders._version:
        try:
            checked = ScanOrders(orders)
        except ValueError as error:
            raise ValueError(f'selective_scan: {error}') from None
        _CHECKED[key] = (weakref.ref(orders, lambda _: _CHECKED.pop(key, None)),
                         orders._version, checked)
    per_sample = orders.shape[0] > 1
    return checked, (torch.arange(batch, device=orders.device) if per_sample else None)


def selective_scan(u: Tensor,
                   delta: Tensor,
                   A: Tensor,
                   B: Tensor,
                   C: Tensor,
                   D: Optional[Tensor] = None,
                   delta_bias: Optional[Tensor] = None,
                   delta_softplus: bool = False,
                   *,
                   orders: Union[None, Tensor, ScanOrders] = None,
                   order_index: Optional[Tensor] = None,
                   backend: str = 'auto',
                   output_fp32: bool = False) -> Tensor:
    """Selective scan with the mamba signature; see :func:`selective_scan_reference`.

    The state and all arithmetic are fp32 whatever the input dtypes and autocast say.

    Args:
        orders: the map-order layout: a :class:`ScanOrders` of ``(G, K, L)`` candidate
            orders (checked once when made; build one per map size and reuse it) or a raw
            ``(1 or batch, K, L)`` integer tensor of permutations. ``u`` is then the
            ``(batch, D, L)`` map, ``delta`` ``(batch, K*D, L)`` and ``B``, ``C``
            ``(batch, K, N, L)`` hold each direction's values at the map positions, and
            direction k scans the positions ``orders[g, k]`` in turn. Returns the
            ``(batch, D, L)`` map-order sum of the K directions' outputs; equal to gathering
            the K sequences, scanning, and scattering the outputs back.
        order_index: ``(batch,)`` integers, the candidate set ``g`` of each sample (for a
            :class:`ScanOrders` with several candidates).
        backend: a registered backend name or ``'auto'``.
        output_fp32: return fp32 (for AMP) instead of the dtype of ``u``.
    """
    _check_inputs(u, delta, A, B, C, D, delta_bias, orders)
    if orders is None or isinstance(orders, Tensor):
        if order_index is not None:
            raise ValueError('selective_scan: order_index needs orders as a ScanOrders')
        if orders is not None:
            orders, order_index = as_scan_orders(orders, delta.shape[0])
    else:
        try:
            orders.check_index(order_index, delta.shape[0])
        except ValueError as error:
            raise ValueError(f'selective_scan: {error}') from None
    impl = resolve_backend(backend, u.device)
    with torch.autocast(device_type=u.device.type, enabled=False):
        if orders is None:
            y = SelectiveScanFn.apply(impl, delta_softplus, None, None, u, delta, A, B, C, D,
                                      delta_bias)
        elif impl.gathers_orders:
            index = None if order_index is None else order_index.to(torch.int32)
            y = SelectiveScanFn.apply(impl, delta_softplus, orders.orders_int32, index, u,
                                      delta, A, B, C, D, delta_bias)
        else:
            batch, channels, length = delta.shape
            k = B.shape[1]
            sequences = [orders.to_scan_order(t, order_index).flatten(1, 2) for t in (
                u[:, None], delta.view(batch, k, channels // k, length))]
            y = SelectiveScanFn.apply(impl, delta_softplus, None, None, *sequences, A,
                                      orders.to_scan_order(B, order_index),
                                      orders.to_scan_order(C, order_index), D, delta_bias)
            y = orders.to_map_order(y.view(batch, k, channels // k, length), order_index)
    return y if output_fp32 else y.to(u.dtype)


register_backend(
    ScanBackend('reference', selective_scan_reference, supports=lambda device: True, priority=0))
register_backend(
    ScanBackend('chunked', selective_scan_chunked, supports=lambda device: True, priority=10,
                backward=selective_scan_chunked_backward))
try:
    from . import triton_scan
except ImportError:  # no triton package: the PyTorch backends remain
    triton_scan = None
if triton_scan is not None:
    register_backend(
        ScanBackend('triton', triton_scan.selective_scan_triton,
                    # On the CPU only through the Triton interpreter (TRITON_INTERPRET=1, tests).
                    supports=lambda device: device.type == 'cuda' or triton_scan.INTERPRETED,
                    auto=lambda device: device.type == 'cuda', priority=20,
                    backward=triton_scan.selective_scan_triton_backward, gathers_orders=True))
