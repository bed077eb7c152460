"""Selective scan in plain, static PyTorch: exact, traceable and exportable (ONNX).

The recurrence ``h_t = a_t h_{t-1} + b_t`` (``a_t = exp(dA_t)``) is solved in blocks of
``BLOCK`` steps with the segment-sum form: inside a block,
``h_t = sum_{s <= t} exp(S_t - S_s) b_s`` with ``S = cumsum(dA)``, a masked
``BLOCK x BLOCK`` matrix per channel. Only ``s <= t`` is kept (the others are set to
``-inf`` before the exponential), so every exponent is the log of a true product of decays:
nothing overflows that the exact result does not, whatever the sign of ``delta * A``, and
nothing is clamped or approximated. The states entering each block follow from the same
recurrence one level up (the block-end states with the blocks' total decays), applied
recursively, so the whole scan is ``O(L * BLOCK)`` work in ``log_BLOCK(L)`` levels of
cumsum, exp, masked matmul and padding: standard operators with shapes fixed by ``L``.

It is slower than the chunked backend and uses ``BLOCK`` times the memory of its inputs;
it is what ``torch.onnx.export`` and other tracers are given (``backend='segsum'``).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .chunked import discretize

BLOCK = 16


def linear_recurrence(dA: Tensor, b: Tensor, block: int = BLOCK) -> Tensor:
    """``h_t = exp(dA_t) * h_{t-1} + b_t`` along the last dimension, from ``h_{-1} = 0``."""
    length = dA.shape[-1]
    pad = (-length) % block
    # Padding steps have dA = 0 (decay 1) and b = 0: they carry the state unchanged.
    dA = F.pad(dA, (0, pad)).unflatten(-1, (-1, block))
    b = F.pad(b, (0, pad)).unflatten(-1, (-1, block))
    S = dA.cumsum(-1)  # (..., blocks, T)
    # seg[t, s] = dA_{s+1} + ... + dA_t summed directly, not as S_t - S_s: no cancellation
    # between large prefix sums when the decays are steep.
    ones = torch.ones(block, block, dtype=torch.bool, device=dA.device)
    steps = dA[..., :, None].expand(*dA.shape, block)  # [r, s] -> dA_r
    seg = steps.masked_fill(~ones.tril(-1), 0).cumsum(-2)  # [t, s] -> sum_{s < r <= t} dA_r
    decay = seg.masked_fill(~ones.tril(), float('-inf')).exp()
    h = (decay @ b[..., None]).squeeze(-1)  # each block started from zero
    if h.shape[-2] > 1:
        ends = linear_recurrence(S[..., -1], h[..., -1], block)  # true state at block ends
        carry = F.pad(ends[..., :-1], (1, 0))  # state entering each block
        h = h + S.exp() * carry[..., None]
    return h.flatten(-2)[..., :length]


def selective_scan_segsum(u: Tensor,
                          delta: Tensor,
                          A: Tensor,
                          B: Tensor,
                          C: Tensor,
                          D: Optional[Tensor] = None,
                          delta_bias: Optional[Tensor] = None,
                          delta_softplus: bool = False) -> Tensor:
    """Same signature and result as :func:`~.reference.selective_scan_reference` (fp32),
    differentiable by autograd."""
    u, A, B, C = (t.float() for t in (u, A, B, C))
    batch, channels, length = u.shape
    groups, n_state = B.shape[1], B.shape[2]
    _, delta = discretize(delta, delta_bias, delta_softplus)
    shape = (batch, groups, channels // groups, n_state, length)
    dA = (delta.view(batch, groups, -1, 1, length) * A.view(1, groups, -1, n_state, 1))
    b = (delta * u).view(batch, groups, -1, 1, length) * B[:, :, None]
    h = linear_recurrence(dA.expand(shape), b.expand(shape))
    y = (h * C[:, :, None]).sum(3).reshape(batch, channels, length)
    if D is not None:
        y = y + D.float()[:, None] * u
    return y
