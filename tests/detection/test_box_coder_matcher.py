"""``BoxCoder`` and ``Matcher``: torchvision as the oracle on drawn inputs (matches to the bit,
box codes to rounding), hand-computed cases, the encode/decode round trip, the clip, ties and
low-quality matches, empty inputs, dtypes, purity and bad input.

Equation numbers refer to the docstring of ``scratchvision.detection.box_coder``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from scratchvision.detection.box_coder import BoxCoder, Matcher
from scratchvision.detection.boxes import box_iou

from tiers import DTYPES, assert_close

#: the weights torchvision's detectors use: RPN / RetinaNet, Faster R-CNN's box head, and an
#: uneven one so that a swapped weight shows
WEIGHTS = [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0), (2.0, 3.0, 0.5, 7.0)]
DEFAULT_CLIP = math.log(1000.0 / 16)

# ----------------------------------------------------------------------------- strategies


@st.composite
def proper_boxes(draw, k: int, max_size: float = 20.0) -> np.ndarray:
    """(k, 4) float64 boxes as (x1, y1, x2, y2), corners in [-20, 20], sides in [0.5, max_size]:
    every size ratio stays below 62.5 = exp(clip) when max_size <= 31."""
    corners = draw(hnp.arrays(np.float64, (k, 2), elements=st.floats(-20, 20)))
    sizes = draw(hnp.arrays(np.float64, (k, 2), elements=st.floats(0.5, max_size)))
    return np.concatenate([corners, corners + sizes], axis=1)


#: qualities on a grid of tenths: ties between ground truths and between predictions are common
_quality = st.integers(0, 10).map(lambda i: i / 10)


@st.composite
def quality_matrices(draw) -> np.ndarray:
    """(G, P) float64 match-quality matrices, G in 1..5, P in 1..10, entries in tenths."""
    g, p = draw(st.integers(1, 5), label="G"), draw(st.integers(1, 10), label="P")
    quality = draw(hnp.arrays(np.float64, (g, p), elements=_quality))
    if (quality == quality.max(axis=1, keepdims=True)).sum() > g:
        event("a ground truth with tied best predictions")
    return quality


#: (high, low) pairs: the RPN's (0.7, 0.3), Fast R-CNN's (0.5, 0.5), RetinaNet's (0.5, 0.4),
#: and thresholds that fall on the grid of tenths (>= and < must be exact there)
THRESHOLDS = [(0.7, 0.3), (0.5, 0.5), (0.5, 0.4), (0.6, 0.2), (1.0, 0.0)]


def _torch():
    """(torch, torchvision's detection _utils), or skip when the oracle extra is absent."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from torchvision.models.detection import _utils
    return torch, _utils


# ============================================================================= BoxCoder

@given(data=st.data(), weights=st.sampled_from(WEIGHTS), dtype=st.sampled_from(DTYPES))
def test_box_coder_matches_torchvision(data, weights, dtype):
    """encode = torchvision's encode_single, decode = decode_single, with one and three
    classes and size codes beyond the clip."""
    torch, tv_utils = _torch()
    k = data.draw(st.integers(0, 8), label="K")
    classes = data.draw(st.sampled_from([1, 3]), label="C")
    gt = data.draw(proper_boxes(k)).astype(dtype)
    anchors = data.draw(proper_boxes(k)).astype(dtype)
    # codes up to 8 / w beyond the clip (4.135) on purpose: the clip is part of decode
    codes = data.draw(hnp.arrays(np.float64, (k, 4 * classes), elements=st.floats(-8, 8)))
    codes = (codes * np.tile(weights, classes)).astype(dtype)
    ours, theirs = BoxCoder(weights), tv_utils.BoxCoder(weights)
    expected_targets = theirs.encode_single(torch.from_numpy(gt), torch.from_numpy(anchors))
    assert_close(ours.encode(gt, anchors), expected_targets.numpy(), label="encode")
    expected_boxes = theirs.decode_single(torch.from_numpy(codes), torch.from_numpy(anchors))
    assert_close(ours.decode(codes, anchors), expected_boxes.numpy(), label="decode")


def test_box_coder_matches_torchvision_on_degenerate_boxes():
    """A zero-width proposal gives inf / nan targets, in the same places as torchvision."""
    torch, tv_utils = _torch()
    gt = np.array([[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 0.0, 4.0], [1.0, 1.0, 3.0, 5.0]])
    proposals = np.array([[1.0, 1.0, 1.0, 3.0], [0.0, 0.0, 2.0, 2.0], [2.0, 2.0, 2.0, 2.0]])
    expected = tv_utils.BoxCoder((1.0, 1.0, 1.0, 1.0)).encode_single(
        torch.from_numpy(gt), torch.from_numpy(proposals)).numpy()
    targets = BoxCoder((1.0, 1.0, 1.0, 1.0)).encode(gt, proposals)
    assert not np.isfinite(expected).all()  # the case is the one it claims to be
    assert_close(targets, expected, label="encode")


def test_encode_by_hand():
    """Anchor (0, 0, 10, 10): centre (5, 5), size 10 x 10. Ground truth (5, 5, 15, 25): centre
    (10, 15), size 10 x 20. With weights (10, 10, 5, 5), eq. (2):
    dx = 10 * 5 / 10 = 5, dy = 10 * 10 / 10 = 10, dw = 5 * log 1 = 0, dh = 5 * log 2."""
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    targets = coder.encode(np.array([[5.0, 5.0, 15.0, 25.0]]), np.array([[0.0, 0.0, 10.0, 10.0]]))
    assert_close(targets, np.array([[5.0, 10.0, 0.0, 5.0 * math.log(2.0)]]), label="encode")


def test_decode_by_hand_with_two_classes():
    """Box (0, 0, 2, 2), centre (1, 1), size 2. Class 0: codes (0.5, 0, log 2, 0) move the
    centre by 0.5 * 2 = 1 and double the width: (0, 0, 4, 2). Class 1: dw = 10 is clipped to
    log(62.5), so the width is 125: x from 1 - 62.5 to 1 + 62.5."""
    codes = np.array([[0.5, 0.0, math.log(2.0), 0.0, 0.0, 0.0, 10.0, 0.0]])
    boxes = BoxCoder((1.0, 1.0, 1.0, 1.0)).decode(codes, np.array([[0.0, 0.0, 2.0, 2.0]]))
    assert_close(boxes, np.array([[0.0, 0.0, 4.0, 2.0, -61.5, 0.0, 63.5, 2.0]]), label="decode")


def test_the_clip_can_be_turned_off():
    codes = np.array([[0.0, 0.0, 10.0, 0.0]])
    boxes = BoxCoder((1.0, 1.0, 1.0, 1.0), bbox_xform_clip=math.inf).decode(
        codes, np.array([[0.0, 0.0, 2.0, 2.0]]))
    half_width = math.exp(10.0)  # 0.5 * exp(10) * 2
    assert_close(boxes, np.array([[1.0 - half_width, 0.0, 1.0 + half_width, 2.0]]),
                 label="decode")


@given(data=st.data(), weights=st.sampled_from(WEIGHTS))
def test_decode_inverts_encode(data, weights):
    """decode(encode(gt, anchors), anchors) == gt when no size code reaches the clip (every
    size ratio is below 40 < 62.5 here)."""
    k = data.draw(st.integers(1, 8), label="K")
    gt, anchors = data.draw(proper_boxes(k)), data.draw(proper_boxes(k))
    coder = BoxCoder(weights)
    targets = coder.encode(gt, anchors)
    assert (np.abs(targets[:, 2:] / weights[2:]) < DEFAULT_CLIP).all()
    assert_close(coder.decode(targets, anchors), gt, label="round trip")


def test_box_coder_empty_and_dtypes():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    empty = np.zeros((0, 4), dtype=np.float32)
    targets = coder.encode(empty, empty)
    assert targets.shape == (0, 4) and targets.dtype == np.float32
    decoded = coder.decode(np.zeros((0, 8), dtype=np.float32), np.zeros((0, 4)))
    assert decoded.shape == (0, 8) and decoded.dtype == np.float32


def test_box_coder_dtypes_follow_torchvision():
    """encode: the common type of the two inputs (integers count as float64); decode: the
    codes' dtype, the boxes are cast to it (as torchvision's ``boxes.to(rel_codes.dtype)``)."""
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    boxes32 = np.array([[0, 0, 2, 2]], dtype=np.float32)
    boxes_int = np.array([[1, 1, 3, 5]], dtype=np.int32)
    assert coder.encode(boxes32, boxes32).dtype == np.float32
    assert coder.encode(boxes32, boxes32.astype(np.float64)).dtype == np.float64
    targets = coder.encode(boxes_int, boxes32)
    assert targets.dtype == np.float64
    # integer ground truth (1, 1, 3, 5): centre (2, 3), size 2 x 4 against (1, 1), 2 x 2
    assert_close(targets, np.array([[0.5, 1.0, 0.0, math.log(2.0)]]), label="encode")
    codes32 = np.zeros((1, 4), dtype=np.float32)
    assert coder.decode(codes32, boxes_int).dtype == np.float32
    assert coder.decode(codes32.astype(np.float64), boxes32).dtype == np.float64


def test_box_coder_does_not_modify_its_inputs():
    rng = np.random.default_rng(1)
    anchors = np.array([[0.0, 0.0, 4.0, 4.0], [1.0, 2.0, 3.0, 7.0]])
    gt = anchors + rng.uniform(-0.5, 0.5, size=anchors.shape)
    codes = rng.normal(size=(2, 8))
    copies = [a.copy() for a in (anchors, gt, codes)]
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    coder.encode(gt, anchors)
    coder.decode(codes, anchors)
    for before, after in zip(copies, (anchors, gt, codes)):
        np.testing.assert_array_equal(after, before)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0), (1.0,) * 5, "abcd", 1.0])
