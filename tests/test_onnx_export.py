"""ONNX export as users run it: torch's default exporter and the TorchScript one on the
backbone as it is (no switch by hand), standard operators only, ONNX Runtime within 1e-4 of
PyTorch; the exact scan form against the reference; the deployment tool with random weights."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from quadmamba_kernels import ScanOrders, selective_scan_projected
from quadmamba_kernels.segsum import (linear_recurrence, selective_scan_projected_segsum,
                                      softplus)
from quadmamba_mm.deploy import export_mode
from quadmamba_mm.deploy.onnx import (non_standard_ops, operator_times, ort_session, run_session,
                                      sample_image)
from quadmamba_mm.models import QuadMamba
from tiny import tiny_backbone

ROOT = Path(__file__).resolve().parents[1]


def image_input(height: int, width: int) -> torch.Tensor:
    """The tool's photograph-like image, resized and normalised as ImageNet models take it."""
    import cv2
    image = cv2.resize(sample_image(), (width, height)).astype(np.float32)[..., ::-1]
    image = (image - [123.675, 116.28, 103.53]) / [58.395, 57.12, 57.375]
    return torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32).copy())[None]


def assert_runtime_matches(path: Path, model: torch.nn.Module, x: torch.Tensor) -> None:
    assert non_standard_ops(path) == {}
    with torch.no_grad():
        expected = model(x)
    expected = expected if isinstance(expected, (tuple, list)) else (expected, )
    got = run_session(ort_session(path, threads=1), x)
    assert len(got) == len(expected)
    for e, g in zip(expected, got):
        assert g.shape == tuple(e.shape)
        assert np.abs(g - e.numpy()).max() <= 1e-4 * np.abs(e.numpy()).max()


def test_default_exporter_backbone(tmp_path):
    """``torch.onnx.export(model, (x,), f)`` with torch's defaults (the dynamo exporter):
    the scans take their exact standard-operator form by themselves."""
    torch.manual_seed(0)
    model = QuadMamba(arch='li', out_indices=(0, 1, 2, 3)).eval()
    x = image_input(64, 64)
    path = tmp_path / 'backbone.onnx'
    torch.onnx.export(model, (x, ), str(path))
    import onnx
    ops = {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}
    assert 'Scan' in ops  # the passes over the blocks' steps
    assert_runtime_matches(path, model, x)


def test_torchscript_exporter_backbone(tmp_path):
    """The TorchScript exporter (``dynamo=False``), at a size that is not a multiple of 32."""
    torch.manual_seed(0)
    model = tiny_backbone(depths=(1, 1, 1, 1), out_indices=(0, 1, 2, 3)).eval()
    x = image_input(67, 45)
    path = tmp_path / 'backbone.onnx'
    with torch.no_grad():
        torch.onnx.export(model, (x, ), str(path), dynamo=False)
    assert_runtime_matches(path, model, x)


