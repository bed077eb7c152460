"""Process groups for the tools: CPU multi-process runs over gloo, and a clean finish."""
import logging
import os
import sys

import torch.distributed as dist


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
