"""The backbone scans its maps in place: orders checked once per map size, picked per sample
by index, counted by the FLOP counter, and usable after an ``inference_mode`` forward."""
import pytest
import torch

from quadmamba_kernels import ScanOrders, selective_scan
from quadmamba_mm.models import QuadMamba
from quadmamba_mm.models.token_orders import (cross_scan_orders, cross_scan_orders_of,
                                              quadtree_orders, quadtree_scan_orders)
from quadmamba_mm.analysis.complexity import count_params_and_flops

from test_selective_scan import make_inputs

from tiny import tiny_backbone as tiny


def test_orders_are_checked_once_per_map_size(monkeypatch):
    """A second forward at the same size makes no new ScanOrders: no sort, no sync."""
    made = []
    init = ScanOrders.__init__

    def counting_init(self, *args, **kwargs):
        made.append(1)
        init(self, *args, **kwargs)

    monkeypatch.setattr(ScanOrders, '__init__', counting_init)
    model = tiny().eval()
    x = torch.randn(2, 3, 72, 68)  # a size no other test uses: the caches start empty
    with torch.no_grad():
        model(x)
        assert made, 'the first forward builds the orders of its map sizes'
        made.clear()
        model(x)
    assert not made


def test_shifted_candidate_orders_equal_rolling_the_map():
    """Folding the shift into the orders scans the same tokens as rolling the map."""
    height, width, shift = 9, 12, (1, -2)
    x = torch.randn(1, 3, height, width)
    rolled = torch.roll(x, shift, dims=(2, 3)).flatten(2)
    plain, _ = quadtree_orders(height, width)
    shifted = quadtree_scan_orders(height, width, 2, 2, shift)
    index = torch.tensor([3])
    torch.testing.assert_close(shifted.to_scan_order(x.flatten(2)[:, None], index),
                               ScanOrders(plain).to_scan_order(rolled[:, None], index))
    y = torch.randn(1, 2, 3, height * width)
    back = ScanOrders(plain).to_map_order(y, index).view(1, 3, height, width)
    torch.testing.assert_close(shifted.to_map_order(y, index).view(1, 3, height, width),
                               torch.roll(back, (-shift[0], -shift[1]), dims=(2, 3)))


def test_cross_fast_path_equals_the_gather():
    orders = cross_scan_orders_of(5, 7)
    generic = ScanOrders(cross_scan_orders(5, 7)[0])
    t = torch.randn(2, 4, 3, 35)
    torch.testing.assert_close(orders.to_scan_order(t), generic.to_scan_order(t), rtol=0, atol=0)
    torch.testing.assert_close(orders.to_map_order(t), generic.to_map_order(t))


@pytest.mark.parametrize('orders, index, message', [
    (torch.stack([torch.arange(6)] * 2)[None].expand(3, 2, 6), None, 'need an order_index'),
    (torch.stack([torch.arange(6)] * 2)[None], torch.tensor([0.5, 1.]), 'integer tensor'),
    (torch.stack([torch.arange(6)] * 2)[None], torch.tensor([0, 0, 0]), r'\(batch=2,\)'),
])
def test_bad_order_index_is_refused_by_name(orders, index, message):
    inputs = make_inputs(batch=2, k=2, dim=3, n_state=1, length=6)
    inputs['u'] = inputs['u'][:, :3]
    with pytest.raises(ValueError, match=message):
        selective_scan(**inputs, orders=ScanOrders(orders), order_index=index)


def test_out_of_range_order_index_is_refused():
    inputs = make_inputs(batch=2, k=2, dim=3, n_state=1, length=6)
    inputs['u'] = inputs['u'][:, :3]
    orders = ScanOrders(torch.stack([torch.arange(6)] * 2)[None].expand(4, 2, 6))
    with pytest.raises(RuntimeError, match='one of the 4 candidate'):
        selective_scan(**inputs, orders=orders, order_index=torch.tensor([1, 4]))


def test_flops_count_the_scan_read_in_place():
    """With orders, u is the (B, D, L) map but K*D channels are scanned: 9*B*L*K*D*N."""

    class Scan(torch.nn.Module):

        def forward(self, u, delta, A, B, C, D, bias):
            orders = cross_scan_orders_of(4, 5)
            return selective_scan(u, delta, A, B, C, D, bias, True, orders=orders)

    inputs = make_inputs(batch=2, k=4, dim=3, n_state=2, length=20)
    inputs['u'] = inputs['u'][:, :3]
    _, flops = count_params_and_flops(Scan(), tuple(inputs.values()))
    assert flops == 9 * 2 * 20 * (4 * 3) * 2


@pytest.mark.parametrize('device', ['cpu'] + (['cuda'] if torch.cuda.is_available() else []))
def test_training_after_an_inference_mode_forward(device):
    """The order caches filled under inference_mode serve a later training step."""
    model = QuadMamba(arch='li', drop_path_rate=0.).to(device).eval()
    x = torch.randn(1, 3, 64, 64, device=device)
    with torch.inference_mode():
        model(x)
    model.train()
    model(x)[-1].mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
