"""Pairwise generalized intersection-over-union, as ``torchvision.ops.generalized_box_iou``.

GIoU (Rezatofighi et al., 2019) extends IoU below zero for boxes that do not overlap:

    GIoU = IoU - (C - U) / C

where ``U`` is the union of the two boxes and ``C`` the area of the smallest box enclosing
both. It lies in (-1, 1] for proper boxes: 1 for identical boxes, and it approaches -1 as two
small boxes move far apart, where IoU would stay 0 and say nothing about the distance.

This module is the *pairwise* (N, M) matrix used for matching costs (DETR's Hungarian matcher
takes ``-GIoU`` as one of its costs). The matching is a discrete choice that no gradient flows
through, so there is deliberately **no backward**; the differentiable loss on matched pairs is
:func:`scratchvision.losses.generalized_box_iou_loss`, with its gradients, derived on the
losses derivation page (``docs/derivations/losses.md``, section "The pairwise GIoU", eq. (34)).
"""

from __future__ import annotations

import numpy as np

from .. import _checks
from .boxes import box_array

__all__ = ["generalized_box_iou"]


def generalized_box_iou(boxes1, boxes2) -> np.ndarray:
    """Pairwise GIoU of two sets of boxes, loop-free: a (N, 1) column against a (1, M) row.

    Exactly torchvision's formula: the intersection's sides are clamped at 0 and so are the
    enclosing box's, and there is no ``eps`` (unlike the loss), so a pair whose union or
    enclosing area is 0 (two zero-area boxes at one point, say) gives ``nan``, never a warning.

    No backward: it is used for matching costs, which no gradient flows through (module
    docstring); train with :func:`scratchvision.losses.generalized_box_iou_loss`.

    Args:
        boxes1: (N, 4) boxes as ``(x1, y1, x2, y2)``; float32, float64 or integer
            (-> float64, as in :func:`box_iou`).
        boxes2: (M, 4) boxes as ``(x1, y1, x2, y2)``.

    Returns:
        (N, M) array, ``giou[i, j]`` for ``boxes1[i]`` and ``boxes2[j]``; in (-1, 1] for
        proper boxes; the common float type of the inputs.
    """
    boxes1 = box_array(boxes1, "boxes1")
    boxes2 = box_array(boxes2, "boxes2")
    boxes1, boxes2 = _checks.common_float(("boxes1", boxes1), ("boxes2", boxes2))
    # eq. (21): areas, (N,) and (M,)
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    # eqs. (22), (34): the intersection of every pair, (N, 1, 2) against (1, M, 2)
    left_top = np.maximum(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    right_bottom = np.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    sides = np.maximum(right_bottom - left_top, 0)  # eq. (34): clamped, (width, height)
    inter = sides[..., 0] * sides[..., 1]  # (N, M)
    union = area1[:, None] + area2[None, :] - inter  # eq. (24), (N, M)
    # eqs. (26), (34): the enclosing box of every pair, its sides clamped too (torchvision's)
    enclose_left_top = np.minimum(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    enclose_right_bottom = np.maximum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    enclose_sides = np.maximum(enclose_right_bottom - enclose_left_top, 0)  # (N, M, 2)
    enclose = enclose_sides[..., 0] * enclose_sides[..., 1]  # (N, M)
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 / 0 = nan, as torchvision
        iou = inter / union  # eq. (25) without eps
        return iou - (enclose - union) / enclose  # eq. (34)
