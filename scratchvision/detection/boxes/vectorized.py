"""NumPy tier of the box operations: the same maths as ``loop.py``, no Python loop over boxes.

What changes, and why: the loop over boxes becomes arithmetic on whole coordinate columns,
and the double loop over pairs in ``box_iou`` becomes a broadcast of a (K, 1) column against a
(1, J) row, which builds the (K, J) grid of eqs. (2)-(5) at once. Memory is a few (K, J)
temporaries, the same as torchvision's. Every step rounds in the input dtype, as in ``loop.py``.
"""

from __future__ import annotations

import numpy as np


def _columns(boxes: np.ndarray):
    """(K, 4) -> four (K,) columns, the coordinates of every box."""
    return boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]


def box_area(boxes: np.ndarray) -> np.ndarray:
    """(K,) areas, eq. (1)."""
    x1, y1, x2, y2 = _columns(boxes)
    return (x2 - x1) * (y2 - y1)


def box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """(K, J) IoU of every pair, eqs. (2)-(5)."""
    area1, area2 = box_area(boxes1), box_area(boxes2)
    # (K, 2) and (J, 2) corners -> (K, 1, 2) against (1, J, 2): eq. (2) for all pairs at once
    left_top = np.maximum(boxes1[:, None, :2], boxes2[None, :, :2])  # (K, J, 2)
    right_bottom = np.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (K, J, 2)
    # eq. (3). NOTE: clamped at 0, as in loop.py: disjoint and inverted pairs intersect in 0
    sides = np.maximum(right_bottom - left_top, 0)  # (K, J, 2) as (width, height)
    inter = sides[..., 0] * sides[..., 1]  # (K, J)
    union = area1[:, None] + area2[None, :] - inter  # eq. (4), (K, 1) + (1, J) -> (K, J)
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 / 0 = nan, as documented
        return inter / union  # eq. (5)


def to_xyxy(boxes: np.ndarray, in_fmt: str) -> np.ndarray:
    """(K, 4) in ``in_fmt`` ("xywh" or "cxcywh") -> (K, 4) as (x1, y1, x2, y2), eq. (6)."""
    a, b, w, h = _columns(boxes)
    if in_fmt == "xywh":
        corners = (a, b, a + w, b + h)
    else:  # "cxcywh": (a, b) is the centre
        corners = (a - 0.5 * w, b - 0.5 * h, a + 0.5 * w, b + 0.5 * h)
    return np.stack(corners, axis=-1)  # four (K,) -> (K, 4)


def from_xyxy(boxes: np.ndarray, out_fmt: str) -> np.ndarray:
    """(K, 4) as (x1, y1, x2, y2) -> (K, 4) in ``out_fmt`` ("xywh" or "cxcywh"), eq. (6)."""
    x1, y1, x2, y2 = _columns(boxes)
    w, h = x2 - x1, y2 - y1
    if out_fmt == "xywh":
        columns = (x1, y1, w, h)
    else:  # "cxcywh"
        columns = ((x1 + x2) / 2, (y1 + y2) / 2, w, h)
    return np.stack(columns, axis=-1)  # four (K,) -> (K, 4)
