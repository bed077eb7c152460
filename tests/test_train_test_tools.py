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


# A hook that makes every checkpoint about 64 MB, so that writing one takes long enough to
# kill the run in the middle of it.
PADDED_CHECKPOINT_HOOK = """
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class PaddedCheckpointHook(Hook):

    def before_save_checkpoint(self, runner, checkpoint):
        checkpoint['padding'] = torch.zeros(4 * 2**20)
"""


def partial_writes(folder: Path):
    return [p for p in folder.iterdir() if p.name.endswith('.partial')] if folder.is_dir() else []


def test_killed_run_resumes_at_the_right_iteration(setup, tmp_path):
    """SIGKILL a run while it writes a checkpoint: no truncated checkpoint is left, the stale
    temporary file goes on resume, and --resume continues from the last complete one."""
    _, config = setup
    (tmp_path / 'padded_checkpoint.py').write_text(PADDED_CHECKPOINT_HOOK)
    padded = tmp_path / 'padded.py'
    padded.write_text(f'''
_base_ = [{str(config)!r}]
custom_imports = dict(imports=['quadmamba_mm', 'padded_checkpoint'], allow_failed_imports=False)
custom_hooks = [dict(type='PaddedCheckpointHook')]
''')
    env = dict(PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path),
                                                        os.environ.get('PYTHONPATH')])))
    work = tmp_path / 'killed'
    args = [sys.executable, 'tools/train.py', str(padded), '--work-dir', str(work),
            '--cfg-options', 'train_cfg.max_epochs=20']
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**os.environ, **env})
    interrupted = []
    try:
        # Kill the run as soon as it is writing a checkpoint after the first one.
        deadline = time.time() + 300
        while not interrupted and time.time() < deadline and process.poll() is None:
            interrupted = [p for p in partial_writes(work)
                           if p.name.startswith('.epoch_') and not p.name.startswith('.epoch_1.')]
            time.sleep(0.002)
    finally:
        process.kill()
        process.wait()
    assert interrupted, 'the run was not caught writing a checkpoint'
    assert partial_writes(work), 'the kill left no temporary file: it did not hit the write'
    done = sorted(work.glob('epoch_*.pth'), key=lambda p: int(p.stem.split('_')[1]))
    assert done and all(loads(p) for p in done), 'a checkpoint was left truncated'
    assert loads(work / (work / 'last_checkpoint').read_text())
    last = int(done[-1].stem.split('_')[1])
    assert last < 20, 'the run finished before it was killed'
    # Files of a writer that is not atomic: a truncated newest checkpoint and an empty
    # pointer. Resuming skips them.
    (work / f'epoch_{last + 1}.pth').write_bytes(done[-1].read_bytes()[:1000])
    (work / 'last_checkpoint').write_text('')

    result = run(sys.executable, 'tools/train.py', padded, '--work-dir', work, '--resume',
                 '--cfg-options', f'train_cfg.max_epochs={last + 2}', env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert f'resuming from {done[-1]}' in log
    assert 'left by a checkpoint write that was interrupted' in log
    assert not partial_writes(work)
    checkpoint = torch.load(work / f'epoch_{last + 2}.pth', weights_only=True)
    assert checkpoint['meta']['epoch'] == last + 2
    assert checkpoint['meta']['iter'] == 4 * (last + 2)  # 4 iterations per epoch


class FakeRunner:
    """What a CheckpointHook uses of a Runner; saves a small checkpoint the Runner's way."""

    def __init__(self, work_dir: Path, name: str):
        from mmengine.logging import MessageHub, MMLogger
        self.work_dir, self.epoch, self.iter = str(work_dir), 0, 0
        self.message_hub = MessageHub.get_instance(name)
        self.logger = MMLogger.get_instance(name)

    def save_checkpoint(self, out_dir, filename, file_client_args=None, backend_args=None, **_):
        from mmengine.fileio import join_path
        from mmengine.runner.checkpoint import save_checkpoint
        save_checkpoint({'meta': dict(epoch=self.epoch), 'state_dict': {'w': torch.ones(2)}},
                        join_path(out_dir, filename, backend_args=backend_args),
                        backend_args=backend_args)


@pytest.mark.parametrize('scope', ['mmpretrain', 'mmdet', 'mmseg'])
def test_checkpoint_hook_writes_atomically(tmp_path, scope):
    """type='CheckpointHook' builds the atomic hook in every toolbox. A new checkpoint is
    complete before the one it replaces (max_keep_ckpts, save_best) is removed."""
    from mmengine.registry import HOOKS, init_default_scope

    from quadmamba_mm.engine import AtomicCheckpointHook
    init_default_scope(scope)
    hook = HOOKS.build(dict(type='CheckpointHook', interval=1, max_keep_ckpts=1,
                            save_best='acc', rule='greater'))
    assert isinstance(hook, AtomicCheckpointHook)
    runner = FakeRunner(tmp_path, f'atomic-{scope}')
    stale = tmp_path / '.epoch_1.pth.123-0badcafe.partial'
    stale.write_bytes(b'cut short')
    hook.before_train(runner)
    assert hook.writes_atomically and not stale.exists()

    backend, removed = hook.file_backend, []

    def remove(path):  # the checkpoints that replace it are complete by now
        assert loads(hook.last_ckpt) and loads(hook.best_ckpt_path)
        removed.append(Path(path).name)
        os.remove(path)

    backend.remove = remove
    for epoch, acc in enumerate([0.5, 0.7, 0.6]):
        runner.epoch = epoch
        hook._save_checkpoint(runner)
        runner.epoch = epoch + 1  # as after_val_epoch sees it
        hook._save_best_checkpoint(runner, {'acc': acc})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ['best_acc_epoch_2.pth', 'epoch_3.pth', 'last_checkpoint']
    assert removed == ['epoch_1.pth', 'best_acc_epoch_1.pth', 'epoch_2.pth']
    assert (tmp_path / 'last_checkpoint').read_text() == str(tmp_path / 'epoch_3.pth')
    assert all(loads(tmp_path / n) for n in names if n.endswith('.pth'))


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    from quadmamba_mm.engine import atomic_write
    path = tmp_path / 'epoch_1.pth'
    atomic_write(str(path), b'old')
    assert path.read_bytes() == b'old' and oct(path.stat().st_mode & 0o777) == oct(
        0o666 & ~current_umask())

    def fail(fd):
        raise OSError('disk full')

    monkeypatch.setattr(os, 'fsync', fail)
    with pytest.raises(OSError, match='disk full'):
        atomic_write(str(path), b'new content')
    assert path.read_bytes() == b'old' and sorted(tmp_path.iterdir()) == [path]


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
