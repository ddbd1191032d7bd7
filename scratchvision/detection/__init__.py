"""Detection utilities: the multi-scale anchors, boxes and suppression around a detector.

* box operations (:mod:`scratchvision.detection.boxes`, loop and NumPy tiers):
  :func:`box_area`, :func:`box_iou`, :func:`box_convert`;
* :func:`generalized_box_iou` (:mod:`scratchvision.detection.giou`): torchvision's pairwise
  GIoU, for matching costs (forward only);
* :class:`BoxCoder` (box <-> regression targets) and :class:`Matcher` (IoU matrix -> the
  ground truth each prediction is assigned to), as torchvision's detection models use them;
* :func:`nms` and :func:`batched_nms` (:mod:`scratchvision.detection.nms`, loop, NumPy and
  numba tiers);
* :class:`AnchorGenerator`: torchvision's multi-scale anchors, per pyramid level;
* :class:`ImagePyramid` and its fusion functions: run a model on several resized copies of
  the image and fuse the predictions (dense maps by resizing back, boxes by NMS or
  score-weighted fusion);
* :func:`coco_evaluate` (:mod:`scratchvision.detection.coco_eval`): COCO's box AP / AR,
  the twelve numbers of pycocotools' ``COCOeval``, from scratch.

Semantics follow torchvision; where they differ (integer boxes upcast to float64, per-class
batched NMS without the coordinate-offset trick, ...) the function's docstring says so.
"""

from .anchors import AnchorGenerator
from .box_coder import BoxCoder, Matcher
from .boxes import box_area, box_convert, box_iou
from .coco_eval import CocoEvaluation, coco_evaluate
from .giou import generalized_box_iou
from .nms import batched_nms, nms
from .pyramid import (Detections, ImagePyramid, box_clusters, fuse_boxes, fuse_dense,
                      fuse_dense_backward, rescale_boxes, scaled_size, weighted_box_fusion)

__all__ = ["box_area", "box_iou", "box_convert", "generalized_box_iou", "BoxCoder", "Matcher",
           "nms", "batched_nms",
           "AnchorGenerator", "ImagePyramid", "Detections", "scaled_size", "fuse_dense",
           "fuse_dense_backward", "rescale_boxes", "fuse_boxes", "box_clusters",
           "weighted_box_fusion", "coco_evaluate", "CocoEvaluation"]
