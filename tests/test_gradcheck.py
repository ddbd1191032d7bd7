"""``scratchvision.gradcheck``: it passes correct forward/backward pairs and catches wrong ones,
in both modes, and reports per input where the worst error is."""

from __future__ import annotations

import numpy as np
import pytest

import scratchvision
from scratchvision import gradcheck
from scratchvision.ops import bilinear

MODES = ("jacobian", "directional")


# f(a, b) = a**2 * b + 3 a (elementwise), with the partial derivatives written by hand
def poly(a, b):
    return a**2 * b + 3.0 * a


def poly_backward(gy, a, b):
    return gy * (2.0 * a * b + 3.0), gy * a**2


# f(A, B) = A @ B: every output depends on many inputs, so the Jacobian is not diagonal
def matmul_backward(gy, a, b):
    return gy @ b.T, a.T @ gy


def _inputs(seed=0, shape=(3, 4)):
    rng = np.random.default_rng(seed)
    return {"a": rng.standard_normal(shape), "b": rng.standard_normal(shape)}


@pytest.mark.parametrize("mode", MODES + ("auto",))
def test_correct_pairs_pass(mode):
    report = gradcheck(poly, poly_backward, _inputs(), mode=mode)
    assert report.ok and bool(report), str(report)
    assert set(report.results) == {"a", "b"}
    report.raise_if_failed()  # does not raise

    rng = np.random.default_rng(1)
    matrices = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal((4, 2))}
    assert gradcheck(np.matmul, matmul_backward, matrices, mode=mode).ok


BUG_AT = (1, 2)


def poly_backward_with_a_bug(gy, a, b):
    """The gradient of ``a`` is wrong in one element only."""
    grad_a, grad_b = poly_backward(gy, a, b)
    grad_a = grad_a.copy()
    grad_a[BUG_AT] += 0.5
    return grad_a, grad_b


@pytest.mark.parametrize("mode", MODES)
def test_a_wrong_backward_fails_and_says_which_input(mode):
    report = gradcheck(poly, poly_backward_with_a_bug, _inputs(), mode=mode)
    assert not report.ok and not bool(report)
    assert not report.results["a"].ok
    assert report.results["b"].ok, "the correct gradient of b is reported as correct"
    assert report.results["a"].max_abs_error > 1e-3
    assert report.results["a"].mode == mode
    with pytest.raises(AssertionError) as excinfo:
        report.raise_if_failed()
    assert "a" in str(excinfo.value)


def test_jacobian_mode_says_where_the_bug_is():
    report = gradcheck(poly, poly_backward_with_a_bug, _inputs(), mode="jacobian")
    worst = report.results["a"].worst_index
    flat = np.ravel_multi_index(BUG_AT, (3, 4))
    assert worst in (BUG_AT, flat) or tuple(np.atleast_1d(worst)) == BUG_AT, worst
    assert np.shape(report.results["a"].analytic) == np.shape(report.results["a"].numeric)


@pytest.mark.parametrize("mode", MODES)
def test_a_gradient_wrong_everywhere_by_a_factor_fails(mode):
    def half_backward(gy, a, b):
        grad_a, grad_b = poly_backward(gy, a, b)
        return 0.5 * grad_a, grad_b

    report = gradcheck(poly, half_backward, _inputs(), mode=mode)
    assert not report.results["a"].ok and report.results["b"].ok


def test_a_transposed_backward_fails():
    """A classic bug: the right shapes, the wrong matrix."""
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((3, 3)), rng.standard_normal((3, 3))

    def wrong(gy, a, b):
        return b @ gy.T, a.T @ gy  # should be gy @ b.T

    for mode in MODES:
        report = gradcheck(np.matmul, wrong, {"a": a, "b": b}, mode=mode)
        assert not report.results["a"].ok, mode


def test_report_is_readable():
    report = gradcheck(poly, poly_backward_with_a_bug, _inputs(), mode="jacobian")
    table = str(report)
    assert "a" in table and "b" in table
    with pytest.raises(AssertionError, match="a"):
        report.raise_if_failed()


def test_wrt_restricts_the_check():
    report = gradcheck(poly, poly_backward_with_a_bug, _inputs(), wrt=["b"])
    assert report.ok and set(report.results) == {"b"}
    report = gradcheck(poly, poly_backward_with_a_bug, _inputs(), wrt=[0])
    assert not report.ok and set(report.results) == {"a"}


def test_none_gradient_for_a_non_differentiable_input():
    def scaled(x, scale):
        return x * 2.0

    def scaled_backward(gy, x, scale):
        return gy * 2.0, None

    report = gradcheck(scaled, scaled_backward, {"x": np.arange(4.0), "scale": np.ones(1)},
                       wrt=["x"])
    assert report.ok and set(report.results) == {"x"}


def test_sequence_inputs_and_a_single_gradient():
    x = np.linspace(-1.0, 1.0, 5)
    report = gradcheck(np.sin, lambda gy, x: gy * np.cos(x), [x])
    assert report.ok and set(report.results) == {"input0"}
    report = gradcheck(np.sin, lambda gy, x: gy * np.sin(x), [x])
    assert not report.ok


def test_auto_mode_picks_by_size():
    small = np.linspace(0.1, 1.0, 10)
    large = np.linspace(0.1, 1.0, 2001)
    square = (lambda x: x**2, lambda gy, x: 2.0 * x * gy)
    assert gradcheck(*square, [small]).results["input0"].mode == "jacobian"
    assert gradcheck(*square, [large]).results["input0"].mode == "directional"


def test_inputs_are_not_modified_and_results_repeat():
    inputs = _inputs()
    copies = {k: v.copy() for k, v in inputs.items()}
    first = gradcheck(poly, poly_backward_with_a_bug, inputs, mode="directional", seed=3)
    for name, value in inputs.items():
        np.testing.assert_array_equal(value, copies[name])
    again = gradcheck(poly, poly_backward_with_a_bug, inputs, mode="directional", seed=3)
    assert again.results["a"].max_abs_error == first.results["a"].max_abs_error


def test_catches_a_wrong_bilinear_backward():
    """The checker is sensitive enough for the op it guards: a sign error in the y-gradient of
    the points is caught."""
    rng = np.random.default_rng(4)
    image = rng.standard_normal((1, 2, 4, 5))
    points = np.array([[[0.3, 1.6], [2.7, 0.4], [3.2, 2.9]]])

    def wrong_backward(gy, image, points):
        grad_image, grad_points = bilinear.sample_backward(gy, image, points, backend="loop")
        return grad_image, grad_points * np.array([1.0, -1.0])

    def forward(image, points):
        return bilinear.sample(image, points, backend="loop")

    report = gradcheck(forward, wrong_backward, {"image": image, "points": points})
    assert report.results["image"].ok and not report.results["points"].ok


def test_exported_from_the_package():
    assert scratchvision.gradcheck is gradcheck
