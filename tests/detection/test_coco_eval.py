"""``coco_evaluate``: pycocotools' ``COCOeval(..., "bbox")`` as the oracle on seeded random
cases, hypothesis-drawn cases on a coarse grid (ties in score and IoU, IoUs exactly at the
thresholds) and adversarial cases; hand-worked cases; and bad input.

Every oracle comparison checks all twelve stats to 1e-6, and the full precision (T, R, K, A, M)
and recall (T, K, A, M) arrays as well. Step numbers refer to the docstring of
``scratchvision.detection.coco_eval``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchvision.detection import CocoEvaluation, coco_evaluate
from scratchvision.detection.coco_eval import IOU_THRESHOLDS, STAT_NAMES
from scratchvision.detection.coco_eval import box_iou_xywh, greedy_match

# ----------------------------------------------------------------------------- builders


def make_gt(image_ids, category_ids, annotations) -> dict:
    """A COCO ground-truth dict; annotations get ids 1, 2, ... (pycocotools needs them, and
    treats an id of 0 as "unmatched")."""
    annotations = [dict(a, id=i + 1) for i, a in enumerate(annotations)]
    return {"images": [{"id": i} for i in image_ids],
            "categories": [{"id": c, "name": f"c{c}"} for c in category_ids],
            "annotations": annotations}


def ann(image_id, category_id, bbox, area=None, iscrowd=0) -> dict:
    """A ground-truth annotation; ``area`` defaults to the box's ``w * h``."""
    bbox = [float(v) for v in bbox]
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox,
            "area": bbox[2] * bbox[3] if area is None else float(area), "iscrowd": iscrowd}


def det(image_id, category_id, bbox, score) -> dict:
    return {"image_id": image_id, "category_id": category_id,
            "bbox": [float(v) for v in bbox], "score": float(score)}


