"""Stopping training at the first non-finite loss, and after too many skipped steps.

mmengine trains on whatever the loss is. In fp32 a NaN or infinite loss turns every weight
NaN at the next optimizer step, and the CheckpointHook keeps writing (and keeping) NaN
checkpoints. Under fp16 AMP the loss scaler skips every step whose gradients are not finite,
silently: a run whose gradients stay non-finite trains no more and still "runs".

:class:`NonFiniteLossHook` (``tools/train.py`` adds it to every run):

- checks the loss terms of every iteration (the ``loss*`` entries of the train step's
  outputs, as mmengine sums them). At the first non-finite one on any rank, every rank
  stops, before a checkpoint of that iteration is written, with an error that names the
  iteration, the terms that were not finite (and on which rank), and the last good
  checkpoint;
- counts the optimizer steps the loss scaler skipped (a step was due, and the optimizer did
  not step), logs them per epoch, and stops after ``max_skipped_steps`` in a row.
"""
from typing import Dict, List, Optional, Sequence

import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from .elastic import record_deliberate_stop


class NonFiniteLossError(RuntimeError):
    """Training stopped: a loss was not finite, or too many steps were skipped in a row."""


def last_good_checkpoint(runner) -> str:
    """The newest checkpoint of the run, as the checkpoint hook recorded it, else the newest
    complete one in the work dir; words for the message where there is none."""
    from ..checkpoints.resume import latest_complete_checkpoint
    path = runner.message_hub.get_info('last_ckpt') or latest_complete_checkpoint(
        runner.work_dir)
    return str(path) if path else 'none (no checkpoint was saved before this iteration)'


def where(runner) -> str:
    """The iteration being trained, for messages: ``iteration 7 (epoch 2)``; no epoch in
    iteration-based training."""
    from mmengine.runner import EpochBasedTrainLoop
    epoch = (f' (epoch {runner.epoch + 1})'
             if isinstance(runner.train_loop, EpochBasedTrainLoop) else '')
    return f'iteration {runner.iter + 1}{epoch}'


