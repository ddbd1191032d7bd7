"""Loop tier of the box operations: the executable specification.

One box, or one pair of boxes, per Python step, with the names of the equations in the
docstring of :mod:`scratchvision.detection.boxes` (the numbers in the comments refer to it).

Arithmetic uses NumPy scalars (``boxes[k, 0]`` is an ``np.float32`` or ``np.float64``), not
Python floats, for two reasons: every step then rounds in the input dtype, exactly as the
vectorised tier and torch do, and ``0 / 0`` gives nan (inside ``np.errstate``) instead of
raising ``ZeroDivisionError``. ``np.maximum`` / ``np.minimum`` are used instead of the built-in
``max`` / ``min`` because they propagate nan whichever argument holds it.

Shapes (already validated by :mod:`scratchvision.detection.boxes`): ``boxes`` (K, 4),
``boxes1`` (K, 4), ``boxes2`` (J, 4), all of one float dtype.
"""

from __future__ import annotations

import numpy as np


def box_area(boxes: np.ndarray) -> np.ndarray:
    """(K,) areas, eq. (1)."""
    area = np.empty(boxes.shape[0], dtype=boxes.dtype)
    for k in range(boxes.shape[0]):
        x1, y1, x2, y2 = boxes[k]
        area[k] = (x2 - x1) * (y2 - y1)  # eq. (1); signed for an inverted box
    return area


def box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """(K, J) IoU of every pair, eqs. (2)-(5)."""
    area1, area2 = box_area(boxes1), box_area(boxes2)
    iou = np.empty((boxes1.shape[0], boxes2.shape[0]), dtype=boxes1.dtype)
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 / 0 = nan, as documented
        for k in range(boxes1.shape[0]):
            ax1, ay1, ax2, ay2 = boxes1[k]
            for j in range(boxes2.shape[0]):
                bx1, by1, bx2, by2 = boxes2[j]
                # eq. (2): the corners of the intersection rectangle
                left, top = np.maximum(ax1, bx1), np.maximum(ay1, by1)
                right, bottom = np.minimum(ax2, bx2), np.minimum(ay2, by2)
                # eq. (3). NOTE: the clamp at 0 is where disjoint boxes (and inverted ones,
                # whose "rectangle" is inside out) get an intersection of 0, not a negative one
                inter = np.maximum(right - left, 0) * np.maximum(bottom - top, 0)
                union = area1[k] + area2[j] - inter  # eq. (4)
                iou[k, j] = inter / union  # eq. (5)
    return iou


def to_xyxy(boxes: np.ndarray, in_fmt: str) -> np.ndarray:
    """(K, 4) in ``in_fmt`` ("xywh" or "cxcywh") -> (K, 4) as (x1, y1, x2, y2), eq. (6)."""
    out = np.empty_like(boxes)
    for k in range(boxes.shape[0]):
        if in_fmt == "xywh":
            x1, y1, w, h = boxes[k]
            out[k] = (x1, y1, x1 + w, y1 + h)
        else:  # "cxcywh"
            cx, cy, w, h = boxes[k]
            out[k] = (cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h)
    return out


def from_xyxy(boxes: np.ndarray, out_fmt: str) -> np.ndarray:
    """(K, 4) as (x1, y1, x2, y2) -> (K, 4) in ``out_fmt`` ("xywh" or "cxcywh"), eq. (6)."""
    out = np.empty_like(boxes)
    for k in range(boxes.shape[0]):
        x1, y1, x2, y2 = boxes[k]
        w, h = x2 - x1, y2 - y1
        if out_fmt == "xywh":
            out[k] = (x1, y1, w, h)
        else:  # "cxcywh"
            out[k] = ((x1 + x2) / 2, (y1 + y2) / 2, w, h)
    return out
