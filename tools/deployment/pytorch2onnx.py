"""Export a QuadMamba model to ONNX (the exact scan in standard operators), then check it
with ONNX Runtime.

    python tools/deployment/pytorch2onnx.py CONFIG CHECKPOINT|none --out model.onnx \\
        [--shape H W] [--image IMG ...] [--exporter dynamo|torchscript] [--opset N] \\
        [--dynamic] [--seg-output logits|labels] [--eval] [--features-only] [--paste-masks] \\
        [--repeat 20] [--threads N] [--profile] [--tolerance 1e-4] \\
        [--cfg-options KEY=VALUE ...]

What is exported, by the config's toolbox (one function per model kind, ``MODEL_KINDS``):

* mmpretrain: the classifier, image -> class logits;
* mmseg: the whole segmentor, image -> per-pixel class logits at the input size, or with
  ``--seg-output labels`` the label map (their argmax);
* mmdet: the whole Mask R-CNN, image (and ``img_shape``) -> boxes, scores, labels and 28x28
  masks (``--paste-masks``: pasted into the image), with the model's test-time NMS and
  RoIAlign as the standard ONNX operators (:mod:`quadmamba_mm.deploy.mask_rcnn`, torch's
  default exporter). ONNX Runtime's detections are matched to mmdet's (box IoU >= 0.99, same
  label, scores within 1e-4), and the tool exits 1 if one is unmatched. ``--features-only``
  exports the backbone and the neck instead, image -> the FPN maps.

``CHECKPOINT`` is a checkpoint file or ``none`` (the model's own random initialisation, seeded:
to try the export without weights). The export uses torch's default exporter (``dynamo``) or
``--exporter torchscript``; either way the selective scans take their exact standard-operator
form by themselves (:mod:`quadmamba_mm.deploy.mode`), no approximation. The scan orders
follow the map size, so H and W are those of ``--shape`` (default: 224x224 for classifiers,
the data preprocessor's ``size`` or 512x512 for segmentors, 800x1344 for detectors);
``--dynamic`` makes the batch dimension dynamic.

Then ONNX Runtime (CPU) runs on the images (``--image``; without it, a photograph-like image
the tool generates), resized to the shape and normalised as the config's data preprocessor
says. The tool prints the largest difference to PyTorch relative to the largest output value
(for labels: the share of pixels that differ), and the latency of both runtimes, timed
alternately in this process, with the machine. Both runtimes' thread pools wait passively for
work unless ``OMP_WAIT_POLICY=ACTIVE`` is set (the tool sets ``OMP_WAIT_POLICY=PASSIVE`` for
PyTorch's OpenMP threads otherwise, and turns ONNX Runtime's spinning off): on a machine
shared with other processes, spinning threads take the cores the work needs, and PyTorch's
latency at 2 threads was measured 10x its 1-thread latency there. ``--profile`` then prints
ONNX Runtime's time per operator type from its profiler (the operators inside a ``Scan``'s
body counted as themselves: where an export spends its time). It exits 1 when the
difference exceeds ``--tolerance``. ``--eval`` (segmentors) also runs the config's test set
through both and prints their mIoU.
"""
import argparse
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

# Before torch loads OpenMP: its threads sleep when idle rather than spin (see above).
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import numpy as np  # noqa: E402  (after the line above, on purpose)
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.runner import load_checkpoint  # noqa: E402

import quadmamba_mm  # noqa: E402,F401  (registers the models, safe checkpoint loading)
from quadmamba_mm.checkpoints.resume import check_checkpoint  # noqa: E402
from quadmamba_mm.deploy.onnx import (  # noqa: E402
    EXPORTERS, SEGMENTOR_OUTPUTS, ClassifierGraph, FeatureGraph, SegmentorGraph, export_onnx,
    non_standard_ops, operator_times, ort_session, quiet_exporter, run_session, sample_image)
