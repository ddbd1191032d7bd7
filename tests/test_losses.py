"""``scratchvision.losses`` and ``scratchvision.detection.generalized_box_iou``.

(a) every backward against central differences (``scratchvision.gradcheck``, float64) on drawn
    shapes and values, for every reduction. The losses have kinks (L1 at d = 0, smooth L1's
    second derivative at |d| = beta, GIoU where boxes touch or share a coordinate); a central
    difference that straddles one measures neither side, so the drawn cases keep
    ``KINK_MARGIN`` (1e-3, a thousand finite-difference steps) away from them: differences
    ``|d|`` are drawn from ``[margin, ...]`` away from 0 and from ``beta``, and box edges are
    drawn as *distinct* grid values (half-pixel grid plus a jitter below 0.1), so no two edges
    of a pair tie and the intersection's sides are never within 0.4 of 0.
(b) the one-sided values returned exactly *at* the kinks, pinned by hand and against torch's
    autograd (l1 at d = 0, smooth L1 at |d| = beta and beta = 0, GIoU with touching, identical,
    zero-area and edge-sharing boxes, the saturated focal loss).
(c) forward values and gradients against torch / torchvision on random and adversarial inputs
    (skipped without torch: ``pip install ".[oracle]"``).
(d) bad input: one test per rule, the error type and the argument's name in the message.
(e) dtypes (float32 stays float32), awkward layouts, read-only inputs, no input modified.

Expected values come from torch, from hand computation, or from finite differences: never
from the code under test. Equation numbers refer to ``docs/derivations/losses.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from scratchvision import gradcheck, losses
from scratchvision.detection import generalized_box_iou

from strategies import KINK_MARGIN, float64_arrays
from tiers import awkward_layouts

REDUCTIONS = ("none", "mean", "sum")


def _torch():
    """(torch, torch.nn.functional, torchvision.ops), or skip without the oracle extra."""
    torch = pytest.importorskip("torch")
    tvops = pytest.importorskip("torchvision.ops")
    return torch, torch.nn.functional, tvops


def _close(actual, expected, *, rtol=1e-9, atol=1e-12, label=""):
    """Same shape and dtype as ``expected`` (when it is an array), values to ``atol + rtol |e|``,
    nan in the same places."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{label}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True,
                               err_msg=label)


def _tolerances(dtype):
    return dict(rtol=1e-9, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-6)


# ============================================================================ (a) strategies

@dataclass(frozen=True)
class FocalCase:
    """``inputs`` (any shape) logits in [-6, 6]; ``targets`` hard (0 / 1) or soft in [0, 1]."""

    inputs: np.ndarray
    targets: np.ndarray
    alpha: float
    gamma: float


@st.composite
def focal_cases(draw) -> FocalCase:
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4), label="shape")
    inputs = draw(float64_arrays(shape, bound=6.0), label="inputs")
    hard = draw(st.booleans(), label="hard targets")
    elements = st.sampled_from([0.0, 1.0]) if hard else st.floats(0.0, 1.0)
    targets = draw(hnp.arrays(np.float64, shape, elements=elements), label="targets")
    alpha = draw(st.sampled_from([0.25, 0.0, 1.0, 0.7, -1.0]), label="alpha")
    gamma = draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.5]), label="gamma")
    event("hard targets" if hard else "soft targets")
    return FocalCase(inputs, targets, alpha, gamma)


@dataclass(frozen=True)
class CrossEntropyCase:
    """``input`` (N, C, *spatial) or (C,); ``target`` int64 (N, *spatial) or (), at least one
    entry not ignored (-100); ``weight`` (C,) or None."""

    input: np.ndarray
    target: np.ndarray
    weight: np.ndarray | None
    label_smoothing: float


@st.composite
def cross_entropy_cases(draw) -> CrossEntropyCase:
    c = draw(st.integers(1, 4), label="C")
    if draw(st.booleans(), label="unbatched"):
        shape, target_shape = (c,), ()
    else:
        n = draw(st.integers(1, 3), label="N")
        spatial = tuple(draw(st.lists(st.integers(1, 3), max_size=2), label="spatial"))
        shape, target_shape = (n, c) + spatial, (n,) + spatial
    logits = draw(float64_arrays(shape, bound=4.0), label="input")
    target = np.asarray(draw(hnp.arrays(np.int64, target_shape, elements=st.integers(0, c - 1)),
                             label="target"))
    ignored = np.asarray(draw(hnp.arrays(np.bool_, target_shape), label="ignored"))
    ignored.reshape(-1)[0] = False  # keep one target: the mean of nothing is nan
    target = np.where(ignored, -100, target)
    weight = draw(st.none() | hnp.arrays(np.float64, (c,), elements=st.floats(0.1, 2.0)),
                  label="weight")
    smoothing = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]), label="label_smoothing")
    event("weighted" if weight is not None else "unweighted")
    return CrossEntropyCase(logits, target, weight, smoothing)


@st.composite
def off_kink_pairs(draw, kinks: tuple[float, ...]):
    """(input, target) float64 arrays whose difference ``d`` keeps ``KINK_MARGIN`` away from
    every ``|d| = kink``."""
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4), label="shape")
    target = draw(float64_arrays(shape), label="target")

    def off_kinks(v):
        return all(abs(v - k) >= KINK_MARGIN for k in kinks)

    size = draw(hnp.arrays(np.float64, shape,
                           elements=st.floats(KINK_MARGIN, 3.0).filter(off_kinks)), label="|d|")
    sign = draw(hnp.arrays(np.float64, shape, elements=st.sampled_from([-1.0, 1.0])),
                label="sign of d")
    return target + sign * size, target


@st.composite
def off_kink_box_pairs(draw):
    """(N, 4) and (N, 4) proper float64 boxes in which, per pair and per axis, the four edges
    are distinct values at least 0.4 apart: no tie between the boxes' coordinates (the max / min
    kinks of eqs. 22 and 26), no touching (the mask of eq. 23). Overlapping, nested and
    disjoint pairs all occur."""
    n = draw(st.integers(1, 4), label="N")
    boxes1, boxes2 = np.empty((n, 4)), np.empty((n, 4))
    for i in range(n):
        for axis in range(2):
            slots = draw(st.lists(st.integers(0, 12), min_size=4, max_size=4, unique=True),
                         label="edge slots")
            jitter = draw(st.lists(st.floats(0.0, 0.1), min_size=4, max_size=4), label="jitter")
            edges = 0.5 * np.array(slots, dtype=np.float64) + jitter
            boxes1[i, [axis, axis + 2]] = np.sort(edges[:2])
            boxes2[i, [axis, axis + 2]] = np.sort(edges[2:])
    return boxes1, boxes2


