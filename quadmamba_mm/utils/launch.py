"""Helpers for tools/train.py and tools/test.py: shared arguments and config loading,
CPU multi-process start, checkpoint checks."""
import argparse
import logging
import os
import os.path as osp
import pickle
import re
import sys
import zipfile
from typing import Optional

import torch
import torch.distributed as dist
from mmengine.config import Config, DictAction

from .toolbox import toolbox_of


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The arguments train.py and test.py share with the toolboxes' own scripts."""
    parser.add_argument('--work-dir', help='where to save logs, checkpoints and results')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, key=value')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    # torch.distributed.launch passes --local_rank; torchrun sets LOCAL_RANK.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def load_config(args: argparse.Namespace) -> Config:
    """The config with the command-line overrides, launcher and work dir applied (default
    ``./work_dirs/<config name>``); fails early for a config of no known toolbox."""
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    toolbox_of(cfg)
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
        './work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg


def init_cpu_distributed(cfg, launcher: str) -> None:
    """Start a gloo process group for a multi-process run without GPUs.

    mmengine's own start-up calls ``torch.cuda.set_device`` and its default DDP wrapper passes
    ``device_ids=[LOCAL_RANK]``; both fail on a machine with no GPU. With a group already
    started and a wrapper config without device ids, the Runner runs DDP on the CPU.
    """
    if launcher == 'slurm':  # map Slurm's variables to the ones torch.distributed reads
        os.environ.setdefault('RANK', os.environ['SLURM_PROCID'])
        os.environ.setdefault('WORLD_SIZE', os.environ['SLURM_NTASKS'])
        os.environ.setdefault('LOCAL_RANK', os.environ.get('SLURM_LOCALID', '0'))
        os.environ.setdefault('MASTER_PORT', os.environ.get('PORT', '29500'))
        if 'MASTER_ADDR' not in os.environ:
            raise SystemExit('launcher slurm without GPUs: set MASTER_ADDR to the first node')
    elif launcher != 'pytorch':
        raise SystemExit(f'launcher {launcher!r} needs GPUs; on CPUs use pytorch (torchrun) '
                         'or slurm')
    cfg.setdefault('model_wrapper_cfg', dict(
        type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False)))
    dist.init_process_group(backend='gloo')


def finish_distributed() -> None:
    """Wait for every process and close the process group; a CPU (gloo) process then exits
    at once.

    A gloo worker can abort in C++ teardown after its Python code has finished
    ("terminate called without an active exception", no Python frame; seen on a loaded
    2-core machine about once in 10 runs), which fails a finished run. With the logs
    flushed, skipping that teardown loses nothing.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    cpu_run = dist.get_backend() == 'gloo'
    dist.barrier()
    dist.destroy_process_group()
    if cpu_run:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def latest_complete_checkpoint(work_dir: str) -> Optional[str]:
    """The newest checkpoint in ``work_dir`` that was written completely, or None.

    With ``quadmamba_mm`` imported, the checkpoint hook writes ``epoch_N.pth`` and then the
    ``last_checkpoint`` pointer atomically (:mod:`quadmamba_mm.engine.atomic_checkpoint`;
    its temporary files do not match ``(epoch|iter)_N.pth``). mmengine's own writes
    (``atomic=False``, or a work dir written without this package) are not atomic: a run
    killed at the wrong moment leaves a truncated checkpoint or an empty pointer, which
    mmengine's own ``--resume`` turns into "can not be found". A torch checkpoint is a zip
    archive whose directory is written last, so a readable zip directory marks a complete
    file.
    """
    pointer = osp.join(work_dir, 'last_checkpoint')
    candidates = []
    if osp.isfile(pointer):
        with open(pointer) as f:
            named = f.read().strip()
        if named:
            candidates.append(named if osp.isabs(named) else osp.join(work_dir, named))
    if osp.isdir(work_dir):
        # Periodic checkpoints only: best_*.pth are saved without the optimizer state.
        saved = [osp.join(work_dir, name) for name in os.listdir(work_dir)
                 if re.fullmatch(r'(epoch|iter)_\d+\.pth', name)]
        candidates += sorted(saved, key=osp.getmtime, reverse=True)
    for path in candidates:
        if osp.isfile(path) and zipfile.is_zipfile(path):
            if path != candidates[0]:
                print(f'resuming from {path}: {candidates[0]} is missing or incomplete '
                      '(interrupted while saving?)', flush=True)
            return path
    return None


def check_checkpoint(path: str) -> None:
    """Exit with a clear message when ``path`` is not a readable torch checkpoint."""
    if not os.path.isfile(path):
        raise SystemExit(f'checkpoint not found: {path}')
    if not zipfile.is_zipfile(path):
        raise SystemExit(f'{path} is not a torch checkpoint (not a zip archive: truncated or '
                         'corrupt?)')
    try:
        torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile) as error:
        raise SystemExit(f'cannot read checkpoint {path}: {error}') from None


def check_resume_matches(model: torch.nn.Module, path: str) -> None:
    """Exit with the differing keys when a checkpoint to resume from does not fit ``model``.

    mmengine resumes non-strictly (mismatches are only logged), which would continue a
    different model from a half-loaded state.
    """
    check_checkpoint(path)
    saved = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    saved = saved.get('state_dict', saved)
    model = getattr(model, 'module', model)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    wrong = [f'{k}: {tuple(saved[k].shape)} in the checkpoint, {tuple(expected[k])} in the model'
             for k in sorted(set(saved) & set(expected)) if saved[k].shape != expected[k]]
    if missing or unexpected or wrong:
        def head(keys):
            return f'{keys[:5]}{" ..." if len(keys) > 5 else ""} ({len(keys)})'
        raise SystemExit(f'cannot resume from {path}: it does not match the model of this config. '
                         f'missing {head(missing)}, unexpected {head(unexpected)}, '
                         f'wrong shapes {head(wrong)}')
