"""The launchers find the project's Python by themselves: $PYTHON, else the active
virtualenv, else the project's .venv, else python3."""
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tiny import write_tiny_classifier_config

ROOT = Path(__file__).resolve().parents[1]
VENV_PYTHON = ROOT / '.venv' / 'bin' / 'python'


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return str(s.getsockname()[1])


def bare_env(**extra):
    """The environment of a new shell that has not activated any virtualenv: no PYTHON, no
    VIRTUAL_ENV, and no folder on PATH whose python is a virtualenv's (this one's included)."""
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHON', 'VIRTUAL_ENV')}
    venv_bins = {str(Path(sys.executable).parent), str(VENV_PYTHON.parent)}
    if sys.prefix != sys.base_prefix:
        venv_bins.add(str(Path(sys.prefix) / 'bin'))
    env['PATH'] = os.pathsep.join(d for d in env.get('PATH', '').split(os.pathsep)
                                  if d and d not in venv_bins
                                  and not (Path(d) / 'pyvenv.cfg').exists()
                                  and not (Path(d).parent / 'pyvenv.cfg').exists())
    env.update(extra)
    return env


def fake_python(folder: Path, name='python') -> Path:
    """A stand-in interpreter that records that it was chosen (and has "torch")."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / name
    script.write_text('#!/usr/bin/env bash\necho "$0 $*" >> "$LAUNCH_LOG"\n')
    script.chmod(0o755)
    return script


def copy_of_tools(project: Path) -> Path:
    """The launchers in a project folder of their own (no .venv beside them)."""
    shutil.copytree(ROOT / 'tools', project / 'tools',
                    ignore=shutil.ignore_patterns('*.py', '__pycache__'))
    return project / 'tools'


def launched(tools: Path, env) -> str:
    """The interpreter dist_train.sh runs torchrun with."""
    log = tools.parent / 'launch.log'
    log.unlink(missing_ok=True)
    result = subprocess.run(['bash', str(tools / 'dist_train.sh'), 'cfg.py', '2'],
                            env={**env, 'LAUNCH_LOG': str(log)}, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return log.read_text().split('\n')[-2].split()[0]  # the last call is the training run


def test_interpreter_order(tmp_path):
    tools = copy_of_tools(tmp_path / 'project')
    from_project = fake_python(tmp_path / 'project' / '.venv' / 'bin')
    from_env = fake_python(tmp_path / 'chosen')
    venv = tmp_path / 'venv'
    from_venv = fake_python(venv / 'bin')
    assert launched(tools, bare_env(PYTHON=str(from_env), VIRTUAL_ENV=str(venv))) == \
        str(from_env)
    assert launched(tools, bare_env(VIRTUAL_ENV=str(venv))) == str(from_venv)
    assert launched(tools, bare_env()) == str(from_project)


def test_without_any_environment_the_launcher_says_what_to_do(tmp_path):
    """A copy of the tools folder with no .venv beside it, and a python3 without torch."""
    tools = copy_of_tools(tmp_path / 'project')
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'python3').write_text('#!/usr/bin/env bash\nexit 1\n')  # no torch
    (bin_dir / 'python3').chmod(0o755)
    env = bare_env()
    env['PATH'] = f'{bin_dir}{os.pathsep}{env["PATH"]}'
    result = subprocess.run(['bash', str(tools / 'dist_train.sh'), 'cfg.py', '2'],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert 'expected a Python with torch, but python3 has none' in result.stderr
    assert 'source .venv/bin/activate' in result.stderr


@pytest.mark.skipif(not VENV_PYTHON.exists(), reason='needs the project environment .venv')
def test_dist_train_uses_the_project_venv(tmp_path):
    """Two CPU processes of a tiny classifier, launched as the README shows from a shell that
    has not activated the environment (test_interpreter_order checks which one is chosen)."""
    rng = np.random.default_rng(0)
    for label, base in (('dark', 40), ('bright', 200)):
        (tmp_path / 'data' / label).mkdir(parents=True)
        for i in range(2):
            image = np.clip(base + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(tmp_path / 'data' / label / f'{i}.png'), image)
    config = write_tiny_classifier_config(tmp_path / 'tiny_cls.py', tmp_path / 'data')
    env = bare_env(PORT=free_port())
    result = subprocess.run(['bash', 'tools/dist_train.sh', str(config), '2', '--work-dir',
                             str(tmp_path / 'work')], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert 'Distributed training: True' in log and 'GPU number: 2' in log
    assert (tmp_path / 'work' / 'epoch_1.pth').exists()
