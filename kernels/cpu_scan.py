"""The fused CPU scan: ``csrc/cpu_scan.c``, built on first use with the system C compiler.

The kernel does in one pass over each sequence what the chunked PyTorch path does in some
fifteen passes over ``K*D*L`` elements (softplus, discretisation, recurrence, output, and
the same again backwards), and reads the scan orders in place like the Triton kernels:
no gathered copies of the map, no scattered outputs. It reads and writes the maps through
their strides: a channel-last map (SS2D's conv output) is read with one vector load per step
and needs no transposed copy, and ``y`` and the input gradients come back in their input's
layout (:mod:`.layout`). Given ``delta_proj_weight``, it forms ``delta`` from its low-rank
input chunk by chunk, so the full ``delta`` is never stored. It is plain C: vector loops
over channels that the compiler vectorises for the ISA that PyTorch itself dispatches to on
this CPU (``torch.backends.cpu.get_cpu_capability()``), with its own exp and log(1 + t), so
the speed does not hang on any vendor's vector math library.

The library is compiled once per source, ISA and compiler into the cache folder
(``$QUADMAMBA_KERNELS_CACHE``, else ``~/.cache/quadmamba_kernels``) and loaded with
ctypes: no PyTorch headers, a build of about a second. Processes that build at the same
time (one per GPU rank, say) each write their own file and rename it into place. Without
a working compiler the backend reports itself unavailable, says why once, and ``'auto'``
falls back to the chunked PyTorch path.
"""
import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .layout import empty_in_layout_of

SOURCE = Path(__file__).with_name('csrc') / 'cpu_scan.c'
TILE_CHANNELS = 16  # V in cpu_scan.c: one AVX-512 vector of fp32
CHUNK = 64  # T in cpu_scan.c: scan steps between saved states

# Vector flags per PyTorch CPU capability: the ISA ATen's own kernels use on this machine.
ISA_FLAGS = {
    'AVX512': ['-mavx512f', '-mavx512bw', '-mavx512vl', '-mavx512dq', '-mavx2', '-mfma',
               '-mprefer-vector-width=512'],
    'AVX2': ['-mavx2', '-mfma'],
}
BASE_FLAGS = ['-O3', '-shared', '-fPIC', '-fno-trapping-math', '-std=gnu99',
              f'-DV={TILE_CHANNELS}', f'-DT={CHUNK}']


class _RowStrides(ctypes.Structure):
    """Strides of a ``(batch, channels, L)`` tensor."""
    _fields_ = [(name, ctypes.c_int64) for name in ('batch', 'channel', 'pos')]


class _StateStrides(ctypes.Structure):
    """Strides of a ``(batch, K, N, L)`` tensor."""
    _fields_ = [(name, ctypes.c_int64) for name in ('batch', 'dir', 'state', 'pos')]


class _Problem(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in (
        'u', 'delta', 'A', 'B', 'C', 'D', 'delta_bias', 'orders', 'order_index')] + [
            (name, ctypes.c_int64) for name in ('batch', 'groups', 'dim', 'n_state', 'length')
        ] + [('softplus', ctypes.c_int32), ('n_threads', ctypes.c_int32),
             ('stride_u', _RowStrides), ('stride_delta', _RowStrides),
             ('stride_B', _StateStrides), ('stride_C', _StateStrides),
             ('dts', ctypes.c_void_p), ('dt_weight', ctypes.c_void_p),
             ('dt_rank', ctypes.c_int64), ('stride_dts', _StateStrides)]


class _Grads(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in (
        'du', 'ddelta', 'dA', 'dB', 'dC', 'dD', 'ddelta_bias')] + [
            ('stride_du', _RowStrides), ('stride_ddelta', _RowStrides)]


def _capability() -> str:
    if platform.machine().lower() not in ('x86_64', 'amd64'):
        return 'DEFAULT'
    return torch.backends.cpu.get_cpu_capability()


def _cache_dir() -> Path:
    base = os.environ.get('QUADMAMBA_KERNELS_CACHE') or os.path.join(
        os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'quadmamba_kernels')
    return Path(base)


