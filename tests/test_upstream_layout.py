"""scan_layout='upstream' reproduces the released code's sequence, overlap included."""
import pytest
import torch
import torch.nn.functional as F

from quadmamba_mm.models import QuadMamba
from quadmamba_mm.models.quadtree import upstream_quadtree_sequences

from tiny import TINY_ARCH as TINY


@pytest.mark.parametrize('choice', range(4))
def test_overlap_defect_for_every_choice(choice):
    """Counting tokens per sequence position: 1/8 of positions hold none, 1/8 hold two."""
    height = width = 8
    ones = torch.ones(1, 1, height * width)
    xs, _ = upstream_quadtree_sequences(ones, F.one_hot(torch.tensor([choice]), 4).float(),
                                        height, width)
    counts = xs[0, 0, 0]
    assert (counts == 0).sum() == 8 and (counts == 2).sum() == 8 and (counts == 1).sum() == 48
    torch.testing.assert_close(xs[0, 1, 0], counts.flip(0))


def test_top_left_choice_matches_the_released_layout():
    """In slots of L/16: TL's fine windows at 0, 1, 4, 5; slots 2-3 empty; 4-5 shared with
    the first half of TR's coarse tokens."""
    height = width = 8
    tokens = torch.arange(1., 65.).view(1, 1, 64)
    xs, _ = upstream_quadtree_sequences(tokens, torch.tensor([[1., 0., 0., 0.]]), height, width)
    slots = xs[0, 0, 0].view(16, 4)
    assert slots[0].tolist() == [1, 2, 9, 10]  # TL fine window (0, 0), raster inside
    assert (slots[2:4] == 0).all()
    tr_first = [5, 6, 7, 8]  # TR coarse tokens start at row 0, columns 4-7
    assert (slots[4] - torch.tensor([17., 18., 25., 26.])).tolist() == tr_first


def test_upstream_layout_in_the_model():
    torch.manual_seed(0)
    model = QuadMamba(arch=TINY, scan_layout='upstream', drop_path_rate=0.).eval()
    x = torch.randn(2, 3, 64, 64)
    out = model(x)[0]
    torch.testing.assert_close(model(x)[0], out, rtol=0, atol=0)  # argmax in eval
    default = QuadMamba(arch=TINY, drop_path_rate=0.).eval()
    default.load_state_dict(model.state_dict())
    assert not torch.allclose(default(x)[0], out)  # the layouts really differ
    model.train()
    model(x)[0].square().mean().backward()
    predictor = model.stages[0].blocks[0].op.predictor
    assert sum(p.grad.abs().sum() for p in predictor.parameters()) > 0


@pytest.mark.parametrize('kwargs, size, message', [
    (dict(scan_layout='zigzag'), 64, "unknown scan_layout 'zigzag'"),
    (dict(scan_layout='upstream', quadtree_grid=4), 128, "only for the paper's levels"),
    (dict(scan_layout='upstream'), 80, 'divisible by 32'),
])
def test_upstream_layout_errors(kwargs, size, message):
    with pytest.raises(ValueError, match=message):
        QuadMamba(arch=TINY, **kwargs)(torch.randn(1, 3, size, size))
