"""Train a model from an mmpretrain, mmdet or mmsegmentation config.

    python tools/train.py CONFIG [--work-dir DIR] [--amp] [--compile] [--auto-scale-lr]
        [--resume [CKPT]] [--no-validate] [--cfg-options k=v ...] [--verbose]
        [--launcher {none,pytorch,slurm,mpi}]

The toolbox comes from the config's ``default_scope``; the arguments are the ones the three
toolboxes' own train.py scripts take. ``--resume`` alone resumes from the latest checkpoint in
the work dir; ``--resume CKPT`` from that file. Checkpoints and the ``last_checkpoint``
pointer are written atomically (``quadmamba_mm.checkpoints.atomic``), so a killed run
leaves no truncated file; a truncated one from elsewhere is skipped when resuming.
Multi-process runs come from ``tools/dist_train.sh`` (torchrun) or ``tools/slurm_train.sh``;
without GPUs the processes talk over gloo on the CPU, with GPUs over NCCL. A run restarted by
torchrun (``MAX_RESTARTS``) or requeued by Slurm resumes from its newest complete checkpoint
(``quadmamba_mm.engine.elastic``). Unusable training samples are skipped, named and counted,
and training stops at the first non-finite loss (``quadmamba_mm.engine.guards``). ``--amp`` is
mmengine's fp16 AMP where mmengine supports it and bf16 autocast on CPUs
(``quadmamba_mm.engine.amp``). ``--compile`` or ``compile=True|dict(...)`` in the config
compiles the backbone, not mmengine's ``train_step`` (``quadmamba_mm.runtime.compile``).
"""
import argparse

from mmengine.runner import Runner

from quadmamba_mm.checkpoints.fit import add_checkpoint_fit_hook, exit_on_checkpoint_errors
from quadmamba_mm.checkpoints.resume import (check_checkpoint, check_resume_matches,
                                             latest_complete_checkpoint)
from quadmamba_mm.engine.amp import enable_amp
from quadmamba_mm.engine.elastic import resume_after_restart, start_process_group
from quadmamba_mm.engine.guards import add_training_guards
from quadmamba_mm.runtime.compile import compile_modules, take_compile_cfg
from quadmamba_mm.runtime.distributed import finish_distributed
from quadmamba_mm.runtime.launch import add_common_args, load_config


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision: fp16 with a dynamic loss scale on GPUs, bf16 '
                        'autocast on CPUs')
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile the backbone (as compile=True in the config does)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the LR by the actual batch size (needs auto_scale_lr)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CKPT, or without a value from the latest checkpoint '
                        'in the work dir')
    parser.add_argument('--no-validate', action='store_true',
                        help='do not evaluate checkpoints during training')
    add_common_args(parser)
    return parser.parse_args()


def main():
    args = parse_args()
    cfg = load_config(args)
    if args.amp:
        enable_amp(cfg)
    # mmengine would compile train_step with the optimizer step in it; the backbone it is.
    compile_kwargs = take_compile_cfg(cfg, args.compile)
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise SystemExit('--auto-scale-lr needs auto_scale_lr.base_batch_size in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':  # none saved yet: start from scratch, as mmengine does
        cfg.load_from = latest_complete_checkpoint(cfg.work_dir)
        cfg.resume = cfg.load_from is not None
    elif args.resume is not None:
        check_checkpoint(args.resume)
        cfg.resume, cfg.load_from = True, args.resume
    if args.no_validate:
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None

    if args.launcher != 'none':  # before the Runner, so that the ranks agree on resuming
        start_process_group(cfg, args.launcher)
    resume_after_restart(cfg)  # restarted by torchrun or requeued by Slurm: --resume (auto)
    add_training_guards(cfg)  # skip unusable samples; stop at a non-finite loss
    add_checkpoint_fit_hook(cfg)  # load_from and Pretrained init_cfgs must fit the model
    runner = Runner.from_cfg(cfg)
    if cfg.get('resume') and cfg.load_from:
        check_resume_matches(runner.model, cfg.load_from)
    if compile_kwargs is not None:
        compile_modules(runner.model, compile_kwargs)
    exit_on_checkpoint_errors(runner.train)
    finish_distributed()


if __name__ == '__main__':
    main()
