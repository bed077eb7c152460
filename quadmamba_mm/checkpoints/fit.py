"""Checking that a checkpoint fits the model it is loaded into.

mmengine loads weights non-strictly: ``load_from``, ``init_cfg=dict(type='Pretrained', ...)``
and the toolboxes' inferencers copy the tensors whose names and shapes match and only log the
rest. A checkpoint of another model (a ResNet, another QuadMamba arch, a bad ``prefix``) then
leaves the model at its random initialisation, and training or evaluation goes on as if
nothing happened.

:func:`check_fit` compares a state dict with a model before it is loaded. It counts, for each
top-level module of the model (``backbone``, ``neck``, ``head``...), how many of its tensors
the checkpoint holds with the right shape, logs that share, and raises
:class:`CheckpointFitError` (naming the checkpoint and the model, with counts and the first
names of the missing, unexpected and wrongly-shaped keys) when the load does not fit its
policy:

- ``'init'`` (a training start: ``load_from``, the backbone's ``Pretrained`` init_cfg, a timm
  pretrained file): no tensor may have another shape, and the ``backbone`` (the whole model
  where it has no ``backbone``) must load at least half of its tensors. Expected partial loads
  pass: the layers whose shape follows the class count (:data:`CLASS_COUNT_LAYERS`: an
  mmpretrain/timm classifier head, mmdet's ``fc_cls``/``fc_reg``/``conv_logits``, mmseg's
  ``conv_seg``) keep their initialisation, and the modules other than the backbone may be
  missing altogether (a classifier's backbone loaded into a detector or a segmentor).
- ``'evaluate'`` (``tools/test.py CHECKPOINT``, ``tools/inference.py``): every tensor of the
  model loads with its shape; an evaluated model with random parts gives meaningless numbers.
- ``'resume'``: the checkpoint holds exactly the model's tensors, no more, no fewer.

The config setting ``checkpoint_fit`` changes the ``'init'`` and ``'evaluate'`` policies of a
run (``'resume'`` is always exact)::

    checkpoint_fit = dict(partial=True)  # accept any partial load: shapes may differ, any
                                         # share may be missing; at least one tensor must load
    checkpoint_fit = dict(allow=[r'^backbone\\.norm3\\.'], min_fraction=0.8,
                          required=['backbone', 'neck'])   # finer: see :class:`FitPolicy`

It applies to ``load_from``, to ``QuadMamba``'s ``Pretrained`` init_cfg (through
:class:`CheckpointFitHook`, which ``tools/train.py`` and ``tools/test.py`` add to every run;
other launchers add it with ``custom_hooks=[dict(type='CheckpointFitHook')]``) and to the
checkpoint arguments of ``tools/test.py`` and ``tools/inference.py``.

A ``Pretrained`` init_cfg whose local file is absent (the ImageNet checkpoint a detection or
segmentation config names, before anyone trained or converted it) warns once and leaves the
random initialisation; a file that exists must fit. A file that is not a torch checkpoint
(truncated, corrupt, another format) gets the same message as the tools' checkpoint
arguments (:func:`read_checkpoint`). Loading stays weights-only
(:mod:`quadmamba_mm.checkpoints.safe_load`).
"""
import logging
import os.path as osp
import pickle
import re
import zipfile
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from mmengine.hooks import Hook
from mmengine.logging import MessageHub, print_log
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.registry import HOOKS
from torch import nn

# The layers whose shape follows the number of classes: a checkpoint trained for another
# class count leaves them at their initialisation (matched against the model's key names).
CLASS_COUNT_LAYERS: Tuple[str, ...] = (
    r'^head\.(fc\.)?(weight|bias)$',  # mmpretrain's ClsHead, timm's heads
    r'^(fc|classifier)\.(weight|bias)$',  # torchvision and timm classifiers
    r'(^|\.)(fc_cls|fc_reg|conv_logits|conv_seg|conv_cls|retina_cls)\.(weight|bias)$',
)
SETTING_KEYS = ('partial', 'min_fraction', 'required', 'allow')
# Where CheckpointFitHook leaves the run's checkpoint_fit setting for init_weights to read.
RUN_SETTINGS_KEY = 'checkpoint_fit'
HINT = ('to load a part of a checkpoint on purpose, set checkpoint_fit=dict(partial=True) in '
        'the config, or name the keys to skip with checkpoint_fit=dict(allow=[regex, ...]) '
        '(README, "Checkpoint fit")')
