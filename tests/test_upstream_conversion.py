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
from quadmamba_mm.runtime.toolbox import build_model
from quadmamba_mm.checkpoints.upstream import (ConversionError, convert_upstream_state_dict,
                                                    load_untrusted_checkpoint,
                                                    to_upstream_state_dict)

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


def test_inverse_mapping_gives_back_the_released_keys():
    upstream = upstream_state_dict('s')
    converted, kwargs = convert_upstream_state_dict(upstream)
    assert kwargs['arch'] == dict(embed_dims=96, depths=(2, 2, 5, 2), ssm_ratio=2.0)
    back = to_upstream_state_dict(converted)
    assert sorted(back) == sorted(upstream)
    assert all(back[k] is upstream[k] for k in upstream)
    with pytest.raises(ConversionError, match=r'no upstream name .*backbone\.norm0\.weight'):
        to_upstream_state_dict({**converted, 'backbone.norm0.weight': torch.ones(96)})


def test_checkpoint_of_another_arch_converts_and_prints_its_config(tmp_path):
    """A checkpoint with the released block structure but none of the presets (as the
    released QuadMamba-v1 would be if it follows that structure): the arch is read from the
    shapes, printed as config settings and stored in the meta."""
    arch = dict(embed_dims=32, depths=(1, 2, 3, 1), ssm_ratio=1.5)
    torch.manual_seed(0)
    ours = QuadMamba(arch=arch, out_indices=(3, ))
    state = {f'backbone.{k}': v for k, v in ours.state_dict().items()}
    state.update({'head.fc.weight': torch.randn(10, 256), 'head.fc.bias': torch.randn(10)})
    result, dst = convert(tmp_path, dict(model=to_upstream_state_dict(state), epoch=299))
    assert result.returncode == 0, result.stderr
    expected = ("backbone=dict(arch=dict(embed_dims=32, depths=(1, 2, 3, 1), ssm_ratio=1.5), "
                "scan_layout='upstream')")
    assert expected in result.stdout and 'none of the presets li/t/s/b' in result.stdout
    converted = torch.load(dst, weights_only=True)
    assert converted['meta']['arch'] == arch
    assert converted['meta']['backbone'] == dict(arch=arch, d_state=1, dt_rank='auto',
                                                 mlp_ratio=4.0, quadtree_stages=(0, 1),
                                                 scan_layout='upstream')
    # The printed settings build a backbone that takes the weights strictly.
    backbone = QuadMamba(**converted['meta']['backbone'], out_indices=(3, ))
    backbone.load_state_dict({k[len('backbone.'):]: v for k, v in converted['state_dict'].items()
                              if k.startswith('backbone.')}, strict=True)
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, state[f'backbone.{key}']), key


def test_other_settings_are_inferred_and_printed(tmp_path):
    """Non-default d_state, dt_rank, mlp_ratio and quadtree stages show in the printed
    settings; a z-gated in_proj (the 2024 code's SS2D) fails by name."""
    arch = dict(embed_dims=32, depths=(1, 1, 1, 1), ssm_ratio=1.0)
    ours = QuadMamba(arch=arch, out_indices=(3, ), d_state=2, dt_rank=3, mlp_ratio=2.0,
                     quadtree_stages=(0, ))
    state = {f'backbone.{k}': v for k, v in ours.state_dict().items()}
    state.update({'head.fc.weight': torch.zeros(4, 256), 'head.fc.bias': torch.zeros(4)})
    converted, kwargs = convert_upstream_state_dict(to_upstream_state_dict(state))
    assert kwargs == dict(arch=arch, d_state=2, dt_rank=3, mlp_ratio=2.0, quadtree_stages=(0, ))
    from quadmamba_mm.checkpoints.upstream import arch_name, backbone_config_text
    assert arch_name(kwargs) is None
    assert backbone_config_text(kwargs) == (
        'backbone=dict(arch=dict(embed_dims=32, depths=(1, 1, 1, 1), ssm_ratio=1.0), '
        "d_state=2, dt_rank=3, mlp_ratio=2.0, quadtree_stages=(0,), scan_layout='upstream')")

    gated = to_upstream_state_dict(state)
    gated['layers.0.blocks.0.op.in_proj.weight'] = torch.zeros(64, 32)
    with pytest.raises(ConversionError, match=r'wrong shapes .*stages.0.blocks.0.op.x_proj_weight'):
        convert_upstream_state_dict(gated)


@pytest.mark.parametrize('config, toolbox', [
    ('configs/mask_rcnn/mask-rcnn_quadmamba-s-upstream_fpn_1x_coco.py', 'mmdet'),
    ('configs/upernet/upernet_quadmamba-s-upstream_8xb2-160k_ade20k-512x512.py', 'mmseg'),
])
def test_upstream_weight_configs(config, toolbox):
    """The configs for the released weights: arch S, the released scan layout, the converted
    checkpoint, and inputs padded to multiples of 32 (which that layout needs)."""
    cfg = Config.fromfile(ROOT / config)
    backbone_cfg = cfg.model.backbone
    assert backbone_cfg.arch == 's' and backbone_cfg.scan_layout == 'upstream'
    assert backbone_cfg.init_cfg == dict(type='Pretrained', prefix='backbone.',
                                         checkpoint='checkpoints/quadmamba-s-upstream_in1k.pth')
    kwargs = {k: v for k, v in backbone_cfg.items() if k not in ('type', 'init_cfg')}
    backbone = QuadMamba(**kwargs)
    assert backbone.scan_layout == 'upstream'
    assert all(block.op.scan_layout == 'upstream'
               for i in backbone.quadtree_stages for block in backbone.stages[i].blocks)

    # The data preprocessor pads test images (short side 512 or 800, aspect ratio kept) to
    # sides divisible by 32, and training crops are 512x512 (segmentation).
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope(toolbox)
    preprocessor = MODELS.build(cfg.model.data_preprocessor)
    image = torch.randint(0, 255, (3, 512, 683), dtype=torch.uint8)
    if toolbox == 'mmdet':
        from mmdet.structures import DetDataSample
        samples = [DetDataSample(metainfo=dict(img_shape=(512, 683)))]
    else:
        from mmseg.structures import SegDataSample
        samples = [SegDataSample(metainfo=dict(img_shape=(512, 683)))]
        assert tuple(cfg.model.data_preprocessor.size) == (512, 512)
    inputs = preprocessor(dict(inputs=[image], data_samples=samples), training=False)['inputs']
    assert inputs.shape[-2:] == (512, 704)


def test_untrusted_checkpoint_runs_no_code(tmp_path):
    marker = tmp_path / 'code-ran'
    path = tmp_path / 'evil.pth'
    torch.save(dict(model={'w': torch.ones(1)}, config=RunsCode(marker)), path)
    loaded, replaced = load_untrusted_checkpoint(str(path))
    assert not marker.exists()
    assert torch.equal(loaded['model']['w'], torch.ones(1))
    assert replaced == ['posix.system']  # os.system, resolved to an inert placeholder
