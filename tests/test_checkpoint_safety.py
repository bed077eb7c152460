"""Checkpoints load with weights_only on: Runner resume works, a crafted pickle is refused."""
import pickle

import pytest
import torch
from malicious import RunsCode
from mmengine.model import BaseModel
from mmengine.runner import Runner, load_checkpoint
from torch.utils.data import Dataset

import quadmamba_mm  # noqa: F401  (allow-lists the Runner's checkpoint types)
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
