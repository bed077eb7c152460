"""Training utilities registered for all three toolboxes."""
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as ROOT_CONSTRUCTORS

from ..checkpoints.atomic import (AtomicCheckpointHook, AtomicLocalBackend, atomic_write,
                                remove_stale_temporaries, use_atomic_checkpoint_hook)
from .amp import CPUAmpOptimWrapper, enable_amp
from .bad_sample_hook import BadDataError, BadSampleHook
from .elastic import restart_count, resume_after_restart, start_process_group
from .guards import add_training_guards
from .layer_decay import LayerDecayOptimWrapperConstructor
from .nonfinite import NonFiniteLossError, NonFiniteLossHook

# Same bridge as the models: unprefixed names resolve from mmdet/mmseg/mmpretrain scopes.
ROOT_CONSTRUCTORS.register_module(module=LayerDecayOptimWrapperConstructor)

# type='CheckpointHook' (the toolboxes' default_hooks, the Runner's default) now writes every
# checkpoint and the last_checkpoint pointer atomically; atomic=False turns that off.
use_atomic_checkpoint_hook()

__all__ = [
    'AtomicCheckpointHook', 'AtomicLocalBackend', 'CPUAmpOptimWrapper', 'enable_amp',
    'LayerDecayOptimWrapperConstructor',
    'atomic_write', 'remove_stale_temporaries', 'use_atomic_checkpoint_hook',
    'BadDataError', 'BadSampleHook', 'NonFiniteLossError', 'NonFiniteLossHook',
    'add_training_guards', 'restart_count', 'resume_after_restart', 'start_process_group'
]