def test_box_coder_weights_must_be_four_numbers(weights):
    with pytest.raises((TypeError, ValueError), match=r"\bweights\b"):
        BoxCoder(weights)


@pytest.mark.parametrize("weights", [(1.0, 0.0, 1.0, 1.0), (1.0, 1.0, -5.0, 1.0),
                                     (1.0, 1.0, 1.0, math.inf), (1.0, math.nan, 1.0, 1.0)])
def test_box_coder_weights_must_be_positive_and_finite(weights):
    with pytest.raises(ValueError, match=r"\bweights\b"):
        BoxCoder(weights)


def test_box_coder_clip_must_be_a_number():
    with pytest.raises(ValueError, match=r"\bbbox_xform_clip\b"):
        BoxCoder((1.0, 1.0, 1.0, 1.0), bbox_xform_clip=math.nan)
    with pytest.raises(TypeError, match=r"\bbbox_xform_clip\b"):
        BoxCoder((1.0, 1.0, 1.0, 1.0), bbox_xform_clip="4")


def test_box_coder_bad_arrays():
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    boxes = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"\bproposals\b"):
        coder.encode(boxes, np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"\breference_boxes\b.*\bproposals\b"):
        coder.encode(boxes, np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"\brel_codes\b.*4 \* C"):
        coder.decode(np.zeros((3, 6)), boxes)
    with pytest.raises(ValueError, match=r"\brel_codes\b"):
        coder.decode(np.zeros((3, 4, 1)), boxes)
    with pytest.raises(ValueError, match=r"\brel_codes\b.*\bboxes\b"):
        coder.decode(np.zeros((2, 4)), boxes)
    with pytest.raises(TypeError, match=r"\brel_codes\b"):
        coder.decode(np.zeros((3, 4), dtype=np.int64), boxes)
    with pytest.raises(ValueError, match=r"\bboxes\b"):
        coder.decode(np.zeros((3, 4)), np.zeros((3, 2)))


