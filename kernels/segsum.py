"""Selective scan in plain, static PyTorch: exact, traceable and exportable (ONNX).

The recurrence ``h_t = a_t h_{t-1} + b_t`` (``a_t = exp(dA_t)``) is solved in blocks of
``BLOCK`` steps. Inside a block it runs as written, step by step, unrolled: ``BLOCK``
multiply-adds over all blocks of all channels at once, with the arithmetic of the
sequential reference, so nothing overflows or underflows that the exact result does not,
whatever the sign of ``delta * A``, and nothing is clamped or approximated. The states
entering each block follow from the same recurrence one level up (the block-end states with
the blocks' total decays ``exp(sum dA)``), applied recursively, so the whole scan is
``O(L)`` work with one exponential per step, in ``log_BLOCK(L)`` levels of slicing,
multiply-adds, cumsum, exp and padding: standard operators with shapes fixed by ``L``.

It is what ``torch.onnx.export`` and other tracers are given (``backend='segsum'``, named
after the segment sums of the first version of this form); on CPUs in eager mode the C and
chunked backends are faster.
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
    # The BLOCK steps of every block as one split each (exported: one Split node, where
    # indexing step by step gave BLOCK strided Gathers).
    decay, b_steps = dA.exp().unbind(-1), b.unbind(-1)
    states = [b_steps[0]]  # each block started from zero
    for step in range(1, block):
        states.append(decay[step] * states[-1] + b_steps[step])
    h = torch.stack(states, -1)
    if h.shape[-2] > 1:
        S = dA.cumsum(-1)  # log of the decay from each block's start, no differences taken
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
