"""NumPy tier of NMS: eq. (2) of ``loop.py`` with the inner loop vectorised.

What changes, and why: the outer loop is inherently sequential (whether a box is kept
depends on every box kept before it), but the inner one is not. So the tier keeps the
``remaining`` boxes (neither kept nor suppressed yet, ascending visit positions); each step
keeps the first of them and computes its IoU row (eq. 1) against the rest of its class in one
vectorised expression, then drops the ones it suppresses. The Python loop runs once per
*kept* box, and the rows shrink as boxes are suppressed.

Arithmetic runs in the boxes' dtype, in the loop tier's (and torchvision's) operation order;
the comparison with the threshold is in float64.
"""

from __future__ import annotations

import numpy as np


def iou_row(i: int, candidates: np.ndarray, x1, y1, x2, y2, area) -> np.ndarray:
    """Eq. (1): IoU (M,) of box ``i`` with boxes ``candidates`` (M,), positions into the
    (K,) coordinate columns ``x1, y1, x2, y2`` and their ``area`` (K,).

    The same formula as ``scratchvision.detection.boxes.loop.box_iou``, for one row.
    """
    width = np.minimum(x2[i], x2[candidates]) - np.maximum(x1[i], x1[candidates])
    height = np.minimum(y2[i], y2[candidates]) - np.maximum(y1[i], y1[candidates])
    # NOTE: the clamp at 0 is a kink (non-overlapping boxes); nms needs no gradient. A NaN side
    # (inf - inf) only occurs next to a NaN area, so the IoU is NaN however max treats it.
    width = np.maximum(width, 0)
    height = np.maximum(height, 0)
    inter = width * height
    # NOTE: 0 / 0 = NaN for two zero-area boxes; NaN never suppresses (see loop.iou)
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / (area[i] + area[candidates] - inter)


def greedy_keep(boxes: np.ndarray, group_end: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Eq. (2); arguments and result as ``loop.greedy_keep``: boxes (K, 4) in visit order,
    group_end (K,) int64 -> keep (K,) bool."""
    n = boxes.shape[0]
    x1, y1, x2, y2 = boxes.T  # (K, 4) -> four (K,) columns
    area = (x2 - x1) * (y2 - y1)  # (K,)
    threshold = np.float64(iou_threshold)  # a float64 scalar: float32 IoUs compare in float64
    keep = np.zeros(n, dtype=bool)
    remaining = np.arange(n)  # ascending visit positions, neither kept nor suppressed
    while remaining.size:
        i, rest = remaining[0], remaining[1:]
        keep[i] = True
        # rest is ascending and i's class ends at group_end[i]: its class is a prefix of rest
        n_same = np.searchsorted(rest, group_end[i])
        same_class = rest[:n_same]
        # ~(IoU > t), not IoU <= t: a NaN IoU does not suppress
        survivors = same_class[~(iou_row(i, same_class, x1, y1, x2, y2, area) > threshold)]
        remaining = np.concatenate([survivors, rest[n_same:]])
    return keep
