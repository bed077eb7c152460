"""``torch.compile`` for training: the backbone is compiled, not mmengine's ``train_step``.

With ``compile=True`` (or a dict) in a config, mmengine's Runner wraps ``model.train_step`` in
``torch.compile``. ``train_step`` also runs the optimizer wrapper's backward and step, and
dynamo fails inside ``torch.optim.Adam.step`` (torch 2.14.1, mmengine 0.10.7:
``InternalTorchDynamoError: 'UserDefinedDictVariable' object has no attribute 'items'``,
after minutes of tracing). The tools therefore take the ``compile`` key (and the
``--compile`` flag) away from the Runner and compile the model's backbone in place with
``nn.Module.compile``: it is one graph with no breaks (the scan is a custom op), the state
dict keeps its keys, and data preprocessing, heads, losses and the optimizer step stay eager.
"""
from typing import Optional, Sequence

import torch.nn as nn
from mmengine.config import Config
from mmengine.logging import print_log

DEFAULT_MODULES = ('backbone', )


def take_compile_cfg(cfg: Config, flag: bool = False) -> Optional[dict]:
    """Remove ``cfg.compile`` (so the Runner does not compile ``train_step``) and return the
    ``torch.compile`` keyword arguments to apply to the backbone, or None for no compiling.

    ``compile=True`` or the flag means default arguments; a dict is passed to
    ``torch.compile`` (``backend``, ``mode``, ``dynamic``, ``fullgraph``, ``options``) except
    its key ``modules``: the attributes of the model to compile (default ``('backbone',)``).

    Args:
        cfg (Config): the run's config; changed in place.
        flag (bool): the tool's ``--compile`` flag.

    Raises:
        TypeError: when ``compile`` is neither a bool, None nor a dict.
    """
    value = cfg.pop('compile', None)
    if value is None or value is False:
        value = {} if flag else None
    elif value is True:
        value = {}
    elif isinstance(value, dict):
        value = dict(value)
    else:
        raise TypeError(f'compile must be a bool or a dict of torch.compile arguments, got '
                        f'{type(value).__name__}: {value!r}')
    return value


def compile_modules(model: nn.Module, compile_kwargs: dict) -> Sequence[str]:
    """Compile ``model``'s submodules named by ``compile_kwargs['modules']`` (default the
    backbone) in place, unwrapping a distributed wrapper's ``module``; returns their names.

    Args:
        model (nn.Module): ``runner.model``, possibly wrapped (``MMDistributedDataParallel``).
        compile_kwargs (dict): from :func:`take_compile_cfg`.

    Raises:
        ValueError: when the model has no such submodule.
    """
    kwargs = dict(compile_kwargs)
    names = tuple(kwargs.pop('modules', DEFAULT_MODULES))
    model = getattr(model, 'module', model)
    for name in names:
        module = getattr(model, name, None)
        if not isinstance(module, nn.Module):
            raise ValueError(f'compile: the model ({type(model).__name__}) has no submodule '
                             f'{name!r} to compile; set compile.modules to some of '
                             f'{[n for n, _ in model.named_children()]}')
        module.compile(**kwargs)
    print_log(f'torch.compile({", ".join(f"{k}={v!r}" for k, v in kwargs.items())}) on '
              f'model.{", model.".join(names)}; the first iterations (and each new input size) '
              'are slow while it compiles', logger='current')
    return names