def pycocotools_eval(gt: dict, dets: list[dict]):
    """Run pycocotools on copies of the inputs (it writes into them), silently."""
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        if dets:
            coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
        else:
            # loadRes fails on an empty list (it reads anns[0]); an empty result set built by
            # hand is what it would have made
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(gt["images"]),
                               "categories": copy.deepcopy(gt["categories"]),
                               "annotations": []}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def assert_agrees(gt: dict, dets: list[dict]) -> CocoEvaluation:
    """Ours against pycocotools: the 12 stats to 1e-6, the precision and recall arrays too."""
    gt_before, dets_before = copy.deepcopy(gt), copy.deepcopy(dets)
    ours = coco_evaluate(gt, dets)
    assert gt == gt_before and dets == dets_before, "coco_evaluate modified its input"
    reference = pycocotools_eval(gt, dets)
    expected = np.asarray(reference.stats, dtype=np.float64)
    worst = np.abs(ours.stats - expected)
    assert np.all(worst <= 1e-6), "\n".join(
        f"{name:<6} ours {a: .9f}  pycocotools {b: .9f}"
        for name, a, b in zip(STAT_NAMES, ours.stats, expected))
    np.testing.assert_allclose(ours.precision, reference.eval["precision"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours.recall, reference.eval["recall"], rtol=0, atol=1e-9)
    return ours


# ----------------------------------------------------------------------------- random cases

CATEGORIES = (1, 2, 5)   # not 0..K-1: ids are ids, not indices


def random_case(seed: int) -> tuple[dict, list[dict]]:
    """Several images, 3 categories, boxes from 2 to 400 pixels a side (every area range),
    "area" fields sometimes smaller than the box (a mask's area), a few crowds; detections that
    jitter a ground-truth box (near: IoU anywhere from ~0.3 to 1), that take the wrong category,
    or that land anywhere (far); scores rounded to one or two decimals so that ties happen."""
    rng = np.random.default_rng(seed)
    image_ids = [int(i) for i in rng.choice(np.arange(1, 100), size=rng.integers(2, 7),
                                            replace=False)]
    annotations, detections = [], []
    decimals = int(rng.integers(1, 3))

    def random_box(side_lo=2.0, side_hi=400.0):
        w, h = np.exp(rng.uniform(np.log(side_lo), np.log(side_hi), size=2))
        x, y = rng.uniform(0, 600, size=2)
        return [float(x), float(y), float(w), float(h)]

    def score():
        return round(float(rng.random()), decimals)

    # one ground truth of each size class, so that every area range is populated
    for side in (rng.uniform(4, 30), rng.uniform(34, 94), rng.uniform(100, 300)):
        annotations.append(ann(int(rng.choice(image_ids)), int(rng.choice(CATEGORIES)),
                               [*rng.uniform(0, 500, size=2), side, side]))
    for image in image_ids:
        for _ in range(rng.integers(0, 9)):
            box = random_box()
            area = box[2] * box[3] * (rng.uniform(0.4, 1.0) if rng.random() < 0.3 else 1.0)
            annotations.append(ann(image, int(rng.choice(CATEGORIES)), box, area,
                                   iscrowd=int(rng.random() < 0.08)))
    for a in annotations:
        for _ in range(rng.choice([0, 1, 1, 1, 2])):      # near: a jittered copy
            x, y, w, h = a["bbox"]
            jitter = rng.normal(0.0, rng.choice([0.03, 0.1, 0.25]), size=4) * [w, h, w, h]
            category = a["category_id"] if rng.random() < 0.9 else int(rng.choice(CATEGORIES))
            box = [x + jitter[0], y + jitter[1], max(w + jitter[2], 0.0),
                   max(h + jitter[3], 0.0)]
            detections.append(det(a["image_id"], category, box, score()))
    for image in image_ids:
        for _ in range(rng.integers(0, 6)):                # far: anywhere
            detections.append(det(image, int(rng.choice(CATEGORIES)), random_box(), score()))
    order = rng.permutation(len(detections))
    detections = [detections[i] for i in order]
    order = rng.permutation(len(annotations))
    annotations = [annotations[i] for i in order]
    return make_gt(image_ids, CATEGORIES, annotations), detections


@pytest.mark.parametrize("seed", range(40))
def test_random_cases_agree_with_pycocotools(seed):
    gt, dets = random_case(seed)
    ours = assert_agrees(gt, dets)
    assert np.all(ours.stats[3:6] > -1)     # every area range had ground truth


_grid_box = st.tuples(*[st.integers(0, 6)] * 2, *[st.integers(0, 7)] * 2).map(
    lambda b: [16.0 * v for v in b])   # sides 0..112: areas 0, 256 (small), 1024 (small and
#                                        medium), ..., 12544 (large); IoUs repeat exactly


@st.composite
def grid_cases(draw) -> tuple[dict, list[dict]]:
    """Small cases on a 16-pixel grid, 2 categories: ties in score, ties in IoU, IoUs that
    equal a threshold, zero-area boxes, crowds, area fields off the box, empty lists."""
    n_images = draw(st.integers(1, 3), label="images")
    image_ids = [10 * (i + 1) for i in range(n_images)]
    annotations = draw(st.lists(st.builds(
        lambda image, category, box, crowd, shrink: ann(image, category, box,
                                                        box[2] * box[3] * shrink, crowd),
        st.sampled_from(image_ids), st.sampled_from([1, 2]), _grid_box,
        st.sampled_from([0, 0, 0, 0, 1]), st.sampled_from([1.0, 1.0, 0.5])), max_size=8))
    copies = [det(a["image_id"], a["category_id"], a["bbox"], 0.5) for a in annotations]
    detections = draw(st.lists(st.one_of(
        st.builds(det, st.sampled_from(image_ids), st.sampled_from([1, 2]), _grid_box,
                  st.sampled_from([0.25, 0.5, 0.75, 1.0])),
        *([st.sampled_from(copies)] if copies else [])), max_size=12))
    return make_gt(image_ids, [1, 2], annotations), detections


@given(grid_cases())
def test_grid_cases_agree_with_pycocotools(case):
    assert_agrees(*case)


# ----------------------------------------------------------------------------- adversarial


def test_ties_in_score_across_and_within_images():
    # every detection scores 0.5: the pooled order is image id order, then list order; the
    # images are listed out of order and hits and misses alternate, so the order shows
    rng = np.random.default_rng(7)
    image_ids = [30, 4, 17, 9]
    annotations, detections = [], []
    for image in image_ids:
        for k in range(5):
            box = [40.0 * k, 10.0, 30.0, 30.0 + 10 * k]
            annotations.append(ann(image, 1 + k % 2, box))
            if rng.random() < 0.6:
                detections.append(det(image, 1 + k % 2, [box[0] + 3, 12, 30, 30 + 10 * k], 0.5))
            if rng.random() < 0.6:
                detections.append(det(image, 1 + k % 2, [500, 500, 20, 20], 0.5))
    detections = [detections[i] for i in rng.permutation(len(detections))]
    assert_agrees(make_gt(image_ids, [1, 2], annotations), detections)
    # two score levels, many ties in each
    for i, d in enumerate(detections):
        d["score"] = 0.9 if i % 3 else 0.1
    assert_agrees(make_gt(image_ids, [1, 2], annotations), detections)


def test_images_without_ground_truth_or_detections():
    gt = make_gt([1, 2, 3, 4], [1, 2], [ann(1, 1, [0, 0, 50, 50]), ann(2, 2, [10, 10, 20, 20]),
                                         ann(2, 1, [100, 100, 120, 90])])
    dets = [det(1, 1, [2, 2, 50, 48], 0.8),        # image 1: a hit
            det(3, 1, [0, 0, 50, 50], 0.9),        # image 3 has no ground truth: false pos.
            det(3, 2, [5, 5, 10, 10], 0.7),
            det(1, 2, [0, 0, 50, 50], 0.6)]        # image 2 has no detections; image 4 nothing
    assert_agrees(gt, dets)


def test_categories_without_ground_truth_or_without_detections():
    gt = make_gt([1, 2], [1, 2, 3], [ann(1, 1, [0, 0, 50, 50]), ann(2, 2, [10, 10, 20, 20]),
                                      ann(2, 1, [100, 100, 120, 90])])
    # category 3: detections, no ground truth (-1, left out of the means);
    # category 2: ground truth, no detections (AP 0)
    dets = [det(1, 1, [0, 0, 50, 50], 0.9), det(2, 1, [100, 100, 100, 90], 0.8),
            det(1, 3, [0, 0, 50, 50], 0.95), det(2, 3, [10, 10, 20, 20], 0.3)]
    ours = assert_agrees(gt, dets)
    k3 = ours.category_ids.index(3)
    assert np.all(ours.precision[:, :, k3] == -1) and np.all(ours.recall[:, k3] == -1)
    k2 = ours.category_ids.index(2)
    assert np.all(ours.precision[:, :, k2, 0] == 0)


def test_more_than_100_detections_in_an_image():
    rng = np.random.default_rng(3)
    truth = [[float(x), float(y), 20.0, 20.0] for x in range(0, 600, 60) for y in (0, 100, 200)]
    annotations = [ann(1, 1, b) for b in truth] + [ann(2, 1, [0, 0, 50, 50])]
    detections = [det(1, 1, [b[0] + 1, b[1], 20, 20], rng.uniform(0.0, 0.3)) for b in truth]
    detections += [det(1, 1, [700 + 5 * i, 700, 10, 10], rng.uniform(0.2, 1.0))
                   for i in range(140)]           # 140 misses, many ranked above the hits
    detections += [det(2, 1, [0, 0, 50, 50], 0.5), det(1, 2, [0, 0, 5, 5], 0.5)]
    detections = [detections[i] for i in rng.permutation(len(detections))]
    ours = assert_agrees(make_gt([1, 2], [1, 2], annotations), detections)
    assert ours.stats[STAT_NAMES.index("AR100")] < 1      # hits cut off by the 100 cap


@pytest.mark.parametrize("side", [10.0, 100.0])      # small and large boxes
def test_ious_exactly_at_the_thresholds(side):
    # ground truth [0, 0, s, s], detection [0, 0, s, s * f]: IoU = f exactly, f = the
    # thresholds written as decimals, one image each, plus one just below and one above
    fractions = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.45, 0.99, 1.0]
    annotations, detections = [], []
    for image, f in enumerate(fractions, start=1):
        annotations.append(ann(image, 1, [0, 0, side, side]))
        detections.append(det(image, 1, [0, 0, side, side * f], 1.0 - image / 100))
    gt = make_gt(range(1, len(fractions) + 1), [1], annotations)
    assert_agrees(gt, detections)
    ious = box_iou_xywh(np.array([[0, 0, side, side * 0.5]]), np.array([[0, 0, side, side]]),
                        np.array([False]))
    assert ious[0, 0] == 0.5