# ============================================================================ (a) gradcheck

@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(case=focal_cases())
def test_focal_loss_gradients_match_finite_differences(reduction, case):
    options = dict(alpha=case.alpha, gamma=case.gamma, reduction=reduction)
    gradcheck(lambda x, t: losses.sigmoid_focal_loss(x, t, **options),
              lambda g, x, t: losses.sigmoid_focal_loss_backward(g, x, t, **options),
              {"inputs": case.inputs, "targets": case.targets}).raise_if_failed()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(case=cross_entropy_cases())
def test_cross_entropy_gradient_matches_finite_differences(reduction, case):
    options = dict(weight=case.weight, reduction=reduction,
                   label_smoothing=case.label_smoothing)
    gradcheck(lambda z: losses.cross_entropy(z, case.target, **options),
              lambda g, z: losses.cross_entropy_backward(g, z, case.target, **options),
              {"input": case.input}).raise_if_failed()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(pair=off_kink_pairs(kinks=(0.0,)))
def test_l1_gradients_match_finite_differences(reduction, pair):
    gradcheck(lambda x, y: losses.l1_loss(x, y, reduction),
              lambda g, x, y: losses.l1_loss_backward(g, x, y, reduction),
              {"input": pair[0], "target": pair[1]}).raise_if_failed()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 2.0])
@given(data=st.data())
def test_smooth_l1_gradients_match_finite_differences(reduction, beta, data):
    # beta = 0 is L1 (kink at 0); for beta > 0 the second derivative jumps at |d| = beta,
    # which would cost a central difference O(eps) accuracy
    x, y = data.draw(off_kink_pairs(kinks=(0.0, beta)), label="(input, target)")
    gradcheck(lambda x, y: losses.smooth_l1_loss(x, y, reduction, beta),
              lambda g, x, y: losses.smooth_l1_loss_backward(g, x, y, reduction, beta),
              {"input": x, "target": y}).raise_if_failed()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(pair=off_kink_box_pairs(), eps=st.sampled_from([1e-7, 0.0, 0.5]))
def test_giou_loss_gradients_match_finite_differences(reduction, pair, eps):
    boxes1, boxes2 = pair
    gradcheck(lambda b1, b2: losses.generalized_box_iou_loss(b1, b2, reduction, eps),
              lambda g, b1, b2: losses.generalized_box_iou_loss_backward(g, b1, b2, reduction,
                                                                         eps),
              {"boxes1": boxes1, "boxes2": boxes2}).raise_if_failed()


def test_gradcheck_would_catch_a_wrong_giou_gradient():
    """The strategy is not too kind: a sign error in one coordinate's gradient is caught."""
    boxes1 = np.array([[0.0, 0.0, 2.0, 1.5]])
    boxes2 = np.array([[0.6, 0.2, 3.1, 2.4]])

    def wrong(g, b1, b2):
        grads = losses.generalized_box_iou_loss_backward(g, b1, b2)
        return grads.grad_boxes1 * np.array([1.0, 1.0, -1.0, 1.0]), grads.grad_boxes2

    report = gradcheck(losses.generalized_box_iou_loss, wrong,
                       {"boxes1": boxes1, "boxes2": boxes2})
    assert not report.results["boxes1"].ok and report.results["boxes2"].ok


# ============================================================================ (b) kinks

def test_l1_gradient_at_zero_difference_is_zero():
    """sign(0) = 0 (eq. 18), hand-derived; elsewhere +-1."""
    x = np.array([1.0, 2.0, -3.0, 0.0])
    y = np.array([1.0, 1.0, 0.0, 0.0])
    grads = losses.l1_loss_backward(np.ones(4), x, y, reduction="none")
    np.testing.assert_array_equal(grads.grad_input, [0.0, 1.0, -1.0, 0.0])
    np.testing.assert_array_equal(grads.grad_target, [0.0, -1.0, 1.0, 0.0])


def test_smooth_l1_gradient_at_beta_and_at_zero():
    """At |d| = beta both pieces have slope +-1 (eq. 20); at d = 0 the slope is 0; with
    beta = 0 (pure L1) the slope at d = 0 is sign(0) = 0. Hand-derived."""
    d = np.array([0.5, -0.5, 0.0, 0.25, 2.0])
    grads = losses.smooth_l1_loss_backward(np.ones(5), d, np.zeros(5), "none", beta=0.5)
    np.testing.assert_array_equal(grads.grad_input, [1.0, -1.0, 0.0, 0.5, 1.0])
    np.testing.assert_array_equal(
        losses.smooth_l1_loss(d, np.zeros(5), "none", beta=0.5), [0.25, 0.25, 0.0, 0.0625, 1.75])
    grads = losses.smooth_l1_loss_backward(np.ones(5), d, np.zeros(5), "none", beta=0.0)
    np.testing.assert_array_equal(grads.grad_input, [1.0, -1.0, 0.0, 1.0, 1.0])


def test_l1_and_smooth_l1_kinks_match_torch_autograd():
    torch, F, _ = _torch()
    x = np.array([0.0, 1.0, -1.0, 0.5, -0.5, 2.0, 3.0])
    y = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 3.0])  # d = 0, +-1, +-0.5, 1, 0
    for beta in (0.0, 0.5, 1.0):
        xt = torch.tensor(x, requires_grad=True)
        yt = torch.tensor(y, requires_grad=True)
        F.smooth_l1_loss(xt, yt, reduction="sum", beta=beta).backward()
        grads = losses.smooth_l1_loss_backward(1.0, x, y, "sum", beta)
        np.testing.assert_array_equal(grads.grad_input, xt.grad.numpy(), err_msg=f"{beta}")
        np.testing.assert_array_equal(grads.grad_target, yt.grad.numpy(), err_msg=f"{beta}")
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.tensor(y, requires_grad=True)
    F.l1_loss(xt, yt, reduction="sum").backward()
    grads = losses.l1_loss_backward(1.0, x, y, "sum")
    np.testing.assert_array_equal(grads.grad_input, xt.grad.numpy())
    np.testing.assert_array_equal(grads.grad_target, yt.grad.numpy())


