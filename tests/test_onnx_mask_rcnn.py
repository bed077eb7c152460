"""The whole Mask R-CNN (QuadMamba backbone, FPN, RPN, RoI heads) exported to ONNX with
standard operators: ONNX Runtime gives mmdet's detections, with no detection too."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / 'configs/demo/mask-rcnn_quadmamba-li_fpn_shapes.py'
SIZE = (128, 128)


def build_demo_detector():
    """The demo Mask R-CNN with one block per stage and seeded random weights."""
    from mmengine.config import Config

    from quadmamba_mm.runtime.toolbox import build_model
    cfg = Config.fromfile(str(CONFIG))
    cfg.model.backbone.arch = dict(embed_dims=48, depths=[1, 1, 1, 1], ssm_ratio=1.0)
    torch.manual_seed(0)
    return build_model(cfg).eval()


def image(seed: int) -> torch.Tensor:
    """A normalised photograph-like input: smooth shading with bright and dark discs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE[0], 0:SIZE[1]].astype(np.float32)
    picture = np.stack([np.sin(xx / 17 + c) * np.cos(yy / 23 - c) for c in range(3)])
    for _ in range(6):
        cy, cx, radius = rng.integers(0, SIZE[0]), rng.integers(0, SIZE[1]), rng.integers(8, 30)
        picture[:, (yy - cy)**2 + (xx - cx)**2 < radius**2] = rng.uniform(-2, 2, (3, 1))
    return torch.from_numpy(picture + rng.normal(0, 0.05, picture.shape).astype(np.float32))[None]


def mmdet_predict(detector, x: torch.Tensor, img_shape=SIZE):
    """mmdet's own inference, in input coordinates (``rescale=False``)."""
    from mmengine.structures import InstanceData

    from quadmamba_mm.deploy.detector_eval import mmdet_predict as predict
    return InstanceData(**predict(detector, x, img_shape))


def class_scores(detector, x: torch.Tensor) -> torch.Tensor:
    """Every foreground score of the box head on the proposals of ``x``, before the
    threshold (PyTorch)."""
    from quadmamba_mm.deploy.mask_rcnn import MaskRCNNExport
    wrapper = MaskRCNNExport(detector)
    with torch.no_grad():
        feats = detector.extract_feat(x)
        proposals = wrapper.proposals(feats, torch.tensor(SIZE, dtype=torch.float32))
        rois = torch.cat([proposals.new_zeros(len(proposals), 1), proposals], dim=1)
        feats = wrapper.roi_features(detector.roi_head.bbox_roi_extractor, feats, rois)
        return torch.softmax(detector.roi_head.bbox_head(feats)[0], -1)[:, :-1].flatten()


BLANK = torch.zeros(1, 3, *SIZE)  # a blank image: the detector is set to find nothing there


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """One graph for all ONNX Runtime tests, written by ``tools/deployment/pytorch2onnx.py``
    (which checks it against mmdet on its generated image) from the same seeded weights. The
    score threshold is set in the widest gap between the best score on the blank image and
    the best scores on images 0 and 2, so those two have detections and the blank image has
    proposals but no detection, with no score near the threshold."""
    sys.path.insert(0, str(ROOT / 'tools' / 'deployment'))
    import pytorch2onnx

    from quadmamba_mm.deploy.detector_eval import OrtMaskRCNN
    detector = build_demo_detector()
    found = [class_scores(detector, image(seed)) for seed in (0, 2)]
    low, high = float(class_scores(detector, BLANK).max()), min(float(s.max()) for s in found)
    assert low < high, 'the random detector scores the blank image highest'
    between = torch.cat([s[(s > low) & (s < high)] for s in found])
    edges = torch.cat([torch.tensor([low, high]), between]).sort().values
    widest = int(edges.diff().argmax())
    assert float(edges.diff()[widest]) > 1e-3
    threshold = float(edges[widest:widest + 2].mean())
    detector.roi_head.test_cfg.score_thr = threshold
    folder = tmp_path_factory.mktemp('onnx')
    config = folder / 'config.py'
    config.write_text(f"_base_ = ['{CONFIG}']\nmodel = dict(backbone=dict(arch=dict(_delete_=True, "
                      "embed_dims=48, depths=[1, 1, 1, 1], ssm_ratio=1.0)), "
                      f"test_cfg=dict(rcnn=dict(score_thr={threshold!r})))\n")
    path = folder / 'mask_rcnn.onnx'
    code = pytorch2onnx.main([str(config), 'none', '--out', str(path), '--shape', *map(str, SIZE),
                              '--repeat', '1'])
    assert code == 0
    return detector, path, OrtMaskRCNN(str(path))


