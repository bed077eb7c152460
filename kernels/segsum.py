"""Selective scan in plain, static PyTorch: exact, traceable and exportable (ONNX).

The recurrence ``h_t = a_t h_{t-1} + b_t`` (``a_t = exp(dA_t)``) is solved in blocks of ``T``
consecutive steps (``T`` from :data:`BLOCK_LENGTHS`, one that divides the length where one
does). The sequence is held *step-major*, ``(T, ...)`` with step ``t`` of every block at
index ``t``, so the ``T`` steps run as written, one multiply-add each over all ``M`` blocks of
all channels at once. The state entering each block follows from the same recurrence one
level up (the block-end states with the blocks' total decays ``exp(sum dA)``), applied
recursively; then the steps run once more from those states. So the whole scan is ``O(L)``
work with the arithmetic of the sequential reference: every decay is the exponential of a
step's ``dA`` or of an exact sum of them (all exponents ``<= 0`` when ``delta * A <= 0``, as
with softplus and ``A < 0``), nothing overflows or underflows that the exact result does
not, and nothing is clamped or approximated.

Each pass over the steps of a block is one ``torch.scan`` under ``torch.export``, which torch's
default ONNX exporter turns into one standard ONNX ``Scan`` node (its body the work of one
step, on slices that stay in the cache); elsewhere (eager, ``torch.compile``, the TorchScript
exporter) the steps are unrolled.

:func:`selective_scan_projected_segsum` is the whole SS2D scan core in this form, the one
exported to ONNX: the input projection is applied on the map (``D`` channels in, ``K * (R +
2N)`` out) and its outputs gathered into the step-major layout (row gathers; padding steps
read a zero token). With a scalar state per channel (``N = 1``, as in QuadMamba),
``dt_proj`` (one matmul, the bias folded in), delta, the decays ``exp(delta A)`` and the
inputs ``delta u B`` of all steps are whole-tensor operators, and each pass over a block's
steps is one multiply-add per step (the second also gives ``C h``); with ``N > 1`` the first
pass over a block gathers each step's tokens and computes delta, the decays, the inputs and
the block ends inside the step, the second the states and ``C h``. The outputs go back to
map order with one row gather per direction. The graph has standard operators only (Scan,
MatMul, Gather, Exp, Log, Mul, Add, Min, Max, ReduceSum, Concat, Reshape, Transpose) with
shapes fixed by the map size.

:func:`selective_scan_segsum` has the mamba signature (backend ``'segsum'`` of
:func:`~.interface.selective_scan`) and is differentiable by autograd. On CPUs in eager mode
the C and chunked backends are faster.
"""
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .chunked import discretize
from .map_order import ScanOrders

# Block lengths tried in turn: the first that divides the length (into two or more blocks)
# is taken, so that no padding step is needed; 32 with padding otherwise. Each pass over a
# block's steps is one ONNX Scan node (an unrolled loop with the TorchScript exporter): long
# blocks mean few levels, and slices of a step small enough to stay in the cache.
BLOCK_LENGTHS = (32, 28, 24, 16, 14, 12, 8, 7)
# Up to this many steps the recurrence runs as it is, without blocks.
SEQUENTIAL_MAX = 32
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


Carry = Tuple[Tensor, ...]


