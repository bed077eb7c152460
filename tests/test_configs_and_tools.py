"""Every shipped config builds and runs a forward; the analysis tools run."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper

from quadmamba_mm.runtime.toolbox import build_model, dummy_data_samples

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / 'configs').rglob('*.py') if '_base_' not in p.parts)


def run_tool(*args):
    result = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize('config', CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_builds_and_runs_a_forward(config):
    cfg = Config.fromfile(config)
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64), dummy_data_samples(cfg, 64, 64), mode='tensor')
    tensors = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    assert tensors and all(torch.isfinite(t).all() for t in tensors)

    # The optimizer the config builds: no weight decay on A_logs, Ds, norms and biases.
    optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    decay = {id(g['params'][0]): g['weight_decay'] for g in optimizer.param_groups}
    base_decay = cfg.optim_wrapper.optimizer.weight_decay
    for name, param in model.backbone.named_parameters():
        exempt = name.endswith(('.A_logs', '.Ds', '.bias')) or param.dim() == 1
        assert decay[id(param)] == (0. if exempt else base_decay), name


def test_get_flops_prints_the_paper_numbers():
    out = run_tool('tools/analysis_tools/get_flops.py', 'configs/quadmamba/quadmamba-s_8xb128_in1k.py')
    assert 'model     params: 31.25 M   FLOPs: 5.51 G' in out


def test_benchmark_tools_run():
    out = run_tool('tools/analysis_tools/benchmark.py', 'configs/quadmamba/quadmamba-li_8xb128_in1k.py',
                   '--shape', '64', '--repeat', '1', '--warmup', '0', '--train')
    assert 'quadmamba-li_8xb128_in1k.py' in out and 'train step' in out
    out = run_tool('-m', 'quadmamba_kernels.benchmark', '--shape', '1', '2', '4', '1', '64',
                   '--repeat', '1')
    assert 'reference' in out and 'chunked' in out
