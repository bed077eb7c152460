"""Deployment: whole models exported to ONNX with standard operators.

* :func:`export_mode` / :func:`is_export_mode` (:mod:`.mode`): the selective scans switch to
  their exact standard-operator form inside ``torch.onnx.export`` (either exporter) by
  themselves, and inside ``with export_mode():`` for any other tracer.
* :mod:`.mask_rcnn`: the whole Mask R-CNN (boxes, scores, labels, masks) as one graph.
"""
from .mode import export_mode, is_export_mode

__all__ = ['export_mode', 'is_export_mode']
