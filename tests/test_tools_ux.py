"""The tools as a user meets them: --amp and compiling on a CPU, --show-dir, quiet output."""
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch
from mmengine.config import Config

import quadmamba_mm  # noqa: F401  (registers the models and the optim wrappers)
from quadmamba_mm.datasets import make_all
from quadmamba_mm.engine.amp import CPUAmpOptimWrapper, enable_amp, mmengine_amp_available
from quadmamba_mm.runtime import quiet
from quadmamba_mm.runtime.compile import compile_modules, take_compile_cfg
from quadmamba_mm.runtime.show import upscale_factor, upscale_sample
from quadmamba_mm.runtime.toolbox import build_model
from tiny import tiny_backbone

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / 'configs' / 'demo'
TINY_ARCH = "dict(_delete_=True, embed_dims=16, depths=(1, 1, 1, 1), ssm_ratio=1.0)"
LOADER = ("dict(batch_size=2, num_workers=0, persistent_workers=False, "
          "dataset=dict(data_root={root!r}))")

# The demo configs with a 4-stage backbone of 16-128 channels and small heads, reading the
# generated data under ``root``.
TINY = {
    'mmpretrain': ('quadmamba-li_shapes.py', 'imagenet/', f'''
model = dict(backbone=dict(arch={TINY_ARCH}), head=dict(in_channels=128))
'''),
    'mmdet': ('mask-rcnn_quadmamba-li_fpn_shapes.py', 'coco/', f'''
model = dict(backbone=dict(arch={TINY_ARCH}), neck=dict(in_channels=[16, 32, 64, 128],
             out_channels=32), rpn_head=dict(in_channels=32, feat_channels=32),
             roi_head=dict(bbox_roi_extractor=dict(out_channels=32),
                           bbox_head=dict(in_channels=32, fc_out_channels=64),
                           mask_roi_extractor=dict(out_channels=32),
                           mask_head=dict(in_channels=32, conv_out_channels=32)))
val_evaluator = dict(ann_file={{root}} + 'annotations/instances_val.json')
test_evaluator = val_evaluator
'''),
    'mmseg': ('upernet_quadmamba-li_shapes-128x128.py', 'ade/', f'''
model = dict(backbone=dict(arch={TINY_ARCH}),
             decode_head=dict(in_channels=[16, 32, 64, 128], channels=32),
             auxiliary_head=dict(in_channels=64, channels=16))
train_cfg = dict(max_iters=2, val_interval=2)
'''),
}


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """The generated demo datasets: 4 training and 3 test images per task."""
    return make_all(tmp_path_factory.mktemp('ux_data'), num_train=4, num_val=3, size=128)


def tiny_config(folder: Path, data: Path, toolbox: str) -> Path:
    base, sub, body = TINY[toolbox]
    root = str(data / sub) + '/'
    config = folder / f'tiny_{toolbox}.py'
    config.write_text(f'''
_base_ = [{str(DEMO / base)!r}]
root = {root!r}
train_dataloader = {LOADER.format(root=root)}
val_dataloader = {LOADER.format(root=root)}
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=1)
default_hooks = dict(logger=dict(interval=1))
''' + body.replace('{root}', 'root'))
    return config


def run_tool(*args, env=None):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=900)


def assert_quiet(result):
    """No setuptools deprecation warning and no torch build dump in a tool's output."""
    output = result.stdout + result.stderr
    assert 'pkg_resources' not in output, output[:3000]
    assert 'PyTorch built with' not in output and 'Build settings' not in output, output[:3000]


# --- --amp ------------------------------------------------------------------------------

@pytest.mark.skipif(mmengine_amp_available(), reason='checks the CPU choice')
@pytest.mark.parametrize('scope, method', [('mmpretrain', None), ('mmdet', 'extract_feat')])
def test_enable_amp_on_a_cpu_is_bf16_autocast_without_a_loss_scale(scope, method):
    cfg = Config(dict(default_scope=scope, optim_wrapper=dict(
        type='AmpOptimWrapper', loss_scale=512., optimizer=dict(type='SGD', lr=0.1))))
    assert enable_amp(cfg) == 'CPUAmpOptimWrapper'
    assert cfg.optim_wrapper.dtype == 'bfloat16' and 'loss_scale' not in cfg.optim_wrapper
    assert cfg.optim_wrapper.get('autocast_method') == method