SHOWN = 5  # key names shown per list in messages


class CheckpointFileError(ValueError):
    """The file is missing or is not a readable torch checkpoint."""


class CheckpointFitError(ValueError):
    """The checkpoint does not fit the model it is loaded into.

    Attributes:
        report: the :class:`FitReport` of the comparison.
    """

    def __init__(self, message: str, report: Optional['FitReport'] = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class FitPolicy:
    """What a checkpoint must provide for a model.

    Args:
        min_fraction: the share of the tensors of each required unit that must load (with
            their shape, or be skipped under ``allow``). Default: 0.5.
        required: the top-level modules that must reach ``min_fraction``; names the model
            lacks are ignored, and the whole model is one unit when it has none of them.
            None: every top-level module. Default: ``('backbone', )``.
        allow: regular expressions (``re.search``) on the model's key names whose missing or
            wrongly-shaped tensors are expected; they keep their initialisation. Default:
            :data:`CLASS_COUNT_LAYERS`.
        partial: accept any partial load (other shapes and missing tensors are skipped) as
            long as at least one tensor loads. Default: False.
        exact: the checkpoint must hold exactly the model's keys and shapes (resuming).
            Default: False.
    """
    min_fraction: float = 0.5
    required: Optional[Tuple[str, ...]] = ('backbone', )
    allow: Tuple[str, ...] = CLASS_COUNT_LAYERS
    partial: bool = False
    exact: bool = False


POLICIES: Dict[str, FitPolicy] = {
    'init': FitPolicy(),
    'evaluate': FitPolicy(min_fraction=1.0, required=None, allow=()),
    'resume': FitPolicy(min_fraction=1.0, required=None, allow=(), exact=True),
}


def resolve_policy(policy: Union[str, FitPolicy] = 'init',
                   settings: Optional[dict] = None) -> FitPolicy:
    """The policy named ``policy`` changed by a ``checkpoint_fit`` setting.

    Args:
        policy: ``'init'``, ``'evaluate'``, ``'resume'`` or a :class:`FitPolicy`.
        settings: some of ``partial`` (bool), ``min_fraction`` (0 to 1), ``required`` (module
            names, or None for all) and ``allow`` (regexes, added to the policy's own). An
            exact policy (``'resume'``) ignores them.

    Raises:
        ValueError: for an unknown policy, an unknown setting or a value of the wrong kind.
    """
    if isinstance(policy, str):
        if policy not in POLICIES:
            raise ValueError(f'unknown checkpoint fit policy {policy!r}; expected one of '
                             f'{sorted(POLICIES)}')
        policy = POLICIES[policy]
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(SETTING_KEYS))
    if unknown:
        raise ValueError(f'checkpoint_fit: unknown keys {unknown}; expected some of '
                         f'{list(SETTING_KEYS)}')
    if policy.exact or not settings:
        return policy
    changes = {}
    if 'partial' in settings:
        if not isinstance(settings['partial'], bool):
            raise ValueError(f"checkpoint_fit: partial must be True or False, got "
                             f"{settings['partial']!r}")
        changes['partial'] = settings['partial']
    if 'min_fraction' in settings:
        value = settings['min_fraction']
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f'checkpoint_fit: min_fraction must be a number in [0, 1], got '
                             f'{value!r}')
        changes['min_fraction'] = float(value)
    if 'required' in settings:
        required = settings['required']
        if required is not None:
            required = _strings(required, 'required')
        changes['required'] = required
    if 'allow' in settings:
        allow = _strings(settings['allow'], 'allow')
        for pattern in allow:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f'checkpoint_fit: allow pattern {pattern!r} is not a regular '
                                 f'expression: {error}') from None
        changes['allow'] = policy.allow + allow
    return replace(policy, **changes)


def _strings(value, name: str) -> Tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f'checkpoint_fit: {name} must be a list of strings, got {value!r}')
    return tuple(value)


@dataclass
class FitReport:
    """How a state dict fits a model (see :func:`check_fit`).

    Attributes:
        checkpoint: the checkpoint's name, as given.
        model: the model's description (class, and its backbone's class).
        modules: top-level module -> (tensors that load, tensors of the module).
        missing: model keys absent from the checkpoint.
        unexpected: checkpoint keys the model does not have.
        wrong_shapes: key -> (shape in the checkpoint, shape in the model).
        allowed: missing or wrongly-shaped keys that the policy expects.
        problems: why the checkpoint does not fit; empty when it fits.
    """
    checkpoint: str
    model: str
    modules: Dict[str, Tuple[int, int]]
    missing: List[str]
    unexpected: List[str]
    wrong_shapes: Dict[str, Tuple[tuple, tuple]]
    allowed: List[str]
    problems: List[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not self.problems

    @property
    def loaded(self) -> int:
        return sum(loaded for loaded, _ in self.modules.values())

    def shares(self) -> str:
        """``backbone 186/188 (98.9%), neck 0/20 (0.0%)``."""
        return ', '.join(f'{name} {loaded}/{total} ({100 * loaded / total:.1f}%)'
                         for name, (loaded, total) in self.modules.items())

    def details(self) -> str:
        """Counts and the first names of the missing, unexpected and wrongly-shaped keys."""
        wrong = [f'{k} {tuple(c)} in the checkpoint, {tuple(m)} in the model'
                 for k, (c, m) in self.wrong_shapes.items()]
        lines = [f'tensors loaded by module: {self.shares()}',
                 f'missing {_head(self.missing)}', f'unexpected {_head(self.unexpected)}',
                 f'wrong shapes {_head(wrong)}']
        if self.allowed:
            lines.append(f'expected to differ (allowed) {_head(self.allowed)}')
        return '\n  '.join(lines)


def _head(names: Sequence[str]) -> str:
    if not names:
        return '(0)'
    more = ', ...' if len(names) > SHOWN else ''
    return f'({len(names)}): ' + ', '.join(names[:SHOWN]) + more


def unwrap(model: nn.Module) -> nn.Module:
    """The module mmengine loads a state dict into: without DDP-like wrappers and without a
    test-time-augmentation model around it (as ``mmengine.runner.load_state_dict`` does)."""
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


def describe(model: nn.Module) -> str:
    """``ImageClassifier (backbone QuadMamba)``, or the class name."""
    backbone = getattr(model, 'backbone', None)
    name = type(model).__name__
    return f'{name} (backbone {type(backbone).__name__})' if isinstance(backbone,
                                                                      nn.Module) else name


def compare(model: nn.Module, state_dict: Dict[str, torch.Tensor], checkpoint_name: str,
            policy: Union[str, FitPolicy] = 'init', **settings) -> FitReport:
    """The :class:`FitReport` of loading ``state_dict`` into ``model`` under ``policy``
    (changed by ``settings``, see :func:`resolve_policy`); raises nothing about the fit."""
    policy = resolve_policy(policy, settings)
    model = unwrap(model)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    allow = [re.compile(p) for p in policy.allow]

    def allowed(key: str) -> bool:
        return any(p.search(key) for p in allow)

    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    wrong = {k: (given[k], expected[k])
             for k in expected if k in given and given[k] != expected[k]}
    skipped = [k for k in expected if (k in wrong or k not in given) and allowed(k)]

    modules: Dict[str, List[int]] = {}
    fitting: Dict[str, int] = {}  # loaded or allowed
    for key in expected:
        name = key.split('.', 1)[0]
        counts = modules.setdefault(name, [0, 0])
        counts[1] += 1
        loads = key in given and key not in wrong
        counts[0] += loads
        fitting[name] = fitting.get(name, 0) + (loads or allowed(key))
    report = FitReport(checkpoint_name, describe(model),
                       {k: (v[0], v[1]) for k, v in modules.items()}, missing, unexpected, wrong,
                       skipped)

    problems = report.problems
    if policy.exact:
        if missing or unexpected or wrong:
            problems.append('a checkpoint to resume from must hold exactly the tensors of the '
                            'model')
        return report
    if report.loaded == 0:
        problems.append('none of its tensors loads into the model')
        return report
    if policy.partial:
        return report
    bad_shapes = [k for k in wrong if not allowed(k)]
    if bad_shapes:
        problems.append(f'{len(bad_shapes)} tensors have another shape than in the model')
    if policy.required is None:
        units = {name: (fitting[name], modules[name][1]) for name in modules}
    else:
        units = {name: (fitting[name], modules[name][1])
                 for name in policy.required if name in modules}
        if not units:  # e.g. a bare backbone or a timm model
            units = {'the model': (sum(fitting.values()), len(expected))}
    for name, (fits, total) in units.items():
        if fits < policy.min_fraction * total:
            loaded = modules[name][0] if name in modules else report.loaded
            problems.append(f'{name}: {loaded} of its {total} tensors load, at least '
                            f'{100 * policy.min_fraction:g}% needed')
    return report


def check_fit(model: nn.Module, state_dict: Dict[str, torch.Tensor], checkpoint_name: str,
              policy: Union[str, FitPolicy] = 'init', logger: Optional[str] = 'current',
              **settings) -> FitReport:
    """Check that ``state_dict`` fits ``model`` before it is loaded, and log the share of the
    model's tensors that load, by top-level module.

    Usable by any loader, e.g. a timm pretrained-file loader::

        check_fit(model, state_dict, path, allow=[r'^head\\.'])

    Args:
        model: the module the state dict is loaded into (a wrapper is unwrapped).
        state_dict: the tensors to load, under the model's key names (prefix removed).
        checkpoint_name: the file or URL, for messages.
        policy: ``'init'`` (default), ``'evaluate'``, ``'resume'`` or a :class:`FitPolicy`.
        logger: the mmengine logger for the report, or None for no report.
        **settings: a ``checkpoint_fit`` setting: ``partial``, ``min_fraction``,
            ``required``, ``allow`` (see :func:`resolve_policy`).

    Returns:
        The :class:`FitReport`.

    Raises:
        CheckpointFitError: naming the checkpoint, the model and why it does not fit, with
            counts and the first names of the missing, unexpected and wrongly-shaped keys.
    """
    report = compare(model, state_dict, checkpoint_name, policy, **settings)
    if not report.fits:
        # Loading part of it on purpose is an option only when a part fits.
        hint = f'\n  {HINT}' if report.loaded and not resolve_policy(policy).exact else ''
        raise CheckpointFitError(
            f'checkpoint {checkpoint_name} does not match the model {report.model}: '
            f'{"; ".join(report.problems)}.\n  {report.details()}{hint}', report)
    if logger is not None:
        print_log(f'checkpoint {checkpoint_name} fits {report.model}: tensors loaded by '
                  f'module: {report.shares()}' + (f'; {len(report.allowed)} expected to differ'
                                                  if report.allowed else ''), logger=logger)
    return report


def is_local(path: str) -> bool:
    """A path of the local file system (not ``s3://``, ``https://``, ``torchvision://``...)."""
    return '://' not in str(path)


def read_checkpoint(path: str, map_location='cpu') -> dict:
    """Load a local checkpoint weights-only, or raise :class:`CheckpointFileError` saying
    what is wrong with the file (missing, not a torch checkpoint, unreadable).

    Files of torch's zip format are memory-mapped (their tensors are read when used); files
    of the legacy format load whole.
    """
    if not osp.isfile(path):
        raise CheckpointFileError(f'checkpoint not found: {path}')
    if not zipfile.is_zipfile(path):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except Exception:  # any failure of the legacy unpickler: garbage bytes
            raise CheckpointFileError(f'{path} is not a torch checkpoint (not a zip archive: '
                                      'truncated or corrupt?)') from None
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile) as error:
        raise CheckpointFileError(f'cannot read checkpoint {path}: {error}') from None