from quadmamba_mm.runtime.images import UnreadableImage, one_line, read_image  # noqa: E402
from quadmamba_mm.runtime.quiet import quiet_tools  # noqa: E402
from quadmamba_mm.runtime.toolbox import build_model, toolbox_of  # noqa: E402

DEFAULT_SHAPE = {'mmpretrain': (224, 224), 'mmseg': (512, 512), 'mmdet': (800, 1344)}


def classifier_graph(model: nn.Module, cfg: Config, args: argparse.Namespace) -> nn.Module:
    return ClassifierGraph(model)


def segmentor_graph(model: nn.Module, cfg: Config, args: argparse.Namespace) -> nn.Module:
    return SegmentorGraph(model, args.seg_output)


def detector_graph(model: nn.Module, cfg: Config, args: argparse.Namespace) -> nn.Module:
    neck = getattr(model, 'neck', None)
    return FeatureGraph(model, getattr(neck, 'num_outs', None) or len(model.backbone.out_indices))


# toolbox -> the function that builds the exported part of a model of that toolbox
MODEL_KINDS: Dict[str, Callable[[nn.Module, Config, argparse.Namespace], nn.Module]] = {
    'mmpretrain': classifier_graph,
    'mmseg': segmentor_graph,
    'mmdet': detector_graph,
}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint', help="a checkpoint file, or 'none' for random weights")
    parser.add_argument('--out', required=True, help='the .onnx file to write')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'), default=None)
    parser.add_argument('--image', nargs='*', default=[],
                        help='images to compare outputs on (default: a generated one)')
    parser.add_argument('--exporter', choices=EXPORTERS, default='dynamo',
                        help="torch's default exporter (dynamo) or the TorchScript one")
    parser.add_argument('--opset', type=int, default=None, help="default: the exporter's")
    parser.add_argument('--dynamic', action='store_true', help='dynamic batch dimension')
    parser.add_argument('--seg-output', choices=SEGMENTOR_OUTPUTS, default='logits',
                        help='segmentors: per-pixel logits or the label map')
    parser.add_argument('--eval', action='store_true',
                        help="segmentors: mIoU of PyTorch and ONNX Runtime on the config's "
                        'test set')
    parser.add_argument('--features-only', action='store_true',
                        help='detectors: the backbone and neck (FPN maps), not the whole model')
    parser.add_argument('--paste-masks', action='store_true',
                        help='detectors: masks pasted into the image (N, H, W), not 28x28')
    parser.add_argument('--repeat', type=int, default=20, help='timed runs of each runtime')
    parser.add_argument('--threads', type=int, default=None,
                        help='threads of both runtimes (default: torch.get_num_threads())')
    parser.add_argument('--profile', action='store_true',
                        help="then ONNX Runtime's time per operator type (its profiler)")
    parser.add_argument('--tolerance', type=float, default=1e-4)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config settings, key=value (mmengine syntax)')
    return parser.parse_args(argv)


def load_model(cfg: Config, checkpoint: str) -> nn.Module:
    """The config's model in eval mode, with the checkpoint's weights (strict), or with its
    own random initialisation (seed 0) for ``'none'``."""
    torch.manual_seed(0)
    model = build_model(cfg)
    if checkpoint.lower() != 'none':
        check_checkpoint(checkpoint)
        load_checkpoint(model, checkpoint, map_location='cpu', strict=True)
    return model.eval()


def preprocessor(cfg: Config) -> dict:
    return dict(cfg.model.get('data_preprocessor') or cfg.get('data_preprocessor') or {})


def default_shape(cfg: Config, toolbox: str) -> Tuple[int, int]:
    size = preprocessor(cfg).get('size') if toolbox == 'mmseg' else None
    return tuple(size) if size else DEFAULT_SHAPE[toolbox]


