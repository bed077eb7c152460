"""Mask R-CNN in ONNX Runtime against PyTorch: matched detections and COCO mAP.

    python -m quadmamba_mm.deploy.detector_eval CONFIG CHECKPOINT --onnx model.onnx \\
        [--max-images N] [--out report.json] [--images IMG ...] [--cfg-options KEY=VALUE ...]

Runs the config's test set image by image (batch 1) through mmdet's ``model.predict`` (the
model as users run it) and through the exported graph in ONNX Runtime, whose outputs are
brought to the original image as mmdet's ``rescale=True`` brings its own (boxes divided by
the pipeline's ``scale_factor``, masks pasted at ``ori_shape`` by mmdet's ``_do_paste_mask``
and thresholded at ``mask_thr_binary``). Both go to an mmdet ``CocoMetric`` each; the
report holds both metric sets and how the detections match (:func:`match_detections`).
The ONNX graph's input size is fixed, so every test image must be preprocessed to that
size (the shapes demo: 128x128). ``--images`` compares on other images instead: each is
fitted into the graph's input with its aspect ratio kept and padded (:func:`letterbox`),
and mmdet and ONNX Runtime are told the resized size as ``img_shape``.
"""
import argparse
import json
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

__all__ = [
    'OrtMaskRCNN', 'to_original', 'match_detections', 'evaluate', 'box_iou', 'test_dataset',
    'mmdet_predict', 'compare_on_images', 'letterbox'
]


class OrtMaskRCNN:
    """An exported Mask R-CNN (:func:`~.mask_rcnn.export_mask_rcnn`) in ONNX Runtime.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads; 0 lets ONNX Runtime choose.
        spinning: let idle worker threads spin; off by default, because on a machine shared
            with other processes spinning threads take the cores the work needs.
    """

    def __init__(self, path: str, threads: int = 0, spinning: bool = False) -> None:
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry('session.intra_op.allow_spinning',
                                         '1' if spinning else '0')
        options.log_severity_level = 3  # errors only, not the notes on unfolded constants
        self.session = ort.InferenceSession(str(path), options,
                                            providers=['CPUExecutionProvider'])
        shape = self.session.get_inputs()[0].shape
        self.input_hw = tuple(shape[2:])
        self.output_names = [o.name for o in self.session.get_outputs()]

    @staticmethod
    def feeds(image: Tensor, img_shape: Sequence[int]) -> Dict[str, np.ndarray]:
        """The graph's inputs by name: the image and its height and width inside the
        padding."""
        return {'image': image.detach().cpu().float().numpy(),
                'img_shape': np.asarray(img_shape[:2], np.int64)}

    def __call__(self, image: Tensor, img_shape: Sequence[int]) -> Dict[str, Tensor]:
        """``image`` ``(1, 3, H, W)`` as the data preprocessor gives it, ``img_shape`` its
        height and width inside the padding; returns the named outputs as tensors."""
        if tuple(image.shape[2:]) != self.input_hw and all(
                isinstance(s, int) for s in self.input_hw):
            raise ValueError(f'the ONNX graph takes {self.input_hw[0]}x{self.input_hw[1]} '
                             f'images, got {image.shape[2]}x{image.shape[3]}: preprocess '
                             f'to the exported size')
        outputs = self.session.run(None, self.feeds(image, img_shape))
        return {name: torch.from_numpy(np.asarray(value))
                for name, value in zip(self.output_names, outputs)}


def to_original(outputs: Dict[str, Tensor], scale_factor: Sequence[float],
                ori_shape: Sequence[int], mask_thr_binary: float) -> Dict[str, Tensor]:
    """The graph's detections (input pixels, 28x28 mask probabilities) as mmdet's
    ``predict(..., rescale=True)`` returns them: boxes divided by ``scale_factor`` (w, h),
    masks pasted at ``ori_shape`` one box at a time with mmdet's ``_do_paste_mask`` (as on
    CPUs) and thresholded."""
    from mmdet.models.roi_heads.mask_heads.fcn_mask_head import _do_paste_mask
    boxes = outputs['boxes'].float() / boxes_scale(scale_factor)
    height, width = int(ori_shape[0]), int(ori_shape[1])
    masks = torch.zeros(len(boxes), height, width, dtype=torch.bool)
    probs = outputs['masks']
    if probs.dim() != 3 or probs.shape[1:] == (height, width) and probs.dtype == torch.bool:
        raise ValueError('expected (N, h, w) mask probabilities (an export without '
                         f'paste_masks), got {tuple(probs.shape)} {probs.dtype}')
    for i in range(len(boxes)):
        pasted, region = _do_paste_mask(probs[i:i + 1, None].float(), boxes[i:i + 1], height,
                                        width, skip_empty=True)
        masks[(slice(i, i + 1), ) + region] = pasted >= mask_thr_binary
    return dict(bboxes=boxes, scores=outputs['scores'].float(),
                labels=outputs['labels'].long(), masks=masks)


def boxes_scale(scale_factor: Sequence[float]) -> Tensor:
    """``(1, 4)`` divisor of ``x1, y1, x2, y2`` for mmdet's ``(w_scale, h_scale)``."""
    return torch.tensor(scale_factor, dtype=torch.float32).repeat(2)[None]


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """``(N, M)`` IoU of two sets of ``x1, y1, x2, y2`` boxes (in float64)."""
    a, b = a.double(), b.double()
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None] - inter
    # Two identical empty boxes match; an empty box matches nothing else.
    same = (a[:, None] == b[None]).all(-1)
    return torch.where(union > 0, inter / union.clamp(min=1e-12), same.double())


def match_detections(reference: Dict[str, Tensor], other: Dict[str, Tensor],
                     min_iou: float = 0.99, score_tol: float = 1e-4) -> Dict[str, float]:
    """Match ``other``'s detections to ``reference``'s one to one: each reference detection,
    best score first, takes the unmatched detection of the same label with the highest box
    IoU; a pair counts when that IoU is at least ``min_iou`` and the scores differ by at most
    ``score_tol``.

    Returns:
        ``reference``/``other`` counts, ``matched`` pairs, the smallest IoU and the largest
        score difference over the pairs taken, and with masks, the smallest mask IoU of the
        matched pairs.
    """
    ref_boxes, oth_boxes = reference['bboxes'], other['bboxes']
    iou = box_iou(ref_boxes, oth_boxes) if len(ref_boxes) and len(oth_boxes) else None
    taken = torch.zeros(len(oth_boxes), dtype=torch.bool)
    matched, worst_iou, worst_score, worst_mask_iou = 0, 1.0, 0.0, 1.0
    for i in torch.argsort(reference['scores'], descending=True, stable=True).tolist():
        if iou is None:
            break
        candidates = (other['labels'] == reference['labels'][i]) & ~taken
        if not bool(candidates.any()):
            continue
        row = torch.where(candidates, iou[i], torch.full_like(iou[i], -1.0))
        j = int(row.argmax())
        score_diff = abs(float(reference['scores'][i]) - float(other['scores'][j]))
        if float(row[j]) >= min_iou and score_diff <= score_tol:
            taken[j] = True
            matched += 1
            worst_iou = min(worst_iou, float(row[j]))
            worst_score = max(worst_score, score_diff)
            if 'masks' in reference and 'masks' in other:
                a, b = reference['masks'][i].bool(), other['masks'][j].bool()
                union = int((a | b).sum())
                worst_mask_iou = min(worst_mask_iou,
                                     int((a & b).sum()) / union if union else 1.0)
    report = dict(reference=len(ref_boxes), other=len(oth_boxes), matched=matched,
                  min_iou=worst_iou, max_score_diff=worst_score)
    if 'masks' in reference and 'masks' in other:
        report['min_mask_iou'] = worst_mask_iou
    return report


def test_dataset(cfg):
    """The config's test dataset, built in the config's scope."""
    import copy

    from mmengine.registry import DATASETS, init_default_scope
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    return DATASETS.build(copy.deepcopy(cfg.test_dataloader.dataset))


def mmdet_predict(model: torch.nn.Module, image: Tensor,
                  img_shape: Optional[Sequence[int]] = None) -> Dict[str, Tensor]:
    """mmdet's ``model.predict`` on one preprocessed ``(1, 3, H, W)`` image, in input
    coordinates (``rescale=False``), as a dict of ``bboxes, scores, labels, masks``."""
    from mmdet.structures import DetDataSample
    padded = tuple(image.shape[2:])
    img_shape = padded if img_shape is None else tuple(int(s) for s in img_shape[:2])
    meta = dict(img_shape=img_shape, ori_shape=img_shape, scale_factor=(1., 1.),
                batch_input_shape=padded, pad_shape=padded)
    with torch.no_grad():
        pred = model.predict(image, [DetDataSample(metainfo=meta)], rescale=False)[0]
    return {k: pred.pred_instances[k] for k in ('bboxes', 'scores', 'labels', 'masks')}


