"""Numba tier of NMS: the greedy loop of ``loop.py`` compiled, with a faster inner loop.

What changes relative to the loop tier, and why:

* **Precomputed areas, contiguous columns.** The boxes (already in visit order) are split
  into four contiguous (K,) columns and their areas computed once, so the inner loop streams
  through memory instead of gathering ``boxes[order[j]]``.
* **A branch-free inner loop.** For a kept box i, the IoU with *every* later box of its class
  is computed and OR-ed into the ``suppressed`` mask, already-suppressed boxes included (the
  loop tier skips them). The result is the same -- a suppressed box stays suppressed -- and a
  loop without branches or conditional stores is one LLVM turns into SIMD instructions,
  several boxes per instruction, which is faster than skipping the work. The inner index is
  unsigned (``uint64``) for the same reason: numba then drops its negative-index wraparound
  select, which otherwise hides from LLVM that ``suppressed[j]`` is read and written at the
  same place. (The benchmark, ``scratchvision bench nms``, shows what the two buy together.)
* **Sequential, on purpose.** ``parallel=True`` would not pay: the outer loop is a chain of
  decisions (box i is kept only if no box kept before it overlaps it), and splitting the
  inner loop over threads costs a parallel region per kept box -- thousands of regions of a
  few microseconds of work each for 10k boxes.

Arithmetic runs in the boxes' dtype (float32 stays float32, as in torchvision's kernel); the
IoU is compared with the threshold in float64. ``error_model="numpy"``: 0 / 0 must give NaN
(two zero-area boxes, which then never suppress each other), not raise ZeroDivisionError.
"""

from __future__ import annotations

import numpy as np
from numba import njit, uint64


@njit(cache=True, error_model="numpy")
def _greedy_kernel(x1, y1, x2, y2, area, group_end, iou_threshold, zero, keep, suppressed):
    """Eq. (2) on the (K,) columns; fills ``keep`` and ``suppressed`` (K,) uint8 (zeroed).

    ``zero`` is 0 in the boxes' dtype: a float literal would be float64 and widen the IoU.
    """
    n = x1.shape[0]
    for i in range(n):
        if suppressed[i]:
            continue
        keep[i] = 1
        ix1, iy1, ix2, iy2, iarea = x1[i], y1[i], x2[i], y2[i], area[i]
        for j in range(uint64(i + 1), uint64(group_end[i])):  # unsigned: see the docstring
            # eq. (1), the same formula as scratchvision.detection.boxes.loop.box_iou
            width = min(ix2, x2[j]) - max(ix1, x1[j])
            height = min(iy2, y2[j]) - max(iy1, y1[j])
            width = max(width, zero)  # NOTE: NaN sides: see loop.iou
            height = max(height, zero)
            inter = width * height
            iou = inter / (iarea + area[j] - inter)  # NOTE: 0 / 0 = NaN never suppresses
            suppressed[j] |= iou > iou_threshold  # float32 > float64 compares in float64


def greedy_keep(boxes: np.ndarray, group_end: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Eq. (2); arguments and result as ``loop.greedy_keep``: boxes (K, 4) in visit order,
    group_end (K,) int64 -> keep (K,) bool."""
    n = boxes.shape[0]
    x1, y1, x2, y2 = np.ascontiguousarray(boxes.T)  # (K, 4) -> (4, K): four contiguous rows
    area = (x2 - x1) * (y2 - y1)  # (K,), in the boxes' dtype
    keep = np.zeros(n, dtype=np.uint8)
    suppressed = np.zeros(n, dtype=np.uint8)
    _greedy_kernel(x1, y1, x2, y2, area, np.ascontiguousarray(group_end, dtype=np.int64),
                   float(iou_threshold), boxes.dtype.type(0), keep, suppressed)
    return keep.view(bool)
