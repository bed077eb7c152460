"""Resuming by itself when a run's processes are started again.

Two launchers start the processes of a run again after a failure:

- torchrun (``tools/dist_train.sh``, ``MAX_RESTARTS``, default 1) restarts every process of
  the run when one dies (killed for memory, preempted) and counts the restarts in
  ``TORCHELASTIC_RESTART_COUNT``;
- Slurm re-runs a batch job submitted with ``sbatch --requeue`` after preemption or a node
  failure and counts the requeues in ``SLURM_RESTART_COUNT``.

:func:`resume_after_restart` turns either count into ``--resume`` (auto): a restarted run
continues from the newest complete checkpoint in its work dir
(:func:`quadmamba_mm.checkpoints.resume.latest_complete_checkpoint`).

torchrun's count is per node: a node whose processes were healthy and were only restarted
because another node's failed starts again with count 0 (pytorch/pytorch#108158). The
processes therefore take the largest count of all ranks, and rank 0 chooses the checkpoint
for all of them, so that every rank resumes from the same file or none does.

A run that a guard stopped on purpose (a non-finite loss, too much unusable data:
:func:`record_deliberate_stop`) would stop the same way again, so a restart of it exits at
once with the recorded reason instead of resuming; a new start clears the record.
"""
import os
from typing import Optional

import torch
from mmengine.config import Config

from ..checkpoints.resume import latest_complete_checkpoint
from ..runtime.distributed import init_cpu_distributed

#: The environment variables that count how often a run's processes were started again.
RESTART_COUNT_VARS = ('TORCHELASTIC_RESTART_COUNT', 'SLURM_RESTART_COUNT')
#: Written to the work dir when a guard stops training on purpose (a non-finite loss, too much
#: unusable data): a restart would only repeat that, so a restarted run exits instead.
STOP_RECORD = 'training_stopped.txt'


def record_deliberate_stop(work_dir: str, message: str) -> None:
    """Note in ``work_dir`` (main process only) that training stopped on purpose and why; a
    restart of the run then exits with ``message`` instead of resuming into the same stop."""
    from mmengine.dist import is_main_process

    from ..checkpoints.atomic import atomic_write
    if is_main_process():
        atomic_write(os.path.join(work_dir, STOP_RECORD), message.encode())


def restart_count() -> int:
    """How often this process's run has been started again (0 for a first start): the
    largest of the counts in :data:`RESTART_COUNT_VARS` that are set."""
    counts = [0]
    for name in RESTART_COUNT_VARS:
        value = os.environ.get(name, '').strip()
        if value:
            try:
                counts.append(int(value))
            except ValueError:
                raise SystemExit(f'{name}={value!r}: expected a whole number of restarts') \
                    from None
    return max(counts)


def start_process_group(cfg: Config, launcher: str) -> None:
    """Start the process group before the Runner, as the Runner would start it, so that
    :func:`resume_after_restart` can make the ranks agree before the Runner is built.

    Without GPUs: gloo (:func:`quadmamba_mm.runtime.distributed.init_cpu_distributed`). With
    GPUs: ``env_cfg.mp_cfg`` and ``env_cfg.dist_cfg`` applied in the Runner's order; the
    Runner then finds the group started and keeps it.

    Args:
        cfg: the run's config.
        launcher: ``'pytorch'``, ``'slurm'`` or ``'mpi'``.
    """
    if not torch.cuda.is_available():
        init_cpu_distributed(cfg, launcher)
        return
    from mmengine.dist import init_dist
    from mmengine.utils.dl_utils import set_multi_processing
    env_cfg = cfg.get('env_cfg') or {}
    set_multi_processing(**env_cfg.get('mp_cfg', {}), distributed=True)
    init_dist(launcher, **env_cfg.get('dist_cfg', {}))


def resume_after_restart(cfg: Config) -> Optional[str]:
    """Make a restarted run resume from the newest complete checkpoint in ``cfg.work_dir``.

    Call it on every rank, after the process group is started (the ranks agree on the
    restart count and the checkpoint) and after ``--resume``/``load_from`` were applied: a
    restart replaces them with the newest checkpoint of the run, and keeps them where none
    has been saved yet. A first start (count 0 on every rank) changes nothing.

    Args:
        cfg: the run's config; ``resume`` and ``load_from`` are set on a restart.

    Returns:
        The checkpoint the run resumes from after a restart, else None.
    """
    from mmengine.dist import (all_reduce, broadcast_object_list, get_rank,
                               is_distributed)
    count = restart_count()
    if is_distributed():
        counts = torch.tensor([count], dtype=torch.int64)
        all_reduce(counts, op='max')
        count = int(counts.item())
    rank0 = get_rank() == 0
    stop_record = os.path.join(cfg.work_dir, STOP_RECORD)
    if count == 0:
        if rank0 and os.path.isfile(stop_record):  # from an earlier run: a new start clears it
            os.remove(stop_record)
        return None
    chosen = [None, None]
    if rank0:
        chosen = [latest_complete_checkpoint(cfg.work_dir), None]
        if os.path.isfile(stop_record):
            with open(stop_record) as f:
                chosen[1] = f.read().strip()
    if is_distributed():
        broadcast_object_list(chosen, src=0)
    path, stopped = chosen
    if stopped:
        raise SystemExit(f'restart {count} of this run: not resuming, because training had '
                         f'stopped on purpose and would stop again. {stopped} (Remove '
                         f'{stop_record} to resume anyway.)')
    if path is not None:
        cfg.resume, cfg.load_from = True, path
        message = (f'restart {count} of this run: resuming from {path}, the newest complete '
                   f'checkpoint in {cfg.work_dir}')
    else:
        start = (f'resuming from {cfg.load_from} as on the first start' if cfg.get('resume')
                 and cfg.get('load_from') else 'starting from the beginning')
        message = (f'restart {count} of this run: no complete checkpoint in {cfg.work_dir} '
                   f'yet, {start}')
    if rank0:
        print(message, flush=True)
    return path
