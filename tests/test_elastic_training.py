"""Elastic training: dist_train.sh lets torchrun restart a run whose process died, and the
restarted run resumes by itself from the newest complete checkpoint."""
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config

import quadmamba_mm  # noqa: F401  (allow-lists the Runner's checkpoint types)
from quadmamba_mm.engine.elastic import STOP_RECORD, restart_count, resume_after_restart
from tiny import write_tiny_classifier_config

ROOT = Path(__file__).resolve().parents[1]

# Test-only: rank 1 kills itself with SIGKILL (as the OOM killer would) after the given
# iteration, on the first attempt only.
KILL_HOOK = '''
import os
import signal

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class KillRankOnFirstAttempt(Hook):

    def __init__(self, rank, iteration):
        self.rank, self.iteration = rank, iteration

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        first_attempt = os.environ.get('TORCHELASTIC_RESTART_COUNT') == '0'
        if first_attempt and runner.rank == self.rank and runner.iter + 1 == self.iteration:
            print(f'rank {runner.rank}: SIGKILL after iteration {self.iteration}', flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
'''


def free_port() -> str:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return str(s.getsockname()[1])


def loads(path) -> bool:
    try:
        torch.load(path, weights_only=True)
        return True
    except Exception:
        return False


@pytest.fixture
def tiny_run(tmp_path):
    """4 images in 2 classes and a tiny classifier: 2 processes x batch 1 = 2 iterations per
    epoch, 3 epochs, a checkpoint every epoch."""
    rng = np.random.default_rng(0)
    for label, base in (('dark', 40), ('bright', 200)):
        (tmp_path / 'data' / label).mkdir(parents=True)
        for i in range(2):
            image = np.clip(base + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(tmp_path / 'data' / label / f'{i}.png'), image)
    (tmp_path / 'kill_hook.py').write_text(KILL_HOOK)
    config = write_tiny_classifier_config(
        tmp_path / 'tiny_cls.py', tmp_path / 'data', max_epochs=3, extra='''
custom_imports = dict(imports=['quadmamba_mm', 'kill_hook'], allow_failed_imports=False)
custom_hooks = [dict(type='KillRankOnFirstAttempt', rank=1, iteration=3)]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1))
''')
    return tmp_path, config


