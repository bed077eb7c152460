"""Upstream checkpoints convert and load strictly; bad ones fail by name; none runs code."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from malicious import RunsCode
from mmengine.config import Config

from quadmamba_mm.models import QuadMamba
from quadmamba_mm.utils.toolbox import build_model
from quadmamba_mm.utils.upstream_checkpoint import (ConversionError, convert_upstream_state_dict,
                                                    load_untrusted_checkpoint)

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / 'data'


def upstream_state_dict(arch):
    """Random tensors under the released model's key names and shapes (tests/data)."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for line in (DATA / f'upstream_keys_{arch}.txt').read_text().splitlines():
        if line.startswith('#'):
            continue
        key, shape = re.match(r'(\S+) \(([\d, ]*)\)', line).groups()
        state[key] = torch.randn(*[int(s) for s in shape.split(',') if s.strip()], generator=g)
    return state


class CfgNode(dict):
    """Stands in for the yacs config object upstream checkpoints pickle."""


def convert(tmp_path, checkpoint, *extra):
    src, dst = tmp_path / 'upstream.pth', tmp_path / 'converted.pth'
    torch.save(checkpoint, src)
    result = subprocess.run([
        sys.executable, 'tools/model_converters/quadmamba2mm.py', str(src), str(dst), *extra
    ], capture_output=True, text=True, cwd=ROOT)
    return result, dst


@pytest.mark.parametrize('arch', ['s', 'b'])
def test_upstream_checkpoint_converts_and_loads_strictly(tmp_path, arch):
    upstream = upstream_state_dict(arch)
    checkpoint = dict(model=upstream, optimizer=dict(state={}, param_groups=[]), epoch=299,
                      config=CfgNode(MODEL=CfgNode(NAME='vssm_tiny')))
    result, dst = convert(tmp_path, checkpoint)
    assert result.returncode == 0, result.stderr
    assert f'QuadMamba arch {arch}' in result.stdout and 'CfgNode' in result.stdout
    converted = torch.load(dst, weights_only=True)['state_dict']

    classifier = build_model(
        Config.fromfile(ROOT / f'configs/quadmamba/quadmamba-{arch}_8xb128_in1k.py'))
    classifier.load_state_dict(converted, strict=True)
    ours = classifier.state_dict()
    pairs = {
        'layers.0.blocks.1.op.score_predictor.out_conv.4.weight':
        'backbone.stages.0.blocks.1.op.predictor.layers.7.weight',
        'layers.2.blocks.0.op.A_logs': 'backbone.stages.2.blocks.0.op.A_logs',
        'layers.1.downsample.1.weight': 'backbone.stages.1.downsample.reduction.weight',
        'patch_embed.7.bias': 'backbone.patch_embed.norm2.bias',
        'classifier.norm.weight': 'backbone.norm3.weight',
        'classifier.head.weight': 'head.fc.weight',
    }
    for upstream_key, our_key in pairs.items():
        assert torch.equal(ours[our_key], upstream[upstream_key]), upstream_key

    # Detection/segmentation: the backbone through init_cfg. Only the extra output norms
    # (norm0-2, which a classifier does not have) start fresh.
    backbone = QuadMamba(arch=arch, out_indices=(0, 1, 2, 3),
                         init_cfg=dict(type='Pretrained', checkpoint=str(dst), prefix='backbone.'))
    backbone.init_weights()
    for key, value in backbone.state_dict().items():
        if not re.match(r'norm[012]\.', key):
            assert torch.equal(value, converted[f'backbone.{key}']), key


def test_unknown_and_missing_keys_fail_by_name():
    upstream = upstream_state_dict('s')
    with pytest.raises(ConversionError, match='layers.9.blocks.0.op.extra'):
        convert_upstream_state_dict({**upstream, 'layers.9.blocks.0.op.extra': torch.zeros(1)})
    del upstream['layers.2.blocks.3.op.Ds']
    with pytest.raises(ConversionError, match=r'missing \[.backbone.stages.2.blocks.3.op.Ds.\]'):
        convert_upstream_state_dict(upstream)


def test_converter_reports_failure_and_missing_file(tmp_path):
    result, _ = convert(tmp_path, dict(model={'classifier.head.weight': torch.zeros(2, 2)}))
    assert result.returncode == 1 and 'error:' in result.stderr
    result = subprocess.run([sys.executable, 'tools/model_converters/quadmamba2mm.py',
                             str(tmp_path / 'nope.pth'), str(tmp_path / 'out.pth')],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1 and 'no checkpoint at' in result.stderr




def test_untrusted_checkpoint_runs_no_code(tmp_path):
    marker = tmp_path / 'code-ran'
    path = tmp_path / 'evil.pth'
    torch.save(dict(model={'w': torch.ones(1)}, config=RunsCode(marker)), path)
    loaded, replaced = load_untrusted_checkpoint(str(path))
    assert not marker.exists()
    assert torch.equal(loaded['model']['w'], torch.ones(1))
    assert replaced == ['posix.system']  # os.system, resolved to an inert placeholder
