"""The tiny QuadMamba the backbone tests share: every stage kind (two quadtree blocks with a
shift, cross-scan stages), a few thousand parameters, fast on a CPU."""
from quadmamba_mm.models import QuadMamba

TINY_ARCH = dict(embed_dims=16, depths=(2, 2, 1, 1), ssm_ratio=1.0)


def tiny_backbone(**kwargs) -> QuadMamba:
    """``QuadMamba`` with ``TINY_ARCH`` (or ``depths=`` given here) and no drop path."""
    arch = dict(TINY_ARCH, depths=kwargs.pop('depths', TINY_ARCH['depths']))
    kwargs.setdefault('drop_path_rate', 0.)
    return QuadMamba(arch=arch, **kwargs)