class TwoParts(torch.nn.Module):
    """A feature extractor and a head, like a detector's extract_feat and its heads."""

    def __init__(self):
        super().__init__()
        self.features, self.head = torch.nn.Linear(8, 8), torch.nn.Linear(8, 4)

    def extract_feat(self, x):
        return (self.features(x), )

    def forward(self, x):
        (features, ) = self.extract_feat(x)
        return features, self.head(features)


def test_cpu_amp_wrapper_can_autocast_one_method_only():
    model = TwoParts()
    wrapper = CPUAmpOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                                 autocast_method='extract_feat')
    with wrapper.optim_context(model):
        features, out = model(torch.randn(2, 8))
        assert not torch.is_autocast_enabled('cpu')
    # The features were computed in bf16 and handed on as fp32; the head ran in fp32.
    assert features.dtype == out.dtype == torch.float32
    assert torch.equal(features, features.bfloat16().float())
    assert 'extract_feat' not in model.__dict__  # the model is as it was after the context
    with pytest.raises(ValueError, match="no such method"):
        with CPUAmpOptimWrapper(optimizer=wrapper.optimizer,
                                autocast_method='decode').optim_context(model):
            pass


def test_cpu_amp_wrapper_autocasts_to_bf16_and_steps_in_fp32():
    model = torch.nn.Linear(8, 4)
    wrapper = CPUAmpOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    before = model.weight.detach().clone()
    with wrapper.optim_context(model):
        out = model(torch.randn(2, 8))
    assert out.dtype == torch.bfloat16
    wrapper.update_params(out.float().square().mean())
    assert model.weight.dtype == torch.float32 and not torch.equal(model.weight, before)
    # A loss scaler saved by mmengine's AmpOptimWrapper (a GPU run) does not stop a resume.
    state = wrapper.state_dict()
    wrapper.load_state_dict({**state, 'loss_scaler': {'scale': 65536.0}})
    with pytest.raises(ValueError, match='bfloat16 only'):
        CPUAmpOptimWrapper(dtype='float16', optimizer=torch.optim.SGD(model.parameters(), lr=1))


# --- compile ----------------------------------------------------------------------------

@pytest.mark.parametrize('value, flag, expected', [
    (None, False, None), (None, True, {}), (False, True, {}), (True, False, {}),
    (dict(backend='eager', modules=('backbone', 'neck')), False,
     dict(backend='eager', modules=('backbone', 'neck')))])
def test_compile_key_is_taken_from_the_runner(value, flag, expected):
    cfg = Config(dict(model=dict(type='X')) if value is None else dict(compile=value))
    assert take_compile_cfg(cfg, flag) == expected
    assert 'compile' not in cfg  # mmengine's Runner would compile train_step


def test_compile_key_of_a_wrong_type_is_refused():
    with pytest.raises(TypeError, match='bool or a dict'):
        take_compile_cfg(Config(dict(compile='yes')))


def test_compile_modules_compiles_the_backbone_in_place():
    model = torch.nn.Module()
    model.backbone, model.head = tiny_backbone(), torch.nn.Linear(128, 2)
    keys = list(model.state_dict())
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    assert compile_modules(model, dict(backend=counting_backend)) == ('backbone', )
    model.backbone(torch.randn(1, 3, 64, 64))
    assert len(graphs) == 1 and list(model.state_dict()) == keys  # checkpoint keys stay
    with pytest.raises(ValueError, match="no submodule 'decoder'"):
        compile_modules(model, dict(modules=('decoder', )))


