"""Selective-scan backends: the protocol, the registry and the backends this package ships.

Every backend has the mamba signature ``fn(u, delta, A, B, C, D, delta_bias,
delta_softplus) -> y`` (see :func:`~quadmamba_kernels.reference.selective_scan_reference`)
and is picked by name, or by ``'auto'``: the highest-priority backend for the device.
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from . import cpu_scan
from .chunked import selective_scan_chunked, selective_scan_chunked_backward
from .reference import selective_scan_reference
from .segsum import selective_scan_segsum

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
            returning the gradients of the 7 tensor inputs (None where an input is None);
            ``fn`` and ``backward`` then run as the custom op
            ``torch.ops.quadmamba.selective_scan`` and its autograd formula. ``fn`` may
            return ``(y, saved)`` instead of ``y``: the tensor ``saved`` (chunk states,
            say) is then passed to ``backward`` after ``delta_softplus``. Without a
            ``backward``, ``fn`` must be ``traceable``.
        auto: ``auto(device, dtype)``: whether ``'auto'`` may pick it on a device it supports
            for inputs of that dtype (a backend can run on the CPU for tests without being
            the CPU's default; the Triton scan is passed over where it failed).
        gathers_orders: ``fn`` and ``backward`` take ``orders=`` (``(G, K, L)`` int32
            candidate orders) and ``order_index=`` (``(B,)`` or None) and read the
            map-order layout of :func:`selective_scan` themselves.
        saved_shape: ``(u, delta, A, B) -> shape`` of the tensor ``saved`` that ``fn``
            returns for ``backward`` (None: ``fn`` returns ``y`` alone). The custom op's
            fake implementation needs it.
        traceable: ``fn`` is plain differentiable PyTorch with no data-dependent control
            flow: it runs outside the custom op, so that tracers and exporters (ONNX) see
            standard operators.
        channels_last: ``fn`` and ``backward`` read ``(batch, channels, L)`` inputs through
            their strides and run fastest on channel-last ones (``(batch, L, channels)`` in
            memory, see :mod:`.layout`): :func:`~.projected.selective_scan_projected` then
            projects the map channel-last, with no transposed copies.
        op: the backend's own registered op with its autograd formula, called instead of
            the generic custom op: ``op(u, delta, A, B, C, D, delta_bias, orders,
            order_index, delta_softplus) -> (y, saved)`` (the Triton backend's
            ``torch.library.triton_op``, whose kernels torch.compile can see).
        projects_delta: ``fn`` and ``backward`` take ``delta_proj_weight=`` ``(K, D, R)``
            with ``delta`` its low-rank ``(batch, K, R, L)`` input (see
            :func:`~.interface.selective_scan`), and ``backward`` then returns its gradient
            too, after the other 7.
    """
    name: str
    fn: ScanFn
    supports: Callable[[torch.device], bool]
    priority: int
    backward: Optional[Callable[..., Tuple[Optional[Tensor], ...]]] = None
    auto: Callable[[torch.device, torch.dtype], bool] = lambda device, dtype: True
    gathers_orders: bool = False
    saved_shape: Optional[Callable[..., Tuple[int, ...]]] = None
    traceable: bool = False
    channels_last: bool = False
    projects_delta: bool = False
    op: Optional[Callable[..., Tuple[Tensor, Tensor]]] = None


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


def get_backend(name: str) -> ScanBackend:
    """The registered backend called ``name`` (no device check)."""
    return _BACKENDS[name]


def resolve_backend(name: str, device: torch.device,
                    dtype: Optional[torch.dtype] = None) -> ScanBackend:
    """The backend called ``name``, or for ``'auto'`` the best one for ``device`` (and for
    inputs of ``dtype``: a backend that failed for them there is passed over)."""
    device = torch.device(device)
    if name == 'auto':
        candidates = [b for b in _BACKENDS.values()
                      if b.supports(device) and b.auto(device, dtype or torch.float32)]
        return max(candidates, key=lambda b: b.priority)
    if name not in _BACKENDS:
        raise ValueError(f'unknown scan backend {name!r}; choose one of '
                         f"{['auto'] + sorted(_BACKENDS)}")
    backend = _BACKENDS[name]
    if not backend.supports(device):
        raise ValueError(f'scan backend {name!r} cannot run on device {device}; '
                         f'backends for it: {available_backends(device)}')
    return backend


register_backend(
    ScanBackend('reference', selective_scan_reference, supports=lambda device: True, priority=0,
                traceable=True))
register_backend(
    ScanBackend('segsum', selective_scan_segsum, supports=lambda device: True, priority=-10,
                auto=lambda device, dtype: False, traceable=True))
register_backend(
    ScanBackend('chunked', selective_scan_chunked, supports=lambda device: True, priority=10,
                backward=selective_scan_chunked_backward))
register_backend(
    ScanBackend('cpu', cpu_scan.selective_scan_cpu,
                # Built on first use; without a C compiler 'auto' falls back to 'chunked'.
                supports=lambda device: device.type == 'cpu' and cpu_scan.available(),
                priority=15, backward=cpu_scan.selective_scan_cpu_backward, gathers_orders=True,
                saved_shape=cpu_scan.saved_states_shape, channels_last=True,
                projects_delta=True))
try:
    from . import triton_probe, triton_scan
except ImportError:  # no triton package: the PyTorch backends remain
    triton_probe = triton_scan = None
if triton_scan is not None:
    register_backend(
        ScanBackend('triton', triton_scan.selective_scan_triton,
                    # On the CPU only through the Triton interpreter (TRITON_INTERPRET=1, tests).
                    supports=lambda device: device.type == 'cuda' or triton_scan.INTERPRETED,
                    # 'auto' takes it on a GPU where a tiny scan of the dtype compiled and ran
                    # (probed once per device and dtype).
                    auto=lambda device, dtype: device.type == 'cuda' and triton_probe.
                    triton_works(device, dtype), priority=20,
                    backward=triton_scan.selective_scan_triton_backward, gathers_orders=True,
                    saved_shape=triton_scan.saved_states_shape,
                    op=triton_scan.selective_scan_triton_op))