def _scan(step: Callable[..., Tuple[Carry, Carry]], carry: Carry, xs: Carry,
          extra: Carry = ()) -> Tuple[Carry, Carry]:
    """``carry, y_t = step(carry, x_t, *extra)`` over the leading dimension of the tensors
    ``xs``: the last carry and the stacked outputs.

    Under ``torch.export`` (which torch's default ONNX exporter runs) this is one scan
    operator (``torch.ops.higher_order.scan``): one ONNX ``Scan`` node whose body is ``step``,
    reading each step in place and writing the outputs into one tensor; the body's slices
    of a step stay in the cache. Elsewhere (eager, ``torch.compile``, the TorchScript
    exporter) the steps are unrolled. ``step`` gets every tensor it needs as an argument
    (``extra``: the same at every step) and must not return an argument as an output (the
    scan forbids aliases).
    """
    if torch.compiler.is_exporting():
        from torch._higher_order_ops.scan import scan, scan_op
        carry = [c.contiguous() for c in carry]  # as the scan makes its carries
        if torch.compiler.is_dynamo_compiling():  # a strict export: dynamo takes torch.scan

            def combine(carry_list, x_list):
                new_carry, out = step(tuple(carry_list), tuple(x_list), *extra)
                return list(new_carry), list(out)

            last, out = scan(combine, carry, list(xs))
            return tuple(last), tuple(out)
        n_carry, n_xs = len(carry), len(xs)

        def body(*args):
            new_carry, out = step(args[:n_carry], args[n_carry:n_carry + n_xs],
                                  *args[n_carry + n_xs:])
            return [*new_carry, *out]

        # The operator itself, traced as it is (torch.scan would first run dynamo on the
        # body, once per call).
        flat = scan_op(body, carry, list(xs), tuple(extra))
        return tuple(flat[:n_carry]), tuple(flat[n_carry:])
    outs = []
    for x_t in zip(*(x.unbind(0) for x in xs)):
        carry, out = step(carry, x_t, *extra)
        outs.append(out)
    return carry, tuple(torch.stack(o) for o in zip(*outs))


def _recurrence_step(carry: Carry, x: Carry) -> Tuple[Carry, Carry]:
    h = x[0] * carry[0] + x[1]
    return (h, ), (h.clone(), )  # clone: no alias between carry and output


def _end_step(carry: Carry, x: Carry) -> Tuple[Carry, Carry]:
    return (x[0] * carry[0] + x[1], ), ()


def _entering(ends: Tensor, dim: int) -> Tensor:
    """The state entering each block, from the true states at block ends along ``dim``: zero,
    then the end of the block before."""
    blocks = ends.shape[dim]
    return torch.cat([torch.zeros_like(ends.narrow(dim, 0, 1)), ends.narrow(dim, 0, blocks - 1)],
                     dim)


def _block_starts(dA: Tensor, a: Tensor, b: Tensor, dim: int) -> Tensor:
    """The state entering each block of a step-major blocked sequence (``a = exp(dA)``)."""
    zero = b.new_zeros(b.shape[1:])
    if b.shape[dim + 1] == 1:  # one block
        return zero
    (zero_start, ), _ = _scan(_end_step, (zero, ), (a, b))  # block ends, each from zero
    # The true states at block ends: the same recurrence over blocks, with the blocks' total
    # decays; then the state entering each block is the end of the one before.
    return _entering(linear_recurrence(dA.sum(0), zero_start, dim), dim)


def _blocked_states(dA: Tensor, b: Tensor, dim: int) -> Tensor:
    """All states of a step-major blocked sequence: ``dA`` and ``b`` are ``(T, ...)`` with
    step ``t`` of every block at index ``t``, the blocks along ``dim`` of a step."""
    a = dA.exp()
    return _scan(_recurrence_step, (_block_starts(dA, a, b, dim), ), (a, b))[1][0]


def _output_step(carry: Carry, x: Carry) -> Tuple[Carry, Carry]:
    h = x[0] * carry[0] + x[1]
    return (h, ), (h * x[2][..., None], )  # (C's axis of size 1 made inside the step)


def _output_states(dA: Tensor, b: Tensor, C: Tensor, dim: int) -> Tensor:
    """``C_t h_t`` of every state of a step-major blocked sequence with a scalar state per
    channel: ``dA`` and ``b`` as for :func:`_blocked_states`, ``C`` the same without the last
    (channel) axis. The pass over the block ends is one multiply-add per step; the second
    pass, from the entering states, one multiply-add and the product with ``C``."""
    a = dA.exp()
    return _scan(_output_step, (_block_starts(dA, a, b, dim), ), (a, b, C))[1][0]


