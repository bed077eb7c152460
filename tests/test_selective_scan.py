"""The scan backends against the sequential reference: values, gradients, dtypes, errors."""
import pytest
import torch

from quadmamba_kernels import (available_backends, chunked, resolve_backend, selective_scan,
                               selective_scan_reference)

FAST_BACKENDS = [name for name in available_backends('cpu') if name != 'reference']


def make_inputs(batch=2, k=2, dim=3, n_state=1, length=37, delta_scale=1.0, dtype=torch.float32,
                seed=0):
    g = torch.Generator().manual_seed(seed)
    channels = k * dim

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    return dict(
        u=randn(batch, channels, length).to(dtype),
        delta=(randn(batch, channels, length) * delta_scale).to(dtype),
        A=-torch.rand(channels, n_state, generator=g) * 3,
        B=randn(batch, k, n_state, length).to(dtype),
        C=randn(batch, k, n_state, length).to(dtype),
        D=randn(channels),
        delta_bias=randn(channels) * 0.5,
    )


def run(inputs, backend, delta_softplus=True, **kwargs):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items() if v is not None}
    y = selective_scan(**leaves, delta_softplus=delta_softplus, backend=backend, **kwargs)
    grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.dtype)
    grads = torch.autograd.grad(y, list(leaves.values()), grad_out)
    return y, dict(zip(leaves, grads))


def assert_close_rel(actual, expected, rtol, name):
    scale = expected.abs().max().clamp_min(1e-6)
    err = (actual.float() - expected.float()).abs().max() / scale
    assert err <= rtol, f'{name}: max error {err:.2e} of max |value| {scale:.3g} > {rtol}'


@pytest.mark.parametrize('backend', FAST_BACKENDS)
@pytest.mark.parametrize('shape', [
    dict(batch=2, k=2, dim=3, n_state=1, length=37),
    dict(batch=1, k=4, dim=2, n_state=4, length=50),
    dict(batch=2, k=1, dim=5, n_state=16, length=1),
    dict(batch=1, k=2, dim=2, n_state=1, length=301),
])
def test_matches_reference_fp32(backend, shape):
    inputs = make_inputs(**shape)
    y_ref, g_ref = run(inputs, 'reference')
    y, g = run(inputs, backend)
    assert_close_rel(y, y_ref, 1e-5, 'y')
    for name in g_ref:
        assert_close_rel(g[name], g_ref[name], 1e-4, f'grad {name}')


@pytest.mark.parametrize('backend', FAST_BACKENDS)
def test_bf16_inputs_compute_in_fp32(backend):
    inputs = make_inputs(n_state=2, dtype=torch.bfloat16)
    y_ref, g_ref = run(inputs, 'reference', output_fp32=True)
    y, g = run(inputs, backend, output_fp32=True)
    assert y.dtype == torch.float32
    # Same bf16 inputs on both sides: the arithmetic is fp32, so they agree to fp32 rounding.
    assert_close_rel(y, y_ref, 1e-5, 'y')
    for name in g_ref:
        assert g[name].dtype == inputs[name].dtype
        assert_close_rel(g[name], g_ref[name], 1e-2, f'grad {name}')  # grads rounded to bf16


@pytest.mark.parametrize('backend', FAST_BACKENDS)
def test_autocast_runs_scan_in_fp32(backend):
    inputs = make_inputs()
    y_ref = selective_scan(**inputs, delta_softplus=True, backend='reference')
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = selective_scan(**inputs, delta_softplus=True, backend=backend)
    assert y.dtype == torch.float32
    assert_close_rel(y, y_ref, 1e-5, 'y under autocast')


def check_against_reference(inputs, backend, delta_softplus):
    y_ref, g_ref = run(inputs, 'reference', delta_softplus=delta_softplus)
    y, g = run(inputs, backend, delta_softplus=delta_softplus)
    assert torch.isfinite(y_ref).all()
    assert torch.isfinite(y).all() and all(torch.isfinite(t).all() for t in g.values())
    assert_close_rel(y, y_ref, 1e-5, 'y')
    for name in g_ref:
        assert_close_rel(g[name], g_ref[name], 1e-4, f'grad {name}')