def _compile(compiler: List[str], flags: List[str], target: Path) -> Optional[str]:
    """Build into ``target`` (atomically); the compiler's complaint if it fails."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix='.so', dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([*compiler, *flags, str(SOURCE), '-o', tmp], capture_output=True,
                              text=True, timeout=300)
        if done.returncode != 0:
            return (done.stderr or done.stdout).strip()[-2000:] or f'exit status {done.returncode}'
        os.replace(tmp, target)
        return None
    except (OSError, subprocess.SubprocessError) as error:
        return str(error)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class _Library:
    """The compiled kernel, built and loaded on first use; ``None`` where that failed."""

    def __init__(self) -> None:
        self.handle: Optional[ctypes.CDLL] = None
        self.error: Optional[str] = None
        self.tried = False
        self.threaded = False

    def load(self) -> Optional[ctypes.CDLL]:
        if self.tried:
            return self.handle
        self.tried = True
        if os.name != 'posix':
            self.error = 'the fused CPU scan is built for POSIX systems only'
            return None
        compiler = shlex.split(os.environ.get('CC') or 'cc')  # CC may be 'ccache gcc'
        if not compiler:
            compiler = ['cc']
        capability = _capability()
        flags = BASE_FLAGS + ISA_FLAGS.get(capability, [])
        build = [SOURCE.read_text(), *compiler, _compiler_version(compiler), *flags]
        errors = []
        # OpenMP for threads where the compiler has it; else one thread per call (keeping
        # the vector loops where the compiler knows their pragmas).
        for extra in (['-fopenmp'], ['-fopenmp-simd'], []):
            key = hashlib.sha256('\0'.join(build + extra).encode()).hexdigest()
            target = _cache_dir() / f'cpu_scan_{capability.lower()}_{key[:16]}.so'
            error = None if target.exists() else _compile(compiler, flags + extra, target)
            if error is None:
                try:
                    self.handle = self._bind(ctypes.CDLL(str(target)))
                    self.threaded = extra == ['-fopenmp']
                    if not self.threaded:
                        warnings.warn(f'{" ".join(compiler)} has no OpenMP (-fopenmp): the '
                                      'fused CPU scan runs on one thread')
                    return self.handle
                except OSError as load_error:
                    error = str(load_error)
            errors.append(f'{" ".join(compiler + flags + extra)}: {error}')
        self.error = 'could not build the fused CPU scan (csrc/cpu_scan.c): ' + '; '.join(errors)
        warnings.warn(f'{self.error}. The chunked PyTorch scan is used instead (slower). Set '
                      'CC to a working C compiler to build it.')
        return None

    @staticmethod
    def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
        lib.qm_scan_forward.argtypes = [ctypes.POINTER(_Problem), ctypes.c_void_p, _RowStrides,
                                        ctypes.c_void_p]
        lib.qm_scan_backward.argtypes = [ctypes.POINTER(_Problem), ctypes.c_void_p, _RowStrides,
                                         ctypes.c_void_p, ctypes.POINTER(_Grads)]
        lib.qm_scan_forward.restype = lib.qm_scan_backward.restype = ctypes.c_int
        return lib


def _compiler_version(compiler: List[str]) -> str:
    try:
        return subprocess.run([*compiler, '--version'], capture_output=True, text=True,
                              timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ''


LIBRARY = _Library()


# A constant to torch.compile and torch.export: a graph traced before the first build calls
# it at trace time instead of tracing the build.
@torch.compiler.assume_constant_result
def available() -> bool:
    """Whether the fused kernel is built (building it if not tried yet)."""
    return LIBRARY.load() is not None


def _ptr(t: Optional[Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _fp32(t: Optional[Tensor]) -> Optional[Tensor]:
    """fp32, strides kept: the kernel reads maps, sequences, B and C through them."""
    return None if t is None else t.detach().float()


def _strides(t: Tensor, kind=_RowStrides):
    return kind(*t.stride())


def _problem(u, delta, A, B, C, D, delta_bias, delta_softplus, orders, order_index,
             delta_proj_weight=None):
    """The kernel's argument block, and the fp32 tensors it points into (they must outlive
    the call): u, delta, B and C with their strides, A, D and delta_bias contiguous. With
    ``delta_proj_weight`` (K, D, R), ``delta`` is the low-rank (batch, K, R, L) form."""
    if delta.device.type != 'cpu':
        raise ValueError(f'the cpu scan backend runs on CPU tensors, got {delta.device}')
    if LIBRARY.load() is None:
        raise RuntimeError(LIBRARY.error)
    u, delta, B, C = map(_fp32, (u, delta, B, C))
    A, D, delta_bias, weight = (None if t is None else t.detach().float().contiguous()
                                for t in (A, D, delta_bias, delta_proj_weight))
    if orders is not None:
        orders = orders.to(torch.int32).contiguous()
        order_index = None if order_index is None else order_index.to(torch.int32).contiguous()
    keep = (u, delta, A, B, C, D, delta_bias, orders, order_index, weight)
    (batch, groups, n_state, length), channels = B.shape, A.shape[0]
    low_rank = weight is not None
    full, dts = (None, delta) if low_rank else (delta, None)
    problem = _Problem(*map(_ptr, (u, full, A, B, C, D, delta_bias, orders, order_index)), batch,
                       groups, channels // groups, n_state, length, int(delta_softplus),
                       torch.get_num_threads() if LIBRARY.threaded else 1, _strides(u),
                       _RowStrides() if low_rank else _strides(delta),
                       _strides(B, _StateStrides), _strides(C, _StateStrides), _ptr(dts),
                       _ptr(weight), weight.shape[-1] if low_rank else 0,
                       _strides(dts, _StateStrides) if low_rank else _StateStrides())
    return problem, keep


def saved_states_shape(u: Tensor, delta: Tensor, A: Tensor, B: Tensor) -> Tuple[int, ...]:
    """Shape of the chunk-end states :func:`selective_scan_cpu` returns."""
    (channels, n_state), (batch, length) = A.shape, (B.shape[0], B.shape[-1])
    return batch, channels, -(-length // CHUNK), n_state


def selective_scan_cpu(u: Tensor,
                       delta: Tensor,
                       A: Tensor,
                       B: Tensor,
                       C: Tensor,
                       D: Optional[Tensor] = None,
                       delta_bias: Optional[Tensor] = None,
                       delta_softplus: bool = False,
                       orders: Optional[Tensor] = None,
                       order_index: Optional[Tensor] = None,
                       delta_proj_weight: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """The scan of :func:`~quadmamba_kernels.reference.selective_scan_reference` (without
    orders) or of the map-order layout of :func:`~quadmamba_kernels.selective_scan`; with
    ``delta_proj_weight`` ``(K, D, R)``, ``delta`` is the low-rank ``(batch, K, R, L)`` input
    of that projection, which the kernel applies as it goes.

    Returns:
        ``y`` in fp32 (``(B, K*D, L)``, or the ``(B, D, L)`` map with ``orders``) and the
        fp32 states at the chunk ends, for the backward pass.
    """
    problem, keep = _problem(u, delta, A, B, C, D, delta_bias, delta_softplus, orders,
                             order_index, delta_proj_weight)
    y = empty_in_layout_of(keep[0])
    states = torch.empty(saved_states_shape(u, delta, A, B))
    if LIBRARY.handle.qm_scan_forward(ctypes.byref(problem), y.data_ptr(), _strides(y),
                                      states.data_ptr()):
        raise MemoryError('the cpu scan could not allocate its work buffers')
    return y, states


def selective_scan_cpu_backward(grad_y: Tensor,
                                u: Tensor,
                                delta: Tensor,
                                A: Tensor,
                                B: Tensor,
                                C: Tensor,
                                D: Optional[Tensor],
                                delta_bias: Optional[Tensor],
                                delta_softplus: bool,
                                states: Tensor,
                                orders: Optional[Tensor] = None,
                                order_index: Optional[Tensor] = None,
                                delta_proj_weight: Optional[Tensor] = None
                                ) -> Tuple[Optional[Tensor], ...]:
    """Gradients for ``(u, delta, A, B, C, D, delta_bias)`` and, given, ``delta_proj_weight``
    (fp32; None for absent inputs) from the chunk-end ``states`` of
    :func:`selective_scan_cpu`."""
    problem, keep = _problem(u, delta, A, B, C, D, delta_bias, delta_softplus, orders,
                             order_index, delta_proj_weight)
    grad_y, states = _fp32(grad_y), states.float().contiguous()
    batch, groups, n_state = problem.batch, problem.groups, problem.n_state
    length, channels = problem.length, groups * problem.dim
    tiles = -(-problem.dim // TILE_CHANNELS)
    du = empty_in_layout_of(keep[0])
    # dL/d(delta) in full, channel-last: per token (K, D), what the projection's gradients read.
    ddelta = (torch.empty(batch, length, channels).transpose(1, 2)
              if delta_proj_weight is not None else empty_in_layout_of(keep[1]))
    dB = torch.empty(batch, groups, tiles, n_state, length)
    dC = torch.empty_like(dB)
    dA = torch.empty(batch, channels, n_state)
    dD, dbias = torch.empty(batch, channels), torch.empty(batch, channels)
    grads = _Grads(*map(_ptr, (du, ddelta, dA, dB, dC, dD, dbias)), _strides(du),
                   _strides(ddelta))
    if LIBRARY.handle.qm_scan_backward(ctypes.byref(problem), grad_y.data_ptr(),
                                       _strides(grad_y), states.data_ptr(),
                                       ctypes.byref(grads)):
        raise MemoryError('the cpu scan could not allocate its work buffers')
    grads = (du, ddelta, dA.sum(0), dB.sum(2), dC.sum(2), None if D is None else dD.sum(0),
             None if delta_bias is None else dbias.sum(0))
    if delta_proj_weight is None:
        return grads
    dts, weight = keep[1], keep[-1]
    per_token = ddelta.transpose(1, 2).view(batch, length, groups, problem.dim)
    return (du, torch.einsum('blkd,kdr->bkrl', per_token, weight), *grads[2:],
            torch.einsum('blkd,bkrl->kdr', per_token, dts))
