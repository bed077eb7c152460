"""Parameter and FLOP counts with the selective scan counted, as the paper counts it.

mmengine's FlopAnalyzer traces the model and counts matmuls, convs, einsums and norms
(one multiply-add = 1 FLOP, fvcore's convention); a selective scan is opaque to it. Every
scan backend runs inside one ``SelectiveScanFn`` node, counted here as ``9 * B * L * D * N``
(mamba's and VMamba's convention, which the QuadMamba paper uses).
"""
from typing import Tuple

from mmengine.analysis import FlopAnalyzer, parameter_count
from mmengine.analysis.jit_handles import get_shape
from torch import nn

SCAN_OP = 'prim::PythonOp.SelectiveScanFn'


def selective_scan_flop_jit(inputs, outputs) -> int:
    """FLOPs of one traced scan: ``u`` is ``(B, D, L)`` and ``A`` the first 2-D input."""
    shapes = [get_shape(v) for v in inputs]
    batch, channels, length = shapes[0]
    n_state = next(s for s in shapes[1:] if s is not None and len(s) == 2)[1]
    return 9 * batch * length * channels * n_state


def count_params_and_flops(model: nn.Module, inputs: Tuple) -> Tuple[int, int]:
    """``(parameters, FLOPs)`` of ``model(*inputs)``, scans included."""
    analyzer = FlopAnalyzer(model, inputs)
    analyzer.set_op_handle(**{SCAN_OP: selective_scan_flop_jit})
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    return parameter_count(model)[''], analyzer.total()
