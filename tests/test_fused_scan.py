"""The fused scan kernels that read orders in place, against the reference: the Triton
kernels (on a GPU, or on the CPU through Triton's interpreter, ``TRITON_INTERPRET=1`` set in
conftest.py) and the C kernel for CPUs. Shapes stay tiny (about 10^4 scanned elements in
all) because the interpreter runs a scan step by step in Python."""
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from quadmamba_kernels import ScanOrders, available_backends, resolve_backend, selective_scan

from test_selective_scan import assert_close_rel, make_inputs

# Triton compiled on a GPU when there is one, else through the interpreter. Gated on the
# device the tests use: on CUDA nothing is skipped (a missing backend fails below).
DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
TRITON = pytest.mark.skipif(
    DEVICE == 'cpu' and 'triton' not in available_backends('cpu'),
    reason='triton is not installed (on the CPU these tests need its interpreter)')
FUSED = [
    pytest.param(('triton', DEVICE), id='triton', marks=TRITON),
    pytest.param(('cpu', 'cpu'), id='cpu', marks=pytest.mark.skipif(
        'cpu' not in available_backends('cpu'), reason='the C kernel could not be built')),
]


@pytest.fixture(params=FUSED)
def fused(request):
    """``(backend, device)`` of each fused kernel."""
    return request.param


def test_triton_is_the_cuda_backend():
    """On a GPU machine the Triton backend must be there and be what 'auto' picks."""
    if DEVICE != 'cuda':
        pytest.skip('no CUDA device')
    assert 'triton' in available_backends('cuda'), 'triton backend unavailable on CUDA'
    assert resolve_backend('auto', torch.device('cuda')).name == 'triton'


class OpLog(TorchDispatchMode):
    """The ops dispatched while it is active."""

    def __enter__(self):
        self.ops = []
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@TRITON
def test_triton_runs_as_its_own_triton_op():
    """Forward and backward run as torch.library.triton_op ops, whose kernels torch.compile
    sees (on a GPU inductor launches them itself), not as the generic opaque op."""
    inputs = make_inputs(batch=1, length=20)
    with OpLog() as log:
        y, grads = scan_and_grads(inputs, 'triton')
    assert 'quadmamba.selective_scan_triton.default' in log.ops
    assert 'quadmamba.selective_scan_triton_backward.default' in log.ops
    assert not any(op.startswith('quadmamba.selective_scan.') for op in log.ops)


@pytest.mark.skipif(DEVICE != 'cuda', reason='inductor compiles Triton kernels on a GPU only')
def test_inductor_launches_the_triton_scan():
    """A tiny backbone compiled by inductor on the GPU for training, the Triton scan inside
    the graph: the same outputs and gradients as eager (a fixed window, so no random draw)."""
    from torch._inductor.utils import run_and_get_code

    from tiny import tiny_backbone
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = tiny_backbone(depths=(1, 1, 1, 1), out_indices=(0, 1, 2, 3),
                          quadtree_fixed_window=0).to(DEVICE).train()
    x = torch.randn(2, 3, 67, 45, device=DEVICE)
    eager = model(x)
    compiled, code = run_and_get_code(torch.compile(model, fullgraph=True), x)
    assert any('_scan_fwd_kernel' in c for c in code)  # launched from inductor's own code
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    grads = [torch.autograd.grad(sum(o.square().sum() for o in outs), model.parameters(),
                                 allow_unused=True) for outs in (eager, compiled)]
    for a, b in zip(*grads):
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)


# mamba's test tolerances for fp32 and bf16 inputs; ours are relative to the largest value.
TOLERANCE = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (1e-5, 1e-2)}


@pytest.fixture
def small_blocks(monkeypatch, fused):
    """Triton: chunks of 16 steps and blocks of 2 channels, so that every shape crosses chunk
    and block boundaries (carries, masked tails, partial channel blocks). The C kernel's
    chunks (64 steps) and tiles (16 channels) are fixed: the shapes below that cross them
    are marked."""
    if fused[0] == 'triton':
        from quadmamba_kernels import triton_scan
        monkeypatch.setattr(triton_scan, 'launch_blocks',
                            lambda length, dim, backward=False, map_order=False: (2, 16, 4))
    return fused


