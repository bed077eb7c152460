"""Checking checkpoints before a run uses them: complete, readable, matching the model."""
import os
import os.path as osp
import re
import zipfile
from typing import Optional

import torch

from .fit import (CheckpointFileError, CheckpointFitError, check_fit, read_checkpoint,
                  state_dict_of)


def latest_complete_checkpoint(work_dir: str) -> Optional[str]:
    """The newest checkpoint in ``work_dir`` that was written completely, or None.

    With ``quadmamba_mm`` imported, the checkpoint hook writes ``epoch_N.pth`` and then the
    ``last_checkpoint`` pointer atomically (:mod:`quadmamba_mm.checkpoints.atomic`;
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
    try:
        read_checkpoint(path)
    except CheckpointFileError as error:
        raise SystemExit(str(error)) from None


def check_resume_matches(model: torch.nn.Module, path: str) -> None:
    """Exit with the differing keys when a checkpoint to resume from does not fit ``model``.

    mmengine resumes non-strictly (mismatches are only logged), which would continue a
    different model from a half-loaded state. The check is :func:`check_fit`'s ``'resume'``
    policy: exactly the model's keys and shapes.
    """
    try:
        check_fit(model, state_dict_of(read_checkpoint(path)), path, 'resume', logger=None)
    except CheckpointFileError as error:
        raise SystemExit(str(error)) from None
    except CheckpointFitError as error:
        raise SystemExit(f'cannot resume from {path}: {error}') from None
