"""Checkpoints that are never left half-written.

mmengine 0.10.7 writes a checkpoint by opening ``epoch_N.pth`` (or ``iter_N.pth``,
``best_*.pth``) and writing the bytes into it, then the ``last_checkpoint`` pointer the same
way. A run killed during either write leaves a truncated file under the final name.

Here every such file is first written to a temporary file in the same folder, flushed and
fsync'ed, and then renamed onto its final name with ``os.replace`` (atomic on POSIX and
Windows). A kill at any moment leaves the old file or the new one, plus at worst a stale
temporary file (``.<name>.<random>.partial``), which the next save or resume removes.

Three pieces, each usable by name from a config:

- :func:`atomic_write`: the write itself.
- ``AtomicLocalBackend``, registered as the mmengine file backend ``'atomic_local'``: the
  local backend with atomic ``put`` / ``put_text``.
- :class:`AtomicCheckpointHook`: mmengine's ``CheckpointHook`` (same arguments, same files)
  whose checkpoints and pointer go through the atomic writes. It also saves a new checkpoint
  before removing the one it replaces (``max_keep_ckpts``, ``save_best``), so a kill in
  between leaves one too many and never none.

A write that fails (a full disk: ``ENOSPC``, a quota, an I/O error) removes its temporary
file and raises an ``OSError`` with the same ``errno`` that names the path, the bytes it
needed and the free space there; the previous file under that name is untouched.

The hook also refuses to save weights that hold NaN or infinity (:func:`check_finite`): a
diverged run stops with an error naming the first such tensors, and the last good checkpoint
stays the newest (``max_keep_ckpts`` removes nothing for it).

Importing ``quadmamba_mm`` registers :class:`AtomicCheckpointHook` under mmengine's name
``'CheckpointHook'`` as well, so every config (``default_hooks=dict(checkpoint=dict(
type='CheckpointHook', ...))`` from the toolboxes' bases, or the Runner's default) gets it.
``atomic=False, check_finite=False`` gives mmengine's plain behaviour back. Checkpoints to
other storage (``s3://``, ``backend_args`` of another backend, the deprecated
``file_client_args``) are written as mmengine writes them.
"""
import os
import os.path as osp
import re
import secrets
import shutil
from typing import Dict, List, Optional

import torch

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, get_file_backend, register_backend
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

TEMP_SUFFIX = '.partial'
# .<final name>.<pid>-<8 hex>.partial
_TEMP_NAME = re.compile(r'^\..+\.\d+-[0-9a-f]{8}' + re.escape(TEMP_SUFFIX) + '$')


def temporary_name(path: str) -> str:
    """A fresh temporary path next to ``path``, named so that :func:`remove_stale_temporaries`
    recognises it."""
    folder, name = osp.split(osp.abspath(path))
    return osp.join(folder, f'.{name}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}')


