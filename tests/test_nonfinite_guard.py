"""NonFiniteLossHook: training stops at the first non-finite loss, before a checkpoint of that
iteration is written, and after too many optimizer steps in a row that the loss scaler
skipped."""
import math
import os

import pytest
import torch
from mmengine.config import Config
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS
from mmengine.runner import Runner
from torch.utils.data import Dataset

import quadmamba_mm  # noqa: F401  (registers the hooks, allow-lists checkpoint types)
from quadmamba_mm.engine import NonFiniteLossError, add_training_guards
from quadmamba_mm.engine.elastic import STOP_RECORD


class ToyData(Dataset):

    def __len__(self):
        return 8

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return dict(inputs=torch.randn(2, generator=g), labels=torch.tensor(float(i % 2)))


class NaNAt(BaseModel):
    """A linear model with two loss terms; ``loss_bad`` becomes ``value`` (NaN) from
    iteration ``nan_at`` on (1-based), or its gradient does (``grad_only``)."""

    def __init__(self, nan_at: int, value: float = math.nan, grad_only: bool = False):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)
        self.nan_at, self.value, self.grad_only = nan_at, value, grad_only
        self.calls = 0

    def forward(self, inputs, labels, mode='tensor'):
        out = self.linear(inputs).squeeze(1)
        if mode != 'loss':
            return out
        self.calls += 1
        loss_ok = ((out - labels) ** 2).mean()
        loss_bad = out.mean() * 0
        if self.calls >= self.nan_at:
            if self.grad_only:  # finite loss, non-finite gradients (an fp16 overflow)
                loss_bad = loss_bad + _InfGrad.apply(out.sum()) * 0
            else:  # a non-finite loss, and gradients that make the weights non-finite
                loss_bad = out.mean().abs() * self.value
        return dict(loss_ok=loss_ok, loss_bad=loss_bad)


class _InfGrad(torch.autograd.Function):
    """Identity forward, infinite gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.inf


@OPTIM_WRAPPERS.register_module(force=True)
class ScaledOptimWrapper(OptimWrapper):
    """What mmengine's AmpOptimWrapper does around backward and step, with torch's CPU
    GradScaler (AmpOptimWrapper itself needs a GPU): steps with non-finite gradients are
    skipped and the scale is halved."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.loss_scaler = torch.amp.GradScaler('cpu', init_scale=2.**4)

    def backward(self, loss, **kwargs):
        self.loss_scaler.scale(loss).backward(**kwargs)
        self._inner_count += 1

    def step(self, **kwargs):
        self.loss_scaler.step(self.optimizer, **kwargs)
        self.loss_scaler.update()


def make_runner(work_dir, model, max_iters=8, optim_type='OptimWrapper', optim_args=None,
                **guards):
    cfg = Config(dict(
        work_dir=str(work_dir),
        train_dataloader=dict(dataset=dict(type='ToyDataPlaceholder'), batch_size=2),
        **guards))
    add_training_guards(cfg)  # what tools/train.py does to every config
    hooks = [h for h in cfg.custom_hooks if h['type'] == 'NonFiniteLossHook']
    return Runner(
        model=model,
        work_dir=str(work_dir),
        train_dataloader=dict(dataset=ToyData(), sampler=dict(type='DefaultSampler',
                                                              shuffle=False),
                              batch_size=2, num_workers=0,
                              collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(type=optim_type, optimizer=dict(type='SGD', lr=0.1),
                           **(optim_args or {})),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1, by_epoch=False),
                           logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=hooks,
        default_scope='mmengine')


def finite(path) -> bool:
    state = torch.load(path, weights_only=True)['state_dict']
    return all(bool(torch.isfinite(v).all()) for v in state.values())


@pytest.mark.parametrize('value', [math.nan, math.inf])
def test_stops_at_the_first_non_finite_loss(tmp_path, value):
    runner = make_runner(tmp_path, NaNAt(nan_at=5, value=value))
    with pytest.raises(NonFiniteLossError) as error:
        runner.train()
    message = str(error.value)
    assert 'non-finite loss at iteration 5' in message
    assert f'loss_bad={value}' in message and 'loss_ok' not in message
    assert f'last good checkpoint is {tmp_path / "iter_4.pth"}' in message
    # Checkpoints of iterations 1-4, all finite; none of iteration 5 or later.
    assert sorted(p.name for p in tmp_path.glob('iter_*.pth')) == [
        f'iter_{i}.pth' for i in range(1, 5)]
    assert all(finite(p) for p in tmp_path.glob('iter_*.pth'))
    assert message in (tmp_path / STOP_RECORD).read_text()  # a restart will not retry it


