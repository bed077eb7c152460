"""What ``tools/train.py`` adds to every training config: unusable samples skipped and
counted, and a stop at the first non-finite loss.

Two optional config keys set them (the defaults shown); ``None`` turns one off::

    bad_data_cfg = dict(max_share=0.01)          # BadSampleHook + SkipBadSamples
    nonfinite_loss_cfg = dict(max_skipped_steps=30)  # NonFiniteLossHook

A hook of the same type already in ``custom_hooks`` is kept as the config wrote it.
"""
from mmengine.config import Config

from ..datasets.bad_samples import skip_bad_samples_in

#: config key -> (hook type, its arguments where the config sets none)
GUARDS = {
    'bad_data_cfg': ('BadSampleHook', dict(max_share=0.01)),
    'nonfinite_loss_cfg': ('NonFiniteLossHook', dict(max_skipped_steps=30)),
}


def _hook_type(hook) -> str:
    kind = hook.get('type') if isinstance(hook, dict) else type(hook)
    name = kind if isinstance(kind, str) else getattr(kind, '__name__', '')
    return name.rsplit('.', 1)[-1]


def add_training_guards(cfg: Config) -> None:
    """Wrap the training datasets in ``SkipBadSamples`` and add ``BadSampleHook`` and
    ``NonFiniteLossHook`` to ``cfg.custom_hooks``, as ``bad_data_cfg`` and
    ``nonfinite_loss_cfg`` say (see the module docstring). In place.

    Args:
        cfg: a training config (one without ``train_dataloader`` is left as it is).
    """
    if not cfg.get('train_dataloader'):
        return
    hooks = list(cfg.get('custom_hooks') or [])
    present = {_hook_type(h) for h in hooks}
    for key, (hook_type, defaults) in GUARDS.items():
        settings = cfg.get(key, defaults)
        if settings is None:
            continue
        if not isinstance(settings, dict):
            raise TypeError(f'{key} must be a dict of {hook_type} arguments or None, got '
                            f'{settings!r}')
        if key == 'bad_data_cfg':
            cfg.train_dataloader.dataset = skip_bad_samples_in(cfg.train_dataloader.dataset)
        if hook_type not in present:
            hooks.append(dict(type=hook_type, **{**defaults, **settings}))
    cfg.custom_hooks = hooks
