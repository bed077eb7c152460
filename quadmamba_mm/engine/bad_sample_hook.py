"""Counting the training samples that :class:`quadmamba_mm.datasets.SkipBadSamples` skipped:
a summary at the end of every epoch, and a stop past a share of the data."""
from typing import Dict, List

import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from ..datasets.bad_samples import find_skipping_datasets
from .elastic import record_deliberate_stop
from .nonfinite import where

# How many skipped files a summary or an error names before it says "and N more".
NAMED = 20


class BadDataError(RuntimeError):
    """Training stopped: more of the training data was unusable than allowed."""


def _named(records: List[dict]) -> str:
    names = [f'{r["sample"]} ({r["reason"]})' for r in records[:NAMED]]
    more = f'; and {len(records) - NAMED} more' if len(records) > NAMED else ''
    return '; '.join(names) + more


@HOOKS.register_module()
class BadSampleHook(Hook):
    """Sum up the unusable training samples per epoch and stop training past ``max_share``.

    It reads the records of every :class:`~quadmamba_mm.datasets.SkipBadSamples` in the
    training dataset after each iteration (the DataLoader workers write them), adds the
    counts of all ranks, and stops every rank as soon as the samples skipped in this epoch
    plus the images dropped while the annotations were read exceed ``max_share`` of the
    training set. At the end of each epoch the main process logs how many were skipped and
    names them. In iteration-based training an "epoch" is one pass of ``len(dataloader)``
    iterations.

    Args:
        max_share: the largest share of the training set that may be unusable, as a
            fraction (0.01 = 1%); 0 stops at the first unusable sample. Default: 0.01.
    """

    priority = 80  # before CheckpointHook (90): a stop comes before that iteration's checkpoint

    def __init__(self, max_share: float = 0.01) -> None:
        if not 0 <= max_share < 1:
            raise ValueError(f'max_share is a fraction of the training set in [0, 1), got '
                             f'{max_share!r}')
        self.max_share = max_share
        self._sources: List[List] = []  # [SkipRecords, offset]
        # file -> record. Dropped while the annotations were read (every rank reads them
        # all), and skipped in this epoch by this rank: one record per file, as mmengine's
        # random replacement for a skipped sample can be an unusable file again.
        self._dropped: Dict[str, dict] = {}
        self._skipped: Dict[str, dict] = {}

    @property
    def dropped(self) -> List[dict]:
        """The images dropped while the annotations were read."""
        return list(self._dropped.values())

    @property
    def skipped(self) -> List[dict]:
        """The samples this process skipped in the current epoch."""
        return list(self._skipped.values())

    def before_train(self, runner) -> None:
        dataset = runner.train_dataloader.dataset
        wrappers = find_skipping_datasets(dataset)
        if not wrappers:
            runner.logger.warning('BadSampleHook: the training dataset has no SkipBadSamples '
                                  'wrapper, so no sample is skipped or counted')
        self._sources = [[w.records, 0] for w in wrappers]
        self._dropped, self._skipped = {}, {}
        self._read()
        self._samples = len(dataset)
        if self.dropped:
            runner.logger.warning(f'{len(self.dropped)} training images were dropped while the '
                                  f'annotations were read: {_named(self.dropped)}')
        self._check(runner, 0)  # the dropped images alone; skips are added over all ranks

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        from mmengine.dist import all_reduce, is_distributed
        from mmengine.runner import EpochBasedTrainLoop
        self._read()
        skipped = torch.tensor([len(self._skipped)], dtype=torch.int64)
        if is_distributed():
            all_reduce(skipped)
        self._check(runner, int(skipped.item()))
        passes_by_iteration = not isinstance(runner.train_loop, EpochBasedTrainLoop)
        if passes_by_iteration and (runner.iter + 1) % len(runner.train_dataloader) == 0:
            self._summarize(runner, f'iterations up to {runner.iter + 1}')

    def after_train_epoch(self, runner) -> None:
        from mmengine.runner import EpochBasedTrainLoop
        if isinstance(runner.train_loop, EpochBasedTrainLoop):
            self._read()
            self._summarize(runner, f'epoch {runner.epoch + 1}')

    def after_run(self, runner) -> None:
        for records, _ in self._sources:  # the workers are done with them
            records.remove()

    def _read(self) -> None:
        for source in self._sources:
            records, source[1] = source[0].read(source[1])
            for record in records:
                known = self._dropped if record['stage'] == 'load' else self._skipped
                known.setdefault(record['sample'], record)

    def _share(self, skipped: int) -> float:
        dropped = len(self._dropped)
        return (dropped + skipped) / max(1, self._samples + dropped)

    def _check(self, runner, skipped: int) -> None:
        """Stop when the unusable share of the training set is above ``max_share``;
        ``skipped`` is the count of all ranks in this epoch."""
        share = self._share(skipped)
        if share <= self.max_share:
            return
        dropped = len(self.dropped)
        total = self._samples + dropped
        message = (f'Training stopped at {where(runner)}: {dropped + skipped} of {total} '
                   f'training samples ({share:.2%}) are unusable, more than the allowed '
                   f'{self.max_share:.2%} (bad_data_cfg=dict(max_share=...)). '
                   + (f'Dropped while reading the annotations: {_named(self.dropped)}. '
                      if dropped else '')
                   + (f'Skipped in this epoch by this process: {_named(self.skipped)}. '
                      if self.skipped else '')
                   + 'Each file is named in a BadSampleWarning above; fix or remove them, '
                   'or raise max_share.')
        runner.logger.error(message)
        record_deliberate_stop(runner.work_dir, message)
        raise BadDataError(message)

    def _summarize(self, runner, period: str) -> None:
        """Log this period's skipped samples, named, from all ranks (main process)."""
        from mmengine.dist import all_gather_object, is_distributed
        gathered = all_gather_object(self.skipped) if is_distributed() else [self.skipped]
        skipped = list({r['sample']: r for rank in gathered for r in rank}.values())
        self._skipped = {}
        if skipped:
            runner.logger.warning(
                f'{period}: {len(skipped)} unusable training samples skipped '
                f'({self._share(len(skipped)):.2%} of {self._samples + len(self.dropped)} with '
                f'the {len(self.dropped)} dropped while reading the annotations; allowed '
                f'{self.max_share:.2%}): {_named(skipped)}')