#: GIoU pairs exactly at the kinks, each with what makes it one
KINK_BOX_PAIRS = {
    "touching along an edge (iw = 0)": ([0, 0, 1, 1], [1, 0, 2, 1]),
    "touching at a corner (iw = ih = 0)": ([0, 0, 1, 1], [1, 1, 2, 2]),
    "touching, offset (iw = 0, shared y1)": ([0, 0, 1, 2], [1, 0, 3, 1]),
    "identical (every corner a tie)": ([0.5, 1, 2, 3], [0.5, 1, 2, 3]),
    "sharing x1 and y2": ([0, 0, 2, 2], [0, 1, 1, 2]),
    "nested, sharing nothing": ([0, 0, 4, 4], [1, 1, 2, 3]),
    "zero-width box inside a box": ([1, 1, 1, 3], [0, 0, 4, 4]),
    "zero-area point inside a box": ([1, 1, 1, 1], [0, 0, 2, 2]),
    "two zero-area boxes at one point": ([1, 1, 1, 1], [1, 1, 1, 1]),
    "zero-height box on an edge": ([0, 2, 3, 2], [1, 0, 2, 2]),
    "disjoint": ([0, 0, 1, 1], [3, 2, 4, 5]),
    "inverted box": ([2, 0, 1, 1], [0, 0, 2, 2]),
}


@pytest.mark.parametrize("eps", [1e-7, 0.25])
@pytest.mark.parametrize("case", list(KINK_BOX_PAIRS))
def test_giou_loss_at_the_kinks_matches_torch_autograd(case, eps):
    """The one-sided choices of eqs. (23) and (31) (mask: zero from the disjoint side; ties:
    half to each box) are torch autograd's on torchvision's code, value for value."""
    torch, _, tvops = _torch()
    box1, box2 = (np.array([b], dtype=np.float64) for b in KINK_BOX_PAIRS[case])
    t1 = torch.tensor(box1, requires_grad=True)
    t2 = torch.tensor(box2, requires_grad=True)
    expected = tvops.generalized_box_iou_loss(t1, t2, eps=eps)
    gy = np.array([0.7])
    expected.backward(torch.tensor(gy))
    _close(losses.generalized_box_iou_loss(box1, box2, eps=eps), expected.detach().numpy(),
           label=case)
    grads = losses.generalized_box_iou_loss_backward(gy, box1, box2, eps=eps)
    _close(grads.grad_boxes1, t1.grad.numpy(), label=f"{case}: boxes1")
    _close(grads.grad_boxes2, t2.grad.numpy(), label=f"{case}: boxes2")


def test_giou_loss_by_hand():
    """Hand-computed values: identical unit boxes give 1 - 1 / (1 + eps); side-by-side unit
    boxes touching along an edge give 1 (I = 0, U = C = 2), and their gradient has no
    intersection term: for boxes1's right edge only the area, dA1/dx2 = 1, through
    dl/dU = -1/(C + eps), and the enclosing box, which does not move (x2g is the max)."""
    eps = 1e-7
    loss = losses.generalized_box_iou_loss([[0.0, 0, 1, 1], [0, 0, 1, 1]],
                                           [[0.0, 0, 1, 1], [1, 0, 2, 1]], eps=eps)
    _close(loss, [1 - 1 / (1 + eps), 1.0])
    grads = losses.generalized_box_iou_loss_backward(np.array([0.0, 1.0]),
                                                     [[0.0, 0, 1, 1], [0, 0, 1, 1]],
                                                     [[0.0, 0, 1, 1], [1, 0, 2, 1]], eps=eps)
    _close(grads.grad_boxes1[1, 2], -1 / (2 + eps))


def test_giou_identical_boxes_have_a_nearly_zero_gradient():
    """Identical boxes are the minimum: with the half-and-half tie rule (eq. 31) the gradient
    is O(eps) (hand derivation: g h eps / (2 (A + eps)^2) per left edge)."""
    box = np.array([[0.5, 1.0, 2.5, 4.0]])  # w = 2, h = 3, A = 6
    eps = 1e-7
    grads = losses.generalized_box_iou_loss_backward(np.ones(1), box, box, eps=eps)
    h, w, area = 3.0, 2.0, 6.0
    expected = np.array([[h, w, -h, -w]]) * eps / (2 * (area + eps) ** 2)
    _close(grads.grad_boxes1, expected, rtol=1e-6, atol=0)
    _close(grads.grad_boxes2, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0, 3.5])
def test_saturated_focal_loss_matches_torch_where_torch_is_finite(gamma):
    """|x| = 1e4 on hard targets: the sigmoid saturates, m = 1 - p_t = 0 (eq. 5); no overflow,
    and torch's finite gradients."""
    torch, _, tvops = _torch()
    x = np.array([1e4, -1e4, 1e4, -1e4, 800.0, -800.0])
    t = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    xt, tt = torch.tensor(x, requires_grad=True), torch.tensor(t, requires_grad=True)
    expected = tvops.sigmoid_focal_loss(xt, tt, gamma=gamma, reduction="sum")
    expected.backward()
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # exp(-1e4) underflows
        loss = losses.sigmoid_focal_loss(x, t, gamma=gamma, reduction="sum")
        grads = losses.sigmoid_focal_loss_backward(1.0, x, t, gamma=gamma, reduction="sum")
    _close(loss, expected.detach().numpy())
    _close(grads.grad_inputs, xt.grad.numpy())
    _close(grads.grad_targets, tt.grad.numpy())


def test_saturated_focal_loss_with_gamma_below_one_returns_the_limit_not_nan():
    """The one deliberate difference from torch (eq. 9): at m = 0 with 0 < gamma < 1 torch's
    gradient is nan (0 * inf); ours is the limit, 0. Hand-derived: for t = 1 and x -> inf the
    gradients w.r.t. x and t both go to 0."""
    x = np.array([1e4, -1e4])
    t = np.array([1.0, 0.0])
    grads = losses.sigmoid_focal_loss_backward(np.ones(2), x, t, gamma=0.5)
    np.testing.assert_array_equal(grads.grad_inputs, [0.0, 0.0])
    np.testing.assert_array_equal(grads.grad_targets, [0.0, 0.0])
    try:
        torch, _, tvops = _torch()
    except pytest.skip.Exception:
        return
    xt, tt = torch.tensor(x, requires_grad=True), torch.tensor(t, requires_grad=True)
    tvops.sigmoid_focal_loss(xt, tt, gamma=0.5, reduction="sum").backward()
    assert np.isnan(xt.grad.numpy()).all(), "torch changed: update the NOTE in losses.py"


# ============================================================================ (c) oracle

