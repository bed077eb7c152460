"""The QuadMamba backbone on fake CUDA tensors: what it launches on a GPU, without one.

:func:`fake_cuda_backbone` runs the backbone's real forward (and, in training, its backward)
on ``'cuda'`` fake tensors (:func:`quadmamba_kernels.fake_cuda.fake_cuda`), so the scan's
host code picks its backend, block sizes and layouts as it would on a GPU. The order
tables are built for real on the CPU (their permutation check reads values) and then
handed over as fake CUDA tensors. :func:`backbone_launches` records the Triton scan's
launches of the configurations ``python -m quadmamba_kernels.compile_check`` compiles.
"""
import contextlib
import copy
import itertools
from typing import Iterator, List, Optional, Sequence, Tuple
from unittest import mock

import torch

from quadmamba_kernels.fake_cuda import backward as fake_backward
from quadmamba_kernels.fake_cuda import fake_cuda

from ..models import token_orders
from ..models.quadmamba import QuadMamba

# (arch, input size) the compile check covers; the CI subset keeps li at 224.
CONFIGS = [('li', 224), ('t', 224), ('s', 224), ('b', 224), ('s', 512), ('s', 1024)]
SUBSET = [('li', 224)]  # the same tiles, dtypes and stage kinds as every arch at 224
AMP_DTYPES = (None, torch.bfloat16, torch.float16)  # None: fp32, no autocast


@contextlib.contextmanager
def fake_cuda_backbone() -> Iterator['torch._subclasses.fake_tensor.FakeTensorMode']:
    """:func:`~quadmamba_kernels.fake_cuda.fake_cuda`, with the order tables of CUDA maps
    built on the CPU for real and then faked onto ``'cuda'``."""
    build = token_orders._build
    with fake_cuda() as mode:

        def build_then_fake(builder, args, device):
            if torch.device(token_orders._device_name(device)).type != 'cuda':
                return build(builder, args, device)
            built = build(builder, args, 'cpu')  # the caller turned the modes off: for real
            many = isinstance(built, tuple)
            with mode:
                faked = tuple(mode.from_tensor(t).to(device) for t in (built if many else
                                                                      (built, )))
            return faked if many else faked[0]

        with mock.patch.object(token_orders, '_build', build_then_fake), \
                mock.patch.object(token_orders, '_TABLES', token_orders._Tables()):
            yield mode


def to_fake_cuda(model: torch.nn.Module, mode) -> torch.nn.Module:
    """``model`` (built for real on the CPU: building reads values) with fake CUDA parameters
    and buffers of ``mode``."""
    overwrite = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        return model._apply(lambda t: mode.from_tensor(t).to('cuda'))
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(overwrite)


def run_backbone(model: torch.nn.Module, size: int, training: bool,
                 amp_dtype: Optional[torch.dtype], batch: int = 2) -> Tuple[torch.Tensor, ...]:
    """One forward (and in training a backward) of a fake CUDA ``model`` (see
    :func:`to_fake_cuda`) on a batch of ``size x size`` images, under autocast to
    ``amp_dtype`` unless it is None; inside :func:`fake_cuda_backbone`. Returns the outputs."""
    model.train(training)
    x = torch.randn(batch, 3, size, size, device='cuda')
    with torch.autocast('cuda', dtype=amp_dtype or torch.float32,
                        enabled=amp_dtype is not None), torch.set_grad_enabled(training):
        outs = model(x)
        loss = sum(o.float().square().mean() for o in outs) if training else None
    if training:
        fake_backward(loss)
    return outs


def backbone_launches(subset: bool = False,
                      configs: Optional[Sequence[Tuple[str, int]]] = None) -> List:
    """The Triton scan launches of the backbone configurations (arch, size) in training and
    eval, fp32 and bf16/fp16 autocast (see :mod:`quadmamba_kernels.compile_check`)."""
    from quadmamba_kernels.compile_check import record_launches
    configs = configs or (SUBSET if subset else CONFIGS)
    label = ['']
    models = {}
    with record_launches(lambda: label[0]) as launches:
        for (arch, size), training, amp in itertools.product(configs, (True, False), AMP_DTYPES):
            label[0] = (f"QuadMamba-{arch.upper()} {size} {'train' if training else 'eval'} "
                        f"{'fp32' if amp is None else str(amp).replace('torch.', '')}")
            if arch not in models:
                models[arch] = QuadMamba(arch=arch, out_indices=(0, 1, 2, 3))
            model = copy.deepcopy(models[arch])  # converted in place: a fresh copy each run
            with fake_cuda_backbone() as mode:
                run_backbone(to_fake_cuda(model, mode), size, training, amp)
    return launches
