"""Draw each quadtree block's locality scores, chosen window and fine windows over images.

    python tools/visualize_quadtree.py CONFIG CHECKPOINT IMAGE_OR_FOLDER [...] [--out-dir DIR]

For every image, one PNG: the input, then one panel per quadtree block (heat map of the
token locality scores; coarse windows in white; the chosen window's fine windows in green).
Works with the classification, detection and segmentation configs of this project.

Images are read as ``tools/inference.py`` reads them (any mode converted to 8-bit BGR); an
image larger than ``--max-side`` is scaled down first. A file that cannot be read or drawn gets
one line saying why and the others are still drawn; the exit status is 1 when any failed.
"""
import argparse
import sys
from pathlib import Path

import cv2
from mmengine.config import Config
from mmengine.runner import load_checkpoint

from quadmamba_mm.runtime.quiet import quiet_tools
from quadmamba_mm.runtime.images import list_images, run_per_image
from quadmamba_mm.runtime.toolbox import build_model
from quadmamba_mm.visualization import (backbone_input, draw_all_partitions,
                                        quadtree_partitions)


def main():
    quiet_tools()  # no pkg_resources warnings, no torch build dump
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint', help="the model's checkpoint, or 'none' for random weights")
    parser.add_argument('images', nargs='+', help='image files or folders of images')
    parser.add_argument('--out-dir', default='work_dirs/quadtree_vis')
    parser.add_argument('--max-side', type=int, default=1024,
                        help='scale larger images down to this longer side first (0: never); '
                             'the backbone runs at full resolution of what it is given')
    args = parser.parse_args()
    try:
        images = list_images(args.images)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(str(error)) from None
    cfg = Config.fromfile(args.config)
    model = build_model(cfg).eval()
    if args.checkpoint != 'none':
        load_checkpoint(model, args.checkpoint, map_location='cpu')
    preprocessor = cfg.model.get('data_preprocessor') or cfg.get('data_preprocessor') or {}
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def handle(path, image):
        height, width = image.shape[:2]
        note = ''
        if args.max_side and max(height, width) > args.max_side:
            scale = args.max_side / max(height, width)
            image = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                               interpolation=cv2.INTER_AREA)
            note = f' (scaled from {width}x{height} to {image.shape[1]}x{image.shape[0]})'
        out = out_dir / f'{path.stem}_quadtree.png'
        records = quadtree_partitions(model.backbone, backbone_input(image, preprocessor))
        if not cv2.imwrite(str(out), draw_all_partitions(image, records)):
            raise OSError(f'could not write {out}')
        return f'{len(records)} quadtree blocks -> {out}{note}'

    sys.exit(run_per_image(images, handle, out_dir))

if __name__ == '__main__':
    main()