# ============================================================================= Matcher

@given(quality=quality_matrices(), thresholds=st.sampled_from(THRESHOLDS),
       allow_low_quality=st.booleans(), dtype=st.sampled_from(DTYPES))
def test_matcher_matches_torchvision(quality, thresholds, allow_low_quality, dtype):
    """Bit for bit, on matrices full of ties and of values exactly at the thresholds."""
    torch, tv_utils = _torch()
    high, low = thresholds
    quality = quality.astype(dtype)
    expected = tv_utils.Matcher(high, low, allow_low_quality)(torch.from_numpy(quality))
    matches = Matcher(high, low, allow_low_quality)(quality)
    assert matches.dtype == np.int64
    np.testing.assert_array_equal(matches, expected.numpy())


@given(data=st.data(), allow_low_quality=st.booleans())
def test_matcher_on_box_iou_matches_torchvision(data, allow_low_quality):
    """The matrix a detector really feeds it: box_iou(ground truth, anchors)."""
    torch, tv_utils = _torch()
    gt = data.draw(proper_boxes(data.draw(st.integers(1, 4), label="G")))
    anchors = data.draw(proper_boxes(data.draw(st.integers(1, 12), label="P")))
    quality = box_iou(gt, anchors)
    expected = tv_utils.Matcher(0.7, 0.3, allow_low_quality)(torch.from_numpy(quality))
    np.testing.assert_array_equal(Matcher(0.7, 0.3, allow_low_quality)(quality),
                                  expected.numpy())


#: rows are ground truths, columns predictions
HAND_QUALITY = np.array([
    [0.9, 0.5, 0.1, 0.2, 0.0],
    [0.8, 0.6, 0.2, 0.2, 0.0],
])


