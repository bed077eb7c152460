"""The learned part of the quadtree scan: token locality scores and the window choice.

A per-block :class:`LocalityPredictor` scores every token; a coarse window's score is the
mean of its tokens' scores; one window is chosen per sample (hard Gumbel-Softmax with a
straight-through gradient in training, argmax in eval) and refined into fine windows.
The scan then reads the map in the chosen order; :func:`with_choice_gradient` gives the
choice the gradient of the paper's differentiable sequence masking (the sequence is
``sum_g m_g * gather(x, order_g)`` with the one-hot ``m``), computed from the map.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .token_orders import coarse_window_ids, quadtree_orders, window_members

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


class _ChoiceGradient(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x: Tensor, choice: Tensor, relabel: Tensor) -> Tensor:
        ctx.save_for_backward(x, choice.argmax(-1), relabel)
        ctx.candidates = choice.shape[-1]  # torch.compile can't read relabel.shape here
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, picked, relabel = ctx.saved_tensors
        grad_choice = None
        if ctx.needs_input_grad[1]:
            # Token rows (B*L, D): a view of a channel-last map, so a relabeling moves whole
            # rows (index_select); then <x, relabelled grad> per sample. Both several times
            # faster on CPUs than advanced indexing and a batched (1 x n) @ (n x 1) matmul.
            batch, dim, length = x.shape
            flat_x = x.transpose(1, 2).reshape(batch, length * dim)
            grad_rows = grad.to(x.dtype).transpose(1, 2).reshape(batch * length, dim)
            offsets = torch.arange(batch, device=x.device)[:, None] * length
            grad_choice = torch.stack([
                torch.linalg.vecdot(
                    flat_x,
                    grad_rows.index_select(0, (relabel[picked, g] + offsets).flatten()).view(
                        batch, length * dim)) for g in range(ctx.candidates)
            ], dim=1).float()
        return grad, grad_choice, None


def with_choice_gradient(x: Tensor, choice: Tensor, relabel: Tensor) -> Tensor:
    """``x`` itself, with the straight-through gradient to the window choice attached.

    The scan reads ``x`` in the chosen candidate's orders. As the paper's sequence masking,
    that is scanning ``sum_g m_g * gather(x, order_g)`` with the one-hot ``m = choice``, so
    ``m_g`` receives ``<dL/dsequences, gather(x, order_g)>``. With ``dL/dx`` the scan's
    gradient in map order, this is ``sum_p <x_p, dL/dx_{relabel[picked, g, p]}>``: no
    sequence is ever gathered, and the scan can read the map in place in training too.

    Args:
        x: ``(B, D, L)`` token map, as the scan reads it (and nothing else does).
        choice: ``(B, G)`` one-hot window choice.
        relabel: ``(G, G, L)`` from
            :func:`~quadmamba_mm.models.token_orders.quadtree_relabelings`.
    """
    return _ChoiceGradient.apply(x, choice, relabel)


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