def random_orders(batch, k, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(length, generator=g) for _ in range(batch * k)]).view(
        batch, k, length)


def scan_and_grads(inputs, backend, device=DEVICE, **kwargs):
    leaves = {k: v.detach().to(device).requires_grad_(v.is_floating_point())
              if isinstance(v, torch.Tensor) else v for k, v in inputs.items() if v is not None}
    y = selective_scan(**leaves, delta_softplus=True, backend=backend, output_fp32=True,
                       **kwargs)
    grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y)
    wanted = {k: v for k, v in leaves.items() if isinstance(v, torch.Tensor) and v.requires_grad}
    return y, dict(zip(wanted, torch.autograd.grad(y, list(wanted.values()), grad_out)))


def assert_matches(inputs, dtype, fused, **kwargs):
    backend, device = fused
    y_ref, g_ref = scan_and_grads(inputs, 'reference', device, **kwargs)
    y, g = scan_and_grads(inputs, backend, device, **kwargs)
    y_tol, g_tol = TOLERANCE[dtype]
    assert_close_rel(y, y_ref, y_tol, 'y')
    for name in g_ref:
        assert g[name].dtype == inputs[name].dtype
        assert_close_rel(g[name], g_ref[name], g_tol, f'grad {name}')


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('n_state, length', [(1, 37), (3, 45)])
def test_chunked_kernel_matches_reference(small_blocks, dtype, n_state, length):
    """Odd lengths (masked tails), N=1 and N=3 (a masked state column), 3 channels in
    blocks of 2, and carries over 3 chunks."""
    assert_matches(make_inputs(batch=2, k=2, dim=3, n_state=n_state, length=length,
                               dtype=dtype), dtype, small_blocks)


def test_without_D_and_delta_bias(small_blocks):
    inputs = make_inputs(batch=1, k=2, dim=3, n_state=2, length=21)
    inputs.update(D=None, delta_bias=None)
    assert_matches(inputs, torch.float32, small_blocks)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('shared', [True, False])
def test_orders_read_in_place_match_the_unfused_path(small_blocks, dtype, shared):
    """The kernel gathering through per-sample (or shared) orders and adding the directions
    in map order equals gather -> reference scan -> scatter-and-sum."""
    batch, k, dim, length = 2, 3, 3, 37
    inputs = make_inputs(batch=batch, k=k, dim=dim, n_state=2, length=length, dtype=dtype)
    inputs['u'] = inputs['u'][:, :dim]  # the map: one copy for all directions
    inputs['orders'] = random_orders(1 if shared else batch, k, length)
    assert_matches(inputs, dtype, small_blocks)


def test_cross_scan_orders_in_place(small_blocks):
    """The 4 VMamba directions of a 5x7 map, as the backbone passes them."""
    from quadmamba_mm.models.token_orders import cross_scan_orders
    orders, _ = cross_scan_orders(5, 7)
    inputs = make_inputs(batch=1, k=4, dim=2, n_state=1, length=35)
    inputs.update(u=inputs['u'][:, :2], orders=orders)
    assert_matches(inputs, torch.float32, small_blocks)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_candidate_orders_picked_per_sample(small_blocks, dtype):
    """Candidate order sets plus a per-sample index (what the quadtree stages pass), read by
    the kernel, equal the unfused path of the same orders."""
    batch, k, dim, length = 3, 2, 3, 37
    inputs = make_inputs(batch=batch, k=k, dim=dim, n_state=2, length=length, dtype=dtype)
    inputs['u'] = inputs['u'][:, :dim]
    candidates = random_orders(4, k, length, seed=3)
    index = torch.tensor([2, 0, 2])
    backend, device = small_blocks
    inputs.update(orders=ScanOrders(candidates.to(device)), order_index=index.to(device))
    y, grads = scan_and_grads(inputs, backend, device)
    inputs.update(orders=candidates[index], order_index=None)
    y_ref, grads_ref = scan_and_grads(inputs, 'reference', device)
    y_tol, g_tol = TOLERANCE[dtype]
    assert_close_rel(y, y_ref, y_tol, 'y')
    for name in grads_ref:
        assert_close_rel(grads[name], grads_ref[name], g_tol, f'grad {name}')


