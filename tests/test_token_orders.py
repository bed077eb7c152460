"""Scan orders are true permutations, and the window choice's masking gradient is right."""
import pytest
import torch

from quadmamba_kernels.map_order import to_map_order, to_scan_order
from quadmamba_mm.models.quadtree import choose_window, window_scores, with_choice_gradient
from quadmamba_mm.models.token_orders import (coarse_window_ids, cross_scan_orders,
                                              cross_scan_orders_of, quadtree_orders,
                                              quadtree_relabelings, quadtree_scan_orders,
                                              split_bounds)

SIZES = [(8, 8), (56, 56), (7, 9), (13, 10), (5, 4)]


@pytest.mark.parametrize('height, width', SIZES)
@pytest.mark.parametrize('grid, split', [(2, 2), (2, 1), (1, 2)])
def test_quadtree_orders_are_bijections_with_inverse(height, width, grid, split):
    if height < grid * split or width < grid * split:
        pytest.skip('too small for this quadtree')
    orders, inverses = quadtree_orders(height, width, grid, split)
    length = height * width
    assert orders.shape == (grid * grid, 2, length)
    for order, inverse in zip(orders.flatten(0, 1), inverses.flatten(0, 1)):
        assert torch.equal(order.sort().values, torch.arange(length))
        assert torch.equal(order[inverse], torch.arange(length))
    # Reverse direction is the forward sequence reversed.
    assert torch.equal(orders[:, 1], orders[:, 0].flip(-1))


@pytest.mark.parametrize('height, width', SIZES)
def test_gather_then_merge_restores_the_map(height, width):
    x = torch.randn(2, 3, height * width)
    orders, inverses = quadtree_orders(height, width)
    for choice in range(4):
        seq = to_scan_order(x[:, None], orders[choice:choice + 1])
        torch.testing.assert_close(to_map_order(seq, inverses[choice:choice + 1]), 2 * x)
    order, inverse = cross_scan_orders(height, width)
    torch.testing.assert_close(to_map_order(to_scan_order(x[:, None], order), inverse), 4 * x)


def window_of(token, height, width, bounds_r, bounds_c):
    r, c = divmod(token, width)
    return (sum(r >= b for b in bounds_r[1:-1]), sum(c >= b for b in bounds_c[1:-1]))


@pytest.mark.parametrize('height, width', [(8, 8), (7, 9)])
@pytest.mark.parametrize('choice', range(4))
def test_quadtree_sequence_layout(height, width, choice):
    """Coarse windows in raster order, the chosen one replaced by its 4 fine windows,
    raster order inside every window, each window contiguous in the sequence."""
    order = quadtree_orders(height, width)[0][choice, 0].tolist()
    rb, cb = split_bounds(0, height, 2), split_bounds(0, width, 2)
    coarse = [window_of(t, height, width, rb, cb) for t in order]
    chosen = divmod(choice, 2)
    r0, r1, c0, c1 = rb[chosen[0]], rb[chosen[0] + 1], cb[chosen[1]], cb[chosen[1] + 1]
    fine_rb, fine_cb = split_bounds(r0, r1, 2), split_bounds(c0, c1, 2)

    def window_key(token):
        w = window_of(token, height, width, rb, cb)
        if w != chosen:
            return (w, (0, 0))
        return (w, window_of(token, height, width, fine_rb, fine_cb))

    keys = [window_key(t) for t in order]
    assert keys == sorted(keys), 'windows are not visited coarse raster, fine raster'
    for i in range(1, len(order)):  # raster inside a window: increasing token index
        if keys[i] == keys[i - 1]:
            assert order[i] > order[i - 1]
    assert coarse.count(chosen) == (r1 - r0) * (c1 - c0)


@pytest.mark.parametrize('height, width', SIZES)
def test_cross_scan_fast_path_equals_the_orders(height, width):
    x = torch.randn(2, 3, height * width)
    order, inverse = cross_scan_orders(height, width)
    fast = cross_scan_orders_of(height, width)
    seq = fast.to_scan_order(x[:, None])
    torch.testing.assert_close(seq, to_scan_order(x[:, None], order), rtol=0, atol=0)
    y = torch.randn_like(seq)
    torch.testing.assert_close(fast.to_map_order(y), to_map_order(y, inverse))


