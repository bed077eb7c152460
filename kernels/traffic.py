"""DRAM traffic of the Triton scan in one training step, predicted without a GPU.

    python -m quadmamba_kernels.benchmark --traffic --quadmamba-s [--batch 128] [--size 224]

A QuadMamba training step runs on fake CUDA tensors (bf16 autocast by default), as in
:mod:`.compile_check`. Three things are counted:

- kernel launches (recorded with their arguments): each tensor a kernel reads or writes,
  once, at its size; map-order outputs are read back and written once per scan direction
  after the first (the directions add up in them), and so is the fp32 sum of the input
  gradient's directions before the last one; the backward's
  per-program partials of dB and dC are written and read back by their sum;
- host passes: every tensor copy (dtype casts, layout copies) made on the way into the scan
  ops (``quadmamba.selective_scan_triton`` and its backward) or on their outputs;
- the minimum: each scan input read once and each output written once, forward (u, delta,
  B, C -> y) and backward (u, delta, B, C, dy -> du, ddelta, dB, dC), in the dtypes autograd
  hands over and needs.

It is a model: caches are assumed to catch every re-read inside a kernel (the orders, a
chunk's neighbouring step, the per-channel weights), nothing else. The times are bytes over
bandwidth (H100 SXM 3.35 TB/s, H200 4.8 TB/s), a bound no kernel reaches exactly.
"""
from collections import defaultdict
from typing import Dict, List, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

BANDWIDTHS = {'H100 SXM (3.35 TB/s)': 3.35e12, 'H200 (4.8 TB/s)': 4.8e12}
SCAN_OPS = ('quadmamba.selective_scan_triton.default',
            'quadmamba.selective_scan_triton_backward.default')
COPY_OPS = ('aten._to_copy.default', 'aten.clone.default', 'aten.copy_.default',
            'aten.contiguous.default')


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class ScanTraffic(TorchDispatchMode):
    """Counts the minimum bytes of each scan op call and the copies made into and out of
    them, and records the kernels' arguments."""

    def __enter__(self):
        self.minimum = defaultdict(int)
        self.host = defaultdict(int)
        self._copies: Dict[int, Tuple[str, int]] = {}  # id(tensor) -> copy that made it
        self._scan_outputs: set = set()
        # Every tensor whose id is kept above stays alive until the end: an id is not
        # reused by a later tensor (which would take its place in the count).
        self._kept: List[torch.Tensor] = []
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        out = func(*args, **(kwargs or {}))
        flat_out = out if isinstance(out, (list, tuple)) else [out]
        tensors_in = [a for a in args if isinstance(a, torch.Tensor)]
        if name in SCAN_OPS:
            for t in tensors_in:  # a copy made just for the scan is a host pass
                copied = self._copies.pop(id(t), None)
                if copied is not None:
                    self.host[f'{copied[0]} into the scan'] += copied[1]
            if name == SCAN_OPS[0]:
                u, delta, _, B, C = args[:5]
                self.minimum['forward'] += sum(map(nbytes, (u, delta, B, C))) + nbytes(out[0])
            else:
                dy, u, delta, _, B, C = args[:6]
                reads = sum(map(nbytes, (dy, u, delta, B, C)))
                # the gradients in the dtypes of their inputs
                writes = sum(t.numel() * t.element_size() for t in (u, delta, B, C))
                self.minimum['backward'] += reads + writes
            outputs = [t for t in flat_out if isinstance(t, torch.Tensor)]
            self._scan_outputs.update(map(id, outputs))
            self._kept += outputs
        elif name in COPY_OPS and isinstance(out, torch.Tensor):
            size = sum(map(nbytes, tensors_in[:1])) + nbytes(out)
            if any(id(t) in self._scan_outputs for t in tensors_in):
                self.host[f'{name.split(".")[1]} of a scan output'] += size
                self._scan_outputs.add(id(out))
            else:
                self._copies[id(out)] = (name.split('.')[1], size)
            self._kept.append(out)
        return out


