"""QuadMamba as a plain PyTorch ImageNet classifier, for measurements without mmpretrain."""
import torch
import torch.nn as nn

from .quadmamba import QuadMamba


class QuadMambaClassifier(nn.Module):
    """The backbone, global average pooling and a linear 1000-class head: the model whose
    parameters and FLOPs the paper reports, and what throughput is measured on.

    Args:
        arch: a QuadMamba arch name or dict (see :class:`QuadMamba`).
        **kwargs: further backbone arguments (``scan_backend``, ...).
    """

    def __init__(self, arch='t', num_classes: int = 1000, **kwargs) -> None:
        super().__init__()
        self.backbone = QuadMamba(arch, **kwargs)
        self.head = nn.Linear(self.backbone.dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)[-1].mean((2, 3)))
