import os

import torch

# Without a GPU, Triton kernels run in Triton's interpreter (set before triton is imported).
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

# python -m quadmamba_kernels.compile_check --sources tests: every Triton scan launch of the
# tests is appended to this file (the tests still run).
if os.environ.get('QM_TRITON_LAUNCH_LOG'):
    from quadmamba_kernels.compile_check import append_to_log
    append_to_log(os.environ['QM_TRITON_LAUNCH_LOG'])