def state_dict_of(checkpoint: dict,
                  revise_keys: Sequence[Tuple[str, str]] = ((r'^module\.', ''), )) -> dict:
    """The weights of a loaded checkpoint (its ``state_dict``, or the whole dict), with the
    key revisions mmengine's ``Runner.load_checkpoint`` applies."""
    state_dict = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint,
                                                                        dict) else checkpoint
    if not isinstance(state_dict, dict):
        raise CheckpointFitError(f'expected a checkpoint holding a state dict, got '
                                 f'{type(state_dict).__name__}')
    for pattern, replacement in revise_keys:
        state_dict = {re.sub(pattern, replacement, k): v for k, v in state_dict.items()}
    return state_dict


def check_file_fit(model: nn.Module, path: str, policy: Union[str, FitPolicy] = 'evaluate',
                   settings: Optional[dict] = None) -> FitReport:
    """Read the local checkpoint ``path`` (weights-only, memory-mapped) and
    :func:`check_fit` it against ``model``."""
    return check_fit(model, state_dict_of(read_checkpoint(path)), path, policy,
                     **dict(settings or {}))


def run_settings() -> dict:
    """The ``checkpoint_fit`` setting of the run in progress (left by
    :class:`CheckpointFitHook`), or ``{}``."""
    return dict(MessageHub.get_current_instance().get_info(RUN_SETTINGS_KEY) or {})