def test_ties_in_iou_go_to_the_later_ground_truth():
    # the first detection has the same IoU (90/110 = 0.818) with ground truths A and B and
    # takes the later one, B; the second, a copy of A (IoU 80/120 = 0.667 with B), then
    # matches A at every threshold. Up to 0.80: two hits, AP 1. From 0.85: a miss, then a
    # hit: precision 0, 1/2 -> 1/2, 1/2 at recall 0, 1/2: AP = 51 * 1/2 / 101.
    # (Had the tie gone to A, the copy would miss at 0.70, 0.75 and 0.80 as well.)
    gt = make_gt([1], [1], [ann(1, 1, [0, 0, 10, 10]), ann(1, 1, [2, 0, 10, 10])])
    dets = [det(1, 1, [1, 0, 10, 10], 0.9), det(1, 1, [0, 0, 10, 10], 0.8)]
    ours = assert_agrees(gt, dets)
    half = 51 * 0.5 / 101
    assert ours.stats[AP] == pytest.approx((7 * 1 + 3 * half) / 10, abs=1e-12)


def test_regular_ground_truth_beats_an_ignored_one():
    # the detection overlaps a large ground truth (IoU ~0.6) and, better, a second one whose
    # "area" field is tiny: in the "large" range the tiny one is ignored and loses
    gt = make_gt([1], [1], [ann(1, 1, [0, 0, 100, 100]), ann(1, 1, [0, 0, 100, 60], area=50)])
    dets = [det(1, 1, [0, 0, 100, 62], 0.9), det(1, 1, [0, 0, 100, 100], 0.5)]
    assert_agrees(gt, dets)


