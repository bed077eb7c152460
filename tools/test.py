"""Evaluate a checkpoint with an mmpretrain, mmdet or mmsegmentation config.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE.pkl] [--show]
        [--show-dir DIR] [--wait-time S] [--tta] [--cfg-options k=v ...] [--verbose]
        [--launcher {none,pytorch,slurm,mpi}]

The toolbox comes from the config's ``default_scope``. ``--show-dir`` saves every test
image drawn with its prediction, labels readable on small images (a relative folder goes
under ``work_dir/<timestamp>/``, as in mmdet; ``quadmamba_mm.runtime.show``), ``--out``
dumps the raw predictions; ``--tta`` uses the config's ``tta_model``
and ``tta_pipeline``.
"""
import argparse

import torch
from mmengine.runner import Runner

from quadmamba_mm.checkpoints.fit import add_checkpoint_fit_hook, exit_on_checkpoint_errors
from quadmamba_mm.checkpoints.resume import check_checkpoint
from quadmamba_mm.runtime.distributed import finish_distributed, init_cpu_distributed
from quadmamba_mm.runtime.launch import add_common_args, load_config
from quadmamba_mm.runtime.show import enable_visualization


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', help='dump predictions to this pickle file')
    parser.add_argument('--show', action='store_true', help='show predictions in a window')
    parser.add_argument('--show-dir',
                        help='save every drawn prediction in this folder (a relative one goes '
                        'under work_dir/<timestamp>/)')
    parser.add_argument('--wait-time', type=float, default=2, help='seconds per shown image')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation')
    add_common_args(parser)
    return parser.parse_args()


def main():
    args = parse_args()
    cfg = load_config(args)
    check_checkpoint(args.checkpoint)
    cfg.load_from = args.checkpoint
    add_checkpoint_fit_hook(cfg, evaluate=True)  # every tensor of the model must load

    if args.show or args.show_dir:
        enable_visualization(cfg, args.show, args.show_dir, args.wait_time)
    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise SystemExit('--tta needs tta_model and tta_pipeline in the config')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if args.out:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise SystemExit('--out must be a .pkl or .pickle file')
        evaluators = cfg.test_evaluator
        evaluators = list(evaluators) if isinstance(evaluators, (list, tuple)) else [evaluators]
        cfg.test_evaluator = evaluators + [dict(type='DumpResults', out_file_path=args.out)]

    if args.launcher != 'none' and not torch.cuda.is_available():
        init_cpu_distributed(cfg, args.launcher)
    runner = Runner.from_cfg(cfg)
    exit_on_checkpoint_errors(runner.test)
    finish_distributed()


if __name__ == '__main__':
    main()
