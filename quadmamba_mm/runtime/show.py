"""``tools/test.py --show / --show-dir`` for mmpretrain, mmdet and mmseg configs.

Every test image is drawn (the visualization hooks' ``interval`` is set to 1: mmpretrain's
default of 5000 and mmseg's 50 would draw one image in 5000 or one batch in 50). A relative
``--show-dir`` goes under ``work_dir/<timestamp>/``, next to the run's log, as mmdet does;
an absolute one is used as it is. The file layout inside it is the toolbox's own:

* mmdet: ``DIR/<image file name>`` (gt left, prediction right);
* mmpretrain: ``DIR/<image file name>_0.png``;
* mmseg: ``DIR/vis_data/vis_image/test_<image file name>_0.png``.

mmpretrain's hook draws the image tensors of the data pipeline, BGR when the data
preprocessor converts to RGB; they are drawn in their true colours here.

Labels stay readable on small images: the configured visualizer is subclassed so that an
image whose short side is below ``min_size`` pixels (default 512) is first enlarged by an
integer factor, together with its boxes and masks; the toolboxes scale their fonts with the
image (mmdet with the box area, mmseg and mmpretrain with the image side).
"""
import importlib
import math
import os.path as osp
from typing import Optional, Type

import cv2
import numpy as np
import torch
from mmengine.config import Config
from mmengine.structures import BaseDataElement, InstanceData, PixelData

from .toolbox import toolbox_of

MIN_SIZE = 512


def upscale_factor(height: int, width: int, min_size: int = MIN_SIZE) -> int:
    """The smallest integer factor that brings the short side to ``min_size`` (1 if it is
    there already)."""
    return max(1, math.ceil(min_size / max(1, min(height, width))))


def _repeat(value, factor: int):
    """A map (``..., H, W``) enlarged by an integer factor with every pixel repeated."""
    if isinstance(value, torch.Tensor):
        return value.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
    return np.repeat(np.repeat(value, factor, -2), factor, -1)


def _upscale_instances(instances: InstanceData, factor: int) -> InstanceData:
    out = instances.new()
    if 'bboxes' in instances:
        boxes = instances.bboxes.clone()
        if hasattr(boxes, 'rescale_'):  # mmdet's box types scale in place
            boxes.rescale_((factor, factor))
        else:
            boxes = boxes * factor
        out.bboxes = boxes
    if 'masks' in instances:
        masks = instances.masks
        # mmdet's BitmapMasks / PolygonMasks scale themselves; tensors are N x H x W.
        out.masks = masks.rescale(factor) if hasattr(masks, 'rescale') else _repeat(masks, factor)
    return out


def upscale_sample(data_sample: BaseDataElement, factor: int) -> BaseDataElement:
    """A shallow copy of a data sample with its boxes, instance masks and pixel maps
    (``InstanceData`` and ``PixelData`` fields) enlarged by an integer ``factor``; labels,
    scores and metadata are shared."""
    out = data_sample.new()
    for key in data_sample.keys():
        value = getattr(data_sample, key)
        if isinstance(value, InstanceData):
            setattr(out, key, _upscale_instances(value, factor))
        elif isinstance(value, PixelData):
            setattr(out, key, PixelData(metainfo=value.metainfo,
                                        **{k: _repeat(v, factor) for k, v in value.items()}))
    return out


