"""``ms_deform_attn.forward`` / ``backward`` on every tier: finite-difference proofs of the three
gradients, tier agreement, the right-hand derivative at integer pixel coordinates pinned by
hand, the properties that tie it to indexing and to dense attention, non-finite and far-away
locations, empty calls, layouts, purity and determinism.

Equations refer to docs/derivations/ms_deform_attn.md. Expected values are worked out by hand
or with plain NumPy indexing, never with the code under test. Oracle tests against the torch
grid_sample formulation are in test_ms_deform_attn_oracle.py, the bad-input rules in
test_ms_deform_attn_bad_input.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchvision import gradcheck
from scratchvision.ops import ms_deform_attn
from scratchvision.ops.ms_deform_attn import level_start_index_of

from strategies import (
    MSDA_DEFAULT, MSDA_FAR, MSDA_GRAD, MSDA_TINY, MSDACase, float64_arrays,
    ms_deform_attn_cases,
)
from tiers import (
    DTYPES, assert_close, assert_each_tier, assert_each_tier_equal, assert_tiers_agree,
    available_tiers, awkward_layouts, run_on_every_tier,
)


def _forward_backward(case: MSDACase, backend):
    """(out, grad_value, grad_sampling_locations, grad_attention_weights) in one call, so one
    ``run_on_every_tier`` covers both passes."""
    return (ms_deform_attn.forward(*case.args, backend=backend),
            *ms_deform_attn.backward(case.gy, *case.args, backend=backend))


def _assert_same_numbers(actual, expected, tier: str, label: str) -> None:
    """Two ``_forward_backward`` results are bit-identical -- except the cuda tier's
    grad_value, whose atomic scatter adds in thread-timing order (numba_cuda.py's docstring),
    so on a GPU it can differ in the last bits between two runs of the same inputs; it is held
    to the tier tolerance instead."""
    if tier != "cuda":
        assert_close(actual, expected, rtol=0.0, atol=0.0, label=label)
        return
    scattered = 1  # the position of grad_value in _forward_backward's tuple
    assert_close(tuple(a for i, a in enumerate(actual) if i != scattered),
                 tuple(e for i, e in enumerate(expected) if i != scattered),
                 rtol=0.0, atol=0.0, label=label)
    assert_close(actual[scattered], expected[scattered], label=f"{label} grad_value")


def _case(value, spatial_shapes, sampling_locations, attention_weights, gy) -> MSDACase:
    """An MSDACase with the level starts worked out from ``spatial_shapes``."""
    shapes = np.asarray(spatial_shapes, dtype=np.int64)
    return MSDACase(value, shapes, level_start_index_of(shapes), sampling_locations,
                    attention_weights, gy)


def _random_case(rng, levels, n=1, n_queries=3, heads=2, head_dim=3, points=2,
                 low=-0.2, high=1.2) -> MSDACase:
    """Standard-normal value, weights and gy; locations uniform over [low, high)^2."""
    shapes = np.array(levels, dtype=np.int64)
    shape = (n, n_queries, heads, len(levels), points)
    n_positions = int(np.prod(shapes, axis=1).sum())
    return _case(rng.standard_normal((n, n_positions, heads, head_dim)), shapes,
                 rng.uniform(low, high, shape + (2,)), rng.standard_normal(shape),
                 rng.standard_normal((n, n_queries, heads * head_dim)))


def _pixel_centres(rows, cols, height: int, width: int) -> np.ndarray:
    """(..., 2) normalised (u, v) of the centres of pixels [rows, cols]: eq. (2) inverted."""
    return np.stack([(np.asarray(cols) + 0.5) / width, (np.asarray(rows) + 0.5) / height],
                    axis=-1)


# ----------------------------------------------------------------------------- gradients

def _gradcheck(case: MSDACase, tier: str, **options):
    def forward(value, sampling_locations, attention_weights):
        return ms_deform_attn.forward(value, case.spatial_shapes, case.level_start_index,
                                      sampling_locations, attention_weights, backend=tier)

    def backward(gy, value, sampling_locations, attention_weights):
        return ms_deform_attn.backward(gy, value, case.spatial_shapes, case.level_start_index,
                                       sampling_locations, attention_weights, backend=tier)

    return gradcheck(forward, backward, case.arrays, **options)


@pytest.mark.parametrize("tier", available_tiers(simulated_cuda=False))
@given(case=ms_deform_attn_cases(MSDA_GRAD))
def test_gradients_match_finite_differences(tier, case):
    """Full Jacobians of value, sampling_locations and attention_weights by central
    differences, contracted with a random upstream gradient, equal the backward, element by
    element (hypothesis draws N, Lq, M, D, L, P and the level shapes; locations kept off the
    kinks, some of them outside [0, 1])."""
    _gradcheck(case, tier, mode="jacobian").raise_if_failed()


@pytest.mark.skipif("cuda" not in available_tiers(), reason="the cuda tier cannot run here")
@settings(max_examples=max(1, settings.default.max_examples // 5))
@given(case=ms_deform_attn_cases(MSDA_TINY))
def test_cuda_gradients_match_finite_differences(case):
    """The cuda tier, in the simulator when there is no GPU: random directions to keep the
    number of (slow) launches small."""
    _gradcheck(case, "cuda", mode="directional", n_directions=3).raise_if_failed()


# ----------------------------------------------------------------------------- tier agreement

@given(case=ms_deform_attn_cases(MSDA_TINY, smooth=False), dtype=st.sampled_from(DTYPES))
def test_tiers_agree(case, dtype):
    """Forward and the three gradients agree with the loop tier, with locations on kinks and
    borders, far away and non-finite too (cuda included, in the simulator); float32 in gives
    float32 out."""
    results = run_on_every_tier(_forward_backward, case.astype(dtype))
    for tier, outputs in results.items():
        assert all(o.dtype == dtype for o in outputs), f"tier {tier!r}: dtype"
    assert_tiers_agree(results)


@settings(max_examples=max(1, settings.default.max_examples // 2))
@given(case=ms_deform_attn_cases(MSDA_DEFAULT, smooth=False), dtype=st.sampled_from(DTYPES))
def test_tiers_agree_on_larger_cases(case, dtype):
    """The same with up to 7 queries, 3 heads, 3 levels of up to 5 x 5 and 3 points (not in
    the simulator)."""
    assert_tiers_agree(run_on_every_tier(_forward_backward, case.astype(dtype),
                                         simulated_cuda=False))


# ----------------------------------------------------------------------------- kinks

# One 4 x 4 level with D = 2 channels, one head, one query, one point. Pixel values are small
# integers and the point's coordinates, its weight and gy are dyadic, so every expected number
# below is exact in float32 as well as float64.
PIXELS = np.array([
    [[1.0, 2.0, 4.0, 8.0], [16.0, 32.0, 64.0, 128.0], [3.0, 5.0, 7.0, 11.0],
     [13.0, 17.0, 19.0, 23.0]],
    [[2.0, 3.0, 5.0, 7.0], [11.0, 13.0, 17.0, 19.0], [23.0, 29.0, 31.0, 37.0],
     [41.0, 43.0, 47.0, 53.0]],
])  # (D, H, W)
SIDE = 4
ATTN = 0.75
GY = np.array([1.5, -0.5])  # upstream gradient per channel


def pixel(row: int, col: int) -> np.ndarray:
    """(D,) the value of every channel at [row, col]."""
    return PIXELS[:, row, col]


ZERO = np.zeros(2)

# For a point whose pixel coordinates (x, y) sit on a kink or border: the sample per channel,
# its *right-hand* derivatives along x and y per channel (the floor convention, bilinear (1)),
# and the taps {(row, col): bilinear weight} that receive value gradient. Worked out by hand.
KINK_CASES = {
    "integer x inside": dict(
        point=(1.0, 0.5),
        sample=0.5 * pixel(0, 1) + 0.5 * pixel(1, 1),
        dx=0.5 * (pixel(0, 2) - pixel(0, 1)) + 0.5 * (pixel(1, 2) - pixel(1, 1)),
        dy=pixel(1, 1) - pixel(0, 1),
        taps={(0, 1): 0.5, (1, 1): 0.5}),
    "integer y inside": dict(
        point=(2.5, 1.0),
        sample=0.5 * pixel(1, 2) + 0.5 * pixel(1, 3),
        dx=pixel(1, 3) - pixel(1, 2),
        dy=0.5 * (pixel(2, 2) - pixel(1, 2)) + 0.5 * (pixel(2, 3) - pixel(1, 3)),
        taps={(1, 2): 0.5, (1, 3): 0.5}),
    "pixel centre": dict(
        point=(1.0, 2.0),
        sample=pixel(2, 1),
        dx=pixel(2, 2) - pixel(2, 1),
        dy=pixel(3, 1) - pixel(2, 1),
        taps={(2, 1): 1.0}),
    # x = -1: tap x0 = -1 is outside, tap x0 + 1 = 0 has weight 0; moving right brings it in
    "left border x = -1": dict(
        point=(-1.0, 0.5),
        sample=ZERO,
        dx=0.5 * pixel(0, 0) + 0.5 * pixel(1, 0),
        dy=ZERO,
        taps={}),
    # x = W - 1: the right taps are outside, so moving right fades the sample out
    "right border x = W - 1": dict(
        point=(SIDE - 1.0, 0.5),
        sample=0.5 * pixel(0, 3) + 0.5 * pixel(1, 3),
        dx=-(0.5 * pixel(0, 3) + 0.5 * pixel(1, 3)),
        dy=pixel(1, 3) - pixel(0, 3),
        taps={(0, 3): 0.5, (1, 3): 0.5}),
    "bottom-right corner": dict(
        point=(SIDE - 1.0, SIDE - 1.0),
        sample=pixel(3, 3), dx=-pixel(3, 3), dy=-pixel(3, 3),
        taps={(3, 3): 1.0}),
    # x = W: all four taps are outside; the right-hand derivative is zero
    "x = W": dict(point=(float(SIDE), 1.5), sample=ZERO, dx=ZERO, dy=ZERO, taps={}),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(KINK_CASES))
def test_right_hand_derivative_at_integer_pixel_coordinates(name, dtype):
    """At an integer pixel coordinate the location gradient is the right-hand derivative,
    scaled by the level size (eq. 7); the sample, the value gradient (eq. 5) and the weight
    gradient (eq. 4) are the plain bilinear ones."""
    kink = KINK_CASES[name]
    x, y = kink["point"]
    # value (N=1, S=16, M=1, D=2): pixel [row, col] is row row * W + col
    value = PIXELS.reshape(2, SIDE * SIDE).T[None, :, None, :]
    location = np.array([(x + 0.5) / SIDE, (y + 0.5) / SIDE])  # eq. (2) inverted, exact
    case = _case(value, [(SIDE, SIDE)], location.reshape(1, 1, 1, 1, 1, 2),
                 np.full((1, 1, 1, 1, 1), ATTN), GY.reshape(1, 1, 2)).astype(dtype)
    grad_value = np.zeros((1, SIDE * SIDE, 1, 2))
    for (row, col), weight in kink["taps"].items():
        grad_value[0, row * SIDE + col, 0] = weight * ATTN * GY
    expected = (
        (ATTN * kink["sample"]).reshape(1, 1, 2),
        grad_value,
        # eqs. (6)-(7): attn * <gy, d sample / dx> * W_l, the same along y with H_l
        np.array([ATTN * (GY @ kink["dx"]) * SIDE,
                  ATTN * (GY @ kink["dy"]) * SIDE]).reshape(1, 1, 1, 1, 1, 2),
        np.full((1, 1, 1, 1, 1), GY @ kink["sample"]),  # eq. (4)
    )
    results = run_on_every_tier(_forward_backward, case)
    assert_each_tier(results, tuple(e.astype(dtype) for e in expected), rtol=1e-12, atol=0.0)


# ----------------------------------------------------------------------------- properties

@given(data=st.data(), dtype=st.sampled_from(DTYPES))
def test_points_on_pixel_centres_are_a_weighted_gather(data, dtype):
    """One level, every point on a pixel centre ``u = (col + 0.5) / W``: the output is the
    attention-weighted sum of the value rows of those pixels, the value gradient scatters
    ``attn * gy`` onto them and the weight gradient is ``<gy, value row>`` (computed here by
    NumPy indexing)."""
    n = data.draw(st.integers(1, 2), label="N")
    n_queries = data.draw(st.integers(1, 5), label="Lq")
    m = data.draw(st.integers(1, 2), label="M")
    d = data.draw(st.integers(1, 3), label="D")
    p = data.draw(st.integers(1, 3), label="P")
    height = data.draw(st.integers(1, 4), label="H")
    width = data.draw(st.integers(1, 4), label="W")
    shape = (n, n_queries, m, p)
    count = n * n_queries * m * p
    rows = np.array(data.draw(st.lists(st.integers(0, height - 1), min_size=count,
                                       max_size=count), label="rows")).reshape(shape)
    cols = np.array(data.draw(st.lists(st.integers(0, width - 1), min_size=count,
                                       max_size=count), label="cols")).reshape(shape)
    value = data.draw(float64_arrays((n, height * width, m, d)), label="value")
    attn = data.draw(float64_arrays(shape), label="attention_weights")
    gy = data.draw(float64_arrays((n, n_queries, m * d)), label="gy")

    # (N, Lq, M, P) indices into value's (N, S, M) axes
    batch = np.arange(n)[:, None, None, None]
    head = np.arange(m)[None, None, :, None]
    rows_of_value = rows * width + cols
    gathered = value[batch, rows_of_value, head]  # (N, Lq, M, P, D)
    g = gy.reshape(n, n_queries, m, d)  # (N, Lq, M*D) -> (N, Lq, M, D)
    expected_out = np.einsum("nqmp,nqmpd->nqmd", attn, gathered).reshape(n, n_queries, m * d)
    expected_grad_value = np.zeros_like(value)
    # (N, Lq, M, P, 1) * (N, Lq, M, 1, D) scattered onto (N, S, M, D)
    np.add.at(expected_grad_value, (batch, rows_of_value, head),
              attn[..., None] * g[:, :, :, None])
    expected_grad_weights = np.einsum("nqmpd,nqmd->nqmp", gathered, g)

    # one level: (N, Lq, M, P, 2) -> (N, Lq, M, 1, P, 2)
    locations = _pixel_centres(rows, cols, height, width)[:, :, :, None]
    case = _case(value, [(height, width)], locations, attn[:, :, :, None], gy).astype(dtype)
    results = run_on_every_tier(_forward_backward, case)
    for tier, (out, grad_value, _, grad_weights) in results.items():
        # grad_sampling_locations is not compared: pixel centres are kinks
        assert_close((out, grad_value, grad_weights),
                     tuple(e.astype(dtype) for e in (expected_out, expected_grad_value,
                                                     expected_grad_weights[:, :, :, None])),
                     label=f"tier {tier!r}")


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis."""
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("levels", [[(3, 4)], [(3, 4), (2, 2), (1, 3)]],
                         ids=["one level", "three levels"])
def test_points_on_every_pixel_equal_dense_attention(levels, dtype):
    """With a point on every pixel centre of every level and the attention weights
    ``softmax(q . k / sqrt(D))`` over all S positions, deformable attention is dense attention:
    ``out = softmax(Q K^T / sqrt(D)) V`` per head, and the value gradient is ``A^T gy``.

    Levels of different sizes get P = max H_l W_l points; the points beyond a level's pixels
    get weight 0 (and are left out of the weight-gradient comparison)."""
    rng = np.random.default_rng(7)
    n, n_queries, m, d = 2, 3, 2, 3
    sizes = [h * w for h, w in levels]
    n_positions, n_points = sum(sizes), max(sizes)
    value = rng.standard_normal((n, n_positions, m, d))
    query = rng.standard_normal((n, n_queries, m, d))
    key = rng.standard_normal((n, n_positions, m, d))
    gy = rng.standard_normal((n, n_queries, m * d))

    # dense attention, per head: (N, Lq, M, S) weights over the S positions
    attention = _softmax(np.einsum("nqmd,nsmd->nqms", query, key) / np.sqrt(d))
    expected_out = np.einsum("nqms,nsmd->nqmd", attention, value).reshape(n, n_queries, m * d)
    g = gy.reshape(n, n_queries, m, d)  # (N, Lq, M*D) -> (N, Lq, M, D)
    expected_grad_value = np.einsum("nqms,nqmd->nsmd", attention, g)
    expected_grad_weights = np.einsum("nqmd,nsmd->nqms", g, value)  # <gy, V[s]>

    # point p of level l sits on pixel p of that level (row-major), weighted like position s
    locations = np.full((n, n_queries, m, len(levels), n_points, 2), 0.5)
    weights = np.zeros((n, n_queries, m, len(levels), n_points))
    real = np.zeros(weights.shape, dtype=bool)  # the points that sit on a pixel
    start = 0
    for level, (height, width) in enumerate(levels):
        rows, cols = np.divmod(np.arange(height * width), width)
        locations[:, :, :, level, :height * width] = _pixel_centres(rows, cols, height, width)
        weights[:, :, :, level, :height * width] = attention[..., start:start + height * width]
        real[:, :, :, level, :height * width] = True
        start += height * width
    case = _case(value, levels, locations, weights, gy).astype(dtype)
    for tier, (out, grad_value, _, grad_weights) in run_on_every_tier(
            _forward_backward, case).items():
        assert_close((out, grad_value, grad_weights[real]),
                     tuple(e.astype(dtype) for e in (expected_out, expected_grad_value,
                                                     expected_grad_weights.reshape(-1))),
                     label=f"tier {tier!r}")


# ----------------------------------------------------------------------------- far and non-finite

@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_and_far_locations_contribute_nothing(dtype):
    """A point with a NaN, infinite or far-away coordinate (u = 5, -3, +-1e30) reads zero and
    gets zero location and weight gradients (it never indexes memory); the other points are
    unaffected: the result is that of the same call with those points' weights set to 0."""
    rng = np.random.default_rng(5)
    case = _random_case(rng, [(3, 4), (2, 1)], n=1, n_queries=4, heads=2, points=2)
    bad_points = [(0, 0, 0, 0, 0), (1, 1, 1, 1, 1), (2, 0, 1, 0, 1), (3, 1, 0, 1, 0),
                  (0, 1, 1, 1, 0), (1, 0, 0, 0, 1), (2, 1, 0, 1, 1)]  # (q, m, l, p, axis)
    bad = case.sampling_locations.copy()
    switched_off = case.attention_weights.copy()
    for (q, m, level, p, axis), far in zip(bad_points, MSDA_FAR):
        bad[0, q, m, level, p, axis] = far
        switched_off[0, q, m, level, p] = 0.0
    bad_case = MSDACase(case.value, case.spatial_shapes, case.level_start_index, bad,
                        case.attention_weights, case.gy).astype(dtype)
    reference_case = MSDACase(case.value, case.spatial_shapes, case.level_start_index,
                              case.sampling_locations, switched_off, case.gy).astype(dtype)
    for tier in available_tiers():
        out, grad_value, grad_locations, grad_weights = _forward_backward(bad_case, tier)
        expected = _forward_backward(reference_case, tier)
        expected_grad_locations = expected[2].copy()
        expected_grad_weights = expected[3].copy()
        for q, m, level, p, _ in bad_points:
            expected_grad_locations[0, q, m, level, p] = 0.0
            expected_grad_weights[0, q, m, level, p] = 0.0
        assert_close((out, grad_value, grad_locations, grad_weights),
                     (expected[0], expected[1], expected_grad_locations, expected_grad_weights),
                     label=f"tier {tier!r}")


def test_locations_far_outside_read_zero():
    """Every point more than a pixel outside its level: the output and all gradients are
    exactly zero."""
    rng = np.random.default_rng(6)
    case = _random_case(rng, [(3, 4), (1, 2)], n=2, n_queries=3, low=1.8, high=3.0)
    signs = rng.choice([-1.0, 1.0], case.sampling_locations.shape)  # below 0 or above 1
    case = MSDACase(case.value, case.spatial_shapes, case.level_start_index,
                    case.sampling_locations * signs, case.attention_weights, case.gy)
    zeros = (np.zeros_like(case.gy), np.zeros_like(case.value),
             np.zeros_like(case.sampling_locations), np.zeros_like(case.attention_weights))
    assert_each_tier_equal(run_on_every_tier(_forward_backward, case), zeros)


# ----------------------------------------------------------------------------- empty calls

@pytest.mark.parametrize("n, n_queries, n_points", [(0, 3, 2), (2, 0, 2), (2, 3, 0)],
                         ids=["N=0", "Lq=0", "P=0"])
def test_empty_calls_return_zeros(n, n_queries, n_points):
    levels = [(3, 4), (1, 2)]
    m, d = 2, 3
    shape = (n, n_queries, m, len(levels), n_points)
    case = _case(np.ones((n, 14, m, d)), levels, np.full(shape + (2,), 0.5), np.ones(shape),
                 np.ones((n, n_queries, m * d)))
    expected = (np.zeros((n, n_queries, m * d)), np.zeros((n, 14, m, d)),
                np.zeros(shape + (2,)), np.zeros(shape))
    assert_each_tier_equal(run_on_every_tier(_forward_backward, case), expected)


# ----------------------------------------------------------------------------- layouts, purity

def _read_only(array: np.ndarray) -> np.ndarray:
    copy = array.copy()
    copy.flags.writeable = False
    return copy


def test_views_and_read_only_arrays_just_work():
    """Fortran-ordered, negative-stride, strided and transposed value / locations / weights /
    gy / spatial_shapes, a reversed level_start_index, and all six read-only at once, give the
    same numbers as the C-contiguous arrays, and are not modified.

    (Read-only arrays are passed all at once because each combination of read-only arguments
    is a separate compilation of the numba kernels, seconds each on a cold cache.)"""
    case = _random_case(np.random.default_rng(4), [(3, 4), (2, 1), (1, 3)], n=2)
    variants = {"read-only, every array": MSDACase(
        **{field: _read_only(array) for field, array in case.__dict__.items()})}
    for field in ("value", "sampling_locations", "attention_weights", "gy", "spatial_shapes"):
        for layout, view in awkward_layouts(getattr(case, field)).items():
            if layout != "read-only":
                variants[f"{field} {layout}"] = MSDACase(**{**case.__dict__, field: view})
    reversed_starts = np.ascontiguousarray(case.level_start_index[::-1])[::-1]
    variants["level_start_index negative stride"] = MSDACase(
        **{**case.__dict__, "level_start_index": reversed_starts})
    for tier in available_tiers(simulated_cuda=False):
        expected = _forward_backward(case, tier)
        for name, variant in variants.items():
            before = {field: array.copy() for field, array in variant.__dict__.items()}
            _assert_same_numbers(_forward_backward(variant, tier), expected, tier,
                                 label=f"tier {tier!r}, {name}")
            for field, array in variant.__dict__.items():
                np.testing.assert_array_equal(array, before[field], err_msg=f"{name}: {field}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_inputs_are_never_modified(dtype):
    case = _random_case(np.random.default_rng(8), [(3, 4), (2, 1)], n=2).astype(dtype)
    case.sampling_locations[0, 0, 0, 0, 0] = np.nan, 0.5
    arrays = dict(case.__dict__)
    copies = {name: a.copy() for name, a in arrays.items()}
    run_on_every_tier(_forward_backward, case)
    for name, a in arrays.items():
        np.testing.assert_array_equal(a, copies[name], err_msg=name)


def test_mixed_dtypes_compute_in_float64():
    case = _random_case(np.random.default_rng(6), [(3, 4), (2, 1)])
    mixed = MSDACase(case.value.astype(np.float32), case.spatial_shapes,
                     case.level_start_index, case.sampling_locations,
                     case.attention_weights.astype(np.float32), case.gy.astype(np.float32))
    for tier, outputs in run_on_every_tier(_forward_backward, mixed,
                                           simulated_cuda=False).items():
        assert all(o.dtype == np.float64 for o in outputs), tier
        _assert_same_numbers(outputs, _forward_backward(mixed.astype(np.float64), tier),
                             tier, label=f"tier {tier!r}")


@pytest.mark.parametrize("heads", [1, 3])
def test_numba_tier_is_deterministic(heads):
    """Repeated runs are bit-identical (no racy scatter into grad_value), with thousands of
    points from many queries crowding the same few pixels of every level; with one head the
    threads must share a head's queries, with three each can own heads."""
    rng = np.random.default_rng(3)
    case = _random_case(rng, [(6, 6), (3, 3), (1, 2)], n=1, n_queries=1500, heads=heads,
                        head_dim=4, points=4, low=0.3, high=0.6)
    first = _forward_backward(case, "numba")
    for _ in range(3):
        for a, b in zip(_forward_backward(case, "numba"), first):
            np.testing.assert_array_equal(a, b)
