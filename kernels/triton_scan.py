"""Selective scan in Triton: forward and backward kernels, optionally reading scan orders.

One program owns one sample and a block of ``BLOCK_D`` channels of one direction's group of
D channels, and walks the K directions and, inside each, the sequence in chunks of
``BLOCK_L`` positions. Per chunk and state n, the recurrence ``h_t = a_t h_{t-1} + b_t`` is a
``tl.associative_scan`` of the pairs ``(a, b)`` along the chunk, started from the state
carried over from the previous chunk. The state is fp32 whatever the input dtypes.

The forward pass keeps only the state at each chunk end (``B x K*D x chunks x N`` floats).
The backward pass walks the chunks in reverse: it recomputes each chunk's states from the
saved one before it, and runs the reverse recurrence ``dh_t = a_{t+1} dh_{t+1} + C_t dy_t``
as a forward scan of the flipped chunk (``associative_scan(reverse=True)`` has had
ordering bugs for non-commutative combines on GPUs, triton issue #4362).

Scan orders (``ordered=True``): ``u`` is then the ``(B, D, L)`` map in 2-D order, ``delta``,
``B`` and ``C`` hold the per-direction values at each map position, and ``orders[g, k, i]``
is the map position scanned at step ``i`` of direction ``k``, ``g = order_index[b]`` being
the candidate set of sample ``b`` (read by the kernel: no host sync). The kernels gather through the
orders while they scan and add the K directions' outputs at their map positions, so the K
reordered copies of the map and of the outputs never exist in memory. A sequence that fits
one chunk (up to ``ON_CHIP_LENGTH`` steps) adds up its directions on chip, through the
inverse orders (``tl.gather``), and writes y and du once; a longer one adds each direction
to what the ones before wrote (y, and an fp32 sum of du before the last direction writes
du). Without orders, the layout is mamba's: ``u``, ``delta`` and ``y`` are ``(B, K*D, L)``
in scan order.

Gradients of the per-channel parameters (A, D, delta_bias) and of the group-shared B and C
are written per program and summed afterwards: no atomics, deterministic results.
"""
import os
from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from .custom_op import grad_placeholder, input_grads
from .layout import empty_in_layout_of

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
INTERPRETED = os.environ.get('TRITON_INTERPRET') == '1'


