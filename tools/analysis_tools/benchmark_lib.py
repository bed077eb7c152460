"""Building, stepping and measuring models for ``benchmark.py``.

Kept in its own module so that the CPU memory probe, which runs in a fresh process per
measurement, can import it by name.
"""
import copy
import ctypes
import functools
import gc
import math
import os
import platform
import re
import resource
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from quadmamba_kernels.benchmark import device_name

Size = Tuple[int, int]
MODES = {'infer': 'inference', 'train': 'train step'}
AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16, None: None}


# ---- models --------------------------------------------------------------------------------
class TensorMode(nn.Module):
    """An OpenMMLab model called in ``mode='tensor'`` (no data samples, no post-processing)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x, mode='tensor')


def split_spec(spec: str) -> Tuple[str, str]:
    """``('quadmamba', ARCH)``, ``('timm', NAME)`` or ``('config', PATH)`` (of ``SPEC`` for
    ``compiled:SPEC``)."""
    if spec.startswith('compiled:'):
        return split_spec(spec[len('compiled:'):])
    kind, _, name = spec.partition(':')
    if kind in ('quadmamba', 'timm') and '::' not in spec:
        if not name:
            raise ValueError(f'model spec {spec!r}: expected {kind}:NAME')
        return kind, name
    return 'config', spec


@functools.lru_cache(maxsize=None)
def _read_config(path: str):
    from mmengine.config import Config
    from mmengine.hub import get_config
    return get_config(path) if '::' in path else Config.fromfile(path)


def load_config(path: str):
    """A fresh copy (callers change it) of a config read once."""
    return copy.deepcopy(_read_config(path))


def toolbox_modules(spec: str) -> List[str]:
    """Modules worth importing before models of ``spec`` are built in child processes."""
    kind, name = split_spec(spec)
    if kind == 'timm':
        return ['timm']
    if kind == 'config':
        scope = _read_config(name).get('default_scope')
        return [f'{scope}.models'] if scope else []
    return []


def timm_fixed_size(name: str) -> bool:
    """Whether a timm model is built for one input size (Swin, ViT), from its default
    pretrained config; such a model is rebuilt with ``img_size=`` for every size."""
    import timm
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # unknown tag or an older timm: treat it as size-agnostic
        return False
    return bool(getattr(cfg, 'fixed_input_size', False))


def size_dependent(spec: str) -> bool:
    """Whether the model must be built anew for each input size."""
    kind, name = split_spec(spec)
    if kind == 'timm':
        return timm_fixed_size(name)
    if kind == 'config':
        return 'img_size' in load_config(name).model.get('backbone', {})
    return False


def padded_maps(size: Size, window: int, strides=(4, 8, 16, 32)) -> str:
    """Stage map sides and what windows of ``window`` pad them to, e.g. '128->133, 64->70'."""
    sides = [math.ceil(size[0] / s) for s in strides]
    return ', '.join(f'{s}->{math.ceil(s / window) * window}' if s % window and s > window
                     else str(s) for s in sides)


def timm_swin_note(model: nn.Module, size: Size) -> str:
    """What timm does with the windows of a Swin built for ``size``."""
    parts = []
    for layer in getattr(model, 'layers', []):
        block = layer.blocks[0] if hasattr(layer, 'blocks') else None
        if block is None or not hasattr(block, 'window_size'):
            return ''
        res, win = tuple(block.input_resolution), tuple(block.window_size)
        padded = tuple(math.ceil(r / w) * w for r, w in zip(res, win))
        parts.append(f'{res[0]}x{res[1]} in windows of {win[0]}' +
                     (f' (padded to {padded[0]}x{padded[1]})' if padded != res else ''))
    return '; stage maps ' + ', '.join(parts) if parts else ''


def build_model(spec: str, size: Size) -> Tuple[nn.Module, str]:
    """The model named by ``spec``, built for input ``size``, and a note on what was done for
    that size (empty when nothing was). ``compiled:SPEC`` is SPEC under
    ``torch.compile(fullgraph=True)`` (inductor), compiled during the warm-up rounds."""
    if spec.startswith('compiled:'):
        model, note = build_model(spec[len('compiled:'):], size)
        return torch.compile(model, fullgraph=True), '; '.join(filter(None, [note, 'compiled']))
    kind, name = split_spec(spec)
    if kind == 'quadmamba':
        from quadmamba_mm.models.classifier import QuadMambaClassifier
        return QuadMambaClassifier(name), ''
    if kind == 'timm':
        import timm
        if not timm_fixed_size(name):
            return timm.create_model(name), ''
        model = timm.create_model(name, img_size=size)
        return model, f'timm img_size={size[0]}x{size[1]}' + timm_swin_note(model, size)
    from quadmamba_mm.runtime.toolbox import build_model as build_openmmlab
    cfg = load_config(name)
    backbone = cfg.model.get('backbone', {})
    note = ''
    if 'img_size' in backbone:
        backbone['img_size'] = size
        note = f'backbone img_size={size[0]}x{size[1]}'
        if 'Swin' in str(backbone.get('type', '')):
            window = backbone.get('window_size', 7)
            # mmpretrain's ShiftWindowMSA pads maps to multiples of the window; a map smaller
            # than the window needs pad_small_map=True (it asserts otherwise).
            note += f'; windows of {window} pad the stage maps ({padded_maps(size, window)})'
            if math.ceil(min(size) / 32) < window and not backbone.get('pad_small_map'):
                backbone['pad_small_map'] = True
                note += '; pad_small_map=True (the last maps are smaller than a window)'
    return TensorMode(build_openmmlab(cfg)), note


def state_bytes(model: nn.Module) -> int:
    """Bytes of the parameters and buffers."""
    return sum(t.numel() * t.element_size()
               for t in list(model.parameters()) + list(model.buffers()))


# ---- steps ---------------------------------------------------------------------------------
def tensors_in(out) -> List[torch.Tensor]:
    """The tensors of a (nested) model output."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in tensors_in(o)]
    return []