def _optim_wrappers(runner) -> list:
    wrapper = runner.optim_wrapper
    return list(wrapper.values()) if hasattr(wrapper, 'values') else [wrapper]


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Stop at the first non-finite loss term, or after ``max_skipped_steps`` optimizer
    steps in a row that the loss scaler skipped.

    It runs after the logger (which still logs that iteration) and before the checkpoint
    hook, so no checkpoint of a non-finite iteration is written. With several processes the
    ranks agree on stopping (one all-reduce of a flag per iteration), so that the rank which
    writes checkpoints stops too when another rank's loss is NaN.

    Args:
        max_skipped_steps: stop when this many optimizer steps in a row were skipped because
            the gradients were not finite (fp16 AMP); 0 never stops for skipped steps.
            Default: 30 (dynamic loss scaling halves its scale at each skip, so 30 skips take
            the default scale of 2**16 down to 2**-14).
    """

    priority = 80  # after LoggerHook (60) and ParamSchedulerHook (70), before CheckpointHook (90)

    def __init__(self, max_skipped_steps: int = 30) -> None:
        if not isinstance(max_skipped_steps, int) or max_skipped_steps < 0:
            raise ValueError(f'max_skipped_steps must be a whole number >= 0, got '
                             f'{max_skipped_steps!r}')
        self.max_skipped_steps = max_skipped_steps
        self._handles: list = []
        self._steps: Dict[int, int] = {}
        self._before: Dict[int, tuple] = {}
        self.skipped_in_a_row = 0
        self.skipped_in_epoch: List[int] = []

    def before_train(self, runner) -> None:
        self._handles = []
        for wrapper in _optim_wrappers(runner):
            key = id(wrapper.optimizer)
            self._steps[key] = 0

            def count(optimizer, args, kwargs, key=key):
                self._steps[key] += 1

            self._handles.append(wrapper.optimizer.register_step_post_hook(count))

    def after_train(self, runner) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def before_train_epoch(self, runner) -> None:
        self.skipped_in_epoch = []

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        # mmengine counts backward passes in _inner_count; a step is due when the count
        # reaches the accumulation boundary (should_update()).
        self._before = {id(w.optimizer): (getattr(w, '_inner_count', None),
                                          self._steps.get(id(w.optimizer), 0))
                        for w in _optim_wrappers(runner)}

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        self._check_loss(runner, outputs or {})
        self._count_skipped_steps(runner)

    def after_train_epoch(self, runner) -> None:
        from mmengine.runner import EpochBasedTrainLoop
        if self.skipped_in_epoch:  # iteration-based training has one "epoch": the whole run
            period = (f'epoch {runner.epoch + 1}' if isinstance(runner.train_loop,
                                                                 EpochBasedTrainLoop)
                      else f'iterations 1-{runner.iter}')
            runner.logger.warning(
                f'{period}: the loss scaler skipped {len(self.skipped_in_epoch)} optimizer '
                f'steps (gradients not finite), at iterations {_ranges(self.skipped_in_epoch)}')

    def _check_loss(self, runner, outputs: dict) -> None:
        from mmengine.dist import all_gather_object, all_reduce, is_distributed
        local = {}
        for name, value in outputs.items():
            if 'loss' in name and isinstance(value, (torch.Tensor, float, int)):
                value = torch.as_tensor(value).detach().float()
                if not bool(torch.isfinite(value).all()):
                    local[name] = float(value.reshape(-1)[0])
        bad = torch.tensor([1 if local else 0], dtype=torch.int64)
        if is_distributed():
            all_reduce(bad, op='max')
        if not int(bad.item()):
            return
        per_rank = all_gather_object(local) if is_distributed() else [local]
        named = ', '.join(f'{k}={v}' + (f' (rank {rank})' if len(per_rank) > 1 else '')
                          for rank, found in enumerate(per_rank) for k, v in found.items())
        self._stop(runner, f'non-finite loss at {where(runner)}: {named}')

    def _count_skipped_steps(self, runner) -> None:
        skipped = False
        for wrapper in _optim_wrappers(runner):
            key = id(wrapper.optimizer)
            inner_before, steps_before = self._before.get(key, (None, 0))
            inner_now = getattr(wrapper, '_inner_count', None)
            backward_done = inner_now is None or inner_now != inner_before
            if backward_done and wrapper.should_update() and self._steps[key] == steps_before:
                skipped = True
        if not skipped:
            self.skipped_in_a_row = 0
            return
        self.skipped_in_a_row += 1
        self.skipped_in_epoch.append(runner.iter + 1)
        if self.max_skipped_steps and self.skipped_in_a_row >= self.max_skipped_steps:
            scaler = getattr(runner.optim_wrapper, 'loss_scaler', None)
            scale = f', loss scale now {scaler.get_scale():g}' if scaler is not None else ''
            self._stop(runner, f'{self.skipped_in_a_row} optimizer steps in a row, up to '
                       f'{where(runner)}, were skipped because the gradients were not finite '
                       f'(max_skipped_steps={self.max_skipped_steps}{scale})')

    def _stop(self, runner, what: str) -> None:
        message = (f'Training stopped: {what}. The last good checkpoint is '
                   f'{last_good_checkpoint(runner)}; no checkpoint of this iteration was '
                   'written.')
        runner.logger.error(message)
        record_deliberate_stop(runner.work_dir, message)
        raise NonFiniteLossError(message)


def _ranges(iterations: Sequence[int]) -> str:
    """``[3, 4, 5, 9]`` as ``'3-5, 9'``."""
    parts, start, prev = [], None, None
    for i in iterations:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            parts.append(f'{start}-{prev}' if prev != start else f'{start}')
            start = prev = i
    if start is not None:
        parts.append(f'{start}-{prev}' if prev != start else f'{start}')
    return ', '.join(parts)
