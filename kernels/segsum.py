"""Selective scan in plain, static PyTorch: exact, traceable and exportable (ONNX).

The recurrence ``h_t = a_t h_{t-1} + b_t`` (``a_t = exp(dA_t)``) is solved in blocks of ``T``
consecutive steps (``T`` from :data:`BLOCK_LENGTHS`, one that divides the length where one
does). The sequence is held *step-major*: step ``t`` of every block is one slice ``(..., 1,
M, ...)``, so the ``T`` steps run as written, one multiply-add each over all ``M`` blocks of
all channels at once. The state entering each block follows from the same recurrence one
level up (the block-end states with the blocks' total decays ``exp(sum dA)``), applied
recursively; then the steps run once more from those states. So the whole scan is ``O(L)``
work with the arithmetic of the sequential reference: every decay is the exponential of a
step's ``dA`` or of an exact sum of them (all exponents ``<= 0`` when ``delta * A <= 0``, as
with softplus and ``A < 0``), nothing overflows or underflows that the exact result does
not, and nothing is clamped or approximated.

:func:`selective_scan_projected_segsum` is the whole SS2D scan core in this form, the one
exported to ONNX: the map's tokens are gathered straight into the step-major layout (one
row gather per step; padding steps read a zero token), the input projection is applied on
the map before the gather (``D`` channels in, ``K * (R + 2N)`` out) and ``dt_proj`` per step
as one matmul with the bias folded in; the outputs go back to map order with one row gather
per direction. The graph has standard operators only (MatMul, Gather, Exp, Log, Mul, Add,
Min, Max, Split, Concat, Reshape, Transpose) with shapes fixed by the map size.

:func:`selective_scan_segsum` has the mamba signature (backend ``'segsum'`` of
:func:`~.interface.selective_scan`) and is differentiable by autograd. On CPUs in eager mode
the C and chunked backends are faster.
"""
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .chunked import discretize
from .map_order import ScanOrders

# Block lengths tried in turn: the first that divides the length (into two or more blocks)
# is taken, so that no padding step is needed; 8 with padding otherwise. The length hardly
# changes the arithmetic (one multiply-add per step and level); a short block keeps the
# graph small (about 4 nodes per step of a block).
BLOCK_LENGTHS = (8, 7, 6, 5, 4)
# Up to this many steps the recurrence is unrolled as it is, without blocks.
SEQUENTIAL_MAX = 16
# Above this, exp(z) could overflow fp32; log(1 + e^z) rounds to z from z = 17 on.
_SOFTPLUS_LINEAR = 17.0


def block_length(length: int) -> int:
    """The block length :func:`linear_recurrence` uses for ``length`` steps."""
    if length <= SEQUENTIAL_MAX:
        return length  # one block
    for block in BLOCK_LENGTHS:
        if length % block == 0 and length // block > 1:
            return block
    return BLOCK_LENGTHS[0]


def softplus(z: Tensor) -> Tensor:
    """``log(1 + e^z)`` from Exp, Log, Min and Max, to fp32 rounding and without overflow.

    For ``z <= 17`` the result is at most 17 in fp32; from 17 on, ``log(1 + e^z)`` rounds to
    ``z`` (and ``e^z`` overflows to inf above 88), so the smaller of the two is exact.
    """
    linear = torch.maximum(z, torch.full((), _SOFTPLUS_LINEAR, dtype=z.dtype, device=z.device))
    return torch.minimum(torch.log(torch.exp(z) + 1), linear)


def _steps(t: Tensor, dim: int) -> List[Tensor]:
    """The slices of ``t`` along ``dim``, each keeping the dimension (one Split node)."""
    return list(torch.split(t, 1, dim))


def _entering(ends: Tensor, dim: int) -> Tensor:
    """The state entering each block from the true states at block ends: zero, then the
    end of the previous block."""
    blocks = ends.shape[dim]
    return torch.cat([torch.zeros_like(ends.narrow(dim, 0, 1)), ends.narrow(dim, 0, blocks - 1)],
                     dim)


def _run_steps(a: List[Tensor], b: List[Tensor], h: Optional[Tensor]) -> List[Tensor]:
    """``h_t = a_t h_{t-1} + b_t`` over the given steps from ``h`` (None: from zero)."""
    states = []
    for a_t, b_t in zip(a, b):
        h = b_t if h is None else a_t * h + b_t
        states.append(h)
    return states


def _block_states(a: List[Tensor], b: List[Tensor], block_log_decay: Tensor,
                  dim: int) -> List[Tensor]:
    """All states of a step-major blocked sequence.

    Args:
        a, b: per step ``t``, the decays and inputs of step ``t`` of every block, blocks along
            ``dim``.
        block_log_decay: ``sum_t dA_t`` of every block (the shape of a step).
        dim: the dimension of the blocks.
    """
    zero_start = _run_steps(a, b, None)  # each block started from zero
    if zero_start[-1].shape[dim] == 1:
        return zero_start
    ends = linear_recurrence(block_log_decay, zero_start[-1], dim)  # true states at block ends
    return _run_steps(a, b, _entering(ends, dim))