def letterbox(cfg, image: np.ndarray, size: Sequence[int]) -> Tuple[Tensor, Tuple[int, int]]:
    """An 8-bit BGR image as mmdet's test pipeline and data preprocessor give it to a graph of
    input ``size``: resized to fit with its aspect ratio kept (mmcv's rounding, bilinear),
    RGB if the preprocessor asks, normalised, zero-padded at the bottom and right.

    Returns:
        The ``(1, 3, H, W)`` input and the resized image's ``(height, width)`` in it.
    """
    import cv2
    pre = dict(cfg.model.get('data_preprocessor') or {})
    mean = np.array(pre.get('mean', [0., 0., 0.]), np.float32)
    std = np.array(pre.get('std', [1., 1., 1.]), np.float32)
    if pre.get('bgr_to_rgb', pre.get('to_rgb', False)):
        image = image[..., ::-1]
    height, width = image.shape[:2]
    scale = min(size[0] / height, size[1] / width)
    resized = (int(height * scale + 0.5), int(width * scale + 0.5))
    image = cv2.resize(np.ascontiguousarray(image), (resized[1], resized[0]),
                       interpolation=cv2.INTER_LINEAR)
    padded = np.zeros((3, size[0], size[1]), np.float32)
    padded[:, :resized[0], :resized[1]] = ((image.astype(np.float32) - mean) / std).transpose(
        2, 0, 1)
    return torch.from_numpy(padded)[None], resized


def compare_on_images(model: torch.nn.Module, onnx_path: str, images: Sequence[Tensor],
                      img_shapes: Optional[Sequence[Sequence[int]]] = None,
                      min_iou: float = 0.99, score_tol: float = 1e-4) -> List[dict]:
    """:func:`match_detections` of the ONNX graph against mmdet for each preprocessed image;
    ``img_shapes`` give each image's size inside its padding (default: no padding). The mask
    IoU is taken on masks pasted into that image."""
    runtime = OrtMaskRCNN(onnx_path)
    mask_thr = model.roi_head.test_cfg.mask_thr_binary
    reports = []
    for index, image in enumerate(images):
        size = tuple(image.shape[2:]) if img_shapes is None else tuple(img_shapes[index][:2])
        outputs = runtime(image, size)
        if outputs['masks'].dtype == torch.bool:  # exported with paste_masks
            got = dict(bboxes=outputs['boxes'], scores=outputs['scores'],
                       labels=outputs['labels'],
                       masks=outputs['masks'][:, :size[0], :size[1]])
        else:
            got = to_original(outputs, (1., 1.), size, mask_thr)
        reports.append(match_detections(mmdet_predict(model, image, size), got, min_iou,
                                        score_tol))
    return reports


def _metric(cfg, dataset_meta: dict):
    """A new instance of the config's test evaluator (one metric, e.g. ``CocoMetric``)."""
    import copy

    from mmengine.registry import METRICS
    if not isinstance(cfg.test_evaluator, dict):
        raise ValueError(f'expected one test evaluator (a dict), got {cfg.test_evaluator!r}')
    metric = METRICS.build(copy.deepcopy(cfg.test_evaluator))
    metric.dataset_meta = dataset_meta
    return metric