def make_inputs(batch: int, size: Size, device: torch.device, channels_last: bool):
    x = torch.randn(batch, 3, *size, device=device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def prepare(model: nn.Module, device: torch.device, mode: str, channels_last: bool):
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.train(mode == 'train')


def make_step(model: nn.Module, inputs: torch.Tensor, mode: str,
              amp: Optional[torch.dtype]) -> Callable[[], None]:
    """One inference forward (no autograd), or one training step without the optimizer:
    ``zero_grad`` + forward + backward of the outputs' mean."""
    device_type = inputs.device.type

    def autocast():
        return torch.autocast(device_type, dtype=amp, enabled=amp is not None)

    if mode == 'infer':

        def step():
            with torch.no_grad(), autocast():
                model(inputs)
    else:

        def step():
            model.zero_grad(set_to_none=True)
            with autocast():
                out = tensors_in(model(inputs))
            sum(o.float().mean() for o in out).backward()

    return step


def timed(step: Callable[[], None], device: torch.device) -> float:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    step()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


# ---- memory --------------------------------------------------------------------------------
CUDA_MEMORY = ('torch.cuda.max_memory_allocated over one steady-state step above what was '
               'allocated before it, plus this model\'s weights and input')
CPU_MEMORY = ('peak RSS over the first step of a fresh process above its RSS right before '
              'the step (VmHWM, reset through /proc/self/clear_refs), plus this model\'s '
              'weights and input')
CPU_MEMORY_MAXRSS = ('peak RSS (getrusage ru_maxrss, not resettable here, so at least the '
                     'build\'s peak) of a fresh process above its RSS right before the first '
                     'step, plus this model\'s weights and input')


# Matmuls and convolutions (forward and backward): oneDNN/MKL calls that torch.compile on a
# CPU leaves as they are.
DENSE_OPS = ('aten::mm', 'aten::addmm', 'aten::bmm', 'aten::baddbmm', 'aten::mkldnn_convolution',
             'aten::convolution_backward')


def time_split(step: Callable[[], None], rounds: int) -> Dict[str, float]:
    """Self CPU ms per step of the dense layers, the selective scan (the quadmamba ops) and
    the rest, from the torch profiler over ``rounds`` steps."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(rounds):
            step()
    split = dict(dense=0.0, scan=0.0, rest=0.0)
    for event in prof.key_averages():
        kind = ('dense' if event.key in DENSE_OPS else
                'scan' if 'quadmamba' in event.key else 'rest')
        split[kind] += event.self_cpu_time_total / 1e3 / rounds
    return split


def cuda_step_memory(step: Callable[[], None], model: nn.Module,
                     device: torch.device) -> float:
    """Bytes allocated at the peak of one step above what was allocated before it."""
    model.zero_grad(set_to_none=True)  # the step's own gradients count, the last step's not
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def _status_kib(key: str) -> int:
    with open('/proc/self/status') as f:
        found = re.search(rf'^{key}:\s+(\d+) kB', f.read(), re.M)
    if not found:
        raise RuntimeError(f'/proc/self/status has no {key} line')
    return int(found.group(1))


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    """Give freed heap pages back to the OS, so that the step cannot reuse memory the RSS
    baseline already counts (glibc only; a no-op elsewhere)."""
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass


def cpu_step_memory(spec: str, size: Size, batch: int, mode: str, amp_name: Optional[str],
                    channels_last: bool, threads: int) -> Dict[str, Any]:
    """Runs in a fresh process: builds the model, then measures the RSS peak of its first
    step above the RSS right before it."""
    torch.set_num_threads(threads)
    device = torch.device('cpu')
    model = prepare(build_model(spec, size)[0], device, mode, channels_last)
    inputs = make_inputs(batch, size, device, channels_last)
    step = make_step(model, inputs, mode, AMP_DTYPES[amp_name])
    gc.collect()
    _malloc_trim()
    before = _status_kib('VmRSS')
    resettable = _reset_peak_rss()
    step()
    peak = _status_kib('VmHWM') if resettable else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    return dict(step_bytes=max(peak - before, 0) * 1024, weight_bytes=state_bytes(model),
                input_bytes=inputs.numel() * inputs.element_size(),
                method=CPU_MEMORY if resettable else CPU_MEMORY_MAXRSS)


# ---- the machine ---------------------------------------------------------------------------
def cpu_model_name() -> str:
    return device_name(torch.device('cpu')) or 'unknown CPU'


def set_tf32(enabled: bool) -> None:
    """TF32 for matmuls and cuDNN convolutions, both set explicitly so that 'off' means fp32."""
    with warnings.catch_warnings():  # newer torch prefers fp32_precision; both still work
        warnings.simplefilter('ignore')
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def machine_info(device: torch.device, amp: Optional[str], channels_last: bool) -> Dict[str, Any]:
    get_isa = getattr(torch.backends.cpu, 'get_cpu_capability', lambda: 'unknown')
    info = dict(cpu=cpu_model_name(), cpu_isa=get_isa(), cores=os.cpu_count(),
                torch_threads=torch.get_num_threads(), torch=torch.__version__,
                python=platform.python_version(), device=str(device), amp=amp or 'off',
                channels_last=channels_last)
    if device.type == 'cuda':
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            tf32 = dict(matmul=torch.backends.cuda.matmul.allow_tf32,
                        cudnn=torch.backends.cudnn.allow_tf32)
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    tf32_matmul=tf32['matmul'], tf32_cudnn=tf32['cudnn'],
                    cudnn_benchmark=torch.backends.cudnn.benchmark)
    return info


def header_line(info: Dict[str, Any]) -> str:
    """The line every results table starts with."""
    on = {True: 'on', False: 'off'}
    parts = [f"CPU {info['cpu']}", f"ISA {info['cpu_isa']}",
             f"{info['torch_threads']} torch threads", f"torch {info['torch']}"]
    if 'gpu' in info:
        parts += [f"GPU {info['gpu']} (CUDA {info['cuda']})",
                  f"TF32 matmul {on[info['tf32_matmul']]}, cuDNN {on[info['tf32_cudnn']]}"]
    else:
        parts.append(f"device {info['device']}")
    parts += [f"AMP {info['amp']}", f"channels_last {on[bool(info['channels_last'])]}"]
    return ' | '.join(parts)
