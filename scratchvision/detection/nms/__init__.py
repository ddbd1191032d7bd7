"""Non-maximum suppression: ``nms`` and ``batched_nms`` with ``torchvision.ops`` semantics.

Greedy NMS walks the boxes from the highest score down. A box is *kept* unless a box that
was kept before it overlaps it by IoU > ``iou_threshold`` (strictly greater); then it is
*suppressed*. ``batched_nms`` does the same, but a box can only be suppressed by a box of its
own class (``idxs``).

This module validates the arguments and fixes the order the boxes are visited in; the greedy
pass itself is done by one of three tiers, which all keep exactly the same boxes:

* ``loop``  -- :mod:`scratchvision.detection.nms.loop`, the textbook greedy loop (the spec);
* ``numpy`` -- :mod:`scratchvision.detection.nms.vectorized`, one vectorised IoU row per kept
  box against the boxes still in play;
* ``numba`` -- :mod:`scratchvision.detection.nms.numba_cpu`, the greedy loop compiled, with
  a branch-free inner loop over contiguous coordinates (``"auto"`` picks it).

There is no cuda tier: NMS is a chain of decisions (whether box i survives depends on every
box kept before it), so a GPU gains only on very large inputs, with a different algorithm.

Conventions, all torchvision's (``torchvision/csrc/ops/cpu/nms_kernel.cpp``):

* boxes are ``(x1, y1, x2, y2)``; ``area = (x2 - x1) * (y2 - y1)``, with no ``+ 1``;
  ``IoU = inter / (area_i + area_j - inter)``, computed in the boxes' dtype and compared with
  the threshold in float64 (as C++ promotes ``float > double``).
* Ties in score: the lower index is visited (and returned) first, i.e. the order is
  ``argsort(-scores, kind="stable")``. torchvision's CPU kernel behaves so too (its score sort
  is stable in practice; the tests check it on tied scores).
* Degenerate boxes (zero area, so IoU = 0 / 0 = NaN against another such box) and inverted
  boxes (x2 < x1 or y2 < y1: negative area, no intersection) follow from the formula: a NaN
  IoU never suppresses, because ``NaN > t`` is false.
* ``iou_threshold`` may be any real number, as in torchvision: >= 1 suppresses nothing
  (IoU <= 1), a negative one suppresses every later box whose IoU is not NaN, NaN nothing.

Choices of our own: integer boxes are upcast to float64 (exact for every integer up to 2**53);
the boxes' and the scores' dtypes need not match (scores only decide the order); NaN scores
raise ``ValueError``, since a NaN has no rank. ``batched_nms`` never uses torchvision's
coordinate-offset trick (shifting each class by ``idx * (max_coordinate + 1)``), which loses
precision in float32/float16 with large coordinates; it groups the boxes by class instead,
so the greedy pass compares a box only with the later boxes of its own class.
"""

from __future__ import annotations


import numpy as np

from ... import _checks
from ..._dispatch import TierModules
from ..boxes import box_array

__all__ = ["nms", "batched_nms", "TIERS"]

#: the tiers this package implements
TIERS = ("loop", "numpy", "numba")

_tiers = TierModules(__name__, tiers=TIERS)


def nms(boxes, scores, iou_threshold: float, backend: str = "auto") -> np.ndarray:
    """Greedy non-maximum suppression, as ``torchvision.ops.nms``.

    Args:
        boxes: (K, 4) float32/float64 (or integer, upcast to float64) boxes as
            (x1, y1, x2, y2).
        scores: (K,) float32/float64 scores, no NaN.
        iou_threshold: a box is suppressed by a kept, higher-scoring box when their
            IoU > iou_threshold.
        backend: ``"auto"``, ``"loop"``, ``"numpy"`` or ``"numba"``.

    Returns:
        (k,) int64 indices into ``boxes`` of the kept boxes, by decreasing score (ties: lower
        index first).
    """
    boxes, scores = _boxes_and_scores(boxes, scores)
    return _greedy(boxes, scores, None, _iou_threshold(iou_threshold), backend)