def test_wrapper_reproduces_mmdet():
    """In PyTorch the export wrapper is mmdet's inference, bit for bit, masks pasted too."""
    from quadmamba_mm.deploy.mask_rcnn import MaskRCNNExport
    detector = build_demo_detector()
    x = image(1)
    expected = mmdet_predict(detector, x)
    with torch.no_grad():
        boxes, scores, labels, masks = MaskRCNNExport(detector, paste_masks=True)(x)
    assert len(boxes) == detector.roi_head.test_cfg.max_per_img  # random weights: many detections
    torch.testing.assert_close(boxes, expected.bboxes, rtol=0, atol=0)
    torch.testing.assert_close(scores, expected.scores, rtol=0, atol=0)
    assert torch.equal(labels, expected.labels)
    assert torch.equal(masks, expected.masks)


@pytest.mark.slow
def test_onnx_runtime_matches_mmdet(exported):
    """Two images, one the export did not see: the same boxes (IoU >= 0.99), labels and
    scores (1e-4) as mmdet, the mask probabilities of the PyTorch wrapper within 1e-4. At
    128x128 no RoI reaches the two coarsest RoI levels: their RoIAlign runs on zero RoIs."""
    from quadmamba_mm.deploy.detector_eval import match_detections
    from quadmamba_mm.deploy.mask_rcnn import MaskRCNNExport
    detector, _, runtime = exported
    extractor = detector.roi_head.bbox_roi_extractor
    for seed in (0, 2):
        x = image(seed)
        with torch.no_grad():
            proposals = MaskRCNNExport(detector).proposals(detector.extract_feat(x),
                                                           torch.tensor(SIZE, dtype=torch.float))
        rois = torch.cat([proposals.new_zeros(len(proposals), 1), proposals], dim=1)
        levels = MaskRCNNExport.roi_levels(rois, extractor.num_inputs, extractor.finest_scale)
        assert set(levels.tolist()) <= {0, 1}
        got = runtime(x, SIZE)
        expected = mmdet_predict(detector, x)
        assert len(expected.bboxes) > 0
        report = match_detections(
            {k: expected[k] for k in ('bboxes', 'scores', 'labels')},
            dict(bboxes=got['boxes'], scores=got['scores'], labels=got['labels']))
        assert report['matched'] == report['reference'] == report['other'], report
        with torch.no_grad():
            _, _, _, masks = MaskRCNNExport(detector)(x)
        torch.testing.assert_close(got['masks'], masks, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_onnx_runtime_without_detections(exported):
    """A blank image: proposals but no detection, so the box-head NMS, the mask head and its
    RoIAlign on every FPN level see zero boxes; ONNX Runtime returns empty outputs, as
    mmdet returns none."""
    from quadmamba_mm.deploy.mask_rcnn import MaskRCNNExport
    detector, _, runtime = exported
    with torch.no_grad():
        feats = detector.extract_feat(BLANK)
        assert len(MaskRCNNExport(detector).proposals(feats, torch.tensor([128., 128.]))) > 0
    assert len(mmdet_predict(detector, BLANK).bboxes) == 0
    got = runtime(BLANK, SIZE)
    assert [tuple(v.shape) for v in got.values()] == [(0, 4), (0, ), (0, ), (0, 28, 28)]


@pytest.mark.slow
def test_onnx_runtime_without_proposals(exported):
    """An image region of 0x0 clips every anchor to an empty box, which the RPN drops
    (``min_bbox_size``): zero-size tensors from the RPN's NMS on, as in mmdet."""
    detector, _, runtime = exported
    x = image(3)
    assert len(mmdet_predict(detector, x, (0, 0)).bboxes) == 0
    got = runtime(x, (0, 0))
    assert [tuple(v.shape) for v in got.values()] == [(0, 4), (0, ), (0, ), (0, 28, 28)]


@pytest.mark.slow
def test_standard_operators_only(exported):
    """Every node in the default ONNX domain; NMS and RoIAlign as the standard operators,
    RoiAlign with half-pixel coordinates (mmcv's aligned=True) and the config's sampling."""
    import onnx
    _, path, _ = exported
    model = onnx.load(str(path))
    nodes = list(model.graph.node)
    assert {node.domain for node in nodes} <= {'', 'ai.onnx'}
    assert max(o.version for o in model.opset_import if o.domain in ('', 'ai.onnx')) >= 16
    ops = {node.op_type for node in nodes}
    assert {'NonMaxSuppression', 'RoiAlign', 'TopK'} <= ops
    for node in nodes:
        if node.op_type == 'RoiAlign':
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attrs['coordinate_transformation_mode'] == b'half_pixel'
            assert attrs.get('sampling_ratio', 0) == 0 and attrs.get('mode', b'avg') == b'avg'


def test_unsupported_detector_is_named():
    """A setting the graph does not reproduce and a batch of two fail with what they are."""
    from quadmamba_mm.deploy.mask_rcnn import MaskRCNNExport
    detector = build_demo_detector()
    with pytest.raises(ValueError, match=r'\(1, 3, H, W\) tensor, got shape \(2, 3, 64, 64\)'):
        MaskRCNNExport(detector)(torch.zeros(2, 3, 64, 64))
    detector.roi_head.test_cfg.nms = dict(type='soft_nms', iou_threshold=0.5)
    with pytest.raises(ValueError, match='soft_nms'):
        MaskRCNNExport(detector)