@pytest.mark.parametrize('toolbox', ['mmpretrain', 'mmdet'])
def test_train_tool_with_amp_and_compile_on_a_cpu(tmp_path, data, toolbox):
    """--amp (bf16 autocast here) and mmengine's compile key, 2 iterations: mmengine alone
    stops with 'AmpOptimizerWrapper is only available training on gpu' and, compiling
    train_step, with an InternalTorchDynamoError inside the optimizer step; mmcv's CPU NMS
    stops a detector whose heads run in bf16."""
    config = tiny_config(tmp_path, data, toolbox)
    result = run_tool('tools/train.py', config, '--work-dir', tmp_path / 'work', '--amp',
                      '--cfg-options', 'compile.backend=eager', 'train_cfg.val_interval=2')
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert 'mixed precision: ' + ('AmpOptimWrapper' if mmengine_amp_available()
                                  else 'CPUAmpOptimWrapper (bfloat16') in log
    assert "torch.compile(backend='eager') on model.backbone" in log
    assert 'Epoch(train) [1][2/2]' in log and (tmp_path / 'work' / 'epoch_1.pth').exists()
    assert_quiet(result)


# --- --show-dir -------------------------------------------------------------------------

def test_upscale_factor_and_sample():
    from mmengine.structures import InstanceData, PixelData
    from mmseg.structures import SegDataSample
    assert upscale_factor(128, 128) == 4 and upscale_factor(100, 300) == 6
    assert upscale_factor(512, 900) == 1
    sample = SegDataSample(metainfo=dict(img_path='x.png'))
    sample.pred_sem_seg = PixelData(data=torch.tensor([[[0, 1], [2, 3]]]))
    instances = InstanceData(bboxes=torch.tensor([[0., 1., 2., 2.]]), labels=torch.tensor([1]))
    sample.set_field(instances, 'pred_instances')
    big = upscale_sample(sample, 3)
    assert big.pred_sem_seg.data.shape == (1, 6, 6) and big.pred_sem_seg.data[0, 5, 5] == 3
    assert big.pred_instances.bboxes.tolist() == [[0., 3., 6., 6.]]
    assert big.img_path == 'x.png' and sample.pred_sem_seg.data.shape == (1, 2, 2)


@pytest.mark.parametrize('toolbox', ['mmpretrain', 'mmdet', 'mmseg'])
def test_show_dir_draws_every_image_under_the_work_dir(tmp_path, data, toolbox):
    config = tiny_config(tmp_path, data, toolbox)
    checkpoint = tmp_path / 'model.pth'
    torch.save({'state_dict': build_model(Config.fromfile(config)).state_dict(), 'meta': {}},
               checkpoint)
    work = tmp_path / 'work'
    result = run_tool('tools/test.py', config, checkpoint, '--work-dir', work,
                      '--show-dir', 'vis')
    assert result.returncode == 0, result.stderr[-3000:]
    assert_quiet(result)
    (run_dir, ) = [p for p in work.iterdir() if p.is_dir()]  # work_dir/<timestamp>
    drawn = sorted(p for p in (run_dir / 'vis').rglob('*') if p.suffix in ('.png', '.jpg'))
    assert len(drawn) == 3, drawn  # every test image, not one in the hook's interval
    assert not (ROOT / 'vis').exists()
    for path in drawn:  # 128x128 inputs are drawn 4x larger so that labels can be read
        assert min(cv2.imread(str(path)).shape[:2]) >= 512, path


def test_verbose_puts_the_build_settings_back(monkeypatch):
    import mmengine.runner.runner as runner_module
    monkeypatch.setattr(runner_module, 'collect_env', runner_module.collect_env)
    quiet.hide_build_settings(verbose=False)
    assert 'left out' in runner_module.collect_env()[quiet.BUILD_SETTINGS_KEY]
    quiet.hide_build_settings(verbose=True)
    assert 'Build settings' in runner_module.collect_env()[quiet.BUILD_SETTINGS_KEY]
    monkeypatch.setenv(quiet.VERBOSE_ENV, '0')
    assert not quiet.verbose_requested()
    monkeypatch.setenv(quiet.VERBOSE_ENV, '1')
    assert quiet.verbose_requested()


def test_package_lookup_matches_mmengine_without_pkg_resources():
    from mmengine.utils import package_utils
    for package in ('mmdet', 'mmsegmentation', 'mmpretrain', 'mmcv', 'mmseg'):
        assert quiet.is_installed(package)
        assert quiet.get_installed_path(package) == package_utils.get_installed_path(package)
    assert not quiet.is_installed('no_such_package_qm')
    with pytest.raises(ModuleNotFoundError, match='no_such_package_qm'):
        quiet.get_installed_path('no_such_package_qm')