def to_input(cfg: Config, image: np.ndarray, shape: Tuple[int, int]) -> torch.Tensor:
    """An 8-bit BGR image as the model sees it: RGB if the preprocessor asks, resized,
    normalised, ``(1, 3, H, W)``."""
    import cv2
    pre = preprocessor(cfg)
    mean = np.array(pre.get('mean', [0., 0., 0.]), np.float32)
    std = np.array(pre.get('std', [1., 1., 1.]), np.float32)
    if pre.get('to_rgb', pre.get('bgr_to_rgb', False)):
        image = image[..., ::-1]
    image = cv2.resize(image, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    image = (image.astype(np.float32) - mean) / std
    return torch.from_numpy(image.transpose(2, 0, 1).copy())[None]


def load_inputs(cfg: Config, paths: List[str],
                shape: Tuple[int, int]) -> List[Tuple[str, torch.Tensor]]:
    if not paths:
        return [('generated image', to_input(cfg, sample_image(), shape))]
    inputs = []
    for path in paths:
        try:
            inputs.append((path, to_input(cfg, read_image(path), shape)))
        except (UnreadableImage, FileNotFoundError) as error:
            raise SystemExit(f'cannot use image {path}: {one_line(error)}')
    return inputs


def difference(expected: torch.Tensor, got: np.ndarray) -> Tuple[float, str]:
    """Largest difference relative to the largest |value| (the share of differing entries
    for integer outputs such as labels), and how to print it."""
    expected = expected.numpy()
    if not np.issubdtype(expected.dtype, np.floating):
        share = float((expected != got).mean())
        return share, f'{share:.2e} of the entries differ'
    diff = float(np.abs(got - expected).max() / max(float(np.abs(expected).max()), 1e-12))
    return diff, f'largest difference to PyTorch {diff:.2e} of the largest |value|'


def machine() -> str:
    """CPU model, vector ISA as PyTorch uses it, threads."""
    name = platform.processor() or platform.machine()
    try:
        found = re.search(r'^model name\s*:\s*(.+)$', Path('/proc/cpuinfo').read_text(), re.M)
        name = found.group(1).strip() if found else name
    except OSError:
        pass
    waiting = 'spinning' if os.environ.get('OMP_WAIT_POLICY', '').upper() == 'ACTIVE' else 'passive'
    return (f'{name}, {torch.backends.cpu.get_cpu_capability()}, '
            f'{torch.get_num_threads()} threads, {waiting} thread wait')


def interleaved_ms(runs: Sequence[Callable[[], object]], repeat: int) -> List[float]:
    """Median wall time of each function, timed alternately (one warm-up run each)."""
    for run in runs:
        run()
    times: List[List[float]] = [[] for _ in runs]
    for _ in range(repeat):
        for run, spent in zip(runs, times):
            start = time.perf_counter()
            run()
            spent.append(time.perf_counter() - start)
    return [statistics.median(spent) * 1e3 for spent in times]


def latency_line(torch_ms: float, ort_ms: float) -> str:
    faster, ratio = (('ONNX Runtime', torch_ms / ort_ms) if ort_ms < torch_ms else
                     ('PyTorch eager', ort_ms / torch_ms))
    return (f'PyTorch eager {torch_ms:.1f} ms, ONNX Runtime {ort_ms:.1f} ms: {faster} is '
            f'{ratio:.2f}x faster')


def print_operator_times(path: str, inputs, spinning: bool, runs: int = 5,
                         top: int = 12) -> None:
    rows = operator_times(path, inputs, torch.get_num_threads(), spinning, runs)
    shown = ', '.join(f'{op} {ms:.1f} ms ({calls:.0f} calls)' for op, ms, calls in rows[:top])
    rest = sum(ms for _, ms, _ in rows[top:])
    print(f"ONNX Runtime's time per run by operator (its profiler, {runs} runs; profiling adds "
          f"time of its own; a Scan's body counted as its operators): {shown}"
          + (f', the rest {rest:.1f} ms' if rows[top:] else '')
          + f'; in all {sum(ms for _, ms, _ in rows):.1f} ms')


def evaluate_segmentation(cfg: Config, graph: nn.Module, session,
                          shape: Tuple[int, int]) -> None:
    """mIoU of the PyTorch graph and the ONNX Runtime session (both giving labels) on the
    config's test set, as mmseg's ``IoUMetric`` counts it."""
    from mmengine.runner import Runner
    from mmseg.evaluation import IoUMetric
    loader = Runner.build_dataloader(cfg.test_dataloader)
    classes = loader.dataset.metainfo['classes']
    ignore = cfg.get('test_evaluator', {}).get('ignore_index', 255)
    totals = {name: [torch.zeros(len(classes), dtype=torch.float64) for _ in range(4)]
              for name in ('PyTorch', 'ONNX Runtime')}
    differ = pixels = 0
    preprocess = graph.model.data_preprocessor
    for batch in loader:
        data = preprocess(batch, False)
        for image, sample in zip(data['inputs'], data['data_samples']):
            if tuple(image.shape[1:]) != tuple(shape):
                raise SystemExit(f'test image {sample.img_path} is {tuple(image.shape[1:])} after '
                                 f'preprocessing; the graph takes {tuple(shape)} (--shape)')
            label = sample.gt_sem_seg.data[0]
            with torch.no_grad():
                ours = graph(image[None])[0]
            theirs = torch.from_numpy(run_session(session, image[None])[0][0])
            differ += int((ours != theirs).sum())
            pixels += ours.numel()
            for name, pred in (('PyTorch', ours), ('ONNX Runtime', theirs)):
                counts = IoUMetric.intersect_and_union(pred, label, len(classes), ignore)
                for total, count in zip(totals[name], counts):
                    total += count.double()
    print(f'{len(loader.dataset)} test images, {differ / max(pixels, 1):.2e} of the label '
          'pixels differ between the runtimes')
    for name, (intersect, union, _, _) in totals.items():
        iou = intersect / union
        print(f'{name}: mIoU {100 * float(np.nanmean(iou.numpy())):.2f} (per class: '
              + ', '.join(f'{c} {100 * float(v):.2f}' for c, v in zip(classes, iou)) + ')')


def export_detector(model: nn.Module, inputs: List[Tuple[str, torch.Tensor]],
                    args: argparse.Namespace) -> int:
    """The whole Mask R-CNN to ONNX; ONNX Runtime's detections matched to mmdet's."""
    from quadmamba_mm.deploy.detector_eval import (OrtMaskRCNN, compare_on_images,
                                                   mmdet_predict)
    from quadmamba_mm.deploy.mask_rcnn import NOT_EXACT, export_mask_rcnn
    if args.dynamic or args.exporter != 'dynamo':
        raise SystemExit('the whole detector is exported by the dynamo exporter for one image '
                         '(no --dynamic, no --exporter torchscript); --features-only exports '
                         'the FPN maps')
    x = inputs[0][1]
    height, width = x.shape[2:]
    start = time.perf_counter()
    export_mask_rcnn(model, x, args.out, paste_masks=args.paste_masks, opset=args.opset or 18)
    import onnx
    opset = next(o.version for o in onnx.load(args.out, load_external_data=False).opset_import
                 if o.domain in ('', 'ai.onnx'))
    print(f'wrote {args.out} (mmdet Mask R-CNN, inputs image 1x3x{height}x{width} and '
          f'img_shape, opset {opset}, {time.perf_counter() - start:.0f} s)')
    outside = non_standard_ops(args.out)
    if outside:
        print(f'FAILED: operators outside the standard ONNX domains: {outside}', file=sys.stderr)
        return 1
    unmatched = 0
    for (source, _), report in zip(inputs, compare_on_images(model, args.out,
                                                             [image for _, image in inputs])):
        print(f'{source}: {report["other"]} detections in ONNX Runtime, {report["reference"]} '
              f'in PyTorch, {report["matched"]} matched (smallest box IoU {report["min_iou"]:.6f}'
              f', largest score difference {report["max_score_diff"]:.1e}, smallest mask IoU '
              f'{report["min_mask_iou"]:.4f})')
        unmatched += max(report['reference'], report['other']) - report['matched']
    print('not as in mmdet (the effect: the matches above): ' + '; '.join(NOT_EXACT))
    spinning = os.environ.get('OMP_WAIT_POLICY', '').upper() == 'ACTIVE'
    runtime = OrtMaskRCNN(args.out, threads=torch.get_num_threads(), spinning=spinning)
    torch_ms, ort_ms = interleaved_ms(
        [lambda: mmdet_predict(model, x), lambda: runtime(x, (height, width))], args.repeat)
    print(f'latency, batch 1, {height}x{width}, median of {args.repeat} alternate runs '
          f'({machine()}; PyTorch: mmdet predict): {latency_line(torch_ms, ort_ms)}')
    if args.profile:
        print_operator_times(args.out, runtime.feeds(x, (height, width)), spinning)
    if unmatched:
        print(f'FAILED: {unmatched} detections of ONNX Runtime and PyTorch unmatched',
              file=sys.stderr)
        return 1
    print('OK: ONNX Runtime gives the same detections as PyTorch')
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    quiet_tools()  # no pkg_resources warnings, no torch build dump
    quiet_exporter()  # no note per Scan without scan outputs
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    toolbox = toolbox_of(cfg)
    if args.eval and toolbox != 'mmseg':
        raise SystemExit('--eval is for segmentors (mmseg configs)')
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = tuple(args.shape or default_shape(cfg, toolbox))
    model = load_model(cfg, args.checkpoint)
    graph = MODEL_KINDS[toolbox](model, cfg, args).eval()
    inputs = load_inputs(cfg, args.image, shape)
    if toolbox == 'mmdet' and not args.features_only:
        return export_detector(model, inputs, args)

    start = time.perf_counter()
    export_onnx(graph, inputs[0][1], args.out, args.exporter, args.opset,
                dynamic_batch=args.dynamic)
    import onnx
    opset = next(o.version for o in onnx.load(args.out, load_external_data=False).opset_import
                 if o.domain in ('', 'ai.onnx'))
    print(f'wrote {args.out} ({toolbox}, input 1x3x{shape[0]}x{shape[1]}, {args.exporter} '
          f'exporter, opset {opset}, {time.perf_counter() - start:.0f} s)')
    outside = non_standard_ops(args.out)
    if outside:
        print(f'FAILED: operators outside the standard ONNX domains: {outside}', file=sys.stderr)
        return 1

    spinning = os.environ.get('OMP_WAIT_POLICY', '').upper() == 'ACTIVE'
    session = ort_session(args.out, args.threads, spinning=spinning)
    worst = 0.0
    for source, x in inputs:
        with torch.no_grad():
            expected = graph(x)
        expected = expected if isinstance(expected, tuple) else (expected, )
        for name, e, g in zip(graph.output_names, expected, run_session(session, x)):
            diff, text = difference(e, g)
            worst = max(worst, diff)
            print(f'{source}: {name} {tuple(g.shape)}, {text}')
    x = inputs[0][1]
    with torch.no_grad():
        torch_ms, ort_ms = interleaved_ms([lambda: graph(x), lambda: run_session(session, x)],
                                          args.repeat)
    print(f'latency, batch 1, {shape[0]}x{shape[1]}, median of {args.repeat} alternate runs '
          f'({machine()}): {latency_line(torch_ms, ort_ms)}')
    if args.profile:
        print_operator_times(args.out, x.numpy(), spinning)
    if args.eval:
        evaluate_segmentation(cfg, graph, session, shape)
    if worst > args.tolerance:
        print(f'FAILED: ONNX Runtime differs from PyTorch by {worst:.2e} > {args.tolerance:g}',
              file=sys.stderr)
        return 1
    print(f'OK: ONNX Runtime matches PyTorch within {worst:.2e} (tolerance {args.tolerance:g})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
