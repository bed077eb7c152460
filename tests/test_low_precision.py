"""Models cast to fp16 / bf16 (``.half()``, ``.bfloat16()``, ``.to(dtype)``) run on the CPU in
eval and in training, close to the fp32 model; autocast keeps working.

Tolerance: the relative error (2-norm) of every output and of all gradients together,
against the fp32 model with the same weights, is at most 8 unit roundoffs of the low
precision (fp16: 8 * 2**-11 = 3.9e-3, bf16: 8 * 2**-8 = 3.1e-2). Weights, activations and
gradients are each rounded once per layer in the cast model; measured on QuadMamba-Li at
64x64 (4 seeds, both backends, 2026-12-01): 1.1-1.3e-3 (fp16) and 0.9-1.0e-2 (bf16), about
2.5 roundoffs, for the outputs and for the gradients. Autocast rounds the activations only
and stays within the same bounds.
"""
import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from quadmamba_mm.models.classifier import QuadMambaClassifier
from quadmamba_mm.models.selective_scan import SelectiveScan

SIZE = 64
TOLERANCE = {torch.float16: 8 * 2.**-11, torch.bfloat16: 8 * 2.**-8}
# fp16 training needs loss scaling, as torch.amp.GradScaler does: at initialisation the
# locality predictors' gradients are about 1e-8, below fp16's normal range (6e-5).
LOSS_SCALE = {torch.float32: 1., torch.float16: 2.**10, torch.bfloat16: 1.}
CASTS = {
    'half': (lambda m: m.half(), torch.float16),
    'bfloat16': (lambda m: m.bfloat16(), torch.bfloat16),
    'to(bfloat16)': (lambda m: m.to(torch.bfloat16), torch.bfloat16),
}


def relative_error(got, expected):
    return ((got.float() - expected).norm() / expected.norm()).item()


def run(model, images):
    """The logits and the backbone's four normed maps (the detection / segmentation
    outputs), from one forward."""
    maps = []
    handle = model.backbone.register_forward_hook(lambda m, args, out: maps.extend(out))
    try:
        logits = model(images)
    finally:
        handle.remove()
    return maps + [logits]


def train_step(model, images, target, loss_scale=1.):
    """The gradients of one step (unscaled, fp32 copies; None for unused parameters)."""
    torch.manual_seed(9)  # the same Gumbel noise for the window choices
    (F.cross_entropy(model(images).float(), target) * loss_scale).backward()
    return {name: None if p.grad is None else p.grad.float() / loss_scale
            for name, p in model.named_parameters()}


def flat(grads):
    return torch.cat([g.flatten() for g in grads.values() if g is not None])


@pytest.fixture(scope='module', params=['auto', 'chunked'])
def reference(request):
    """QuadMamba-Li classifier (quadtree and cross-scan blocks, the locality predictors, the
    four output norms, the head) in fp32, its eval outputs and its gradients."""
    torch.manual_seed(0)
    model = QuadMambaClassifier('li', scan_backend=request.param, out_indices=(0, 1, 2, 3),
                                drop_path_rate=0.)
    images = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([3])
    with torch.no_grad():
        outputs = run(model.eval(), images)
    grads = train_step(model.train(), images, target)
    model.zero_grad()
    return SimpleNamespace(model=model, images=images, target=target, outputs=outputs,
                           grads=grads)


@pytest.mark.parametrize('cast', list(CASTS))
def test_cast_model_eval(reference, cast):
    to_low, dtype = CASTS[cast]
    model = to_low(copy.deepcopy(reference.model)).eval()
    assert {p.dtype for p in model.parameters()} == {dtype}
    scans = []
    model.backbone.stages[0].blocks[0].op.selective_scan.register_forward_hook(
        lambda m, args, out: scans.append(out.dtype))
    with torch.no_grad():
        outputs = run(model, reference.images)  # an fp32 image: the stem takes it
    assert scans == [torch.float32]  # the scan computes and returns fp32 inside
    for got, expected in zip(outputs, reference.outputs):
        assert got.dtype == dtype and got.shape == expected.shape
        assert torch.isfinite(got).all()
        assert relative_error(got, expected) <= TOLERANCE[dtype]


@pytest.mark.parametrize('cast', list(CASTS))
def test_cast_model_train_step(reference, cast):
    to_low, dtype = CASTS[cast]
    model = to_low(copy.deepcopy(reference.model)).train()
    grads = train_step(model, reference.images.to(dtype), reference.target, LOSS_SCALE[dtype])
    for name, param in model.named_parameters():
        if reference.grads[name] is None:  # norm0-2: not in the classifier's loss
            assert param.grad is None, name
            continue
        assert param.grad.dtype == dtype and torch.isfinite(param.grad).all(), name
    assert relative_error(flat(grads), flat(reference.grads)) <= TOLERANCE[dtype]
    # the window choices learn: the locality predictors get gradients
    assert grads['backbone.stages.1.blocks.1.op.predictor.layers.1.weight'].abs().max() > 0
    before = [p.detach().clone() for p in model.parameters()]
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
def test_autocast_still_works(reference, dtype):
    model = copy.deepcopy(reference.model)
    with torch.autocast('cpu', dtype=dtype), torch.no_grad():
        outputs = run(model.eval(), reference.images)
    for got, expected in zip(outputs, reference.outputs):
        assert torch.isfinite(got).all()
        assert relative_error(got, expected) <= TOLERANCE[dtype]
    with torch.autocast('cpu', dtype=dtype):
        grads = train_step(model.train(), reference.images, reference.target)
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)
    assert relative_error(flat(grads), flat(reference.grads)) <= TOLERANCE[dtype]


@pytest.mark.parametrize('variant', [dict(scan_layout='upstream'),
                                     dict(quadtree_fixed_window=1)],
                         ids=['upstream-layout', 'fixed-window'])
def test_other_quadtree_paths_in_bf16(variant):
    """The released masked layout and the fixed-window ablation: their masks and one-hot
    choices meet the scan's fp32 output too."""
    torch.manual_seed(0)
    model = QuadMambaClassifier('li', drop_path_rate=0., **variant).eval()
    images = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(images)
        got = model.bfloat16()(images)
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    assert relative_error(got, expected) <= TOLERANCE[torch.bfloat16]
    model.train()
    F.cross_entropy(model(images).float(), torch.tensor([3])).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_scan_module_is_fp32_whatever_the_inputs():
    """The registered scan returns fp32 for low-precision inputs and weights."""
    scan = SelectiveScan('chunked')
    k, d, n, r, length = 2, 4, 1, 1, 16
    x = torch.randn(1, k, d, length, dtype=torch.bfloat16)
    y = scan(x, torch.randn(k, r + 2 * n, d, dtype=torch.bfloat16),
             torch.randn(k, d, r, dtype=torch.bfloat16), torch.zeros(k, d),
             -torch.ones(k * d, n), torch.ones(k * d))
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