def test_default_blocks_cover_a_long_sequence(fused):
    """The launch configuration of real shapes: a 600-step sequence is ten 64-step chunks
    (Triton and C alike)."""
    assert_matches(make_inputs(batch=1, k=1, dim=2, n_state=1, length=600), torch.float32,
                   fused)


@pytest.mark.parametrize('shared', [True, False])
def test_c_kernel_tiles_and_chunks_in_place(shared):
    """The C kernel across its own boundaries: 21 channels (a full tile of 16 and a partial
    one), 150 steps (two chunks of 64 and a tail), orders read in place."""
    if 'cpu' not in available_backends('cpu'):
        pytest.skip('the C kernel could not be built')
    batch, k, dim, length = 2, 2, 21, 150
    inputs = make_inputs(batch=batch, k=k, dim=dim, n_state=2, length=length)
    assert_matches(inputs, torch.float32, ('cpu', 'cpu'))
    inputs['u'] = inputs['u'][:, :dim]
    inputs['orders'] = random_orders(1 if shared else batch, k, length)
    assert_matches(inputs, torch.float32, ('cpu', 'cpu'))


@pytest.mark.parametrize('backend', ['cpu', 'chunked'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('in_place', [False, True])
def test_delta_given_low_rank(backend, dtype, in_place):
    """delta as dt_proj's low-rank input with delta_proj_weight: the C kernel forms delta as
    it goes, other backends get it projected first; values and gradients (of the low-rank
    input and the weight too) equal the reference's on the projected delta. 21 channels,
    150 steps (the C kernel's tile and chunk edges), rank 5, the low-rank input a strided
    per-token view as the backbone passes it."""
    if backend not in available_backends('cpu'):
        pytest.skip(f'{backend} is not available')
    batch, k, dim, rank, length = 2, 2, 21, 5, 150
    inputs = make_inputs(batch=batch, k=k, dim=dim, n_state=2, length=length, dtype=dtype)
    g = torch.Generator().manual_seed(3)
    per_token = torch.randn(batch, length, k, rank + 4, generator=g).to(dtype)  # like x_dbl
    inputs['delta'] = per_token[..., :rank].permute(0, 2, 3, 1)
    inputs['delta_proj_weight'] = torch.randn(k, dim, rank, generator=g) * rank**-0.5
    if in_place:
        inputs['u'] = inputs['u'][:, :dim]
        inputs['orders'] = random_orders(batch, k, length)
    assert_matches(inputs, dtype, (backend, 'cpu'))


def test_low_rank_delta_shapes_are_checked():
    inputs = make_inputs(batch=1, k=2, dim=4, length=9)
    with pytest.raises(ValueError, match=r'delta is its low-rank input \(batch, K, R, L\)'):
        selective_scan(**dict(inputs, delta_proj_weight=torch.randn(2, 4, 3)))
    low_rank = torch.randn(1, 2, 3, 9)
    with pytest.raises(ValueError, match='K=2 directions of delta_proj_weight'):
        selective_scan(**dict(inputs, delta=low_rank, B=inputs['B'][:, :1],
                              delta_proj_weight=torch.randn(2, 4, 3)))
    y = selective_scan(**dict(inputs, delta=low_rank, delta_proj_weight=torch.randn(2, 4, 3)))
    assert y.shape == inputs['u'].shape


@pytest.mark.parametrize('training', [False, True])
def test_backbone_with_the_fused_backends(fused, training):
    """The whole backbone with orders read in place (every stage in eval; the cross-scan
    stages in training, where the quadtree's window choice needs the gathered sequences for
    its gradient) against the PyTorch path: outputs and every parameter's gradient."""
    from quadmamba_mm.models import SelectiveScan
    from tiny import tiny_backbone
    torch.manual_seed(0)
    backend, device = fused
    model = tiny_backbone(embed_dims=8, depths=(1, 1, 1, 1)).to(device).train(training)
    x = torch.randn(1, 3, 36, 32, device=device)

    def outputs_and_grads(backend):
        for module in model.modules():
            if isinstance(module, SelectiveScan):
                module.backend = backend
        model.zero_grad()
        torch.manual_seed(1)  # the same Gumbel noise for both backends
        out = model(x)
        sum((o * torch.linspace(-1, 1, o.numel(), device=device).view_as(o)).sum()
            for o in out).backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    out_ref, grads_ref = outputs_and_grads('chunked')
    out, grads = outputs_and_grads(backend)
    for o, o_ref in zip(out, out_ref):
        assert_close_rel(o, o_ref, 1e-5, 'output')
    assert grads.keys() == grads_ref.keys()
    assert any('predictor' in name for name in grads) == training
    # Some gradients are zero up to rounding (the last bias of the window scorer shifts every
    # score alike): errors are measured against 1e-4 of the largest gradient at least.
    floor = 1e-4 * max(g.abs().max() for g in grads_ref.values())
    for name, g in grads_ref.items():
        err = (grads[name] - g).abs().max() / g.abs().max().clamp_min(floor)
        assert err <= 1e-4, f'grad {name}: relative error {err:.2e}'


def test_without_a_compiler_auto_falls_back_to_chunked(tmp_path):
    """No C compiler: the C backend reports itself unavailable, says why once, and 'auto'
    runs the chunked PyTorch scan."""
    import subprocess
    import sys
    code = ('import warnings, torch\n'
            'warnings.simplefilter("always")\n'
            'from quadmamba_kernels import available_backends, resolve_backend\n'
            'print("backends", available_backends("cpu"))\n'
            'print("auto", resolve_backend("auto", "cpu").name)\n')
    env = dict(os.environ, CC=str(tmp_path / 'no-such-compiler'),
               QUADMAMBA_KERNELS_CACHE=str(tmp_path / 'cache'))
    done = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert 'auto chunked' in done.stdout
    assert "'cpu'" not in done.stdout.splitlines()[0]
    assert done.stderr.count('could not build the fused CPU scan') == 1
    assert 'no-such-compiler' in done.stderr


def test_c_kernel_step_size_is_softplus_to_a_few_ulp():
    """One step from a zero state with u = B = C = 1 and no D: y = softplus(z) and
    dy/d(delta) = sigmoid(z) (the C kernel's own exp and log(1 + t) polynomials), against
    float64 over z in [-110, 110] (subnormal results included), and inf/nan at the edges."""
    if 'cpu' not in available_backends('cpu'):
        pytest.skip('the C kernel could not be built')
    z = torch.cat([torch.linspace(-110, 110, 4001), torch.tensor([0., -0., 1e-30, -1e-30])])
    channels = z.numel()
    delta = z.view(1, channels, 1).clone().requires_grad_()
    ones = torch.ones(1, 1, 1, 1)
    y = selective_scan(torch.ones(1, channels, 1), delta, -torch.ones(channels, 1), ones, ones,
                       None, None, True, backend='cpu')
    y.sum().backward()
    exact = torch.nn.functional.softplus(z.double(), threshold=1000)
    torch.testing.assert_close(y.flatten().double(), exact, rtol=4e-7, atol=1e-44)
    torch.testing.assert_close(delta.grad.flatten().double(), torch.sigmoid(z.double()),
                               rtol=4e-7, atol=1e-44)
    edges = torch.tensor([float('inf'), -float('inf'), float('nan')]).view(1, 3, 1)
    y = selective_scan(torch.ones(1, 3, 1), edges, -torch.ones(3, 1), ones, ones, None, None,
                       True, backend='cpu')
    assert y[0, 0, 0] == float('inf') and y[0, 1, 0] == 0 and y[0, 2, 0].isnan()


@pytest.mark.parametrize('low_rank', [False, True])
def test_c_kernel_results_do_not_depend_on_the_thread_count(low_rank):
    """Per-sample and per-tile partial gradients, summed afterwards: bitwise the same with
    one thread or two, with delta given in full or low-rank."""
    if 'cpu' not in available_backends('cpu'):
        pytest.skip('the C kernel could not be built')
    inputs = make_inputs(batch=2, k=2, dim=20, n_state=1, length=70)
    if low_rank:
        g = torch.Generator().manual_seed(3)
        inputs['delta'] = torch.randn(2, 2, 4, 70, generator=g)
        inputs['delta_proj_weight'] = torch.randn(2, 20, 4, generator=g) * 0.5
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(scan_and_grads(inputs, 'cpu', 'cpu'))
    finally:
        torch.set_num_threads(before)
    (y1, g1), (y2, g2) = results
    assert torch.equal(y1, y2)
    assert all(torch.equal(g1[name], g2[name]) for name in g1)


@pytest.mark.parametrize('backend', ['cpu', 'chunked'])
def test_channel_last_inputs_give_channel_last_outputs(backend):
    """u and delta stored as (batch, L, channels): the same values and gradients as from
    contiguous inputs, y and their gradients channel-last, and the op's fake
    implementation promises the strides the real one returns."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from quadmamba_kernels import selective_scan_op
    from quadmamba_kernels.layout import is_channel_last
    if backend not in available_backends('cpu'):
        pytest.skip(f'{backend} is not available')
    inputs = make_inputs(batch=2, k=2, dim=20, n_state=1, length=70)
    stored_last = dict(inputs, **{name: inputs[name].transpose(1, 2).contiguous().transpose(1, 2)
                                  for name in ('u', 'delta')})
    y_ref, g_ref = scan_and_grads(inputs, backend, 'cpu')
    y, g = scan_and_grads(stored_last, backend, 'cpu')
    assert is_channel_last(y) and is_channel_last(g['u']) and is_channel_last(g['delta'])
    assert_close_rel(y, y_ref, 1e-6, 'y')
    for name in g_ref:
        assert_close_rel(g[name], g_ref[name], 1e-6, f'grad {name}')

    args = [stored_last[name] for name in ('u', 'delta', 'A', 'B', 'C', 'D', 'delta_bias')]
    real, _ = selective_scan_op(*args, None, None, None, True, backend)
    with FakeTensorMode() as mode:
        fake, _ = selective_scan_op(*[mode.from_tensor(t) for t in args], None, None, None, True,
                                    backend)
    assert fake.stride() == real.stride() and is_channel_last(real)


def test_without_openmp_the_c_kernel_runs_on_one_thread(tmp_path):
    """A compiler without OpenMP still builds the kernel (one thread, vector loops kept),
    says so once, and the results equal the reference."""
    import subprocess
    import sys
    compiler = tmp_path / 'cc-without-openmp'
    compiler.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && exit 1; done\n'
                        'exec cc "$@"\n')
    compiler.chmod(0o755)
    code = ('import warnings, torch\n'
            'warnings.simplefilter("always")\n'
            'from quadmamba_kernels import cpu_scan, selective_scan\n'
            'from test_selective_scan import make_inputs\n'
            'inputs = make_inputs(batch=2, k=2, dim=20, n_state=2, length=70)\n'
            'y = selective_scan(**inputs, delta_softplus=True, backend="cpu")\n'
            'ref = selective_scan(**inputs, delta_softplus=True, backend="reference")\n'
            'print("threaded", cpu_scan.LIBRARY.threaded)\n'
            'print("error", ((y - ref).abs().max() / ref.abs().max()).item())\n')
    env = dict(os.environ, CC=str(compiler), QUADMAMBA_KERNELS_CACHE=str(tmp_path / 'cache'),
               PYTHONPATH=os.pathsep.join([os.path.dirname(__file__),
                                           os.environ.get('PYTHONPATH', '')]))
    done = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                          timeout=300)
    if done.returncode != 0 and 'could not build' in done.stderr:
        pytest.skip('no C compiler here')
    assert done.returncode == 0, done.stderr
    assert 'threaded False' in done.stdout
    assert float(done.stdout.split('error ')[1]) <= 1e-5
    assert done.stderr.count('runs on one thread') == 1


def _record_launches(monkeypatch):
    """The Triton launches made while the test runs, as ``(kernel name, grid, kwargs)``."""
    from quadmamba_kernels import triton_scan
    launches = []
    monkeypatch.setattr(triton_scan, 'LAUNCH_OBSERVERS', [
        lambda kernel, grid, args, kwargs: launches.append((kernel.__name__, grid, kwargs))])
    return launches


@TRITON
@pytest.mark.parametrize('case, dtype', [('orders', torch.float32), ('orders', torch.bfloat16),
                                         ('cross', torch.float32),
                                         ('candidates', torch.bfloat16)])
def test_directions_summed_on_chip(monkeypatch, case, dtype):
    """Sequences that fit one chunk: the K directions add up in map order on chip (no
    read-modify-write of y or du per direction) and one backward program takes every channel
    tile of its sample (one dB/dC partial per program), with the unfused path's results."""
    from quadmamba_kernels import triton_scan
    from quadmamba_mm.models.token_orders import cross_scan_orders
    monkeypatch.setattr(triton_scan, 'launch_blocks',
                        lambda length, dim, backward=False, map_order=False: (2, 64, 4))
    monkeypatch.setattr(triton_scan, 'BACKWARD_WARPS', 1)
    launches = _record_launches(monkeypatch)
    batch, k, dim, length = 2, 3, 3, 37
    if case == 'cross':
        k, length = 4, 35
    inputs = make_inputs(batch=batch, k=k, dim=dim, n_state=2, length=length, dtype=dtype)
    inputs['u'] = inputs['u'][:, :dim]
    if case == 'cross':
        inputs['orders'] = cross_scan_orders(5, 7)[0]
    elif case == 'orders':
        inputs['orders'] = random_orders(batch, k, length)
    else:
        candidates = random_orders(4, k, length, seed=3)
        index = torch.tensor([2, 0])
        inputs.update(orders=ScanOrders(candidates.to(DEVICE)), order_index=index.to(DEVICE))
        y, grads = scan_and_grads(inputs, 'triton')
        inputs.update(orders=candidates[index], order_index=None)
        y_ref, grads_ref = scan_and_grads(inputs, 'reference')
        y_tol, g_tol = TOLERANCE[dtype]
        assert_close_rel(y, y_ref, y_tol, 'y')
        for name in grads_ref:
            assert_close_rel(grads[name], grads_ref[name], g_tol, f'grad {name}')
    if case != 'candidates':
        assert_matches(inputs, dtype, ('triton', DEVICE))
    kernels = {name: (grid, kwargs) for name, grid, kwargs in launches}
    assert kernels['_scan_fwd_kernel'][1]['ON_CHIP'] and kernels['_scan_bwd_kernel'][1]['ON_CHIP']
    assert kernels['_scan_bwd_kernel'][0] == (batch, 1), 'one backward program per sample'


@TRITON
def test_sample_offsets_past_2_31():
    """The third sample of a view with a batch stride of 2**30 elements starts at element
    2**31 of its storage (4 GiB of bf16, allocated but untouched but for the samples): the
    kernels' int64 sample offsets reach it. With int32 offsets the read wraps around and
    crashes, so it runs in a child process."""
    script = f'''
import sys, torch
sys.path.insert(0, {os.path.dirname(__file__)!r})
from quadmamba_kernels import selective_scan
from test_selective_scan import make_inputs
inputs = make_inputs(batch=3, k=1, dim=2, n_state=1, length=16, dtype=torch.bfloat16)
inputs = {{name: t.to({DEVICE!r}) for name, t in inputs.items()}}
storage = torch.empty(2**31 + 2 * 16, dtype=torch.bfloat16, device={DEVICE!r})
u = storage.as_strided((3, 2, 16), (2**30, 16, 1))
u.copy_(inputs['u'])
u.requires_grad_()
kwargs = dict(delta_softplus=True, output_fp32=True)
y = selective_scan(**{{**inputs, 'u': u}}, backend='triton', **kwargs)
(du,) = torch.autograd.grad(y.sum(), u)
u_ref = u.detach().contiguous().requires_grad_()
y_ref = selective_scan(**{{**inputs, 'u': u_ref}}, backend='reference', **kwargs)
(du_ref,) = torch.autograd.grad(y_ref.sum(), u_ref)
print(float((y - y_ref).abs().max() / y_ref.abs().max()),
      float((du.float() - du_ref.float()).abs().max() / du_ref.float().abs().max()))
'''
    import subprocess
    import sys
    run = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, f'exit code {run.returncode}: {run.stderr[-2000:]}'
    y_error, du_error = map(float, run.stdout.split())
    assert y_error <= 1e-5 and du_error <= 1e-2, (y_error, du_error)
