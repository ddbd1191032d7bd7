"""Loop tier of NMS: the textbook greedy loop, the executable specification.

The boxes arrive already sorted into visit order by :mod:`scratchvision.detection.nms`
(decreasing score, ties by index; with classes, grouped by class). Then:

    (1)  area(b)   = (x2 - x1) * (y2 - y1)
         inter(a, b) = max(0, min(a.x2, b.x2) - max(a.x1, b.x1))
                     * max(0, min(a.y2, b.y2) - max(a.y1, b.y1))
         IoU(a, b) = inter / (area(a) + area(b) - inter)
    (2)  walk i = 0, 1, ..., K-1: if box i is not suppressed, keep it and suppress every
         later box j of its class (i < j < group_end[i]) with IoU(i, j) > iou_threshold.

A suppressed box suppresses nothing: only kept boxes do. The other tiers are checked
against this one, and all of them against ``torchvision.ops.nms``.
"""

from __future__ import annotations

import numpy as np


def iou(a: np.ndarray, b: np.ndarray):
    """Eq. (1): the IoU of two boxes (4,) as (x1, y1, x2, y2), in their dtype.

    The same formula as ``scratchvision.detection.boxes.loop.box_iou`` (eqs. 1-5 there, for
    every pair of two sets), written out here for one pair in torchvision's operation order,
    so that float32 boxes round exactly as torchvision's kernel does.
    """
    zero = a.dtype.type(0)  # 0 in the boxes' dtype
    # NOTE: max(0, side) is a kink (boxes that do not overlap). A NaN side only occurs when a
    # box has a NaN coordinate, or inf - inf along an axis; its area is NaN then, and so is
    # the IoU, whichever way max() treats the NaN.
    width = max(zero, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(zero, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    # NOTE: two zero-area boxes give 0 / 0 = NaN, and NaN > t is false: they never suppress
    # each other. An inverted box (x2 < x1) has a negative area and no intersection: IoU 0.
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / (area_a + area_b - inter)


def greedy_keep(boxes: np.ndarray, group_end: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Eq. (2), the greedy pass.

    Args:
        boxes: (K, 4) boxes in visit order, as (x1, y1, x2, y2).
        group_end: (K,) int64; the boxes of box i's class that come after it are
            i + 1, ..., group_end[i] - 1.
        iou_threshold: suppress when IoU > iou_threshold (strictly).

    Returns:
        (K,) bool: whether each box (in visit order) is kept.
    """
    n = boxes.shape[0]
    keep = np.zeros(n, dtype=bool)
    suppressed = np.zeros(n, dtype=bool)
    for i in range(n):
        if suppressed[i]:
            continue  # a kept, higher-scoring box of its class overlaps it
        keep[i] = True
        for j in range(i + 1, group_end[i]):  # the later, lower-scoring boxes of i's class
            # float(): compare in float64, as torchvision's C++ compares float with double
            if not suppressed[j] and float(iou(boxes[i], boxes[j])) > iou_threshold:
                suppressed[j] = True
    return keep
