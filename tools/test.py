"""Evaluate a checkpoint with an mmpretrain, mmdet or mmsegmentation config.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE.pkl] [--show]
        [--show-dir DIR] [--wait-time S] [--tta] [--cfg-options k=v ...]
        [--launcher {none,pytorch,slurm,mpi}]

The toolbox comes from the config's ``default_scope``. ``--show-dir`` saves drawn
predictions, ``--out`` dumps the raw predictions; ``--tta`` uses the config's ``tta_model``
and ``tta_pipeline``.
"""
import argparse

import torch
from mmengine.config import Config
from mmengine.runner import Runner

from quadmamba_mm.checkpoints.fit import add_checkpoint_fit_hook, exit_on_checkpoint_errors
from quadmamba_mm.checkpoints.resume import check_checkpoint
from quadmamba_mm.runtime.distributed import finish_distributed, init_cpu_distributed
from quadmamba_mm.runtime.launch import add_common_args, load_config
from quadmamba_mm.runtime.toolbox import toolbox_of


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', help='dump predictions to this pickle file')
    parser.add_argument('--show', action='store_true', help='show predictions in a window')
    parser.add_argument('--show-dir', help='save drawn predictions in this folder')
    parser.add_argument('--wait-time', type=float, default=2, help='seconds per shown image')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation')
    add_common_args(parser)
    return parser.parse_args()


def enable_visualization(cfg: Config, toolbox: str, args) -> None:
    """The three toolboxes name their visualization hook's switches differently."""
    hook = cfg.default_hooks.get('visualization')
    if hook is None:
        raise SystemExit('--show/--show-dir need default_hooks.visualization in the config')
    if toolbox == 'mmpretrain':
        hook.update(enable=True, show=args.show, wait_time=args.wait_time,
                    out_dir=args.show_dir)
        return
    hook.update(draw=True, show=args.show, wait_time=args.wait_time)
    if args.show_dir:
        if toolbox == 'mmdet':
            hook.test_out_dir = args.show_dir
        else:  # mmseg saves through its visualizer
            cfg.visualizer.save_dir = args.show_dir


def main():
    args = parse_args()
    cfg = load_config(args)
    toolbox = toolbox_of(cfg)
    check_checkpoint(args.checkpoint)
    cfg.load_from = args.checkpoint
    add_checkpoint_fit_hook(cfg, evaluate=True)  # every tensor of the model must load

    if args.show or args.show_dir:
        enable_visualization(cfg, toolbox, args)
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
