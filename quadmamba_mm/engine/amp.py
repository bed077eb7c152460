"""Mixed precision training on any device: bf16 autocast on CPUs, mmengine's AMP elsewhere.

mmengine's ``AmpOptimWrapper`` refuses to run without a GPU, NPU, MLU or MUSA device, although
``torch.autocast`` supports bf16 on CPUs. :class:`CPUAmpOptimWrapper` trains under CPU bf16
autocast; :func:`enable_amp` is what ``tools/train.py --amp`` does to a config: the CPU
wrapper where mmengine's AMP is unavailable, ``AmpOptimWrapper`` with a dynamic loss scale
(fp16 by default) where it is.
"""
from contextlib import contextmanager
from typing import Union

import torch
import torch.nn as nn
from mmengine.config import ConfigDict
from mmengine.device import (is_cuda_available, is_mlu_available, is_musa_available,
                             is_npu_available)
from mmengine.logging import print_log
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS
from mmengine.runner.amp import autocast


def mmengine_amp_available() -> bool:
    """Whether mmengine's ``AmpOptimWrapper`` can run here (its own device test)."""
    return (is_cuda_available() or is_npu_available() or is_mlu_available()
            or is_musa_available())


@OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(OptimWrapper):
    """``OptimWrapper`` whose forward and loss run under CPU autocast in bfloat16.

    Weights, gradients and optimizer state stay fp32; matmuls and convolutions run in bf16.
    bf16 has fp32's exponent range, so unlike fp16 it needs no loss scaling: backward and step
    are ``OptimWrapper``'s. The selective scan switches autocast off and computes in fp32.

    Args:
        dtype (str | torch.dtype): the autocast dtype; CPU autocast in mmengine supports only
            ``'bfloat16'``.
        **kwargs: arguments of ``OptimWrapper`` (``optimizer``, ``accumulative_counts``,
            ``clip_grad``).
    """

    def __init__(self, dtype: Union[str, torch.dtype] = 'bfloat16', **kwargs) -> None:
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype, None)
        if dtype is not torch.bfloat16:
            raise ValueError(f'CPUAmpOptimWrapper autocasts to bfloat16 only, got dtype={dtype!r}'
                             ' (fp16 on a CPU would need loss scaling; bf16 does not)')
        super().__init__(**kwargs)
        self.cast_dtype = dtype

    @contextmanager
    def optim_context(self, model: nn.Module):
        """Gradient-accumulation context of ``OptimWrapper`` plus CPU bf16 autocast.

        Args:
            model (nn.Module): the model being trained.
        """
        with super().optim_context(model), autocast(device_type='cpu', dtype=self.cast_dtype):
            yield

    def load_state_dict(self, state_dict: dict) -> None:
        """Load the optimizer state; a loss scaler saved by ``AmpOptimWrapper`` (a GPU run)
        has no meaning for bf16 and is dropped, so such a run resumes on a CPU.

        Args:
            state_dict (dict): as written by ``state_dict()`` of any optim wrapper.
        """
        state_dict = {k: v for k, v in state_dict.items() if k != 'loss_scaler'}
        super().load_state_dict(state_dict)


def enable_amp(optim_wrapper: ConfigDict) -> str:
    """Switch an ``optim_wrapper`` config to mixed precision, in place; returns its new type.

    Where mmengine's AMP runs (GPU, NPU, MLU, MUSA): ``AmpOptimWrapper`` with
    ``loss_scale='dynamic'`` unless the config sets one (what the toolboxes' ``--amp`` does).
    On a CPU: :class:`CPUAmpOptimWrapper` (bf16 autocast); a configured ``loss_scale`` or
    ``use_fsdp`` of ``AmpOptimWrapper`` is dropped, and ``dtype`` must be ``'bfloat16'`` if
    set.

    Args:
        optim_wrapper (ConfigDict): ``cfg.optim_wrapper`` (one optimizer).
    """
    if mmengine_amp_available():
        optim_wrapper.type = 'AmpOptimWrapper'
        optim_wrapper.setdefault('loss_scale', 'dynamic')
    else:
        optim_wrapper.type = 'CPUAmpOptimWrapper'
        for key in ('loss_scale', 'use_fsdp'):
            optim_wrapper.pop(key, None)
        optim_wrapper.setdefault('dtype', 'bfloat16')
    print_log(f'mixed precision: {optim_wrapper.type} ('
              f"{optim_wrapper.get('dtype') or 'float16'} autocast)", logger='current')
    return optim_wrapper.type