@pytest.mark.parametrize("gamma", [0.5, 2.0])
@pytest.mark.parametrize("alpha", [0.25, -1.0])
def test_focal_loss_at_large_logits_matches_400_digit_arithmetic(alpha, gamma):
    """An oracle more accurate than torch where the sigmoid nearly saturates: torchvision's
    formula evaluated with mpmath at 400 significant digits (so that 1 - p ~ e^-700 survives
    the subtraction), derivatives by mpmath's high-precision numerical differentiation. Ours
    must agree to float64 rounding, showing that eqs. (3)-(11) lose no digits (torch's
    ``1 - p_t`` loses all of them by |x| ~ 37)."""
    mpmath = pytest.importorskip("mpmath")

    def focal(x, t):  # torchvision's sigmoid_focal_loss, term by term
        p = 1 / (1 + mpmath.exp(-x))
        ce = -(t * mpmath.log(p) + (1 - t) * mpmath.log(1 - p))
        p_t = p * t + (1 - p) * (1 - t)
        a_t = alpha * t + (1 - alpha) * (1 - t) if alpha >= 0 else 1
        return a_t * ce * (1 - p_t) ** gamma

    xs = [30.0, -30.0, 45.0, -45.0, 200.0, -200.0, 700.0, 3.0]
    ts = [1.0, 0.0, 0.0, 1.0, 0.3, 1.0, 1.0, 0.8]
    for x, t in zip(xs, ts):
        with mpmath.workdps(400):  # local: mpmath's global precision is left alone
            mx, mt = mpmath.mpf(x), mpmath.mpf(t)
            exact = [focal(mx, mt), mpmath.diff(focal, (mx, mt), (1, 0)),
                     mpmath.diff(focal, (mx, mt), (0, 1))]
        loss = losses.sigmoid_focal_loss(np.array([x]), np.array([t]), alpha, gamma)
        grads = losses.sigmoid_focal_loss_backward(np.ones(1), np.array([x]), np.array([t]),
                                                   alpha, gamma)
        for ours, value in zip((loss[0], grads.grad_inputs[0], grads.grad_targets[0]), exact):
            assert abs(ours - float(value)) <= 1e-12 * abs(float(value)) + 1e-300, (x, t)


def _focal_torch(x, t, alpha, gamma, reduction, gy):
    torch, _, tvops = _torch()
    xt, tt = torch.tensor(x, requires_grad=True), torch.tensor(t, requires_grad=True)
    out = tvops.sigmoid_focal_loss(xt, tt, alpha=alpha, gamma=gamma, reduction=reduction)
    out.backward(torch.tensor(gy))
    return out.detach().numpy(), xt.grad.numpy(), tt.grad.numpy()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (-1.0, 2.0), (0.6, 0.0), (0.0, 1.0),
                                          (1.0, 3.5), (0.25, 0.5)])
def test_focal_loss_matches_torchvision(dtype, reduction, alpha, gamma):
    """Large logits (|x| up to 1e4), hard and soft targets, both dtypes. For gamma < 1 the
    logits stay where torch's ``1 - p_t``, a difference, is still accurate (|x| <= 15 in
    float64, 5 in float32): beyond, torch's gradient loses digits and then becomes nan at
    saturation, while ours keeps them (see the mpmath test below)."""
    rng = np.random.default_rng(3)
    if gamma >= 1:
        big = [1e4, -1e4, 800.0, -800.0, 50.0, -50.0]
    else:
        big = [15.0, -15.0, 10.0, -10.0] if dtype == np.float64 else [5.0, -5.0, 4.0, -4.0]
    x = np.concatenate([rng.normal(scale=3.0, size=20), big, [0.0]])
    t = np.concatenate([rng.uniform(size=10), rng.integers(0, 2, size=10)])
    t = np.concatenate([t, rng.integers(0, 2, size=len(big)), [1.0]])
    x, t = x.reshape(-1, 1).astype(dtype), t.reshape(-1, 1).astype(dtype)
    gy = (rng.normal(size=x.shape) if reduction == "none" else np.array(0.8)).astype(dtype)
    loss, grad_x, grad_t = _focal_torch(x, t, alpha, gamma, reduction, gy)
    tol = _tolerances(dtype)
    ours = losses.sigmoid_focal_loss(x, t, alpha, gamma, reduction)
    assert ours.dtype == dtype
    _close(ours, loss, **tol, label="loss")
    grads = losses.sigmoid_focal_loss_backward(gy, x, t, alpha, gamma, reduction)
    assert grads.grad_inputs.dtype == grads.grad_targets.dtype == dtype
    # torch's gradient w.r.t. t of large logits is -x * a_t: as large as |x|, so relative
    _close(grads.grad_inputs, grad_x, **tol, label="grad_inputs")
    _close(grads.grad_targets, grad_t, rtol=tol["rtol"], atol=tol["atol"] * 100,
           label="grad_targets")


@pytest.mark.parametrize("gamma", [1.0, 2.0, 3.0])
def test_focal_loss_with_targets_outside_zero_one_matches_torchvision(gamma):
    """torchvision does not check the targets' range, so neither do we: for targets outside
    [0, 1], m = 1 - p_t may be negative (eq. 5), which integer gammas allow."""
    x = np.array([0.3, -1.2, 2.0, 0.0, 4.0])
    t = np.array([1.5, -0.5, 2.0, 3.0, -1.0])
    loss, grad_x, grad_t = _focal_torch(x, t, 0.25, gamma, "none", np.ones(5))
    _close(losses.sigmoid_focal_loss(x, t, 0.25, gamma), loss)
    grads = losses.sigmoid_focal_loss_backward(np.ones(5), x, t, 0.25, gamma)
    _close(grads.grad_inputs, grad_x)
    _close(grads.grad_targets, grad_t)


@given(case=focal_cases(), reduction=st.sampled_from(REDUCTIONS))
def test_focal_loss_matches_torchvision_on_drawn_cases(case, reduction):
    rng = np.random.default_rng(0)
    gy = rng.normal(size=case.inputs.shape) if reduction == "none" else np.array(1.3)
    loss, grad_x, grad_t = _focal_torch(case.inputs, case.targets, case.alpha, case.gamma,
                                        reduction, gy)
    _close(losses.sigmoid_focal_loss(case.inputs, case.targets, case.alpha, case.gamma,
                                     reduction), loss)
    grads = losses.sigmoid_focal_loss_backward(gy, case.inputs, case.targets, case.alpha,
                                               case.gamma, reduction)
    _close(grads.grad_inputs, grad_x)
    _close(grads.grad_targets, grad_t)


def _cross_entropy_torch(z, y, weight, ignore_index, reduction, smoothing, gy):
    torch, F, _ = _torch()
    zt = torch.tensor(z, requires_grad=True)
    out = F.cross_entropy(zt, torch.tensor(y, dtype=torch.int64),
                          weight=None if weight is None else torch.tensor(weight),
                          ignore_index=ignore_index, reduction=reduction,
                          label_smoothing=smoothing)
    out.backward(torch.tensor(gy))
    return out.detach().numpy(), zt.grad.numpy()