def test_cross_scan_directions():
    order, _ = cross_scan_orders(2, 3)
    assert order[0].tolist() == [[0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5], [5, 4, 3, 2, 1, 0],
                                 [5, 2, 4, 1, 3, 0]]


def test_too_small_map_is_refused():
    with pytest.raises(ValueError, match='too small for a quadtree'):
        quadtree_orders(3, 8)


@pytest.mark.parametrize('grid, split, shift', [(2, 2, None), (2, 2, (1, -2)), (3, 2, (-1, 1))])
def test_choice_gradient_is_the_sequence_masking_gradient(grid, split, shift):
    """Scanning the map in the chosen order through with_choice_gradient gives x and the
    choice the gradients of scanning sum_g m_g * gather(x, order_g)."""
    torch.manual_seed(0)
    height, width = 7, 6
    orders = quadtree_scan_orders(height, width, grid, split, shift)
    relabel = quadtree_relabelings(height, width, grid, split, shift)
    x = torch.randn(3, 4, height * width, requires_grad=True)
    logits = torch.randn(3, grid * grid, requires_grad=True)
    choice = choose_window(logits, training=True)
    picked = choice.argmax(-1)
    gated = with_choice_gradient(x, choice, relabel)
    torch.testing.assert_close(gated, x, rtol=0, atol=0)
    scanned = orders.to_scan_order(gated[:, None], picked)
    grad = torch.randn_like(scanned)  # any gradient with respect to the sequences
    gx, gl = torch.autograd.grad(scanned, [x, logits], grad, retain_graph=True)
    explicit = sum(choice[:, g, None, None, None] * to_scan_order(x[:, None], orders.orders[g:g + 1])
                   for g in range(grid * grid))
    ex, el = torch.autograd.grad(explicit, [x, logits], grad)
    torch.testing.assert_close(gx, ex)
    torch.testing.assert_close(gl, el)
    assert gl.abs().sum() > 0


def test_choice_gradient_from_a_channel_last_map():
    """The backbone's map is a channel-last view; the gradient does not depend on it."""
    torch.manual_seed(0)
    relabel = quadtree_relabelings(8, 8, 2, 2)
    rows = torch.randn(2, 64, 5)
    x = rows.transpose(1, 2).requires_grad_()
    x_first = x.detach().contiguous().requires_grad_()
    logits = torch.randn(2, 4, requires_grad=True)
    choice = choose_window(logits, training=True)
    grad = torch.randn(2, 5, 64)
    grads = [
        torch.autograd.grad(with_choice_gradient(t, choice, relabel), [logits], grad,
                            retain_graph=True)[0] for t in (x, x_first)
    ]
    torch.testing.assert_close(grads[0], grads[1])


def test_window_scores_are_window_means():
    scores = torch.arange(7 * 6, dtype=torch.float32).view(1, 7, 6)
    means = window_scores(scores, grid=2)
    expected = [scores[0, :4, :3].mean(), scores[0, :4, 3:].mean(), scores[0, 4:, :3].mean(),
                scores[0, 4:, 3:].mean()]
    torch.testing.assert_close(means[0], torch.stack(expected))


def test_choice_is_deterministic_in_eval_and_stochastic_in_training():
    scores = torch.tensor([[0.1, 0.3, 0.2, 0.25]] * 64)
    assert (choose_window(scores, training=False).argmax(-1) == 1).all()
    torch.manual_seed(0)
    picked = choose_window(scores, training=True).argmax(-1)
    assert len(picked.unique()) > 1


def test_orders_are_built_once_per_size_and_device():
    """The forward pass reuses the cached index tensors: no rebuild, no copy per call."""
    first = quadtree_orders(12, 12, device='cpu')
    assert all(a is b for a, b in zip(first, quadtree_orders(12, 12, device=torch.device('cpu'))))
    assert coarse_window_ids(12, 12, 2, 'cpu') is coarse_window_ids(12, 12, 2)
