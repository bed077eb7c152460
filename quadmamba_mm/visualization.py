"""Drawing the learned quadtree partition of every quadtree block over an image."""
from typing import Dict, List

import cv2
import numpy as np
import torch

from .models.quadmamba import QuadMamba
from .models.quadtree import window_scores
from .models.token_orders import split_bounds


def backbone_input(image: np.ndarray, preprocessor: dict) -> torch.Tensor:
    """BGR image -> normalised ``(1, 3, H, W)`` tensor, as the config's data preprocessor
    normalises (without its batch padding, so maps line up with the image).

    ``quadmamba_mm.runtime.images.read_image`` gives such an image for any file mode."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'expected an (H, W, 3) BGR image, got an array of shape {image.shape} '
                         '(read files with quadmamba_mm.runtime.images.read_image)')
    if preprocessor.get('bgr_to_rgb') or preprocessor.get('to_rgb'):
        image = image[..., ::-1]
    mean = np.array(preprocessor.get('mean', [0., 0., 0.]), np.float32)
    std = np.array(preprocessor.get('std', [1., 1., 1.]), np.float32)
    return torch.from_numpy(((image - mean) / std).transpose(2, 0, 1).copy())[None].float()


@torch.no_grad()
def quadtree_partitions(backbone: QuadMamba, inputs: torch.Tensor) -> List[Dict]:
    """Run ``backbone`` (eval) on ``inputs`` (1, 3, H, W) and return, per quadtree block with a
    predictor: its stage and block index, token scores ``(h, w)`` in image orientation, the
    chosen coarse window, the grid/split and the block's shift."""
    records, hooks = [], []
    for i, stage in enumerate(backbone.stages):
        for j, block in enumerate(stage.blocks):
            predictor = block.op.predictor
            if predictor is None:
                continue

            def hook(module, args, output, i=i, j=j, block=block):
                shift = block.shift(*output.shape[1:]) or (0, 0)
                grid = block.op.quadtree_grid
                records.append(dict(
                    stage=i, block=j, grid=grid, split=block.op.quadtree_split, shift=shift,
                    choice=int(window_scores(output, grid).argmax(-1)[0]),
                    # Scores are taken in the scanned (shifted) frame; roll back for display.
                    scores=torch.roll(output[0], (-shift[0], -shift[1]), (0, 1)).float().numpy()))

            hooks.append(predictor.register_forward_hook(hook))
    was_training = backbone.training
    backbone.eval()
    try:
        backbone(inputs)
    finally:
        backbone.train(was_training)
        for h in hooks:
            h.remove()
    return records


def _window_labels(height: int, width: int, grid: int, split: int, choice: int) -> np.ndarray:
    """Label map: each coarse window its own id, the chosen one split into fine ids."""
    rows, cols = split_bounds(0, height, grid), split_bounds(0, width, grid)
    labels = np.zeros((height, width), np.int32)
    for r in range(grid):
        for c in range(grid):
            labels[rows[r]:rows[r + 1], cols[c]:cols[c + 1]] = r * grid + c
    r, c = divmod(choice, grid)
    fine_rows = split_bounds(rows[r], rows[r + 1], split)
    fine_cols = split_bounds(cols[c], cols[c + 1], split)
    for fr in range(split):
        for fc in range(split):
            labels[fine_rows[fr]:fine_rows[fr + 1], fine_cols[fc]:fine_cols[fc + 1]] = \
                grid * grid + fr * split + fc
    return labels


def _edges(labels: np.ndarray) -> np.ndarray:
    edges = np.zeros(labels.shape, bool)
    edges[:-1] |= labels[:-1] != labels[1:]
    edges[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    return edges


def draw_partition(image: np.ndarray, record: Dict) -> np.ndarray:
    """The block's locality scores as a heat map over ``image`` (BGR, HxWx3), coarse window
    borders in white, the chosen window's fine windows in green."""
    height, width = image.shape[:2]
    scores = record['scores']
    norm = (scores - scores.min()) / max(float(scores.max() - scores.min()), 1e-6)
    heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.resize(heat, (width, height), interpolation=cv2.INTER_NEAREST)
    canvas = cv2.addWeighted(image, 0.5, heat, 0.5, 0)
    labels = _window_labels(*scores.shape, record['grid'], record['split'], record['choice'])
    # Windows are cut in the scanned frame: roll them back to image coordinates.
    labels = np.roll(labels, (-record['shift'][0], -record['shift'][1]), (0, 1))
    labels = cv2.resize(labels.astype(np.float32), (width, height),
                        interpolation=cv2.INTER_NEAREST).astype(np.int32)
    fine = labels >= record['grid']**2
    edges = _edges(labels)
    canvas[edges & ~fine] = (255, 255, 255)
    canvas[edges & fine] = (0, 255, 0)
    cv2.putText(canvas, f's{record["stage"]}b{record["block"]}', (2, 12),
                cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    return canvas


def draw_all_partitions(image: np.ndarray, records: List[Dict]) -> np.ndarray:
    """One panel per quadtree block, side by side after the input image."""
    return np.hstack([image] + [draw_partition(image, r) for r in records])