def missing_pretrained_message(module: nn.Module, path: str) -> str:
    return (f'{path} not found: {type(module).__name__} starts from random weights. This file '
            'is an ImageNet classifier checkpoint of the same arch: train one with the '
            'matching config of configs/quadmamba/ (tools/train.py), or convert the released '
            'weights with tools/model_converters/quadmamba2mm.py (README, "Upstream '
            'checkpoints").')


def load_pretrained(module: nn.Module,
                    checkpoint: str,
                    prefix: Optional[str] = None,
                    map_location='cpu',
                    settings: Optional[dict] = None) -> Optional[FitReport]:
    """mmengine's ``Pretrained`` initialisation, checked: load ``checkpoint`` (the keys under
    ``prefix``, without it) into ``module`` if it fits under the ``'init'`` policy.

    Args:
        module: the module to initialise.
        checkpoint: a local path, or a URL / ``torchvision://`` / ``open-mmlab://`` name.
        prefix: take only the keys that start with it (e.g. ``'backbone.'``), without it.
        map_location: as ``torch.load``. Default: ``'cpu'``.
        settings: a ``checkpoint_fit`` setting; default: the run's (:func:`run_settings`).

    Returns:
        The :class:`FitReport`, or None when the local file does not exist (one warning, and
        the module keeps its initialisation).

    Raises:
        CheckpointFileError: the file is not a readable torch checkpoint.
        CheckpointFitError: the checkpoint does not fit ``module``.
    """
    from mmengine.model.weight_init import update_init_info
    from mmengine.runner.checkpoint import CheckpointLoader, load_state_dict

    checkpoint = str(checkpoint)
    if is_local(checkpoint) and not osp.exists(checkpoint):
        print_log(missing_pretrained_message(module, checkpoint), logger='current',
                  level=logging.WARNING)
        return None
    if is_local(checkpoint):
        loaded = read_checkpoint(checkpoint, map_location)
    else:
        loaded = CheckpointLoader.load_checkpoint(checkpoint, map_location, logger='current')
    state_dict = state_dict_of(loaded, revise_keys=())
    name = checkpoint
    if prefix:
        prefix = prefix if prefix.endswith('.') else prefix + '.'
        selected = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not selected:
            starts = sorted({k.split('.', 1)[0] + '.' for k in state_dict})
            raise CheckpointFitError(
                f'checkpoint {checkpoint} does not match the model {describe(module)}: none of '
                f'its keys starts with the prefix {prefix!r} (its keys start with '
                f'{starts[:SHOWN]}{" ..." if len(starts) > SHOWN else ""}).')
        state_dict, name = selected, f"{checkpoint} (keys under '{prefix}')"
    report = check_fit(module, state_dict, name, 'init',
                       **(run_settings() if settings is None else dict(settings)))
    load_state_dict(module, state_dict, strict=False, logger='current')
    if hasattr(module, '_params_init_info'):  # mmengine's record of how parameters were set
        update_init_info(module, init_info=f'Pretrained: loaded from {name}, fit checked')
    return report


def init_weights_checked(module, base_init_weights: Callable[[], None]) -> None:
    """``BaseModule.init_weights`` for ``module`` with its ``Pretrained`` init_cfg entries
    loaded by :func:`load_pretrained` instead of mmengine's ``PretrainedInit``.

    Args:
        module: an mmengine ``BaseModule``.
        base_init_weights: its ``BaseModule.init_weights`` (``super().init_weights``), run
            for the other init_cfg entries and the bookkeeping.
    """
    from mmengine.model.weight_init import PretrainedInit

    cfgs = module.init_cfg
    entries = list(cfgs) if isinstance(cfgs, (list, tuple)) else [cfgs] if cfgs else []
    pretrained = [c for c in entries if c.get('type') in ('Pretrained', PretrainedInit)]
    if not pretrained or module.is_init:
        base_init_weights()
        return
    others = [c for c in entries if all(c is not p for p in pretrained)]
    module.init_cfg = others or None
    try:
        base_init_weights()
    finally:
        module.init_cfg = cfgs
    for cfg in pretrained:
        unknown = sorted(set(cfg) - {'type', 'checkpoint', 'prefix', 'map_location'})
        if unknown or 'checkpoint' not in cfg:
            raise ValueError(f"a Pretrained init_cfg takes checkpoint, prefix and map_location; "
                             f"got {dict(cfg)}")
        load_pretrained(module, cfg['checkpoint'], cfg.get('prefix'),
                        cfg.get('map_location', 'cpu'))