def test_crowds():
    annotations = [
        ann(1, 1, [0, 0, 300, 300], iscrowd=1),            # a crowd of people ...
        ann(1, 1, [20, 20, 40, 80]),                       # ... and one person in it
        ann(1, 1, [400, 400, 50, 50]),
        ann(2, 1, [0, 0, 200, 100], iscrowd=1),            # an image with only a crowd
        ann(3, 2, [10, 10, 30, 30], iscrowd=1),            # a crowd, small by its area
        ann(3, 2, [10, 10, 30, 30], area=10_000),
    ]
    dets = [det(1, 1, [22, 20, 40, 80], 0.9), det(1, 1, [100, 100, 40, 80], 0.95),
            det(1, 1, [150, 10, 40, 80], 0.85), det(1, 1, [250, 250, 100, 100], 0.6),
            det(1, 1, [400, 400, 50, 50], 0.5), det(2, 1, [10, 10, 20, 20], 0.99),
            det(2, 1, [150, 50, 100, 100], 0.7), det(3, 2, [10, 10, 30, 30], 0.8),
            det(3, 2, [12, 12, 20, 20], 0.9), det(3, 2, [500, 500, 20, 20], 0.4)]
    assert_agrees(make_gt([1, 2, 3], [1, 2], annotations), dets)


def test_zero_area_boxes():
    annotations = [ann(1, 1, [10, 10, 0, 20]), ann(1, 1, [50, 50, 20, 0]),
                   ann(1, 1, [100, 100, 30, 30]), ann(2, 1, [5, 5, 0, 0])]
    dets = [det(1, 1, [10, 10, 0, 20], 0.9),     # a copy of a zero-area box: IoU 0, a miss
            det(1, 1, [100, 100, 0, 30], 0.8),   # zero-area detection on a real box
            det(1, 1, [100, 100, 30, 30], 0.7), det(2, 1, [5, 5, 0, 0], 0.6)]
    ours = assert_agrees(make_gt([1, 2], [1], annotations), dets)
    assert 0 < ours.stats[0] < 1


def test_area_field_decides_the_range_and_the_boundaries_count_twice():
    annotations = [ann(1, 1, [0, 0, 200, 200], area=500),     # large box, small "area"
                   ann(1, 1, [300, 0, 32, 32]),               # area 1024: small and medium
                   ann(1, 1, [0, 300, 96, 96]),               # area 9216: medium and large
                   ann(1, 1, [300, 300, 50, 50], area=1e11)]  # beyond "all": ignored there
    dets = [det(1, 1, [0, 0, 200, 200], 0.9), det(1, 1, [300, 0, 32, 32], 0.8),
            det(1, 1, [0, 300, 96, 96], 0.7), det(1, 1, [300, 300, 50, 50], 0.6),
            det(1, 1, [600, 600, 40, 40], 0.95)]              # a medium-sized miss
    assert_agrees(make_gt([1], [1], annotations), dets)


