"""Memory layouts of the scan's ``(batch, channels, L)`` tensors.

A map can be stored channel-first (contiguous ``(batch, channels, L)``) or channel-last
(``(batch, L, channels)`` in memory, the layout of a linear layer's output and of a
channels_last conv). The scan's outputs and input gradients take the layout of the input
they correspond to, by one rule that the kernels, the custom op and its fake
implementation share, so compiled graphs see the strides the kernels produce.
"""
from typing import Optional

import torch
from torch import Tensor


def is_channel_last(t: Tensor) -> bool:
    """A ``(batch, channels, L)`` tensor stored densely as ``(batch, L, channels)``."""
    if t.dim() != 3 or t.shape[1] < 2 or t.shape[2] < 2:
        return False  # one channel or one step: both layouts are the same memory
    return (t.stride(1) == 1 and t.stride(2) == t.shape[1]
            and (t.shape[0] == 1 or t.stride(0) == t.shape[1] * t.shape[2]))


def empty_in_layout_of(t: Tensor, dtype: Optional[torch.dtype] = torch.float32) -> Tensor:
    """An empty tensor of ``t``'s shape: channel-last if ``t`` is, contiguous otherwise."""
    if is_channel_last(t):
        batch, channels, length = t.shape
        return t.new_empty(batch, length, channels, dtype=dtype).transpose(1, 2)
    return t.new_empty(t.shape, dtype=dtype)


def in_layout_of(y: Tensor, t: Tensor) -> Tensor:
    """``y`` (fp32) in the layout :func:`empty_in_layout_of` gives for ``t`` (a copy only if
    it is not in it already)."""
    y = y.float()
    if is_channel_last(t):
        return y if is_channel_last(y) else empty_in_layout_of(t).copy_(y)
    return y.contiguous()
