"""Keeping the tools' output to what a user reads: no setuptools warning, no torch build dump.

Two things of mmengine 0.10.7 fill the first screen of every run:

* ``pkg_resources is deprecated as an API`` (a ``UserWarning`` of setuptools, printed once
  per ``mmdet::``/``mmseg::``/``mmpretrain::`` base of a config). mmengine's ``Config``
  resolves each such base with ``mmengine.utils.is_installed``, which imports *and reloads*
  ``pkg_resources`` on every call, and reloading re-runs setuptools' warning. The setup pins
  ``setuptools<82`` because mmcv's build still needs ``pkg_resources``, so the module is
  there and warns. :func:`use_metadata_package_lookup` gives ``Config`` the same two answers
  (is the package installed, where is it) from :mod:`importlib.metadata`, so
  ``pkg_resources`` is never imported while a config loads.
* The Runner's "System environment" block includes ``torch.__config__.show()``, a
  multi-kilobyte dump of torch's build settings. :func:`hide_build_settings` leaves it out
  unless asked for (``--verbose`` or ``QM_VERBOSE=1``).
"""
import importlib.metadata
import importlib.util
import os
import os.path as osp
from collections import OrderedDict
from typing import Callable

import mmengine.config.config as mmengine_config
import mmengine.runner.runner as mmengine_runner

BUILD_SETTINGS_KEY = 'PyTorch compiling details'
VERBOSE_ENV = 'QM_VERBOSE'


def verbose_requested(flag: bool = False) -> bool:
    """Whether full environment output is wanted: the ``--verbose`` flag or ``QM_VERBOSE=1``."""
    return flag or os.environ.get(VERBOSE_ENV, '') not in ('', '0')


def _top_level_modules(distribution: importlib.metadata.Distribution) -> list:
    text = distribution.read_text('top_level.txt') or ''
    return [line.strip() for line in text.splitlines() if line.strip()]


def is_installed(package: str) -> bool:
    """``mmengine.utils.is_installed`` without ``pkg_resources``: a distribution of that name
    exists, or a module of that name can be imported from a file.

    Args:
        package (str): distribution or module name, e.g. ``'mmsegmentation'``.
    """
    try:
        importlib.metadata.distribution(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        spec = importlib.util.find_spec(package)
        return spec is not None and spec.origin is not None


def get_installed_path(package: str) -> str:
    """``mmengine.utils.get_installed_path`` without ``pkg_resources``: the folder of the
    package's top-level module (``mmsegmentation`` -> ``.../site-packages/mmseg``).

    Args:
        package (str): distribution or module name.

    Raises:
        ModuleNotFoundError: when neither a distribution nor a module of that name exists.
    """
    try:
        distribution = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        distribution = None
    if distribution is not None:
        location = str(distribution.locate_file(''))
        for module in (package, *_top_level_modules(distribution)):
            if osp.exists(osp.join(location, module)):
                return osp.join(location, module)
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f'package {package!r} is neither installed nor importable '
                                  'from a file (a namespace package has no single path)')
    return osp.dirname(spec.origin)


def use_metadata_package_lookup() -> None:
    """Make mmengine's ``Config`` resolve ``pkg::`` bases through :mod:`importlib.metadata`
    (see the module docstring for why). Idempotent."""
    mmengine_config.is_installed = is_installed
    mmengine_config.get_installed_path = get_installed_path


def _without_build_settings(collect_env: Callable[[], dict]) -> Callable[[], dict]:
    def collect_env_without_build_settings() -> dict:
        env = OrderedDict(collect_env())
        if BUILD_SETTINGS_KEY in env:
            env[BUILD_SETTINGS_KEY] = ('left out (torch.__config__.show(); '
                                       f'--verbose or {VERBOSE_ENV}=1 prints it)')
        return env

    collect_env_without_build_settings.full = collect_env
    return collect_env_without_build_settings


def hide_build_settings(verbose: bool = False) -> None:
    """Leave torch's build settings out of the Runner's environment log, or with ``verbose``
    put them back. Idempotent.

    Args:
        verbose (bool): log the full ``collect_env()`` as mmengine does.
    """
    full = getattr(mmengine_runner.collect_env, 'full', mmengine_runner.collect_env)
    mmengine_runner.collect_env = full if verbose else _without_build_settings(full)


def quiet_tools(verbose: bool = False) -> None:
    """Both of the above; ``verbose`` (or ``QM_VERBOSE=1``) keeps the build settings.

    Args:
        verbose (bool): the tool's ``--verbose`` flag.
    """
    use_metadata_package_lookup()
    hide_build_settings(verbose_requested(verbose))
