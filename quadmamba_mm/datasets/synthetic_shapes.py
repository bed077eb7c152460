"""Deterministic small datasets of drawn shapes, in the formats the toolboxes read.

One scene generator (circles, squares and triangles of random colours and sizes on noisy
backgrounds, with occlusion) writes three datasets under ``out``:

* ``coco/``: COCO instance segmentation (``annotations/instances_{train,val}.json`` with
  polygon masks, images in ``train/`` and ``val/``), for mmdet;
* ``ade/``: ADE20K-style semantic segmentation (``images/{training,validation}/*.jpg``,
  ``annotations/{training,validation}/*.png`` with 0 = background, 1-3 = the shapes), for mmseg;
* ``imagenet/``: class folders ``{train,val}/<shape>/*.png`` with one shape per image,
  for mmpretrain.

The same arguments give byte-identical files.
"""
import argparse
import json
from pathlib import Path
from typing import List, Tuple

import cv2
import numpy as np

CLASSES = ('circle', 'square', 'triangle')


def _draw_shape(mask: np.ndarray, kind: int, cx: int, cy: int, r: int, angle: float) -> None:
    if kind == 0:
        cv2.circle(mask, (cx, cy), r, 1, -1)
        return
    corners = 4 if kind == 1 else 3
    angles = angle + np.arange(corners) * 2 * np.pi / corners
    points = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1)
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)


def make_scene(rng: np.random.Generator, size: int, max_objects: int,
               min_objects: int = 1) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """A BGR image and its objects as ``(class index, visible mask)``, front-most last."""
    image = rng.integers(0, 90, 3).astype(np.float32) + rng.normal(0, 12, (size, size, 3))
    objects = []
    for _ in range(rng.integers(min_objects, max_objects + 1)):
        kind = int(rng.integers(0, len(CLASSES)))
        r = int(rng.integers(size // 10, size // 4))
        cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
        mask = np.zeros((size, size), np.uint8)
        _draw_shape(mask, kind, cx, cy, r, float(rng.uniform(0, np.pi)))
        colour = rng.integers(110, 256, 3).astype(np.float32)
        image[mask > 0] = colour + rng.normal(0, 8, (int(mask.sum()), 3))
        for _, earlier in objects:  # the new shape hides what it covers
            earlier[mask > 0] = 0
        objects.append((kind, mask))
    objects = [(k, m) for k, m in objects if m.sum() >= 16]  # drop nearly hidden shapes
    return np.clip(image, 0, 255).astype(np.uint8), objects


def _polygons(mask: np.ndarray) -> List[List[float]]:
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.flatten().astype(float).tolist() for c in contours if len(c) >= 3]


def write_coco(out: Path, split: str, count: int, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    (out / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        image, objects = make_scene(rng, size, max_objects=3)
        name = f'{index:05d}.png'
        cv2.imwrite(str(out / split / name), image)
        images.append(dict(id=index, file_name=name, height=size, width=size))
        for kind, mask in objects:
            polygons = _polygons(mask)
            if not polygons:
                continue
            x, y, w, h = cv2.boundingRect(mask)
            annotations.append(dict(id=len(annotations) + 1, image_id=index, category_id=kind + 1,
                                    segmentation=polygons, area=float(mask.sum()),
                                    bbox=[float(x), float(y), float(w), float(h)], iscrowd=0))
    categories = [dict(id=i + 1, name=name) for i, name in enumerate(CLASSES)]
    (out / 'annotations').mkdir(parents=True, exist_ok=True)
    (out / 'annotations' / f'instances_{split}.json').write_text(
        json.dumps(dict(images=images, annotations=annotations, categories=categories)))


def write_ade(out: Path, split: str, count: int, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for folder in ('images', 'annotations'):
        (out / folder / split).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image, objects = make_scene(rng, size, max_objects=4)
        label = np.zeros((size, size), np.uint8)
        for kind, mask in objects:
            label[mask > 0] = kind + 1
        cv2.imwrite(str(out / 'images' / split / f'{index:05d}.jpg'), image)
        cv2.imwrite(str(out / 'annotations' / split / f'{index:05d}.png'), label)


def write_imagenet(out: Path, split: str, count: int, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        (out / split / name).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image, objects = make_scene(rng, size, max_objects=1, min_objects=1)
        if not objects:
            continue
        cv2.imwrite(str(out / split / CLASSES[objects[-1][0]] / f'{index:05d}.png'), image)


def make_all(out: str, num_train: int = 200, num_val: int = 50, size: int = 128,
             seed: int = 0) -> Path:
    """Write the three datasets; ``train`` and ``val`` use different seeds."""
    out = Path(out)
    for offset, (writer, folder, splits) in enumerate((
            (write_coco, 'coco', ('train', 'val')),
            (write_ade, 'ade', ('training', 'validation')),
            (write_imagenet, 'imagenet', ('train', 'val')))):
        for split, count, split_seed in ((splits[0], num_train, 0), (splits[1], num_val, 1)):
            writer(out / folder, split, count, size, seed * 100 + offset * 10 + split_seed)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default='data/demo')
    parser.add_argument('--num-train', type=int, default=200)
    parser.add_argument('--num-val', type=int, default=50)
    parser.add_argument('--size', type=int, default=128)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    make_all(args.out, args.num_train, args.num_val, args.size, args.seed)
    print(f'wrote COCO, ADE20K-style and ImageNet-style shape datasets under {args.out}')


if __name__ == '__main__':
    main()
