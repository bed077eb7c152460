"""Checkpoints load with weights_only on: Runner resume works, a crafted pickle is refused.
Saving: a full disk leaves the previous checkpoint intact and says where and how much space
is left; weights with NaN or inf are never saved."""
import errno
import os
import os.path as osp
import pickle
import re

import pytest
import torch
from malicious import RunsCode
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner, load_checkpoint
from torch.utils.data import Dataset

import quadmamba_mm  # noqa: F401  (allow-lists the Runner's checkpoint types)
from quadmamba_mm.checkpoints.atomic import NonFiniteWeightsError
from quadmamba_mm.checkpoints.safe_load import runner_checkpoint_types




def test_crafted_checkpoint_is_refused_and_runs_no_code(tmp_path):
    marker = tmp_path / 'code-ran'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'meta': RunsCode(marker)}, path)
    with pytest.raises(pickle.UnpicklingError, match='system'):
        load_checkpoint(torch.nn.Linear(1, 1), str(path))
    assert not marker.exists()


class GetattrEscape:
    """getattr(HistoryBuffer.min, '__globals__'): the first step from an allowed object
    towards eval/os.system. The getattr stand-in must refuse it."""

    def __reduce__(self):
        from mmengine.logging import HistoryBuffer
        return (getattr, (HistoryBuffer.min, '__globals__'))


def test_getattr_is_restricted_to_history_buffer_statistics(tmp_path):
    path = tmp_path / 'escape.pth'
    torch.save({'meta': GetattrEscape()}, path)
    with pytest.raises(pickle.UnpicklingError, match='refusing getattr'):
        torch.load(path, weights_only=True)


class ToyModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, inputs, labels=None, mode='loss'):
        out = self.linear(torch.stack(inputs))
        if mode == 'loss':
            return dict(loss=(out.squeeze(1) - torch.stack(labels)).square().mean())
        return out


class ToyData(Dataset):

    def __len__(self):
        return 16

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return dict(inputs=torch.randn(2, generator=g), labels=torch.tensor(float(i % 2)))


def make_runner(work_dir, max_iters, **kwargs):
    return Runner(
        model=ToyModel(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=ToyData(), sampler=dict(type='DefaultSampler', shuffle=True), batch_size=4,
            num_workers=0),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        param_scheduler=dict(type='MultiStepLR', milestones=[2], by_epoch=False),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=3, by_epoch=False),
                           logger=dict(type='LoggerHook', interval=1)),
        default_scope='mmengine',
        **kwargs)


def test_runner_checkpoint_resumes_with_weights_only(tmp_path):
    make_runner(tmp_path, max_iters=3).train()
    checkpoint = tmp_path / 'iter_3.pth'
    assert checkpoint.exists()
    # The Runner's checkpoint does need more than tensors: exactly what we allow-list.
    ours = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(checkpoint)))
        with pytest.raises(pickle.UnpicklingError, match='Unsupported global'):
            torch.load(checkpoint, weights_only=True)
    finally:
        torch.serialization.add_safe_globals(ours)
    assert unsafe, 'expected the checkpoint to hold non-tensor types'
    allowed = {
        t[1] if isinstance(t, tuple) else f'{t.__module__}.{t.__qualname__}'
        for t in runner_checkpoint_types()
    }
    assert unsafe <= allowed, unsafe - allowed

    runner = make_runner(tmp_path, max_iters=5, resume=True, load_from=str(checkpoint))
    runner.train()
    assert runner.iter == 5
    assert (tmp_path / 'iter_5.pth').exists()


class FullDisk:
    """A file that takes ``room`` bytes and then fails with ENOSPC, as a full disk does."""

    def __init__(self, file, room: int, fail_at: str):
        self.file, self.room, self.fail_at = file, room, fail_at

    def _full(self):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def write(self, data):
        if self.fail_at == 'write' and len(data) > self.room:
            self.file.write(data[:self.room])
            self._full()
        return self.file.write(data)

    def flush(self):
        if self.fail_at == 'flush':
            self._full()
        self.file.flush()

    def fileno(self):
        return self.file.fileno()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def fill_disk_for(monkeypatch, name: str, fail_at: str = 'write', room: int = 1000):
    """Make writes of the temporary file of ``name`` fail the way a full disk does: at
    ``write`` (after ``room`` bytes), ``flush`` or ``fsync``."""
    real_fdopen, real_fsync = os.fdopen, os.fsync

    def target(fd):
        return osp.basename(os.readlink(f'/proc/self/fd/{fd}')).startswith(f'.{name}.')

    def fdopen(fd, *args, **kwargs):
        file = real_fdopen(fd, *args, **kwargs)
        return FullDisk(file, room, fail_at) if target(fd) else file

    def fsync(fd):
        if fail_at == 'fsync' and target(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, 'fdopen', fdopen)
    monkeypatch.setattr(os, 'fsync', fsync)