def test_duplicate_detections():
    gt = make_gt([1], [1], [ann(1, 1, [0, 0, 40, 40])])
    dets = [det(1, 1, [0, 0, 40, 40], 0.9), det(1, 1, [1, 1, 40, 40], 0.9),
            det(1, 1, [0, 0, 40, 41], 0.95)]
    assert_agrees(gt, dets)


def test_perfect_detector():
    gt, _ = random_case(11)
    dets = [det(a["image_id"], a["category_id"], a["bbox"], 1.0 - i / 1000)
            for i, a in enumerate(gt["annotations"]) if not a["iscrowd"]]
    ours = assert_agrees(gt, dets)
    ap = ours.as_dict()
    assert all(ap[name] == pytest.approx(1.0) for name in ("AP", "AP50", "AP75", "AR100"))
    for name in ("APs", "APm", "APl", "ARs", "ARm", "ARl"):
        assert ap[name] in (pytest.approx(1.0), -1.0)


def test_detector_that_finds_nothing():
    gt, _ = random_case(5)
    ours = assert_agrees(gt, [])               # pycocotools given a hand-built empty result
    assert np.all(ours.stats == 0)             # every range has ground truth in random_case


def test_far_detections_only():
    gt, dets = random_case(2)
    far = [dict(d, bbox=[5000.0 + i, 5000.0, 10.0, 10.0]) for i, d in enumerate(dets)]
    ours = assert_agrees(gt, far)
    assert np.all(ours.stats[ours.stats > -1] == 0)


def test_no_annotations_at_all():
    gt = make_gt([1, 2], [1, 2], [])
    ours = assert_agrees(gt, [det(1, 1, [0, 0, 10, 10], 0.5)])
    assert np.all(ours.stats == -1)


# ----------------------------------------------------------------------------- by hand

AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl = range(12)


def test_hand_one_detection_at_iou_062():
    # IoU 62 / 100 = 0.62 passes the thresholds 0.50, 0.55, 0.60: at those AP = 1 (one
    # detection, one hit: precision 1 at every recall point), at the other 7 AP = 0
    gt = make_gt([1], [1], [ann(1, 1, [0, 0, 10, 10])])
    result = coco_evaluate(gt, [det(1, 1, [0, 0, 10, 6.2], 0.7)])
    expected = [3 / 10, 1, 0, 3 / 10, -1, -1, 3 / 10, 3 / 10, 3 / 10, 3 / 10, -1, -1]
    np.testing.assert_allclose(result.stats, expected, rtol=0, atol=1e-12)


def test_hand_iou_exactly_one_half_is_a_match():
    gt = make_gt([1], [1], [ann(1, 1, [0, 0, 100, 100])])
    result = coco_evaluate(gt, [det(1, 1, [0, 0, 100, 50], 0.7)])
    # (precision TP / (TP + FP + eps) is 1 - 1e-16 rather than 1: approx)
    assert result.stats[AP50] == pytest.approx(1, abs=1e-12) and result.stats[AP75] == 0
    assert result.stats[AP] == pytest.approx(0.1) and result.stats[APl] == pytest.approx(0.1)


def test_hand_precision_recall_curve():
    # two ground truths; by score: hit, miss, hit. Precision 1, 1/2, 2/3; recall 1/2, 1/2, 1.
    # Made non-increasing from the right: 1, 2/3, 2/3. Recall points 0, 0.01, ..., 0.50 (51 of
    # them) are first reached by detection 1 (precision 1); 0.51 ... 1.00 (50) by detection 3
    gt = make_gt([1], [1], [ann(1, 1, [0, 0, 50, 50]), ann(1, 1, [100, 0, 50, 50])])
    dets = [det(1, 1, [0, 0, 50, 50], 0.9), det(1, 1, [300, 300, 50, 50], 0.8),
            det(1, 1, [100, 0, 50, 50], 0.7)]
    result = coco_evaluate(gt, dets)
    ap = (51 * 1 + 50 * 2 / 3) / 101
    assert result.stats[AP] == pytest.approx(ap, abs=1e-12)
    assert result.stats[APm] == pytest.approx(ap, abs=1e-12)
    assert result.stats[AR1] == pytest.approx(0.5) and result.stats[AR10] == pytest.approx(1)
    assert result.stats[APs] == -1 and result.stats[APl] == -1


