"""The shared command line of tools/train.py and tools/test.py: arguments and config loading."""
import argparse
import os
import os.path as osp

from mmengine.config import Config, DictAction

from .quiet import VERBOSE_ENV, quiet_tools
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
    parser.add_argument('--verbose', action='store_true',
                        help="log torch's build settings with the environment (as "
                        f'{VERBOSE_ENV}=1 does)')


def load_config(args: argparse.Namespace) -> Config:
    """The config with the command-line overrides, launcher and work dir applied (default
    ``./work_dirs/<config name>``); fails early for a config of no known toolbox. The
    output stays quiet (``quadmamba_mm.runtime.quiet``) unless ``--verbose``."""
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    quiet_tools(getattr(args, 'verbose', False))
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    toolbox_of(cfg)
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
        './work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg
