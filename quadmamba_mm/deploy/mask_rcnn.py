"""mmdet's Mask R-CNN as one graph of standard operators: image in, detections out.

:class:`MaskRCNNExport` wraps a built mmdet ``MaskRCNN`` (any backbone and neck; an
``RPNHead`` with anchors and ``DeltaXYWHBBoxCoder``, a ``StandardRoIHead`` with
``SingleRoIExtractor`` + ``RoIAlign`` and an ``FCNMaskHead``) and reproduces its test-time
inference (``model.predict(..., rescale=False)``) with the settings of the model's
``test_cfg``:

* RPN: per level the ``nms_pre`` best anchors (by objectness), decoded with the RPN's
  coder (clipped to the image), boxes of zero width or height dropped (``min_bbox_size``),
  NMS per level, the ``max_per_img`` best proposals;
* RoI features per FPN level mapped as ``SingleRoIExtractor`` maps them (``finest_scale``),
  ``RoIAlign`` with the config's ``sampling_ratio`` and ``aligned`` (ONNX ``RoiAlign``,
  opset >= 16, ``coordinate_transformation_mode='half_pixel'`` when aligned);
* box head: softmax scores, class-specific deltas decoded with clipping and the maximal
  width/height ratio, ``score_thr``, NMS per class, the ``max_per_img`` best;
* mask head on the kept boxes: the sigmoid of the labelled class, ``(N, 28, 28)``, or with
  ``paste_masks=True`` pasted into the input image as mmdet pastes them (``grid_sample``) and
  thresholded at ``mask_thr_binary``, ``(N, H, W)`` booleans.

Everything is written without branches on data (no ``if tensor.numel()``), so an image with
no proposals, no detections or an FPN level that receives no RoI runs through the same graph
with zero-size tensors.

NMS by level and by class is mmcv's ``batched_nms``: the boxes of each group shifted by
``group * (max coordinate + 1)``, the same shifted coordinates, so the IoUs round alike. mmcv
runs one NMS over all shifted boxes; here the groups are the batch of one ONNX
``NonMaxSuppression`` (:func:`grouped_nms`), which keeps the same boxes (shifted groups do
not overlap) with a fraction of the work: mmdet's 80 COCO classes at a score threshold of 0
are 80 NMS over 1000 boxes instead of one over 80000. In PyTorch it is ``torchvision.ops.nms``
per group, the greedy suppression of mmcv's ``nms`` (strict ``IoU > threshold``). RoIAlign is
``torchvision.ops.roi_align`` (mmcv's sampling grid), exported as the standard ``RoiAlign``.

Two details differ from mmdet by at most a rounding step, and only where ties decide:

* the FPN level of a RoI is ``floor(log2(scale / finest_scale + 1e-6))``, computed here by
  comparing ``scale / finest_scale + 1e-6`` with the powers of two (exact; ONNX has no
  ``Log2``, and ``Log(x) / Log(2)`` rounds). mmdet's ``torch.log2`` can round a value within
  one float step below a power of two up to it;
* equal scores are ranked by index (stable sorts, as ONNX ``TopK`` ranks them); mmdet's
  sorts leave the order of equal scores to the sort implementation, and so does NMS, here
  and in mmdet (which of two equal-scored overlapping boxes survives).

Boxes are in the coordinates of the network input; ``img_shape`` (the image's height and
width before padding) bounds them, as mmdet's ``img_shape`` does. Dividing them by the
pipeline's ``scale_factor`` and pasting masks at the original size, as mmdet does with
``rescale=True``, is left to the caller (:mod:`quadmamba_mm.deploy.detector_eval`).
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    'MaskRCNNExport', 'grouped_nms', 'nms_by_group', 'delta2bbox', 'paste_masks',
    'export_mask_rcnn', 'OUTPUT_NAMES', 'NOT_EXACT'
]

OUTPUT_NAMES = ('boxes', 'scores', 'labels', 'masks')

# Where the graph is not mmdet's inference exactly (the module docstring has the details); the
# export tool prints it beside the measured effect, the detections matched to mmdet's.
NOT_EXACT = (
    'the input size is fixed at export (the backbone scans in orders built for one map size)',
    'equal scores are ranked by index (ONNX TopK), where mmdet leaves them to its sort',
    "mask probabilities come from ONNX Runtime's Sigmoid (absolute error up to 1.7e-7)",
    "a RoI's FPN level is found by comparisons with powers of two, where torch.log2 can round "
    'up a value one float step below one',
)


def _type_name(module) -> str:
    return type(module).__name__


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise ValueError(f'MaskRCNNExport: {what}')


def delta2bbox(rois: Tensor,
               deltas: Tensor,
               means: Sequence[float],
               stds: Sequence[float],
               max_shape: Optional[Tensor],
               wh_ratio_clip: float = 16 / 1000) -> Tensor:
    """mmdet's ``DeltaXYWHBBoxCoder`` decoding of ``(N, 4)`` deltas against ``(N, 4)`` boxes,
    with the same operations in the same order (so the same float rounding).

    Args:
        rois: ``(N, 4)`` anchors or proposals, ``x1, y1, x2, y2``.
        deltas: ``(N, 4)`` encoded offsets.
        means: the coder's ``target_means``.
        stds: the coder's ``target_stds``.
        max_shape: ``(2,)`` float height and width to clip the boxes to, or ``None`` for
            no clipping (the coder's ``clip_border=False``).
        wh_ratio_clip: the largest ratio of a box's width or height change is
            ``|log(wh_ratio_clip)|`` in log space.
    """
    means = deltas.new_tensor(means).view(1, -1)
    stds = deltas.new_tensor(stds).view(1, -1)
    denorm = deltas * stds + means
    dxy, dwh = denorm[:, :2], denorm[:, 2:]
    pxy = (rois[:, :2] + rois[:, 2:]) * 0.5
    pwh = rois[:, 2:] - rois[:, :2]
    dxy_wh = pwh * dxy
    max_ratio = abs(math.log(wh_ratio_clip))
    dwh = dwh.clamp(min=-max_ratio, max=max_ratio)
    gxy = pxy + dxy_wh
    gwh = pwh * dwh.exp()
    bboxes = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)
    if max_shape is not None:
        # clamp_(min=0, max=W) on x and (min=0, max=H) on y, as mmdet clips.
        max_xy = max_shape.flip(0).repeat(2)
        bboxes = torch.minimum(bboxes.clamp(min=0), max_xy)
    return bboxes


def _sort_descending(values: Tensor) -> Tuple[Tensor, Tensor]:
    """``values`` sorted best first, equal values in index order: ONNX ``TopK``'s order.
    Exported, the plain sort becomes ``TopK`` (the exporter has no stable sort); in eager
    mode the stable sort gives the same order."""
    if torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export():
        return values.sort(descending=True)
    return values.sort(descending=True, stable=True)


@torch.library.custom_op('quadmamba_mm::grouped_nms', mutates_args=())
def grouped_nms(boxes: Tensor, scores: Tensor, iou_threshold: float,
                score_threshold: float) -> Tensor:
    """Greedy NMS in each of G groups at once, as ONNX ``NonMaxSuppression`` runs it with the
    groups as its batch: within group ``g`` the boxes scoring above ``score_threshold`` take
    part, best first, and a box is dropped when its IoU with a kept box of its group exceeds
    ``iou_threshold`` (``torchvision.ops.nms``, mmcv's ``nms``).

    Args:
        boxes: ``(G, N, 4)`` boxes ``x1, y1, x2, y2`` of each group.
        scores: ``(G, N)`` their scores.
        iou_threshold: the IoU above which a box is suppressed.
        score_threshold: boxes scoring at or below it take no part.

    Returns:
        ``(K, 2)`` int64 ``(group, box)`` of the kept boxes, group by group, best first.
    """
    from torchvision.ops import nms
    kept = []
    for group in range(boxes.shape[0]):
        candidates = (scores[group] > score_threshold).nonzero()[:, 0]
        keep = candidates[nms(boxes[group, candidates], scores[group, candidates],
                              iou_threshold)]
        kept.append(torch.stack([torch.full_like(keep, group), keep], dim=1))
    return torch.cat(kept) if kept else boxes.new_zeros(0, 2, dtype=torch.long)


@grouped_nms.register_fake
def _grouped_nms_fake(boxes: Tensor, scores: Tensor, iou_threshold: float,
                      score_threshold: float) -> Tensor:
    return boxes.new_empty(torch.library.get_ctx().new_dynamic_size(), 2, dtype=torch.long)


def grouped_nms_onnx(boxes, scores, iou_threshold: float, score_threshold: float):
    """ONNX form of :func:`grouped_nms`: one standard ``NonMaxSuppression``, groups as the
    batch (its output rows are ``(batch, class, box)``, class 0 here)."""
    from onnxscript import opset18 as op
    selected = op.NonMaxSuppression(boxes, op.Unsqueeze(scores, [1]),
                                    op.Constant(value_ints=[2**62]),
                                    op.Constant(value_floats=[iou_threshold]),
                                    op.Constant(value_floats=[score_threshold]))
    return op.Concat(op.Slice(selected, [0], [1], [1]), op.Slice(selected, [2], [3], [1]),
                     axis=1)


def nms_by_group(boxes: Tensor, scores: Tensor, valid: Tensor, iou_threshold: float,
                 score_threshold: float) -> Tuple[Tensor, Tensor]:
    """mmcv's ``batched_nms`` over ``G`` groups (FPN levels, classes) of ``N`` candidates:
    the valid boxes of group ``g`` are shifted by ``g * (max coordinate + 1)``, the max
    taken over the valid boxes, as mmcv shifts them (so NMS sees the same coordinates and
    rounds IoUs alike), and NMS runs in each group (mmcv's one NMS over all shifted boxes
    keeps the same ones: shifted groups do not overlap, boxes being clipped to the image).

    Args:
        boxes: ``(G, N, 4)`` boxes, clipped to the image (coordinates >= 0).
        scores: ``(G, N)`` scores.
        valid: ``(G, N)`` which candidates take part.
        iou_threshold: the NMS IoU threshold.
        score_threshold: the scores of the valid candidates are above it.

    Returns:
        ``(K,)`` groups and ``(K,)`` indices of the kept boxes, best score first (equal
        scores in group and index order).
    """
    largest = torch.where(valid[..., None], boxes, torch.zeros_like(boxes)).max()
    groups = torch.arange(boxes.shape[0], device=boxes.device).to(boxes.dtype)
    shifted = boxes + (groups * (largest + 1))[:, None, None]
    masked = torch.where(valid, scores, torch.full_like(scores, float('-inf')))
    kept = grouped_nms(shifted, masked, float(iou_threshold), float(score_threshold))
    order = _sort_descending(masked[kept[:, 0], kept[:, 1]])[1]
    return kept[order, 0], kept[order, 1]


def paste_masks(masks: Tensor, boxes: Tensor, height: int, width: int) -> Tensor:
    """``(N, h, w)`` mask probabilities pasted into ``(N, height, width)`` images at their
    boxes, as mmdet's ``_do_paste_mask`` pastes them (bilinear ``grid_sample``, pixel centres
    at ``+0.5``; a box of zero width or height gives the coordinate 0 where it divides by 0).
    """
    x0, y0, x1, y1 = torch.split(boxes, 1, dim=1)
    img_y = torch.arange(height, device=boxes.device).to(torch.float32) + 0.5
    img_x = torch.arange(width, device=boxes.device).to(torch.float32) + 0.5
    img_y = (img_y - y0) / (y1 - y0) * 2 - 1
    img_x = (img_x - x0) / (x1 - x0) * 2 - 1
    img_y = torch.where(torch.isinf(img_y), torch.zeros_like(img_y), img_y)
    img_x = torch.where(torch.isinf(img_x), torch.zeros_like(img_x), img_x)
    count = masks.shape[0]
    gx = img_x[:, None, :].expand(count, height, width)
    gy = img_y[:, :, None].expand(count, height, width)
    grid = torch.stack([gx, gy], dim=3)
    return F.grid_sample(masks[:, None].float(), grid, align_corners=False)[:, 0]


class MaskRCNNExport(nn.Module):
    """A built mmdet ``MaskRCNN`` as ``image -> (boxes, scores, labels, masks)`` in torch
    operators that export to standard ONNX (see the module docstring for what is computed).

    Args:
        detector: a built mmdet ``MaskRCNN`` (or any ``TwoStageDetector`` with the heads
            named above) in eval mode; its ``test_cfg`` gives the inference settings. It is
            used as it is, not copied.
        paste_masks: return masks pasted into the (padded) input image and thresholded at
            ``test_cfg.rcnn.mask_thr_binary``, ``(N, H, W)`` booleans, instead of the
            ``(N, 28, 28)`` probabilities of the labelled class. Default: False.
    """

    def __init__(self, detector: nn.Module, paste_masks: bool = False) -> None:
        super().__init__()
        self.detector = detector
        self.paste = paste_masks
        self._check_supported(detector)
        # The heads' own settings: what mmdet's predict reads.
        self.rpn_cfg, self.rcnn_cfg = detector.rpn_head.test_cfg, detector.roi_head.test_cfg

    @staticmethod
    def _check_supported(detector: nn.Module) -> None:
        """Raise a ValueError naming the first component this graph does not reproduce."""
        for name in ('backbone', 'neck', 'rpn_head', 'roi_head'):
            _require(hasattr(detector, name), f'the detector has no {name}; expected an mmdet '
                     f'MaskRCNN, got {_type_name(detector)}')
        rpn, roi = detector.rpn_head, detector.roi_head
        _require(_type_name(rpn) == 'RPNHead', f'expected an RPNHead, got {_type_name(rpn)}')
        _require(rpn.use_sigmoid_cls, 'the RPN must score anchors with a sigmoid')
        _require(_type_name(rpn.prior_generator) == 'AnchorGenerator',
                 f'expected an AnchorGenerator, got {_type_name(rpn.prior_generator)}')
        _require(_type_name(roi) == 'StandardRoIHead',
                 f'expected a StandardRoIHead, got {_type_name(roi)}')
        _require(roi.with_mask and not roi.share_roi_extractor and not roi.with_shared_head,
                 'expected a StandardRoIHead with its own mask RoI extractor and no shared head')
        for coder in (rpn.bbox_coder, roi.bbox_head.bbox_coder):
            # clip_border: NMS by group equals mmcv's shifted NMS for boxes inside the image.
            _require(_type_name(coder) == 'DeltaXYWHBBoxCoder' and not coder.add_ctr_clamp
                     and coder.clip_border,
                     f'expected a DeltaXYWHBBoxCoder with clip_border and without '
                     f'add_ctr_clamp, got {_type_name(coder)}(clip_border='
                     f'{getattr(coder, "clip_border", None)}, add_ctr_clamp='
                     f'{getattr(coder, "add_ctr_clamp", None)})')
        _require(not roi.bbox_head.custom_cls_channels,
                 'the box head must score classes with a plain softmax (no custom_cls_channels)')
        for extractor in (roi.bbox_roi_extractor, roi.mask_roi_extractor):
            _require(_type_name(extractor) == 'SingleRoIExtractor',
                     f'expected a SingleRoIExtractor, got {_type_name(extractor)}')
            for layer in extractor.roi_layers:
                _require(_type_name(layer) == 'RoIAlign' and layer.pool_mode == 'avg',
                         f'expected RoIAlign layers with pool_mode="avg", got '
                         f'{_type_name(layer)}({getattr(layer, "pool_mode", "?")})')
        _require(_type_name(roi.mask_head) == 'FCNMaskHead',
                 f'expected an FCNMaskHead, got {_type_name(roi.mask_head)}')
        for stage, head in (('rpn', rpn), ('rcnn', roi)):
            nms_cfg = head.test_cfg.nms
            _require(nms_cfg.get('type', 'nms') == 'nms' and
                     not nms_cfg.get('class_agnostic', False),
                     f'test_cfg.{stage}.nms must be plain per-group nms, got {dict(nms_cfg)}')

    # -- RPN -------------------------------------------------------------------------------

    def _anchors(self, level: int, height: int, width: int, like: Tensor) -> Tensor:
        """``(H*W*A, 4)`` anchors of one level, in mmdet's order (``AnchorGenerator``)."""
        generator = self.detector.rpn_head.prior_generator
        base = generator.base_anchors[level].to(like)
        stride_w, stride_h = generator.strides[level]
        shift_x = torch.arange(0, width, device=like.device).to(like.dtype) * stride_w
        shift_y = torch.arange(0, height, device=like.device).to(like.dtype) * stride_h
        shift_xx = shift_x.repeat(height)
        shift_yy = shift_y.view(-1, 1).repeat(1, width).view(-1)
        shifts = torch.stack([shift_xx, shift_yy, shift_xx, shift_yy], dim=-1)
        return (base[None, :, :] + shifts[:, None, :]).view(-1, 4)

    def proposals(self, feats: Sequence[Tensor], max_shape: Tensor) -> Tensor:
        """``(P, 4)`` RPN proposals, best first, as mmdet's ``RPNHead.predict`` gives them.

        Args:
            feats: the neck's maps, each ``(1, C, H_l, W_l)``.
            max_shape: ``(2,)`` float image height and width.
        """
        rpn = self.detector.rpn_head
        cfg = self.rpn_cfg
        nms_pre = cfg.get('nms_pre', -1)
        cls_scores, bbox_preds = rpn(tuple(feats))
        boxes, scores = [], []
        for level, (cls_score, bbox_pred) in enumerate(zip(cls_scores, bbox_preds)):
            height, width = cls_score.shape[-2:]
            deltas = bbox_pred[0].permute(1, 2, 0).reshape(-1, 4)
            # Ranked by logit: the sigmoid is monotonic, so this is mmdet's order, and the
            # proposals' scores are not used further. ONNX Runtime's Sigmoid is accurate
            # only in absolute terms (it returns 0 below -18), so ranking its values would
            # tie all low scores and change which proposals survive NMS.
            score = cls_score[0].permute(1, 2, 0).reshape(-1)
            anchors = self._anchors(level, height, width, deltas)
            if 0 < nms_pre < score.shape[0]:
                score, order = _sort_descending(score)
                score, order = score[:nms_pre], order[:nms_pre]
                deltas, anchors = deltas[order], anchors[order]
            boxes.append(delta2bbox(anchors, deltas, rpn.bbox_coder.means, rpn.bbox_coder.stds,
                                    max_shape))
            scores.append(score)
        # The levels as NMS groups, padded to one length with candidates that take no part.
        length = max(len(score) for score in scores)
        valid = torch.stack([torch.arange(length, device=score.device) < len(score)
                             for score in scores])
        boxes = torch.stack([F.pad(box, (0, 0, 0, length - len(box))) for box in boxes])
        scores = torch.stack([F.pad(score, (0, length - len(score))) for score in scores])
        min_size = cfg.get('min_bbox_size', -1)
        if min_size >= 0:
            wh = boxes[..., 2:] - boxes[..., :2]
            valid = valid & (wh[..., 0] > min_size) & (wh[..., 1] > min_size)
        levels, index = nms_by_group(boxes, scores, valid, cfg.nms.iou_threshold,
                                     float('-inf'))
        return boxes[levels, index][:cfg.max_per_img]

    # -- RoI features ----------------------------------------------------------------------

    @staticmethod
    def roi_levels(rois: Tensor, num_levels: int, finest_scale: float) -> Tensor:
        """``SingleRoIExtractor.map_roi_levels``: ``floor(log2(scale / finest_scale +
        1e-6))`` clamped to the levels, by comparisons with the powers of two."""
        scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
        ratio = scale / finest_scale + 1e-6
        level = torch.zeros_like(ratio, dtype=torch.long)
        for k in range(1, num_levels):
            level = level + (ratio >= 2.0**k).long()
        return level

    @staticmethod
    def roi_features(extractor: nn.Module, feats: Sequence[Tensor], rois: Tensor) -> Tensor:
        """``SingleRoIExtractor``: each RoI pooled from its FPN level, ``(K, C, h, w)``.

        Each level pools the RoIs mapped to it (an empty set too) and scatters the result
        into place, as mmdet's loop does without its branch on empty levels.
        """
        from torchvision.ops import roi_align
        feats = feats[:extractor.num_inputs]
        layers = extractor.roi_layers
        levels = MaskRCNNExport.roi_levels(rois, len(feats), extractor.finest_scale)
        out_h, out_w = layers[0].output_size
        out = rois.new_zeros(rois.shape[0], extractor.out_channels, out_h, out_w)
        for level, (feat, layer) in enumerate(zip(feats, layers)):
            inds = (levels == level).nonzero()[:, 0]
            pooled = roi_align(feat, rois[inds], (out_h, out_w), float(layer.spatial_scale),
                               int(layer.sampling_ratio), bool(layer.aligned))
            out = out.index_put((inds, ), pooled)
        return out

    # -- second stage ----------------------------------------------------------------------

    def detect(self, feats: Sequence[Tensor], proposals: Tensor,
               max_shape: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Box head on the proposals: ``(N, 4)`` boxes, ``(N,)`` scores, ``(N,)`` labels,
        as ``BBoxHead.predict_by_feat`` with ``multiclass_nms`` gives them."""
        roi_head = self.detector.roi_head
        head, cfg = roi_head.bbox_head, self.rcnn_cfg
        rois = torch.cat([proposals.new_zeros(proposals.shape[0], 1), proposals], dim=1)
        cls_score, bbox_pred = head(self.roi_features(roi_head.bbox_roi_extractor, feats, rois))
        scores = F.softmax(cls_score, dim=-1)[:, :-1]
        num_classes = scores.shape[1]
        regressed = 1 if head.reg_class_agnostic else num_classes
        coder = head.bbox_coder
        boxes = delta2bbox(proposals.repeat_interleave(regressed, dim=0),
                           bbox_pred.reshape(-1, 4), coder.means, coder.stds, max_shape)
        boxes = boxes.reshape(-1, regressed, 4).expand(-1, num_classes, 4)
        # The classes as NMS groups: (classes, RoIs, 4) boxes, (classes, RoIs) scores.
        boxes, scores = boxes.transpose(0, 1), scores.transpose(0, 1)
        labels, index = nms_by_group(boxes, scores, scores > cfg.score_thr,
                                     cfg.nms.iou_threshold, cfg.score_thr)
        if cfg.max_per_img > 0:
            labels, index = labels[:cfg.max_per_img], index[:cfg.max_per_img]
        return boxes[labels, index], scores[labels, index], labels

    def predict_masks(self, feats: Sequence[Tensor], boxes: Tensor, labels: Tensor) -> Tensor:
        """``(N, 28, 28)`` mask probabilities of each box's labelled class."""
        roi_head = self.detector.roi_head
        rois = torch.cat([boxes.new_zeros(boxes.shape[0], 1), boxes], dim=1)
        logits = roi_head.mask_head(self.roi_features(roi_head.mask_roi_extractor, feats, rois))
        if not roi_head.mask_head.class_agnostic:
            logits = logits[torch.arange(logits.shape[0], device=logits.device), labels]
        else:
            logits = logits[:, 0]
        return logits.sigmoid()

    def forward(self, image: Tensor, img_shape: Optional[Tensor] = None) -> Tuple[Tensor, ...]:
        """Detect in one preprocessed image.

        Args:
            image: ``(1, 3, H, W)``, normalised and padded as mmdet's data preprocessor
                leaves it.
            img_shape: ``(2,)`` height and width of the image inside the padding (mmdet's
                ``img_shape``), any number type. Default: ``(H, W)``, no padding.

        Returns:
            ``boxes (N, 4)`` float ``x1, y1, x2, y2`` in input pixels, ``scores (N,)``,
            ``labels (N,)`` int64, and ``masks``: ``(N, 28, 28)`` probabilities of the labelled
            class, or with ``paste_masks`` ``(N, H, W)`` booleans.
        """
        if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] != 3:
            raise ValueError(f'expected one image as a (1, 3, H, W) tensor, got shape '
                             f'{tuple(image.shape)}')
        if img_shape is None:
            max_shape = image.new_tensor([image.shape[2], image.shape[3]])
        else:
            max_shape = img_shape.to(image.dtype).reshape(2)
        feats = self.detector.extract_feat(image)
        proposals = self.proposals(feats, max_shape)
        boxes, scores, labels = self.detect(feats, proposals, max_shape)
        masks = self.predict_masks(feats, boxes, labels)
        if self.paste:
            pasted = paste_masks(masks, boxes, image.shape[2], image.shape[3])
            masks = pasted >= self.rcnn_cfg.mask_thr_binary
        return boxes, scores, labels, masks


def export_mask_rcnn(detector: nn.Module,
                     image: Tensor,
                     path: str,
                     paste_masks: bool = False,
                     opset: int = 18,
                     optimize: bool = False) -> List[str]:
    """Write ``detector`` (a built mmdet Mask R-CNN) to ``path`` as ONNX with torch's default
    (``torch.export``-based) exporter: inputs ``image`` ``(1, 3, H, W)`` float and
    ``img_shape`` ``(2,)`` int64; outputs :data:`OUTPUT_NAMES`.

    Args:
        detector: the mmdet model, in eval mode. Its selective scans take their exact
            standard-operator form inside the export by themselves
            (:mod:`quadmamba_mm.deploy.mode`).
        image: an example input; its H and W are fixed in the graph (the backbone's scan
            orders and unrolled scan are built for one map size).
        path: the ``.onnx`` file to write.
        paste_masks: see :class:`MaskRCNNExport`.
        opset: ONNX opset, at least 18 (the exporter's operator library; RoiAlign with
            ``half_pixel`` needs 16).
        optimize: run onnxscript's graph optimizer on the exported graph (constant folding
            and pattern rewrites; minutes on a 2-core CPU). ONNX Runtime applies its own
            optimizations when it loads the graph either way.

    Returns:
        The output names.
    """
    if opset < 18:
        raise ValueError(f'opset {opset}: torch\'s ONNX exporter writes opset 18 or later '
                         f'(RoiAlign with half_pixel needs 16); expected opset >= 18')
    wrapper = MaskRCNNExport(detector.eval(), paste_masks=paste_masks).eval()
    img_shape = torch.tensor(image.shape[2:], dtype=torch.long)
    names = list(OUTPUT_NAMES)
    with torch.no_grad():
        torch.onnx.export(wrapper, (image, img_shape), path, input_names=['image', 'img_shape'],
                          output_names=names, opset_version=opset, dynamo=True,
                          optimize=optimize, verbose=False,
                          custom_translation_table={
                              torch.ops.quadmamba_mm.grouped_nms.default: grouped_nms_onnx})
    return names
