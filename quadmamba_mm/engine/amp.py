"""Mixed precision training on any device: bf16 autocast on CPUs, mmengine's AMP elsewhere.

mmengine's ``AmpOptimWrapper`` refuses to run without a GPU, NPU, MLU or MUSA device, although
``torch.autocast`` supports bf16 on CPUs. :class:`CPUAmpOptimWrapper` trains under CPU bf16
autocast; :func:`enable_amp` is what ``tools/train.py --amp`` does to a config: the CPU
wrapper where mmengine's AMP is unavailable, ``AmpOptimWrapper`` with a dynamic loss scale
(fp16 by default) where it is.
"""
from contextlib import contextmanager
from typing import Any, Optional, Union

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.device import (is_cuda_available, is_mlu_available, is_musa_available,
                             is_npu_available)
from mmengine.logging import print_log
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS
from mmengine.runner.amp import autocast

# mmcv's CPU kernels of NMS and RoIAlign take fp32 only, so on a CPU a detector autocasts
# its backbone and neck (extract_feat) and runs its heads in fp32. Classifiers and segmentors
# run all of forward and loss under autocast.
AUTOCAST_METHODS = {'mmdet': 'extract_feat'}


def mmengine_amp_available() -> bool:
    """Whether mmengine's ``AmpOptimWrapper`` can run here (its own device test)."""
    return (is_cuda_available() or is_npu_available() or is_mlu_available()
            or is_musa_available())


def _to_float32(value: Any) -> Any:
    """Reduced-precision floating tensors, also inside tuples, lists and dicts, as fp32."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype in (torch.bfloat16, torch.float16) else value
    if isinstance(value, (tuple, list)):
        return type(value)(_to_float32(v) for v in value)
    if isinstance(value, dict):
        return type(value)((k, _to_float32(v)) for k, v in value.items())
    return value


@contextmanager
def _method_under_autocast(model: nn.Module, name: str, dtype: torch.dtype):
    """Within the context, ``model.<name>`` runs under CPU autocast and returns fp32."""
    method = getattr(model, name, None)
    if not callable(method):
        raise ValueError(f'autocast_method={name!r}: {type(model).__name__} has no such method')

    def under_autocast(*args, **kwargs):
        with autocast(device_type='cpu', dtype=dtype):
            return _to_float32(method(*args, **kwargs))

    own = model.__dict__.get(name)  # an instance attribute that shadows the class method
    setattr(model, name, under_autocast)
    try:
        yield
    finally:
        if own is None:
            delattr(model, name)
        else:
            setattr(model, name, own)


@OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(OptimWrapper):
    """``OptimWrapper`` whose forward and loss run under CPU autocast in bfloat16.

    Weights, gradients and optimizer state stay fp32; matmuls and convolutions run in bf16.
    bf16 has fp32's exponent range, so unlike fp16 it needs no loss scaling: backward and step
    are ``OptimWrapper``'s. The selective scan switches autocast off and computes in fp32.

    Args:
        dtype (str | torch.dtype): the autocast dtype; CPU autocast in mmengine supports only
            ``'bfloat16'``.
        autocast_method (str, optional): run only this method of the model (e.g.
            ``'extract_feat'``: backbone and neck) under autocast, its outputs cast back to
            fp32, and the rest in fp32; for models with operators that have no bf16 CPU kernel.
            None (default): all of forward and loss under autocast.
        **kwargs: arguments of ``OptimWrapper`` (``optimizer``, ``accumulative_counts``,
            ``clip_grad``).
    """

    def __init__(self, dtype: Union[str, torch.dtype] = 'bfloat16',
                 autocast_method: Optional[str] = None, **kwargs) -> None:
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype, None)
        if dtype is not torch.bfloat16:
            raise ValueError(f'CPUAmpOptimWrapper autocasts to bfloat16 only, got dtype={dtype!r}'
                             ' (fp16 on a CPU would need loss scaling; bf16 does not)')
        super().__init__(**kwargs)
        self.cast_dtype = dtype
        self.autocast_method = autocast_method

    @contextmanager
    def optim_context(self, model: nn.Module):
        """Gradient-accumulation context of ``OptimWrapper`` plus CPU bf16 autocast (of all
        of forward and loss, or of ``autocast_method``).

        Args:
            model (nn.Module): the model being trained (a distributed wrapper's ``module``
                holds ``autocast_method``).
        """
        with super().optim_context(model):
            if self.autocast_method is None:
                with autocast(device_type='cpu', dtype=self.cast_dtype):
                    yield
            else:
                with _method_under_autocast(getattr(model, 'module', model),
                                            self.autocast_method, self.cast_dtype):
                    yield

    def load_state_dict(self, state_dict: dict) -> None:
        """Load the optimizer state; a loss scaler saved by ``AmpOptimWrapper`` (a GPU run)
        has no meaning for bf16 and is dropped, so such a run resumes on a CPU.

        Args:
            state_dict (dict): as written by ``state_dict()`` of any optim wrapper.
        """
        state_dict = {k: v for k, v in state_dict.items() if k != 'loss_scaler'}
        super().load_state_dict(state_dict)


def enable_amp(cfg: Config) -> str:
    """Switch the config's ``optim_wrapper`` (one optimizer) to mixed precision, in place;
    returns its new type.

    Where mmengine's AMP runs (GPU, NPU, MLU, MUSA): ``AmpOptimWrapper`` with
    ``loss_scale='dynamic'`` unless the config sets one (what the toolboxes' ``--amp`` does).
    On a CPU: :class:`CPUAmpOptimWrapper` (bf16 autocast; detectors autocast ``extract_feat``
    only, see ``AUTOCAST_METHODS``); a configured ``loss_scale`` or ``use_fsdp`` of
    ``AmpOptimWrapper`` is dropped, and ``dtype`` must be ``'bfloat16'`` if set.

    Args:
        cfg (Config): the training config.
    """
    optim_wrapper = cfg.optim_wrapper
    if mmengine_amp_available():
        optim_wrapper.type = 'AmpOptimWrapper'
        optim_wrapper.setdefault('loss_scale', 'dynamic')
    else:
        optim_wrapper.type = 'CPUAmpOptimWrapper'
        for key in ('loss_scale', 'use_fsdp'):
            optim_wrapper.pop(key, None)
        optim_wrapper.setdefault('dtype', 'bfloat16')
        method = AUTOCAST_METHODS.get(cfg.get('default_scope'))
        if method is not None:
            optim_wrapper.setdefault('autocast_method', method)
    scope = optim_wrapper.get('autocast_method')
    print_log(f'mixed precision: {optim_wrapper.type} ('
              f"{optim_wrapper.get('dtype') or 'float16'} autocast"
              f"{f' of model.{scope}' if scope else ''})", logger='current')
    return optim_wrapper.type
