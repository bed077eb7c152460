"""Parameter and FLOP counts with the selective scan counted, as the paper counts it.

mmengine's FlopAnalyzer traces the model and counts matmuls, convs, einsums and norms
(one multiply-add = 1 FLOP, fvcore's convention); a selective scan is opaque to it. Every
scan backend runs inside one ``quadmamba::selective_scan`` custom op node, counted here as
``9 * B * L * D * N``
(mamba's and VMamba's convention, which the QuadMamba paper uses).
"""
from typing import Tuple

from mmengine.analysis import FlopAnalyzer, parameter_count
from mmengine.analysis.jit_handles import get_shape
from torch import nn

SCAN_OP = 'quadmamba::selective_scan'


def selective_scan_flop_jit(inputs, outputs) -> int:
    """FLOPs of one traced scan, from ``A`` ``(K*D, N)`` (the only 2-D input) and ``delta``
    ``(B, K*D, L)`` (the first 3-D input with K*D channels). Orders and ``u`` are not used:
    with orders read in place ``u`` is the ``(B, D, L)`` map, yet K*D channels are scanned."""
    shapes = [tuple(s) for s in map(get_shape, inputs) if s is not None]
    matrices = [s for s in shapes if len(s) == 2]
    if len(matrices) != 1:
        raise ValueError(f'a selective scan has one 2-D input (A), got shapes {shapes}')
    channels, n_state = matrices[0]
    batch, _, length = next(s for s in shapes if len(s) == 3 and s[1] == channels)
    return 9 * batch * length * channels * n_state


def count_params_and_flops(model: nn.Module, inputs: Tuple) -> Tuple[int, int]:
    """``(parameters, FLOPs)`` of ``model(*inputs)``, scans included."""
    analyzer = FlopAnalyzer(model, inputs)
    analyzer.set_op_handle(**{SCAN_OP: selective_scan_flop_jit})
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    return parameter_count(model)[''], analyzer.total()