def linear_recurrence(dA: Tensor, b: Tensor, dim: int = -1) -> Tensor:
    """``h_t = exp(dA_t) * h_{t-1} + b_t`` along ``dim``, from ``h_{-1} = 0``: all states."""
    dim = dim % dA.dim()
    length = int(dA.shape[dim])  # static (a tracer's size is a tensor)
    dA, b = dA.movedim(dim, 0), b.movedim(dim, 0)
    if length <= SEQUENTIAL_MAX:
        return _scan(_recurrence_step, (b.new_zeros(b.shape[1:]), ), (dA.exp(), b))[1][0].movedim(
            0, dim)
    block = block_length(length)
    blocks = -(-length // block)
    pad = blocks * block - length
    if pad:  # padding steps have dA = 0 and b = 0: they come last and change nothing before
        dA = torch.cat([dA, dA.new_zeros((pad, ) + dA.shape[1:])])
        b = torch.cat([b, b.new_zeros((pad, ) + b.shape[1:])])
    # step-major (T, M, ...): step t of every block at index t
    dA = dA.reshape((blocks, block) + dA.shape[1:]).transpose(0, 1)
    b = b.reshape((blocks, block) + b.shape[1:]).transpose(0, 1)
    h = _blocked_states(dA, b, 0).transpose(0, 1).reshape((blocks * block, ) + b.shape[2:])
    return (h[:length] if pad else h).movedim(0, dim)


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


def _map_scan(dts: Tensor, index: Tensor, rows: Tensor, dt_weight: Tensor, B: Tensor,
              C: Tensor, A: Tensor) -> Tensor:
    """The scan outputs ``(T, B, K, M, D)`` of step-major blocks (blocks along M).

    Args:
        dts: ``(T, B, K, M, R + 1)`` low-rank input of ``dt_proj`` (a last channel of ones).
        index: ``(T, B, K, M)`` row of ``rows`` each step reads (its token).
        rows: ``(rows, D)`` the tokens.
        dt_weight: ``(K, R + 1, D)`` ``dt_proj`` with its bias as the last input channel.
        B, C: ``(T, B, K, M, N)``.
        A: ``(K, D, N)``.

    With ``N = 1`` delta, the decays and the inputs of all steps are computed first, each one
    vectorised operator over the whole ``(T, B, K, M, D)`` tensor, and each pass over the T
    steps (the block ends; then the states and ``C h``) is one :func:`_scan` of one
    multiply-add per step. In ONNX Runtime with 2 threads the many small operators of a step
    that does all its work (below) are each split across the thread pool, at every one of the
    ~700 steps of QuadMamba-S at 224x224; the whole-tensor form is faster there and as fast
    at 1 thread (``docs/benchmarks.md``). With ``N > 1`` (a state axis would multiply those
    tensors by N) each pass is one :func:`_scan` whose step does all the work of one step on
    slices that stay in the cache: the first gathers the step's tokens, projects delta (one
    small matmul), and forms the decay and the input (it also sums the blocks' log decays and
    gives the block ends); the second updates the states and gives ``C h``. The broadcast
    dimensions of size 1 are made inside the steps: a traced scan may take a size-1
    dimension of its inputs as a symbolic size (the ONNX exporter traces with size-oblivious
    sizes), which then does not broadcast.
    """
    n_state = A.shape[-1]
    if n_state == 1:
        # A scalar state per channel: whole-tensor delta, decays and inputs; the passes over
        # the steps one multiply-add each.
        delta = softplus(torch.matmul(dts, dt_weight))  # (T, B, K, M, D)
        dA = delta * A[:, None, :, 0]
        b = delta * F.embedding(index, rows) * B
        return _output_states(dA, b, C[..., 0], 2)
    A = A.transpose(1, 2)  # (K, N, D); the state is (B, K, M, N, D)

    def decay_and_input(dts_t: Tensor, index_t: Tensor, B_t: Tensor, A: Tensor,
                        dt_weight: Tensor, rows: Tensor) -> Carry:
        delta = softplus(torch.matmul(dts_t, dt_weight))[..., None, :]
        u_t = F.embedding(index_t, rows)[..., None, :]
        dA = delta * A[:, None]
        return dA, dA.exp(), delta * u_t * B_t[..., None]

    def output(h: Tensor, C_t: Tensor) -> Tensor:
        return (h * C_t[..., None]).sum(-2)

    batch, directions, blocks = index.shape[1:]
    state = (batch, directions, blocks, n_state, rows.shape[-1])
    zero = rows.new_zeros(state)  # (a carry of its own each: the scan forbids aliased inputs)
    extra = (A, dt_weight, rows)
    if blocks == 1:  # one block: one pass

        def single_pass(carry: Carry, x: Carry, *extra: Tensor) -> Tuple[Carry, Carry]:
            _, a, b = decay_and_input(*x[:3], *extra)
            h = a * carry[0] + b
            return (h, ), (output(h, x[3]), )

        return _scan(single_pass, (zero, ), (dts, index, B, C), extra)[1][0]

    def first(carry: Carry, x: Carry, *extra: Tensor) -> Tuple[Carry, Carry]:
        dA, a, b = decay_and_input(*x, *extra)
        return (a * carry[0] + b, carry[1] + dA), (a, b)

    def second(carry: Carry, x: Carry) -> Tuple[Carry, Carry]:
        h = x[0] * carry[0] + x[1]
        return (h, ), (output(h, x[2]), )

    # Block ends from zero and the blocks' log decays; the true ends one level up.
    (zero_start, block_log_decay), (a, b) = _scan(first, (zero, rows.new_zeros(state)),
                                                  (dts, index, B), extra)
    ends = linear_recurrence(block_log_decay, zero_start, 2)
    return _scan(second, (_entering(ends, 2), ), (a, b, C))[1][0]


def _step_major(index: Tensor, block: int, fill: int) -> Tensor:
    """``(..., L)`` sequence positions -> ``(..., T, M)``: entry ``[t, m]`` is the position
    of step ``m * T + t``, ``fill`` for the padding steps after the last."""
    length = int(index.shape[-1])
    blocks = -(-length // block)
    if blocks * block > length:
        index = F.pad(index, (0, blocks * block - length), value=fill)
    return index.unflatten(-1, (blocks, block)).transpose(-1, -2)


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
        back = orders.inverses  # (G, K, L): the step of each position
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
        back = torch.arange(length).expand(1, directions, length)
    # The rows of sample b follow those of the samples before (no branch on the batch size:
    # it may be dynamic); the steps lead: (T, B, K, M), step t of block m of direction k.
    samples = torch.arange(batch).view(-1, 1, 1, 1)
    index = (index + samples * rows_per_sample).permute(2, 0, 1, 3)
    x_dbl_index = (x_dbl_index + samples * x_dbl_rows_per_sample).permute(2, 0, 1, 3)
    # Row of the output of (step t, sample b, direction k, block m), for each map position.
    step, block_of = back % block, back // block
    back = ((step * batch + samples[..., 0]) * directions
            + torch.arange(directions)[:, None]) * blocks + block_of

    # (T, B, K, M, *): the gathered x_dbl, split into dt, B and C. Row gathers as embedding
    # lookups: one Gather node each, its output already in shape.
    x_dbl = F.embedding(x_dbl_index, x_dbl_rows)
    dts, Bs, Cs = torch.split(x_dbl, [dt_rank, n_state, n_state], -1)
    # dt_proj with the bias folded in as one more input channel of constant 1.
    dt_weight = torch.cat([dt_proj_weight.float().transpose(1, 2),
                           dt_bias.float().reshape(directions, 1, dim)], 1)
    dts = torch.cat([dts, torch.ones_like(dts[..., :1])], -1)
    y = _map_scan(dts, index, rows, dt_weight, Bs, Cs, A.float().view(directions, dim, n_state))
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
