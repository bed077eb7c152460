"""The tiny QuadMamba the backbone tests share: every stage kind (two quadtree blocks with a
shift, cross-scan stages), a few thousand parameters, fast on a CPU."""
from quadmamba_mm.models import QuadMamba

TINY_ARCH = dict(embed_dims=16, depths=(2, 2, 1, 1), ssm_ratio=1.0)


def tiny_arch(**changes) -> dict:
    """``TINY_ARCH`` with some of its keys changed (``embed_dims``, ``depths``)."""
    return dict(TINY_ARCH, **changes)


def tiny_backbone(**kwargs) -> QuadMamba:
    """``QuadMamba`` with ``TINY_ARCH`` (``embed_dims=`` and ``depths=`` change it) and no
    drop path."""
    arch = tiny_arch(**{key: kwargs.pop(key) for key in ('embed_dims', 'depths') if key in kwargs})
    kwargs.setdefault('drop_path_rate', 0.)
    return QuadMamba(arch=arch, **kwargs)