def test_killed_worker_restarts_and_resumes(tiny_run):
    """Rank 1 is SIGKILLed in the middle of epoch 2: torchrun restarts both processes, they
    resume from epoch_1.pth and finish all 6 iterations; every checkpoint is complete."""
    tmp, config = tiny_run
    work = tmp / 'work'
    env = {**os.environ, 'PYTHON': sys.executable, 'PORT': free_port(),
           'PYTHONPATH': os.pathsep.join(filter(None, [str(tmp), os.environ.get('PYTHONPATH')]))}
    env.pop('MAX_RESTARTS', None)  # the default of dist_train.sh: 1
    result = subprocess.run(['bash', 'tools/dist_train.sh', str(config), '2', '--work-dir',
                             str(work)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert 'rank 1: SIGKILL after iteration 3' in log
    assert 'exitcode: -9' in log  # torchrun saw the killed process ...
    # ... and the restarted run said where it continues.
    assert f'restart 1 of this run: resuming from {work / "epoch_1.pth"}' in log
    names = sorted(p.name for p in work.glob('*.pth'))
    assert names == ['epoch_1.pth', 'epoch_2.pth', 'epoch_3.pth']
    assert all(loads(work / name) for name in names)
    assert not list(work.glob('.*.partial'))
    for epoch in (1, 2, 3):
        meta = torch.load(work / f'epoch_{epoch}.pth', weights_only=True)['meta']
        assert (meta['epoch'], meta['iter']) == (epoch, 2 * epoch)
    assert (work / 'last_checkpoint').read_text() == str(work / 'epoch_3.pth')


def fake_python(folder: Path) -> Path:
    """A stand-in interpreter that records its arguments (and "has torch")."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / 'python'
    script.write_text('#!/usr/bin/env bash\necho "$*" >> "$LAUNCH_LOG"\n')
    script.chmod(0o755)
    return script


def torchrun_args(tmp_path: Path, script: str = 'dist_train.sh', **env) -> list:
    """The arguments a launcher gives torchrun, with the environment ``env``."""
    tools = tmp_path / 'project' / 'tools'
    if not tools.exists():
        shutil.copytree(ROOT / 'tools', tools, ignore=shutil.ignore_patterns('*.py', '__pycache__'))
    log = tmp_path / 'launch.log'
    log.unlink(missing_ok=True)
    base = {k: v for k, v in os.environ.items()
            if k not in ('NNODES', 'NODE_RANK', 'MASTER_ADDR', 'PORT', 'MAX_RESTARTS', 'RDZV_ID',
                         'PET_LOCAL_ADDR', 'TORCH_DISABLE_SHARE_RDZV_TCP_STORE')}
    args = ['cfg.py', '2'] if script == 'dist_train.sh' else ['cfg.py', 'ck.pth', '2']
    result = subprocess.run(['bash', str(tools / script), *args],
                            env={**base, 'PYTHON': str(fake_python(tmp_path / 'bin')),
                                 'LAUNCH_LOG': str(log), **env},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return log.read_text().splitlines()[-1].split()


def test_launcher_restarts_and_rendezvous(tmp_path):
    """dist_train.sh: one restart by default, MAX_RESTARTS sets it; the c10d rendezvous at
    MASTER_ADDR:PORT, hosted by NODE_RANK 0; dist_test.sh does not restart."""
    args = torchrun_args(tmp_path)
    assert args[:2] == ['-m', 'torch.distributed.run']
    assert '--max-restarts=1' in args and '--nnodes=1' in args
    assert '--rdzv-backend=c10d' in args and '--rdzv-endpoint=127.0.0.1:29500' in args
    assert '--rdzv-conf=is_host=1' in args and '--local-addr=127.0.0.1' in args
    assert args[-4:] == [str(tmp_path / 'project/tools/train.py'), 'cfg.py', '--launcher',
                         'pytorch']
    assert '--max-restarts=3' in torchrun_args(tmp_path, MAX_RESTARTS='3')
    assert '--max-restarts=0' in torchrun_args(tmp_path, script='dist_test.sh')

    node1 = torchrun_args(tmp_path, NNODES='2', NODE_RANK='1', MASTER_ADDR='10.1.2.3',
                          PORT='29911')
    assert '--nnodes=2' in node1 and '--rdzv-endpoint=10.1.2.3:29911' in node1
    assert '--rdzv-conf=is_host=0' in node1 and not any(a.startswith('--local-addr')
                                                        for a in node1)
    node0 = torchrun_args(tmp_path, NNODES='2', NODE_RANK='0', MASTER_ADDR='10.1.2.3',
                          PORT='29911')
    assert '--rdzv-conf=is_host=1' in node0 and '--local-addr=10.1.2.3' in node0


def test_restarted_run_resumes_from_the_newest_complete_checkpoint(tmp_path, monkeypatch,
                                                                    capsys):
    for name in ('TORCHELASTIC_RESTART_COUNT', 'SLURM_RESTART_COUNT'):
        monkeypatch.delenv(name, raising=False)
    torch.save({'meta': {}, 'state_dict': {}}, tmp_path / 'epoch_1.pth')
    (tmp_path / 'epoch_2.pth').write_bytes(b'cut short')  # truncated: not complete
    cfg = Config(dict(work_dir=str(tmp_path), resume=False, load_from=None))

    assert restart_count() == 0 and resume_after_restart(cfg) is None
    assert cfg.resume is False and cfg.load_from is None

    monkeypatch.setenv('TORCHELASTIC_RESTART_COUNT', '2')
    assert resume_after_restart(cfg) == str(tmp_path / 'epoch_1.pth')
    assert cfg.resume is True and cfg.load_from == str(tmp_path / 'epoch_1.pth')
    assert 'restart 2 of this run: resuming from' in capsys.readouterr().out

    monkeypatch.setenv('TORCHELASTIC_RESTART_COUNT', '0')
    monkeypatch.setenv('SLURM_RESTART_COUNT', '1')  # a requeued Slurm job
    empty = Config(dict(work_dir=str(tmp_path / 'none'), resume=False, load_from=None))
    assert resume_after_restart(empty) is None and empty.resume is False
    assert 'no complete checkpoint' in capsys.readouterr().out

    monkeypatch.setenv('SLURM_RESTART_COUNT', 'x')
    with pytest.raises(SystemExit, match='SLURM_RESTART_COUNT=.x.: expected a whole number'):
        restart_count()


def test_a_deliberate_stop_is_not_restarted(tmp_path, monkeypatch):
    """After a guard stopped training (non-finite loss, unusable data), a restart exits with
    the reason instead of resuming into the same stop; a new start clears the record."""
    monkeypatch.delenv('SLURM_RESTART_COUNT', raising=False)
    (tmp_path / STOP_RECORD).write_text('Training stopped: non-finite loss at iteration 7.')
    cfg = Config(dict(work_dir=str(tmp_path), resume=False, load_from=None))
    monkeypatch.setenv('TORCHELASTIC_RESTART_COUNT', '1')
    with pytest.raises(SystemExit, match='not resuming.*non-finite loss at iteration 7'):
        resume_after_restart(cfg)
    monkeypatch.setenv('TORCHELASTIC_RESTART_COUNT', '0')
    resume_after_restart(cfg)
    assert not (tmp_path / STOP_RECORD).exists()
