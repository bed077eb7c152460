"""tools/train.py, test.py and dist_train.sh end to end on a tiny class-folder dataset."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import quadmamba_mm  # noqa: F401  (allow-lists the Runner's checkpoint types)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """8 images in 2 classes (dark / bright) and a small classification config."""
    tmp = tmp_path_factory.mktemp('tools')
    rng = np.random.default_rng(0)
    for label, base in (('dark', 40), ('bright', 200)):
        (tmp / 'data' / label).mkdir(parents=True)
        for i in range(4):
            image = np.clip(base + rng.normal(0, 20, (64, 64, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(tmp / 'data' / label / f'{i}.png'), image)
    pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(64, 64)),
                dict(type='PackInputs')]
    loader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                  dataset=dict(type='CustomDataset', data_root=str(tmp / 'data'), pipeline=pipeline,
                               _delete_=True),
                  sampler=dict(type='DefaultSampler', shuffle=False))
    config = tmp / 'tiny_cls.py'
    config.write_text(f'''
_base_ = [{str(ROOT / 'configs/quadmamba/quadmamba-li_8xb128_in1k.py')!r}]
data_preprocessor = dict(num_classes=2)
model = dict(
    backbone=dict(arch=dict(_delete_=True, embed_dims=16, depths=(1, 1, 1, 1), ssm_ratio=1.0),
                  drop_path_rate=0.),
    head=dict(num_classes=2, in_channels=128),
    train_cfg=None)
train_dataloader = {loader!r}
val_dataloader = {loader!r}
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator
train_cfg = dict(max_epochs=1)
param_scheduler = [dict(type='LinearLR', start_factor=0.5, by_epoch=True, begin=0, end=1)]
default_hooks = dict(logger=dict(interval=1))
''')
    return tmp, config


def run(*args, env=None):
    result = subprocess.run([*map(str, args)], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, **(env or {})}, timeout=600)
    return result


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return str(s.getsockname()[1])


def test_train_resume_and_test(setup):
    tmp, config = setup
    work = tmp / 'work'
    result = run(sys.executable, 'tools/train.py', config, '--work-dir', work)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (work / 'epoch_1.pth').exists()

    # Resume from the last checkpoint and train one more epoch: it continues at iteration 4.
    result = run(sys.executable, 'tools/train.py', config, '--work-dir', work, '--resume',
                 '--cfg-options', 'train_cfg.max_epochs=2')
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = torch.load(work / 'epoch_2.pth', weights_only=True)
    assert checkpoint['meta']['epoch'] == 2 and checkpoint['meta']['iter'] == 8
    assert 'resumed' in (result.stdout + result.stderr).lower()

    out = tmp / 'preds.pkl'
    result = run(sys.executable, 'tools/test.py', config, work / 'epoch_2.pth', '--work-dir',
                 tmp / 'test', '--out', out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'accuracy/top1' in result.stdout + result.stderr and out.exists()


def test_corrupt_or_missing_checkpoint_gives_a_clear_error(setup):
    tmp, config = setup
    corrupt = tmp / 'corrupt.pth'
    corrupt.write_bytes(b'not a checkpoint at all')
    result = run(sys.executable, 'tools/train.py', config, '--resume', corrupt)
    assert result.returncode != 0 and 'is not a torch checkpoint' in result.stderr
    result = run(sys.executable, 'tools/test.py', config, tmp / 'missing.pth')
    assert result.returncode != 0 and 'checkpoint not found' in result.stderr


def test_mismatched_checkpoint_is_refused_by_name(setup, tmp_path):
    _, config = setup
    other = tmp_path / 'other.pth'
    torch.save({'state_dict': {'backbone.unknown.weight': torch.zeros(1)}, 'meta': {}}, other)
    result = run(sys.executable, 'tools/train.py', config, '--work-dir', tmp_path / 'w',
                 '--resume', other)
    assert result.returncode != 0
    assert 'does not match the model' in result.stderr
    assert 'backbone.unknown.weight' in result.stderr


def test_killed_run_resumes_at_the_right_iteration(setup, tmp_path):
    """SIGKILL a run after its first checkpoint; --resume continues from the last complete one."""
    _, config = setup
    work = tmp_path / 'killed'
    args = [sys.executable, 'tools/train.py', str(config), '--work-dir', str(work),
            '--cfg-options', 'train_cfg.max_epochs=20']
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not loads(work / 'epoch_1.pth') and time.time() < deadline:
            time.sleep(0.2)
    finally:
        process.kill()
        process.wait()
    assert (work / 'epoch_1.pth').exists()
    done = sorted(work.glob('epoch_*.pth'), key=lambda p: int(p.stem.split('_')[1]))
    last = int(done[-1].stem.split('_')[1])
    assert last < 20, 'the run finished before it was killed'
    complete = [p for p in done if loads(p)]  # the kill may have cut the newest one short
    # The worst moment to be killed: while saving the next checkpoint (truncated file) and
    # after the pointer file was opened but before it was written (empty pointer).
    (work / f'epoch_{last + 1}.pth').write_bytes(complete[-1].read_bytes()[:1000])
    (work / 'last_checkpoint').write_text('')

    result = run(sys.executable, 'tools/train.py', config, '--work-dir', work, '--resume',
                 '--cfg-options', f'train_cfg.max_epochs={last + 2}')
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'resuming from {complete[-1]}' in result.stdout + result.stderr
    checkpoint = torch.load(work / f'epoch_{last + 2}.pth', weights_only=True)
    assert checkpoint['meta']['epoch'] == last + 2
    assert checkpoint['meta']['iter'] == 4 * (last + 2)  # 4 iterations per epoch


def loads(path) -> bool:
    try:
        torch.load(path, weights_only=True)
        return True
    except Exception:
        return False


def test_dist_train_two_processes_on_cpu(setup):
    tmp, config = setup
    work = tmp / 'dist'
    result = run('bash', 'tools/dist_train.sh', config, 2, '--work-dir', work,
                 env=dict(PYTHON=sys.executable, PORT=free_port()))
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    # mmengine's environment report ("GPU number" counts processes, whatever the device).
    assert 'Distributed training: True' in log and 'GPU number: 2' in log
    assert (work / 'epoch_1.pth').exists()

    result = run('bash', 'tools/dist_test.sh', config, work / 'epoch_1.pth', 2, '--work-dir',
                 tmp / 'dist_test', env=dict(PYTHON=sys.executable, PORT=free_port()))
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'accuracy/top1' in result.stdout + result.stderr


def test_slurm_scripts_build_the_srun_command(tmp_path):
    """No Slurm here: a stand-in srun records the command the scripts build."""
    (tmp_path / 'srun').write_text('#!/usr/bin/env bash\necho "$@" > "$SRUN_LOG"\n')
    (tmp_path / 'srun').chmod(0o755)
    env = dict(PATH=f'{tmp_path}:{os.environ["PATH"]}', SRUN_LOG=str(tmp_path / 'log'), GPUS='16')
    assert run('bash', 'tools/slurm_train.sh', 'gpu', 'job1', 'cfg.py', 'wd', '--amp',
               env=env).returncode == 0
    train = (tmp_path / 'log').read_text().split()
    assert train[:3] == ['-p', 'gpu', '--job-name=job1'] and '--ntasks=16' in train
    assert train[-4:] == ['cfg.py', '--work-dir=wd', '--launcher=slurm', '--amp']
    assert train[-5].endswith('tools/train.py')
    assert run('bash', 'tools/slurm_test.sh', 'gpu', 'job2', 'cfg.py', 'ck.pth', env=env
               ).returncode == 0
    test = (tmp_path / 'log').read_text().split()
    assert test[-4].endswith('tools/test.py') and test[-3:] == ['cfg.py', 'ck.pth',
                                                                '--launcher=slurm']