CE_SETTINGS = [  # (weight?, ignore_index, label_smoothing)
    (False, -100, 0.0), (True, -100, 0.0), (False, -100, 0.2), (True, -100, 0.3),
    (True, 2, 0.0), (False, 0, 0.1), (True, 4, 1.0),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted, ignore_index, smoothing", CE_SETTINGS)
@pytest.mark.parametrize("shape", [(6, 5), (3, 5, 2, 3), (5,)])
def test_cross_entropy_matches_torch(dtype, reduction, weighted, ignore_index, smoothing,
                                     shape):
    """Class weights (the weighted mean divides by the weights' sum, eq. 14), ignore_index
    (default and inside [0, C)), label smoothing, spatial dims, unbatched input, logits of
    +-1e4."""
    rng = np.random.default_rng(7)
    z = rng.normal(scale=2.0, size=shape)
    z.reshape(-1)[:3] = [1e4, -1e4, 5e3]
    c = shape[0] if len(shape) == 1 else shape[1]
    target_shape = () if len(shape) == 1 else shape[:1] + shape[2:]
    y = rng.integers(0, c, size=target_shape)
    if target_shape and ignore_index == -100:
        y.reshape(-1)[1] = -100
    weight = rng.uniform(0.2, 2.0, size=c).astype(dtype) if weighted else None
    z = z.astype(dtype)
    gy = (rng.normal(size=target_shape) if reduction == "none" else np.array(0.6)).astype(dtype)
    loss, grad = _cross_entropy_torch(z, y, weight, ignore_index, reduction, smoothing, gy)
    tol = _tolerances(dtype)
    tol["atol"] *= 1e4  # the logits of 1e4 make terms of that size, which cancel
    ours = losses.cross_entropy(z, y, weight, ignore_index, reduction, smoothing)
    assert ours.dtype == dtype
    _close(ours, loss, **tol, label="loss")
    grads = losses.cross_entropy_backward(gy, z, y, weight, ignore_index, reduction, smoothing)
    assert grads.grad_input.dtype == dtype
    _close(grads.grad_input, grad, **_tolerances(dtype), label="grad_input")


def test_cross_entropy_weighted_mean_by_hand():
    """All logits 0: -log p = log 2 for C = 2. Weights (1, 3), targets (0, 1, ignored): the
    per-target losses are log 2 and 3 log 2, and the weighted mean divides their sum by
    1 + 3 (eq. 14): log 2. Its gradient row for target 0 is g (p - onehot) w_0 / W =
    (-1/2, 1/2) / 4."""
    z = np.zeros((3, 2))
    y = np.array([0, 1, -100])
    weight = np.array([1.0, 3.0])
    _close(losses.cross_entropy(z, y, weight), math.log(2))
    _close(losses.cross_entropy(z, y, weight, reduction="none"),
           [math.log(2), 3 * math.log(2), 0.0])
    grads = losses.cross_entropy_backward(1.0, z, y, weight)
    _close(grads.grad_input, [[-0.125, 0.125], [0.375, -0.375], [0.0, 0.0]])


def test_cross_entropy_empty_and_all_ignored_match_torch():
    """Nothing to average: the mean is nan (0 / 0), the sum 0, as torch."""
    for z, y in ((np.zeros((0, 3)), np.zeros(0, dtype=np.int64)),
                 (np.zeros((0, 3, 2)), np.zeros((0, 2), dtype=np.int64)),
                 (np.ones((2, 3)), np.full(2, -100))):
        for reduction in REDUCTIONS:
            ours = losses.cross_entropy(z, y, reduction=reduction)
            if reduction == "mean":
                assert np.isnan(ours)
            try:
                gy = np.ones(y.shape) if reduction == "none" else np.array(1.0)
                loss, grad = _cross_entropy_torch(z, y, None, -100, reduction, 0.0, gy)
            except pytest.skip.Exception:
                continue
            _close(ours, loss, label=f"{z.shape} {reduction}")
            grads = losses.cross_entropy_backward(gy, z, y, reduction=reduction)
            _close(grads.grad_input, grad, label=f"{z.shape} {reduction}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("beta", [None, 0.0, 0.5, 1.0, 3.0])  # None: l1_loss
def test_l1_and_smooth_l1_match_torch(dtype, reduction, beta):
    torch, F, _ = _torch()
    rng = np.random.default_rng(11)
    x = rng.normal(scale=2.0, size=(4, 5))
    y = rng.normal(scale=2.0, size=(4, 5))
    y[0, :3] = x[0, :3]  # d = 0
    if beta:
        y[1, :2] = x[1, :2] + np.array([beta, -beta])
    x, y = x.astype(dtype), y.astype(dtype)
    gy = (rng.normal(size=x.shape) if reduction == "none" else np.array(1.7)).astype(dtype)
    xt, yt = torch.tensor(x, requires_grad=True), torch.tensor(y, requires_grad=True)
    if beta is None:
        out = F.l1_loss(xt, yt, reduction=reduction)
        ours = losses.l1_loss(x, y, reduction)
        grads = losses.l1_loss_backward(gy, x, y, reduction)
    else:
        out = F.smooth_l1_loss(xt, yt, reduction=reduction, beta=beta)
        ours = losses.smooth_l1_loss(x, y, reduction, beta)
        grads = losses.smooth_l1_loss_backward(gy, x, y, reduction, beta)
    out.backward(torch.tensor(gy))
    tol = _tolerances(dtype)
    assert ours.dtype == grads.grad_input.dtype == grads.grad_target.dtype == dtype
    _close(ours, out.detach().numpy(), **tol)
    _close(grads.grad_input, xt.grad.numpy(), **tol)
    _close(grads.grad_target, yt.grad.numpy(), **tol)


def _proper_boxes(rng, n):
    corners = rng.uniform(0, 10, size=(n, 2))
    return np.concatenate([corners, corners + rng.uniform(0.5, 5, size=(n, 2))], axis=1)


def _adversarial_box_pairs(rng):
    """Random proper pairs followed by every kink case of KINK_BOX_PAIRS."""
    boxes1, boxes2 = _proper_boxes(rng, 8), _proper_boxes(rng, 8)
    kinks = np.array(list(KINK_BOX_PAIRS.values()), dtype=np.float64)  # (K, 2, 4)
    return (np.concatenate([boxes1, kinks[:, 0]]), np.concatenate([boxes2, kinks[:, 1]]))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("eps", [1e-7, 1e-3])
def test_giou_loss_matches_torchvision(dtype, reduction, eps):
    """Random pairs plus zero-area, identical, touching, disjoint and inverted ones."""
    torch, _, tvops = _torch()
    rng = np.random.default_rng(5)
    boxes1, boxes2 = (b.astype(dtype) for b in _adversarial_box_pairs(rng))
    gy = (rng.normal(size=len(boxes1)) if reduction == "none" else np.array(0.9)).astype(dtype)
    t1, t2 = torch.tensor(boxes1, requires_grad=True), torch.tensor(boxes2, requires_grad=True)
    out = tvops.generalized_box_iou_loss(t1, t2, reduction=reduction, eps=eps)
    out.backward(torch.tensor(gy))
    ours = losses.generalized_box_iou_loss(boxes1, boxes2, reduction, eps)
    grads = losses.generalized_box_iou_loss_backward(gy, boxes1, boxes2, reduction, eps)
    assert ours.dtype == grads.grad_boxes1.dtype == grads.grad_boxes2.dtype == dtype
    tol = _tolerances(dtype)
    _close(ours, out.detach().numpy(), **tol)
    # the two zero-area boxes at one point have gradients of size 1 / eps
    scale = 1.0 / eps if dtype == np.float64 else 1.0
    _close(grads.grad_boxes1, t1.grad.numpy(), rtol=tol["rtol"], atol=tol["atol"] * scale)
    _close(grads.grad_boxes2, t2.grad.numpy(), rtol=tol["rtol"], atol=tol["atol"] * scale)


def test_giou_loss_of_single_boxes_matches_torchvision():
    """(4,) boxes, as torchvision accepts: a 0-d loss per pair."""
    torch, _, tvops = _torch()
    b1, b2 = np.array([0.0, 0.0, 2.0, 3.0]), np.array([1.0, -1.0, 4.0, 2.0])
    t1, t2 = torch.tensor(b1, requires_grad=True), torch.tensor(b2, requires_grad=True)
    out = tvops.generalized_box_iou_loss(t1, t2)
    out.backward()
    assert losses.generalized_box_iou_loss(b1, b2).shape == ()
    _close(losses.generalized_box_iou_loss(b1, b2), out.detach().numpy())
    grads = losses.generalized_box_iou_loss_backward(1.0, b1, b2)
    _close(grads.grad_boxes1, t1.grad.numpy())
    _close(grads.grad_boxes2, t2.grad.numpy())


def test_empty_inputs_reduce_as_torch():
    """The mean of nothing is nan for focal, L1 and smooth L1 (torch's mean), but 0 for the
    GIoU loss (torchvision returns 0 * sum); sums are 0; backward gives empty gradients."""
    empty = np.zeros((0, 3))
    boxes = np.zeros((0, 4))
    for reduction, expected in (("mean", np.nan), ("sum", 0.0)):
        for value in (losses.sigmoid_focal_loss(empty, empty, reduction=reduction),
                      losses.l1_loss(empty, empty, reduction),
                      losses.smooth_l1_loss(empty, empty, reduction)):
            assert value.shape == () and np.array_equal(value, expected, equal_nan=True)
        value = losses.generalized_box_iou_loss(boxes, boxes, reduction)
        assert value.shape == () and value == 0.0
        for grads, shape in (
                (losses.sigmoid_focal_loss_backward(1.0, empty, empty, reduction=reduction),
                 empty.shape),
                (losses.l1_loss_backward(1.0, empty, empty, reduction), empty.shape),
                (losses.smooth_l1_loss_backward(1.0, empty, empty, reduction), empty.shape),
                (losses.generalized_box_iou_loss_backward(1.0, boxes, boxes, reduction),
                 boxes.shape)):
            assert [g.shape for g in grads] == [shape, shape]
    assert losses.l1_loss(empty, empty, "none").shape == (0, 3)
    assert losses.generalized_box_iou_loss(boxes, boxes).shape == (0,)
    torch, F, tvops = _torch()
    te, tb = torch.zeros(0, 3), torch.zeros(0, 4)
    for reduction in ("mean", "sum"):
        for ours, theirs in (
                (losses.sigmoid_focal_loss(empty, empty, reduction=reduction),
                 tvops.sigmoid_focal_loss(te, te, reduction=reduction)),
                (losses.l1_loss(empty, empty, reduction), F.l1_loss(te, te, reduction=reduction)),
                (losses.smooth_l1_loss(empty, empty, reduction),
                 F.smooth_l1_loss(te, te, reduction=reduction)),
                (losses.generalized_box_iou_loss(boxes, boxes, reduction),
                 tvops.generalized_box_iou_loss(tb, tb, reduction=reduction))):
            _close(ours, theirs.numpy(), label=reduction)


# ----------------------------------------------------------------------------- pairwise GIoU

@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64])
def test_pairwise_giou_matches_torchvision(dtype):
    """Random and degenerate boxes (zero-area, touching, identical, a shared point: nan where
    the union or the enclosing area is 0, as torchvision); integer boxes become float64."""
    torch, _, tvops = _torch()
    rng = np.random.default_rng(2)
    boxes1 = np.round(_proper_boxes(rng, 7))
    boxes2 = np.round(_proper_boxes(rng, 5))
    boxes1[0] = [1, 1, 1, 1]
    boxes2[0] = [1, 1, 1, 1]  # with boxes1[0]: U = C = 0, nan
    boxes1[1] = boxes2[1]
    boxes1[2] = [2, 2, 2, 6]  # zero width
    boxes2[2] = [boxes1[3, 2], boxes1[3, 1], boxes1[3, 2] + 2, boxes1[3, 3]]  # touching
    boxes1, boxes2 = boxes1.astype(dtype), boxes2.astype(dtype)
    expected = tvops.generalized_box_iou(torch.tensor(boxes1), torch.tensor(boxes2)).numpy()
    ours = generalized_box_iou(boxes1, boxes2)
    assert ours.shape == (7, 5)
    assert ours.dtype == (np.float32 if dtype == np.float32 else np.float64)
    assert np.isnan(ours[0, 0])
    _close(ours, expected, **_tolerances(np.float32 if dtype != np.float64 else np.float64))