class ReadableDrawings:
    """Mixin for a toolbox visualizer: small images are enlarged before drawing, and
    relative output paths are placed under the run's folder.

    Args:
        name (str): the instance name (mmengine's visualizers are named global instances).
        min_size (int): images whose short side is smaller are enlarged by the integer
            factor that brings it to at least this many pixels.
        show_dir (str, optional): mmseg's drawing folder: the visualizer's storage backends
            write to ``save_dir/show_dir`` (``save_dir`` is ``work_dir/<timestamp>`` when the
            Runner builds it); an absolute path is used as it is.
        save_dir (str, optional): the visualizer's ``save_dir``; also the folder that a
            relative ``out_file`` of a drawing is placed in.
        bgr_inputs (bool): mmpretrain's hook draws the pipeline's image tensors, which are
            BGR when the data preprocessor has ``to_rgb=True``; they are drawn as RGB
            (mmpretrain draws them as they are, with red and blue swapped).
        *args, **kwargs: the visualizer's own arguments.
    """

    def __init__(self, name: str = 'visualizer', *args, min_size: int = MIN_SIZE,
                 show_dir: Optional[str] = None, save_dir: Optional[str] = None,
                 bgr_inputs: bool = False, **kwargs) -> None:
        self.min_size = min_size
        self.bgr_inputs = bgr_inputs
        self.run_dir = save_dir
        if show_dir is not None:
            save_dir = osp.join(save_dir or '', show_dir)
        super().__init__(name, *args, save_dir=save_dir, **kwargs)

    def _out_file(self, out_file: Optional[str]) -> Optional[str]:
        if out_file is None or osp.isabs(out_file) or self.run_dir is None:
            return out_file
        return osp.join(self.run_dir, out_file)

    def add_datasample(self, name: str, image: np.ndarray, data_sample=None, *args, **kwargs):
        """mmdet's and mmseg's drawing, on the enlarged image and data sample."""
        factor = upscale_factor(*image.shape[:2], self.min_size)
        if factor > 1:
            image = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
            if data_sample is not None:
                data_sample = upscale_sample(data_sample, factor)
        if kwargs.get('out_file') is not None:
            kwargs['out_file'] = self._out_file(kwargs['out_file'])
        return super().add_datasample(name, image, data_sample, *args, **kwargs)

    def visualize_cls(self, image: np.ndarray, data_sample, *args, **kwargs):
        """mmpretrain's drawing, with its own ``rescale_factor`` for small images."""
        if self.bgr_inputs:
            image = np.ascontiguousarray(image[..., ::-1])
        if kwargs.get('resize') is None and kwargs.get('rescale_factor') is None:
            factor = upscale_factor(*image.shape[:2], self.min_size)
            if factor > 1:
                kwargs['rescale_factor'] = float(factor)
        if kwargs.get('out_file') is not None:
            kwargs['out_file'] = self._out_file(kwargs['out_file'])
        return super().visualize_cls(image, data_sample, *args, **kwargs)


def readable_visualizer(toolbox: str, base_type) -> str:
    """Register ``ReadableDrawings`` mixed into the visualizer ``base_type`` (a name in
    ``toolbox``'s registry, or a class) in that registry; returns the new type's name."""
    registry = importlib.import_module(f'{toolbox}.registry').VISUALIZERS
    base: Type = registry.get(base_type) if isinstance(base_type, str) else base_type
    if base is None:
        raise ValueError(f'visualizer type {base_type!r} is not registered in {toolbox}')
    if issubclass(base, ReadableDrawings):
        return base.__name__
    readable = type(f'Readable{base.__name__}', (ReadableDrawings, base),
                    dict(__doc__=f'``{base.__name__}`` with ``ReadableDrawings``.'))
    registry.register_module(name=readable.__name__, module=readable, force=True)
    return readable.__name__


def enable_visualization(cfg: Config, show: bool, show_dir: Optional[str],
                         wait_time: float) -> None:
    """Switch the config's visualization hook on for testing, drawing every image.

    Args:
        cfg (Config): the test config; changed in place.
        show (bool): show each drawing in a window.
        show_dir (str, optional): save the drawings here (relative: under
            ``work_dir/<timestamp>``).
        wait_time (float): seconds each shown drawing stays up.

    Raises:
        SystemExit: when the config has no ``default_hooks.visualization``.
    """
    toolbox = toolbox_of(cfg)
    hook = cfg.get('default_hooks', {}).get('visualization')
    if hook is None:
        raise SystemExit('--show/--show-dir need default_hooks.visualization in the config')
    hook.interval = 1
    if toolbox == 'mmpretrain':  # its hook passes out_file = out_dir/<name>_0.png
        hook.update(enable=True, show=show, wait_time=wait_time, out_dir=show_dir)
        preprocessor = cfg.model.get('data_preprocessor') or cfg.get('data_preprocessor') or {}
        cfg.visualizer.bgr_inputs = bool(preprocessor.get('to_rgb', False))
    else:
        hook.update(draw=True, show=show, wait_time=wait_time)
        if show_dir and toolbox == 'mmdet':  # mmdet puts a relative one under work_dir/ts
            hook.test_out_dir = show_dir
        elif show_dir:  # mmseg's hook saves through the visualizer's storage backends
            cfg.visualizer.show_dir = show_dir
    cfg.visualizer.type = readable_visualizer(toolbox, cfg.visualizer.type)
