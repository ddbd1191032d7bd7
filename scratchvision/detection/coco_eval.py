"""COCO box evaluation: the twelve AP / AR numbers every detection paper reports, from scratch.

:func:`coco_evaluate` takes ground truth in the COCO format (a dict with ``"images"``,
``"annotations"`` and ``"categories"``) and a list of detections (dicts with ``"image_id"``,
``"category_id"``, ``"bbox"`` and ``"score"``; boxes as ``[x, y, w, h]``) and returns a
:class:`CocoEvaluation`: AP at IoU 0.50:0.95, AP50, AP75, AP for small, medium and large
objects, then AR for 1, 10 and 100 detections per image and AR by size. The numbers are those
of pycocotools' ``COCOeval(gt, dt, "bbox")`` (the test suite compares all twelve on random and
adversarial cases), but the code is written to be read: one function per step below.

The evaluation, step by step (the comments in the code cite these numbers):

1. **Group.** A detection is only ever compared with the ground truth of its own image and
   category, so both are grouped by ``(image_id, category_id)``. Within a group the detections
   are sorted by decreasing score, with a *stable* sort (equal scores keep the order they have
   in the detections list), and only the first 100 are kept.

2. **Overlap.** The IoU of every detection with every ground-truth box of its group, as a
   (D, G) matrix. With ``right = x + w`` and ``bottom = y + h``, the overlap has width
   ``iw = min(right_d, right_g) - max(x_d, x_g)`` and height ``ih`` (the same in y); it counts
   only when both are positive, so boxes that merely touch, and boxes of zero area, have IoU 0.
   Then ``IoU = iw * ih / (w_d * h_d + w_g * h_g - iw * ih)``, except for a *crowd* (a ground
   truth with ``iscrowd=1``: one box around a group of objects too dense to box one by one),
   where the denominator is the detection's own area ``w_d * h_d``: a detection lying inside a
   crowd box has "IoU" 1 with it.

3. **Ignore.** Each area range ``[lo, hi]`` (all: [0, 1e10], small: [0, 32²], medium:
   [32², 96²], large: [96², 1e10]; both ends included, so an area of exactly 32² is small *and*
   medium) is a separate evaluation. In it a ground truth is *ignored* when it is a crowd or
   when its ``"area"`` field lies outside the range. (``"area"``, not ``w * h`` of the box: for
   COCO it is the area of the segmentation mask, usually smaller than the box.) An ignored
   ground truth does not have to be found -- it is not counted in recall -- but a detection
   that matches it is not a false positive either. Ground truth is put in the order regular
   first, ignored last (a stable sort again: annotation order within each kind).

4. **Match**, greedily, at each IoU threshold ``t`` in 0.50, 0.55, ..., 0.95 separately: the
   detections take their turn in score order; each one picks, among the ground truths still
   free, the one with the highest IoU provided that IoU is ``>= t`` (``>=``: an IoU of exactly
   0.5 matches at 0.5). Ground truth is scanned in the order of step 3 and a later one wins a
   tie in IoU. A regular ground truth beats an ignored one whatever their IoUs: once a
   detection holds a regular candidate the scan stops at the first ignored one. A matched
   ground truth is used up, except a crowd, which can absorb any number of detections.
   A detection that matched an ignored ground truth is ignored; so is a detection that matched
   nothing and whose own area ``w * h`` lies outside the area range (it may well have found an
   object of another size, which this range does not count).

5. **Accumulate**, per category, area range and maximum number of detections per image ``m``
   (1, 10, 100): keep each image's first ``m`` detections (in the order of step 1; the matching
   of step 4 was done once, with the first 100, and is simply cut: greedy matching in score
   order never lets a later detection change an earlier one's match, which is also why the cap
   of step 1 only saves work), pool them over all images
   and sort the pool by decreasing score (stable: ties keep the images' order, by increasing
   image id, then the order within each image). Walking down the pool, count true positives
   ``TP`` (matched, not ignored) and false positives ``FP`` (unmatched, not ignored); ignored
   detections count as neither. After each detection, ``recall = TP / n_gt`` (``n_gt``: the
   ground truths of this category that are not ignored) and
   ``precision = TP / (TP + FP + eps)`` (``eps = np.spacing(1)``, so 0 / 0 reads as 0).

6. **Precision-recall curve -> AP.** The precision curve is made non-increasing from the
   right: the precision at a point becomes the best precision at that point or any later one
   (a detector that could stop later with higher recall *and* higher precision would). It is
   then read at the 101 recall points 0, 0.01, ..., 1: at each point ``r``, the precision at
   the first detection whose recall is ``>= r`` (``np.searchsorted(recall, r, side="left")``),
   and 0 where the recall never reaches ``r``. The category's AP at ``t`` is the mean of those
   101 values; its AR at ``t`` is the recall after the last detection (0 when there is none).

7. **Average.** A category with no non-ignored ground truth in an area range (``n_gt = 0``) has
   neither AP nor AR there; it is stored as -1 and left out of every mean. Each of the twelve
   numbers is the mean over categories (and over the ten IoU thresholds, and for AP the 101
   recall points, unless the stat names one threshold) of the values that are not -1; when
   every value is -1 (no category has ground truth in that range) the number itself is -1.

Where this module differs from pycocotools, on purpose:

* it raises on input pycocotools silently drops or mis-reads: detections or annotations whose
  image or category is not in the ground truth, boxes that are not four finite numbers with
  ``w, h >= 0``, non-finite scores, duplicate annotation ids;
* annotation ids are never used to tell matched from unmatched (pycocotools stores the matched
  ground truth's id and tests it for truth, so a ground truth with ``"id": 0`` can never be a
  true positive there); ``"id"`` is optional here;
* ``"iscrowd"`` is optional (default 0) where pycocotools needs the key;
* an empty detections list is a valid input (pycocotools' ``loadRes`` fails on it): every
  category with ground truth in a range gets AP = AR = 0 there, so the numbers are 0, or -1
  for a range where no category has ground truth.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .. import _checks

__all__ = ["coco_evaluate", "CocoEvaluation", "box_iou_xywh", "greedy_match", "STAT_NAMES",
           "IOU_THRESHOLDS", "RECALL_POINTS", "AREA_RANGES", "MAX_DETECTIONS"]

#: the ten IoU thresholds 0.50, 0.55, ..., 0.95. Built with ``linspace`` as COCO does: the
#: exact float values matter at the edges (the 0.9 here is 0.8999999999999999, so an IoU that
#: rounds to that float passes, where it would fail ``0.9``)
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
#: the 101 recall points 0, 0.01, ..., 1 at which the precision curve is read (step 6)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
#: (name, lo, hi) of each area range, both ends inclusive (step 3); 1e10 = COCO's (1e5)²
AREA_RANGES = (("all", 0.0, 1e10), ("small", 0.0, 32.0 ** 2), ("medium", 32.0 ** 2, 96.0 ** 2),
               ("large", 96.0 ** 2, 1e10))
#: the maximum numbers of detections per image (step 5); matching uses the last one
MAX_DETECTIONS = (1, 10, 100)


class _Stat(NamedTuple):
    """What one of the twelve numbers averages: precision ("AP") or recall ("AR"), at one
    IoU threshold or over all ten (None), in one area range, with a cap on detections."""
    kind: str
    iou: float | None
    area: str
    max_detections: int


#: the twelve numbers, in the order of pycocotools' ``COCOeval.stats``
_STATS = {
    "AP": _Stat("AP", None, "all", 100),
    "AP50": _Stat("AP", 0.5, "all", 100),
    "AP75": _Stat("AP", 0.75, "all", 100),
    "APs": _Stat("AP", None, "small", 100),
    "APm": _Stat("AP", None, "medium", 100),
    "APl": _Stat("AP", None, "large", 100),
    "AR1": _Stat("AR", None, "all", 1),
    "AR10": _Stat("AR", None, "all", 10),
    "AR100": _Stat("AR", None, "all", 100),
    "ARs": _Stat("AR", None, "small", 100),
    "ARm": _Stat("AR", None, "medium", 100),
    "ARl": _Stat("AR", None, "large", 100),
}
#: the names of :attr:`CocoEvaluation.stats`, in order
STAT_NAMES = tuple(_STATS)


@dataclass(frozen=True, eq=False)
class CocoEvaluation:
    """The result of :func:`coco_evaluate`.

    Attributes:
        stats: (12,) float64, the numbers named by :attr:`names` (AP, AP50, AP75, APs, APm,
            APl, AR1, AR10, AR100, ARs, ARm, ARl); -1 where no category has ground truth.
        precision: (T, R, K, A, M) = (10, 101, K, 4, 3): the precision curve of step 6 read at
            each recall point, per IoU threshold, recall point, category, area range and
            maximum number of detections; -1 for a category without ground truth in a range.
        recall: (T, K, A, M): the final recall of step 6, -1 likewise.
        category_ids: the K category ids, in increasing order (the K axis).
        names: :data:`STAT_NAMES`.
    """
    stats: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    category_ids: tuple
    names: tuple[str, ...] = STAT_NAMES

    def as_dict(self) -> dict[str, float]:
        """``{"AP": ..., "AP50": ..., ...}``, the stats as Python floats."""
        return {name: float(value) for name, value in zip(self.names, self.stats)}

    def table(self) -> str:
        """A printable table of the twelve numbers, one line each with what it averages."""
        lines = [f"{'stat':<6} {'IoU':<9} {'area':<6} {'max dets':>8} {'value':>7}"]
        for name, value in zip(self.names, self.stats):
            stat = _STATS[name]
            iou = "0.50:0.95" if stat.iou is None else f"{stat.iou:.2f}"
            lines.append(f"{name:<6} {iou:<9} {stat.area:<6} {stat.max_detections:>8} "
                         f"{value:>7.3f}")
        if np.any(self.stats == -1):
            lines.append("(-1: no category has ground truth in that area range)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


# ----------------------------------------------------------------------------- the steps


class _Group(NamedTuple):
    """The ground truth and the detections of one (image, category), after step 1."""
    gt_boxes: np.ndarray    # (G, 4) [x, y, w, h], annotation order
    gt_areas: np.ndarray    # (G,) the "area" fields
    gt_crowd: np.ndarray    # (G,) bool
    dt_boxes: np.ndarray    # (D, 4), by decreasing score, at most 100
    dt_scores: np.ndarray   # (D,)
    ious: np.ndarray        # (D, G), step 2


class _ImageResult(NamedTuple):
    """What step 4 leaves for step 5, for one (image, category, area range)."""
    scores: np.ndarray      # (D,) by decreasing score
    matched: np.ndarray     # (T, D) bool: the detection matched a ground truth at threshold t
    ignored: np.ndarray     # (T, D) bool: counts neither as TP nor as FP (matched an ignored
    #                         ground truth, or matched nothing and lies outside the area range)
    n_gt: int               # ground truths that are not ignored


def box_iou_xywh(dt_boxes: np.ndarray, gt_boxes: np.ndarray, gt_crowd: np.ndarray
                 ) -> np.ndarray:
    """Step 2: the (D, G) IoU matrix of boxes given as [x, y, w, h].

    A crowd ground truth (``gt_crowd[g]``) is divided by the detection's area instead of the
    union. The arithmetic follows COCO's own, operation by operation (``x + w`` for the right
    edge, ``(area_d + area_g) - inter`` for the union), so that an IoU that should equal a
    threshold is the same float as COCO's.
    """
    d = dt_boxes[:, None, :]   # (D, 1, 4) against
    g = gt_boxes[None, :, :]   # (1, G, 4): every pair
    inter_w = (np.minimum(d[..., 0] + d[..., 2], g[..., 0] + g[..., 2])
               - np.maximum(d[..., 0], g[..., 0]))
    inter_h = (np.minimum(d[..., 1] + d[..., 3], g[..., 1] + g[..., 3])
               - np.maximum(d[..., 1], g[..., 1]))
    overlap = (inter_w > 0) & (inter_h > 0)
    inter = np.where(overlap, inter_w * inter_h, 0.0)
    area_d = d[..., 2] * d[..., 3]
    area_g = g[..., 2] * g[..., 3]
    union = np.where(gt_crowd[None, :], area_d, area_d + area_g - inter)
    # where the boxes overlap the union is positive; elsewhere the IoU is 0 (even 0 / 0)
    return np.divide(inter, union, out=np.zeros(inter.shape), where=overlap)


def _group(gt_boxes, gt_areas, gt_crowd, dt_boxes, dt_scores) -> _Group:
    """Step 1 for one (image, category): sort the detections, keep 100; then step 2."""
    order = np.argsort(-dt_scores, kind="mergesort")[:MAX_DETECTIONS[-1]]  # stable
    dt_boxes, dt_scores = dt_boxes[order], dt_scores[order]
    return _Group(gt_boxes, gt_areas, gt_crowd, dt_boxes, dt_scores,
                  box_iou_xywh(dt_boxes, gt_boxes, gt_crowd))


def greedy_match(ious: np.ndarray, gt_ignored: np.ndarray, gt_crowd: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Step 4: greedy matching at every IoU threshold.

    Args:
        ious: (D, G), detections by decreasing score, ground truth regular first, ignored last.
        gt_ignored, gt_crowd: (G,) bool, in the same ground-truth order.

    Returns:
        ``(matched, matched_ignored)``, both (T, D) bool: whether detection d found a ground
        truth at threshold t, and whether that ground truth was an ignored one.
    """
    n_dt, n_gt = ious.shape
    matched = np.zeros((len(IOU_THRESHOLDS), n_dt), dtype=bool)
    matched_ignored = np.zeros_like(matched)
    # plain Python values: this loop is sequential by nature and small, and indexing lists is
    # much faster than indexing NumPy arrays one element at a time
    iou_rows, ignored, crowd = ious.tolist(), gt_ignored.tolist(), gt_crowd.tolist()
    for t, threshold in enumerate(IOU_THRESHOLDS):
        taken = [False] * n_gt
        for d in range(n_dt):
            best, best_iou = -1, threshold      # a candidate needs IoU >= threshold
            for g in range(n_gt):
                if taken[g] and not crowd[g]:
                    continue                    # used up (a crowd never is)
                if best >= 0 and not ignored[best] and ignored[g]:
                    break                       # holding a regular one: ignored ones can't win
                if iou_rows[d][g] >= best_iou:  # >=: a later ground truth wins a tie
                    best, best_iou = g, iou_rows[d][g]
            if best >= 0:
                taken[best] = True
                matched[t, d] = True
                matched_ignored[t, d] = ignored[best]
    return matched, matched_ignored


