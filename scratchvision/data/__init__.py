"""Detection data: a synthetic multi-scale dataset and COCO-format folders.

* :class:`ShapesDataset` (:mod:`scratchvision.data.shapes`): reproducible images of squares,
  discs and triangles (labels 1, 2, 3; :data:`CLASSES`) whose sizes fill COCO's small, medium
  and large buckets, on cluttered, noisy backgrounds; item ``i`` depends on ``(seed, i)`` only;
* :func:`save_coco`, :class:`CocoDetection`, :func:`coco_ground_truth`
  (:mod:`scratchvision.data.coco`): write a dataset as a COCO folder (8-bit PNGs and
  ``annotations.json``, atomically), read any small COCO folder back with every rule checked
  (:class:`CocoFormatError` names the file and the key), or get the COCO dict for evaluation.

Items follow torchvision's detection convention: ``(image, {"boxes", "labels"})`` with the
image (3, H, W) float32 in [0, 1], boxes (K, 4) float32 ``[x1, y1, x2, y2]`` in pixels
(``x2 - x1`` is the width) and labels (K,) int64, 0 never used (the background).
"""

from .coco import BOX_TOLERANCE, CocoDetection, CocoFormatError, coco_ground_truth, save_coco
from .shapes import CLASSES, SIZE_SAMPLING, ShapesDataset, ShapesSample

__all__ = ["ShapesDataset", "ShapesSample", "CLASSES", "SIZE_SAMPLING", "CocoDetection",
           "CocoFormatError", "coco_ground_truth", "save_coco", "BOX_TOLERANCE"]
