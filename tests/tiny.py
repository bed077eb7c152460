"""The tiny QuadMamba the backbone tests share: every stage kind (two quadtree blocks with a
shift, cross-scan stages), a few thousand parameters, fast on a CPU."""
from pathlib import Path

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


ROOT = Path(__file__).resolve().parents[1]
_TINY_CLASSIFIER = '''
_base_ = [{base!r}]
data_preprocessor = dict(num_classes=2)
model = dict(
    backbone=dict(arch=dict(_delete_=True, embed_dims=8, depths=(1, 1, 1, 1), ssm_ratio=1.0),
                  drop_path_rate=0.),
    head=dict(num_classes=2, in_channels=64),
    train_cfg=None)
train_dataloader = {loader!r}
train_cfg = dict(max_epochs={max_epochs})
val_dataloader = None
val_cfg = None
val_evaluator = None
param_scheduler = []
default_hooks = dict(logger=dict(interval=1))
'''


def write_tiny_classifier_config(path: Path, data_root: Path, batch_size: int = 1,
                                 num_workers: int = 0, max_epochs: int = 1,
                                 extra: str = '') -> Path:
    """A config of the QuadMamba-Li classifier shrunk to a tiny 2-class backbone, training
    on the class folders under ``data_root`` for ``max_epochs`` without validation; ``extra``
    lines come last (so they override). Written to ``path``, which is returned."""
    loader = dict(batch_size=batch_size, num_workers=num_workers, persistent_workers=False,
                  dataset=dict(type='CustomDataset', data_root=str(data_root),
                               pipeline=[dict(type='LoadImageFromFile'), dict(type='PackInputs')],
                               _delete_=True),
                  sampler=dict(type='DefaultSampler', shuffle=False))
    path.write_text(_TINY_CLASSIFIER.format(
        base=str(ROOT / 'configs/quadmamba/quadmamba-li_8xb128_in1k.py'), loader=loader,
        max_epochs=max_epochs) + extra)
    return path