def _evaluate_group(group: _Group, lo: float, hi: float) -> _ImageResult:
    """Steps 3 and 4 for one (image, category) in the area range [lo, hi]."""
    gt_ignored = group.gt_crowd | (group.gt_areas < lo) | (group.gt_areas > hi)
    gt_order = np.argsort(gt_ignored, kind="mergesort")   # regular first, stable
    matched, matched_ignored = greedy_match(group.ious[:, gt_order], gt_ignored[gt_order],
                                            group.gt_crowd[gt_order])
    dt_areas = group.dt_boxes[:, 2] * group.dt_boxes[:, 3]
    dt_outside = (dt_areas < lo) | (dt_areas > hi)
    ignored = matched_ignored | (~matched & dt_outside[None, :])
    return _ImageResult(group.dt_scores, matched, ignored, int(np.count_nonzero(~gt_ignored)))


def _precision_recall(results: list[_ImageResult], max_det: int
                      ) -> tuple[np.ndarray, np.ndarray] | None:
    """Steps 5 and 6 for one category and area range over all images.

    Returns ``(precision, recall)``, (T, R) and (T,), or None when the category has no
    ground truth to find (step 7 stores -1 then).
    """
    n_gt = sum(r.n_gt for r in results)
    if n_gt == 0:
        return None
    # step 5: each image's first max_det detections, pooled and sorted by score (stable)
    scores = np.concatenate([r.scores[:max_det] for r in results])
    order = np.argsort(-scores, kind="mergesort")
    matched = np.concatenate([r.matched[:, :max_det] for r in results], axis=1)[:, order]
    ignored = np.concatenate([r.ignored[:, :max_det] for r in results], axis=1)[:, order]
    tp = np.cumsum(matched & ~ignored, axis=1, dtype=np.float64)     # (T, D)
    fp = np.cumsum(~matched & ~ignored, axis=1, dtype=np.float64)
    recall_curve = tp / n_gt
    precision_curve = tp / (tp + fp + np.spacing(1))

    # step 6: non-increasing from the right = running maximum over the reversed curve
    precision_curve = np.maximum.accumulate(precision_curve[:, ::-1], axis=1)[:, ::-1]
    n_dt = scores.size
    precision = np.zeros((len(IOU_THRESHOLDS), len(RECALL_POINTS)))
    for t in range(len(IOU_THRESHOLDS)):
        first = np.searchsorted(recall_curve[t], RECALL_POINTS, side="left")
        reached = first < n_dt                  # recall points the detector never reaches: 0
        precision[t, reached] = precision_curve[t, first[reached]]
    recall = recall_curve[:, -1] if n_dt else np.zeros(len(IOU_THRESHOLDS))
    return precision, recall