def test_hand_max_detections_per_image():
    # two objects, two perfect detections: AR with 1 detection per image finds half
    gt = make_gt([1], [1], [ann(1, 1, [0, 0, 50, 50]), ann(1, 1, [100, 0, 50, 50])])
    dets = [det(1, 1, [0, 0, 50, 50], 0.9), det(1, 1, [100, 0, 50, 50], 0.8)]
    result = coco_evaluate(gt, dets)
    assert (result.stats[AR1], result.stats[AR10], result.stats[AR100]) == (0.5, 1, 1)
    assert result.stats[AP] == pytest.approx(1.0)


@pytest.mark.parametrize("iscrowd, expected_ap, expected_ar",
                         [(1, 1.0, 1.0), (0, 51 * 0.5 / 101, 0.5)])
def test_hand_crowd_absorbs_detections(iscrowd, expected_ap, expected_ar):
    # the best-scored detection lies inside a big box: "IoU" 100/100 with a crowd, which
    # ignores it and needs no finding (AP 1, AR 1). As a regular ground truth the big box has
    # IoU 100/10000 with it, a false positive, and must be found itself: precision 0, 1/2 ->
    # 1/2, 1/2 at recall 0, 1/2; recall points 0 ... 0.5 (51 of 101) read 1/2
    gt = make_gt([1], [1], [ann(1, 1, [0, 0, 100, 100], iscrowd=iscrowd),
                            ann(1, 1, [200, 200, 10, 10])])
    dets = [det(1, 1, [10, 10, 10, 10], 0.9), det(1, 1, [200, 200, 10, 10], 0.5)]
    result = coco_evaluate(gt, dets)
    assert result.stats[AP] == pytest.approx(expected_ap, abs=1e-12)
    assert result.stats[AR100] == pytest.approx(expected_ar)


def test_hand_nothing_detected():
    # category 1: a small object, category 2: a large one, category 3: none. Every category
    # with ground truth in a range scores 0 there; the medium range has none at all: -1
    gt = make_gt([1, 2], [1, 2, 3], [ann(1, 1, [0, 0, 10, 10]), ann(2, 2, [0, 0, 200, 200])])
    result = coco_evaluate(gt, [])
    expected = [0, 0, 0, 0, -1, 0, 0, 0, 0, 0, -1, 0]
    np.testing.assert_array_equal(result.stats, expected)
    np.testing.assert_array_equal(result.precision[:, :, 2], -1)   # category 3


def test_hand_box_iou_xywh():
    gt = np.array([[0, 0, 10, 10], [10, 0, 10, 10], [0, 0, 100, 100]], dtype=float)
    dt = np.array([[5, 0, 10, 10], [2, 2, 4, 4], [0, 0, 0, 10]], dtype=float)
    iou = box_iou_xywh(dt, gt, np.array([False, False, True]))
    np.testing.assert_allclose(iou, [[50 / 150, 50 / 150, 1.0],     # crowd: inter / dt area
                                     [16 / 100, 0.0, 1.0],
                                     [0.0, 0.0, 0.0]])              # zero area: 0, no nan


def test_hand_greedy_match_crowd_and_ignored():
    # detections by score against [regular, ignored crowd]: the first takes the regular one,
    # the second the crowd, the third the crowd again (never used up)
    ious = np.array([[0.9, 0.8], [0.7, 0.6], [0.0, 1.0]])
    matched, on_ignored = greedy_match(ious, np.array([False, True]), np.array([False, True]))
    assert matched.shape == (len(IOU_THRESHOLDS), 3)
    np.testing.assert_array_equal(matched[0], [True, True, True])
    np.testing.assert_array_equal(on_ignored[0], [False, True, True])
    # at 0.65 the second detection's 0.6 with the crowd falls short
    t = int(np.flatnonzero(np.isclose(IOU_THRESHOLDS, 0.65))[0])
    np.testing.assert_array_equal(matched[t], [True, False, True])


def test_table_and_names():
    gt = make_gt([1], [1], [ann(1, 1, [0, 0, 10, 10])])
    result = coco_evaluate(gt, [det(1, 1, [0, 0, 10, 6.2], 0.7)])
    assert result.names == STAT_NAMES == ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1",
                                          "AR10", "AR100", "ARs", "ARm", "ARl")
    text = result.table()
    assert str(result) == text and len(text.splitlines()) == 1 + 12 + 1
    assert "AP50" in text and "0.300" in text and "-1.000" in text
    assert result.as_dict()["AP50"] == pytest.approx(1.0)
    assert result.stats.shape == (12,) and result.precision.shape == (10, 101, 1, 4, 3)


