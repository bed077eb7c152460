"""Selective-scan implementations side by side: forward and forward+backward times.

    python -m quadmamba_kernels.benchmark [--device cpu] [--shape B K D N L] [--repeat 5]
        [--warmup 1]
        [--backends chunked reference] [--dtype float32 [bfloat16 ...]] [--orders] [--mamba]
    python -m quadmamba_kernels.benchmark --device cuda --quadmamba-s [--dtype bfloat16]
        [--json results.json] [--tiny]
    python -m quadmamba_kernels.benchmark --traffic --quadmamba-s [--batch 128] [--size 224]

Every contender runs on the same inputs in one process, interleaved round by round, so
the ratios are fair on a noisy machine. Times are medians. Forward+backward goes through
autograd (``loss = (y * g).sum()``), as training does. The output is fp32 (QuadMamba's
setting).

``--orders`` scans in the map-order layout: the four cross-scan directions of an
``H x W = L`` map (square if possible). Backends that read the orders in place then
compete with the others' gather -> scan -> scatter path. ``--mamba`` adds mamba's CUDA
``selective_scan_fn`` (``mamba_ssm``, built separately) as the anchor. On CUDA the table
also gives the forward's bytes per second against a measured device copy.
``--quadmamba-s`` runs the QuadMamba-S shapes at batch 128: stage 1 (K=2, D=192,
L=56x56) and stage 3 (K=4, D=768, L=14x14), N=1.

``--json PATH`` also writes every result (shape, dtype, layout, contender, times, GB/s,
fraction of copy bandwidth, device) for machines to read. ``--tiny`` swaps the shapes for
tiny ones with the same K (a dry run of the command: numbers mean nothing).
"""
import argparse
import json
import math
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import Tensor

from . import available_backends, selective_scan
from .fake_cuda import is_faking

QUADMAMBA_S = [(128, 2, 192, 1, 3136), (128, 4, 768, 1, 196)]
# --tiny: the same K and layouts at sizes that take milliseconds (interpreted Triton included).
TINY_QUADMAMBA_S = [(1, 2, 2, 1, 32), (1, 4, 2, 1, 16)]
TINY_SHAPE = (1, 2, 2, 1, 32)


def make_inputs(batch, k, dim, n_state, length, device, dtype, ordered=False):
    # Drawn on the device: at batch 128 the CPU would take seconds per tensor. Fake tensors
    # (the compile check) have no data and a fake device has no generator.
    g = None if is_faking() else torch.Generator(device).manual_seed(0)
    channels = k * dim

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=device) * scale).to(dtype)

    return dict(
        u=randn(batch, dim if ordered else channels, length),
        delta=randn(batch, channels, length, scale=0.5),
        A=-torch.exp(torch.randn(channels, n_state, generator=g, device=device) * 0.5),
        B=randn(batch, k, n_state, length),
        C=randn(batch, k, n_state, length),
        D=torch.ones(channels, device=device),
        delta_bias=torch.full((channels, ), -3.0, device=device),
    )


