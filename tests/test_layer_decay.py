"""Layer-wise LR decay through the backbone's get_layer_depth, from a toolbox scope."""
import pytest
import torch
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope

from quadmamba_mm.models import QuadMamba

from tiny import tiny_arch


class Detector(torch.nn.Module):
    """Stands in for a toolbox model: a backbone plus a head outside it."""

    def __init__(self):
        super().__init__()
        self.backbone = QuadMamba(arch=tiny_arch(embed_dims=8, depths=(1, 2, 1, 1)))
        self.head = torch.nn.Linear(64, 2)


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg', 'mmpretrain'])
def test_lr_decays_with_depth_and_paramwise_rules_still_apply(scope):
    model = Detector()
    cfg = dict(
        optimizer=dict(type='AdamW', lr=1.0, weight_decay=0.05),
        constructor='LayerDecayOptimWrapperConstructor',
        paramwise_cfg=dict(layer_decay_rate=0.5, norm_decay_mult=0.,
                           custom_keys={'.A_logs': dict(decay_mult=0.)}))
    with DefaultScope.overwrite_default_scope(scope):
        optimizer = build_optim_wrapper(model, cfg).optimizer
    groups = {id(g['params'][0]): g for g in optimizer.param_groups}

    def group(name):
        return groups[id(dict(model.named_parameters())[name])]

    num_layers = sum(model.backbone.depths) + 2  # 7
    assert group('backbone.patch_embed.conv1.weight')['lr'] == 0.5**(num_layers - 1)
    # stage 1 block 1: depth 1 (stage 0) + 1 + 1 = 3; stage 1's downsample sits at its end, 3.
    assert group('backbone.stages.1.blocks.1.mlp.0.weight')['lr'] == 0.5**(num_layers - 1 - 3)
    assert group('backbone.stages.1.downsample.reduction.weight')['lr'] == 0.5**(num_layers - 1 - 3)
    assert group('head.weight')['lr'] == 1.0
    assert group('backbone.stages.0.blocks.0.op.A_logs')['weight_decay'] == 0.
    assert group('backbone.stages.0.blocks.0.norm.weight')['weight_decay'] == 0.
    assert group('backbone.stages.0.blocks.0.op.x_proj_weight')['weight_decay'] == 0.05


def test_layer_decay_alone_is_applied():
    """layer_decay_rate as the only paramwise key still takes effect."""
    model = Detector()
    cfg = dict(optimizer=dict(type='SGD', lr=1.0), constructor='LayerDecayOptimWrapperConstructor',
               paramwise_cfg=dict(layer_decay_rate=0.5))
    optimizer = build_optim_wrapper(model, cfg).optimizer
    lrs = {g['lr'] for g in optimizer.param_groups}
    assert min(lrs) == 0.5**6 and max(lrs) == 1.0


def test_a_model_without_layer_depths_is_refused():
    cfg = dict(optimizer=dict(type='SGD', lr=0.1), constructor='LayerDecayOptimWrapperConstructor',
               paramwise_cfg=dict(layer_decay_rate=0.9))
    with pytest.raises(TypeError, match='has no get_layer_depth'):
        build_optim_wrapper(torch.nn.Linear(2, 2), cfg)
