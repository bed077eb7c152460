"""Export a QuadMamba model to ONNX with the exact scan, then check it with ONNX Runtime.

    python tools/deployment/pytorch2onnx.py CONFIG CHECKPOINT --out model.onnx \\
        [--shape H W] [--image IMG ...] [--dynamic] [--opset 17] [--repeat 10] \\
        [--cfg-options KEY=VALUE ...]

What is exported, by the config's toolbox:

* mmpretrain: the classifier, image -> class logits;
* mmseg: the whole segmentor, image -> per-pixel class logits at the input size;
* mmdet: the whole Mask R-CNN, image -> boxes, scores, labels and 28x28 masks
  (``--paste-masks``: masks pasted into the image), with the model's test-time NMS and
  RoIAlign as the standard ONNX operators (``quadmamba_mm.deploy.mask_rcnn``; torch's
  default exporter). ONNX Runtime's detections are matched to mmdet's (box IoU >= 0.99, same
  label, scores within 1e-4), and the tool exits non-zero if any is unmatched.
  ``--features-only`` exports the backbone and the neck instead, image -> the FPN maps.

The selective scans are switched to the ``segsum`` backend for the export: the exact
recurrence in standard ONNX operators (CumSum, Exp, MatMul, ...), no approximation. The
scan orders of the quadtree and cross scans are fixed by the map size, so H and W are those
of ``--shape``; ``--dynamic`` makes the batch dimension dynamic.

Afterwards ONNX Runtime (CPU) runs on the images (``--image``, resized to the shape and
normalised as the config's data preprocessor says; a fixed random input without images),
and the tool prints the largest difference to PyTorch relative to the largest output value
and the median latency of both. It exits non-zero when the difference exceeds
``--tolerance`` (default 1e-4).
"""
import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import List, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import Config, DictAction
from mmengine.runner import load_checkpoint

import quadmamba_mm  # noqa: F401  (registers the models, safe checkpoint loading)
from quadmamba_mm.models import SelectiveScan
from quadmamba_mm.checkpoints.resume import check_checkpoint
from quadmamba_mm.runtime.toolbox import build_model, toolbox_of

DEFAULT_SHAPE = {'mmpretrain': (224, 224), 'mmseg': (512, 512), 'mmdet': (800, 1344)}


class Exported(nn.Module):
    """The part of an OpenMMLab model that is exported, as ``image -> tensor(s)``."""

    def __init__(self, model: nn.Module, toolbox: str) -> None:
        super().__init__()
        self.model, self.toolbox = model, toolbox

    def forward(self, x: torch.Tensor):
        if self.toolbox == 'mmdet':
            return tuple(self.model.extract_feat(x))
        if self.toolbox == 'mmseg':
            logits = self.model._forward(x)  # decode head output at 1/4 scale
            return F.interpolate(logits, size=x.shape[2:], mode='bilinear',
                                 align_corners=self.model.align_corners)
        return self.model(x, mode='tensor')


class MatrixAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as two averaging matmuls over the same windows. ONNX has no
    adaptive pooling, and the exporter refuses output sizes that do not divide the input
    (UperNet's pyramid pooling: 1, 2, 3, 6 cells of a 16x16 map at 512x512)."""

    def __init__(self, output_size) -> None:
        super().__init__()
        size = output_size if isinstance(output_size, (tuple, list)) else (output_size, ) * 2
        self.output_size = tuple(size)

    @staticmethod
    def pool_matrix(length: int, cells: int, like: torch.Tensor) -> torch.Tensor:
        """``(cells, length)``: row i averages ``[floor(i L / c), ceil((i+1) L / c))``."""
        matrix = torch.zeros(cells, length, dtype=like.dtype, device=like.device)
        for i in range(cells):
            start, end = (i * length) // cells, -(-((i + 1) * length) // cells)
            matrix[i, start:end] = 1.0 / (end - start)
        return matrix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = int(x.shape[-2]), int(x.shape[-1])
        cells_h = self.output_size[0] or height
        cells_w = self.output_size[1] or width
        rows = self.pool_matrix(height, cells_h, x)
        cols = self.pool_matrix(width, cells_w, x)
        return rows @ x @ cols.t()


def exportable(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with the modules ONNX cannot take replaced by equal ones."""
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.AdaptiveAvgPool2d):
            parent = model.get_submodule(name.rpartition('.')[0]) if '.' in name else model
            setattr(parent, name.rpartition('.')[2], MatrixAdaptiveAvgPool2d(module.output_size))
    set_scan_backend(model, 'segsum')
    return model


def set_scan_backend(model: nn.Module, backend: str) -> None:
    for module in model.modules():
        if isinstance(module, SelectiveScan):
            module.backend = backend


def load_inputs(cfg: Config, images: List[str], shape: Tuple[int, int]) -> List[torch.Tensor]:
    """Each image as the model sees it: RGB/BGR as the preprocessor asks, resized,
    normalised; a seeded random input when no image is given."""
    if not images:
        return [torch.randn(1, 3, *shape, generator=torch.Generator().manual_seed(0))]
    import cv2
    pre = cfg.model.get('data_preprocessor') or cfg.get('data_preprocessor') or {}
    mean = np.array(pre.get('mean', [0., 0., 0.]), np.float32)
    std = np.array(pre.get('std', [1., 1., 1.]), np.float32)
    to_rgb = pre.get('to_rgb', pre.get('bgr_to_rgb', False))
    inputs = []
    for path in images:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise SystemExit(f'cannot read image {path} (missing, not an image, or truncated)')
        if to_rgb:
            image = image[..., ::-1]
        image = cv2.resize(image, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
        image = (image.astype(np.float32) - mean) / std
        inputs.append(torch.from_numpy(image.transpose(2, 0, 1).copy())[None])
    return inputs


def median_ms(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def export_detector(model: nn.Module, inputs: List[torch.Tensor], args) -> int:
    """The whole Mask R-CNN to ONNX; ONNX Runtime's detections matched to mmdet's."""
    from quadmamba_mm.deploy.detector_eval import (OrtMaskRCNN, compare_on_images,
                                                   mmdet_predict)
    from quadmamba_mm.deploy.mask_rcnn import export_mask_rcnn
    if args.dynamic:
        raise SystemExit('--dynamic: the detector graph takes one image (batch 1)')
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    opset = max(args.opset, 18)  # torch's default exporter writes opset 18 or later
    export_mask_rcnn(model, inputs[0], args.out, paste_masks=args.paste_masks, opset=opset)
    height, width = inputs[0].shape[2:]
    print(f'wrote {args.out} (mmdet Mask R-CNN, inputs image 1x3x{height}x{width} and '
          f'img_shape, opset {opset})')
    unmatched = 0
    for index, report in enumerate(compare_on_images(model, args.out, inputs)):
        source = args.image[index] if args.image else 'random input'
        print(f'{source}: {report["other"]} detections in ONNX Runtime, {report["reference"]} '
              f'in PyTorch, {report["matched"]} matched (smallest box IoU '
              f'{report["min_iou"]:.5f}, largest score difference {report["max_score_diff"]:.1e}'
              f', smallest mask IoU {report["min_mask_iou"]:.4f})')
        unmatched += max(report['reference'], report['other']) - report['matched']
    x = inputs[0]
    runtime = OrtMaskRCNN(args.out, threads=torch.get_num_threads())
    torch_ms = median_ms(lambda: mmdet_predict(model, x), args.repeat)
    ort_ms = median_ms(lambda: runtime(x, (height, width)), args.repeat)
    print(f'latency, batch 1, {height}x{width}, {torch.get_num_threads()} threads, median of '
          f'{args.repeat}: PyTorch eager (mmdet predict) {torch_ms:.1f} ms, ONNX Runtime '
          f'{ort_ms:.1f} ms ({torch_ms / ort_ms:.2f}x)')
    if unmatched:
        print(f'FAILED: {unmatched} detections of ONNX Runtime and PyTorch unmatched',
              file=sys.stderr)
        return 1
    print('OK: ONNX Runtime gives the same detections as PyTorch')
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--out', required=True, help='the .onnx file to write')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'), default=None)
    parser.add_argument('--image', nargs='*', default=[], help='images to compare outputs on')
    parser.add_argument('--dynamic', action='store_true', help='dynamic batch dimension')
    parser.add_argument('--opset', type=int, default=17)
    parser.add_argument('--repeat', type=int, default=10, help='latency runs')
    parser.add_argument('--tolerance', type=float, default=1e-4)
    parser.add_argument('--features-only', action='store_true',
                        help='mmdet: export the backbone and neck (FPN maps), not the detector')
    parser.add_argument('--paste-masks', action='store_true',
                        help='mmdet: masks pasted into the image (N, H, W), not 28x28')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config settings, key=value (mmengine syntax)')
    args = parser.parse_args(argv)

    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    toolbox = toolbox_of(cfg)
    shape = tuple(args.shape or DEFAULT_SHAPE[toolbox])
    model = build_model(cfg)
    check_checkpoint(args.checkpoint)
    load_checkpoint(model, args.checkpoint, map_location='cpu', strict=True)
    exported = Exported(model.eval(), toolbox).eval()
    inputs = load_inputs(cfg, args.image, shape)
    if toolbox == 'mmdet' and not args.features_only:
        return export_detector(model.eval(), inputs, args)

    to_export = exportable(exported)
    with torch.no_grad():
        n_outputs = len(exported(inputs[0])) if toolbox == 'mmdet' else 1
    output_names = ['logits'] if toolbox != 'mmdet' else [f'feat{i}' for i in range(n_outputs)]
    dynamic_axes = ({name: {0: 'batch'} for name in ['input'] + output_names}
                    if args.dynamic else None)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(to_export, (inputs[0], ), args.out, dynamo=False,
                          opset_version=args.opset, input_names=['input'],
                          output_names=output_names, dynamic_axes=dynamic_axes)
    print(f'wrote {args.out} ({toolbox}, input 1x3x{shape[0]}x{shape[1]}, opset {args.opset})')

    import onnxruntime as ort
    session = ort.InferenceSession(args.out, providers=['CPUExecutionProvider'])
    worst = 0.0  # against the model as users run it (scan backend 'auto')
    for index, x in enumerate(inputs):
        with torch.no_grad():
            expected = exported(x)
        expected = expected if isinstance(expected, tuple) else (expected, )
        got = session.run(None, {'input': x.numpy()})
        for name, e, g in zip(output_names, expected, got):
            diff = float(np.abs(g - e.numpy()).max() / max(float(e.abs().max()), 1e-12))
            worst = max(worst, diff)
            source = args.image[index] if args.image else 'random input'
            print(f'{source}: {name} {tuple(g.shape)}, largest difference to PyTorch '
                  f'{diff:.2e} of the largest |value|')
    x = inputs[0]
    with torch.no_grad():
        torch_ms = median_ms(lambda: exported(x), args.repeat)
    ort_ms = median_ms(lambda: session.run(None, {'input': x.numpy()}), args.repeat)
    print(f'latency, batch 1, {shape[0]}x{shape[1]}, {torch.get_num_threads()} threads, median of '
          f'{args.repeat}: PyTorch eager {torch_ms:.1f} ms, ONNX Runtime {ort_ms:.1f} ms '
          f'({torch_ms / ort_ms:.2f}x)')
    if worst > args.tolerance:
        print(f'FAILED: ONNX Runtime differs from PyTorch by {worst:.2e} > {args.tolerance:g}',
              file=sys.stderr)
        return 1
    print(f'OK: ONNX Runtime matches PyTorch within {worst:.2e} (tolerance {args.tolerance:g})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