def test_export_mode_for_other_tracers():
    """``torch.export`` keeps the scan's custom op unless ``export_mode()`` is on; the mode is
    off again after the block."""
    torch.manual_seed(0)
    model = tiny_backbone(depths=(1, 1, 1, 1)).eval()
    x = torch.randn(1, 3, 64, 64)

    def has_scan_op(program) -> bool:
        return any('quadmamba.selective_scan' in str(node.target)
                   for module in program.graph_module.modules()
                   if isinstance(module, torch.fx.GraphModule) for node in module.graph.nodes)

    with export_mode():
        program = torch.export.export(model, (x, ))
    assert not has_scan_op(program)
    for a, b in zip(program.module()(x), model(x)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert has_scan_op(torch.export.export(model, (x, )))


def sequential(dA: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    h, states = torch.zeros_like(b[..., 0]), []
    for t in range(b.shape[-1]):
        h = dA[..., t].exp() * h + b[..., t]
        states.append(h)
    return torch.stack(states, -1)


@pytest.mark.parametrize('length', [1, 7, 32, 33, 301, 3136])
def test_linear_recurrence_is_the_sequential_one(length):
    """One block, several blocks with and without padding steps, three levels."""
    g = torch.Generator().manual_seed(length)
    dA = -torch.rand(2, 3, length, generator=g) * 2
    b = torch.randn(2, 3, length, generator=g)
    torch.testing.assert_close(linear_recurrence(dA, b), sequential(dA, b), rtol=1e-5, atol=1e-6)
    # any dimension, and growing states (dA > 0: exp of exact sums, no clamping)
    grow = dA.abs() / 8
    torch.testing.assert_close(linear_recurrence(grow.transpose(1, 2), b.transpose(1, 2), 1),
                               sequential(grow, b).transpose(1, 2), rtol=1e-5, atol=1e-5)


class Recurrence(torch.nn.Module):
    def forward(self, dA: torch.Tensor) -> torch.Tensor:
        return linear_recurrence(dA, dA.cos())


def test_operator_times_count_scan_bodies(tmp_path):
    """The profile by operator type: a Scan's body counted as its operators, once per step,
    and the Scan with only its own time."""
    path = tmp_path / 'recurrence.onnx'
    dA = -torch.rand(1, 3, 64)
    torch.onnx.export(Recurrence().eval(), (dA, ), str(path))
    import onnx
    graph = onnx.load(str(path)).graph
    scans = [node for node in graph.node if node.op_type == 'Scan']
    assert scans
    top_level = sum(node.op_type == 'Mul' for node in graph.node)
    rows = {op: (ms, calls) for op, ms, calls in operator_times(path, dA.numpy(), 1, runs=3)}
    assert rows['Scan'][1] == len(scans)
    # 64 steps in blocks of 32: each of the passes over a block's steps multiplies per step
    assert rows['Mul'][1] >= top_level + 2 * 32
    assert all(ms >= 0 for ms, _ in rows.values())


def test_softplus_exact_and_finite():
    z = torch.cat([torch.linspace(-100, 100, 20001), torch.tensor([-1e30, 88.7, 89., 1e4, 1e30])])
    expected = torch.nn.functional.softplus(z.double(), threshold=1000).float()
    assert torch.isfinite(softplus(z)).all()
    torch.testing.assert_close(softplus(z), expected, rtol=2e-7, atol=1.2e-7)


@pytest.mark.parametrize('batch, K, dim, n_state, length, candidates', [
    (1, 2, 8, 1, 196, 4),  # quadtree-like: per-sample candidate orders
    (2, 4, 6, 1, 49, 1),  # cross-scan-like, a batch
    (3, 2, 5, 3, 37, 4),  # N > 1, padding steps
    (2, 4, 4, 2, 1024, 1),  # several levels
])
def test_projected_segsum_matches_reference(batch, K, dim, n_state, length, candidates):
    """The exported scan core against the sequential reference: a map with its orders, and
    K sequences (the released layout)."""
    g = torch.Generator().manual_seed(length)
    rank = 3
    x = torch.randn(batch, dim, length, generator=g)
    weights = dict(x_proj_weight=torch.randn(K, rank + 2 * n_state, dim, generator=g) / 2,
                   dt_proj_weight=torch.randn(K, dim, rank, generator=g) / 2,
                   dt_bias=torch.randn(K * dim, generator=g) - 1,
                   A=-torch.rand(K * dim, n_state, generator=g) * 2 - 0.1,
                   D=torch.randn(K * dim, generator=g))
    orders = ScanOrders(torch.stack([torch.stack([torch.randperm(length, generator=g)
                                                  for _ in range(K)])
                                     for _ in range(candidates)]))
    index = torch.randint(0, candidates, (batch, ), generator=g) if candidates > 1 else None
    for source, kwargs in ((x, dict(orders=orders, order_index=index)),
                           (torch.randn(batch, K, dim, length, generator=g), {})):
        expected = selective_scan_projected(source, *weights.values(), backend='reference',
                                            **kwargs)
        got = selective_scan_projected_segsum(source, *weights.values(), **kwargs)
        assert got.shape == expected.shape
        assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_projected_segsum_rejects_bad_input():
    with pytest.raises(ValueError, match=r'without orders, x is \(batch, K, D, L\)'):
        selective_scan_projected_segsum(torch.randn(1, 4, 9), torch.randn(2, 5, 4),
                                        torch.randn(2, 4, 3), torch.randn(8), -torch.ones(8, 1))


def run_tool(argv, capsys):
    sys.path.insert(0, str(ROOT / 'tools' / 'deployment'))
    import pytorch2onnx
    code = pytorch2onnx.main([str(a) for a in argv])
    return code, capsys.readouterr().out


def small_config(tmp_path: Path, base: str) -> Path:
    config = tmp_path / 'config.py'  # the demo config with one block per stage
    config.write_text(f"_base_ = ['{ROOT / base}']\nmodel = dict(backbone=dict(arch=dict("
                      "_delete_=True, embed_dims=48, depths=[1, 1, 1, 1], ssm_ratio=1.0)))\n")
    return config


def test_tool_with_random_weights(tmp_path, capsys):
    """``pytorch2onnx.py CONFIG none``: random weights, the generated image, the latency
    line naming the faster runtime; the segmentor's label map."""
    config = small_config(tmp_path, 'configs/demo/upernet_quadmamba-li_shapes-128x128.py')
    out = tmp_path / 'segmentor.onnx'
    code, printed = run_tool([config, 'none', '--out', out, '--shape', 64, 96, '--exporter',
                              'torchscript', '--seg-output', 'labels', '--repeat', 1], capsys)
    assert code == 0, printed
    assert 'generated image: labels (1, 64, 96), 0.00e+00 of the entries differ' in printed
    assert 'x faster' in printed and ('ONNX Runtime is' in printed or 'PyTorch eager is' in printed)
    assert 'OK: ONNX Runtime matches PyTorch' in printed
    assert non_standard_ops(out) == {}


def test_tool_keeps_third_party_notes_out(tmp_path):
    """Run as users run it, the tool prints no setuptools warning (``quiet_tools``) and no
    onnx_ir note for the Scans without scan outputs (``quiet_exporter``) on stderr."""
    import subprocess
    config = small_config(tmp_path, 'configs/demo/quadmamba-li_shapes.py')
    result = subprocess.run(
        [sys.executable, str(ROOT / 'tools' / 'deployment' / 'pytorch2onnx.py'), str(config),
         'none', '--out', str(tmp_path / 'm.onnx'), '--shape', '64', '64', '--repeat', '1',
         '--profile'],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'OK: ONNX Runtime matches PyTorch' in result.stdout
    assert "ONNX Runtime's time per run by operator" in result.stdout
    assert 'pkg_resources' not in result.stderr
    assert 'Attribute type is ambiguous' not in result.stderr


def test_tool_rejects_a_bad_checkpoint(tmp_path, capsys):
    config = small_config(tmp_path, 'configs/demo/quadmamba-li_shapes.py')
    missing = tmp_path / 'nothing.pth'
    with pytest.raises(SystemExit, match='nothing.pth'):
        run_tool([config, missing, '--out', tmp_path / 'm.onnx'], capsys)