def batched_nms(boxes, scores, idxs, iou_threshold: float, backend: str = "auto") -> np.ndarray:
    """NMS within each class, as ``torchvision.ops.batched_nms``: a box is only suppressed by
    a kept, higher-scoring box of the same class.

    Args:
        boxes: (K, 4) boxes as (x1, y1, x2, y2), float32/float64 (integers are upcast).
        scores: (K,) float scores, no NaN.
        idxs: (K,) integer class (or image) id of each box.
        iou_threshold: suppression threshold (IoU > iou_threshold suppresses).
        backend: ``"auto"``, ``"loop"``, ``"numpy"`` or ``"numba"``.

    Returns:
        (k,) int64 indices of the kept boxes of all classes together, by decreasing score
        (ties: lower index first). torchvision returns the same boxes; with more than 1000
        boxes it takes a per-class path whose final sort may order tied scores differently.
    """
    boxes, scores = _boxes_and_scores(boxes, scores)
    idxs = _checks.index_array(idxs, "idxs", ndim=1)
    _checks.same_size("boxes", boxes.shape[0], "idxs", idxs.shape[0], "number of boxes (dim 0)")
    return _greedy(boxes, scores, idxs, _iou_threshold(iou_threshold), backend)


# ----------------------------------------------------------------------------- arguments

def _boxes_and_scores(boxes, scores) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``boxes`` (K, 4) and ``scores`` (K,); integer boxes become float64."""
    boxes = box_array(boxes, "boxes")
    scores = _checks.float_array(scores, "scores", ndim=1)
    _checks.same_size("boxes", boxes.shape[0], "scores", scores.shape[0],
                      "number of boxes (dim 0)")
    nan = np.flatnonzero(np.isnan(scores))
    if nan.size:
        raise ValueError(f"scores must not contain NaN (a NaN score has no rank), got NaN at "
                         f"index {nan[0]} ({nan.size} NaN in all)")
    return boxes, scores


def _iou_threshold(value) -> float:
    """Any real number, as torchvision accepts (see the module docstring for its meaning)."""
    return _checks.real_number(value, "iou_threshold")


# ----------------------------------------------------------------------------- the visit order

def _group_ends(labels: np.ndarray) -> np.ndarray:
    """For labels (K,) sorted into runs of equal values, (K,) int64: one past the last position
    of each position's run. E.g. [3, 3, 7, 9, 9] -> [2, 2, 3, 5, 5]."""
    n = labels.shape[0]
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])  # (runs,)
    ends = np.r_[starts[1:], n]  # (runs,)
    return np.repeat(ends, ends - starts).astype(np.int64)  # (runs,) -> (K,)


def _greedy(boxes: np.ndarray, scores: np.ndarray, idxs: np.ndarray | None,
            iou_threshold: float, backend: str) -> np.ndarray:
    """Put the boxes in visit order, run the tier's greedy pass, map back to indices.

    The visit order is decreasing score, ties by index. With classes (``idxs``), the boxes are
    also grouped by class (a stable sort keeps the score order inside each class), so that the
    boxes a box may suppress are exactly the positions after it up to ``group_end``.
    """
    tier = _tiers.get(backend)  # resolved first: a bad backend is an error even with no boxes
    n = boxes.shape[0]
    if n == 0:
        return np.empty(0, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")  # (K,) decreasing score, ties: lower index first
    if idxs is None:
        group_end = np.full(n, n, dtype=np.int64)  # one class: every later box is a candidate
    else:
        order = order[np.argsort(idxs[order], kind="stable")]  # by class, then by score
        group_end = _group_ends(idxs[order])
    # boxes[order] is a fresh C-contiguous (K, 4) array in visit order: the tiers never see
    # (or could write to) the caller's array
    keep = tier.greedy_keep(boxes[order], group_end, iou_threshold)  # (K,) bool, visit order
    kept = order[keep]
    if idxs is not None:
        # the classes are interleaved again: decreasing score, ties by index (sorted first)
        kept = np.sort(kept)
        kept = kept[np.argsort(-scores[kept], kind="stable")]
    return kept.astype(np.int64, copy=False)
