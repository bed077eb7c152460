"""Run a trained model on an image or a folder of images, for any of the three tasks.

    python tools/inference.py CONFIG CHECKPOINT INPUT [--out-dir DIR] [--device cpu]

INPUT is an image file or a folder. The toolbox's own inferencer does the work (mmdet
``DetInferencer``, mmseg ``MMSegInferencer``, mmpretrain ``ImageClassificationInferencer``):
drawn predictions go to ``OUT_DIR/vis`` and, for detection and segmentation, raw predictions
to ``OUT_DIR/preds``; classification results are printed.
"""
import argparse
from pathlib import Path

from mmengine.config import Config

from quadmamba_mm.utils.launch import check_checkpoint
from quadmamba_mm.utils.toolbox import toolbox_of

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')


def list_images(path: Path):
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise SystemExit(f'no images ({", ".join(IMAGE_SUFFIXES)}) in {path}')
        return [str(p) for p in images]
    if not path.is_file():
        raise SystemExit(f'no such image or folder: {path}')
    return [str(path)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('input', type=Path, help='an image or a folder of images')
    parser.add_argument('--out-dir', default='work_dirs/inference')
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args()
    check_checkpoint(args.checkpoint)
    images = list_images(args.input)
    toolbox = toolbox_of(Config.fromfile(args.config))
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)  # mmpretrain makes only the last level
    if toolbox == 'mmdet':
        from mmdet.apis import DetInferencer
        inferencer = DetInferencer(model=args.config, weights=args.checkpoint,
                                   device=args.device, show_progress=False)
        inferencer(images, out_dir=args.out_dir, no_save_pred=False)
    elif toolbox == 'mmseg':
        from mmseg.apis import MMSegInferencer
        inferencer = MMSegInferencer(model=args.config, weights=args.checkpoint,
                                     device=args.device)
        inferencer(images, out_dir=args.out_dir)
    else:
        from mmpretrain.apis import ImageClassificationInferencer
        inferencer = ImageClassificationInferencer(model=args.config, pretrained=args.checkpoint,
                                                   device=args.device)
        for image, result in zip(images, inferencer(images, show_dir=f'{args.out_dir}/vis')):
            print(f'{image}: {result["pred_class"]} ({result["pred_score"]:.3f})')
    print(f'{len(images)} images; outputs in {args.out_dir}')


if __name__ == '__main__':
    main()