@given(n=st.integers(0, 5), m=st.integers(0, 5), seed=st.integers(0, 2**16))
def test_pairwise_giou_matches_torchvision_on_drawn_boxes(n, m, seed):
    torch, _, tvops = _torch()
    rng = np.random.default_rng(seed)
    boxes1, boxes2 = _proper_boxes(rng, n), _proper_boxes(rng, m)
    expected = tvops.generalized_box_iou(torch.tensor(boxes1), torch.tensor(boxes2)).numpy()
    _close(generalized_box_iou(boxes1, boxes2), expected)


def test_pairwise_giou_by_hand_and_matches_the_loss():
    """Unit boxes side by side at distance 1: I = 0, U = 2, C = 3: GIoU = -1/3. And the loss
    on matched pairs is 1 - GIoU (eq. 34 vs eq. 27) up to eps."""
    a = np.array([[0.0, 0.0, 1.0, 1.0]])
    b = np.array([[2.0, 0.0, 3.0, 1.0]])
    _close(generalized_box_iou(a, b), [[-1 / 3]])
    rng = np.random.default_rng(4)
    boxes1, boxes2 = _proper_boxes(rng, 6), _proper_boxes(rng, 6)
    pairwise = generalized_box_iou(boxes1, boxes2)
    _close(1 - np.diag(pairwise), losses.generalized_box_iou_loss(boxes1, boxes2, eps=0.0))


