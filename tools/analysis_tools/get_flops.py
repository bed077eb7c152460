"""Parameters and FLOPs of a model config, the selective scan counted as 9 * B * L * D * N.

    python tools/analysis_tools/get_flops.py CONFIG [--shape H [W]] [--cfg-options k=v ...]

FLOPs follow fvcore's convention (one multiply-add = 1 FLOP), as the QuadMamba paper does.
Prints the whole model and its backbone alone.
"""
import argparse

import torch
from mmengine.config import Config, DictAction

from quadmamba_mm.runtime.quiet import quiet_tools
from quadmamba_mm.analysis.complexity import count_params_and_flops
from quadmamba_mm.runtime.toolbox import build_model, dummy_data_samples


class TensorMode(torch.nn.Module):
    """Calls a toolbox model in ``mode='tensor'`` so it can be traced on a bare tensor."""

    def __init__(self, model, data_samples):
        super().__init__()
        self.model, self.data_samples = model, data_samples

    def forward(self, inputs):
        return self.model(inputs, self.data_samples, mode='tensor')


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='config file')
    parser.add_argument('--shape', type=int, nargs='+', default=[224],
                        help='input size H [W] (default 224x224)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    return parser.parse_args()


def main():
    quiet_tools()  # no pkg_resources warnings, no torch build dump
    args = parse_args()
    if len(args.shape) not in (1, 2):
        raise SystemExit('--shape takes H or H W')
    height, width = args.shape if len(args.shape) == 2 else args.shape * 2
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    model = build_model(cfg).eval()
    samples = dummy_data_samples(cfg, height, width)
    inputs = (torch.randn(1, 3, height, width), )
    rows = [('model', TensorMode(model, samples)), ('backbone', model.backbone)]
    print(f'config: {args.config}\ninput: 1x3x{height}x{width}')
    for name, module in rows:
        with torch.no_grad():
            params, flops = count_params_and_flops(module, inputs)
        print(f'{name:9s} params: {params / 1e6:.2f} M   FLOPs: {flops / 1e9:.2f} G')


if __name__ == '__main__':
    main()