def test_matcher_by_hand():
    """Per column (eq. 4): best 0.9 (gt 0), 0.6 (gt 1), 0.2 (gt 1), 0.2 (tie: gt 0, the first),
    0.0 (tie: gt 0). With high 0.7, low 0.3 (eq. 5): column 0 keeps gt 0, column 1 is between,
    columns 2-4 are below."""
    matches = Matcher(0.7, 0.3)(HAND_QUALITY)
    np.testing.assert_array_equal(matches, [0, -2, -1, -1, -1])
    # low == high: nothing is "between"; a value equal to high is a match (>=)
    np.testing.assert_array_equal(Matcher(0.6, 0.6)(HAND_QUALITY), [0, 1, -1, -1, -1])


def test_matcher_low_quality_matches_by_hand():
    """Eq. (6). In HAND_QUALITY both ground truths have their best at column 0 (0.9 and 0.8);
    with thresholds nothing passes, only column 0 comes back, as its own best, gt 0."""
    strict = Matcher(0.95, 0.95, allow_low_quality_matches=True)
    np.testing.assert_array_equal(strict(HAND_QUALITY), [0, -1, -1, -1, -1])
    quality = np.array([
        [0.9, 0.2, 0.1, 0.1, 0.0],
        [0.1, 0.2, 0.4, 0.4, 0.3],  # gt 1: best 0.4 at columns 2 and 3 (a tie)
    ])
    # without low-quality matches gt 1 gets nothing: 0.4 is below 0.5
    np.testing.assert_array_equal(Matcher(0.7, 0.5)(quality), [0, -1, -1, -1, -1])
    # with them, both tied columns get gt 1 back; column 4 (0.3) stays unmatched
    np.testing.assert_array_equal(Matcher(0.7, 0.5, True)(quality), [0, -1, 1, 1, -1])


def test_restored_match_is_the_predictions_own_best():
    """Column 0 is the best of gt 1 (0.3, its maximum), but column 0's own best is gt 0 (0.4):
    torchvision restores gt 0 there, and so do we; gt 1 stays without a prediction."""
    quality = np.array([
        [0.4, 0.0],
        [0.3, 0.1],  # gt 1: best 0.3 at column 0
    ])
    np.testing.assert_array_equal(Matcher(0.7, 0.5, True)(quality), [0, -1])


def test_matcher_one_by_one_and_float32():
    for dtype in DTYPES:
        np.testing.assert_array_equal(Matcher(0.5, 0.4)(np.array([[0.5]], dtype=dtype)), [0])
        np.testing.assert_array_equal(Matcher(0.5, 0.4)(np.array([[0.45]], dtype=dtype)), [-2])


def test_matcher_does_not_modify_its_input():
    quality = HAND_QUALITY.copy()
    Matcher(0.95, 0.95, True)(quality)
    np.testing.assert_array_equal(quality, HAND_QUALITY)


@pytest.mark.parametrize("shape, which", [((0, 5), "G = 0"), ((3, 0), "P = 0"),
                                          ((0, 0), "G = 0")])
def test_matcher_rejects_empty_matrices_like_torchvision(shape, which):
    with pytest.raises(ValueError, match=rf"\bmatch_quality_matrix\b.*{which}"):
        Matcher(0.7, 0.3)(np.zeros(shape))


def test_matcher_rejects_nan():
    with pytest.raises(ValueError, match=r"\bmatch_quality_matrix\b.*nan"):
        Matcher(0.7, 0.3)(np.array([[0.5, np.nan]]))


def test_matcher_bad_matrices():
    with pytest.raises(ValueError, match=r"\bmatch_quality_matrix\b"):
        Matcher(0.7, 0.3)(np.zeros(5))
    with pytest.raises(TypeError, match=r"\bmatch_quality_matrix\b"):
        Matcher(0.7, 0.3)(np.zeros((2, 5), dtype=np.int64))


def test_matcher_bad_thresholds():
    with pytest.raises(ValueError, match=r"\blow_threshold\b.*\bhigh_threshold\b"):
        Matcher(0.3, 0.7)
    with pytest.raises(ValueError, match=r"\bhigh_threshold\b"):
        Matcher(math.nan, 0.3)
    with pytest.raises(TypeError, match=r"\blow_threshold\b"):
        Matcher(0.7, None)
    with pytest.raises(TypeError, match=r"\ballow_low_quality_matches\b"):
        Matcher(0.7, 0.3, allow_low_quality_matches=1)