def test_skipped_steps_are_counted_and_stop_after_a_run_of_them(tmp_path):
    """Gradients become infinite from iteration 3: the scaler skips every step from then on
    and halves its scale; after 4 skipped steps in a row training stops."""
    runner = make_runner(tmp_path, NaNAt(nan_at=3, value=math.inf, grad_only=True),
                         max_iters=20, optim_type='ScaledOptimWrapper',
                         nonfinite_loss_cfg=dict(max_skipped_steps=4))
    with pytest.raises(NonFiniteLossError) as error:
        runner.train()
    message = str(error.value)
    assert '4 optimizer steps in a row, up to iteration 6, were skipped' in message
    assert 'loss scale now 1' in message  # 16 halved 4 times
    assert f'last good checkpoint is {tmp_path / "iter_5.pth"}' in message
    assert all(finite(p) for p in tmp_path.glob('iter_*.pth'))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mmengine's AmpOptimWrapper needs a GPU")
def test_skipped_steps_with_mmengine_amp_on_a_gpu(tmp_path):
    """The same with mmengine's own AmpOptimWrapper (fp16, torch's CUDA GradScaler)."""
    runner = make_runner(tmp_path, NaNAt(nan_at=3, value=math.inf, grad_only=True),
                         max_iters=20, optim_type='AmpOptimWrapper',
                         optim_args=dict(loss_scale=dict(init_scale=2.**4)),
                         nonfinite_loss_cfg=dict(max_skipped_steps=4))
    with pytest.raises(NonFiniteLossError) as error:
        runner.train()
    assert '4 optimizer steps in a row, up to iteration 6, were skipped' in str(error.value)
    assert 'loss scale now 1' in str(error.value)


def test_a_single_skipped_step_does_not_stop(tmp_path):
    """One overflow (as when dynamic scaling grows its scale too far) is counted, training
    goes on."""

    class OneOverflow(NaNAt):

        def forward(self, inputs, labels, mode='tensor'):
            losses = super().forward(inputs, labels, mode)
            if mode == 'loss' and self.calls == 3:
                losses['loss_bad'] = losses['loss_bad'] + _InfGrad.apply(
                    self.linear.weight.sum()) * 0
            return losses

    runner = make_runner(tmp_path, OneOverflow(nan_at=10**6), max_iters=6,
                         optim_type='ScaledOptimWrapper',
                         nonfinite_loss_cfg=dict(max_skipped_steps=2))
    runner.train()
    hook = next(h for h in runner.hooks if type(h).__name__ == 'NonFiniteLossHook')
    assert hook.skipped_in_epoch == [3] and hook.skipped_in_a_row == 0


class NaNOnRank(NaNAt):
    """NaN loss on one rank only, from iteration ``nan_at``."""

    def __init__(self, rank_with_nan: int, nan_at: int):
        super().__init__(nan_at=nan_at)
        import torch.distributed as dist
        self.poisoned = dist.get_rank() == rank_with_nan

    def forward(self, inputs, labels, mode='tensor'):
        if mode == 'loss' and not self.poisoned:
            self.calls -= 1  # never reaches nan_at
        return super().forward(inputs, labels, mode)


def _train_one_rank(rank: int, work_dir: str, port: str) -> None:
    """One of two gloo processes; writes how its training ended to rank{rank}.txt."""
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=port, RANK=str(rank),
                      WORLD_SIZE='2', LOCAL_RANK=str(rank))
    dist.init_process_group('gloo', rank=rank, world_size=2)
    runner = Runner(
        model=NaNOnRank(rank_with_nan=1, nan_at=3), work_dir=work_dir, launcher='pytorch',
        cfg=dict(model_wrapper_cfg=dict(type='MMDistributedDataParallel', device_ids=None,
                                        broadcast_buffers=False)),
        train_dataloader=dict(dataset=ToyData(), sampler=dict(type='DefaultSampler',
                                                              shuffle=False),
                              batch_size=2, num_workers=0,
                              collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        train_cfg=dict(by_epoch=False, max_iters=6),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1, by_epoch=False)),
        custom_hooks=[dict(type='NonFiniteLossHook')], default_scope='mmengine')
    try:
        runner.train()
        outcome = 'finished'
    except NonFiniteLossError as error:
        outcome = str(error)
    with open(os.path.join(work_dir, f'rank{rank}.txt'), 'w') as f:
        f.write(outcome)
    dist.destroy_process_group()


def test_every_rank_stops_when_one_rank_loss_is_nan(tmp_path):
    """With two processes, only rank 1's loss is NaN: rank 0, which writes the checkpoints,
    stops at the same iteration, so no checkpoint of the NaN step (whose averaged gradients
    are NaN on every rank) is written."""
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = str(s.getsockname()[1])
    mp.spawn(_train_one_rank, args=(str(tmp_path), port), nprocs=2, join=True)
    for rank in (0, 1):
        message = (tmp_path / f'rank{rank}.txt').read_text()
        assert message.startswith('Training stopped: non-finite loss at iteration 3: '
                                  'loss=nan (rank 1), loss_bad=nan (rank 1). The last good '
                                  f'checkpoint is {tmp_path / "iter_2.pth"}'), message
    assert sorted(p.name for p in tmp_path.glob('iter_*.pth')) == ['iter_1.pth', 'iter_2.pth']