@triton.jit
def _affine(a1, b1, a2, b2):
    """``h -> a2 (a1 h + b1) + b2``: composition of two steps of the linear recurrence."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(z):
    return tl.where(z > 20.0, z, tl.log(1.0 + tl.exp(tl.minimum(z, 20.0))))


@triton.jit
def _column(tile, cols, n):
    """Column ``n`` of a ``(rows, NP)`` tile, as a vector."""
    return tl.sum(tl.where(cols[None, :] == n, tile, 0.0), axis=1)


@triton.jit
def _order_set(index_ptr, b, stride_order_set, HAS_INDEX: tl.constexpr):
    """Offset of the orders of sample b in the order tables: candidate set
    ``order_index[b]`` (or the only one)."""
    candidate = b * 0
    if HAS_INDEX:
        candidate = tl.load(index_ptr + b).to(tl.int64)
    return candidate * stride_order_set


@triton.jit
def _positions(order_ptr, k, steps, L, stride_order_dir, ORDERED: tl.constexpr):
    """The positions in memory of scan steps ``steps`` of direction k, and their mask."""
    mask_l = steps < L
    pos = steps
    if ORDERED:
        pos = tl.load(order_ptr + k * stride_order_dir + steps, mask=mask_l, other=0)
    return pos, mask_l


@triton.jit
def _map_gather(x, inverse_ptr, k, offs, L, stride_order_dir, BLOCK_D: tl.constexpr,
                BLOCK_L: tl.constexpr):
    """The ``(BLOCK_D, BLOCK_L)`` tile ``x`` of direction k's scan steps put in map order, on
    chip: entry p is x at the step ``inverse[k, p]`` that visits position p."""
    step = tl.load(inverse_ptr + k * stride_order_dir + offs, mask=offs < L, other=0)
    return tl.gather(x, tl.broadcast_to(step[None, :], (BLOCK_D, BLOCK_L)), 1)


@triton.jit
def _delta(dt_ptr, bias_ptr, ch, pos, mask, mask_d, stride_dt_channel, stride_dt_step,
           HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """``z = delta + bias`` and the step size ``softplus(z)`` (or z), in fp32."""
    z = tl.load(dt_ptr + ch[:, None] * stride_dt_channel + pos[None, :] * stride_dt_step,
                mask=mask, other=0.0)
    z = z.to(tl.float32)
    if HAS_BIAS:
        z += tl.load(bias_ptr + ch, mask=mask_d, other=0.0)[:, None]
    dt = z
    if SOFTPLUS:
        dt = _softplus(z)
    return z, dt


@triton.jit
def _chunk_inputs(u_ptr, dt_ptr, bias_ptr, order_ptr, k, ch, uch, steps, mask_d, L,
                  stride_u_channel, stride_u_step, stride_dt_channel, stride_dt_step,
                  stride_order_dir, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                  ORDERED: tl.constexpr):
    """Positions, masks, u, ``delta + bias`` and the step size at scan steps ``steps``."""
    pos, mask_l = _positions(order_ptr, k, steps, L, stride_order_dir, ORDERED)
    mask = mask_d[:, None] & mask_l[None, :]
    u = tl.load(u_ptr + uch[:, None] * stride_u_channel + pos[None, :] * stride_u_step,
                mask=mask, other=0.0)
    z, dt = _delta(dt_ptr, bias_ptr, ch, pos, mask, mask_d, stride_dt_channel, stride_dt_step,
                   HAS_BIAS, SOFTPLUS)
    return pos, mask_l, mask, u.to(tl.float32), z, dt


# Kernel arguments, grouped: pointers; sizes; strides of each tensor as (batch, channel or
# group, state, step); then the constexprs. A sample's base offset is int64 (``b`` times a
# batch stride can pass 2**31); offsets inside one sample are int32, which the host checks.
@triton.jit
def _scan_fwd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, order_ptr,
                     inverse_ptr, index_ptr, y_ptr, state_ptr,
                     L, DIM, K,
                     stride_u_batch, stride_u_channel, stride_u_step,
                     stride_dt_batch, stride_dt_channel, stride_dt_step,
                     stride_BC_batch, stride_BC_group, stride_BC_state, stride_BC_step,
                     stride_order_set, stride_order_dir,
                     stride_y_batch, stride_y_channel, stride_y_step,
                     N: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr,
                     BLOCK_L: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                     SOFTPLUS: tl.constexpr, ORDERED: tl.constexpr, HAS_INDEX: tl.constexpr,
                     ON_CHIP: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    order_set = _order_set(index_ptr, b, stride_order_set, HAS_INDEX)
    order_ptr += order_set
    inverse_ptr += order_set
    u_ptr += b * stride_u_batch
    dt_ptr += b * stride_dt_batch
    B_ptr += b * stride_BC_batch
    C_ptr += b * stride_BC_batch
    y_ptr += b * stride_y_batch
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = d < DIM
    cols = tl.arange(0, NP)
    offs = tl.arange(0, BLOCK_L)
    n_chunks = tl.cdiv(L, BLOCK_L)
    y_map = tl.zeros([BLOCK_D, BLOCK_L], tl.float32)  # ON_CHIP: the directions' sum
    for k in range(K):
        ch = k * DIM + d  # channel of delta, A, D, bias
        uch = ch  # channel of u and y
        if ORDERED:
            uch = d
        mask_dn = mask_d[:, None] & (cols < N)[None, :]
        A = tl.load(A_ptr + ch[:, None] * N + cols[None, :], mask=mask_dn, other=0.0) * LOG2E
        carry = tl.zeros([BLOCK_D, NP], tl.float32)
        for c in range(n_chunks):
            pos, mask_l, mask, u, _, dt = _chunk_inputs(
                u_ptr, dt_ptr, bias_ptr, order_ptr, k, ch, uch, c * BLOCK_L + offs, mask_d, L,
                stride_u_channel, stride_u_step, stride_dt_channel, stride_dt_step,
                stride_order_dir, HAS_BIAS, SOFTPLUS, ORDERED)
            dtu = dt * u
            y = tl.zeros([BLOCK_D, BLOCK_L], tl.float32)
            if HAS_D:
                y = u * tl.load(D_ptr + ch, mask=mask_d, other=0.0)[:, None]
            for n in tl.static_range(N):
                Bn = tl.load(B_ptr + k * stride_BC_group + n * stride_BC_state + pos * stride_BC_step,
                             mask=mask_l, other=0.0)
                Cn = tl.load(C_ptr + k * stride_BC_group + n * stride_BC_state + pos * stride_BC_step,
                             mask=mask_l, other=0.0)
                a = tl.where(mask, tl.exp2(dt * _column(A, cols, n)[:, None]), 1.0)
                prod_a, h = tl.associative_scan((a, dtu * Bn.to(tl.float32)[None, :]), 1, _affine)
                h += prod_a * _column(carry, cols, n)[:, None]
                y += h * Cn.to(tl.float32)[None, :]
                # Masked steps have a = 1, b = 0: the last column is the state at the chunk end.
                last = tl.sum(tl.where(offs[None, :] == BLOCK_L - 1, h, 0.0), axis=1)
                carry = tl.where(cols[None, :] == n, last[:, None], carry)
            tl.store(state_ptr + ((b * K * DIM + ch[:, None]) * n_chunks + c) * N + cols[None, :],
                     carry, mask=mask_dn)
            if ON_CHIP:  # one chunk is the whole sequence: add up the directions here
                y_map += _map_gather(y, inverse_ptr, k, offs, L, stride_order_dir, BLOCK_D,
                                     BLOCK_L)
            else:
                y_at = y_ptr + uch[:, None] * stride_y_channel + pos[None, :] * stride_y_step
                if ORDERED:  # add to the directions already written at these map positions
                    y += tl.load(y_at, mask=mask & (k > 0), other=0.0)
                tl.store(y_at, y, mask=mask)
        if ORDERED and not ON_CHIP:
            tl.debug_barrier()  # direction k+1 reads what direction k wrote
    if ON_CHIP:
        tl.store(y_ptr + d[:, None] * stride_y_channel + offs[None, :] * stride_y_step, y_map,
                 mask=mask_d[:, None] & (offs < L)[None, :])


@triton.jit
def _scan_bwd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, order_ptr,
                     inverse_ptr, index_ptr, dy_ptr, state_ptr, du_ptr, du_sum_ptr, ddt_ptr,
                     dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
                     L, DIM, K, n_tiles,
                     stride_u_batch, stride_u_channel, stride_u_step,
                     stride_dt_batch, stride_dt_channel, stride_dt_step,
                     stride_BC_batch, stride_BC_group, stride_BC_state, stride_BC_step,
                     stride_order_set, stride_order_dir,
                     stride_dy_batch, stride_dy_channel, stride_dy_step,
                     stride_du_batch, stride_du_channel, stride_du_step,
                     stride_ddt_batch, stride_ddt_channel, stride_ddt_step,
                     N: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr,
                     BLOCK_L: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                     SOFTPLUS: tl.constexpr, ORDERED: tl.constexpr, HAS_INDEX: tl.constexpr,
                     ON_CHIP: tl.constexpr, KNP: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    order_set = _order_set(index_ptr, b, stride_order_set, HAS_INDEX)
    order_ptr += order_set
    inverse_ptr += order_set
    u_ptr += b * stride_u_batch
    dt_ptr += b * stride_dt_batch
    B_ptr += b * stride_BC_batch
    C_ptr += b * stride_BC_batch
    dy_ptr += b * stride_dy_batch
    du_ptr += b * stride_du_batch
    du_sum_ptr += b * stride_du_batch
    ddt_ptr += b * stride_ddt_batch
    blk = tl.program_id(1)
    n_blocks = tl.num_programs(1)
    cols = tl.arange(0, NP)
    offs = tl.arange(0, BLOCK_L)
    n_chunks = tl.cdiv(L, BLOCK_L)
    # ON_CHIP (one chunk is the whole sequence): a program takes channel tiles blk,
    # blk + n_blocks, ... and adds up its dB and dC over them here, row k * NP + n, so that
    # the partials are one per program, not one per tile. Otherwise one tile a program.
    rows = tl.arange(0, KNP)
    dB_tiles = tl.zeros([KNP, BLOCK_L], tl.float32)
    dC_tiles = tl.zeros([KNP, BLOCK_L], tl.float32)
    for tile in range(blk, n_tiles, n_blocks):
        d = tile * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_d = d < DIM
        du_map = tl.zeros([BLOCK_D, BLOCK_L], tl.float32)  # ON_CHIP: the directions' sum
        for k in range(K):
            ch = k * DIM + d
            uch = ch
            if ORDERED:
                uch = d
            mask_dn = mask_d[:, None] & (cols < N)[None, :]
            A = tl.load(A_ptr + ch[:, None] * N + cols[None, :], mask=mask_dn, other=0.0)
            D = tl.zeros([BLOCK_D], tl.float32)
            if HAS_D:
                D = tl.load(D_ptr + ch, mask=mask_d, other=0.0)
            dh_carry = tl.zeros([BLOCK_D, NP], tl.float32)  # dL/dh at the next chunk's start
            dA = tl.zeros([BLOCK_D, NP], tl.float32)
            dD = tl.zeros([BLOCK_D], tl.float32)
            dbias = tl.zeros([BLOCK_D], tl.float32)
            # dB, dC of this program: (batch, K, blocks, N, L), summed over the blocks after.
            part = ((b * K + k) * n_blocks + blk) * N
            for cc in range(n_chunks):
                c = n_chunks - 1 - cc
                pos, mask_l, mask, u, z, dt = _chunk_inputs(
                    u_ptr, dt_ptr, bias_ptr, order_ptr, k, ch, uch, c * BLOCK_L + offs, mask_d,
                    L, stride_u_channel, stride_u_step, stride_dt_channel, stride_dt_step,
                    stride_order_dir, HAS_BIAS, SOFTPLUS, ORDERED)
                # delta one step later, for the gate a_{t+1} of the reverse recurrence
                pos_next, mask_l_next = _positions(order_ptr, k, c * BLOCK_L + offs + 1, L,
                                                   stride_order_dir, ORDERED)
                mask_next = mask_d[:, None] & mask_l_next[None, :]
                _, dt_next = _delta(dt_ptr, bias_ptr, ch, pos_next, mask_next, mask_d,
                                    stride_dt_channel, stride_dt_step, HAS_BIAS, SOFTPLUS)
                dy = tl.load(dy_ptr + uch[:, None] * stride_dy_channel
                             + pos[None, :] * stride_dy_step, mask=mask, other=0.0)
                dy = dy.to(tl.float32)
                dtu = dt * u
                du = dy * D[:, None]
                dD += tl.sum(dy * u, axis=1)
                ddt = tl.zeros([BLOCK_D, BLOCK_L], tl.float32)
                for n in tl.static_range(N):
                    An = _column(A, cols, n)[:, None]
                    BC_at = k * stride_BC_group + n * stride_BC_state + pos * stride_BC_step
                    Bn = tl.load(B_ptr + BC_at, mask=mask_l, other=0.0).to(tl.float32)[None, :]
                    Cn = tl.load(C_ptr + BC_at, mask=mask_l, other=0.0).to(tl.float32)[None, :]
                    # Recompute the states of this chunk from the one saved before it.
                    h0 = tl.load(state_ptr + ((b * K * DIM + ch) * n_chunks + c - 1) * N + n,
                                 mask=mask_d & (c > 0), other=0.0)
                    a = tl.where(mask, tl.exp2(dt * An * LOG2E), 1.0)
                    bu = dtu * Bn
                    prod_a, h = tl.associative_scan((a, bu), 1, _affine)
                    h += prod_a * h0[:, None]
                    # dh_t = a_{t+1} dh_{t+1} + C_t dy_t, from the carry of the next chunk.
                    gate = tl.where(mask_next, tl.exp2(dt_next * An * LOG2E), 1.0)
                    prod_g, dh = tl.associative_scan((tl.flip(gate, 1), tl.flip(Cn * dy, 1)),
                                                     1, _affine)
                    dh = tl.flip(dh + prod_g * _column(dh_carry, cols, n)[:, None], 1)
                    first = tl.sum(tl.where(offs[None, :] == 0, dh, 0.0), axis=1)
                    dh_carry = tl.where(cols[None, :] == n, first[:, None], dh_carry)

                    dh_ah = dh * (h - bu)  # dL/dh_t * a_t h_{t-1}
                    du += dh * dt * Bn
                    ddt += dh * u * Bn + dh_ah * An
                    dA += tl.where(cols[None, :] == n, tl.sum(dh_ah * dt, axis=1)[:, None], 0.0)
                    dB_n = tl.sum(dh * dtu, axis=0)
                    dC_n = tl.sum(dy * h, axis=0)
                    if ON_CHIP:
                        row = rows[:, None] == k * NP + n
                        dB_tiles += tl.where(row, dB_n[None, :], 0.0)
                        dC_tiles += tl.where(row, dC_n[None, :], 0.0)
                    else:
                        tl.store(dB_ptr + (part + n) * L + pos, dB_n, mask=mask_l)
                        tl.store(dC_ptr + (part + n) * L + pos, dC_n, mask=mask_l)
                if SOFTPLUS:
                    ddt *= 1.0 / (1.0 + tl.exp(-tl.maximum(z, -80.0)))  # softplus' = sigmoid
                ddt = tl.where(mask, ddt, 0.0)
                dbias += tl.sum(ddt, axis=1)
                # Stored in the dtype of the ddt buffer (delta's): the cast is fused here.
                tl.store(ddt_ptr + ch[:, None] * stride_ddt_channel
                         + pos[None, :] * stride_ddt_step, ddt, mask=mask)
                du_at = uch[:, None] * stride_du_channel + pos[None, :] * stride_du_step
                if ON_CHIP:
                    du_map += _map_gather(du, inverse_ptr, k, offs, L, stride_order_dir,
                                          BLOCK_D, BLOCK_L)
                elif ORDERED:  # the directions add up in an fp32 sum; the last writes du
                    du += tl.load(du_sum_ptr + du_at, mask=mask & (k > 0), other=0.0)
                    tl.store(du_sum_ptr + du_at, du, mask=mask & (k < K - 1))
                    tl.store(du_ptr + du_at, du, mask=mask & (k == K - 1))
                else:
                    tl.store(du_ptr + du_at, du, mask=mask)
            tl.store(dA_ptr + (b * K * DIM + ch[:, None]) * N + cols[None, :], dA, mask=mask_dn)
            tl.store(dD_ptr + b * K * DIM + ch, dD, mask=mask_d)
            tl.store(dbias_ptr + b * K * DIM + ch, dbias, mask=mask_d)
            if ORDERED and not ON_CHIP:
                tl.debug_barrier()
        if ON_CHIP:
            tl.store(du_ptr + d[:, None] * stride_du_channel + offs[None, :] * stride_du_step,
                     du_map, mask=mask_d[:, None] & (offs < L)[None, :])
    if ON_CHIP:
        for k in range(K):
            pos, mask_l = _positions(order_ptr, k, offs, L, stride_order_dir, ORDERED)
            part = ((b * K + k) * n_blocks + blk) * N
            for n in tl.static_range(N):
                row = rows[:, None] == k * NP + n
                tl.store(dB_ptr + (part + n) * L + pos, tl.sum(tl.where(row, dB_tiles, 0.0), 0),
                         mask=mask_l)
                tl.store(dC_ptr + (part + n) * L + pos, tl.sum(tl.where(row, dC_tiles, 0.0), 0),
                         mask=mask_l)


# Observers of every kernel launch, called with ``(kernel, grid, args, kwargs)`` before it
# runs: the compile check records the launches of real host code (see .compile_check).
LAUNCH_OBSERVERS: List = []


def _launch(kernel, grid: Tuple[int, ...], *args, **kwargs) -> None:
    for observe in LAUNCH_OBSERVERS:
        observe(kernel, grid, args, kwargs)
    wrap_triton(kernel)[grid](*args, **kwargs)


# Sequences up to this long are scanned as one chunk when K directions add up in map order:
# the sum is then made on chip (see _map_gather), not read back and written per direction.
ON_CHIP_LENGTH = 256
# Backward programs with on-chip sums take several channel tiles each (one dB/dC partial per
# program): about this many warps in all fill a GPU (132 SMs x 64 resident warps on H100).
BACKWARD_WARPS = 8192


def launch_blocks(length: int, dim: int, backward: bool = False,
                  map_order: bool = False) -> Tuple[int, int, int]:
    """``(BLOCK_D, BLOCK_L, num_warps)`` of a launch, forward and backward alike (the
    backward's chunks must be the forward's: the saved states are at their ends).

    - ``map_order`` (K > 1 directions summed in map order) and ``length <=
      ON_CHIP_LENGTH``: the whole sequence as one chunk of ``BLOCK_L`` steps, ``BLOCK_D =
      256 // BLOCK_L`` channels (at least one), one tile element a thread (8 warps; the
      on-chip gather of each direction takes the registers of a second one).
    - otherwise tiles of 16 channels by chunks of 16 steps (fewer channels where there are
      fewer), 256 elements over 4 warps (8 in the backward): 16 channels of a channel-last
      map are one 32-byte sector of bf16 at each position, and the dB/dC partials are one
      per 16 channels.

    Chosen with ``python -m quadmamba_kernels.compile_check``: larger tiles, or more elements
    a thread, spill in the backward, whose live tiles and flipped reverse scan take the most
    registers; these compile without spills and keep 16 or more warps per SM resident in the
    backward on sm_90 (docs/benchmarks.md)."""
    if map_order and length <= ON_CHIP_LENGTH:
        block_l = triton.next_power_of_2(length)
        block_d = min(triton.next_power_of_2(dim), max(1, 256 // block_l))
        return block_d, block_l, max(4, block_d * block_l // 32)
    block_d = min(triton.next_power_of_2(dim), 16)
    block_l = min(triton.next_power_of_2(length), max(1, 256 // block_d), 64)
    return block_d, block_l, 8 if backward else 4


def launch_plan(length: int, dim: int, directions: int, ordered: bool,
                backward: bool = False) -> Tuple[Tuple[int, int, int], bool]:
    """``(launch_blocks(...), summed_on_chip)``: a launch adds up its K directions on chip in
    map order with K > 1 when one chunk is the whole sequence."""
    map_order = ordered and directions > 1
    blocks = launch_blocks(length, dim, backward, map_order)
    return blocks, map_order and blocks[1] >= length


def backward_programs(batch: int, n_tiles: int, warps: int, summed_on_chip: bool) -> int:
    """Programs per sample of the backward (the dB/dC partials there are): one per channel
    tile, or with on-chip sums as few as fill the GPU at this batch."""
    if not summed_on_chip:
        return n_tiles
    return max(1, min(n_tiles, BACKWARD_WARPS // (warps * batch)))


def saved_states_shape(u: Tensor, delta: Tensor, A: Tensor, B: Tensor) -> Tuple[int, ...]:
    """Shape of the chunk-end states :func:`selective_scan_triton` returns (``u`` is the
    ``(batch, D, L)`` map when there are K > 1 directions in map order)."""
    length, k = delta.shape[2], B.shape[1]
    dim = delta.shape[1] // k
    blocks = launch_blocks(length, dim, map_order=u.shape[1] != delta.shape[1])
    return delta.shape[0], delta.shape[1], triton.cdiv(length, blocks[1]), A.shape[1]


def _sample_extent(t: Tensor) -> int:
    """The largest element offset inside one sample of ``t`` (dims after the first)."""
    return sum((size - 1) * abs(stride) for size, stride in zip(t.shape[1:], t.stride()[1:]))


def _check_offsets(*tensors: Tensor) -> None:
    """Offsets inside one sample are int32 in the kernels: say so instead of overflowing."""
    for t in tensors:
        if _sample_extent(t) >= 2**31:
            raise ValueError(f'selective_scan_triton: one sample of a {tuple(t.shape)} tensor '
                             f'with strides {t.stride()} spans {_sample_extent(t)} elements; '
                             'the kernels index up to 2**31 - 1 within a sample')


def _same_layout(B: Tensor, C: Tensor) -> Tuple[Tensor, Tensor]:
    """B and C share one set of strides in the kernels (fewer registers): the small
    ``(batch, K, N, L)`` tensors are made contiguous where their strides differ."""
    if B.stride() == C.stride():
        return B, C
    return B.contiguous(), C.contiguous()


def _optional(t: Optional[Tensor], like: Tensor) -> Tensor:
    return like if t is None else t.float().contiguous()


def _order_arguments(orders: Optional[Tensor], order_index: Optional[Tensor], like: Tensor,
                     summed_on_chip: bool) -> Tuple[Tensor, Tensor, Tensor, int, int]:
    """``(orders, inverses, order_index, stride_order_set, stride_order_direction)``, with
    the tensor ``like`` standing in for absent ones (never read: the kernels are
    specialised). The inverse orders (the step at which each direction visits each map
    position, same strides) are made only for launches that add up directions on chip."""
    if orders is None:
        return like, like, like, 0, 0
    orders = orders.to(torch.int32).contiguous()
    inverses = orders
    if summed_on_chip:  # a permutation's argsort is its inverse (no in-place op to trace)
        inverses = orders.argsort(-1).to(torch.int32)
    index = like if order_index is None else order_index.to(torch.int32).contiguous()
    return orders, inverses, index, orders.stride(0), orders.stride(1)


def launch_options(capability: Optional[Tuple[int, int]]) -> dict:
    """Launch options of both kernels on a GPU of compute ``capability`` (None: not known, as
    on fake tensors; the compile check applies this per target).

    ptxas may keep fewer registers than a kernel needs, to fit more programs per SM, and spill
    the rest (the backward on sm_86/89 got 96 registers and a 4-byte spill; the on-chip
    backward on sm_90 80 and 28 bytes). With ``maxnreg`` 128, the most that keeps 16 warps
    resident per SM, every launch of the backbone compiles without spills on sm_80 to
    sm_120 (``python -m quadmamba_kernels.compile_check``)."""
    return {'maxnreg': 128}


def _capability(device: torch.device) -> Optional[Tuple[int, int]]:
    if device.type != 'cuda' or not torch.cuda.is_available():
        return None  # the interpreter, or fake CUDA tensors
    return tuple(torch.cuda.get_device_capability(device))


def _flags(D, delta_bias, delta_softplus, orders, order_index, n_state, blocks,
           summed_on_chip, **options) -> dict:
    block_d, block_l, warps = blocks
    return dict(N=n_state, NP=triton.next_power_of_2(n_state), BLOCK_D=block_d, BLOCK_L=block_l,
                HAS_D=D is not None, HAS_BIAS=delta_bias is not None,
                SOFTPLUS=delta_softplus, ORDERED=orders is not None,
                HAS_INDEX=order_index is not None, ON_CHIP=summed_on_chip, num_warps=warps,
                **options)


def selective_scan_triton(u: Tensor,
                          delta: Tensor,
                          A: Tensor,
                          B: Tensor,
                          C: Tensor,
                          D: Optional[Tensor] = None,
                          delta_bias: Optional[Tensor] = None,
                          delta_softplus: bool = False,
                          orders: Optional[Tensor] = None,
                          order_index: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """The selective scan of :func:`~quadmamba_kernels.reference.selective_scan_reference`
    (without orders) or of the ordered layout described in the module docstring.

    ``u``, ``delta``, ``B`` and ``C`` are read through their strides (a channel-last map
    included: no copies).

    Returns:
        ``y`` in fp32 in the layout of ``u`` (``(B, K*D, L)``, or ``(B, D, L)`` in map order
        with ``orders``) and the fp32 states at the chunk ends, for the backward pass.
    """
    A = A.float().contiguous()
    B, C = _same_layout(B, C)
    k = B.shape[1]
    dim = delta.shape[1] // k
    batch, length, n_state = u.shape[0], u.shape[2], A.shape[1]
    blocks, summed = launch_plan(length, dim, k, orders is not None)
    order_args = _order_arguments(orders, order_index, A, summed)
    n_chunks = triton.cdiv(length, blocks[1])
    y = empty_in_layout_of(u)
    states = torch.empty(batch, k * dim, n_chunks, n_state, device=u.device)
    _check_offsets(u, delta, B, C, y)
    _launch(_scan_fwd_kernel, (batch, triton.cdiv(dim, blocks[0])),
            u, delta, A, B, C, _optional(D, A), _optional(delta_bias, A), *order_args[:3], y,
            states, length, dim, k, *u.stride(), *delta.stride(), *B.stride(),
            *order_args[3:], *y.stride(),
            **_flags(D, delta_bias, delta_softplus, orders, order_index, n_state, blocks,
                     summed, **launch_options(_capability(u.device))))
    return y, states


def selective_scan_triton_backward(grad_y: Tensor,
                                   u: Tensor,
                                   delta: Tensor,
                                   A: Tensor,
                                   B: Tensor,
                                   C: Tensor,
                                   D: Optional[Tensor],
                                   delta_bias: Optional[Tensor],
                                   delta_softplus: bool,
                                   states: Tensor,
                                   orders: Optional[Tensor] = None,
                                   order_index: Optional[Tensor] = None
                                   ) -> Tuple[Optional[Tensor], ...]:
    """Gradients for ``(u, delta, A, B, C, D, delta_bias)`` (None for absent inputs) from the
    chunk-end ``states`` of :func:`selective_scan_triton`.

    ``grad_y`` is read through its strides. ``du`` and ``ddelta`` come in the layouts and
    dtypes of ``u`` and ``delta`` (written so by the kernel; in map order the K directions
    add up in an fp32 buffer that the last one reads); the small per-channel gradients are
    fp32."""
    A = A.float().contiguous()
    B, C = _same_layout(B, C)
    k = B.shape[1]
    dim = delta.shape[1] // k
    batch, length, n_state = u.shape[0], u.shape[2], A.shape[1]
    blocks, summed = launch_plan(length, dim, k, orders is not None, backward=True)
    order_args = _order_arguments(orders, order_index, A, summed)
    n_tiles = triton.cdiv(dim, blocks[0])
    n_blocks = backward_programs(batch, n_tiles, blocks[2], summed)
    dev = u.device
    du = empty_in_layout_of(u, u.dtype)
    # fp32 sum of the first K-1 directions' du in map order, off chip (never read otherwise);
    # its strides are du's
    du_sum = empty_in_layout_of(u) if orders is not None and k > 1 and not summed else du
    ddelta = empty_in_layout_of(delta, delta.dtype)
    dB = torch.empty(batch, k, n_blocks, n_state, length, device=dev)
    dC = torch.empty_like(dB)
    dA = torch.empty(batch, k * dim, n_state, device=dev)
    dD = torch.empty(batch, k * dim, device=dev)
    dbias = torch.empty_like(dD)
    _check_offsets(u, delta, B, C, grad_y, du, ddelta)
    _launch(_scan_bwd_kernel, (batch, n_blocks),
            u, delta, A, B, C, _optional(D, A), _optional(delta_bias, A), *order_args[:3], grad_y,
            states, du, du_sum, ddelta, dB, dC, dA, dD, dbias, length, dim, k, n_tiles,
            *u.stride(), *delta.stride(), *B.stride(), *order_args[3:], *grad_y.stride(),
            *du.stride(), *ddelta.stride(),
            **_flags(D, delta_bias, delta_softplus, orders, order_index, n_state, blocks, summed,
                     KNP=triton.next_power_of_2(k * triton.next_power_of_2(n_state)),
                     **launch_options(_capability(u.device))))
    return (du, ddelta, dA.sum(0), dB.sum(2), dC.sum(2), None if D is None else dD.sum(0),
            None if delta_bias is None else dbias.sum(0))


# The Triton scan as its own op (torch.library.triton_op): torch.compile sees the kernels
# inside it and inductor launches them from its generated code, where the generic custom op
# would be an opaque call. Its fake implementation is the host code above run on fake
# tensors: nothing to keep in step by hand.
@triton_op('quadmamba::selective_scan_triton', mutates_args=())
def selective_scan_triton_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                             D: Optional[Tensor], delta_bias: Optional[Tensor],
                             orders: Optional[Tensor], order_index: Optional[Tensor],
                             delta_softplus: bool) -> Tuple[Tensor, Tensor]:
    """:func:`selective_scan_triton` as an op: ``(y, chunk-end states)``."""
    return selective_scan_triton(u, delta, A, B, C, D, delta_bias, delta_softplus, orders,
                                 order_index)


@triton_op('quadmamba::selective_scan_triton_backward', mutates_args=())
def selective_scan_triton_backward_op(grad_y: Tensor, u: Tensor, delta: Tensor, A: Tensor,
                                      B: Tensor, C: Tensor, D: Optional[Tensor],
                                      delta_bias: Optional[Tensor], states: Tensor,
                                      orders: Optional[Tensor], order_index: Optional[Tensor],
                                      delta_softplus: bool) -> List[Tensor]:
    """fp32 gradients of ``(u, delta, A, B, C, D, delta_bias)``; empty for absent inputs."""
    grads = selective_scan_triton_backward(grad_y, u, delta, A, B, C, D, delta_bias,
                                           delta_softplus, states, orders, order_index)
    return [grad_placeholder(u) if g is None else g for g in grads]


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, delta_bias, orders, order_index, delta_softplus = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, output[1], orders, order_index)
    ctx.delta_softplus = delta_softplus


def _backward(ctx, grad_y, _grad_states):
    u, delta, A, B, C, D, delta_bias, states, orders, order_index = ctx.saved_tensors
    grads = selective_scan_triton_backward_op(grad_y, u, delta, A, B, C, D, delta_bias, states,
                                              orders, order_index, ctx.delta_softplus)
    return input_grads(grads, (u, delta, A, B, C, D, delta_bias),
                       ctx.needs_input_grad) + (None, ) * 3


selective_scan_triton_op.register_autograd(_backward, setup_context=_setup_context)
