"""Parameter and FLOP counts with the selective scan counted, as the paper counts it.

mmengine's FlopAnalyzer traces the model and counts matmuls, convs, einsums and norms
(one multiply-add = 1 FLOP, fvcore's convention); a selective scan is opaque to it. Every
scan backend runs inside one ``quadmamba::selective_scan`` custom op node, counted here as
``9 * B * L * D * N`` (mamba's and VMamba's convention, which the QuadMamba paper uses), plus
the delta projection where the scan applies it.
"""
from typing import Tuple

from mmengine.analysis import FlopAnalyzer, parameter_count
from mmengine.analysis.jit_handles import get_shape
from torch import nn

SCAN_OP = 'quadmamba::selective_scan'


def selective_scan_flop_jit(inputs, outputs) -> int:
    """FLOPs of one traced scan, from its inputs by position (the op's schema): ``A``
    ``(K*D, N)``, ``B`` ``(batch, K, N, L)`` and, when the scan applies ``dt_proj`` itself,
    ``delta_proj_weight`` ``(K, D, R)``, whose ``B * L * K * D * R`` multiply-adds are counted
    as the einsum they replace would be. ``u`` is not used: with orders read in place it is
    the ``(B, D, L)`` map, yet K*D channels are scanned."""
    shapes = [get_shape(value) for value in inputs]
    (channels, n_state), (batch, _, _, length) = shapes[2], shapes[3]
    flops = 9 * batch * length * channels * n_state
    if shapes[7] is not None:  # delta_proj_weight
        flops += batch * length * channels * shapes[7][-1]
    return flops


def count_params_and_flops(model: nn.Module, inputs: Tuple) -> Tuple[int, int]:
    """``(parameters, FLOPs)`` of ``model(*inputs)``, scans included."""
    analyzer = FlopAnalyzer(model, inputs)
    analyzer.set_op_handle(**{SCAN_OP: selective_scan_flop_jit})
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    return parameter_count(model)[''], analyzer.total()
