"""Selective-scan backends side by side: forward and forward+backward times.

    python -m quadmamba_kernels.benchmark [--device cpu] [--shape B K D N L] [--repeat 5]
        [--backends chunked reference] [--dtype float32]

All backends run on the same inputs in one process, interleaved round by round, so the
ratios are fair on a noisy machine. Times are medians. Forward+backward goes through
autograd (``loss = (y * g).sum()``), as training does.
"""
import argparse
import statistics
import time

import torch

from .interface import available_backends, selective_scan


def make_inputs(batch, k, dim, n_state, length, device, dtype):
    g = torch.Generator().manual_seed(0)
    channels = k * dim

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device, dtype)

    return dict(
        u=randn(batch, channels, length),
        delta=randn(batch, channels, length, scale=0.5),
        A=-torch.exp(torch.randn(channels, n_state, generator=g) * 0.5).to(device),
        B=randn(batch, k, n_state, length),
        C=randn(batch, k, n_state, length),
        D=torch.ones(channels, device=device),
        delta_bias=torch.full((channels, ), -3.0, device=device),
    )


def timed(fn, device) -> float:
    if device.type == 'cuda':
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return time.perf_counter() - start


def benchmark(backends, shape, device, dtype, repeat, warmup=1):
    inputs = make_inputs(*shape, device=device, dtype=dtype)
    leaves = {k: v.requires_grad_() for k, v in inputs.items()}
    grad_out = torch.randn(shape[0], shape[1] * shape[2], shape[4], device=device)

    def forward(name):
        with torch.no_grad():
            selective_scan(**leaves, delta_softplus=True, backend=name, output_fp32=True)

    def forward_backward(name):
        y = selective_scan(**leaves, delta_softplus=True, backend=name, output_fp32=True)
        torch.autograd.grad((y * grad_out).sum(), list(leaves.values()))

    times = {(name, mode): [] for name in backends for mode in ('fwd', 'fwd+bwd')}
    for round_index in range(warmup + repeat):
        for name in backends:
            for mode, fn in (('fwd', forward), ('fwd+bwd', forward_backward)):
                t = timed(lambda: fn(name), device)
                if round_index >= warmup:
                    times[(name, mode)].append(t)
    return {key: statistics.median(values) for key, values in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--shape', type=int, nargs=5, default=[2, 2, 192, 1, 3136],
                        metavar=('B', 'K', 'D', 'N', 'L'))
    parser.add_argument('--backends', nargs='+', default=None,
                        help='default: every backend that runs on the device')
    parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16', 'float16'])
    parser.add_argument('--repeat', type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    backends = args.backends or available_backends(device)
    results = benchmark(backends, args.shape, device, getattr(torch, args.dtype), args.repeat)
    batch, k, dim, n_state, length = args.shape
    print(f'selective scan, B={batch} K={k} D={dim} N={n_state} L={length}, {args.dtype} '
          f'inputs, device {device}, median of {args.repeat}')
    fastest = {mode: min(results[(n, mode)] for n in backends) for mode in ('fwd', 'fwd+bwd')}
    print(f'{"backend":12s} {"fwd ms":>10s} {"fwd+bwd ms":>12s} {"fwd+bwd / fastest":>18s}')
    for name in backends:
        fwd, both = results[(name, 'fwd')], results[(name, 'fwd+bwd')]
        print(f'{name:12s} {fwd * 1e3:10.1f} {both * 1e3:12.1f} '
              f'{both / fastest["fwd+bwd"]:17.1f}x')


if __name__ == '__main__':
    main()
