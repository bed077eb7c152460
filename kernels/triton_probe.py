"""Whether the Triton scan compiles and runs on a GPU, asked once per device and dtype.

A user's GPU may be one the installed Triton or its ``ptxas`` cannot compile for, the CUDA
toolkit parts Triton needs may be missing, or a kernel may not fit the device. ``'auto'``
must not strand that user: :func:`triton_works` runs one tiny scan forward and backward
(the compile happens there) and remembers the answer; when Triton fails, ``'auto'`` picks
the next backend (the chunked PyTorch scan) after one warning that names the GPU, the error
and how to choose a backend. An explicit ``backend='triton'`` still raises.
"""
import warnings
from typing import Dict, Optional, Tuple

import torch

# (device, dtype) -> None if the Triton scan works there, else the error it raised.
_RESULTS: Dict[Tuple[str, torch.dtype], Optional[str]] = {}


def device_name(device: torch.device) -> str:
    try:
        return f'{torch.cuda.get_device_name(device)} (sm_{"".join(map(str, torch.cuda.get_device_capability(device)))})'
    except Exception:  # no driver (fake CUDA tensors) or not a CUDA device
        return str(device)


def is_triton_failure(error: BaseException) -> bool:
    """An error of Triton's compiler, assembler or launcher (not of torch, e.g. out of
    memory, and not a bad input, which the interface rejects before any kernel)."""
    if isinstance(error, torch.OutOfMemoryError):
        return False
    module = type(error).__module__ or ''
    text = str(error).lower()
    return module.startswith('triton') or any(
        word in text for word in ('ptxas', 'triton', 'cuda driver', 'out of resources',
                                  'shared memory'))


def record_failure(device: torch.device, dtype: torch.dtype, error: BaseException) -> None:
    """Turn the Triton scan off for ``'auto'`` on this device and dtype, with one warning."""
    key = (str(device), dtype)
    if _RESULTS.get(key) is not None:
        return
    _RESULTS[key] = f'{type(error).__name__}: {error}'.strip()
    first_line = _RESULTS[key].splitlines()[0][:300]
    warnings.warn(
        f"The Triton selective scan failed on {device_name(device)} with {dtype} inputs: "
        f"{first_line}. scan_backend='auto' uses the chunked PyTorch scan there from now on "
        "(slower, same results). Choose a backend explicitly with scan_backend='chunked' (or "
        "scan_cfg=dict(type='SelectiveScan', backend='chunked')); backend='triton' raises "
        "the error instead. `python -m quadmamba_mm.runtime.env_check` shows it again.",
        RuntimeWarning, stacklevel=3)


def known_failure(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    return _RESULTS.get((str(device), dtype))


def run_probe(device: torch.device, dtype: torch.dtype) -> None:
    """One tiny scan through the Triton ops, forward and backward (called directly: no
    autograd graph); raises what Triton raises."""
    from .triton_scan import selective_scan_triton_backward_op, selective_scan_triton_op
    length, channels = 32, 4
    u, delta = (torch.randn(1, channels, length, device=device).to(dtype) for _ in range(2))
    B, C = (torch.randn(1, 2, 1, length, device=device).to(dtype) for _ in range(2))
    A, D = -torch.ones(channels, 1, device=device), torch.ones(channels, device=device)
    y, states = selective_scan_triton_op(u, delta, A, B, C, D, None, None, None, True)
    selective_scan_triton_backward_op(torch.ones_like(y), u, delta, A, B, C, D, None, states,
                                      None, None, True)
    if torch.device(device).type == 'cuda' and torch.cuda.is_available():
        torch.cuda.synchronize(device)


def triton_works(device: torch.device, dtype: torch.dtype = torch.float32) -> bool:
    """Whether the Triton scan compiles and runs on ``device`` for ``dtype`` inputs (probed
    once; while a compiler traces, an unprobed device counts as working)."""
    key = (str(device), dtype)
    if key not in _RESULTS:
        if torch.compiler.is_compiling():
            return True
        try:
            with torch.autocast(device_type=torch.device(device).type, enabled=False):
                run_probe(device, dtype)
            _RESULTS[key] = None
        except Exception as error:  # only Triton's own failures turn it off
            if not is_triton_failure(error):
                raise
            record_failure(device, dtype, error)
    return _RESULTS[key] is None
