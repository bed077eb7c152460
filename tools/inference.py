"""Run a trained model on an image or a folder of images, for any of the three tasks.

    python tools/inference.py CONFIG CHECKPOINT INPUT [--out-dir DIR] [--device cpu]

CONFIG is a config file or a model name of ``model-index.yml`` (e.g.
``quadmamba-s_8xb128_in1k``); CHECKPOINT is a checkpoint file, or ``none`` for random weights.
INPUT is an image file or a folder (its files with an image suffix). The toolbox's own
inferencer runs the model (mmdet ``DetInferencer``, mmseg ``MMSegInferencer``, mmpretrain
``ImageClassificationInferencer``, built by ``quadmamba_mm.model_index.build_inferencer``:
class names come from the checkpoint, or from the config's dataset when the checkpoint has
none or is ``none``). For an input ``NAME.EXT``, the drawn prediction goes to
``OUT_DIR/vis/NAME.EXT``; detections go to ``OUT_DIR/preds/NAME.json`` and segmentation maps
(class indices) to ``OUT_DIR/preds/NAME.png``; classification results are printed.

Each file is decoded once, completely, before the model sees it (see
``quadmamba_mm.runtime.images``): grayscale, palette, RGBA, CMYK and 16-bit images are
converted to 8-bit BGR as the toolboxes' image loader does. A file that is not a usable image,
or on which the model fails, gets one line saying why, and the run goes on with the next one.
The exit status is 1 when any file failed, 0 otherwise.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
from mmengine.config import Config

from quadmamba_mm.runtime.quiet import quiet_tools
from quadmamba_mm.checkpoints.fit import exit_unless_fits
from quadmamba_mm.checkpoints.resume import check_checkpoint
from quadmamba_mm.model_index import build_inferencer, resolve_config
from quadmamba_mm.runtime.images import list_images, run_per_image
from quadmamba_mm.runtime.toolbox import toolbox_of

# Drawings keep the input's file name when OpenCV writes colour images in that format.
VIS_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')


def vis_name(path: Path) -> str:
    return path.name if path.suffix.lower() in VIS_SUFFIXES else f'{path.name}.png'


def first_sample(result):
    """The one data sample of a single-image call, whatever container the toolbox uses."""
    if isinstance(result, dict):
        result = result['predictions']
    if isinstance(result, (list, tuple)):
        result = result[0]
    return result


class Predictor:
    """One toolbox's inferencer, run on one decoded image at a time; ``__call__`` writes the
    outputs named after the input file and returns a one-line summary."""

    def __init__(self, config: Config, checkpoint: Optional[str], device: str, out_dir: Path,
                 score_thr: float):
        self.toolbox, self.out_dir, self.score_thr = toolbox_of(config), out_dir, score_thr
        (out_dir / 'vis').mkdir(parents=True, exist_ok=True)
        options = dict(show_progress=False) if self.toolbox == 'mmdet' else {}
        self.inferencer = build_inferencer(config, weights=checkpoint, device=device, **options)
        self.inferencer.show_progress = False
        if self.toolbox != 'mmpretrain':
            (out_dir / 'preds').mkdir(exist_ok=True)

    def __call__(self, image: np.ndarray, path: Path) -> str:
        # The pipelines take a BGR array; the visualizers draw on RGB.
        sample = first_sample(self.inferencer(image, return_datasamples=True))
        rgb = np.ascontiguousarray(image[..., ::-1])
        vis_file = self.out_dir / 'vis' / vis_name(path)
        if self.toolbox == 'mmdet':
            drawn = self.inferencer.visualize([rgb], [sample], return_vis=True, no_save_vis=True,
                                              pred_score_thr=self.score_thr)[0]
            prediction = self.inferencer.pred2dict(sample)
            with open(self.out_dir / 'preds' / f'{path.stem}.json', 'w') as f:
                json.dump(prediction, f)
            found = sum(score >= self.score_thr for score in prediction.get('scores', []))
            summary = f'{found} detections with score >= {self.score_thr}'
        elif self.toolbox == 'mmseg':
            drawn = self.inferencer.visualize([rgb], [sample], return_vis=True)[0]
            labels = sample.pred_sem_seg.data[0].cpu().numpy()
            cv2.imwrite(str(self.out_dir / 'preds' / f'{path.stem}.png'),
                        labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16))
            summary = f'{len(np.unique(labels))} classes in the map'
        else:
            drawn = self._draw_class(rgb, sample, path)
            label = int(sample.pred_score.argmax())
            classes = self.inferencer.classes
            name = classes[label] if classes is not None else f'class {label}'
            summary = f'{name} ({float(sample.pred_score[label]):.3f})'
        if not cv2.imwrite(str(vis_file), np.ascontiguousarray(drawn[..., ::-1])):
            raise OSError(f'could not write {vis_file}')
        return f'{summary} -> {vis_file}'

    def _draw_class(self, rgb: np.ndarray, sample, path: Path) -> np.ndarray:
        visualizer = self.inferencer.visualizer
        if visualizer is None:  # as the inferencer itself does for configs without one
            from mmpretrain.visualization import UniversalVisualizer
            visualizer = self.inferencer.visualizer = UniversalVisualizer()
        visualizer.visualize_cls(rgb, sample, classes=self.inferencer.classes, draw_gt=False,
                                 draw_pred=True, draw_score=True, name=path.stem)
        return visualizer.get_image()


def release_device_memory() -> None:
    """After a failure (out of memory, most often), give the cached GPU memory back so the
    next image starts clean."""
    import torch
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main():
    quiet_tools()  # no pkg_resources warnings, no torch build dump
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='a config file or a model name of model-index.yml')
    parser.add_argument('checkpoint', help="the model's checkpoint, or 'none' for random weights")
    parser.add_argument('input', type=Path, help='an image or a folder of images')
    parser.add_argument('--out-dir', type=Path, default=Path('work_dirs/inference'))
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: the lowest score drawn and counted')
    args = parser.parse_args()
    checkpoint = None if args.checkpoint == 'none' else args.checkpoint
    if checkpoint is not None:
        check_checkpoint(checkpoint)
    try:
        images = list_images(args.input)
        config = resolve_config(args.config)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(str(error)) from None
    predictor = Predictor(config, checkpoint, args.device, args.out_dir, args.score_thr)
    if checkpoint is not None:
        # The inferencers load non-strictly: every tensor of the model must be in the checkpoint.
        exit_unless_fits(predictor.inferencer.model, checkpoint, config.get('checkpoint_fit'))

    def handle(path, image):
        try:
            return predictor(image, path)
        except Exception:
            release_device_memory()
            raise

    sys.exit(run_per_image(images, handle, args.out_dir))

if __name__ == '__main__':
    main()
