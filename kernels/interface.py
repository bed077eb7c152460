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
from typing import Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from .backends import resolve_backend
from .custom_op import scan_options, selective_scan_op
from .map_order import ScanOrders


def _check_inputs(u, delta, A, B, C, D, delta_bias, orders: Union[None, Tensor, ScanOrders],
                  delta_proj_weight: Optional[Tensor]) -> None:

    def fail(msg):
        raise ValueError(f'selective_scan: {msg}')

    if delta_proj_weight is None:
        if delta.dim() != 3:
            fail(f'delta must be (batch, K*D, L), got shape {tuple(delta.shape)}')
        batch, channels, length = delta.shape
    else:
        if (delta_proj_weight.dim() != 3 or delta.dim() != 4
                or delta.shape[1] != delta_proj_weight.shape[0]
                or delta.shape[2] != delta_proj_weight.shape[2]):
            fail('with delta_proj_weight (K, D, R), delta is its low-rank input '
                 f'(batch, K, R, L); got delta {tuple(delta.shape)} and delta_proj_weight '
                 f'{tuple(delta_proj_weight.shape)}')
        batch, groups, _, length = delta.shape
        channels = groups * delta_proj_weight.shape[1]
        if B.dim() == 4 and B.shape[1] != groups:
            fail(f'B must have the K={groups} directions of delta_proj_weight, got '
                 f'{tuple(B.shape)}')
    if B.dim() != 4 or C.dim() != 4 or C.shape[1] != B.shape[1] or channels % B.shape[1]:
        fail(f'B and C must be (batch, K, N, L) with one K that divides the {channels} '
             f'channels of delta; got {tuple(B.shape)} and {tuple(C.shape)}')
    groups = B.shape[1]
    if orders is None and tuple(u.shape) != (batch, channels, length):
        fail(f'u must have the shape of delta {(batch, channels, length)}, got '
             f'{tuple(u.shape)}')
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
    table = orders.orders if isinstance(orders, ScanOrders) else orders
    devices = {t.device for t in (u, delta, A, B, C, D, delta_bias, table, delta_proj_weight)
               if t is not None}
    if len(devices) > 1:
        fail(f'all inputs must be on one device, got {sorted(map(str, devices))}')
    if isinstance(orders, Tensor):
        if orders.dim() != 3 or orders.shape[0] not in (1, batch) or tuple(
                orders.shape[1:]) != (groups, length):
            fail(f'orders must be (1 or batch={batch}, K={groups}, L={length}), '
                 f'got {tuple(orders.shape)}')
        if orders.dtype.is_floating_point or orders.dtype.is_complex or orders.dtype == torch.bool:
            fail(f'orders must be an integer tensor, got {orders.dtype}')
    elif orders is not None and (table.dim() != 3 or table.shape[1] != groups
                                 or table.shape[2] != length):
        fail(f'orders must be (candidates, K={groups}, L={length}), got {list(table.shape)}')


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
        # The callback holds the dict itself: at interpreter exit the module global is gone.
        _CHECKED[key] = (weakref.ref(orders, lambda _, table=_CHECKED: table.pop(key, None)),
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
                   output_fp32: bool = False,
                   delta_proj_weight: Optional[Tensor] = None) -> Tensor:
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
        delta_proj_weight: ``(K, D, R)``: ``delta`` is then the low-rank ``(batch, K, R, L)``
            input of the per-direction projection ``delta[:, k*D + d] = sum_r
            delta_proj_weight[k, d, r] * delta[:, k, r]`` (mamba's ``dt_proj``). Backends
            that can (``projects_delta``) apply it inside the scan, so the full ``delta``
            never exists; for the others it is applied first.
    """
    _check_inputs(u, delta, A, B, C, D, delta_bias, orders, delta_proj_weight)
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
    impl = resolve_backend(backend, u.device, u.dtype)
    if backend == 'auto' and impl.name == 'triton' and not torch.compiler.is_compiling():
        from .triton_probe import is_triton_failure, record_failure
        try:
            return _run(impl, u, delta, A, B, C, D, delta_bias, delta_softplus, orders,
                        order_index, output_fp32, delta_proj_weight)
        except Exception as error:  # a shape the probe did not cover: fall back, once
            if not is_triton_failure(error):
                raise
            record_failure(u.device, u.dtype, error)
            impl = resolve_backend(backend, u.device, u.dtype)
    return _run(impl, u, delta, A, B, C, D, delta_bias, delta_softplus, orders, order_index,
                output_fp32, delta_proj_weight)


def _run(impl, u, delta, A, B, C, D, delta_bias, delta_softplus, orders, order_index,
         output_fp32, delta_proj_weight) -> Tensor:
    """The scan with the backend ``impl``, in fp32, outside autocast."""
    with torch.autocast(device_type=u.device.type, enabled=False):
        if delta_proj_weight is not None and not impl.projects_delta:  # fp32, as in kernels
            delta = torch.matmul(delta_proj_weight.float(), delta.float()).flatten(1, 2)
            delta_proj_weight = None
        if orders is None or impl.gathers_orders:
            index = None if order_index is None else order_index.to(torch.int32)
            y = _scan(impl, delta_softplus, u, delta, A, B, C, D, delta_bias,
                      None if orders is None else orders.orders_int32, index,
                      delta_proj_weight)
        else:
            batch, channels, length = delta.shape
            k = B.shape[1]
            sequences = [orders.to_scan_order(t, order_index).flatten(1, 2) for t in (
                u[:, None], delta.view(batch, k, channels // k, length))]
            y = _scan(impl, delta_softplus, *sequences, A, orders.to_scan_order(B, order_index),
                      orders.to_scan_order(C, order_index), D, delta_bias)
            y = orders.to_map_order(y.view(batch, k, channels // k, length), order_index)
    return y if output_fp32 else y.to(u.dtype)


def _scan(impl, delta_softplus, u, delta, A, B, C, D, delta_bias, orders=None, order_index=None,
          delta_proj_weight=None):
    """One backend call: a backend of plain differentiable PyTorch ops (``traceable``) runs
    as it is, under autograd, so exporters see standard ops; a backend with its own op runs
    as that op, any other with its own backward as the generic custom op."""
    if impl.traceable:
        return impl.fn(u, delta, A, B, C, D, delta_bias, delta_softplus,
                       **scan_options(orders, order_index)).float()
    if impl.op is not None:
        return impl.op(u, delta, A, B, C, D, delta_bias, orders, order_index, delta_softplus)[0]
    y, _ = selective_scan_op(u, delta, A, B, C, D, delta_bias, delta_proj_weight, orders,
                             order_index, delta_softplus, impl.name)
    return y
