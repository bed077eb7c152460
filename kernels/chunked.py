"""Chunked selective scan in plain PyTorch: the fast path on CPUs (and a GPU fallback).

Inside a chunk of T steps the linear recurrence ``h_t = a_t h_{t-1} + b_t`` with
``a_t = exp(dA_t)`` has the closed form ``h_t = e^{S_t} * cumsum_s(b_s e^{-S_s})`` where
``S = cumsum(dA)``: two cumsums and elementwise work, vectorised over every chunk at once,
done in place. Only the states at chunk ends are then carried through a short loop of
``L / T`` steps. The backward pass is written out (no autograd): it recomputes the states,
runs the same chunked recurrence in reverse for ``dL/dh``, and forms every gradient from
those two.

The closed form needs ``e^{+-S}`` to stay finite. T is chosen at run time so that
``T * max|dA| <= LOG_RANGE``: the exponents inside a chunk never exceed ``LOG_RANGE`` in
magnitude, whatever the values of ``delta * A``: large values only make the chunks
shorter, down to single steps, where the recurrence is applied as it is. The result is
exact up to fp32 rounding; nothing is clamped.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

# exp(40) ~ 2.4e17 leaves 1e21 of fp32 headroom for the b terms and their sums.
LOG_RANGE = 40.0
MAX_CHUNK = 128


def chunk_length(max_abs_dA: float, length: int) -> int:
    """The longest chunk (at most ``MAX_CHUNK``) whose exponents stay within ``LOG_RANGE``."""
    limit = MAX_CHUNK if max_abs_dA == 0 else int(LOG_RANGE / max_abs_dA)
    return max(1, min(limit, MAX_CHUNK, length))


def _scan_chunks_(dA: Tensor, b: Tensor) -> None:
    """In place on ``(..., chunks, T)`` views: ``dA`` becomes ``e^{S}`` and ``b`` the state
    of each chunk started from zero."""
    if dA.shape[-1] == 1:  # one step may exceed LOG_RANGE (e^{dA} may underflow): no division
        dA.exp_()
        return
    growth = dA.cumsum_(-1).exp_()
    b.div_(growth).cumsum_(-1).mul_(growth)


def linear_scan_(dA: Tensor, b: Tensor, max_abs_dA: float) -> Tensor:
    """``h_t = exp(dA_t) * h_{t-1} + b_t`` along the last dimension, from ``h_{-1} = 0``.

    Works in place: ``dA`` is overwritten and ``b`` becomes ``h`` (returned). No autograd.
    ``max_abs_dA`` must bound ``|dA|``; it sets the chunk length.
    """
    length = b.shape[-1]
    T = chunk_length(max_abs_dA, length)
    body = length - length % T
    pieces = []  # views (..., chunks, T): the whole chunks, then the shorter tail if any
    if body:
        pieces.append((dA[..., :body].unflatten(-1, (body // T, T)),
                       b[..., :body].unflatten(-1, (body // T, T))))
    if body < length:
        pieces.append((dA[..., body:].unsqueeze(-2), b[..., body:].unsqueeze(-2)))
    for growth, h in pieces:
        _scan_chunks_(growth, h)

    # Carry the true state into each chunk: H_c = a(chunk c-1) * H_{c-1} + h_end(c-1).
    chunk_decay = torch.cat([growth[..., -1] for growth, _ in pieces], -1).unbind(-1)
    chunk_end = torch.cat([h[..., -1] for _, h in pieces], -1).unbind(-1)
    carries = [torch.zeros_like(chunk_end[0])]
    for decay, end in zip(chunk_decay[:-1], chunk_end[:-1]):
        carries.append(decay * carries[-1] + end)
    carry_in = torch.stack(carries, -1)
    start = 0
    for growth, h in pieces:
        h.addcmul_(growth, carry_in[..., start:start + h.shape[-2], None])
        start += h.shape[-2]
    return b


def softplus(z: Tensor) -> Tensor:
    """``log(1 + exp(z))`` to fp32 rounding, from exp, log and arithmetic only.

    ``F.softplus`` calls ``log1p``, which several CPU builds leave unvectorised (a scalar
    loop, about 10x the time of ``exp`` on AMD Zen 4 with AVX-512). Here ``w = 1 + e^z`` is
    rounded and ``log1p(e^z) = log(w) + (e^z - (w - 1)) / w`` restores what the rounding
    lost (the second-order remainder is below fp32 resolution). The exponent is capped at
    20; above it softplus(z) is ``z`` to fp32 precision, and below it softplus(z) > z, so
    ``max(., z)`` picks the right one. Three buffers, the rest in place: fresh
    allocations cost page faults on CPUs.
    """
    if ((z.requires_grad and torch.is_grad_enabled()) or torch.jit.is_tracing()
            or torch.compiler.is_compiling()):  # the same formula, out of place
        e = torch.exp(z.clamp(max=20.))
        w = e + 1
        return torch.maximum(torch.log(w) + (e - (w - 1)) / w, z)
    e = z.clamp(max=20.).exp_()
    w = e + 1
    out = torch.log(w)
    d = w.sub_(1)  # w - 1, exact (Sterbenz) where the correction matters
    e.sub_(d)  # what rounding 1 + e^z lost
    out.add_(e.div_(d.add_(1)))  # d + 1 is w again, exactly
    return torch.maximum(out, z, out=out)


def discretize(delta: Tensor, delta_bias: Optional[Tensor],
                delta_softplus: bool) -> Tuple[Tensor, Tensor]:
    """``(delta + bias, step)`` in fp32, the step being the softplus of the first if asked."""
    raw = delta.float()
    if delta_bias is not None:
        raw = raw + delta_bias.float()[:, None]
    return raw, (softplus(raw) if delta_softplus else raw)


def _max_abs_dA(delta: Tensor, A: Tensor, positive: bool) -> float:
    """``max |delta_t * A_n|`` without forming the product: per channel, the largest
    ``|delta|`` over time times the largest ``|A|`` over states. ``positive``: delta > 0
    (after softplus), so its largest value is its largest magnitude."""
    largest = delta.amax(-1)
    if not positive:  # separate amax/amin: aminmax is several times slower on CPUs
        largest = torch.maximum(largest.abs(), delta.amin(-1).abs())
    return (largest * A.abs().amax(-1)).max().item()


def _states(delta: Tensor, u: Tensor, A: Tensor, B: Tensor, max_abs: float,
            keep_b: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
    """The scan states ``h`` ``(batch, K, D, N, L)`` (and ``b = delta*u*B`` if asked)."""
    batch, groups, n_state, length = B.shape
    dim = u.shape[1] // groups
    delta5 = delta.view(batch, groups, dim, 1, length)
    dA = delta5 * A.view(1, groups, dim, n_state, 1)
    b = (delta * u).view(batch, groups, dim, 1, length)
    B5 = B.view(batch, groups, 1, n_state, length)
    b = b.mul_(B5) if n_state == 1 else b * B5  # in place where the shapes allow
    kept = b.clone() if keep_b else None
    return linear_scan_(dA, b, max_abs), kept


def selective_scan_chunked(u: Tensor,
                           delta: Tensor,
                           A: Tensor,
                           B: Tensor,
                           C: Tensor,
                           D: Optional[Tensor] = None,
                           delta_bias: Optional[Tensor] = None,
                           delta_softplus: bool = False) -> Tensor:
    """Same signature and result as :func:`selective_scan_reference`, in fp32. Not
    differentiable by autograd: :func:`selective_scan_chunked_backward` is its backward."""
    u, A, B, C = (t.float() for t in (u, A, B, C))
    batch, channels, length = u.shape
    n_state = B.shape[2]
    _, delta = discretize(delta, delta_bias, delta_softplus)
    h, _ = _states(delta, u, A, B, _max_abs_dA(delta, A, delta_softplus))
    h = h.mul_(C[:, :, None])
    y = (h.squeeze(3) if n_state == 1 else h.sum(3)).view(batch, channels, length)
    if D is not None:
        y.addcmul_(u, D.float()[:, None])
    return y


def selective_scan_chunked_backward(grad_y: Tensor, u: Tensor, delta: Tensor, A: Tensor,
                                    B: Tensor, C: Tensor, D: Optional[Tensor],
                                    delta_bias: Optional[Tensor],
                                    delta_softplus: bool) -> Tuple[Optional[Tensor], ...]:
    """Gradients of :func:`selective_scan_chunked` for ``(u, delta, A, B, C, D, delta_bias)``.

    With ``gh_t = dL/dh_t`` from the reverse recurrence ``gh_t = a_{t+1} gh_{t+1} + gy_t C_t``:
    ``dL/d(delta_t A) = gh_t * (h_t - b_t)`` (as ``a_t h_{t-1} = h_t - b_t``) and
    ``dL/db_t = gh_t``; everything else follows from ``dA = delta*A``, ``b = delta*u*B``.
    """
    u, A, B, C, grad_y = (t.float() for t in (u, A, B, C, grad_y))
    batch, channels, length = u.shape
    groups, n_state = B.shape[1], B.shape[2]
    dim = channels // groups
    raw_delta, delta = discretize(delta, delta_bias, delta_softplus)
    max_abs = _max_abs_dA(delta, A, delta_softplus)
    h, b = _states(delta, u, A, B, max_abs, keep_b=True)

    # Reverse recurrence, run forwards on flipped sequences: a'_s = a_{L-s}, a'_0 unused.
    delta5 = delta.view(batch, groups, dim, 1, length)
    A5 = A.view(1, groups, dim, n_state, 1)
    dA_rev = torch.empty_like(h)
    dA_rev[..., 0] = 0
    torch.mul(delta5[..., 1:].flip(-1), A5, out=dA_rev[..., 1:])
    gy5 = grad_y.view(batch, groups, dim, 1, length)
    gh = linear_scan_(dA_rev, (gy5 * C[:, :, None]).flip(-1), max_abs).flip(-1)

    grad_C = (gy5 * h).sum(2)
    grad_dA = h.sub_(b).mul_(gh)  # dL/d(delta*A), in h's storage
    grad_A = (grad_dA * delta5).sum((0, 4)).reshape(channels, n_state)
    gh_B = (gh * B[:, :, None]).sum(3).view(batch, channels, length)
    grad_delta = (grad_dA.mul_(A5)).sum(3).view(batch, channels, length).addcmul_(gh_B, u)
    grad_u = gh_B.mul_(delta)
    grad_B = (gh.mul_((delta * u).view(batch, groups, dim, 1, length))).sum(2)
    grad_D = None
    if D is not None:
        grad_u.addcmul_(grad_y, D.float()[:, None])
        grad_D = (grad_y * u).sum((0, 2))
    if delta_softplus:
        grad_delta.mul_(torch.sigmoid(raw_delta))
    grad_bias = grad_delta.sum((0, 2)) if delta_bias is not None else None
    return grad_u, grad_delta, grad_A, grad_B, grad_C, grad_D, grad_bias
