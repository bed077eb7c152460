"""Draw each quadtree block's locality scores, chosen window and fine windows over images.

    python tools/visualize_quadtree.py CONFIG CHECKPOINT IMAGE [IMAGE ...] [--out-dir DIR]

For every image, one PNG: the input, then one panel per quadtree block (heat map of the
token locality scores; coarse windows in white; the chosen window's fine windows in green).
Works with the classification, detection and segmentation configs of this project.
"""
import argparse
from pathlib import Path

import cv2
from mmengine.config import Config
from mmengine.runner import load_checkpoint

from quadmamba_mm.utils.toolbox import build_model
from quadmamba_mm.visualization import (backbone_input, draw_all_partitions,
                                        quadtree_partitions)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint', help="the model's checkpoint, or 'none' for random weights")
    parser.add_argument('images', nargs='+')
    parser.add_argument('--out-dir', default='work_dirs/quadtree_vis')
    args = parser.parse_args()
    cfg = Config.fromfile(args.config)
    model = build_model(cfg).eval()
    if args.checkpoint != 'none':
        load_checkpoint(model, args.checkpoint, map_location='cpu')
    preprocessor = cfg.model.get('data_preprocessor') or cfg.get('data_preprocessor') or {}
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in args.images:
        image = cv2.imread(path)
        if image is None:
            raise SystemExit(f'cannot read image {path}')
        records = quadtree_partitions(model.backbone, backbone_input(image, preprocessor))
        out = out_dir / f'{Path(path).stem}_quadtree.png'
        cv2.imwrite(str(out), draw_all_partitions(image, records))
        print(f'{path}: {len(records)} quadtree blocks -> {out}')


if __name__ == '__main__':
    main()
