"""torch.compile with no graph break (eval and training), torch.export, and exact ONNX export
checked with ONNX Runtime on a photograph-like image."""
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from quadmamba_kernels import cpu_scan
from quadmamba_mm.models import token_orders
from tiny import tiny_backbone

ROOT = Path(__file__).resolve().parents[1]


def tiny(**kwargs):
    return tiny_backbone(depths=(1, 1, 1, 1), out_indices=(0, 1, 2, 3), **kwargs)


def outputs_and_grads(model, x, training):
    torch.manual_seed(1)  # the same Gumbel noise for every run
    outs = model(x)
    loss = sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs)
    params = [p for p in model.parameters()]
    grads = torch.autograd.grad(loss, params, allow_unused=True) if training else ()
    return outs, grads


@pytest.mark.parametrize('training', [False, True])
def test_no_graph_break(training, monkeypatch):
    """Learned quadtree windows (Gumbel straight-through in training), shifts, cross scans;
    traced as in a new process: the C scan not loaded yet, no order table cached."""
    monkeypatch.setattr(cpu_scan, 'LIBRARY', cpu_scan._Library())
    monkeypatch.setattr(token_orders, '_TABLES', token_orders._Tables())
    torch._dynamo.reset()
    model = tiny().train(training)
    explained = torch._dynamo.explain(model)(torch.randn(2, 3, 67, 45))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    # The order tables were built for real, not traced into the graph (where they would be
    # built again on every call): the graph is the one traced with them already cached.
    torch._dynamo.reset()
    warm = torch._dynamo.explain(model)(torch.randn(2, 3, 67, 45))
    assert graph_ops(explained.graphs[0]) == graph_ops(warm.graphs[0])


def graph_ops(graph: torch.fx.GraphModule) -> Counter:
    return Counter(str(node.target) for module in graph.modules()
                   if isinstance(module, torch.fx.GraphModule)
                   for node in module.graph.nodes if node.op in ('call_function', 'call_method'))


@pytest.mark.parametrize('training', [False, True])
def test_fullgraph_compile_equals_eager(training):
    """aot_eager runs the same traced forward and backward graphs inductor would get."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = tiny().train(training)
    x = torch.randn(2, 3, 67, 45)
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    out_c, grads_c = outputs_and_grads(compiled, x, training)
    out_e, grads_e = outputs_and_grads(model, x, training)
    for a, b in zip(out_c, out_e):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_c, grads_e):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('training', [False, True])
def test_one_dynamic_graph_serves_every_size(training):
    """With sizes compiled as dynamic (dynamic=True, or torch.compile's own choice after a
    second size), the order tables are built in the graph: one graph, every size."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = tiny(quadtree_fixed_window=0).train(training)
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True, dynamic=True)
    for size in ((64, 64), (67, 45)):
        x = torch.randn(1, 3, *size)
        with torch.set_grad_enabled(training):
            for a, b in zip(compiled(x), model(x)):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_inductor_compiles_the_backbone():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = tiny().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        compiled = torch.compile(model, fullgraph=True)
        for a, b in zip(compiled(x), model(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_torch_export(monkeypatch):
    """Exported from a new process's state: the order tables become constants of the
    program, the same program as with them cached beforehand."""
    monkeypatch.setattr(token_orders, '_TABLES', token_orders._Tables())
    torch.manual_seed(0)
    model = tiny().eval()
    x = torch.randn(1, 3, 67, 45)
    program = torch.export.export(model, (x, ))
    ops = graph_ops(program.graph_module)
    assert 'quadmamba.selective_scan.default' in ops
    assert ops == graph_ops(torch.export.export(model, (x, )).graph_module)
    for a, b in zip(program.module()(x), model(x)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def photograph(path: Path, height: int = 240, width: int = 320, seed: int = 0) -> Path:
    """A photograph-like image: smooth lighting, discs of colour, blur and sensor noise."""
    import cv2
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([120 + 80 * np.sin(xx / 37 + c) * np.cos(yy / 53 - c) for c in range(3)],
                     -1)
    for _ in range(12):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        color = tuple(int(v) for v in rng.integers(0, 255, 3))
        cv2.circle(image, center, int(rng.integers(8, 60)), color, -1)
    image = cv2.GaussianBlur(image, (0, 0), 1.5) + rng.normal(0, 6, image.shape)
    cv2.imwrite(str(path), np.clip(image, 0, 255).astype(np.uint8))
    return path


@pytest.mark.slow
@pytest.mark.parametrize('config', ['configs/demo/quadmamba-li_shapes.py',
                                    'configs/demo/upernet_quadmamba-li_shapes-128x128.py'])
@pytest.mark.parametrize('shape', [(224, 224), (200, 232)])
def test_onnx_runtime_matches_pytorch(tmp_path, capsys, config, shape):
    """The classifier and the whole UperNet segmentor, at 224x224 and at a size that is not
    a multiple of 32: ONNX Runtime within 1e-4 of PyTorch (the tool exits 1 otherwise)."""
    sys.path.insert(0, str(ROOT / 'tools' / 'deployment'))
    import pytorch2onnx
    from mmengine.config import Config

    from quadmamba_mm.runtime.toolbox import build_model
    config_file = tmp_path / 'config.py'  # the demo config with one block per stage
    config_file.write_text(f"_base_ = ['{ROOT / config}']\nmodel = dict(backbone=dict(arch=dict("
                           "_delete_=True, embed_dims=48, depths=[1, 1, 1, 1], ssm_ratio=1.0)))\n")
    cfg = Config.fromfile(str(config_file))
    torch.manual_seed(0)
    checkpoint = tmp_path / 'model.pth'
    torch.save({'state_dict': build_model(cfg).state_dict()}, checkpoint)
    code = pytorch2onnx.main([
        str(config_file), str(checkpoint), '--out', str(tmp_path / 'model.onnx'), '--shape',
        *map(str, shape), '--image', str(photograph(tmp_path / 'photo.jpg')), '--repeat', '1'])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert 'OK: ONNX Runtime matches PyTorch' in printed
    import onnx
    model = onnx.load(str(tmp_path / 'model.onnx'))
    assert {node.domain for node in model.graph.node} <= {'', 'ai.onnx'}  # standard ops only
