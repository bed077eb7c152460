"""The learned part of the quadtree scan: token locality scores and the window choice.

A per-block :class:`LocalityPredictor` scores every token; a coarse window's score is the
mean of its tokens' scores; one window is chosen per sample (hard Gumbel-Softmax with a
straight-through gradient in training, argmax in eval) and refined into fine windows.
:func:`quadtree_gather` then builds the chosen sequences. Its backward is the paper's
differentiable sequence masking: the sequence is ``sum_g m_g * gather(x, order_g)`` with
the one-hot ``m``, so ``m`` (and through it the predictor) receives
``<grad, gather(x, order_g)>`` for every candidate ``g``.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .token_orders import (coarse_window_ids, gather_sequences, merge_sequences, quadtree_orders,
                           window_members)

SCAN_LAYOUTS = ('quadtree', 'upstream')


class LocalityPredictor(nn.Module):
    """Per-token locality score: LN -> MLP (C, C/2, C/4) with GELU -> 2 log-probabilities.

    Args:
        channels: feature width C of the tokens it scores.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        widths = [channels, channels, channels // 2, channels // 4]
        layers = [nn.LayerNorm(channels)]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(c_in, c_out), nn.GELU()]
        layers.append(nn.Linear(widths[-1], 2))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, H, W, C)`` -> ``(B, H, W)``: log-probability that a token is 'local'."""
        return F.log_softmax(self.layers(x).float(), dim=-1)[..., 0]


def window_scores(token_scores: Tensor, grid: int) -> Tensor:
    """``(B, H, W)`` token scores -> ``(B, g*g)`` mean score of each coarse window."""
    batch, height, width = token_scores.shape
    members, counts = window_members(height, width, grid, token_scores.device)
    # Elementwise, not a matmul: autocast leaves it in fp32, so the argmax sees fp32 means.
    return (token_scores.flatten(1)[:, :, None] * members).sum(1) / counts


def choose_window(scores: Tensor, training: bool, tau: float = 1.0) -> Tensor:
    """One-hot ``(B, G)`` choice. Training: hard Gumbel-Softmax, straight-through gradient.
    Eval: argmax of the scores, deterministic."""
    if training:
        return F.gumbel_softmax(scores, tau=tau, hard=True)
    return F.one_hot(scores.argmax(-1), scores.shape[-1]).to(scores.dtype)


class _QuadtreeGather(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x: Tensor, choice: Tensor, orders: Tensor, inverses: Tensor) -> Tensor:
        picked = choice.argmax(-1)
        ctx.save_for_backward(x, picked, orders, inverses)
        return gather_sequences(x, orders[picked])

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, picked, orders, inverses = ctx.saved_tensors
        grad_x = grad_choice = None
        if ctx.needs_input_grad[0]:
            grad_x = merge_sequences(grad, inverses[picked])
        if ctx.needs_input_grad[1]:
            # <grad, gather_g> per sample as a batched dot product: no product tensor.
            flat_grad = grad.flatten(1)[:, None, :]
            grad_choice = torch.cat([
                torch.bmm(flat_grad, gather_sequences(x, orders[g:g + 1]).flatten(1)[:, :, None])
                for g in range(orders.shape[0])
            ], dim=1).flatten(1).float()
        return grad_x, grad_choice, None, None


def quadtree_gather(x: Tensor, choice: Tensor, orders: Tensor, inverses: Tensor) -> Tensor:
    """Sequences of the chosen quadtree orders.

    Args:
        x: ``(B, D, L)`` token map, row-major.
        choice: ``(B, G)`` one-hot window choice (gradient flows to it in training).
        orders, inverses: ``(G, K, L)`` candidate orders, from
            :func:`~quadmamba_mm.models.token_orders.quadtree_orders`.

    Returns:
        ``(B, K, D, L)``; the order of sample b is ``orders[choice[b].argmax()]``.
    """
    return _QuadtreeGather.apply(x, choice, orders, inverses)


def check_scan_layout(scan_layout: str, grid: int, split: int) -> None:
    if scan_layout not in SCAN_LAYOUTS:
        raise ValueError(f'unknown scan_layout {scan_layout!r}; choose one of {SCAN_LAYOUTS}')
    if scan_layout == 'upstream' and (grid, split) != (2, 2):
        raise ValueError("scan_layout='upstream' exists only for the paper's levels "
                         f'(quadtree_grid=2, quadtree_split=2), got ({grid}, {split})')


def upstream_quadtree_sequences(x: Tensor, choice: Tensor, height: int, width: int):
    """The released code's quadtree layout, reproduced for its checkpoints.

    With ``m`` the chosen quadrant's token mask, the sequence is
    ``coarse(x * (1 - m)) + fine(x * m)``: ``coarse`` visits the 4 quadrants in raster order,
    ``fine`` the whole 4x4 grid of fine windows in raster order (raster inside windows).
    The chosen quadrant's fine windows therefore land on positions of another quadrant: in
    every case 1/8 of the positions hold two tokens summed and 1/8 hold zeros. The outputs
    are read back as ``fine^-1(y) * m + coarse^-1(y) * (1 - m)``. The mask multiplies on
    both sides, as in the released code, so gradients reach ``choice`` the same way.

    Args:
        x: ``(B, D, L)`` row-major map; ``height`` and ``width`` must be multiples of 4.
        choice: ``(B, 4)`` one-hot quadrant choice.

    Returns:
        ``(B, 2, D, L)`` sequences (forward and reversed) and the merge function.
    """
    if height % 4 or width % 4:
        raise ValueError(f"scan_layout='upstream' needs maps divisible by 4, got {height}x{width}")
    coarse, coarse_inv = (t[0, 0] for t in quadtree_orders(height, width, 2, 1, x.device))
    fine, fine_inv = (t[0, 0] for t in quadtree_orders(height, width, 4, 1, x.device))
    mask = choice[:, coarse_window_ids(height, width, 2, x.device)][:, None].to(x.dtype)
    seq = (x * (1 - mask))[..., coarse] + (x * mask)[..., fine]

    def merge(y: Tensor) -> Tensor:
        y = y[:, 0] + y[:, 1].flip(-1)
        return y[..., fine_inv] * mask + y[..., coarse_inv] * (1 - mask)

    return torch.stack([seq, seq.flip(-1)], dim=1), merge
