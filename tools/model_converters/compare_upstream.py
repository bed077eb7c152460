"""Logits of the released QuadMamba code vs ours on the same random weights (CPU).

    python tools/model_converters/compare_upstream.py --upstream-root QuadMamba/classification \
        [--arch s b] [--batch 2] [--size 224]

Needs a checkout of VISION-SJTU/QuadMamba (not part of this repository). The upstream model
is imported from it as it is, with three substitutions so it runs on a CPU and is comparable:
its CUDA selective scan is replaced by our sequential reference scan (same semantics);
``F.gumbel_softmax`` becomes the argmax one-hot (upstream samples Gumbel noise even in eval);
timm's DropPath/trunc_normal_ and fvcore are stubbed when not installed. Its weights are
randomised, converted with our converter and loaded strictly into ours. Not part of the test
suite because it needs the upstream code.
"""
import argparse
import importlib
import sys
import types
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import Config

from quadmamba_kernels import selective_scan_reference
from quadmamba_mm.runtime.quiet import quiet_tools
from quadmamba_mm.runtime.toolbox import build_model
from quadmamba_mm.checkpoints.upstream import convert_upstream_state_dict

ARCHS = {'s': dict(dims=96, depths=[2, 2, 5, 2], ssm_ratio=2.0),
         'b': dict(dims=96, depths=[2, 2, 15, 2], ssm_ratio=2.0)}
ROOT = Path(__file__).resolve().parents[2]


def stub_missing_modules():
    try:
        import timm.models.layers  # noqa: F401
    except ImportError:
        layers = types.ModuleType('timm.models.layers')
        layers.DropPath = lambda p=0.: nn.Identity()  # eval: drop path is the identity
        layers.trunc_normal_ = lambda t, std=1.0, **kw: nn.init.trunc_normal_(t, std=std)
        sys.modules.update({'timm': types.ModuleType('timm'),
                            'timm.models': types.ModuleType('timm.models'),
                            'timm.models.layers': layers})
    try:
        import fvcore.nn  # noqa: F401
    except ImportError:
        fvcore_nn = types.ModuleType('fvcore.nn')
        for name in ('FlopCountAnalysis', 'flop_count_str', 'flop_count', 'parameter_count'):
            setattr(fvcore_nn, name, None)
        sys.modules.update({'fvcore': types.ModuleType('fvcore'), 'fvcore.nn': fvcore_nn})


def import_upstream(root: Path):
    stub_missing_modules()
    sys.path.insert(0, str(root))
    vmamba = importlib.import_module('models.vmamba')

    def reference_scan(ctx, u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False,
                       *unused):
        return selective_scan_reference(u, delta, A, B, C, D, delta_bias, delta_softplus)

    vmamba.SelectiveScanOflex.forward = staticmethod(reference_scan)
    return vmamba


def argmax_one_hot(logits, tau=1.0, hard=False, eps=1e-10, dim=-1):
    return F.one_hot(logits.argmax(dim), logits.shape[dim]).to(logits.dtype).movedim(-1, dim)


def randomise(model: nn.Module, seed: int) -> None:
    """Random weights with enough spread that windows, shifts and scans all matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith(('A_logs', 'dt_projs_bias')):
                p.add_(noise * 0.5)
            elif p.dim() == 1:
                p.add_(noise * 0.1)
            else:
                p.add_(noise * 0.02)


def compare(vmamba, arch: str, batch: int, size: int, seed: int) -> None:
    torch.manual_seed(seed)  # the upstream constructor initialises from the global RNG
    upstream = vmamba.VSSM(
        patch_size=4, in_chans=3, num_classes=1000, ssm_d_state=1, ssm_dt_rank='auto',
        ssm_conv=3, ssm_conv_bias=False, forward_type='v05_noz', mlp_ratio=4.0,
        drop_path_rate=0.0, patch_norm=True, norm_layer='ln', **ARCHS[arch]).eval()
    randomise(upstream, seed)
    converted, _ = convert_upstream_state_dict(upstream.state_dict())

    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        expected = upstream(x)
    print(f'arch {arch}: input {batch}x3x{size}x{size}, '
          f'max |upstream logit| {expected.abs().max():.3f}')
    cfg_path = ROOT / f'configs/quadmamba/quadmamba-{arch}_8xb128_in1k.py'
    for layout in ('upstream', 'quadtree'):
        cfg = Config.fromfile(cfg_path)
        cfg.model.backbone.scan_layout = layout
        ours = build_model(cfg).eval()
        ours.load_state_dict(converted, strict=True)
        with torch.no_grad():
            logits = ours(x, mode='tensor')
        diff = (logits - expected).abs().max()
        same_top1 = (logits.argmax(-1) == expected.argmax(-1)).float().mean()
        print(f'  ours, scan_layout={layout!r}: max |diff| {diff:.3e}, relative to max |logit| '
              f'{diff / expected.abs().max():.3e}, same top-1 {same_top1:.0%}')


def main():
    quiet_tools()  # no pkg_resources warnings, no torch build dump
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--upstream-root', required=True, type=Path,
                        help="the upstream checkout's classification/ folder")
    parser.add_argument('--arch', nargs='+', default=['s', 'b'], choices=sorted(ARCHS))
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    vmamba = import_upstream(args.upstream_root)
    F.gumbel_softmax = argmax_one_hot  # upstream calls it through torch.nn.functional
    for arch in args.arch:
        compare(vmamba, arch, args.batch, args.size, args.seed)


if __name__ == '__main__':
    main()
