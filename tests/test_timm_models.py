"""The timm models: registration, timm's model contract, features_only, pretrained files."""
import pytest
import torch

timm = pytest.importorskip('timm')
import timm.optim  # noqa: E402

import quadmamba_mm  # noqa: E402,F401  (registers the timm models)
from quadmamba_mm.checkpoints.fit import CheckpointFitError  # noqa: E402
from quadmamba_mm.checkpoints.upstream import to_upstream_state_dict  # noqa: E402
from quadmamba_mm.models import QuadMamba  # noqa: E402
from quadmamba_mm.models.timm_models import QuadMambaTimm, checkpoint_filter_fn  # noqa: E402

SIZE = 64  # the smallest multiple of 32 at which every stage of li has a quadtree to scan
NAMES = ['quadmamba_li', 'quadmamba_t', 'quadmamba_s', 'quadmamba_b']


def create(name='quadmamba_li', seed=0, **kwargs):
    torch.manual_seed(seed)
    return timm.create_model(name, **kwargs).eval()


@pytest.fixture(scope='module')
def images():
    return torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope='module')
def li():
    return create()


def test_registered_on_import():
    assert set(timm.list_models('quadmamba_*')) == set(NAMES)
    assert timm.list_models('quadmamba_*', pretrained=True) == []  # no downloadable weights
    assert timm.list_pretrained('quadmamba_*') == []
    assert set(timm.models.get_arch_pretrained_cfgs('quadmamba_s')) == {
        'quadmamba_s.in1k', 'quadmamba_s.upstream_in1k'}


@pytest.mark.parametrize('name, params', list(zip(NAMES, [5.47, 10.32, 31.25, 50.69])))
def test_models_build_with_the_readme_parameter_counts(name, params):
    model = timm.create_model(name)  # 1000 classes
    assert isinstance(model, QuadMambaTimm) and isinstance(model.backbone, QuadMamba)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == params
    assert model.backbone.arch_settings[name.split('_')[1]]['embed_dims'] * 8 == \
        model.num_features
    # timm's pretrained adaptation finds the modules its config names
    cfg = model.pretrained_cfg
    assert isinstance(model.get_submodule(cfg['first_conv']), torch.nn.Conv2d)
    assert model.get_submodule(cfg['classifier']) is model.get_classifier()
    assert model.get_classifier().out_features == cfg['num_classes'] == 1000


