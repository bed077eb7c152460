"""One QuadMamba class, reachable from the mmdet, mmseg and mmpretrain registries."""
import importlib
import subprocess
import sys
import textwrap

import pytest
from mmengine.registry import DefaultScope

from quadmamba_mm.models import QuadMamba

from tiny import tiny_arch

SCOPES = ['mmdet', 'mmseg', 'mmpretrain']


@pytest.mark.parametrize('scope, type_name', [(s, t) for s in SCOPES
                                               for t in ('QuadMamba', 'quadmamba_mm.QuadMamba')] +
                         [('mmengine', 'quadmamba_mm.QuadMamba')])
def test_builds_the_same_class_from_every_scope(scope, type_name):
    registry = importlib.import_module(f'{scope}.registry').MODELS
    with DefaultScope.overwrite_default_scope(scope):
        model = registry.build(dict(type=type_name,
                                    arch=tiny_arch(embed_dims=8, depths=(1, 1, 1, 1))))
    assert type(model) is QuadMamba


def test_custom_imports_in_a_config_registers_the_backbone(tmp_path):
    """What a user does: a config with custom_imports, built by each toolbox in a fresh process."""
    config = tmp_path / 'cfg.py'
    config.write_text(textwrap.dedent('''
        custom_imports = dict(imports=['quadmamba_mm'], allow_failed_imports=False)
        backbone = dict(type='QuadMamba', arch='li')
    '''))
    script = textwrap.dedent(f'''
        import importlib
        from mmengine import Config
        from mmengine.registry import DefaultScope
        cfg = Config.fromfile({str(config)!r})
        classes = set()
        for scope in {SCOPES!r}:
            registry = importlib.import_module(scope + '.registry').MODELS
            with DefaultScope.overwrite_default_scope(scope):
                classes.add(type(registry.build(cfg.backbone)))
        assert len(classes) == 1, classes
        print('ok', classes.pop().__module__)
    ''')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'ok quadmamba_mm.models.quadmamba' in result.stdout


@pytest.mark.parametrize('scope', SCOPES)
def test_selective_scan_is_a_registry_type_of_every_toolbox(scope):
    """``scan_cfg=dict(type='SelectiveScan', ...)`` resolves from mmdet, mmseg and mmpretrain
    configs, and the backbone's blocks use the scan module it names."""
    from quadmamba_mm.models import SelectiveScan
    registry = importlib.import_module(f'{scope}.registry').MODELS
    with DefaultScope.overwrite_default_scope(scope):
        scan = registry.build(dict(type='SelectiveScan', backend='chunked'))
        model = registry.build(dict(type='QuadMamba', arch='li',
                                    scan_cfg=dict(type='SelectiveScan', backend='reference')))
    assert type(scan) is SelectiveScan and scan.backend == 'chunked'
    scans = [m for m in model.modules() if isinstance(m, SelectiveScan)]
    assert len(scans) == sum(model.depths) and all(s.backend == 'reference' for s in scans)