@HOOKS.register_module()
class CheckpointFitHook(Hook):
    """Checks every checkpoint the Runner loads against its model, and gives the run's
    ``checkpoint_fit`` setting to ``QuadMamba``'s ``Pretrained`` initialisation.

    - ``before_run``: a local ``load_from`` that is not a readable torch checkpoint stops with
      :class:`CheckpointFileError`; the setting is recorded in the run's message hub (not
      saved in checkpoints) for :func:`load_pretrained`.
    - ``after_load_checkpoint`` (before the Runner copies the weights): :func:`check_fit`
      with the ``'resume'`` policy when resuming, else ``'evaluate'`` or ``'init'``.
    - ``after_run``: the setting is cleared.

    ``tools/train.py`` and ``tools/test.py`` add it (:func:`add_checkpoint_fit_hook`); with
    another launcher, add ``custom_hooks=[dict(type='CheckpointFitHook')]`` to the config.

    Args:
        evaluate: check loads as for evaluation (every tensor must load) rather than as a
            training start. Default: False.
        **settings: a ``checkpoint_fit`` setting (``partial``, ``min_fraction``,
            ``required``, ``allow``); default: the config's ``checkpoint_fit``.
    """
    priority = 'VERY_HIGH'  # before other hooks change the loaded checkpoint

    def __init__(self, evaluate: bool = False, **settings) -> None:
        resolve_policy('init', settings)  # a bad setting fails when the hook is built
        self.evaluate = evaluate
        self.settings = settings or None

    def _settings(self, runner) -> dict:
        if self.settings is not None:
            return dict(self.settings)
        settings = runner.cfg.get('checkpoint_fit') or {}
        if not isinstance(settings, dict):
            raise ValueError(f'checkpoint_fit must be a dict of {list(SETTING_KEYS)}, got '
                             f'{settings!r}')
        return dict(settings)

    def before_run(self, runner) -> None:
        settings = self._settings(runner)
        resolve_policy('init', settings)
        runner.message_hub.update_info(RUN_SETTINGS_KEY, settings, resumed=False)
        load_from = runner._load_from  # what load_or_resume() loads (no public accessor)
        if load_from and is_local(load_from):
            read_checkpoint(load_from)

    def after_run(self, runner) -> None:
        # Later modules built in this process (outside a run) get the default policy again.
        runner.message_hub.update_info(RUN_SETTINGS_KEY, {}, resumed=False)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if runner._resume:
            policy = 'resume'
        else:
            policy = 'evaluate' if self.evaluate else 'init'
        name = runner._load_from or f'the latest checkpoint in {runner.work_dir}'
        check_fit(runner.model, state_dict_of(checkpoint), str(name), policy,
                  **self._settings(runner))


def add_checkpoint_fit_hook(cfg, evaluate: bool = False) -> None:
    """Make the run of ``cfg`` (an mmengine ``Config``) check its checkpoints: add a
    :class:`CheckpointFitHook` to ``custom_hooks``, or set ``evaluate`` on the one the
    config has."""
    hooks = list(cfg.get('custom_hooks') or [])
    for hook in hooks:
        if hook.get('type') in ('CheckpointFitHook', CheckpointFitHook):
            hook['evaluate'] = evaluate
            break
    else:
        hooks.append(dict(type='CheckpointFitHook', evaluate=evaluate))
    cfg.custom_hooks = hooks


def exit_unless_fits(model: nn.Module, path: str, settings: Optional[dict] = None,
                     policy: str = 'evaluate') -> FitReport:
    """For command-line tools: :func:`check_file_fit`, ending the program with the message
    (no traceback) when the file is bad or does not fit."""
    try:
        return check_file_fit(model, path, policy, settings)
    except (CheckpointFileError, CheckpointFitError) as error:
        raise SystemExit(str(error)) from None


def exit_on_checkpoint_errors(run: Callable[[], Any]) -> Any:
    """For command-line tools: call ``run`` (``runner.train``, ``runner.test``) and end the
    program with the message, no traceback, when a checkpoint is unreadable or does not fit."""
    try:
        return run()
    except (CheckpointFileError, CheckpointFitError) as error:
        raise SystemExit(str(error)) from None