def evaluate(cfg, model: torch.nn.Module, onnx_path: str, max_images: Optional[int] = None,
             min_iou: float = 0.99, score_tol: float = 1e-4) -> dict:
    """COCO bbox/segm metrics of mmdet's ``model.predict`` and of the ONNX graph on the
    config's test set, and how their detections match, image by image.

    Args:
        cfg: the mmengine config the model was built from (test set and evaluator).
        model: the built mmdet Mask R-CNN with its weights, in eval mode.
        onnx_path: the graph written by :func:`~.mask_rcnn.export_mask_rcnn`.
        max_images: evaluate only the first N images (None: all).
        min_iou: see :func:`match_detections`.
        score_tol: see :func:`match_detections`.
    """
    runtime = OrtMaskRCNN(onnx_path)
    model = model.eval()
    mask_thr = model.roi_head.test_cfg.mask_thr_binary
    from mmengine.dataset import pseudo_collate
    dataset = test_dataset(cfg)
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    if count == 0:
        raise ValueError('the test set is empty')
    metrics = {name: _metric(cfg, dataset.metainfo) for name in ('pytorch', 'onnxruntime')}
    per_image = []
    totals = dict(reference=0, other=0, matched=0, min_iou=1.0, max_score_diff=0.0,
                  min_mask_iou=1.0)
    for index in range(count):
        data = model.data_preprocessor(pseudo_collate([dataset[index]]), False)
        inputs, samples = data['inputs'], data['data_samples']
        meta = samples[0].metainfo
        with torch.no_grad():
            torch_pred = model.predict(inputs, samples, rescale=True)[0].pred_instances
        ort_pred = to_original(runtime(inputs, meta['img_shape']), meta['scale_factor'],
                               meta['ori_shape'], mask_thr)
        reference = {k: torch_pred[k] for k in ('bboxes', 'scores', 'labels', 'masks')}
        match = match_detections(reference, ort_pred, min_iou, score_tol)
        per_image.append(dict(img_id=meta['img_id'], **match))
        for key in ('reference', 'other', 'matched'):
            totals[key] += match[key]
        totals['min_iou'] = min(totals['min_iou'], match['min_iou'])
        totals['max_score_diff'] = max(totals['max_score_diff'], match['max_score_diff'])
        totals['min_mask_iou'] = min(totals['min_mask_iou'], match['min_mask_iou'])
        for name, pred in (('pytorch', reference), ('onnxruntime', ort_pred)):
            sample = dict(img_id=meta['img_id'], ori_shape=meta['ori_shape'],
                          pred_instances=pred)
            metrics[name].process({}, [sample])
    results = {name: metric.evaluate(count) for name, metric in metrics.items()}
    keys = [k for k in results['pytorch'] if k.endswith(('bbox_mAP', 'segm_mAP'))]
    return dict(images=count, metrics=results,
                map_difference={k: results['onnxruntime'][k] - results['pytorch'][k]
                                for k in keys},
                detections=totals, per_image=per_image)


def main(argv: Optional[List[str]] = None) -> int:
    from mmengine.config import Config, DictAction
    from mmengine.runner import load_checkpoint

    import quadmamba_mm  # noqa: F401  (registers the models, safe checkpoint loading)
    from quadmamba_mm.checkpoints.resume import check_checkpoint
    from quadmamba_mm.runtime.toolbox import build_model
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--onnx', required=True, help='the exported Mask R-CNN')
    parser.add_argument('--images', nargs='+', default=None,
                        help="compare on these images (fitted into the graph's input with their "
                             "aspect ratio kept, padded) instead of the config's test set")
    parser.add_argument('--max-images', type=int, default=None)
    parser.add_argument('--out', default=None, help='write the report as JSON')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={})
    args = parser.parse_args(argv)
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    model = build_model(cfg)
    check_checkpoint(args.checkpoint)
    load_checkpoint(model, args.checkpoint, map_location='cpu', strict=True)
    model.eval()
    if args.images:
        from quadmamba_mm.runtime.images import UnreadableImage, read_image
        size = OrtMaskRCNN(args.onnx).input_hw
        inputs = []
        for path in args.images:
            try:
                inputs.append(letterbox(cfg, read_image(path), size))
            except UnreadableImage as error:
                raise SystemExit(f'cannot use image {path}: {error}')
        reports = compare_on_images(model, args.onnx, [x for x, _ in inputs],
                                    [hw for _, hw in inputs])
        for path, (_, hw), report in zip(args.images, inputs, reports):
            print(f'{path} ({hw[0]}x{hw[1]} in {size[0]}x{size[1]}): {json.dumps(report)}')
        ok = all(r['matched'] == r['reference'] == r['other'] for r in reports)
    else:
        report = evaluate(cfg, model, args.onnx, args.max_images)
        print(json.dumps({k: v for k, v in report.items() if k != 'per_image'}, indent=2))
        if args.out:
            with open(args.out, 'w') as f:
                json.dump(report, f, indent=2)
        det = report['detections']
        ok = (det['matched'] == det['reference'] == det['other']
              and all(abs(v) <= 0.002 for v in report['map_difference'].values()))
    print('OK: ONNX Runtime gives the same detections as PyTorch' if ok else
          'FAILED: ONNX Runtime differs from PyTorch (see above)')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
