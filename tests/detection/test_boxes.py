"""``box_area``, ``box_iou`` and ``box_convert`` on both tiers (loop, numpy): torchvision as the
oracle on drawn boxes (degenerate and inverted ones included), hand-computed cases, the
properties (IoU in [0, 1], symmetric, 1 on the diagonal; conversions round-trip), empty and
single boxes, dtypes (integers upcast, float32 kept), layouts, purity and bad input.

Equation numbers refer to the docstring of ``scratchvision.detection.boxes``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from scratchvision import BackendUnavailableError
from scratchvision.detection.boxes import BOX_FORMATS, box_area, box_convert, box_iou

from tiers import (
    DTYPES, assert_close, assert_each_tier, assert_each_tier_equal, awkward_layouts,
    run_on_every_tier,
)

OFFERED = ("loop", "numpy")
FORMAT_PAIRS = [(a, b) for a in BOX_FORMATS for b in BOX_FORMATS]

# ----------------------------------------------------------------------------- strategies

#: coordinates on a quarter-pixel grid (exact in float32) make equal edges, touching boxes and
#: zero-width sides common; the mixed-in floats cover everything in between
GRID = 4
_coordinate = st.one_of(
    st.integers(-4 * GRID, 4 * GRID).map(lambda i: i / GRID),
    st.floats(-4, 4, allow_nan=False, allow_subnormal=False),
)
_size = st.one_of(
    st.integers(1, 4 * GRID).map(lambda i: i / GRID),
    st.floats(0.25, 4, allow_subnormal=False),
)


@st.composite
def any_boxes(draw, max_boxes: int = 6) -> np.ndarray:
    """(K, 4) float64 boxes, every coordinate drawn on its own: proper, degenerate (a side of
    zero) and inverted (x2 < x1 or y2 < y1) boxes all occur; K may be 0."""
    k = draw(st.integers(0, max_boxes), label="K")
    boxes = draw(hnp.arrays(np.float64, (k, 4), elements=_coordinate))
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    if (widths == 0).any() or (heights == 0).any():
        event("a degenerate box")
    if (widths < 0).any() or (heights < 0).any():
        event("an inverted box")
    return boxes


@st.composite
def proper_boxes(draw, min_boxes: int = 0, max_boxes: int = 6) -> np.ndarray:
    """(K, 4) float64 boxes with positive width and height (at least 1/4 pixel)."""
    k = draw(st.integers(min_boxes, max_boxes), label="K")
    corners = draw(hnp.arrays(np.float64, (k, 2), elements=_coordinate))
    sizes = draw(hnp.arrays(np.float64, (k, 2), elements=_size))
    return np.concatenate([corners, corners + sizes], axis=1)  # (x1, y1) | (x2, y2)


# ----------------------------------------------------------------------------- oracle

def _torch():
    """(torch, torchvision.ops), or skip the test when the oracle extra is absent."""
    torch = pytest.importorskip("torch")
    return torch, pytest.importorskip("torchvision.ops")


@given(boxes1=any_boxes(), boxes2=any_boxes(), dtype=st.sampled_from(DTYPES))
def test_box_iou_and_area_match_torchvision(boxes1, boxes2, dtype):
    """Every tier against torchvision on boxes of every kind, nan (0 / 0) in the same places."""
    torch, tvops = _torch()
    boxes1, boxes2 = boxes1.astype(dtype), boxes2.astype(dtype)
    expected_iou = tvops.box_iou(torch.from_numpy(boxes1), torch.from_numpy(boxes2)).numpy()
    expected_area = tvops.box_area(torch.from_numpy(boxes1)).numpy()
    assert_each_tier_equal(run_on_every_tier(box_iou, boxes1, boxes2, offered=OFFERED),
                           expected_iou)
    assert_each_tier_equal(run_on_every_tier(box_area, boxes1, offered=OFFERED), expected_area)


@given(boxes=any_boxes(), dtype=st.sampled_from(DTYPES),
       formats=st.sampled_from(FORMAT_PAIRS))
def test_box_convert_matches_torchvision(boxes, dtype, formats):
    torch, tvops = _torch()
    in_fmt, out_fmt = formats
    boxes = boxes.astype(dtype)
    expected = tvops.box_convert(torch.from_numpy(boxes), in_fmt, out_fmt).numpy()
    assert_each_tier_equal(
        run_on_every_tier(box_convert, boxes, in_fmt, out_fmt, offered=OFFERED), expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_many_random_boxes_match_torchvision_bit_for_bit(dtype):
    """A larger seeded batch than the drawn cases: with coordinates that are not on a grid,
    most sums round, so an operation done in another order (``x1 + 0.5 * w`` for a centre
    instead of ``(x1 + x2) / 2``) shows up in the last bit."""
    torch, tvops = _torch()
    rng = np.random.default_rng(5)
    boxes1 = rng.uniform(-50, 50, size=(60, 4)).astype(dtype)  # about 3 in 4 are inverted
    # sorted rows a <= b <= c <= d read as (x1, y1, x2, y2) are proper boxes
    boxes2 = np.sort(rng.uniform(-50, 50, size=(40, 4)), axis=1).astype(dtype)
    t1, t2 = torch.from_numpy(boxes1), torch.from_numpy(boxes2)
    assert_each_tier_equal(run_on_every_tier(box_iou, boxes1, boxes2, offered=OFFERED),
                           tvops.box_iou(t1, t2).numpy())
    assert_each_tier_equal(run_on_every_tier(box_area, boxes1, offered=OFFERED),
                           tvops.box_area(t1).numpy())
    for in_fmt, out_fmt in FORMAT_PAIRS:
        assert_each_tier_equal(
            run_on_every_tier(box_convert, boxes1, in_fmt, out_fmt, offered=OFFERED),
            tvops.box_convert(t1, in_fmt, out_fmt).numpy())


def test_nan_coordinates_propagate_like_torchvision():
    """A nan coordinate makes the whole row (column) of that box nan, on every tier."""
    torch, tvops = _torch()
    boxes1 = np.array([[0.0, 0.0, 2.0, 2.0], [0.0, np.nan, 1.0, 1.0]])
    boxes2 = np.array([[1.0, 1.0, 3.0, 3.0], [np.nan, 0.0, 1.0, 1.0], [5.0, 5.0, 6.0, 6.0]])
    expected = tvops.box_iou(torch.from_numpy(boxes1), torch.from_numpy(boxes2)).numpy()
    results = run_on_every_tier(box_iou, boxes1, boxes2, offered=OFFERED)
    assert_each_tier(results, expected)
    for iou in results.values():
        assert np.isnan(iou[1]).all() and np.isnan(iou[:, 1]).all()
        assert not np.isnan(iou[0, [0, 2]]).any()


# ----------------------------------------------------------------------------- by hand

#: (box a, box b, IoU worked out by hand, what the pair shows)
HAND_CASES = [
    ([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7, "overlap 1 of union 4 + 4 - 1"),
    ([0, 0, 4, 4], [1, 1, 3, 3], 4 / 16, "b inside a"),
    ([0, 0, 2, 2], [0, 0, 2, 2], 1.0, "identical"),
    ([0, 0, 2, 2], [2, 0, 4, 2], 0.0, "touching edges: the clamp of eq. (3) at 0"),
    ([0, 0, 1, 1], [5, 5, 6, 6], 0.0, "disjoint"),
    ([0, 0, 0, 3], [0, 0, 2, 2], 0.0, "degenerate a: area 0, union 4"),
    ([1, 1, 1, 1], [1, 1, 1, 1], np.nan, "two points: 0 / 0"),
    ([2, 0, 0, 2], [0, 0, 2, 2], np.nan, "a inverted in x: union -4 + 4 - 0 = 0"),
    ([2, 0, 0, 2], [0, 0, 3, 3], 0.0, "a inverted in x: union -4 + 9 = 5, inter 0"),
    ([2, 0, 0, 2], [0, 0, 1, 1], -0.0, "a inverted in x: union -4 + 1 < 0, IoU -0.0"),
    ([2, 2, 0, 0], [0, 0, 2, 2], 0.0, "a inverted in x and y: area +4, inter 0"),
]


@pytest.mark.parametrize("a, b, expected, what", HAND_CASES, ids=[c[3] for c in HAND_CASES])
@pytest.mark.parametrize("dtype", DTYPES)
def test_box_iou_by_hand(a, b, expected, what, dtype):
    boxes1, boxes2 = np.array([a], dtype=dtype), np.array([b], dtype=dtype)
    results = run_on_every_tier(box_iou, boxes1, boxes2, offered=OFFERED)
    assert_each_tier(results, np.array([[expected]], dtype=dtype))
    if expected == 0:  # torchvision's sign of zero too: 0 / (negative union) = -0.0
        for tier, iou in results.items():
            assert np.signbit(iou[0, 0]) == np.signbit(expected), tier


def test_box_area_by_hand_is_signed():
    boxes = np.array([[0, 0, 2, 3], [0, 0, 0, 3], [2, 0, 0, 3], [2, 3, 0, 0]], dtype=np.float64)
    results = run_on_every_tier(box_area, boxes, offered=OFFERED)
    assert_each_tier_equal(results, np.array([6.0, 0.0, -6.0, 6.0]))


def test_box_convert_by_hand():
    xyxy = np.array([[1.0, 2.0, 5.0, 4.0]])
    xywh = np.array([[1.0, 2.0, 4.0, 2.0]])
    cxcywh = np.array([[3.0, 3.0, 4.0, 2.0]])
    by_name = {"xyxy": xyxy, "xywh": xywh, "cxcywh": cxcywh}
    for in_fmt, out_fmt in FORMAT_PAIRS:
        results = run_on_every_tier(box_convert, by_name[in_fmt], in_fmt, out_fmt,
                                    offered=OFFERED)
        assert_each_tier_equal(results, by_name[out_fmt])


# ----------------------------------------------------------------------------- properties

@given(boxes1=proper_boxes(), boxes2=proper_boxes(), dtype=st.sampled_from(DTYPES))
def test_iou_of_proper_boxes_is_in_unit_interval_and_symmetric(boxes1, boxes2, dtype):
    boxes1, boxes2 = boxes1.astype(dtype), boxes2.astype(dtype)
    forward = run_on_every_tier(box_iou, boxes1, boxes2, offered=OFFERED)
    backward = run_on_every_tier(box_iou, boxes2, boxes1, offered=OFFERED)
    for tier, iou in forward.items():
        assert iou.shape == (len(boxes1), len(boxes2)) and iou.dtype == dtype
        assert ((iou >= 0) & (iou <= 1)).all(), tier
        # max, min, + and * are commutative in IEEE arithmetic: symmetric to the last bit
        np.testing.assert_array_equal(iou, backward[tier].T, err_msg=tier)
    assert_each_tier_equal(forward, forward["loop"])


@given(boxes=proper_boxes(min_boxes=1), dtype=st.sampled_from(DTYPES))
def test_iou_of_a_box_with_itself_is_one(boxes, dtype):
    """On the diagonal I = A exactly and U = (A + A) - A = A exactly, so IoU is exactly 1."""
    boxes = boxes.astype(dtype)
    for iou in run_on_every_tier(box_iou, boxes, boxes, offered=OFFERED).values():
        np.testing.assert_array_equal(np.diag(iou), np.ones(len(boxes), dtype=dtype))


@given(boxes=any_boxes(), dtype=st.sampled_from(DTYPES),
       formats=st.sampled_from(FORMAT_PAIRS))
def test_box_convert_round_trips(boxes, dtype, formats):
    in_fmt, out_fmt = formats
    boxes = boxes.astype(dtype)
    there = run_on_every_tier(box_convert, boxes, in_fmt, out_fmt, offered=OFFERED)
    assert_each_tier_equal(there, there["loop"])
    for tier, converted in there.items():
        back = box_convert(converted, out_fmt, in_fmt, backend=tier)
        # a centre is (x1 + x2) / 2 and back x1 = cx - w / 2: a rounding or two of the
        # coordinates' size, which assert_close's default atol (rtol * max |coordinate|) allows
        assert_close(back, boxes, label=f"tier {tier!r} {in_fmt}->{out_fmt}->{in_fmt}:")


# ----------------------------------------------------------------------------- edge cases

@pytest.mark.parametrize("k, j", [(0, 3), (3, 0), (0, 0)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_boxes(k, j, dtype):
    boxes1, boxes2 = np.zeros((k, 4), dtype=dtype), np.ones((j, 4), dtype=dtype)
    assert_each_tier_equal(run_on_every_tier(box_iou, boxes1, boxes2, offered=OFFERED),
                           np.zeros((k, j), dtype=dtype))
    assert_each_tier_equal(run_on_every_tier(box_area, boxes1, offered=OFFERED),
                           np.zeros((k,), dtype=dtype))
    for in_fmt, out_fmt in FORMAT_PAIRS:
        assert_each_tier_equal(
            run_on_every_tier(box_convert, boxes1, in_fmt, out_fmt, offered=OFFERED),
            np.zeros((k, 4), dtype=dtype))


def test_one_box():
    box = np.array([[1.0, 1.0, 4.0, 3.0]])
    assert_each_tier_equal(run_on_every_tier(box_area, box, offered=OFFERED), np.array([6.0]))
    assert_each_tier_equal(run_on_every_tier(box_iou, box, box, offered=OFFERED),
                           np.array([[1.0]]))


@pytest.mark.parametrize("int_dtype, side", [(np.int32, 100_000), (np.int64, 100_000),
                                             (np.uint16, 60_000)])
def test_integer_boxes_are_upcast_to_float64(int_dtype, side):
    """Integer coordinates become float64: no overflow in the products (side**2 is beyond
    int32 and uint16), and the values of the float64 boxes."""
    big = np.array([[0, 0, side, side]], dtype=int_dtype)
    for area in run_on_every_tier(box_area, big, offered=OFFERED).values():
        assert area.dtype == np.float64 and area[0] == float(side) ** 2
    boxes1 = np.array([[0, 0, 2, 2]], dtype=int_dtype)
    boxes2 = np.array([[1, 1, 3, 3], [0, 0, 2, 2]], dtype=int_dtype)
    assert_each_tier(run_on_every_tier(box_iou, boxes1, boxes2, offered=OFFERED),
                     np.array([[1 / 7, 1.0]]))
    assert_each_tier_equal(run_on_every_tier(box_convert, boxes2, "xyxy", "cxcywh",
                                             offered=OFFERED),
                           np.array([[2.0, 2.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0]]))


def test_unsigned_inverted_boxes_do_not_wrap_around():
    """(2 - 5) * (3 - 5) = 6 once upcast; in uint8 the differences would wrap to 253 and 254."""
    boxes = np.array([[5, 5, 2, 3]], dtype=np.uint8)
    assert_each_tier_equal(run_on_every_tier(box_area, boxes, offered=OFFERED), np.array([6.0]))
    assert_each_tier_equal(run_on_every_tier(box_convert, boxes, "xyxy", "xywh",
                                             offered=OFFERED), np.array([[5.0, 5.0, -3.0, -2.0]]))


@pytest.mark.parametrize("dtype1, dtype2, expected", [
    (np.float32, np.float32, np.float32),
    (np.float32, np.float64, np.float64),
    (np.float64, np.float32, np.float64),
    (np.int64, np.float32, np.float64),
])
def test_result_dtype(dtype1, dtype2, expected):
    boxes1, boxes2 = np.array([[0, 0, 2, 2]], dtype=dtype1), np.array([[1, 1, 3, 3]], dtype=dtype2)
    for tier in OFFERED:
        assert box_iou(boxes1, boxes2, backend=tier).dtype == expected
        assert box_area(boxes2, backend=tier).dtype == np.result_type(dtype2, np.float32)
        assert box_convert(boxes2, "xyxy", "xywh", backend=tier).dtype == \
            np.result_type(dtype2, np.float32)


def test_awkward_layouts_give_the_same_results_and_are_not_written_to():
    rng = np.random.default_rng(0)
    corners = rng.uniform(-5, 5, size=(5, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(0.5, 3, size=(5, 2))], axis=1)
    others = boxes[::-1] + 0.5
    expected_iou, expected_area = box_iou(boxes, others), box_area(boxes)
    expected_cxcywh = box_convert(boxes, "xyxy", "cxcywh")
    for name, view in awkward_layouts(boxes).items():
        before = view.copy()
        assert_each_tier_equal(run_on_every_tier(box_iou, view, others, offered=OFFERED),
                               expected_iou)
        assert_each_tier_equal(run_on_every_tier(box_area, view, offered=OFFERED),
                               expected_area)
        converted = run_on_every_tier(box_convert, view, "xyxy", "cxcywh", offered=OFFERED)
        assert_each_tier_equal(converted, expected_cxcywh)
        np.testing.assert_array_equal(view, before, err_msg=name)


def test_box_convert_to_the_same_format_returns_a_copy():
    boxes = np.array([[0.0, 0.0, 1.0, 1.0]])
    for tier in OFFERED:
        out = box_convert(boxes, "xywh", "xywh", backend=tier)
        np.testing.assert_array_equal(out, boxes)
        assert not np.shares_memory(out, boxes)


# ----------------------------------------------------------------------------- bad input

GOOD = np.zeros((2, 4))


@pytest.mark.parametrize("shape", [(4,), (2, 3), (2, 5), (1, 2, 4), ()])
def test_boxes_must_be_k_by_4(shape):
    bad = np.zeros(shape)
    with pytest.raises(ValueError, match=r"\bboxes\b"):
        box_area(bad)
    with pytest.raises(ValueError, match=r"\bboxes\b"):
        box_convert(bad, "xyxy", "xywh")
    with pytest.raises(ValueError, match=r"\bboxes1\b"):
        box_iou(bad, GOOD)
    with pytest.raises(ValueError, match=r"\bboxes2\b"):
        box_iou(GOOD, bad)


@pytest.mark.parametrize("dtype", [np.bool_, np.complex128, np.float16])
def test_boxes_must_be_real_float_or_integer(dtype):
    bad = np.zeros((2, 4), dtype=dtype)
    with pytest.raises(TypeError, match=r"\bboxes\b"):
        box_area(bad)
    with pytest.raises(TypeError, match=r"\bboxes2\b"):
        box_iou(GOOD, bad)


@pytest.mark.parametrize("argument", ["in_fmt", "out_fmt"])
@pytest.mark.parametrize("fmt", ["xxyy", "XYXY", "xywhr", None])
def test_box_formats_must_be_known(argument, fmt):
    formats = {"in_fmt": "xyxy", "out_fmt": "xyxy", argument: fmt}
    with pytest.raises(ValueError, match=rf"\b{argument}\b.*{fmt!r}"):
        box_convert(GOOD, **formats)


@pytest.mark.parametrize("backend", ["numba", "cuda"])
def test_there_is_no_numba_or_cuda_tier(backend):
    with pytest.raises(BackendUnavailableError, match=rf"no {backend} tier"):
        box_iou(GOOD, GOOD, backend=backend)
    with pytest.raises(BackendUnavailableError, match=rf"no {backend} tier"):
        box_convert(GOOD, "xyxy", "xywh", backend=backend)


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match=r"\bbackend\b"):
        box_area(GOOD, backend="gpu")
