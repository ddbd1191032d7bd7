"""``bilinear.sample`` / ``sample_backward`` on every tier: finite-difference proofs of both
gradients, tier agreement, the one-sided behaviour at kinks and borders pinned by hand, the
indexing property, non-finite points, and inputs that must "just work".

Expected values are worked out by hand from pixel values (equations of
docs/derivations/bilinear.md), never with the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchvision import gradcheck
from scratchvision.ops import bilinear

from strategies import TINY, float64_arrays, image_shapes, sample_cases
from tiers import (
    DTYPES, assert_close, assert_each_tier, assert_each_tier_equal, assert_tiers_agree,
    available_tiers, awkward_layouts, run_on_every_tier,
)


def _sample_both(image, points, gy, backend):
    """Forward and backward in one call, so one ``run_on_every_tier`` covers both."""
    return (bilinear.sample(image, points, backend=backend),
            *bilinear.sample_backward(gy, image, points, backend=backend))


# ----------------------------------------------------------------------------- gradients

def _gradcheck_sample(case, tier, **options):
    return gradcheck(
        lambda image, points: bilinear.sample(image, points, backend=tier),
        lambda gy, image, points: bilinear.sample_backward(gy, image, points, backend=tier),
        {"image": case.image, "points": case.points},
        **options,
    )


@pytest.mark.parametrize("tier", available_tiers(simulated_cuda=False))
@given(case=sample_cases(TINY))
def test_gradients_match_finite_differences(tier, case):
    """Full Jacobians of image and points by central differences, contracted with a random
    non-uniform upstream gradient, equal sample_backward (points kept off the kinks)."""
    _gradcheck_sample(case, tier, mode="jacobian").raise_if_failed()


@pytest.mark.skipif("cuda" not in available_tiers(), reason="the cuda tier cannot run here")
@settings(max_examples=max(1, settings.default.max_examples // 5))
@given(case=sample_cases(TINY))
def test_cuda_gradients_match_finite_differences(case):
    """The cuda tier, in the simulator when there is no GPU: random directions instead of the
    full Jacobian to keep the number of (slow) launches small."""
    _gradcheck_sample(case, "cuda", mode="directional", n_directions=4).raise_if_failed()


# ----------------------------------------------------------------------------- tier agreement

@given(case=sample_cases(smooth=False), dtype=st.sampled_from(DTYPES))
def test_tiers_agree(case, dtype):
    """Forward and both gradients agree with the loop tier, on points that include kinks,
    borders, outside and non-finite coordinates; float32 in gives float32 out."""
    image, points, gy = (a.astype(dtype) for a in (case.image, case.points, case.gy))
    results = run_on_every_tier(_sample_both, image, points, gy)
    for tier, outputs in results.items():
        assert all(o.dtype == dtype for o in outputs), f"tier {tier!r}: dtype"
    assert_tiers_agree(results)


def test_tiers_agree_when_many_points_share_pixels():
    """400 points per image crowded into [1, 3) x [1, 3): every touched pixel's gradient is a
    sum over a hundred points or more."""
    rng = np.random.default_rng(7)
    image = rng.standard_normal((2, 3, 5, 6))
    points = rng.uniform(1.0, 3.0, size=(2, 400, 2))
    gy = rng.standard_normal((2, 3, 400))
    assert_tiers_agree(run_on_every_tier(_sample_both, image, points, gy))


def test_numba_tier_is_deterministic():
    """Repeated runs are bit-identical (no racy scatter), with many points on the same pixels."""
    rng = np.random.default_rng(3)
    image = rng.standard_normal((2, 3, 8, 9))
    points = rng.uniform(-1.5, 4.0, size=(2, 5000, 2))  # crowded into a few pixels
    gy = rng.standard_normal((2, 3, 5000))
    first = _sample_both(image, points, gy, "numba")
    for _ in range(4):
        again = _sample_both(image, points, gy, "numba")
        for a, b in zip(again, first):
            np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- kinks and borders

# A 3 x 4 image, two channels, with all pixel values different so that any mixed-up tap shows.
IMAGE = np.array([
    [[1.0, 2.0, 4.0, 8.0], [16.0, 32.0, 64.0, 128.0], [256.0, 512.0, 1024.0, 2048.0]],
    [[3.0, 5.0, 7.0, 11.0], [13.0, 17.0, 19.0, 23.0], [29.0, 31.0, 37.0, 41.0]],
])[None]  # (1, 2, 3, 4)
HEIGHT, WIDTH = IMAGE.shape[2:]
GY = np.array([1.5, -0.5])  # upstream gradient per channel, for one point


def pixel(row: int, col: int) -> np.ndarray:
    """(C,) the value of every channel at [row, col]."""
    return IMAGE[0, :, row, col]


ZERO = np.zeros(2)

# For a point exactly on a kink or border: the value per channel, the *right-hand* derivatives
# d/dx and d/dy per channel (the floor convention: the linear piece on [x0, x0 + 1)), and the
# taps {(row, col): weight} that receive gradient. Worked out from eq. (1)-(7) by hand.
KINK_CASES = {
    "integer x inside": dict(
        point=(1.0, 0.25),
        value=0.75 * pixel(0, 1) + 0.25 * pixel(1, 1),
        dx=0.75 * (pixel(0, 2) - pixel(0, 1)) + 0.25 * (pixel(1, 2) - pixel(1, 1)),
        dy=pixel(1, 1) - pixel(0, 1),
        taps={(0, 1): 0.75, (1, 1): 0.25}),
    "integer y inside": dict(
        point=(2.5, 1.0),
        value=0.5 * pixel(1, 2) + 0.5 * pixel(1, 3),
        dx=pixel(1, 3) - pixel(1, 2),
        dy=0.5 * (pixel(2, 2) - pixel(1, 2)) + 0.5 * (pixel(2, 3) - pixel(1, 3)),
        taps={(1, 2): 0.5, (1, 3): 0.5}),
    "pixel centre": dict(
        point=(1.0, 1.0),
        value=pixel(1, 1),
        dx=pixel(1, 2) - pixel(1, 1),
        dy=pixel(2, 1) - pixel(1, 1),
        taps={(1, 1): 1.0}),
    # x = -1: tap x0 = -1 is outside, tap x1 = 0 has weight ax = 0; moving right brings it in.
    "left border x = -1": dict(
        point=(-1.0, 0.25),
        value=ZERO,
        dx=0.75 * pixel(0, 0) + 0.25 * pixel(1, 0),
        dy=ZERO,
        taps={}),
    "top border y = -1": dict(
        point=(2.5, -1.0),
        value=ZERO,
        dx=ZERO,
        dy=0.5 * pixel(0, 2) + 0.5 * pixel(0, 3),
        taps={}),
    # x = W - 1: the right taps (x1 = W) are outside, so moving right fades the value out.
    "right border x = W - 1": dict(
        point=(WIDTH - 1.0, 0.25),
        value=0.75 * pixel(0, 3) + 0.25 * pixel(1, 3),
        dx=-(0.75 * pixel(0, 3) + 0.25 * pixel(1, 3)),
        dy=pixel(1, 3) - pixel(0, 3),
        taps={(0, 3): 0.75, (1, 3): 0.25}),
    "bottom border y = H - 1": dict(
        point=(2.5, HEIGHT - 1.0),
        value=0.5 * pixel(2, 2) + 0.5 * pixel(2, 3),
        dx=pixel(2, 3) - pixel(2, 2),
        dy=-(0.5 * pixel(2, 2) + 0.5 * pixel(2, 3)),
        taps={(2, 2): 0.5, (2, 3): 0.5}),
    "top-left corner (-1, -1)": dict(
        point=(-1.0, -1.0), value=ZERO, dx=ZERO, dy=ZERO, taps={}),
    "bottom-right corner (W - 1, H - 1)": dict(
        point=(WIDTH - 1.0, HEIGHT - 1.0),
        value=pixel(2, 3), dx=-pixel(2, 3), dy=-pixel(2, 3),
        taps={(2, 3): 1.0}),
    # x = W: all four taps are outside; the right-hand derivative is zero.
    "x = W": dict(point=(float(WIDTH), 1.5), value=ZERO, dx=ZERO, dy=ZERO, taps={}),
    "y = H": dict(point=(1.5, float(HEIGHT)), value=ZERO, dx=ZERO, dy=ZERO, taps={}),
    # 2**-20 is exact in float32 too (1e-9 would round back onto -1 there)
    "x just below -1": dict(point=(-1.0 - 2.0**-20, 1.5), value=ZERO, dx=ZERO, dy=ZERO,
                            taps={}),
    "x < -1": dict(point=(-1.5, 1.5), value=ZERO, dx=ZERO, dy=ZERO, taps={}),
    "x > W": dict(point=(WIDTH + 0.5, 1.5), value=ZERO, dx=ZERO, dy=ZERO, taps={}),
    "y < -1": dict(point=(1.5, -3.0), value=ZERO, dx=ZERO, dy=ZERO, taps={}),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(KINK_CASES))
def test_one_sided_behaviour_at_kinks_and_borders(name, dtype):
    case = KINK_CASES[name]
    image = IMAGE.astype(dtype)
    points = np.array([[case["point"]]], dtype=dtype)  # (1, 1, 2)
    gy = GY.astype(dtype).reshape(1, 2, 1)
    grad_image = np.zeros_like(image)
    for (row, col), weight in case["taps"].items():
        grad_image[0, :, row, col] = weight * GY
    expected = (
        case["value"].astype(dtype).reshape(1, 2, 1),
        grad_image,
        np.array([[[GY @ case["dx"], GY @ case["dy"]]]], dtype=dtype),
    )
    results = run_on_every_tier(_sample_both, image, points, gy)
    # these pixel values, weights and sums are exact in float32 as well as float64
    assert_each_tier(results, expected, rtol=1e-12, atol=0.0)


@given(data=st.data(), shape=image_shapes(), dtype=st.sampled_from(DTYPES))
def test_integer_points_index_the_image(data, shape, dtype):
    """At integer points (borders and outside included) sampling is indexing the zero-padded
    image, grad_image is a scatter of gy, and grad_points is the right-hand difference
    ``padded[y, x + 1] - padded[y, x]`` (and the same along y)."""
    n, c, h, w = shape
    p = data.draw(st.integers(1, 12), label="number of points")
    image = data.draw(float64_arrays(shape), label="image").astype(dtype)
    cols = data.draw(st.lists(st.integers(-1, w), min_size=n * p, max_size=n * p), label="x")
    rows = data.draw(st.lists(st.integers(-1, h), min_size=n * p, max_size=n * p), label="y")
    gy = data.draw(float64_arrays((n, c, p)), label="gy").astype(dtype)
    cols, rows = np.reshape(cols, (n, p)), np.reshape(rows, (n, p))
    points = np.stack([cols, rows], axis=-1).astype(dtype)  # (N, P, 2) as (x, y)

    # the image with a frame of zeros, two pixels wide so that [y + 1, x + 1] always exists:
    # padded[y + 2, x + 2] == image[y, x]
    padded = np.zeros((n, c, h + 4, w + 4), dtype=dtype)
    padded[:, :, 2:-2, 2:-2] = image
    expected_out = np.zeros((n, c, p), dtype=dtype)
    expected_grad_image = np.zeros_like(image)
    expected_grad_points = np.zeros((n, p, 2), dtype=dtype)
    for b in range(n):
        for i in range(p):
            x, y = cols[b, i], rows[b, i]
            here = padded[b, :, y + 2, x + 2]
            expected_out[b, :, i] = here
            expected_grad_points[b, i, 0] = gy[b, :, i] @ (padded[b, :, y + 2, x + 3] - here)
            expected_grad_points[b, i, 1] = gy[b, :, i] @ (padded[b, :, y + 3, x + 2] - here)
            if 0 <= x < w and 0 <= y < h:
                expected_grad_image[b, :, y, x] += gy[b, :, i]

    results = run_on_every_tier(_sample_both, image, points, gy)
    for tier, (out, grad_image, grad_points) in results.items():
        np.testing.assert_array_equal(out, expected_out, err_msg=f"tier {tier!r}: value")
        assert_close(grad_image, expected_grad_image, label=f"tier {tier!r}: grad_image")
        assert_close(grad_points, expected_grad_points, label=f"tier {tier!r}: grad_points")


# ----------------------------------------------------------------------------- non-finite points

NON_FINITE = [np.nan, np.inf, -np.inf]
HUGE = [1e30, -1e30, 2.0**63, -(2.0**63), 1e300, -1e300]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", NON_FINITE + HUGE, ids=repr)
def test_non_finite_and_far_away_points_read_zero(bad, dtype):
    """NaN, inf and huge coordinates (beyond int64) read zero, get zero gradient and never
    index memory; the finite point beside them is unaffected."""
    image = IMAGE.astype(dtype)
    # every combination of the bad value in x, in y and in both, then a good point at (1, 1)
    points = np.array([[[bad, 1.0], [1.0, bad], [bad, bad], [1.0, 1.0]]])  # (1, 4, 2)
    gy = np.ones((1, 2, 4), dtype=dtype) * GY.astype(dtype)[None, :, None]
    expected_out = np.zeros((1, 2, 4), dtype=dtype)
    expected_out[0, :, 3] = pixel(1, 1)
    expected_grad_image = np.zeros_like(image)
    expected_grad_image[0, :, 1, 1] = GY
    expected_grad_points = np.zeros((1, 4, 2), dtype=dtype)
    expected_grad_points[0, 3] = GY @ (pixel(1, 2) - pixel(1, 1)), GY @ (pixel(2, 1) - pixel(1, 1))
    with np.errstate(over="ignore"):  # 1e300 overflows to inf in float32: still "far away"
        points = points.astype(dtype)
    results = run_on_every_tier(_sample_both, image, points, gy)
    assert_each_tier(results, (expected_out, expected_grad_image, expected_grad_points),
                     rtol=1e-12, atol=0.0)


# ----------------------------------------------------------------------------- shapes and layouts

@pytest.mark.parametrize("shape", [(0, 2, 3, 4), (2, 0, 3, 4)], ids=["N=0", "C=0"])
def test_empty_batch_and_channels(shape):
    image = np.zeros(shape)
    points = np.full((shape[0], 5, 2), 1.5)
    gy = np.zeros((shape[0], shape[1], 5))
    results = run_on_every_tier(_sample_both, image, points, gy)
    assert_each_tier_equal(results, (np.zeros((shape[0], shape[1], 5)), image,
                                     np.zeros_like(points)))


def test_zero_points():
    image = IMAGE.copy()
    points = np.zeros((1, 0, 2))
    results = run_on_every_tier(_sample_both, image, points, np.zeros((1, 2, 0)))
    assert_each_tier_equal(results, (np.zeros((1, 2, 0)), np.zeros_like(image),
                                     np.zeros((1, 0, 2))))


def test_points_with_several_middle_dimensions():
    """points (N, Ho, Wo, 2) -> out (N, C, Ho, Wo), grad_points (N, Ho, Wo, 2); the same
    numbers as the flat (N, Ho * Wo, 2) layout. points (N, 2) -> out (N, C)."""
    rng = np.random.default_rng(0)
    image = rng.standard_normal((2, 3, 4, 5))
    grid = rng.uniform(-1.5, 5.5, size=(2, 3, 4, 2))  # (N, Ho, Wo, 2)
    gy = rng.standard_normal((2, 3, 3, 4))  # (N, C, Ho, Wo)
    for tier, (out, grad_image, grad_points) in run_on_every_tier(
            _sample_both, image, grid, gy).items():
        flat = _sample_both(image, grid.reshape(2, 12, 2), gy.reshape(2, 3, 12), tier)
        assert out.shape == (2, 3, 3, 4) and grad_points.shape == (2, 3, 4, 2), tier
        np.testing.assert_array_equal(out, flat[0].reshape(2, 3, 3, 4), err_msg=tier)
        np.testing.assert_array_equal(grad_image, flat[1], err_msg=tier)
        np.testing.assert_array_equal(grad_points, flat[2].reshape(2, 3, 4, 2), err_msg=tier)

    one_point = grid[:, 0, 0, :]  # (N, 2): one point per image, no middle dimension
    for tier, (out, grad_image, grad_points) in run_on_every_tier(
            _sample_both, image, one_point, gy[:, :, 0, 0]).items():
        assert out.shape == (2, 3) and grad_points.shape == (2, 2), tier
        np.testing.assert_array_equal(out, bilinear.sample(image, grid, backend=tier)[..., 0, 0])


def test_views_and_read_only_arrays_just_work():
    """Fortran-ordered, negative-stride, strided and read-only image / points / gy give the
    same numbers as their C-contiguous copies, and are not modified."""
    rng = np.random.default_rng(1)
    image = rng.standard_normal((2, 3, 4, 5))
    points = rng.uniform(-1.5, 5.5, size=(2, 6, 2))
    gy = rng.standard_normal((2, 3, 6))
    reference = run_on_every_tier(_sample_both, image, points, gy)
    for which, index in (("image", 0), ("points", 1), ("gy", 2)):
        for layout, view in awkward_layouts((image, points, gy)[index]).items():
            args = [image, points, gy]
            args[index] = view
            before = view.copy()
            results = run_on_every_tier(_sample_both, *args)
            for tier, result in results.items():
                assert_close(result, reference[tier], label=f"{tier} {which} {layout}",
                             rtol=0.0, atol=0.0)
            np.testing.assert_array_equal(view, before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_inputs_are_not_modified(dtype):
    rng = np.random.default_rng(2)
    image = rng.standard_normal((2, 2, 4, 5)).astype(dtype)
    points = rng.uniform(-1.5, 5.5, size=(2, 6, 2)).astype(dtype)
    points[0, 0] = np.nan, 1.0
    gy = rng.standard_normal((2, 2, 6)).astype(dtype)
    copies = [a.copy() for a in (image, points, gy)]
    run_on_every_tier(_sample_both, image, points, gy)
    for original, copy in zip((image, points, gy), copies):
        np.testing.assert_array_equal(original, copy)


def test_mixed_dtypes_promote_to_float64():
    image = IMAGE.astype(np.float32)
    points = np.array([[[0.5, 0.5]]])  # float64
    results = run_on_every_tier(_sample_both, image, points, np.ones((1, 2, 1), np.float32))
    for tier, outputs in results.items():
        assert all(o.dtype == np.float64 for o in outputs), tier