def launch_bytes(launch, sizes: Dict[str, int]) -> Tuple[int, int]:
    """``(kernel bytes, partial-sum bytes)`` of one recorded launch (``sizes``: bytes of each
    tensor argument by name, 0 for the others)."""
    kw = dict(launch.kwargs)
    on_chip = kw.get('ON_CHIP')
    # map-order read-modify-writes, unless the directions add up on chip
    repeat = sizes['K'] - 1 if kw.get('ORDERED') and not on_chip else 0
    read = ('u_ptr', 'dt_ptr', 'B_ptr', 'C_ptr', 'order_ptr', 'state_ptr')
    orders = sizes['inverse_ptr'] if on_chip else 0  # the inverse orders, read on chip
    if launch.kernel.endswith('_scan_fwd_kernel'):
        y = sizes['y_ptr']
        return sum(sizes[n] for n in read) + orders + y + repeat * 2 * y, 0
    dB, dC = sizes['dB_ptr'], sizes['dC_ptr']
    partial_sum = (dB + dC) + (dB + dC) // max(1, launch.grid[1])  # read them, write the sum
    # in map order the first K-1 directions' du add up in an fp32 buffer: written by the
    # first, read and written by the middle ones, read by the last, which writes du
    written = ('dy_ptr', 'du_ptr', 'ddt_ptr', 'dB_ptr', 'dC_ptr', 'dA_ptr', 'dD_ptr',
               'dbias_ptr')
    kernel = (sum(sizes[n] for n in read + written) + orders
              + 2 * repeat * sizes['du_sum_ptr'])
    return kernel, partial_sum


def training_step_traffic(arch: str = 's', size: int = 224, batch: int = 128,
                          amp_dtype=torch.bfloat16) -> Dict[str, object]:
    """The traffic of the scan in one training step of QuadMamba ``arch`` (see above)."""
    from quadmamba_mm.analysis.triton_launches import (fake_cuda_backbone, run_backbone,
                                                       to_fake_cuda)
    from quadmamba_mm.models.quadmamba import QuadMamba

    from . import triton_scan
    from .compile_check import launch_of

    records = []

    def observe(kernel, grid, args, kwargs):
        sizes = {name: nbytes(a) if isinstance(a, torch.Tensor) else 0
                 for name, a in zip(kernel.arg_names, args)}
        sizes['K'] = args[kernel.arg_names.index('K')]
        records.append((launch_of(kernel, grid, args, kwargs), sizes))

    model = QuadMamba(arch=arch, out_indices=(0, 1, 2, 3))
    triton_scan.LAUNCH_OBSERVERS.append(observe)
    try:
        with fake_cuda_backbone() as mode:
            fake = to_fake_cuda(model, mode)
            with ScanTraffic() as meter:
                run_backbone(fake, size, True, amp_dtype, batch=batch)
    finally:
        triton_scan.LAUNCH_OBSERVERS.remove(observe)
    kernels = defaultdict(int)
    partial = 0
    for launch, sizes in records:
        moved, summed = launch_bytes(launch, sizes)
        kernels[launch.kernel.split(':')[-1]] += moved
        partial += summed
    host = dict(meter.host)
    if partial:
        host['sum of the dB/dC partials'] = partial
    minimum = sum(meter.minimum.values())
    total = sum(kernels.values()) + sum(host.values())
    return dict(arch=arch, size=size, batch=batch, amp=str(amp_dtype), launches=len(records),
                kernels=dict(kernels), host=host, minimum=minimum, total=total,
                ratio=total / max(1, minimum))


def report(traffic: Dict[str, object]) -> str:
    gb = 1e9
    lines = [f"Predicted DRAM traffic of the Triton scan, one training step of QuadMamba-"
             f"{traffic['arch'].upper()} (batch {traffic['batch']}, {traffic['size']}x"
             f"{traffic['size']}, {traffic['amp']} autocast; {traffic['launches']} launches, "
             "fake CUDA tensors: a model, not a measurement)", '',
             '| what | GB | x minimum |', '|---|---|---|']
    minimum = traffic['minimum']
    for name, moved in list(traffic['kernels'].items()) + list(traffic['host'].items()):
        lines.append(f'| {name} | {moved / gb:.2f} | {moved / minimum:.2f} |')
    lines.append(f"| **all** | **{traffic['total'] / gb:.2f}** | **{traffic['ratio']:.2f}** |")
    lines.append(f'| minimum (each input read, each output written once) | {minimum / gb:.2f} '
                 '| 1.00 |')
    lines.append('')
    for label, bandwidth in BANDWIDTHS.items():
        lines.append(f"predicted at {label}: {traffic['total'] / bandwidth * 1e3:.1f} ms "
                     f"(minimum {minimum / bandwidth * 1e3:.1f} ms)")
    return '\n'.join(lines)