def _summarize(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """Step 7: the twelve means, leaving out the -1 entries."""
    area_index = {name: a for a, (name, _, _) in enumerate(AREA_RANGES)}
    stats = np.empty(len(_STATS))
    for i, stat in enumerate(_STATS.values()):
        a, m = area_index[stat.area], MAX_DETECTIONS.index(stat.max_detections)
        values = precision[..., a, m] if stat.kind == "AP" else recall[..., a, m]  # T first
        if stat.iou is not None:
            values = values[np.isclose(IOU_THRESHOLDS, stat.iou)]
        present = values[values > -1]
        stats[i] = present.mean() if present.size else -1.0
    return stats


def coco_evaluate(ground_truth: Mapping, detections: Sequence[Mapping]) -> CocoEvaluation:
    """Evaluate box detections against COCO ground truth (steps 1-7 of the module docstring).

    Args:
        ground_truth: a COCO dict: ``"images"`` (dicts with an ``"id"``), ``"categories"``
            (dicts with an ``"id"``) and ``"annotations"``: dicts with ``"image_id"``,
            ``"category_id"``, ``"bbox"`` (``[x, y, w, h]``, finite, ``w, h >= 0``) and
            ``"area"`` (finite, ``>= 0``; it decides the area range), optionally
            ``"iscrowd"`` (0 or 1, default 0) and ``"id"`` (unique if given). Other keys are
            ignored. Every image and category listed is evaluated, with or without
            annotations.
        detections: dicts with ``"image_id"`` and ``"category_id"`` (both listed in the ground
            truth), ``"bbox"`` (as above) and ``"score"`` (a finite real number); other keys
            are ignored. May be empty. Equal scores are ordered as they come in this list.

    Returns:
        a :class:`CocoEvaluation`; ``print(result)`` shows the table.

    Raises:
        TypeError: a container or value of the wrong type (not a dict, not a list, a score
            that is not a number).
        ValueError: a missing key, an id that the ground truth does not list, a malformed
            box, area or score. Every message names the key and the offending entry.
    """
    image_ids, category_ids, gt_lists = _read_ground_truth(ground_truth)
    dt_lists = _read_detections(detections, set(image_ids), set(category_ids))

    n_t, n_r, n_k = len(IOU_THRESHOLDS), len(RECALL_POINTS), len(category_ids)
    n_a, n_m = len(AREA_RANGES), len(MAX_DETECTIONS)
    precision = -np.ones((n_t, n_r, n_k, n_a, n_m))   # -1: no ground truth (step 7)
    recall = -np.ones((n_t, n_k, n_a, n_m))
    for k, category in enumerate(category_ids):
        # step 1-2, once per (image, category); images in increasing id order (step 5's ties)
        groups = [_group(*_gt_arrays(gt_lists.get((image, category), [])),
                         *_dt_arrays(dt_lists.get((image, category), [])))
                  for image in image_ids]
        for a, (_, lo, hi) in enumerate(AREA_RANGES):
            results = [_evaluate_group(group, lo, hi) for group in groups]
            for m, max_det in enumerate(MAX_DETECTIONS):
                curves = _precision_recall(results, max_det)
                if curves is not None:
                    precision[:, :, k, a, m], recall[:, k, a, m] = curves
    return CocoEvaluation(_summarize(precision, recall), precision, recall, tuple(category_ids))


# ----------------------------------------------------------------------------- input


def _gt_arrays(annotations: list[tuple[list[float], float, bool]]):
    boxes = np.array([box for box, _, _ in annotations], dtype=np.float64).reshape(-1, 4)
    areas = np.array([area for _, area, _ in annotations], dtype=np.float64)
    crowd = np.array([crowd for _, _, crowd in annotations], dtype=bool)
    return boxes, areas, crowd


def _dt_arrays(detections: list[tuple[list[float], float]]):
    boxes = np.array([box for box, _ in detections], dtype=np.float64).reshape(-1, 4)
    scores = np.array([score for _, score in detections], dtype=np.float64)
    return boxes, scores


def _require(entry, key: str, where: str):
    """``entry[key]``, or a ValueError that names the key and the entry."""
    if not isinstance(entry, Mapping):
        raise TypeError(f"{where} must be a dict, got {entry!r} ({type(entry).__name__})")
    if key not in entry:
        raise ValueError(f"{where} has no {key!r} key, got keys {sorted(map(str, entry))}")
    return entry[key]


def _entries(container, key: str, where: str) -> Sequence:
    """``container[key]`` as a list of entries (``where`` names the container)."""
    value = _require(container, key, where)
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise TypeError(f"{where}[{key!r}] must be a list, got {type(value).__name__}")
    return value


def _id_list(ids: set, what: str) -> str:
    shown = sorted(ids, key=repr)[:10]
    more = f", ... ({len(ids)} in all)" if len(ids) > 10 else ""
    return f"{what} has ids {', '.join(map(repr, shown))}{more}" if ids else f"{what} is empty"


def _known_id(entry, key: str, where: str, known: set, what: str):
    """``entry[key]``, required to be one of the ids ``known`` (listed in ``what``)."""
    value = _require(entry, key, where)
    try:
        ok = value in known
    except TypeError:           # unhashable
        ok = False
    if not ok:
        raise ValueError(f"{where}[{key!r}] is {value!r}, which is not an id in "
                         f"{what} ({_id_list(known, what)})")
    return value


def _bbox(entry, where: str) -> list[float]:
    """``entry["bbox"]`` as four floats [x, y, w, h]: finite, with w, h >= 0."""
    value = _require(entry, "bbox", where)
    name = f"{where}['bbox']"
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or len(value) != 4:
        raise ValueError(f"{name} must be [x, y, w, h] (4 numbers), got {value!r}")
    box = [_checks.real_number(v, name, finite=True, allow_nan=False) for v in value]
    if box[2] < 0 or box[3] < 0:
        raise ValueError(f"{name} must have a width and height >= 0 ([x, y, w, h]), "
                         f"got {value!r}")
    return box


def _sorted_ids(entries: Sequence, where: str) -> list:
    try:
        ids = {_require(entry, "id", f"{where}[{i}]") for i, entry in enumerate(entries)}
    except TypeError as error:
        if "unhashable" not in str(error):
            raise
        raise TypeError(f"the ids in {where} must be numbers or strings: {error}") from None
    try:
        return sorted(ids)      # images in increasing id order decide ties in step 5
    except TypeError:
        raise TypeError(f"the ids in {where} must be comparable with each other "
                        f"(e.g. all integers), got {sorted(ids, key=repr)!r}") from None


def _read_ground_truth(ground_truth):
    """(sorted image ids, sorted category ids, {(image, category): [(box, area, crowd)]})."""
    if not isinstance(ground_truth, Mapping):
        raise TypeError(f"ground_truth must be a COCO dict with 'images', 'annotations' and "
                        f"'categories', got {type(ground_truth).__name__}")
    images = _entries(ground_truth, "images", "ground_truth")
    annotations = _entries(ground_truth, "annotations", "ground_truth")
    categories = _entries(ground_truth, "categories", "ground_truth")
    image_ids = _sorted_ids(images, "ground_truth['images']")
    category_ids = _sorted_ids(categories, "ground_truth['categories']")
    known_images, known_categories = set(image_ids), set(category_ids)

    groups: dict[tuple, list] = {}
    seen_ids: dict = {}
    for i, ann in enumerate(annotations):
        where = f"ground_truth['annotations'][{i}]"
        image = _known_id(ann, "image_id", where, known_images, "ground_truth['images']")
        category = _known_id(ann, "category_id", where, known_categories,
                             "ground_truth['categories']")
        box = _bbox(ann, where)
        area = _checks.real_number(_require(ann, "area", where), f"{where}['area']",
                                   finite=True, allow_nan=False)
        if area < 0:
            raise ValueError(f"{where}['area'] must be >= 0, got {area!r}")
        crowd = ann.get("iscrowd", 0)
        if not (isinstance(crowd, (bool, np.bool_))
                or (isinstance(crowd, numbers.Integral) and crowd in (0, 1))):
            raise ValueError(f"{where}['iscrowd'] must be 0 or 1, got {crowd!r}")
        if "id" in ann:
            if ann["id"] in seen_ids:
                raise ValueError(f"{where}['id'] is {ann['id']!r}, the id of "
                                 f"ground_truth['annotations'][{seen_ids[ann['id']]}] too: "
                                 f"annotation ids must be unique")
            seen_ids[ann["id"]] = i
        groups.setdefault((image, category), []).append((box, area, bool(crowd)))
    return image_ids, category_ids, groups


def _read_detections(detections, known_images: set, known_categories: set):
    """{(image, category): [(box, score)]}, in the order of the list (step 1's ties)."""
    if not isinstance(detections, Sequence) or isinstance(detections, (str, bytes)):
        raise TypeError(f"detections must be a list of dicts, got {type(detections).__name__}")
    groups: dict[tuple, list] = {}
    for i, det in enumerate(detections):
        where = f"detections[{i}]"
        image = _known_id(det, "image_id", where, known_images, "ground_truth['images']")
        category = _known_id(det, "category_id", where, known_categories,
                             "ground_truth['categories']")
        box = _bbox(det, where)
        score = _checks.real_number(_require(det, "score", where), f"{where}['score']",
                                    finite=True, allow_nan=False)
        groups.setdefault((image, category), []).append((box, score))
    return groups