def map_orders(k: int, length: int, device) -> Tensor:
    """``(1, k, L)`` orders on an ``H x W`` map: K=4 the cross scan (row-major, column-major
    and their reverses), K=2 row-major and its reverse (QuadMamba's forward/backward pair)."""
    height = max(h for h in range(1, math.isqrt(length) + 1) if length % h == 0)
    raster = torch.arange(length)
    columns = raster.view(height, length // height).t().flatten()
    rows = [raster, raster.flip(0)] if k == 2 else [raster, columns, raster.flip(0),
                                                    columns.flip(0)][:k]
    return torch.stack(rows)[None].to(device)


def mamba_contender() -> Optional[Callable]:
    """mamba's ``selective_scan_fn`` with our argument order, if ``mamba_ssm`` is installed."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        return None

    def scan(u, delta, A, B, C, D, delta_bias):
        return selective_scan_fn(u, delta, A, B, C, D, None, delta_bias, True).float()

    return scan


def timed(fn, device) -> float:
    if device.type == 'cuda':
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return time.perf_counter() - start


def copy_bandwidth(device, nbytes: int = 1 << 30, repeat: int = 10) -> float:
    """Bytes per second of a device-to-device copy (read + write counted)."""
    src = torch.empty(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(timed(lambda: dst.copy_(src), device) for _ in range(repeat))
    return 2 * nbytes / best


def forward_bytes(inputs: Dict[str, Tensor], ordered: bool) -> int:
    """Bytes a fused forward must move: read u, delta, B, C once, write the fp32 output."""
    u = inputs['u']
    out = u.numel() if ordered else inputs['delta'].numel()
    return sum(inputs[n].numel() * inputs[n].element_size() for n in 'u delta B C'.split()) \
        + 4 * out


def benchmark(contenders: Dict[str, Callable], shape, device, dtype, repeat, ordered,
              warmup=1):
    inputs = make_inputs(*shape, device=device, dtype=dtype, ordered=ordered)
    leaves = {k: v.requires_grad_() for k, v in inputs.items()}
    out_channels = shape[2] if ordered else shape[1] * shape[2]
    grad_out = torch.randn(shape[0], out_channels, shape[4], device=device)

    def forward(fn):
        with torch.no_grad():
            fn(**leaves)

    def forward_backward(fn):
        torch.autograd.grad((fn(**leaves) * grad_out).sum(), list(leaves.values()))

    times = {(name, mode): [] for name in contenders for mode in ('fwd', 'fwd+bwd')}
    for round_index in range(warmup + repeat):
        for name, fn in contenders.items():
            for mode, run in (('fwd', forward), ('fwd+bwd', forward_backward)):
                t = timed(lambda: run(fn), device)
                if round_index >= warmup:
                    times[(name, mode)].append(t)
    medians = {key: statistics.median(values) for key, values in times.items()}
    return medians, forward_bytes(inputs, ordered)


def make_contenders(backends: List[str], shape, device, ordered: bool, mamba: bool):
    orders = map_orders(shape[1], shape[4], device) if ordered else None
    contenders = {}
    for name in backends:
        def scan(name=name, **inputs):
            return selective_scan(**inputs, delta_softplus=True, orders=orders, backend=name,
                                  output_fp32=True)
        contenders[name] = scan
    anchor = mamba_contender() if mamba else None
    if mamba and anchor is None:
        print('mamba_ssm is not installed: no mamba anchor')
    if anchor is not None and not ordered:
        contenders['mamba (CUDA)'] = lambda **inputs: anchor(**inputs)
    return contenders


def device_name(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    try:
        with open('/proc/cpuinfo') as f:
            found = re.search(r'^model name\s*:\s*(.+)$', f.read(), re.M)
        if found:
            return found.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def layout_name(ordered: bool) -> str:
    return 'map order, orders read by the scan' if ordered else 'scan order'


def records(shape, dtype_name, ordered, results, nbytes, bandwidth) -> List[Dict[str, Any]]:
    """One JSON-ready record per contender."""
    names = list(dict.fromkeys(name for name, _ in results))
    fastest = min(results[(n, 'fwd+bwd')] for n in names)
    out = []
    for name in names:
        fwd, both = results[(name, 'fwd')], results[(name, 'fwd+bwd')]
        out.append(dict(
            shape=dict(zip('B K D N L'.split(), shape)), dtype=dtype_name, output='float32',
            layout=layout_name(ordered), contender=name, fwd_ms=fwd * 1e3,
            fwd_bwd_ms=both * 1e3, fwd_bwd_vs_fastest=both / fastest,
            fwd_bytes=nbytes, fwd_GBps=nbytes / fwd / 1e9 if bandwidth else None,
            fraction_of_copy=nbytes / fwd / bandwidth if bandwidth else None))
    return out


def report(shape, dtype_name, device, repeat, ordered, results, nbytes, bandwidth):
    batch, k, dim, n_state, length = shape
    layout = layout_name(ordered)
    print(f'\nselective scan, B={batch} K={k} D={dim} N={n_state} L={length}, {dtype_name} '
          f'inputs, fp32 output, {layout}; device {device}, median of {repeat}')
    names = list(dict.fromkeys(name for name, _ in results))
    fastest = min(results[(n, 'fwd+bwd')] for n in names)
    header = f'{"contender":14s} {"fwd ms":>9s} {"fwd+bwd ms":>11s} {"fwd+bwd/fastest":>16s}'
    if bandwidth:
        header += f' {"fwd GB/s":>9s} {"of copy":>8s}'
    print(header)
    for name in names:
        fwd, both = results[(name, 'fwd')], results[(name, 'fwd+bwd')]
        line = f'{name:14s} {fwd * 1e3:9.3f} {both * 1e3:11.3f} {both / fastest:15.2f}x'
        if bandwidth:
            line += f' {nbytes / fwd / 1e9:9.0f} {nbytes / fwd / bandwidth:7.0%}'
        print(line)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--shape', type=int, nargs=5, default=[2, 2, 192, 1, 3136],
                        metavar=('B', 'K', 'D', 'N', 'L'))
    parser.add_argument('--quadmamba-s', action='store_true',
                        help='the QuadMamba-S stage 1 and stage 3 shapes at batch 128')
    parser.add_argument('--backends', nargs='+', default=None,
                        help='default: every backend that runs on the device (on CUDA '
                        'without reference and segsum)')
    parser.add_argument('--dtype', nargs='+', default=['float32'],
                        choices=['float32', 'bfloat16', 'float16'],
                        help='input dtype(s); several run one after the other')
    parser.add_argument('--orders', action='store_true', help='map-order layout (see above)')
    parser.add_argument('--mamba', action='store_true', help="add mamba_ssm's CUDA kernel")
    parser.add_argument('--repeat', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=1, help='untimed rounds first')
    parser.add_argument('--json', type=Path, default=None, metavar='PATH',
                        help='also write all results to this JSON file')
    parser.add_argument('--tiny', action='store_true',
                        help='tiny shapes with the same K: a dry run of the command')
    parser.add_argument('--traffic', action='store_true',
                        help='with --quadmamba-s: predict the Triton scan\'s DRAM traffic in one '
                        'training step (fake CUDA tensors, no GPU needed; see .traffic)')
    parser.add_argument('--batch', type=int, default=128, help='--traffic: batch size')
    parser.add_argument('--size', type=int, default=224, help='--traffic: input size')
    args = parser.parse_args()
    if args.traffic:
        from .traffic import report as traffic_report
        from .traffic import training_step_traffic
        traffic = training_step_traffic('s' if args.quadmamba_s else 'li', args.size,
                                        args.batch)
        print(traffic_report(traffic))
        if args.json:
            args.json.write_text(json.dumps(traffic, indent=1))
        return
    device = torch.device(args.device)
    # On CUDA the sequential reference and the segsum backend (for tracers, BLOCK times the
    # memory) are no contenders at these shapes.
    backends = args.backends or [b for b in available_backends(device)
                                 if not (device.type == 'cuda' and b in ('reference', 'segsum'))]
    bandwidth = None
    if device.type == 'cpu':  # figures from different CPUs must never be mixed
        print(f'CPU {device_name(device)} | ISA {torch.backends.cpu.get_cpu_capability()} | '
              f'{torch.get_num_threads()} torch threads | torch {torch.__version__}')
    if device.type == 'cuda':
        bandwidth = copy_bandwidth(device, nbytes=1 << 24 if args.tiny else 1 << 30)
        print(f'{torch.cuda.get_device_name(device)}: device copy {bandwidth / 1e9:.0f} GB/s')
    if args.quadmamba_s:
        shapes = TINY_QUADMAMBA_S if args.tiny else QUADMAMBA_S
    else:
        shapes = [TINY_SHAPE if args.tiny else tuple(args.shape)]
    found = []
    for dtype in args.dtype:
        for shape in shapes:
            for ordered in ((False, True) if args.quadmamba_s else (args.orders, )):
                contenders = make_contenders(backends, shape, device, ordered, args.mamba)
                results, nbytes = benchmark(contenders, shape, device, getattr(torch, dtype),
                                            args.repeat, ordered, warmup=args.warmup)
                report(shape, dtype, device, args.repeat, ordered, results, nbytes, bandwidth)
                found += records(shape, dtype, ordered, results, nbytes, bandwidth)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(
            device=device_name(device), device_type=device.type, torch=torch.__version__,
            copy_GBps=bandwidth / 1e9 if bandwidth else None, repeat=args.repeat,
            warmup=args.warmup, tiny=args.tiny, results=found), indent=1))
        print(f'wrote {args.json}')


if __name__ == '__main__':
    main()
