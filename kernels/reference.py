"""The plain sequential selective scan: the ground truth every other backend is tested against."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def selective_scan_reference(u: Tensor,
                             delta: Tensor,
                             A: Tensor,
                             B: Tensor,
                             C: Tensor,
                             D: Optional[Tensor] = None,
                             delta_bias: Optional[Tensor] = None,
                             delta_softplus: bool = False) -> Tensor:
    """Selective scan as a loop over the sequence, in fp32.

    ``h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t`` and
    ``y_t = <C_t, h_t> + D * u_t`` per channel, with the state ``h`` of size N.

    Args:
        u, delta: ``(batch, K*D, L)``.
        A: ``(K*D, N)``.
        B, C: ``(batch, K, N, L)``; group ``k`` serves channels ``k*D .. (k+1)*D - 1``.
        D, delta_bias: ``(K*D,)`` or None.
        delta_softplus: apply softplus to ``delta + delta_bias``.

    Returns:
        ``y`` of shape ``(batch, K*D, L)`` in fp32.
    """
    u, delta, A, B, C = (t.float() for t in (u, delta, A, B, C))
    batch, channels, length = u.shape
    groups, n_state = B.shape[1], B.shape[2]
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    # Each group's B/C row is shared by the channels of that group.
    B = B.repeat_interleave(channels // groups, dim=1)  # (batch, K*D, N, L)
    C = C.repeat_interleave(channels // groups, dim=1)
    h = u.new_zeros(batch, channels, n_state)
    ys = []
    for t in range(length):
        decay = torch.exp(delta[:, :, t, None] * A)
        h = decay * h + (delta[:, :, t] * u[:, :, t])[:, :, None] * B[:, :, :, t]
        ys.append((h * C[:, :, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.float()[:, None] * u
    return y