def test_pretrained_cfg_and_data_config(li, images):
    cfg = li.pretrained_cfg
    assert cfg['input_size'] == (3, 224, 224) and cfg['pool_size'] == (7, 7)
    assert cfg['crop_pct'] == 0.875 and cfg['interpolation'] == 'bicubic'
    assert cfg['mean'] == timm.data.IMAGENET_DEFAULT_MEAN
    assert cfg['std'] == timm.data.IMAGENET_DEFAULT_STD
    data = timm.data.resolve_data_config({}, model=li)
    assert data['input_size'] == (3, 224, 224) and data['crop_pct'] == 0.875
    # pool_size is the final map of the input size: stride 32
    assert li.forward_features(images).shape[1:3] == (SIZE // 32, SIZE // 32)
    assert tuple(s // 32 for s in cfg['input_size'][1:]) == cfg['pool_size']


def test_forward_is_the_backbone_then_pooling_and_the_head(li, images):
    with torch.no_grad():
        logits = li(images)
        features = li.forward_features(images)
        pooled = li.forward_head(features, pre_logits=True)
        # the same backbone module as mmpretrain's classifier: its norm3 output, pooled
        backbone_map = li.backbone(images)[-1]
    assert logits.shape == (1, 1000) and features.shape == (1, 2, 2, 384)
    assert li.output_fmt == 'NHWC'
    torch.testing.assert_close(features.permute(0, 3, 1, 2), backbone_map)
    torch.testing.assert_close(pooled, backbone_map.mean((2, 3)))
    torch.testing.assert_close(logits, li.get_classifier()(pooled))
    torch.testing.assert_close(li.forward_head(features), logits)


def test_reset_classifier():
    model = create(num_classes=7)
    x = torch.randn(1, 3, SIZE, SIZE)
    assert model.num_classes == 7 and model(x).shape == (1, 7)
    model.reset_classifier(3)
    assert model.num_classes == 3 and model(x).shape == (1, 3)
    assert model.get_classifier().weight.std() < 0.05  # trunc-normal 0.02, as the backbone's
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), torch.nn.Identity)
    assert model(x).shape == (1, model.num_features)
    model.reset_classifier(0, '')  # no pooling either: the final map
    assert model(x).shape == (1, SIZE // 32, SIZE // 32, model.num_features)
    assert create(num_classes=0, global_pool='max')(x).shape == (1, 384)


def test_forward_intermediates(li, images):
    with torch.no_grad():
        final, maps = li.forward_intermediates(images)
        nhwc = li.forward_intermediates(images, output_fmt='NHWC', intermediates_only=True)
        normed = li.forward_intermediates(images, indices=[-1], norm=True,
                                          intermediates_only=True)
        last_two = li.forward_intermediates(images, indices=2, intermediates_only=True)
        early_final, early = li.forward_intermediates(images, indices=[0, 1], stop_early=True)
        stages = li.backbone.forward_stages(images)
    assert [tuple(m.shape) for m in maps] == [(1, 48, 16, 16), (1, 96, 8, 8), (1, 192, 4, 4),
                                              (1, 384, 2, 2)]
    assert all(m.is_contiguous() for m in maps)
    for m, n, s in zip(maps, nhwc, stages):
        assert torch.equal(m, n.permute(0, 3, 1, 2)) and torch.equal(n, s)
    torch.testing.assert_close(final, li.forward_features(images))
    # norm applies the final norm to the last stage only
    torch.testing.assert_close(normed[0], final.permute(0, 3, 1, 2))
    assert not torch.allclose(maps[-1], normed[0])
    assert [torch.equal(a, b) for a, b in zip(last_two, maps[2:])] == [True, True]
    # stop_early: the last stage run is returned as it is (it is not the model's last)
    assert len(early) == 2 and torch.equal(early_final, stages[1])
    with pytest.raises(ValueError, match='output_fmt'):
        li.forward_intermediates(images, output_fmt='NCL')
    with pytest.raises(AssertionError, match='out of range'):
        li.forward_intermediates(images, indices=[4])


def test_prune_intermediate_layers(images):
    full, pruned = create(), create()
    assert pruned.prune_intermediate_layers([0, 1]) == [0, 1]
    assert len(pruned.backbone.stages) == 2 and pruned.backbone.stages[1].downsample is None
    assert isinstance(pruned.norm, torch.nn.Identity)
    assert isinstance(pruned.get_classifier(), torch.nn.Identity)
    assert sum(p.numel() for p in pruned.parameters()) < 0.2 * sum(
        p.numel() for p in full.parameters())
    with torch.no_grad():
        expected = full.forward_intermediates(images, indices=[0, 1], intermediates_only=True)
        got = pruned.forward_intermediates(images, indices=[0, 1], intermediates_only=True)
    assert all(torch.equal(a, b) for a, b in zip(expected, got))


def test_features_only_through_timms_feature_getter(li, images):
    features = create(features_only=True, out_indices=(0, 2))
    assert type(features).__name__ == 'FeatureGetterNet'
    assert features.feature_info.channels() == [48, 192]
    assert features.feature_info.reduction() == [4, 16]
    assert features.feature_info.module_name() == ['backbone.stages.0', 'backbone.stages.2']
    # pruned after stage 2, and without the classifier
    assert len(features.model.backbone.stages) == 3 and features.model.num_classes == 0
    with torch.no_grad():
        maps = features(images)
        expected = li.forward_intermediates(images, indices=(0, 2), intermediates_only=True)
    assert [tuple(m.shape) for m in maps] == [(1, 48, 16, 16), (1, 192, 4, 4)]
    assert all(torch.equal(a, b) for a, b in zip(maps, expected))
    everything = create(features_only=True)
    assert everything.feature_info.channels() == [48, 96, 192, 384]
    assert len(everything(images)) == 4


def test_grad_checkpointing_gives_the_same_gradients(images):
    grads = []
    for checkpointing in (False, True):
        model = create().train()
        model.set_grad_checkpointing(checkpointing)
        assert all(stage.with_cp == checkpointing for stage in model.backbone.stages)
        torch.manual_seed(1)  # the same Gumbel noise for the quadtree window choices
        model(images).logsumexp(1).sum().backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_weight_decay_and_layer_groups(li):
    no_decay = li.no_weight_decay()
    blocks = sum(li.backbone.depths)
    assert len(no_decay) == 2 * blocks
    assert 'backbone.stages.2.blocks.1.op.A_logs' in no_decay
    assert {n.rsplit('.', 1)[1] for n in no_decay} == {'A_logs', 'Ds'}
    optimizer = timm.optim.create_optimizer_v2(li, 'adamw', lr=1e-3, weight_decay=0.05)
    decayed = {id(p) for g in optimizer.param_groups if g['weight_decay'] > 0
               for p in g['params']}
    params = dict(li.named_parameters())
    assert all(id(params[n]) not in decayed for n in no_decay)
    assert id(params['backbone.stages.0.blocks.0.op.x_proj_weight']) in decayed

    groups = list(timm.models.group_parameters(li, li.group_matcher()).values())
    # the stem, the 8 blocks (a downsample with its stage's last block, the final norm with
    # the last block), the head
    assert len(groups) == 1 + blocks + 1
    assert all(n.startswith('backbone.patch_embed.') for n in groups[0])
    assert all(n.startswith('backbone.stages.0.blocks.0.') for n in groups[1])
    assert all(n.startswith(('backbone.stages.0.blocks.1.', 'backbone.stages.0.downsample.'))
               for n in groups[2])
    assert 'backbone.stages.0.downsample.reduction.weight' in groups[2]
    assert groups[-2][-2:] == ['backbone.norm3.weight', 'backbone.norm3.bias']
    assert groups[-1] == ['head.fc.weight', 'head.fc.bias']
    coarse = list(timm.models.group_parameters(li, li.group_matcher(coarse=True)).values())
    assert len(coarse) == 1 + 4 + 1 and 'backbone.stages.0.downsample.norm.bias' in coarse[1]
    assert coarse[-2][-1] == 'backbone.norm3.bias'
    layer_decay = timm.optim.create_optimizer_v2(li, 'adamw', lr=1e-3, layer_decay=0.5)
    assert min(g['lr_scale'] for g in layer_decay.param_groups) == 0.5**(blocks + 1)


def mmpretrain_classifier(arch='li'):
    from mmengine.config import Config

    from quadmamba_mm.runtime.toolbox import build_model
    torch.manual_seed(3)
    cfg = Config.fromfile(f'configs/quadmamba/quadmamba-{arch}_8xb128_in1k.py')
    classifier = build_model(cfg)
    classifier.init_weights()
    return classifier.eval()


def test_pretrained_file_from_an_mmpretrain_checkpoint(tmp_path, images):
    classifier = mmpretrain_classifier()
    path = tmp_path / 'quadmamba-li_in1k.pth'
    torch.save({'meta': dict(epoch=300), 'state_dict': classifier.state_dict()}, path)

    model = create(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    for key, value in model.state_dict().items():
        assert torch.equal(value, classifier.state_dict()[key]), key
    with torch.no_grad():
        torch.testing.assert_close(model(images), classifier(images, mode='tensor'))

    # another class count: the backbone loads, the head starts fresh
    ten = create(pretrained=True, num_classes=10, pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(ten.backbone.norm3.weight, classifier.backbone.norm3.weight)
    assert ten.get_classifier().out_features == 10
    # features_only: the backbone's stages load, pruned as usual
    features = create(features_only=True, out_indices=(1, ), pretrained=True,
                      pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(features.model.backbone.stages[1].blocks[0].op.A_logs,
                               classifier.backbone.stages[1].blocks[0].op.A_logs)
    # one input channel: timm adapts the first conv (sums its input channels)
    gray = create(pretrained=True, in_chans=1, pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(gray.backbone.patch_embed.conv1.weight,
                               classifier.backbone.patch_embed.conv1.weight.sum(1, True))


class CfgNode(dict):
    """Stands in for the yacs config object upstream checkpoints pickle."""


def test_pretrained_file_from_upstream_weights(tmp_path, images):
    classifier = mmpretrain_classifier()
    upstream = to_upstream_state_dict(classifier.state_dict())
    path = tmp_path / 'ckpt_epoch_299.pth'
    torch.save({'model': upstream, 'epoch': 299}, path)

    model = create(pretrained=True, scan_layout='upstream',
                   pretrained_cfg_overlay=dict(file=str(path)))
    assert model.backbone.scan_layout == 'upstream'
    for key, value in model.state_dict().items():
        assert torch.equal(value, classifier.state_dict()[key]), key
    # the same weights in the default layout load too, with a warning that they are meant
    # for the released layout
    with pytest.warns(UserWarning, match='upstream_in1k'):
        create(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    # the filter also takes the state dict itself, given in memory
    assert checkpoint_filter_fn(upstream, model).keys() == model.state_dict().keys()
    in_memory = create(pretrained=True, scan_layout='upstream',
                       pretrained_cfg_overlay=dict(state_dict=upstream))
    assert torch.equal(in_memory.backbone.stages[0].blocks[1].op.predictor.layers[7].weight,
                       classifier.backbone.stages[0].blocks[1].op.predictor.layers[7].weight)
    # a file with pickled objects (the release pickles its yacs config) fails timm's
    # weights-only read: it is converted first (tools/model_converters/quadmamba2mm.py)
    torch.save({'model': upstream, 'config': CfgNode(MODEL=CfgNode(NAME='vssm'))}, path)
    with pytest.raises(RuntimeError, match='CfgNode'):
        create(pretrained=True, scan_layout='upstream',
               pretrained_cfg_overlay=dict(file=str(path)))


def test_upstream_tag_builds_the_released_layout():
    assert timm.create_model('quadmamba_s.upstream_in1k').backbone.scan_layout == 'upstream'


def test_pretrained_errors(tmp_path):
    with pytest.raises(RuntimeError, match='No pretrained weights exist for quadmamba_li'):
        create(pretrained=True)
    with pytest.raises(RuntimeError, match='Invalid pretrained tag'):
        create('quadmamba_li.upstream_in1k')
    with pytest.raises(ValueError, match='features_only=True with out_indices'):
        create(out_indices=(0, 1))
    # a checkpoint of another arch does not fit: named, not silently half loaded
    path = tmp_path / 'quadmamba-t.pth'
    torch.save({'state_dict': create('quadmamba_t').state_dict()}, path)
    with pytest.raises(CheckpointFitError, match='another shape'):
        create(pretrained=True, num_classes=10, pretrained_cfg_overlay=dict(file=str(path)))
