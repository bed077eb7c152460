"""The selective scan as a PyTorch custom op: ``torch.ops.quadmamba.selective_scan``.

One op for every backend with a hand-written backward (``chunked``, ``cpu``):
``torch.compile`` and ``torch.export`` see a single node with a fake (shape-only)
implementation instead of tracing into the backend, so the run-time chunk length of the
chunked scan or a compiled library call never breaks a graph. A backend may bring its own
op instead (``ScanBackend.op``): the Triton backend's ``torch.library.triton_op``, whose
kernels torch.compile can see (see :mod:`.triton_scan`). The backward pass is a second op,
``quadmamba::selective_scan_backward``, registered as the first one's autograd formula.

Both ops take the backend by its registered name (``'auto'`` is resolved before), the
optional map-order layout (``orders``, ``order_index``) of the backends that read orders in
place and the optional ``delta_proj_weight`` of those that project ``delta`` themselves
(``delta`` is then its low-rank input). The first op returns ``(y, saved)``: ``saved`` is
what the backend keeps for its backward (the C kernel's chunk-end states), an empty tensor
when it keeps nothing.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .backends import get_backend
from .layout import empty_in_layout_of, in_layout_of


def scan_options(orders: Optional[Tensor], order_index: Optional[Tensor],
                  delta_proj_weight: Optional[Tensor] = None) -> dict:
    """The keyword arguments a backend gets for the map-order layout and the low-rank
    ``delta`` (none for what is not used)."""
    options = {} if orders is None else {'orders': orders, 'order_index': order_index}
    if delta_proj_weight is not None:
        options['delta_proj_weight'] = delta_proj_weight
    return options


@torch.library.custom_op('quadmamba::selective_scan', mutates_args=())
def selective_scan_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                      D: Optional[Tensor], delta_bias: Optional[Tensor],
                      delta_proj_weight: Optional[Tensor], orders: Optional[Tensor],
                      order_index: Optional[Tensor], delta_softplus: bool,
                      backend: str) -> Tuple[Tensor, Tensor]:
    impl = get_backend(backend)
    with torch.no_grad():
        out = impl.fn(u, delta, A, B, C, D, delta_bias, delta_softplus,
                      **scan_options(orders, order_index, delta_proj_weight))
    y, saved = out if isinstance(out, tuple) else (out, None)
    y = in_layout_of(y, u)  # the layout the fake implementation promises
    if saved is None:
        saved = u.new_empty(0, dtype=torch.float32)
    return (y.clone() if _aliases(y, u, delta) else y), saved


def _aliases(y: Tensor, *inputs: Tensor) -> bool:
    """Custom op outputs must not share storage with inputs (fp32 u returned as is...)."""
    return any(y.untyped_storage().data_ptr() == t.untyped_storage().data_ptr()
               for t in inputs if t.numel() and y.numel())


@selective_scan_op.register_fake
def _(u, delta, A, B, C, D, delta_bias, delta_proj_weight, orders, order_index, delta_softplus,
      backend):
    impl = get_backend(backend)
    y = empty_in_layout_of(u)  # u is the map with orders, else of delta's shape
    saved_shape = (0, ) if impl.saved_shape is None else impl.saved_shape(u, delta, A, B)
    return y, delta.new_empty(saved_shape, dtype=torch.float32)


@torch.library.custom_op('quadmamba::selective_scan_backward', mutates_args=())
def selective_scan_backward_op(grad_y: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor,
                               C: Tensor, D: Optional[Tensor], delta_bias: Optional[Tensor],
                               delta_proj_weight: Optional[Tensor], saved: Tensor,
                               orders: Optional[Tensor], order_index: Optional[Tensor],
                               delta_softplus: bool, backend: str) -> List[Tensor]:
    """fp32 gradients of ``(u, delta, A, B, C, D, delta_bias, delta_proj_weight)``; empty for
    absent inputs."""
    impl = get_backend(backend)
    inputs = (u, delta, A, B, C, D, delta_bias)
    extra = (saved, ) if impl.saved_shape is not None else ()
    grads = impl.backward(grad_y, *inputs, delta_softplus, *extra,
                          **scan_options(orders, order_index, delta_proj_weight))
    grads = (*grads, None) if delta_proj_weight is None else grads
    return [_fresh(g, t) for g, t in zip(grads, (*inputs, delta_proj_weight))]


def _fresh(grad: Optional[Tensor], like: Optional[Tensor]) -> Tensor:
    """The gradient of input ``like`` in its layout (see :mod:`.layout`), not aliasing it."""
    if like is None or grad is None:
        return grad_placeholder(like)
    grad = in_layout_of(grad, like)
    return grad.clone() if _aliases(grad, like) else grad


def grad_placeholder(like: Optional[Tensor]) -> Tensor:
    device = like.device if like is not None else 'cpu'
    return torch.empty(0, device=device)


@selective_scan_backward_op.register_fake
def _(grad_y, u, delta, A, B, C, D, delta_bias, delta_proj_weight, saved, orders, order_index,
      delta_softplus, backend):
    return [grad_y.new_empty(0) if t is None else empty_in_layout_of(t)
            for t in (u, delta, A, B, C, D, delta_bias, delta_proj_weight)]


def _setup_context(ctx, inputs, output):
    (u, delta, A, B, C, D, delta_bias, delta_proj_weight, orders, order_index, delta_softplus,
     backend) = inputs
    _, saved = output
    ctx.mark_non_differentiable(saved)
    ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, delta_proj_weight, saved, orders,
                          order_index)
    ctx.delta_softplus, ctx.backend = delta_softplus, backend


def _backward(ctx, grad_y, _grad_saved):
    u, delta, A, B, C, D, delta_bias, delta_proj_weight, saved, orders, order_index = (
        ctx.saved_tensors)
    inputs = (u, delta, A, B, C, D, delta_bias, delta_proj_weight)
    # The incoming gradient in y's layout (u's): for a channel-last map, no transposing copy,
    # and the C kernel reads each step's channels as one vector.
    grads = selective_scan_backward_op(in_layout_of(grad_y, u), *inputs, saved, orders,
                                       order_index, ctx.delta_softplus, ctx.backend)
    return input_grads(grads, inputs, ctx.needs_input_grad) + (None, ) * 4


def input_grads(grads, inputs, needs_input_grad) -> Tuple[Optional[Tensor], ...]:
    """The fp32 ``grads`` of a backward op (placeholders for absent inputs) as autograd wants
    them: in each input's dtype, None where an input is absent or needs none."""
    return tuple(g.to(t.dtype) if need and t is not None else None
                 for g, t, need in zip(grads, inputs, needs_input_grad))


selective_scan_op.register_autograd(_backward, setup_context=_setup_context)