@pytest.mark.skipif(not osp.isdir('/proc/self/fd'), reason='needs /proc/self/fd (Linux)')
@pytest.mark.parametrize('fail_at', ['write', 'flush', 'fsync'])
def test_full_disk_keeps_the_previous_file_and_says_where_and_how_much(tmp_path, monkeypatch,
                                                                       fail_at):
    from quadmamba_mm.engine import atomic_write
    path = tmp_path / 'epoch_1.pth'
    atomic_write(str(path), b'old')
    fill_disk_for(monkeypatch, path.name, fail_at)
    with pytest.raises(OSError) as error:
        atomic_write(str(path), b'x' * 5000)
    assert error.value.errno == errno.ENOSPC
    assert re.search(rf'could not write {re.escape(str(path))} \(4\.9 KiB; [\d.]+ (B|KiB|MiB|'
                     rf'GiB|TiB) free in {re.escape(str(tmp_path))}\): No space left on device',
                     str(error.value)), str(error.value)
    assert path.read_bytes() == b'old' and sorted(tmp_path.iterdir()) == [path]


@pytest.mark.skipif(not osp.isdir('/proc/self/fd'), reason='needs /proc/self/fd (Linux)')
def test_full_disk_during_a_runner_save_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    make_runner(tmp_path, max_iters=3).train()
    previous = torch.load(tmp_path / 'iter_3.pth', weights_only=True)
    fill_disk_for(monkeypatch, 'iter_6.pth')
    runner = make_runner(tmp_path, max_iters=6, resume=True,
                         load_from=str(tmp_path / 'iter_3.pth'))
    saved = re.escape(str(tmp_path / 'iter_6.pth'))
    with pytest.raises(OSError, match=rf'could not write {saved}'
                       r' \([\d.]+ \w+; [\d.]+ \w+ free in '):
        runner.train()
    monkeypatch.undo()
    assert not (tmp_path / 'iter_6.pth').exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith('.partial')]
    kept = torch.load(tmp_path / 'iter_3.pth', weights_only=True)
    assert kept['meta']['iter'] == 3
    assert all(torch.equal(v, previous['state_dict'][k]) for k, v in kept['state_dict'].items())
    assert (tmp_path / 'last_checkpoint').read_text() == str(tmp_path / 'iter_3.pth')


class BreakWeights(Hook):
    """Puts a NaN and an inf into the weights after iteration 6, before the checkpoint hook
    (lower priority) saves them."""

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter == 5:  # 0-based until after this hook
            with torch.no_grad():
                runner.model.linear.weight[0, 0] = float('nan')
                runner.model.linear.bias[0] = float('inf')


def test_non_finite_weights_are_never_saved(tmp_path):
    runner = make_runner(tmp_path, max_iters=6, custom_hooks=[BreakWeights()])
    with pytest.raises(NonFiniteWeightsError) as error:
        runner.train()
    message = str(error.value)
    assert message.startswith('not saving the checkpoint of epoch 0, iteration 6: 2 tensors '
                              "hold non-finite values: state_dict['linear.weight'] (1 NaN, 0 inf "
                              "of 2), state_dict['linear.bias'] (0 NaN, 1 inf of 1)"), message
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['iter_3.pth']
    assert not [p for p in tmp_path.iterdir() if p.name.endswith('.partial')]
    assert (tmp_path / 'last_checkpoint').read_text() == str(tmp_path / 'iter_3.pth')
    assert torch.load(tmp_path / 'iter_3.pth', weights_only=True)['state_dict'][
        'linear.weight'].isfinite().all()
