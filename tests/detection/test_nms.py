"""``nms`` and ``batched_nms`` on every tier (loop, numpy, numba).

* oracle: ``torchvision.ops.nms`` on drawn boxes (spread, clustered, on an integer grid with
  degenerate and inverted boxes), thresholds across [0, 1], tied scores, both dtypes; and
  ``batched_nms`` against torchvision's nms run per class (skipped without torchvision);
* properties, with IoUs from ``box_iou`` (another module): the kept set is exactly what the
  greedy rule keeps, no kept pair of a class overlaps above the threshold, the order is by
  decreasing score, NMS is idempotent;
* hand-computed cases (strictly greater, a suppressed box suppresses nothing, ties), edge
  cases (no box, one box, thresholds outside [0, 1], huge coordinates, many classes), dtypes,
  layouts, purity and bad input; and the ``scratchvision bench nms`` smoke test.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from scratchvision import BackendUnavailableError, cli
from scratchvision.detection.boxes import box_iou
from scratchvision.detection.nms import TIERS, batched_nms, nms

from tiers import assert_each_tier_equal, awkward_layouts, run_on_every_tier

try:
    import torch
    from torchvision.ops import nms as torchvision_nms
except ImportError:  # the oracle extra is not installed
    torch = torchvision_nms = None

needs_torchvision = pytest.mark.skipif(torchvision_nms is None,
                                       reason="torchvision is not installed")

THRESHOLDS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)


def _on_every_tier(fn, *args, **kwargs) -> dict:
    return run_on_every_tier(fn, *args, offered=TIERS, **kwargs)


# ----------------------------------------------------------------------------- drawn cases

@dataclass(frozen=True)
class NMSCase:
    """``boxes`` (K, 4) as (x1, y1, x2, y2), ``scores`` (K,) of the boxes' dtype, ``idxs``
    (K,) int64 class ids, and the threshold."""

    boxes: np.ndarray
    scores: np.ndarray
    idxs: np.ndarray
    iou_threshold: float


def _layout_boxes(rng: np.random.Generator, layout: str, n: int) -> np.ndarray:
    if layout == "integer grid":
        # every coordinate on its own in 0..6: exact IoU ties with the thresholds, identical,
        # degenerate (x2 == x1) and inverted (x2 < x1) boxes all occur
        return rng.integers(0, 7, (n, 4)).astype(np.float64)
    if layout == "clustered":  # a few objects, each with many jittered detections
        centres = rng.uniform(0, 100, (3, 2))[rng.integers(0, 3, n)] + rng.normal(0, 4, (n, 2))
    else:  # "spread"
        centres = rng.uniform(0, 100, (n, 2))
    sides = rng.uniform(5, 40, (n, 2))
    # (K, 2) and (K, 2) -> (K, 4)
    return np.concatenate([centres - sides / 2, centres + sides / 2], axis=1)


def _scores(rng: np.random.Generator, ties: str, n: int) -> np.ndarray:
    if ties == "all equal":
        return np.full(n, 0.5)
    if ties == "few levels":
        return rng.integers(0, 4, n) / 4.0
    return rng.random(n)


@st.composite
def nms_cases(draw, max_boxes: int = 40) -> NMSCase:
    n = draw(st.integers(0, max_boxes), label="K")
    layout = draw(st.sampled_from(["spread", "clustered", "integer grid"]), label="layout")
    ties = draw(st.sampled_from(["distinct", "few levels", "all equal"]), label="scores")
    threshold = draw(st.sampled_from(THRESHOLDS), label="iou_threshold")
    dtype = draw(st.sampled_from([np.float64, np.float32]), label="dtype")
    n_classes = draw(st.integers(1, 4), label="classes")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))
    event(f"{layout} boxes, {ties} scores")
    boxes = _layout_boxes(rng, layout, n).astype(dtype)
    return NMSCase(boxes, _scores(rng, ties, n).astype(dtype),
                   rng.integers(0, n_classes, n).astype(np.int64), threshold)


def _random_boxes(rng: np.random.Generator, n: int, dtype=np.float64) -> np.ndarray:
    return _layout_boxes(rng, "clustered", n).astype(dtype)


# ----------------------------------------------------------------------------- references

def _torchvision(boxes, scores, iou_threshold) -> np.ndarray:
    return torchvision_nms(torch.from_numpy(np.ascontiguousarray(boxes)),
                           torch.from_numpy(np.ascontiguousarray(scores)),
                           iou_threshold).numpy()


def _per_class_torchvision(boxes, scores, idxs, iou_threshold) -> np.ndarray:
    """batched NMS the long way: torchvision's nms on each class alone, then all the kept
    boxes by decreasing score (ties: lower index first)."""
    kept = [np.empty(0, dtype=np.int64)]
    for c in np.unique(idxs):
        members = np.flatnonzero(idxs == c)
        kept.append(members[_torchvision(boxes[members], scores[members], iou_threshold)])
    kept = np.sort(np.concatenate(kept))
    return kept[np.argsort(-scores[kept], kind="stable")]


def _float64_iou(boxes1, boxes2) -> np.ndarray:
    """box_iou in the boxes' dtype, widened to float64 for comparing with a threshold: NumPy
    would compare a float32 array with a Python float in float32, and float32(0.1) > 0.1."""
    return box_iou(boxes1, boxes2, backend="numpy").astype(np.float64)


def _greedy_rule_holds(kept, boxes, scores, idxs, iou_threshold) -> None:
    """The definition of greedy NMS, checked with IoUs from ``box_iou``: walking the boxes by
    decreasing score (ties by index), a box is kept exactly when no box kept before it, of its
    class, has IoU > iou_threshold with it. Also: the result is in that walking order."""
    order = np.argsort(-scores, kind="stable")
    iou = _float64_iou(boxes, boxes)  # (K, K)
    same_class = idxs[:, None] == idxs[None, :]  # (K, K)
    expected, is_kept = [], np.zeros(len(boxes), dtype=bool)
    for i in order:
        if not (is_kept & same_class[i] & (iou[i] > iou_threshold)).any():
            is_kept[i] = True
            expected.append(i)
    np.testing.assert_array_equal(kept, np.array(expected, dtype=np.int64))


# ----------------------------------------------------------------------------- oracle

@needs_torchvision
@given(case=nms_cases())
def test_nms_matches_torchvision_on_every_tier(case: NMSCase):
    expected = _torchvision(case.boxes, case.scores, case.iou_threshold)
    assert_each_tier_equal(_on_every_tier(nms, case.boxes, case.scores, case.iou_threshold),
                           expected)


@needs_torchvision
@given(case=nms_cases())
def test_batched_nms_matches_torchvision_per_class_on_every_tier(case: NMSCase):
    expected = _per_class_torchvision(case.boxes, case.scores, case.idxs, case.iou_threshold)
    assert_each_tier_equal(_on_every_tier(batched_nms, case.boxes, case.scores, case.idxs,
                                          case.iou_threshold), expected)


@needs_torchvision
@pytest.mark.parametrize("n_boxes", [200, 1200])  # torchvision's two code paths (<= 1000 boxes)
def test_batched_nms_matches_torchvision_batched_nms(n_boxes):
    # integer coordinates, so torchvision's coordinate-offset trick adds no rounding; distinct
    # scores, since torchvision's per-class path orders tied scores arbitrarily
    from torchvision.ops import batched_nms as torchvision_batched_nms

    rng = np.random.default_rng(n_boxes)
    boxes = np.round(_layout_boxes(rng, "spread", n_boxes) * 10)
    scores = rng.permutation(n_boxes) / n_boxes
    idxs = rng.integers(0, 5, n_boxes)
    expected = torchvision_batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                                       torch.from_numpy(idxs), 0.4).numpy()
    tiers = ("numpy", "numba") if n_boxes > 1000 else TIERS  # the loop tier is slow at 1200
    for tier in tiers:
        np.testing.assert_array_equal(batched_nms(boxes, scores, idxs, 0.4, backend=tier),
                                      expected, err_msg=f"tier {tier!r}")


@needs_torchvision
@pytest.mark.parametrize("iou_threshold", [-0.5, -0.0, 1.5, float("inf"), float("-inf"),
                                           float("nan")])
def test_thresholds_outside_0_1_behave_as_torchvision(iou_threshold):
    # >= 1 suppresses nothing; < 0 suppresses every later box whose IoU is not NaN (disjoint
    # and inverted ones too); NaN suppresses nothing
    rng = np.random.default_rng(3)
    boxes = _layout_boxes(rng, "integer grid", 30)
    scores = rng.random(30)
    expected = _torchvision(boxes, scores, iou_threshold)
    assert_each_tier_equal(_on_every_tier(nms, boxes, scores, iou_threshold), expected)


@needs_torchvision
def test_degenerate_inverted_and_non_finite_boxes_behave_as_torchvision():
    boxes = np.array([
        [0, 0, 4, 4],  # proper
        [1, 1, 1, 3],  # zero width
        [1, 1, 1, 3],  # the same again: IoU 0 / 0 = NaN, never suppresses
        [2, 2, 2, 2],  # a point
        [4, 4, 0, 0],  # inverted in x and y: positive area, no intersection
        [3, 0, 1, 4],  # inverted in x only: negative area
        [0, 0, np.inf, 4],  # infinite area
        [0, 0, np.inf, 4],  # IoU inf / (inf + inf - inf) = NaN
        [0, np.nan, 4, 4],  # NaN: every IoU with it is NaN
        [0, 0, 4, 4],  # a duplicate of the first
    ], dtype=np.float64)
    scores = np.linspace(1.0, 0.1, len(boxes))
    for iou_threshold in (-0.1, 0.0, 0.5):
        for dtype in (np.float64, np.float32):
            b, s = boxes.astype(dtype), scores.astype(dtype)
            assert_each_tier_equal(_on_every_tier(nms, b, s, iou_threshold),
                                   _torchvision(b, s, iou_threshold))


@needs_torchvision
def test_batched_nms_with_huge_coordinates_and_many_classes():
    # Coordinates around 1e7 with 60 classes: shifting each class by idx * (max + 1), as
    # torchvision's coordinate trick does, would need ~6e8, where float32 steps are 64 px.
    # Per-class grouping never leaves the boxes' own coordinates.
    rng = np.random.default_rng(7)
    n = 300
    boxes = (1e7 + _layout_boxes(rng, "clustered", n)).astype(np.float32)
    scores = rng.random(n).astype(np.float32)
    idxs = rng.integers(0, 60, n) * 1000  # sparse, large class ids
    for iou_threshold in (0.3, 0.6):
        expected = _per_class_torchvision(boxes, scores, idxs, iou_threshold)
        assert_each_tier_equal(
            _on_every_tier(batched_nms, boxes, scores, idxs, iou_threshold), expected)


# ----------------------------------------------------------------------------- properties

@given(case=nms_cases())
def test_kept_boxes_follow_the_greedy_rule(case: NMSCase):
    kept = nms(case.boxes, case.scores, case.iou_threshold)
    _greedy_rule_holds(kept, case.boxes, case.scores, np.zeros(len(case.boxes), dtype=int),
                       case.iou_threshold)
    kept = batched_nms(case.boxes, case.scores, case.idxs, case.iou_threshold)
    _greedy_rule_holds(kept, case.boxes, case.scores, case.idxs, case.iou_threshold)


@given(case=nms_cases())
def test_no_pair_above_threshold_decreasing_scores_idempotent(case: NMSCase):
    for tier, kept in _on_every_tier(batched_nms, case.boxes, case.scores, case.idxs,
                                     case.iou_threshold).items():
        assert kept.dtype == np.int64 and len(np.unique(kept)) == len(kept), tier
        iou = _float64_iou(case.boxes[kept], case.boxes[kept])
        same_class = case.idxs[kept][:, None] == case.idxs[kept][None, :]
        above = same_class & (iou > case.iou_threshold) & ~np.eye(len(kept), dtype=bool)
        assert not above.any(), f"tier {tier!r}: kept pairs {np.argwhere(above)}"
        assert (np.diff(case.scores[kept]) <= 0).all(), f"tier {tier!r}: not sorted"
        again = batched_nms(case.boxes[kept], case.scores[kept], case.idxs[kept],
                            case.iou_threshold, backend=tier)
        np.testing.assert_array_equal(again, np.arange(len(kept)), err_msg=f"tier {tier!r}")


# ----------------------------------------------------------------------------- by hand

def test_strictly_greater_suppresses():
    # [0, 0, 2, 2] (area 4) and [0, 0, 2, 1] (area 2): inter 2, union 4, IoU exactly 0.5
    boxes = np.array([[0, 0, 2, 2], [0, 0, 2, 1]], dtype=np.float64)
    scores = np.array([0.9, 0.8])
    assert_each_tier_equal(_on_every_tier(nms, boxes, scores, 0.5), np.array([0, 1]))
    assert_each_tier_equal(_on_every_tier(nms, boxes, scores, 0.49), np.array([0]))


def test_the_threshold_is_compared_in_float64():
    # [0, 5, 3, 6] (area 3) and [2, 4, 6, 6] (area 8): inter 1, union 10, IoU 1/10. In float32
    # that is 0.100000001..., above the float64 threshold 0.1 (torchvision compares so too);
    # in float64 it is the same double as 0.1, so not above.
    boxes = np.array([[0, 5, 3, 6], [2, 4, 6, 6]], dtype=np.float64)
    scores = np.array([0.9, 0.8])
    assert_each_tier_equal(_on_every_tier(nms, boxes, scores, 0.1), np.array([0, 1]))
    assert_each_tier_equal(_on_every_tier(nms, boxes.astype(np.float32), scores, 0.1),
                           np.array([0]))


def test_a_suppressed_box_suppresses_nothing():
    # A = [0, 0, 2, 1], B = [1, 0, 3, 1], C = [2, 0, 4, 1]: IoU(A, B) = IoU(B, C) = 1/3,
    # IoU(A, C) = 0. A suppresses B; C survives because B was suppressed, not kept.
    boxes = np.array([[2, 0, 4, 1], [0, 0, 2, 1], [1, 0, 3, 1]], dtype=np.float64)
    scores = np.array([0.5, 0.9, 0.7])  # A (index 1) > B (index 2) > C (index 0)
    assert_each_tier_equal(_on_every_tier(nms, boxes, scores, 0.3), np.array([1, 0]))


def test_tied_scores_keep_the_lower_index():
    boxes = np.array([[0, 0, 1, 1]] * 3 + [[5, 5, 6, 6]], dtype=np.float64)
    scores = np.array([0.3, 0.7, 0.7, 0.7])
    # index 1 and 2 tie at 0.7 on the same box: 1 comes first and suppresses 2 (and 0)
    assert_each_tier_equal(_on_every_tier(nms, boxes, scores, 0.5), np.array([1, 3]))
    # all equal scores, disjoint boxes: index order
    far = np.arange(20, dtype=np.float64)[:, None] * 10 + np.array([0, 0, 1, 1])
    assert_each_tier_equal(_on_every_tier(nms, far, np.ones(20), 0.5), np.arange(20))


def test_batched_nms_suppresses_only_within_a_class():
    boxes = np.array([[0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 2, 2], [0.1, 0, 2, 2]])
    scores = np.array([0.6, 0.9, 0.8, 0.7])
    idxs = np.array([1, 0, 1, 0])
    # class 0: index 1 keeps, suppresses 3; class 1: index 2 keeps, suppresses 0
    assert_each_tier_equal(_on_every_tier(batched_nms, boxes, scores, idxs, 0.5),
                           np.array([1, 2]))
    assert_each_tier_equal(_on_every_tier(nms, boxes, scores, 0.5), np.array([1]))


# ----------------------------------------------------------------------------- edge cases

@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64])
def test_no_boxes(dtype):
    boxes, scores = np.zeros((0, 4), dtype=dtype), np.zeros(0)
    empty = np.empty(0, dtype=np.int64)
    assert_each_tier_equal(_on_every_tier(nms, boxes, scores, 0.5), empty)
    assert_each_tier_equal(
        _on_every_tier(batched_nms, boxes, scores, np.zeros(0, dtype=int), 0.5), empty)


def test_one_box():
    boxes, scores = np.array([[1.0, 2.0, 3.0, 4.0]]), np.array([0.25])
    one = np.array([0], dtype=np.int64)
    assert_each_tier_equal(_on_every_tier(nms, boxes, scores, 0.5), one)
    assert_each_tier_equal(_on_every_tier(nms, boxes, scores, -1.0), one)
    assert_each_tier_equal(_on_every_tier(batched_nms, boxes, scores, [3], 0.5), one)


@pytest.mark.parametrize("int_dtype", [np.int32, np.int64, np.uint16])
def test_integer_boxes_are_upcast_to_float64(int_dtype):
    rng = np.random.default_rng(11)
    boxes = _layout_boxes(rng, "integer grid", 25)
    scores = rng.random(25)
    expected = nms(boxes, scores, 0.3)  # the same boxes given as float64
    assert_each_tier_equal(_on_every_tier(nms, boxes.astype(int_dtype), scores, 0.3), expected)


def test_boxes_and_scores_of_different_float_dtypes():
    # the IoU is computed in the boxes' dtype; the scores only give the order (k / 16 is exact
    # in both dtypes, so both orders agree)
    rng = np.random.default_rng(5)
    boxes = _random_boxes(rng, 30, np.float32)
    scores = rng.integers(0, 16, 30) / 16
    expected = nms(boxes, scores.astype(np.float32), 0.4)
    assert_each_tier_equal(_on_every_tier(nms, boxes, scores, 0.4), expected)


def test_layouts_just_work_and_inputs_are_not_modified():
    rng = np.random.default_rng(2)
    boxes, scores = _random_boxes(rng, 30), rng.random(30)
    idxs = rng.integers(0, 3, 30)
    expected = batched_nms(boxes, scores, idxs, 0.5)
    for name, view in awkward_layouts(boxes).items():
        before = view.copy()
        assert_each_tier_equal(_on_every_tier(batched_nms, view, scores[::-1][::-1], idxs,
                                              0.5), expected)
        np.testing.assert_array_equal(view, before, err_msg=name)
    strided = np.repeat(scores, 2)[::2]  # a non-contiguous (K,) view
    assert_each_tier_equal(_on_every_tier(nms, boxes, strided, 0.5), nms(boxes, scores, 0.5))


def test_numba_is_deterministic_on_10k_boxes():
    rng = np.random.default_rng(4)
    boxes = _layout_boxes(rng, "spread", 10_000).astype(np.float32)
    scores = rng.random(10_000).astype(np.float32)
    first = nms(boxes, scores, 0.5, backend="numba")
    np.testing.assert_array_equal(nms(boxes, scores, 0.5, backend="numba"), first)
    np.testing.assert_array_equal(nms(boxes, scores, 0.5, backend="numpy"), first)


# ----------------------------------------------------------------------------- bad input

BOXES, SCORES = np.array([[0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 2.0, 2.0]]), np.array([0.9, 0.8])


@pytest.mark.parametrize("boxes, scores, error, name", [
    (BOXES[:, :3], SCORES, ValueError, "boxes"),  # (K, 3)
    (BOXES.ravel(), SCORES, ValueError, "boxes"),  # 1-d
    (BOXES.astype(np.float16), SCORES, TypeError, "boxes"),  # float16: not a supported dtype
    (BOXES > 0, SCORES, TypeError, "boxes"),  # bool
    (BOXES, SCORES[:1], ValueError, "scores"),  # K mismatch
    (BOXES, SCORES[:, None], ValueError, "scores"),  # 2-d
    (BOXES, SCORES.astype(np.float16), TypeError, "scores"),
    (BOXES, np.array([1, 2]), TypeError, "scores"),  # integer scores
    (BOXES, np.array([0.5, np.nan]), ValueError, "scores"),  # NaN has no rank
])
def test_bad_boxes_and_scores(boxes, scores, error, name):
    with pytest.raises(error, match=name):
        nms(boxes, scores, 0.5)
    with pytest.raises(error, match=name):
        batched_nms(boxes, scores, np.zeros(len(boxes), dtype=int), 0.5)


@pytest.mark.parametrize("idxs, error", [
    (np.array([0.0, 1.0]), TypeError),  # float class ids
    (np.array([0]), ValueError),  # K mismatch
    (np.array([[0, 1]]), ValueError),  # 2-d
])
def test_bad_idxs(idxs, error):
    with pytest.raises(error, match="idxs"):
        batched_nms(BOXES, SCORES, idxs, 0.5)


@pytest.mark.parametrize("iou_threshold", ["0.5", None, True, np.array([0.5])])
def test_bad_iou_threshold(iou_threshold):
    with pytest.raises(TypeError, match="iou_threshold"):
        nms(BOXES, SCORES, iou_threshold)


def test_backends():
    assert nms(BOXES, SCORES, 0.5, backend="auto").tolist() == [0, 1]
    with pytest.raises(BackendUnavailableError, match="cuda"):
        nms(BOXES, SCORES, 0.5, backend="cuda")
    with pytest.raises(BackendUnavailableError, match="cuda"):  # even with no boxes
        batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=int), 0.5, backend="cuda")
    with pytest.raises(ValueError, match="backend"):
        nms(BOXES, SCORES, 0.5, backend="gpu")


# ----------------------------------------------------------------------------- bench

def test_bench_nms_quick_times_the_forward_only(capsys):
    assert cli.main(["bench", "nms", "--quick", "--json"]) == 0
    rows = {r["tier"]: r for r in json.loads(capsys.readouterr().out)}
    for tier in ("numpy", "numba"):
        assert rows[tier]["fwd_ms"] > 0 and rows[tier]["fwd_bwd_ms"] is None
    assert rows["cuda"]["fwd_ms"] is None and "no cuda tier" in rows["cuda"]["note"]
    if torchvision_nms is not None:
        reference = rows["torchvision.ops.nms (CPU)"]
        assert reference["fwd_speedup"] == 1.0 and reference["fwd_bwd_ms"] is None
    assert cli.main(["bench", "nms", "--quick"]) == 0
    assert "| no backward |" in capsys.readouterr().out
