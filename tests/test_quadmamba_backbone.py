"""The QuadMamba backbone: paper targets, shapes, errors and the mmpretrain/mmdet backbone API."""
import pytest
import torch

from quadmamba_mm.models import QuadMamba, SelectiveScan
from quadmamba_mm.models.classifier import QuadMambaClassifier
from quadmamba_mm.models.quadmamba import SHIFT_DIRECTIONS
from quadmamba_mm.analysis.complexity import count_params_and_flops

from tiny import tiny_backbone as tiny


# Paper Table 7: params (M) and FLOPs (G) at 224x224.
PAPER = {'li': (5.47, 0.82), 't': (10.32, 2.07), 's': (31.25, 5.51), 'b': (50.6, 9.30)}


@pytest.mark.parametrize('arch', sorted(PAPER))
def test_params_and_flops_match_the_paper(arch):
    params, flops = count_params_and_flops(QuadMambaClassifier(arch).eval(),
                                           (torch.randn(1, 3, 224, 224), ))
    paper_params, paper_flops = PAPER[arch]
    assert abs(params / 1e6 / paper_params - 1) < 0.02, params
    assert abs(flops / 1e9 / paper_flops - 1) < 0.03, flops


@pytest.mark.parametrize('size', [(64, 64), (67, 45), (32, 32), (100, 33)])
def test_any_size_from_32_gives_ceil_strided_maps(size):
    model = tiny(out_indices=(0, 1, 2, 3)).eval()
    outs = model(torch.randn(2, 3, *size))
    for i, out in enumerate(outs):
        stride = 2**(i + 2)
        assert out.shape == (2, model.dims[i], -(-size[0] // stride), -(-size[1] // stride))
        assert torch.isfinite(out).all()


@pytest.mark.parametrize('x, message', [
    (torch.randn(1, 3, 31, 64), 'below the minimum 32x32'),
    (torch.randn(1, 4, 64, 64), 'built for 3 input channels, got 4'),
    (torch.randn(3, 64, 64), 'expects a 4-D'),
])
def test_bad_input_raises_clear_errors(x, message):
    with pytest.raises(ValueError, match=message):
        tiny()(x)


@pytest.mark.parametrize('kwargs, message', [
    (dict(arch='xl'), "unknown QuadMamba arch 'xl'"),
    (dict(arch=dict(embed_dims=8, depths=(1, 1))), 'needs the keys'),
    (dict(arch='li', out_indices=(4, )), 'out_indices must index'),
    (dict(arch='li', scan_backend='cuda-magic'), "unknown scan backend 'cuda-magic'"),
    (dict(arch='li', scan_cfg=dict(type='SelectiveScan', backend='fast')),
     "unknown scan backend 'fast'"),
    (dict(arch='li', scan_cfg=dict(type='SelectiveScan'), scan_backend='chunked'), 'not both'),
    (dict(arch='li', frozen_stages=7), 'frozen_stages must be'),
])
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuadMamba(**kwargs)


def test_minimum_size_follows_the_quadtree_levels():
    assert tiny().min_input_size == 32
    assert tiny(quadtree_grid=4).min_input_size == 64
    assert tiny(quadtree_stages=(0, )).min_input_size == 32


def test_eval_is_deterministic_and_training_is_stochastic():
    torch.manual_seed(0)
    model = tiny()
    x = torch.randn(4, 3, 64, 64)
    model.eval()
    torch.testing.assert_close(model(x)[0], model(x)[0], rtol=0, atol=0)
    model.train()
    outs = [model(x)[0] for _ in range(4)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_predictors_receive_gradient():
    torch.manual_seed(0)
    model = tiny().train()
    model(torch.randn(2, 3, 64, 64))[0].square().mean().backward()
    predictors = [m for name, m in model.named_modules() if name.endswith('.predictor')]
    assert len(predictors) == sum(model.depths[:2])
    for predictor in predictors:
        grads = [p.grad for p in predictor.parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_block_layout_quadtree_and_shift():
    model = QuadMamba('s')
    blocks = [b for stage in model.stages for b in stage.blocks]
    scans = [b.op.scan for b in blocks]
    assert scans == ['quadtree'] * 4 + ['cross'] * 7
    # Odd blocks of quadtree stages shift; direction cycles with the global index // 2.
    assert [b.shift_direction for b in blocks[:4]] == [None, SHIFT_DIRECTIONS[0], None,
                                                       SHIFT_DIRECTIONS[1]]
    assert all(b.shift_direction is None for b in blocks[4:])
    assert model.stages[0].blocks[0].op.num_directions == 2
    assert model.stages[2].blocks[0].op.A_logs.shape == (4 * 768, 1)  # K=4, d_inner = 2 * 384
    assert model.stages[0].blocks[0].op.dt_rank == 6  # ceil(96 / 16)
    rates = [b.drop_path.drop_prob for b in QuadMamba('s', drop_path_rate=0.2).stages[3].blocks]
    assert rates[-1] == pytest.approx(0.2)


def test_ablation_switches():
    no_quadtree = tiny(quadtree_stages=())
    assert all(b.op.scan == 'cross' for s in no_quadtree.stages for b in s.blocks)
    no_shift = tiny(shift=False)
    assert all(b.shift_direction is None for s in no_shift.stages for b in s.blocks)
    stage1_only = tiny(quadtree_stages=(0, ))
    assert [b.op.scan for b in stage1_only.stages[1].blocks] == ['cross', 'cross']
    x = torch.randn(1, 3, 64, 64)
    shifted = tiny().eval()
    shifted.load_state_dict(no_shift.state_dict())
    assert not torch.allclose(no_shift.eval()(x)[0], shifted(x)[0])  # the shift matters

    fixed = tiny(quadtree_fixed_window=3)
    assert not any(name.endswith('predictor') for name, _ in fixed.named_modules())
    # Not .mean(): the mean over channels of a LayerNorm's output does not depend on its
    # input, so its gradient is rounding noise that may be exactly 0.
    fixed.train()(x)[0].square().mean().backward()
    grads = [p.grad for p in fixed.stages[0].parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert fixed.stages[0].blocks[0].op.x_proj_weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match='fixed_window must index the 4 coarse windows'):
        tiny(quadtree_fixed_window=4)

    split_once = tiny(quadtree_split=1).eval()
    split_once.load_state_dict(shifted.state_dict())
    out = split_once(x)[0]
    assert torch.isfinite(out).all() and not torch.allclose(out, shifted(x)[0])


def test_frozen_stages_freeze_params_and_keep_eval_mode():
    model = tiny(frozen_stages=2, out_indices=(0, 1, 2, 3))
    model.train()
    frozen = [model.patch_embed, model.stages[0], model.stages[1], model.norm0, model.norm1]
    for module in frozen:
        assert not module.training
        assert all(not p.requires_grad for p in module.parameters())
    assert model.stages[2].training and model.norm2.training
    assert all(p.requires_grad for p in model.stages[2].parameters())


def test_with_cp_gives_the_same_outputs_and_gradients():
    x = torch.randn(2, 3, 64, 64)
    results = []
    for with_cp in (False, True):
        torch.manual_seed(0)
        model = tiny(with_cp=with_cp, drop_path_rate=0.1).train()
        torch.manual_seed(1)
        inp = x.clone().requires_grad_()
        out = model(inp)[0]
        out.square().mean().backward()
        results.append((out.detach(), inp.grad))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_get_layer_depth():
    model = QuadMamba('s')  # depths 2-2-5-2: 11 blocks, 13 layers
    assert model.get_layer_depth('backbone.patch_embed.conv1.weight', 'backbone.') == (0, 13)
    assert model.get_layer_depth('backbone.stages.0.blocks.0.norm.weight', 'backbone.') == (1, 13)
    assert model.get_layer_depth('backbone.stages.2.blocks.4.op.A_logs', 'backbone.') == (9, 13)
    assert model.get_layer_depth('backbone.stages.1.downsample.norm.bias', 'backbone.') == (4, 13)
    assert model.get_layer_depth('backbone.norm3.weight', 'backbone.') == (12, 13)
    assert model.get_layer_depth('head.fc.weight', 'backbone.') == (12, 13)


def test_scan_backends_agree_in_the_model():
    torch.manual_seed(0)
    model = tiny(scan_backend='chunked').eval()
    x = torch.randn(1, 3, 40, 36)
    fast = model(x)[0]
    for module in model.modules():
        if isinstance(module, SelectiveScan):
            module.backend = 'reference'
    torch.testing.assert_close(model(x)[0], fast, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_autocast_has_no_nans(dtype):
    torch.manual_seed(0)
    model = tiny().train()
    x = torch.randn(2, 3, 64, 64) * 10
    with torch.autocast('cpu', dtype=dtype):
        out = model(x)[0]
    out.float().square().mean().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_init_cfg_pretrained_with_prefix(tmp_path):
    source = tiny()
    state = {f'backbone.{k}': v for k, v in source.state_dict().items()}
    state['head.fc.weight'] = torch.zeros(2, 2)
    path = tmp_path / 'classifier.pth'
    torch.save({'state_dict': state, 'meta': {}}, path)
    target = tiny(init_cfg=dict(type='Pretrained', checkpoint=str(path), prefix='backbone.'))
    target.init_weights()
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value, msg=key)