def linear_recurrence(dA: Tensor, b: Tensor, dim: int = -1) -> Tensor:
    """``h_t = exp(dA_t) * h_{t-1} + b_t`` along ``dim``, from ``h_{-1} = 0``: all states."""
    dim = dim % dA.dim()
    length = int(dA.shape[dim])  # static (a tracer's size is a tensor)
    if length <= SEQUENTIAL_MAX:
        return torch.cat(_run_steps(_steps(dA.exp(), dim), _steps(b, dim), None), dim)
    block = block_length(length)
    blocks = -(-length // block)
    pad = blocks * block - length
    if pad:  # padding steps have dA = 0 and b = 0: they come last and change nothing before
        padding = [0, 0] * (dA.dim() - 1 - dim) + [0, pad]
        dA, b = F.pad(dA, padding), F.pad(b, padding)
    blocked = dA.shape[:dim] + (blocks, block) + dA.shape[dim + 1:]
    # step-major: (..., block, blocks, ...), step t of every block one slice along dim
    dA = dA.reshape(blocked).transpose(dim, dim + 1)
    b = b.reshape(blocked).transpose(dim, dim + 1)
    states = _block_states(_steps(dA.exp(), dim), _steps(b, dim), dA.sum(dim, keepdim=True),
                           dim + 1)
    h = torch.cat(states, dim).transpose(dim, dim + 1).reshape(
        dA.shape[:dim] + (blocks * block, ) + dA.shape[dim + 2:])
    return h.narrow(dim, 0, length) if pad else h


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
    if length == 1:  # the one step from the zero state as written (A stays in the graph)
        h = dA.exp().expand(shape) * 0 + b.expand(shape)
    else:
        h = linear_recurrence(dA.expand(shape), b.expand(shape))
    y = (h * C[:, :, None]).sum(3).reshape(batch, channels, length)
    if D is not None:
        y = y + D.float()[:, None] * u
    return y


def _step_major(index: Tensor, block: int, fill: int) -> Tensor:
    """``(..., L)`` sequence positions -> ``(..., T, M)``: entry ``[t, m]`` is the position
    of step ``m * T + t``, ``fill`` for the padding steps after the last."""
    length = int(index.shape[-1])
    blocks = -(-length // block)
    if blocks * block > length:
        index = F.pad(index, (0, blocks * block - length), value=fill)
    return index.unflatten(-1, (blocks, block)).transpose(-1, -2)


def _steps_position(inverses: Tensor, block: int) -> Tensor:
    """``(..., L)`` step of each position -> its row in the step-major ``(T, M)`` layout."""
    blocks = -(-int(inverses.shape[-1]) // block)
    return (inverses % block) * blocks + inverses // block


def selective_scan_projected_segsum(x: Tensor,
                                    x_proj_weight: Tensor,
                                    dt_proj_weight: Tensor,
                                    dt_bias: Tensor,
                                    A: Tensor,
                                    D: Optional[Tensor] = None,
                                    *,
                                    orders: Union[None, Tensor, ScanOrders] = None,
                                    order_index: Optional[Tensor] = None) -> Tensor:
    """The SS2D scan core of :func:`~.projected.selective_scan_projected` in standard
    operators, fp32 out: ``x_dbl = x_proj(x)`` split into ``(dt, B, C)``, ``delta =
    softplus(dt_proj(dt) + dt_bias)``, the selective scan.

    Args:
        x: with ``orders``, the ``(B, D, L)`` map (``y`` is then ``(B, D, L)``, the K
            directions summed in map order); without, ``(B, K, D, L)`` sequences in scan
            order (``y`` is ``(B, K*D, L)``).
        x_proj_weight: ``(K, R + 2N, D)``.
        dt_proj_weight: ``(K, D, R)``.
        dt_bias: ``(K, D)`` or ``(K*D,)``.
        A: ``(K*D, N)``; D: ``(K*D,)`` or None.
        orders: a :class:`~.map_order.ScanOrders` of ``(G, K, L)`` candidate orders, or a
            raw ``(1, K, L)`` permutation tensor.
        order_index: ``(B,)`` candidate set of each sample (for several candidates).
    """
    # Static sizes as ints (a tracer's sizes are tensors); the batch may stay dynamic.
    directions, width, dim = (int(size) for size in x_proj_weight.shape)
    dt_rank = int(dt_proj_weight.shape[-1])
    n_state = (width - dt_rank) // 2
    x = x.float()
    if orders is not None:
        if isinstance(orders, Tensor):
            orders = ScanOrders(orders)
        if orders.orders.shape[0] > 1 and order_index is None:
            raise ValueError(f'selective_scan_projected_segsum: {orders.orders.shape[0]} '
                             'candidate order sets need an order_index (batch,) that picks one '
                             'per sample')
        table = orders.orders
        if x.dim() != 3 or table.shape[1] != directions or x.shape[2] != table.shape[2]:
            raise ValueError('selective_scan_projected_segsum: with orders (G, K, L) = '
                             f'{tuple(orders.orders.shape)}, x is the (batch, D, L) map of the '
                             f'K={directions} directions of x_proj_weight; got x '
                             f'{tuple(x.shape)}')
    elif x.dim() != 4 or x.shape[1] != directions:
        raise ValueError('selective_scan_projected_segsum: without orders, x is (batch, K, D, L) '
                         f'sequences with the K={directions} of x_proj_weight, got shape '
                         f'{tuple(x.shape)}')
    batch = x.shape[0]
    length = int(orders.orders.shape[-1] if orders is not None else x.shape[-1])
    block = block_length(length)
    blocks = -(-length // block)
    padded = blocks * block > length

    if orders is not None:
        # Token rows (channel-last), with a zero row for the padding steps.
        tokens = x.transpose(1, 2)
        rows_per_sample = length + int(padded)
        rows = (F.pad(tokens, (0, 0, 0, 1)) if padded else tokens).reshape(-1, dim)
        # Step-major token index of every direction: (G, K, T, M); step t of block m of
        # direction k reads token index[g, k, t, m].
        index = _step_major(orders.orders, block, length)
        back = _steps_position(orders.inverses, block)  # (G, K, L)
        x_dbl_rows_per_sample = rows_per_sample * directions
        if order_index is not None:
            index, back = index[order_index], back[order_index]
        # x_proj on the map, all K directions in one matmul: row p*K + k is token p's x_dbl
        # for direction k.
        x_dbl_rows = torch.matmul(rows, x_proj_weight.permute(2, 0, 1).reshape(
            dim, directions * width)).reshape(-1, width)
        x_dbl_index = index * directions + torch.arange(directions).view(1, -1, 1, 1)
    else:
        tokens = x.transpose(2, 3)  # (B, K, L, D)
        rows_per_sample = directions * length + int(padded)
        rows = tokens.reshape(batch, directions * length, dim)
        x_dbl_rows = torch.matmul(tokens, x_proj_weight.transpose(1, 2)).reshape(
            batch, directions * length, width)
        if padded:
            rows, x_dbl_rows = F.pad(rows, (0, 0, 0, 1)), F.pad(x_dbl_rows, (0, 0, 0, 1))
        rows, x_dbl_rows = rows.reshape(-1, dim), x_dbl_rows.reshape(-1, width)
        steps = torch.arange(length) + (torch.arange(directions) * length)[:, None]
        index = _step_major(steps, block, directions * length)[None]
        x_dbl_index = index
        x_dbl_rows_per_sample = rows_per_sample
        back = _steps_position(torch.arange(length).expand(directions, length), block)[None]
    # Row of step l of direction k in the (B, K, T, M) outputs.
    back = back + (torch.arange(directions) * (block * blocks))[:, None]
    # The rows of sample b follow those of the samples before (no branch on the batch size:
    # it may be dynamic).
    samples = torch.arange(batch).view(-1, 1, 1, 1)
    index = index + samples * rows_per_sample
    x_dbl_index = x_dbl_index + samples * x_dbl_rows_per_sample
    back = back + samples[..., 0] * (directions * block * blocks)

    # (B, K, T, M, *) for every step: the gathered x_dbl, split into dt, B and C.
    # Row gathers as embedding lookups: one Gather node, its output already in shape.
    x_dbl = F.embedding(x_dbl_index, x_dbl_rows)
    dts, Bs, Cs = torch.split(x_dbl, [dt_rank, n_state, n_state], -1)
    # dt_proj with the bias folded in as one more input channel of constant 1.
    dt_weight = torch.cat([dt_proj_weight.float().transpose(1, 2),
                           dt_bias.float().reshape(directions, 1, dim)], 1)
    dts = torch.cat([dts, torch.ones_like(dts[..., :1])], -1)
    single = n_state == 1  # N = 1: no state axis at all
    if single:
        A_steps = A.float().view(directions, 1, 1, dim)
    else:
        A_steps = A.float().view(directions, dim, n_state).transpose(1, 2)[:, None, None]
    # The elementwise work on whole (B, K, T, M, D) tensors (few, large nodes), then the
    # recurrence over the T steps of every block.
    u = F.embedding(index, rows)
    delta = softplus(torch.matmul(dts.flatten(2, 3), dt_weight).view(
        -1, directions, block, blocks, dim))
    if not single:  # state axis before the channels: (B, K, T, M, N, D)
        delta, u, Bs, Cs = delta[..., None, :], u[..., None, :], Bs[..., None], Cs[..., None]
    dA = delta * A_steps
    states = _block_states(_steps(dA.exp(), 2), _steps(delta * u * Bs, 2),
                           dA.sum(2, keepdim=True), 3)
    y = torch.cat(states, 2) * Cs
    if not single:
        y = y.sum(-2)
    y = y.reshape(-1, dim)

    if orders is not None:  # back to map order, the K directions summed, plus D * x
        out = None if D is None else tokens * D.float().view(directions, dim).sum(0)
        for k in range(directions):
            y_k = F.embedding(back[:, k], y)
            out = y_k if out is None else out + y_k
        return out.transpose(1, 2)
    y = F.embedding(back, y)
    if D is not None:
        y = y + tokens * D.float().view(1, directions, 1, dim)
    return y.transpose(2, 3).reshape(batch, directions * dim, length)