# ============================================================================ (d) bad input

X = np.zeros((2, 3))
Z = np.zeros((2, 3))
Y = np.zeros(2, dtype=np.int64)
B = np.array([[0.0, 0.0, 1.0, 1.0]])

BAD_INPUT = {  # name: (call, error type, the argument the message must name)
    "focal: integer inputs": (lambda: losses.sigmoid_focal_loss(X.astype(int), X),
                              TypeError, "inputs"),
    "focal: integer targets": (lambda: losses.sigmoid_focal_loss(X, X.astype(int)),
                               TypeError, "targets"),
    "focal: targets of another shape": (lambda: losses.sigmoid_focal_loss(X, X[:1]),
                                        ValueError, "targets"),
    "focal: alpha outside [0, 1] and not -1": (
        lambda: losses.sigmoid_focal_loss(X, X, alpha=-0.5), ValueError, "alpha"),
    "focal: alpha not a number": (lambda: losses.sigmoid_focal_loss(X, X, alpha="0.25"),
                                  TypeError, "alpha"),
    "focal: negative gamma": (lambda: losses.sigmoid_focal_loss(X, X, gamma=-1.0),
                              ValueError, "gamma"),
    "focal: nan gamma": (lambda: losses.sigmoid_focal_loss(X, X, gamma=float("nan")),
                         ValueError, "gamma"),
    "focal: unknown reduction": (lambda: losses.sigmoid_focal_loss(X, X, reduction="avg"),
                                 ValueError, "reduction"),
    "backward: grad of the wrong shape": (
        lambda: losses.sigmoid_focal_loss_backward(np.ones(3), X, X), ValueError, "grad"),
    "backward: array grad for a reduced loss": (
        lambda: losses.l1_loss_backward(np.ones((2, 3)), X, X, "mean"), ValueError, "grad"),
    "backward: integer grad array": (
        lambda: losses.l1_loss_backward(np.ones((2, 3), dtype=int), X, X, "none"),
        TypeError, "grad"),
    "backward: bool grad": (lambda: losses.l1_loss_backward(True, X, X), TypeError, "grad"),
    "backward: complex grad": (lambda: losses.l1_loss_backward(1j, X, X), TypeError, "grad"),
    "ce: float (probability) target": (lambda: losses.cross_entropy(Z, np.zeros((2, 3))),
                                       TypeError, "target"),
    "ce: bool target": (lambda: losses.cross_entropy(Z, np.zeros(2, dtype=bool)),
                        TypeError, "target"),
    "ce: target of the wrong shape": (lambda: losses.cross_entropy(Z, np.zeros(3, dtype=int)),
                                      ValueError, "target"),
    "ce: target out of range": (lambda: losses.cross_entropy(Z, np.array([0, 3])),
                                ValueError, "target"),
    "ce: negative target that is not ignore_index": (
        lambda: losses.cross_entropy(Z, np.array([0, -1])), ValueError, "target"),
    "ce: integer input": (lambda: losses.cross_entropy(Z.astype(int), Y), TypeError, "input"),
    "ce: 0-d input": (lambda: losses.cross_entropy(np.float64(1.0), Y), ValueError, "input"),
    "ce: no classes": (lambda: losses.cross_entropy(np.zeros((2, 0)), Y), ValueError, "input"),
    "ce: weight of the wrong length": (lambda: losses.cross_entropy(Z, Y, weight=np.ones(2)),
                                       ValueError, "weight"),
    "ce: integer weight": (lambda: losses.cross_entropy(Z, Y, weight=np.ones(3, dtype=int)),
                           TypeError, "weight"),
    "ce: float ignore_index": (lambda: losses.cross_entropy(Z, Y, ignore_index=-100.0),
                               TypeError, "ignore_index"),
    "ce: label_smoothing above 1": (lambda: losses.cross_entropy(Z, Y, label_smoothing=1.5),
                                    ValueError, "label_smoothing"),
    "ce: unknown reduction": (lambda: losses.cross_entropy(Z, Y, reduction="batchmean"),
                              ValueError, "reduction"),
    "l1: integer input": (lambda: losses.l1_loss(X.astype(int), X), TypeError, "input"),
    "l1: integer target": (lambda: losses.l1_loss(X, X.astype(np.int32)), TypeError, "target"),
    "l1: target of another shape (no broadcasting)": (lambda: losses.l1_loss(X, X[0]),
                                                      ValueError, "target"),
    "smooth l1: negative beta": (lambda: losses.smooth_l1_loss(X, X, beta=-1.0),
                                 ValueError, "beta"),
    "smooth l1: beta not a number": (lambda: losses.smooth_l1_loss(X, X, beta="1"),
                                     TypeError, "beta"),
    "giou: integer boxes": (lambda: losses.generalized_box_iou_loss(B.astype(int), B),
                            TypeError, "boxes1"),
    "giou: three coordinates": (lambda: losses.generalized_box_iou_loss(B[:, :3], B[:, :3]),
                                ValueError, "boxes1"),
    "giou: 0-d boxes": (lambda: losses.generalized_box_iou_loss(np.float64(1), B),
                        ValueError, "boxes1"),
    "giou: unmatched counts": (lambda: losses.generalized_box_iou_loss(B, np.tile(B, (2, 1))),
                               ValueError, "boxes2"),
    "giou: negative eps": (lambda: losses.generalized_box_iou_loss(B, B, eps=-1e-7),
                           ValueError, "eps"),
    "giou: unknown reduction": (lambda: losses.generalized_box_iou_loss(B, B, "max"),
                                ValueError, "reduction"),
    "pairwise giou: not (K, 4)": (lambda: generalized_box_iou(B[0], B), ValueError, "boxes1"),
    "pairwise giou: bool boxes": (lambda: generalized_box_iou(B, B.astype(bool)),
                                  TypeError, "boxes2"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_raises_naming_the_argument(case):
    call, error, name = BAD_INPUT[case]
    with pytest.raises(error, match=rf"\b{name}\b"):
        call()


def test_probability_targets_message_says_they_are_not_supported():
    with pytest.raises(TypeError, match="probabilit.*not supported"):
        losses.cross_entropy(Z, np.full((2, 3), 1 / 3))


def test_backward_functions_validate_like_the_forward():
    """The backward re-validates every argument (the same rules, the same messages)."""
    with pytest.raises(ValueError, match=r"\balpha\b"):
        losses.sigmoid_focal_loss_backward(np.ones((2, 3)), X, X, alpha=2.0)
    with pytest.raises(ValueError, match=r"\btarget\b"):
        losses.cross_entropy_backward(1.0, Z, np.array([0, 7]))
    with pytest.raises(ValueError, match=r"\bbeta\b"):
        losses.smooth_l1_loss_backward(1.0, X, X, beta=-2.0)
    with pytest.raises(ValueError, match=r"\beps\b"):
        losses.generalized_box_iou_loss_backward(1.0, B, B, eps=-1.0)


# ============================================================================ (e) dtypes, layouts

def _every_loss(dtype):
    """(name, forward, backward, array arguments, options) for every loss, float ``dtype``."""
    rng = np.random.default_rng(9)
    x = rng.normal(size=(3, 4)).astype(dtype)
    t = rng.uniform(size=(3, 4)).astype(dtype)
    y = rng.integers(0, 4, size=3)
    boxes1 = _proper_boxes(rng, 3).astype(dtype)
    boxes2 = _proper_boxes(rng, 3).astype(dtype)
    w = rng.uniform(0.5, 1.5, size=4).astype(dtype)
    return [
        ("focal", losses.sigmoid_focal_loss, losses.sigmoid_focal_loss_backward, (x, t), {},
         (3, 4)),
        ("cross_entropy", losses.cross_entropy, losses.cross_entropy_backward, (x, y),
         {"weight": w, "label_smoothing": 0.1}, (3,)),
        ("l1", losses.l1_loss, losses.l1_loss_backward, (x, t), {}, (3, 4)),
        ("smooth_l1", losses.smooth_l1_loss, losses.smooth_l1_loss_backward, (x, t),
         {"beta": 0.5}, (3, 4)),
        ("giou", losses.generalized_box_iou_loss, losses.generalized_box_iou_loss_backward,
         (boxes1, boxes2), {}, (3,)),
    ]


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_float32_in_float32_out(reduction):
    for name, forward, backward, arrays, options, loss_shape in _every_loss(np.float32):
        loss = forward(*arrays, reduction=reduction, **options)
        assert loss.dtype == np.float32, name
        assert loss.shape == (loss_shape if reduction == "none" else ()), name
        grad = np.ones(loss.shape, np.float32)
        for g in ((grad, 1.0) if reduction != "none" else (grad,)):  # a plain number too
            grads = backward(g, *arrays, reduction=reduction, **options)
            for array, gradient in zip(arrays, grads):
                assert gradient.dtype == np.float32 and gradient.shape == array.shape, name


def test_mixed_dtypes_meet_in_float64():
    x32 = np.ones((2, 2), np.float32)
    x64 = np.zeros((2, 2))
    assert losses.l1_loss(x32, x64).dtype == np.float64
    assert losses.sigmoid_focal_loss(x64, x32).dtype == np.float64
    # a float64 upstream gradient array makes float64 gradients of float32 inputs
    assert losses.l1_loss_backward(np.float64(1.0), x32, x32).grad_input.dtype == np.float32
    assert losses.l1_loss_backward(np.array(1.0), x32, x32).grad_input.dtype == np.float64


def test_a_plain_number_grad_equals_a_0d_array():
    for name, forward, backward, arrays, options, _ in _every_loss(np.float64):
        for reduction in ("mean", "sum"):
            a = backward(2.5, *arrays, reduction=reduction, **options)
            b = backward(np.array(2.5), *arrays, reduction=reduction, **options)
            for ga, gb in zip(a, b):
                np.testing.assert_array_equal(ga, gb, err_msg=name)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_awkward_layouts_and_read_only_inputs_give_the_same_results_untouched(reduction):
    """Fortran order, negative and non-unit strides, transposed views and read-only arrays:
    the same results as for plain arrays, bit for bit, and nothing written to them."""
    for name, forward, backward, arrays, options, loss_shape in _every_loss(np.float64):
        grad = np.full(loss_shape if reduction == "none" else (), 0.5)
        expected_loss = forward(*arrays, reduction=reduction, **options)
        expected_grads = backward(grad, *arrays, reduction=reduction, **options)
        views = [awkward_layouts(a) if a.ndim >= 2 and a.dtype.kind == "f" else None
                 for a in arrays]
        for layout in ("fortran", "negative stride", "strided", "transposed", "read-only"):
            args = [a if v is None else v[layout] for a, v in zip(arrays, views)]
            before = [a.copy() for a in args]
            np.testing.assert_array_equal(forward(*args, reduction=reduction, **options),
                                          expected_loss, err_msg=f"{name} {layout}")
            for got, want in zip(backward(grad, *args, reduction=reduction, **options),
                                 expected_grads):
                np.testing.assert_array_equal(got, want, err_msg=f"{name} {layout}")
            for a, b in zip(args, before):
                np.testing.assert_array_equal(a, b, err_msg=f"{name} {layout} modified")


def test_inputs_are_never_modified():
    for name, forward, backward, arrays, options, loss_shape in _every_loss(np.float64):
        before = [a.copy() for a in arrays]
        for reduction in REDUCTIONS:
            loss = forward(*arrays, reduction=reduction, **options)
            grad = np.ones(loss.shape)
            before_grad = grad.copy()
            backward(grad, *arrays, reduction=reduction, **options)
            np.testing.assert_array_equal(grad, before_grad, err_msg=name)
        for a, b in zip(arrays, before):
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_pairwise_giou_dtypes_and_layouts():
    rng = np.random.default_rng(1)
    boxes1, boxes2 = _proper_boxes(rng, 4), _proper_boxes(rng, 3)
    assert generalized_box_iou(boxes1.astype(np.float32),
                               boxes2.astype(np.float32)).dtype == np.float32
    assert generalized_box_iou(boxes1.astype(np.float32), boxes2).dtype == np.float64
    expected = generalized_box_iou(boxes1, boxes2)
    for layout, view in awkward_layouts(boxes1).items():
        before = view.copy()
        np.testing.assert_array_equal(generalized_box_iou(view, boxes2), expected,
                                      err_msg=layout)
        np.testing.assert_array_equal(view, before)
    assert generalized_box_iou(np.zeros((0, 4)), boxes2).shape == (0, 3)