@pytest.mark.parametrize('backend', FAST_BACKENDS)
@pytest.mark.parametrize('delta_scale', [300.0, 1e-4])
def test_no_overflow_for_extreme_decay(backend, delta_scale):
    """|delta*A| per step from ~1e-4 up to ~1000: e^{delta*A} underflows to 0 at the top."""
    check_against_reference(make_inputs(length=64, delta_scale=delta_scale), backend, True)


@pytest.mark.parametrize('backend', FAST_BACKENDS)
def test_growing_state(backend):
    """A > 0 (no softplus): the state grows by up to ~e^10 over the sequence."""
    inputs = make_inputs(length=64)
    inputs.update(A=-inputs['A'], delta=inputs['delta'].abs() / 64, delta_bias=None)
    check_against_reference(inputs, backend, False)


def test_chunk_length_keeps_exponents_bounded():
    assert chunked.chunk_length(0.0, 3136) == chunked.MAX_CHUNK
    assert chunked.chunk_length(0.0, 10) == 10
    assert chunked.chunk_length(1.0, 3136) * 1.0 <= chunked.LOG_RANGE
    assert chunked.chunk_length(1e6, 3136) == 1


def test_reference_is_the_plain_recurrence():
    """One channel, N=1, written out by hand."""
    u = torch.tensor([[[1.0, 2.0, 3.0]]])
    delta = torch.tensor([[[0.5, 1.0, 2.0]]])
    A = torch.tensor([[-1.0]])
    B = torch.tensor([[[[1.0, 0.5, 2.0]]]])
    C = torch.tensor([[[[2.0, 1.0, -1.0]]]])
    D = torch.tensor([0.1])
    h, expected = 0.0, []
    for t in range(3):
        h = torch.exp(delta[0, 0, t] * A[0, 0]) * h + delta[0, 0, t] * B[0, 0, 0, t] * u[0, 0, t]
        expected.append(C[0, 0, 0, t] * h + D[0] * u[0, 0, t])
    y = selective_scan_reference(u, delta, A, B, C, D)
    torch.testing.assert_close(y[0, 0], torch.stack(expected))


@pytest.mark.parametrize('change, message', [
    (dict(u=torch.zeros(2, 6)), 'u must have the shape of delta'),
    (dict(delta=torch.zeros(2, 6)), 'delta must be'),
    (dict(A=torch.zeros(5, 1)), 'A must be'),
    (dict(B=torch.zeros(2, 2, 1, 36)), 'B must be'),
    (dict(C=torch.zeros(2, 4, 1, 37)), 'B and C must be'),
    (dict(D=torch.zeros(5)), 'D must be'),
    (dict(u=torch.zeros(2, 6, 37), orders=torch.zeros(2, 2, 37, dtype=torch.long)),
     'with orders, u is the map'),
    (dict(u=torch.zeros(2, 3, 37), orders=torch.zeros(2, 3, 37, dtype=torch.long)),
     'orders must be'),
    (dict(u=torch.zeros(2, 3, 37), orders=torch.zeros(1, 2, 37)), 'integer tensor'),
    (dict(u=torch.zeros(2, 3, 37), orders=torch.zeros(1, 2, 37, dtype=torch.long)),
     'must be a permutation'),
])
def test_bad_shapes_raise_named_errors(change, message):
    inputs = make_inputs()
    inputs.update(change)
    with pytest.raises(ValueError, match=message):
        selective_scan(**inputs)


def test_backend_selection():
    expected = 'cpu' if 'cpu' in available_backends('cpu') else 'chunked'
    assert resolve_backend('auto', 'cpu').name == expected
    with pytest.raises(ValueError, match="unknown scan backend 'nope'"):
        selective_scan(**make_inputs(), backend='nope')


def test_softplus_is_exact_to_fp32_rounding():
    """The scan's softplus (exp/log only) against float64, over the whole fp32 normal range,
    including the large values where exp would overflow."""
    from quadmamba_kernels.chunked import softplus
    z = torch.cat([torch.linspace(-80, 100, 200001), torch.randn(10000) * 3 - 4])
    expected = torch.nn.functional.softplus(z.double())
    got = softplus(z).double()
    assert torch.isfinite(got).all()
    rel = ((got - expected).abs() / expected)[expected > 1e-37]
    assert rel.max() < 4e-7, rel.max()
