"""BoxCoder and Matcher: how a detector turns boxes into regression targets and anchors into
training labels. Both are torchvision's (``torchvision.models.detection._utils``), in NumPy.

**BoxCoder** writes a box relative to a reference box (an anchor or a proposal) as four
numbers that are roughly scale-free, which is what the regression head learns. With the
reference box's width ``w_a``, height ``h_a`` and centre ``(x_a, y_a)``, and the same for the
target box ``(w, h, x, y)``:

* (1) sizes and centres: ``w = x2 - x1``, ``h = y2 - y1``, ``x = x1 + 0.5 * w``,
  ``y = y1 + 0.5 * h`` (torchvision's arithmetic; the current convention has no ``+ 1`` in the
  widths, so a box's corners sit at ``centre -/+ 0.5 * size``);
* (2) encode: ``dx = wx * (x - x_a) / w_a``, ``dy = wy * (y - y_a) / h_a``,
  ``dw = ww * log(w / w_a)``, ``dh = wh * log(h / h_a)``;
* (3) decode, the inverse: ``x = dx / wx * w_a + x_a``, ``w = exp(min(dw / ww, clip)) * w_a``
  (the same for y and h), and the corners ``x -/+ 0.5 * w``, ``y -/+ 0.5 * h``.

``clip`` (``bbox_xform_clip``, default ``log(1000 / 16)``) keeps ``exp`` from overflowing on a
wild prediction: a decoded box is at most 62.5 times its reference box.

**Matcher** assigns each prediction (anchor, proposal) the ground-truth box it overlaps most,
given the (G, P) matrix of qualities (usually ``box_iou(gt_boxes, anchors)``):

* (4) ``best[p] = max_g Q[g, p]`` and ``match[p] = argmax_g Q[g, p]``;
* (5) ``match[p] = BELOW_LOW_THRESHOLD (-1)`` where ``best[p] < low``, and
  ``BETWEEN_THRESHOLDS (-2)`` where ``low <= best[p] < high``;
* (6) with ``allow_low_quality_matches``: for every ground truth ``g``, each prediction ``p``
  that attains ``max_p' Q[g, p']`` (ties included) gets its match of step (4) back, so that no
  ground truth is left without a prediction, however poor its best overlap.

Tiers: both classes are NumPy only. Their maths is elementwise arithmetic on (K, 4) arrays
and reductions of one matrix, which NumPy writes as directly as a loop would, so a second tier
would only restate the same lines; the IoU matrix a Matcher consumes comes from
:func:`scratchvision.detection.boxes.box_iou`, which has a loop and a numpy tier.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _checks
from .boxes import box_array

__all__ = ["BoxCoder", "Matcher"]


def _sizes_and_centres(boxes: np.ndarray):
    """(K, 4) boxes as (x1, y1, x2, y2) -> four (K,) arrays: widths, heights, centres x, y.

    Eq. (1) with torchvision's operations (``x1 + 0.5 * w``, not ``(x1 + x2) / 2`` as in
    ``box_convert``), so that float32 results round exactly as torchvision's do.
    """
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    return widths, heights, boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights


class BoxCoder:
    """Encode boxes relative to reference boxes, and decode them back (eqs. 1-3).

    ``encode`` and ``decode`` are torchvision's ``BoxCoder.encode_single`` and
    ``decode_single``; the wrappers that take one list entry per image are left out
    (concatenate the images' boxes first). NumPy only (no ``backend`` argument).

    Args:
        weights: ``(wx, wy, ww, wh)``, four positive finite numbers that scale the targets,
            e.g. ``(1, 1, 1, 1)`` for the RPN, ``(10, 10, 5, 5)`` for Faster R-CNN's box head.
        bbox_xform_clip: the largest ``dw / ww`` and ``dh / wh`` that ``decode`` exponentiates
            (default ``log(1000 / 16)``); ``math.inf`` turns the clip off.

    Degenerate boxes are not rejected: a zero-width reference box gives inf / nan targets, as
    in torchvision (and no warning).
    """

    def __init__(self, weights, bbox_xform_clip: float = math.log(1000.0 / 16)):
        if isinstance(weights, (str, bytes)) or not hasattr(weights, "__len__") \
                or len(weights) != 4:
            raise ValueError(f"weights must be four numbers (wx, wy, ww, wh), got {weights!r}")
        weights = tuple(_checks.real_number(w, "weights", allow_nan=False) for w in weights)
        if not all(0 < w < math.inf for w in weights):
            raise ValueError(f"weights must be positive and finite, got {weights!r}")
        self.weights = weights
        self.bbox_xform_clip = _checks.real_number(bbox_xform_clip, "bbox_xform_clip",
                                                   allow_nan=False)

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, bbox_xform_clip={self.bbox_xform_clip})"

    def encode(self, reference_boxes, proposals) -> np.ndarray:
        """Regression targets that turn each proposal into its reference box, eq. (2).

        Args:
            reference_boxes: (K, 4) target boxes as ``(x1, y1, x2, y2)`` (e.g. the ground truth
                matched to each anchor).
            proposals: (K, 4) boxes as ``(x1, y1, x2, y2)`` that the targets are relative to
                (the anchors or proposals).

        Returns:
            (K, 4) targets ``(dx, dy, dw, dh)``, row k relating ``reference_boxes[k]`` to
            ``proposals[k]``, in the two inputs' common float dtype (integer boxes -> float64).
        """
        reference_boxes = box_array(reference_boxes, "reference_boxes")
        proposals = box_array(proposals, "proposals")
        _checks.same_size("reference_boxes", reference_boxes.shape[0], "proposals",
                          proposals.shape[0], "number of boxes (dim 0)")
        reference_boxes, proposals = _checks.common_float(
            ("reference_boxes", reference_boxes), ("proposals", proposals))
        # --8<-- [start:encode]
        wx, wy, ww, wh = np.asarray(self.weights, dtype=proposals.dtype)
        ex_widths, ex_heights, ex_ctr_x, ex_ctr_y = _sizes_and_centres(proposals)  # eq. (1)
        gt_widths, gt_heights, gt_ctr_x, gt_ctr_y = _sizes_and_centres(reference_boxes)
        with np.errstate(divide="ignore", invalid="ignore"):  # degenerate boxes: inf / nan
            targets = (
                wx * (gt_ctr_x - ex_ctr_x) / ex_widths,  # eq. (2)
                wy * (gt_ctr_y - ex_ctr_y) / ex_heights,
                ww * np.log(gt_widths / ex_widths),
                wh * np.log(gt_heights / ex_heights),
            )
        return np.stack(targets, axis=1)  # four (K,) -> (K, 4)
        # --8<-- [end:encode]

    def decode(self, rel_codes, boxes) -> np.ndarray:
        """Apply regression codes to reference boxes, eq. (3).

        Args:
            rel_codes: (K, 4 * C) float codes ``(dx, dy, dw, dh)`` for each of C classes (or
                (K, 4) for one), row k relative to ``boxes[k]``.
            boxes: (K, 4) reference boxes as ``(x1, y1, x2, y2)``; cast to ``rel_codes``'s
                dtype first, as torchvision does.

        Returns:
            (K, 4 * C) decoded boxes as ``(x1, y1, x2, y2)`` per class, the shape and dtype of
            ``rel_codes``; ``.reshape(K, C, 4)`` separates the classes.
        """
        rel_codes = _checks.float_array(rel_codes, "rel_codes", ndim=2)
        if rel_codes.shape[1] % 4 != 0:
            raise ValueError("rel_codes must have 4 * C columns (dx, dy, dw, dh per class), "
                             f"got shape {rel_codes.shape}")
        boxes = box_array(boxes, "boxes")
        _checks.same_size("rel_codes", rel_codes.shape[0], "boxes", boxes.shape[0],
                          "number of rows (dim 0)")
        boxes = boxes.astype(rel_codes.dtype, copy=False)
        widths, heights, ctr_x, ctr_y = _sizes_and_centres(boxes)  # eq. (1), each (K,)
        # --8<-- [start:decode]
        wx, wy, ww, wh = self.weights
        # (K, 4C) -> (K, C) each: column 4c + i holds code i of class c
        dx = rel_codes[:, 0::4] / wx
        dy = rel_codes[:, 1::4] / wy
        # NOTE: the clip caps the size codes from above only (shrinking cannot overflow);
        # nan codes stay nan
        dw = np.minimum(rel_codes[:, 2::4] / ww, self.bbox_xform_clip)
        dh = np.minimum(rel_codes[:, 3::4] / wh, self.bbox_xform_clip)
        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]  # eq. (3); (K, C) * (K, 1)
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        with np.errstate(over="ignore"):  # only reachable with bbox_xform_clip=inf
            pred_w = np.exp(dw) * widths[:, None]
            pred_h = np.exp(dh) * heights[:, None]
        half_w, half_h = 0.5 * pred_w, 0.5 * pred_h
        corners = (pred_ctr_x - half_w, pred_ctr_y - half_h,
                   pred_ctr_x + half_w, pred_ctr_y + half_h)
        # four (K, C) -> (K, C, 4) -> (K, 4C): each class's (x1, y1, x2, y2) side by side
        return np.stack(corners, axis=2).reshape(rel_codes.shape)
        # --8<-- [end:decode]


class Matcher:
    """Assign each prediction the ground truth it overlaps most, or a negative label (eqs. 4-6).

    NumPy only (no ``backend`` argument). Calling it on the (G, P) quality matrix returns the
    (P,) int64 matches: a ground-truth index in [0, G), or :attr:`BELOW_LOW_THRESHOLD` (-1) or
    :attr:`BETWEEN_THRESHOLDS` (-2).

    Args:
        high_threshold: qualities ``>= high_threshold`` are matches.
        low_threshold: qualities in ``[low_threshold, high_threshold)`` are "between" (ignored
            in training), lower ones are "below" (background). Must be ``<= high_threshold``.
        allow_low_quality_matches: also keep, for each ground truth, the predictions it
            overlaps most (eq. 6), even below the thresholds.
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(self, high_threshold: float, low_threshold: float,
                 allow_low_quality_matches: bool = False):
        self.high_threshold = _checks.real_number(high_threshold, "high_threshold", allow_nan=False)
        self.low_threshold = _checks.real_number(low_threshold, "low_threshold", allow_nan=False)
        if self.low_threshold > self.high_threshold:
            raise ValueError("low_threshold must be <= high_threshold, got low_threshold="
                             f"{low_threshold!r} and high_threshold={high_threshold!r}")
        self.allow_low_quality_matches = _checks.boolean(allow_low_quality_matches,
                                                         "allow_low_quality_matches")

    def __repr__(self) -> str:
        return (f"Matcher(high_threshold={self.high_threshold}, "
                f"low_threshold={self.low_threshold}, "
                f"allow_low_quality_matches={self.allow_low_quality_matches})")

    def __call__(self, match_quality_matrix) -> np.ndarray:
        """Match predictions to ground truths.

        Args:
            match_quality_matrix: (G, P) float array, ``Q[g, p]`` the quality (e.g. IoU) of
                ground truth ``g`` with prediction ``p``. G and P must be at least 1, as in
                torchvision (a training image without boxes or proposals is an error there);
                nan is rejected (torchvision would silently match a nan to its ground truth).

        Returns:
            (P,) int64 matches.
        """
        quality = _checks.float_array(match_quality_matrix, "match_quality_matrix", ndim=2)
        if quality.size == 0:
            empty = "ground-truth boxes (G = 0)" if quality.shape[0] == 0 else \
                "predictions (P = 0)"
            raise ValueError(f"match_quality_matrix has no {empty}, got shape {quality.shape}; "
                             "there is nothing to match (torchvision raises here too)")
        if np.isnan(quality).any():
            raise ValueError("match_quality_matrix must not contain nan (an IoU of 0 / 0 comes "
                             "from two zero-area boxes)")
        # --8<-- [start:match]
        # eq. (4). NOTE: on ties between ground truths argmax takes the first (lowest g), as
        # torch.max(dim=0) does on the CPU
        best_quality = quality.max(axis=0)  # (P,)
        best_match = quality.argmax(axis=0)  # (P,)
        matches = best_match.astype(np.int64)  # a copy: best_match is kept for eq. (6)
        # eq. (5): thresholds decide which matches stay (>= high keeps, as torchvision)
        below = best_quality < self.low_threshold
        between = (best_quality >= self.low_threshold) & (best_quality < self.high_threshold)
        matches[below] = self.BELOW_LOW_THRESHOLD
        matches[between] = self.BETWEEN_THRESHOLDS
        if self.allow_low_quality_matches:
            self._restore_low_quality_matches(matches, best_match, quality)
        # --8<-- [end:match]
        return matches

    @staticmethod
    def _restore_low_quality_matches(matches: np.ndarray, best_match: np.ndarray,
                                     quality: np.ndarray) -> None:
        """Eq. (6), in place on ``matches`` (P,): the predictions that are some ground truth's
        best (ties included) get their eq. (4) match back.

        NOTE: the restored match is the prediction's own best ground truth (``best_match``),
        which, when several ground truths compete for it, need not be the ground truth that
        selected it; this is torchvision's rule.
        """
        # --8<-- [start:low_quality]
        best_per_gt = quality.max(axis=1)  # (G,)
        # (G, P) == (G, 1): every (gt, prediction) pair at its gt's maximum, ties included
        _, best_predictions = np.nonzero(quality == best_per_gt[:, None])
        matches[best_predictions] = best_match[best_predictions]
        # --8<-- [end:low_quality]
