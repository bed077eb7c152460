"""Chunked selective scan in plain PyTorch: the fast path on CPUs (and a GPU fallback).

Inside a chunk of T steps the linear recurrence ``h_t = a_t h_{t-1} + b_t`` with
``a_t = exp(dA_t)`` has the closed form ``h_t = e^{S_t} * cumsum_s(b_s e^{-S_s})`` where
``S = cumsum(dA)``: two cumsums and elementwise work, vectorised over every chunk at once.
Only the states at chunk ends are then carried through a short loop of ``L / T`` steps.

The closed form needs ``e^{+-S}`` to stay finite. T is chosen at run time so that
``T * max|dA| <= LOG_RANGE``: the exponents inside a chunk never exceed ``LOG_RANGE`` in
magnitude, whatever the values of ``delta * A``: large values only make the chunks
shorter, down to single steps, where the recurrence is applied as it is. The result is
exact up to fp32 rounding; nothing is clamped.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

# exp(40) ~ 2.4e17 leaves 1e21 of fp32 headroom for the b terms and their sums.
LOG_RANGE = 40.0
MAX_CHUNK = 128


def chunk_length(max_abs_dA: float, length: int) -> int:
    """The longest chunk (at most ``MAX_CHUNK``) whose exponents stay within ``LOG_RANGE``."""
    limit = MAX_CHUNK if max_abs_dA == 0 else int(LOG_RANGE / max_abs_dA)
    return max(1, min(limit, MAX_CHUNK, length))


def selective_scan_chunked(u: Tensor,
                           delta: Tensor,
                           A: Tensor,
                           B: Tensor,
                           C: Tensor,
                           D: Optional[Tensor] = None,
                           delta_bias: Optional[Tensor] = None,
                           delta_softplus: bool = False) -> Tensor:
    """Same signature and result as :func:`selective_scan_reference`, in fp32."""
    u, delta, A, B, C = (t.float() for t in (u, delta, A, B, C))
    batch, channels, length = u.shape
    groups, n_state = B.shape[1], B.shape[2]
    dim = channels // groups
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)

    # (batch, groups, dim, N, L): B/C broadcast over the channels of their group.
    dA = delta.view(batch, groups, dim, 1, length) * A.view(1, groups, dim, n_state, 1)
    bu = (delta * u).view(batch, groups, dim, 1, length) * B.view(batch, groups, 1, n_state, length)

    T = chunk_length(dA.abs().max().item(), length)
    n_chunks = math.ceil(length / T)
    pad = n_chunks * T - length
    if pad:  # a padded step has a = 1, b = 0: it leaves the state as it is
        dA = F.pad(dA, (0, pad))
        bu = F.pad(bu, (0, pad))
    dA = dA.unflatten(-1, (n_chunks, T))
    bu = bu.unflatten(-1, (n_chunks, T))

    growth = dA.cumsum(-1).exp()  # e^{S_t}, within [e^-LOG_RANGE, e^LOG_RANGE] when T > 1
    if T == 1:  # one step may exceed LOG_RANGE (e^{dA} may underflow): no closed form needed
        h_local = bu
    else:  # the state if each chunk started from zero
        h_local = growth * (bu / growth).cumsum(-1)

    # Carry the true state into each chunk: H_c = a(chunk c-1) * H_{c-1} + h_local_end(c-1).
    # unbind (not indexing in the loop): its backward is one stack, not a zero-filled
    # full-size gradient per step.
    chunk_decay, chunk_end = growth[..., -1].unbind(-1), h_local[..., -1].unbind(-1)
    carries = [torch.zeros_like(chunk_end[0])]
    for c in range(n_chunks - 1):
        carries.append(chunk_decay[c] * carries[-1] + chunk_end[c])
    carry_in = torch.stack(carries, dim=-1)

    h = (h_local + growth * carry_in[..., None]).flatten(-2)[..., :length]
    y = (h * C.view(batch, groups, 1, n_state, length)).sum(3).reshape(batch, channels, length)
    if D is not None:
        y = y + D.float()[:, None] * u
    return y