# ----------------------------------------------------------------------------- bad input


def _valid():
    gt = make_gt([1, 2], [1, 2], [ann(1, 1, [0, 0, 10, 10]), ann(2, 2, [5, 5, 20, 20])])
    dets = [det(1, 1, [0, 0, 10, 10], 0.9), det(2, 2, [5, 5, 20, 20], 0.8)]
    return gt, dets


def _drop(key):
    def edit(gt, dets):
        del gt[key]
    return edit


def _set_ann(key, value):
    def edit(gt, dets):
        gt["annotations"][1][key] = value
    return edit


def _del_ann(key):
    def edit(gt, dets):
        del gt["annotations"][1][key]
    return edit


def _set_det(key, value):
    def edit(gt, dets):
        dets[1][key] = value
    return edit


def _del_det(key):
    def edit(gt, dets):
        del dets[1][key]
    return edit


BAD_INPUT = {
    "no images": (_drop("images"), ValueError, "'images'"),
    "no annotations": (_drop("annotations"), ValueError, "'annotations'"),
    "no categories": (_drop("categories"), ValueError, "'categories'"),
    "annotation without area": (_del_ann("area"), ValueError, "annotations'][1] has no 'area'"),
    "annotation without bbox": (_del_ann("bbox"), ValueError, "annotations'][1] has no 'bbox'"),
    "annotation of an unknown image": (_set_ann("image_id", 7), ValueError,
                                       "annotations'][1]['image_id'] is 7"),
    "annotation of an unknown category": (_set_ann("category_id", 9), ValueError,
                                          "annotations'][1]['category_id'] is 9"),
    "annotation bbox of 3": (_set_ann("bbox", [0, 0, 1]), ValueError,
                             "annotations'][1]['bbox']"),
    "annotation negative width": (_set_ann("bbox", [0, 0, -1, 5]), ValueError,
                                  "annotations'][1]['bbox']"),
    "annotation negative area": (_set_ann("area", -3.0), ValueError,
                                 "annotations'][1]['area']"),
    "annotation iscrowd 2": (_set_ann("iscrowd", 2), ValueError,
                             "annotations'][1]['iscrowd']"),
    "duplicate annotation id": (_set_ann("id", 1), ValueError, "annotations'][1]['id']"),
    "detection of an unknown image": (_set_det("image_id", 3), ValueError,
                                      "detections[1]['image_id'] is 3"),
    "detection of an unknown category": (_set_det("category_id", 4), ValueError,
                                         "detections[1]['category_id'] is 4"),
    "detection without category": (_del_det("category_id"), ValueError,
                                   "detections[1] has no 'category_id'"),
    "detection without score": (_del_det("score"), ValueError, "detections[1] has no 'score'"),
    "detection bbox of 5": (_set_det("bbox", [0, 0, 1, 1, 1]), ValueError,
                            "detections[1]['bbox']"),
    "detection negative height": (_set_det("bbox", [0, 0, 1, -0.5]), ValueError,
                                  "detections[1]['bbox']"),
    "detection nan coordinate": (_set_det("bbox", [0, math.nan, 1, 1]), ValueError,
                                 "detections[1]['bbox']"),
    "detection nan score": (_set_det("score", math.nan), ValueError, "detections[1]['score']"),
    "detection inf score": (_set_det("score", math.inf), ValueError, "detections[1]['score']"),
    "detection string score": (_set_det("score", "high"), TypeError, "detections[1]['score']"),
    "detection bool score": (_set_det("score", True), TypeError, "detections[1]['score']"),
}


@pytest.mark.parametrize("edit, error, names", BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_names_the_key(edit, error, names):
    gt, dets = _valid()
    edit(gt, dets)
    with pytest.raises(error, match=None) as info:
        coco_evaluate(gt, dets)
    assert names in str(info.value)


def test_bad_containers():
    gt, dets = _valid()
    with pytest.raises(TypeError, match="ground_truth"):
        coco_evaluate([gt], dets)
    with pytest.raises(TypeError, match="detections"):
        coco_evaluate(gt, {"image_id": 1})
    with pytest.raises(TypeError, match=r"detections\[0\] must be a dict"):
        coco_evaluate(gt, [[1, 1, [0, 0, 1, 1], 0.5]])
    with pytest.raises(TypeError, match=r"ground_truth\['images'\] must be a list"):
        coco_evaluate(dict(gt, images=5), dets)
