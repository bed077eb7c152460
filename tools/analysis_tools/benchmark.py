"""Speed of models from configs, side by side in one run.

    python tools/analysis_tools/benchmark.py CONFIG [CONFIG ...] [--device cpu|cuda]
        [--batch-size 1] [--shape 224] [--repeat 7] [--warmup 2] [--train] [--amp bf16]

CONFIG is a file or a toolbox config such as
``mmpretrain::swin_transformer/swin-tiny_16xb64_in1k.py``, or, without the OpenMMLab
toolboxes (torch and mmengine only), ``quadmamba:ARCH`` (the backbone with a pooled linear
1000-class head) or ``timm:NAME`` (a timm model). The models run interleaved,
round by round, on the same input; the table gives the median time per batch, images per
second and the ratio to the first config. ``--train`` times forward + backward (the
optimizer step excluded); otherwise an inference forward.
"""
import argparse
import statistics
import time

import torch
from mmengine.config import Config
from mmengine.hub import get_config

from quadmamba_mm.models.classifier import QuadMambaClassifier
from quadmamba_mm.utils.toolbox import build_model


def load_config(path: str) -> Config:
    return get_config(path) if '::' in path else Config.fromfile(path)


class TensorMode(torch.nn.Module):
    """An OpenMMLab model called in ``mode='tensor'`` (no data samples, no post-processing)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x, mode='tensor')


def build(spec: str) -> torch.nn.Module:
    kind, _, name = spec.partition(':')
    if kind == 'quadmamba' and '::' not in spec:
        return QuadMambaClassifier(name)
    if kind == 'timm' and '::' not in spec:
        import timm
        return timm.create_model(name)
    return TensorMode(build_model(load_config(spec)))


def step_fn(model, inputs, train: bool, amp):
    device_type = inputs.device.type

    def step():
        with torch.autocast(device_type, dtype=amp, enabled=amp is not None):
            if train:
                outputs = model(inputs)
                outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs, )
                sum(o.float().mean() for o in outputs).backward()
            else:
                with torch.no_grad():
                    model(inputs)
        if device_type == 'cuda':
            torch.cuda.synchronize()

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('configs', nargs='+')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--shape', type=int, nargs='+', default=[224], help='H [W]')
    parser.add_argument('--repeat', type=int, default=7)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--train', action='store_true', help='time forward + backward')
    parser.add_argument('--amp', choices=['bf16', 'fp16'], default=None)
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = args.shape if len(args.shape) == 2 else args.shape * 2
    amp = {'bf16': torch.bfloat16, 'fp16': torch.float16, None: None}[args.amp]
    device = torch.device(args.device)
    inputs = torch.randn(args.batch_size, 3, height, width, device=device)

    steps = []
    for path in args.configs:
        model = build(path).to(device)
        model.train(args.train)
        steps.append(step_fn(model, inputs, args.train, amp))
    times = [[] for _ in steps]
    for round_index in range(args.warmup + args.repeat):
        for step, record in zip(steps, times):
            start = time.perf_counter()
            step()
            if round_index >= args.warmup:
                record.append(time.perf_counter() - start)

    mode = 'train step (fwd+bwd)' if args.train else 'inference forward'
    print(f'{mode}, batch {args.batch_size}, {height}x{width}, device {device}, '
          f'amp {args.amp or "off"}, threads {torch.get_num_threads()}, '
          f'median of {args.repeat}')
    medians = [statistics.median(t) for t in times]
    print(f'{"config":60s} {"ms/batch":>10s} {"img/s":>9s} {"vs first":>9s}')
    for path, median in zip(args.configs, medians):
        print(f'{path:60s} {median * 1e3:10.1f} {args.batch_size / median:9.1f} '
              f'{median / medians[0]:8.2f}x')


if __name__ == '__main__':
    main()