def _fsync_folder(folder: str) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` holds either its old content or all of
    ``data``, whenever the process is stopped.

    The bytes go to a temporary file in the same folder (the same file system, so the rename
    is atomic), are flushed and fsync'ed, and the file is renamed onto ``path``. The file gets
    the usual permissions (0o666 less the umask). On an error the temporary file is removed
    and the error raised; an ``OSError`` (a full disk, say) is raised again with its ``errno``
    and a message naming ``path``, the size of ``data`` and the free space in the folder.
    """
    path = osp.abspath(path)
    folder = osp.dirname(path)
    os.makedirs(folder, exist_ok=True)
    temp = temporary_name(path)
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, 'O_BINARY', 0),
                     0o666)
        try:
            with os.fdopen(fd, 'wb') as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, path)
        except BaseException:
            try:
                os.remove(temp)
            except OSError:
                pass
            raise
    except OSError as error:
        message = _write_error_message(error, path, len(data))
        # OSError(errno, message) keeps the errno and its subclass (PermissionError...).
        raise (OSError(message) if error.errno is None else OSError(error.errno, message)
               ) from error
    _fsync_folder(folder)


def _size(n: float) -> str:
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if n < 1024:
            return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
        n /= 1024
    return f'{n:.1f} TiB'


def _write_error_message(error: OSError, path: str, size: int) -> str:
    folder = osp.dirname(path)
    try:
        free = f'{_size(shutil.disk_usage(folder).free)} free'
    except OSError as usage_error:
        free = f'free space unknown ({usage_error.strerror or usage_error})'
    return (f'could not write {path} ({_size(size)}; {free} in {folder}): '
            f'{error.strerror or error}. The file under that name is unchanged.')


class NonFiniteWeightsError(ValueError):
    """A checkpoint to save holds NaN or infinite weights."""


def check_finite(state_dicts: Dict[str, Dict[str, torch.Tensor]], what: str) -> None:
    """Raise :class:`NonFiniteWeightsError` naming the first tensors that hold NaN or
    infinity.

    Args:
        state_dicts: name (``'state_dict'``, ``'ema_state_dict'``) -> tensors.
        what: the checkpoint, for the message.
    """
    bad = []
    for group, tensors in state_dicts.items():
        for key, value in tensors.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                finite = torch.isfinite(value)
                if not bool(finite.all()):
                    nan = int(torch.isnan(value).sum())
                    bad.append(f'{group}[{key!r}] ({nan} NaN, {int((~finite).sum()) - nan} inf '
                               f'of {value.numel()})')
    if bad:
        shown = ', '.join(bad[:5]) + (', ...' if len(bad) > 5 else '')
        raise NonFiniteWeightsError(
            f'not saving {what}: {len(bad)} tensors hold non-finite values: {shown}. The '
            'previous checkpoints are kept. Training has diverged (a lower learning rate, '
            'gradient clipping or a loss scale may help); check_finite=False in the checkpoint '
            'hook saves such weights anyway.')


def remove_stale_temporaries(folder: str) -> List[str]:
    """Remove the temporary files :func:`atomic_write` leaves in ``folder`` when a process is
    killed while writing. Call it only while no write into ``folder`` is under way.

    Returns:
        The removed paths.
    """
    if not osp.isdir(folder):
        return []
    removed = []
    for name in os.listdir(folder):
        if _TEMP_NAME.match(name):
            path = osp.join(folder, name)
            try:
                os.remove(path)
                removed.append(path)
            except OSError:  # gone already, or not a file
                pass
    return removed


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend whose ``put`` and ``put_text`` are atomic
    (:func:`atomic_write`). Name it with ``backend_args=dict(backend='atomic_local')``."""

    def put(self, obj: bytes, filepath) -> None:
        atomic_write(str(filepath), obj)

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        atomic_write(str(filepath), obj.encode(encoding))


register_backend('atomic_local', AtomicLocalBackend, force=True)


class _DeferredRemovals:
    """Stands in for a file backend and records ``remove``/``rmtree`` instead of doing them;
    every other call goes to the backend."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.paths: List[str] = []

    def remove(self, filepath) -> None:
        self.paths.append(filepath)

    def rmtree(self, dir_path) -> None:
        self.paths.append(dir_path)

    def __getattr__(self, name):
        return getattr(self.backend, name)


@HOOKS.register_module(force=True)
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` with atomic writes (see the module docstring).

    Args:
        atomic: write checkpoints and the ``last_checkpoint`` pointer atomically, and save a
            new checkpoint before removing the one it replaces. Default: True.
        check_finite: refuse to save a checkpoint whose ``state_dict`` (or
            ``ema_state_dict``) holds NaN or infinity (:func:`check_finite`), before anything
            is written. Default: True. With ``atomic=False, check_finite=False`` it behaves
            exactly like mmengine's ``CheckpointHook``.
        **kwargs: the arguments of mmengine's ``CheckpointHook``.
    """

    def __init__(self, *args, atomic: bool = True, check_finite: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.atomic = atomic
        self.check_finite = check_finite
        self.writes_atomically = False  # decided in before_train, once the folder is known

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        # This hook has the lowest priority, so it sees the checkpoint as it will be written
        # (after EMAHook swapped its weights in, for example).
        if self.check_finite:
            meta = checkpoint.get('meta') or {}
            check_finite({k: v for k, v in checkpoint.items()
                          if k.endswith('state_dict') and isinstance(v, dict)},
                         f"the checkpoint of epoch {meta.get('epoch', runner.epoch)}, "
                         f"iteration {meta.get('iter', runner.iter)}")

    def before_train(self, runner) -> None:
        super().before_train(runner)
        # Only a plain local folder is written atomically; other storage stays as configured.
        if (self.atomic and self.file_client_args is None
                and type(self.file_backend) is LocalBackend):  # noqa: E721 (not subclasses)
            self.backend_args = dict(backend='atomic_local')
            self.file_backend = get_file_backend(self.out_dir, backend_args=self.backend_args)
            self.writes_atomically = True
        self._remove_temporaries(runner)

    def _remove_temporaries(self, runner) -> None:
        """Remove what a write interrupted by a kill left behind (main process only: it is the
        only one that writes checkpoints, and it writes one at a time)."""
        if not (self.atomic and is_main_process()):
            return
        folders = {osp.abspath(runner.work_dir)}
        if self.writes_atomically:
            folders.add(osp.abspath(self.out_dir))
        for folder in sorted(folders):
            for path in remove_stale_temporaries(folder):
                runner.logger.info(f'Removed {path}, left by a checkpoint write that was '
                                   'interrupted')

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        if not self.writes_atomically:
            super()._save_checkpoint_with_step(runner, step, meta)
            return
        self._remove_temporaries(runner)
        # As mmengine: the ids to keep are updated before saving, so that the checkpoint
        # records them; unlike mmengine, the outdated file is removed after the new one is
        # complete.
        outdated: Optional[int] = None
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids
                                            and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir,
            filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)
        if not is_main_process():
            return
        atomic_write(osp.join(runner.work_dir, 'last_checkpoint'), str(self.last_ckpt).encode())
        if outdated is not None and outdated != step:
            self._remove(self.file_backend.join_path(self.out_dir,
                                                     self.filename_tmpl.format(outdated)))

    def _save_best_checkpoint(self, runner, metrics) -> None:
        if not (self.save_best and self.writes_atomically):
            super()._save_best_checkpoint(runner, metrics)
            return
        self._remove_temporaries(runner)
        # mmengine removes the previous best checkpoint before saving the new one; here the
        # removals wait until the new one is saved.
        backend = self.file_backend
        self.file_backend = deferred = _DeferredRemovals(backend)
        try:
            super()._save_best_checkpoint(runner, metrics)
        finally:
            self.file_backend = backend
        current = {self.last_ckpt, getattr(self, 'best_ckpt_path', None),
                   *getattr(self, 'best_ckpt_path_dict', {}).values()}
        for path in deferred.paths:
            if path not in current and is_main_process():
                self._remove(path)

    def _remove(self, path: str) -> None:
        if self.file_backend.isfile(path):
            self.file_backend.remove(path)
        elif self.file_backend.isdir(path):  # checkpoints saved by DeepSpeed are folders
            self.file_backend.rmtree(path)


def use_atomic_checkpoint_hook() -> None:
    """Make ``type='CheckpointHook'`` build :class:`AtomicCheckpointHook` from any scope.

    mmdet, mmseg and mmpretrain have no ``CheckpointHook`` of their own: they find mmengine's
    through the root registry, where this puts the subclass (same arguments, ``atomic=True``
    added). ``from mmengine.hooks import CheckpointHook`` still gives mmengine's class.
    """
    HOOKS.register_module(name='CheckpointHook', module=AtomicCheckpointHook, force=True)
