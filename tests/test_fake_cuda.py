"""The GPU path on a machine without a GPU: the backbone on fake CUDA tensors (device
placement, the Triton op dispatched, shapes, dtypes and strides), the fallback of ``'auto'``
when a Triton kernel fails, the host-side offset check, and the predicted DRAM traffic of a
training step.

Fake tensors cannot go through Triton's interpreter, so under ``TRITON_INTERPRET=1`` (what
conftest.py sets on a CPU machine) each test runs itself again in a child process with the
Triton compiler's launch path (no kernel is launched on fake tensors)."""
import functools
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

pytest.importorskip('triton')
INTERPRETED = os.environ.get('TRITON_INTERPRET') == '1'


def in_compiler_process(test):
    """Run ``test`` in a child process without the Triton interpreter (if it is on here)."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        if not INTERPRETED:
            return test(*args, **kwargs)
        env = dict(os.environ, TRITON_INTERPRET='0')
        done = subprocess.run(
            [sys.executable, '-m', 'pytest', '-q', '-x', '-p', 'no:cacheprovider',
             f'{__file__}::{test.__name__}'], env=env, capture_output=True, text=True,
            timeout=900, cwd=os.path.dirname(__file__))
        assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]

    return run


class OpLog(TorchDispatchMode):
    """The quadmamba ops dispatched while it is active."""

    def __enter__(self):
        self.ops = []
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).startswith('quadmamba.'):
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def layout(t: torch.Tensor):
    return tuple(t.shape), t.dtype, t.stride()


@in_compiler_process
def test_backbone_on_fake_cuda_runs_the_triton_op():
    """QuadMamba-Li and -S on 'cuda' fake tensors, training (forward, then the scan's
    backward op) and eval, fp32 and bf16 autocast: only the Triton op and its backward op
    run the scan, nothing mixes devices, and the outputs have the shapes, dtypes and
    strides of the same model run for real on the CPU."""
    from quadmamba_mm.analysis.triton_launches import (fake_cuda_backbone, run_backbone,
                                                       to_fake_cuda)
    from quadmamba_mm.models import QuadMamba
    for arch in ('li', 's'):
        torch.manual_seed(0)
        real = QuadMamba(arch=arch, out_indices=(0, 1, 2, 3), scan_backend='chunked')
        with torch.no_grad():
            expected = [layout(o) for o in real.eval()(torch.randn(2, 3, 64, 64))]
        for training in (True, False):
            for amp in (None, torch.bfloat16):
                model = QuadMamba(arch=arch, out_indices=(0, 1, 2, 3))
                with fake_cuda_backbone() as mode, OpLog() as log:
                    outs = run_backbone(to_fake_cuda(model, mode), 64, training, amp)
                where = f'{arch} training={training} amp={amp}'
                assert all(o.device.type == 'cuda' for o in outs), where
                assert 'quadmamba.selective_scan_triton.default' in log.ops, where
                assert ('quadmamba.selective_scan_triton_backward.default' in log.ops) == \
                    training, where
                assert not any(op.startswith('quadmamba.selective_scan.') for op in log.ops)
                if amp is None:
                    assert [layout(o) for o in outs] == expected, where
                else:  # the stage outputs keep the autocast dtype of their last layer
                    assert [layout(o)[::2] for o in outs] == [e[::2] for e in expected], where
                if training:
                    grads = [p.grad for p in model.parameters() if p.requires_grad]
                    assert all(g is not None and g.device.type == 'cuda' for g in grads), where


@in_compiler_process
def test_fake_outputs_match_what_the_host_code_allocates():
    """The Triton op's fake implementation (its host code on fake tensors) gives the shapes,
    dtypes and strides the host code gives real tensors, channel-last maps included."""
    from quadmamba_kernels import triton_scan
    from quadmamba_kernels.fake_cuda import fake_cuda

    def inputs(channel_last, dtype):
        g = torch.Generator().manual_seed(0)
        u = torch.randn(2, 6, 40, generator=g).to(dtype)
        if channel_last:
            u = u.transpose(1, 2).contiguous().transpose(1, 2)
        return dict(u=u, delta=torch.randn(2, 12, 40, generator=g).to(dtype),
                    A=-torch.rand(12, 1, generator=g), B=torch.randn(2, 2, 1, 40).to(dtype),
                    C=torch.randn(2, 2, 1, 40).to(dtype), D=torch.ones(12),
                    delta_bias=torch.zeros(12))

    orders = torch.stack([torch.arange(40), torch.arange(40).flip(0)])[None].int()
    for channel_last in (False, True):
        for dtype in (torch.float32, torch.bfloat16):
            real = inputs(channel_last, dtype)
            args = (real['u'], real['delta'], real['A'], real['B'], real['C'], real['D'],
                    real['delta_bias'])
            # The host code for real, its launches left out (no GPU here).
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(triton_scan, '_launch', lambda *a, **k: None)
                y, states = triton_scan.selective_scan_triton(*args, True, orders)
                grads = triton_scan.selective_scan_triton_backward(y, *args, True, states,
                                                                   orders)
            with fake_cuda() as mode:
                fake = [mode.from_tensor(t).cuda() for t in args]
                fy, fstates = triton_scan.selective_scan_triton_op(
                    *fake, mode.from_tensor(orders).cuda(), None, True)
                fgrads = triton_scan.selective_scan_triton_backward_op(
                    fy, *fake, fstates, mode.from_tensor(orders).cuda(), None, True)
            where = f'channel_last={channel_last} {dtype}'
            assert layout(fy) == layout(y) and layout(fstates) == layout(states), where
            assert [layout(g) for g in fgrads] == [layout(g) for g in grads], where


@in_compiler_process
def test_auto_falls_back_when_a_triton_kernel_fails(monkeypatch):
    """A Triton kernel that cannot compile on the user's GPU: 'auto' warns once, naming the
    error and how to choose a backend, and scans with the chunked PyTorch scan; an explicit
    backend='triton' raises."""
    from triton.runtime.errors import OutOfResources

    from quadmamba_kernels import selective_scan, triton_probe, triton_scan
    from quadmamba_kernels.fake_cuda import fake_cuda
    from quadmamba_mm.analysis.triton_launches import (fake_cuda_backbone, run_backbone,
                                                       to_fake_cuda)
    from quadmamba_mm.models import QuadMamba

    def fail(*args, **kwargs):
        raise OutOfResources(262144, 232448, 'shared memory')

    monkeypatch.setattr(triton_scan, '_launch', fail)
    monkeypatch.setattr(triton_probe, '_RESULTS', {})
    with fake_cuda():
        u = torch.randn(1, 8, 32, device='cuda')
        args = (u, torch.randn(1, 8, 32, device='cuda'), -torch.ones(8, 1, device='cuda'),
                torch.randn(1, 2, 1, 32, device='cuda'), torch.randn(1, 2, 1, 32,
                                                                   device='cuda'))
        with pytest.warns(RuntimeWarning, match=r"Triton selective scan failed .*out of "
                          r"resource.*scan_backend='chunked'"):
            y = selective_scan(*args, delta_softplus=True)
        assert y.shape == u.shape and y.device.type == 'cuda'
        with warnings.catch_warnings():
            warnings.simplefilter('error')  # once only
            with OpLog() as log:
                selective_scan(*args, delta_softplus=True)
        assert log.ops == ['quadmamba.selective_scan.default']
        with pytest.raises(OutOfResources):
            selective_scan(*args, delta_softplus=True, backend='triton')

    # The backbone: one warning for the whole forward, then the chunked scan.
    monkeypatch.setattr(triton_probe, '_RESULTS', {})
    model = QuadMamba(arch='li')
    with pytest.warns(RuntimeWarning) as caught, fake_cuda_backbone() as mode, OpLog() as log:
        run_backbone(to_fake_cuda(model, mode), 64, True, None)
    assert len([w for w in caught if 'Triton selective scan failed' in str(w.message)]) == 1
    assert 'quadmamba.selective_scan_backward.default' in log.ops


@in_compiler_process
def test_offsets_inside_a_sample_are_checked():
    """The kernels index a sample with int32 offsets (the sample's base is int64): a sample
    that spans 2**31 elements or more is refused on the host, with its shape named."""
    from quadmamba_kernels import triton_scan
    from quadmamba_kernels.fake_cuda import fake_cuda
    with fake_cuda():
        def scan(length):
            args = (torch.empty(1, 8, length, device='cuda'),
                    torch.empty(1, 8, length, device='cuda'), torch.empty(8, 1, device='cuda'),
                    torch.empty(1, 1, 1, length, device='cuda'),
                    torch.empty(1, 1, 1, length, device='cuda'))
            return triton_scan.selective_scan_triton_op(*args, None, None, None, None, True)

        y, _ = scan(2**28)  # 8 * 2**28 - 1 < 2**31: fits
        assert y.shape == (1, 8, 2**28)
        with pytest.raises(ValueError, match=r'spans \d+ elements; the kernels index up to'):
            scan(2**28 + 1)


@in_compiler_process
def test_low_precision_models_on_fake_cuda():
    """QuadMamba-Li cast with .half() and .bfloat16() on 'cuda' fake tensors, eval and a
    training step: the Triton op runs (its inputs in the model's dtype, the scan in fp32
    inside), and the outputs come back in the model's dtype."""
    from quadmamba_mm.analysis.triton_launches import (fake_cuda_backbone, run_backbone,
                                                       to_fake_cuda)
    from quadmamba_mm.models import QuadMamba
    for dtype in (torch.float16, torch.bfloat16):
        for training in (False, True):
            model = QuadMamba(arch='li', out_indices=(0, 1, 2, 3)).to(dtype)
            with fake_cuda_backbone() as mode, OpLog() as log:
                outs = run_backbone(to_fake_cuda(model, mode), 64, training, None)
            where = f'{dtype} training={training}'
            assert all(o.dtype == dtype and o.device.type == 'cuda' for o in outs), where
            assert 'quadmamba.selective_scan_triton.default' in log.ops, where


@in_compiler_process
def test_quadmamba_s_training_step_traffic():
    """The predicted traffic, a gate against kernel or host changes that move more bytes:
    batch 128 at 224, bf16 autocast: 15.04 GB against a 10.44 GB minimum (1.44x) when
    this test was written (docs/benchmarks.md); no tensor copied into or out of the scan ops
    beyond 1% of the minimum; the cross-scan stages (196 and 49 steps) add up their
    directions on chip."""
    from quadmamba_kernels import triton_scan
    from quadmamba_kernels.traffic import training_step_traffic

    launches = []
    triton_scan.LAUNCH_OBSERVERS.append(
        lambda kernel, grid, args, kwargs: launches.append(
            (args[kernel.arg_names.index('L')], kwargs['ON_CHIP'])))
    try:
        traffic = training_step_traffic('s', 224, 128, torch.bfloat16)
    finally:
        triton_scan.LAUNCH_OBSERVERS.pop()
    assert traffic['ratio'] <= 1.45, traffic
    assert sum(traffic['host'].values()) - traffic['host'].get('sum of the dB/dC partials', 0) \
        <= 0.01 * traffic['minimum'], traffic['host']
    lengths = dict(launches)
    assert lengths[196] and lengths[49] and not lengths[3136], lengths
