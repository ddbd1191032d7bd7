"""``deform_conv2d.forward`` / ``backward`` on every tier: finite-difference proofs of all five
gradients, tier agreement, the right-hand derivative at the kinks, the properties that tie it
to conv2d, batch sizes, layouts, purity and determinism.

Equations refer to docs/derivations/deform_conv2d.md. Oracle tests against torchvision are in
test_deform_conv2d_oracle.py, the bad-input rules in test_deform_conv2d_bad_input.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchvision import gradcheck
from scratchvision.ops import conv2d, deform_conv2d
from scratchvision.ops.deform_conv2d import columns

from strategies import DEFORM_TINY, DeformBounds, DeformCase, deform_cases
from tiers import (
    DTYPES, assert_close, assert_each_tier, assert_tiers_agree, available_tiers,
    awkward_layouts, run_on_every_tier,
)

GRAD_NAMES = {"x": "grad_input", "offset": "grad_offset", "weight": "grad_weight",
              "bias": "grad_bias", "mask": "grad_mask"}


def _forward_backward(case: DeformCase, backend):
    """(y, grad_input, grad_offset, grad_weight, grad_bias, grad_mask) in one call, so one
    ``run_on_every_tier`` covers both passes."""
    args = (case.x, case.offset, case.weight, case.bias)
    y = deform_conv2d.forward(*args, **case.options, backend=backend)
    return (y, *deform_conv2d.backward(case.gy, *args, **case.options, backend=backend))


def _backward(case: DeformCase, backend):
    return deform_conv2d.backward(case.gy, case.x, case.offset, case.weight, case.bias,
                                  **case.options, backend=backend)


def _gradcheck(case: DeformCase, tier: str, **options):
    """gradcheck of ``tier`` with respect to every array the case has (bias and mask only
    when present)."""
    names = list(case.arrays)

    def call(function, *values, **extra):
        named = dict(zip(names, values))
        return function(*extra.pop("gy", ()), named["x"], named["offset"], named["weight"],
                        named.get("bias"), stride=case.stride, padding=case.padding,
                        dilation=case.dilation, mask=named.get("mask"), backend=tier)

    def forward(*values):
        return call(deform_conv2d.forward, *values)

    def backward(gy, *values):
        grads = call(deform_conv2d.backward, *values, gy=(gy,))
        return tuple(getattr(grads, GRAD_NAMES[name]) for name in names)

    return gradcheck(forward, backward, case.arrays, **options)


# ----------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("tier", available_tiers(simulated_cuda=False))
@given(case=deform_cases(DeformBounds(extra_side=2)))
def test_gradients_match_finite_differences(tier, case):
    """Full Jacobians of x, offset, weight, bias and mask by central differences, contracted
    with a random upstream gradient, equal the backward, element by element (offsets kept off
    the kinks; hypothesis draws groups, offset groups, kernel, stride, padding, dilation)."""
    _gradcheck(case, tier, mode="jacobian").raise_if_failed()


@pytest.mark.skipif("cuda" not in available_tiers(), reason="the cuda tier cannot run here")
@settings(max_examples=max(1, settings.default.max_examples // 5))
@given(case=deform_cases(DEFORM_TINY))
def test_cuda_gradients_match_finite_differences(case):
    """The cuda tier, in the simulator when there is no GPU: random directions to keep the
    number of (slow) launches small."""
    _gradcheck(case, "cuda", mode="directional", n_directions=3).raise_if_failed()


# ----------------------------------------------------------------------------- tier agreement

@given(case=deform_cases(DEFORM_TINY, smooth=False), dtype=st.sampled_from(DTYPES))
def test_tiers_agree(case, dtype):
    """Forward and all five gradients agree with the loop tier, with offsets on the kinks,
    zero and non-finite too (cuda included, in the simulator); float32 in gives float32 out."""
    results = run_on_every_tier(_forward_backward, case.astype(dtype))
    for tier, outputs in results.items():
        assert all(o is None or o.dtype == dtype for o in outputs), f"tier {tier!r}: dtype"
    assert_tiers_agree(results)


@settings(max_examples=max(1, settings.default.max_examples // 2))
@given(case=deform_cases(DeformBounds(), smooth=False), dtype=st.sampled_from(DTYPES))
def test_tiers_agree_on_larger_cases(case, dtype):
    """The same on kernels up to 3x3 and more channels per group (not in the simulator)."""
    assert_tiers_agree(run_on_every_tier(_forward_backward, case.astype(dtype),
                                         simulated_cuda=False))


def test_non_finite_offsets_contribute_nothing():
    """A tap whose offset is NaN or infinite reads zero and gets zero gradient (it never
    indexes memory); the other taps are unaffected."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 2, 4, 4))
    weight = rng.standard_normal((3, 2, 1, 2))  # K = 2 taps
    offset = rng.uniform(-0.9, 0.9, (1, 4, 4, 3))  # (N, 2K, Ho, Wo)
    mask = rng.uniform(0, 1, (1, 2, 4, 3))
    gy = rng.standard_normal((1, 3, 4, 3))
    bad = offset.copy()
    bad[0, 0, 1, 2] = np.nan  # dy of tap 0 at (1, 2)
    bad[0, 3, 2, 0] = np.inf  # dx of tap 1 at (2, 0)
    # the same outputs with those taps switched off by the mask
    expected_mask = mask.copy()
    expected_mask[0, 0, 1, 2] = 0.0
    expected_mask[0, 1, 2, 0] = 0.0
    for tier in available_tiers():
        y = deform_conv2d.forward(x, bad, weight, mask=mask, backend=tier)
        grads = deform_conv2d.backward(gy, x, bad, weight, mask=mask, backend=tier)
        y_ref = deform_conv2d.forward(x, offset, weight, mask=expected_mask, backend=tier)
        ref = deform_conv2d.backward(gy, x, offset, weight, mask=expected_mask, backend=tier)
        # a tap switched off by its mask gets no grad_offset either, so only grad_mask, whose
        # reference is <gy, the tap's unmodulated term>, differs at the two taps
        expected_grad_mask = ref.grad_mask.copy()
        expected_grad_mask[0, 0, 1, 2] = expected_grad_mask[0, 1, 2, 0] = 0.0
        assert_close((y, *grads), (y_ref, *ref[:4], expected_grad_mask),
                     label=f"tier {tier!r}")


# ----------------------------------------------------------------------------- kinks

def _one_sided_offset_vjp(case: DeformCase, step: float) -> np.ndarray:
    """sum(gy * (f(offset + step e_i) - f(offset)) / step) for every offset element i: the
    right-hand derivative (step > 0) of <gy, forward> along each offset, exact for a function
    that is linear on [offset, offset + step] (loop tier, float64)."""
    def f(offset):
        return deform_conv2d.forward(case.x, offset, case.weight, case.bias, **case.options,
                                     backend="loop")
    base = f(case.offset)
    grad = np.zeros_like(case.offset)
    for index in np.ndindex(case.offset.shape):
        moved = case.offset.copy()
        moved[index] += step
        grad[index] = np.sum(case.gy * (f(moved) - base)) / step
    return grad


@pytest.mark.parametrize("dtype", DTYPES)
def test_integer_offsets_give_the_right_hand_derivative(dtype):
    """Offsets that are integers put every sampled point on a kink (and some on the borders
    -1, H - 1, W - 1 and outside). grad_offset is then the derivative from the right (the
    floor convention, eq. 10), which a one-sided difference with a step inside the cell
    measures exactly; a left-sided one differs."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 2, 3, 4))
    # G = 2 offset groups, a 2x2 kernel with padding 1: output 4 x 5
    offset = rng.integers(-2, 2, size=(1, 2 * 2 * 4, 4, 5)).astype(np.float64)
    case = DeformCase(x, offset, rng.standard_normal((2, 2, 2, 2)), None,
                      rng.uniform(0, 1, (1, 8, 4, 5)), rng.standard_normal((1, 2, 4, 5)),
                      (1, 1), (1, 1), (1, 1))
    step = 2.0**-10  # exact in float64 and float32
    right = _one_sided_offset_vjp(case, step)
    left = _one_sided_offset_vjp(case, -step)
    assert np.abs(right - left).max() > 1e-3, "the case should straddle real kinks"
    case = case.astype(dtype)
    rtol = 1e-9 if dtype == np.float64 else 1e-4
    for tier, grads in run_on_every_tier(_backward, case).items():
        assert_close(grads.grad_offset, right.astype(dtype), label=f"tier {tier!r}",
                     rtol=rtol)


# ----------------------------------------------------------------------------- properties

def _conv2d_both(case: DeformCase, groups: int):
    args = (case.x, case.weight, case.bias)
    options = dict(stride=case.stride, padding=case.padding, dilation=case.dilation,
                   groups=groups)
    y = conv2d.forward(*args, **options, backend="numpy")
    return y, conv2d.backward(case.gy, *args, **options, backend="numpy")


@given(case=deform_cases(DeformBounds(), smooth=True), modulated=st.booleans())
def test_zero_offsets_and_unit_mask_equal_conv2d(case, modulated):
    """With every offset 0 and every mask 1 (or no mask), the sampling points are the grid of
    an ordinary convolution and bilinear sampling at integer points is indexing (with zero
    padding): forward, grad_input, grad_weight and grad_bias are conv2d's."""
    offset = np.zeros_like(case.offset)
    mask = np.ones_like(case.offset[:, ::2]) if modulated else None
    groups = case.x.shape[1] // case.weight.shape[1]
    case = DeformCase(case.x, offset, case.weight, case.bias, mask, case.gy, case.stride,
                      case.padding, case.dilation)
    y, grads = _conv2d_both(case, groups)
    for tier, (out, grad_input, _, grad_weight, grad_bias, _) in run_on_every_tier(
            _forward_backward, case, simulated_cuda=False).items():
        assert_close(out, y, label=f"tier {tier!r}: y")
        assert_close((grad_input, grad_weight, grad_bias), tuple(grads),
                     label=f"tier {tier!r}: grads")


@given(case=deform_cases(DeformBounds(), smooth=True, mask=True))
def test_unit_mask_equals_no_mask(case):
    """DCNv2 with a mask of ones is DCNv1; grad_mask is then <gy, the unmodulated term>."""
    ones = np.ones_like(case.mask)
    v2 = DeformCase(case.x, case.offset, case.weight, case.bias, ones, case.gy, case.stride,
                    case.padding, case.dilation)
    v1 = DeformCase(case.x, case.offset, case.weight, case.bias, None, case.gy, case.stride,
                    case.padding, case.dilation)
    for tier in available_tiers(simulated_cuda=False):
        with_mask, without = _forward_backward(v2, tier), _forward_backward(v1, tier)
        assert without[-1] is None
        assert_close(with_mask[:-1], without[:-1], label=f"tier {tier!r}")


def test_integer_offsets_shift_the_input():
    """An integer offset (dy, dx) on every tap equals conv2d of the input shifted by it, with
    zeros shifted in: sampling at integer points is indexing."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 6, 7))
    weight = rng.standard_normal((4, 3, 3, 3))
    dy, dx = 2, -1
    offset = np.zeros((2, 18, 4, 5))  # no padding: output 4 x 5
    offset[:, 0::2], offset[:, 1::2] = dy, dx
    shifted = np.zeros_like(x)  # shifted[..., r, q] = x[..., r + dy, q + dx], or 0 outside
    shifted[:, :, : 6 - dy, 1:] = x[:, :, dy:, :-1]
    expected = conv2d.forward(shifted, weight, backend="numpy")
    results = run_on_every_tier(deform_conv2d.forward, x, offset, weight)
    assert_each_tier(results, expected)


# ----------------------------------------------------------------------------- batches

def _small_case(rng, n: int) -> DeformCase:
    """G = 2 offset groups, 2 weight groups, DCNv2, 2x3 kernel, stride (1, 2), pad 1."""
    x = rng.standard_normal((n, 4, 5, 6))
    out = (6, 3)
    return DeformCase(x, rng.uniform(-1.5, 1.5, (n, 24) + out),
                      rng.standard_normal((6, 2, 2, 3)), rng.standard_normal(6),
                      rng.uniform(-0.5, 1.5, (n, 12) + out), rng.standard_normal((n, 6) + out),
                      (1, 2), (1, 1), (1, 1))


@pytest.mark.parametrize("n", [3, 5])
def test_batch_elements_are_independent(n):
    """Batch sizes that are not multiples of anything: each batch element's output and
    gradients are those of the element alone (the weight and bias gradients sum them)."""
    case = _small_case(np.random.default_rng(n), n)
    for tier, (y, gx, goff, gw, gb, gm) in run_on_every_tier(
            _forward_backward, case, simulated_cuda=False).items():
        parts = [_forward_backward(DeformCase(
            case.x[i:i + 1], case.offset[i:i + 1], case.weight, case.bias,
            case.mask[i:i + 1], case.gy[i:i + 1], case.stride, case.padding, case.dilation),
            tier) for i in range(n)]
        assert_close((y, gx, goff, gm),
                     tuple(np.concatenate([p[j] for p in parts]) for j in (0, 1, 2, 5)),
                     label=f"tier {tier!r}: per element")
        assert_close((gw, gb), (sum(p[3] for p in parts), sum(p[4] for p in parts)),
                     label=f"tier {tier!r}: summed")


def test_large_batches_are_processed_in_chunks(monkeypatch):
    """When the columns of the whole batch exceed the budget, the fast tiers process the batch
    a few elements at a time (here 2 + 2 + 1 of 5): the same numbers."""
    case = _small_case(np.random.default_rng(12), 5)
    tiers = [t for t in available_tiers(simulated_cuda=False) if t in ("numpy", "numba")]
    whole = {tier: _forward_backward(case, tier) for tier in tiers}
    # C * K * Ho * Wo values per batch element: 4 channels, a 2x3 kernel, a 6 x 3 output
    per_element = 4 * 6 * 6 * 3 * case.x.itemsize
    monkeypatch.setattr(columns, "COLUMN_BYTES", 2 * per_element)
    assert len(columns.batch_chunks(5, per_element)) == 3
    for tier in tiers:
        assert_close(_forward_backward(case, tier), whole[tier], label=f"tier {tier!r}")


@pytest.mark.parametrize("modulated", [True, False])
def test_empty_batch(modulated):
    case = _small_case(np.random.default_rng(0), 0)
    if not modulated:
        case = DeformCase(case.x, case.offset, case.weight, case.bias, None, case.gy,
                          case.stride, case.padding, case.dilation)
    for tier, (y, gx, goff, gw, gb, gm) in run_on_every_tier(_forward_backward, case).items():
        assert y.shape == (0, 6, 6, 3), tier
        assert gx.shape == case.x.shape and goff.shape == case.offset.shape, tier
        np.testing.assert_array_equal(gw, np.zeros_like(case.weight))
        np.testing.assert_array_equal(gb, np.zeros(6))
        assert (gm is None) if not modulated else gm.shape == case.mask.shape, tier


# ----------------------------------------------------------------------------- layouts, purity

def test_views_and_read_only_arrays_just_work():
    """Fortran-ordered, negative-stride, strided, transposed and read-only x / offset / weight
    / mask / gy give the same numbers as their C-contiguous copies."""
    case = _small_case(np.random.default_rng(4), 2)
    for tier in available_tiers(simulated_cuda=False):
        expected = _forward_backward(case, tier)
        for field in ("x", "offset", "weight", "mask", "gy"):
            for layout, view in awkward_layouts(getattr(case, field)).items():
                changed = DeformCase(**{**case.__dict__, field: view})
                assert_close(_forward_backward(changed, tier), expected,
                             label=f"tier {tier!r}, {field} {layout}")


def test_mixed_dtypes_compute_in_float64():
    case = _small_case(np.random.default_rng(6), 1)
    mixed = DeformCase(case.x.astype(np.float32), case.offset, case.weight.astype(np.float32),
                       case.bias, case.mask.astype(np.float32), case.gy, case.stride,
                       case.padding, case.dilation)
    for tier, outputs in run_on_every_tier(_forward_backward, mixed,
                                           simulated_cuda=False).items():
        assert all(o.dtype == np.float64 for o in outputs), tier


def test_inputs_are_never_modified():
    case = _small_case(np.random.default_rng(8), 2)
    arrays = dict(case.arrays, gy=case.gy)
    copies = {name: a.copy() for name, a in arrays.items()}
    run_on_every_tier(_forward_backward, case)
    for name, a in arrays.items():
        np.testing.assert_array_equal(a, copies[name], err_msg=name)


def test_numba_tier_is_deterministic():
    """Repeated runs are bit-identical (no racy scatter), with many taps crowding the same
    pixels and enough points that the bilinear backward splits them into several chunks."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 3, 24, 24))
    # offsets pull every tap of every output pixel towards a small region around (5, 5)
    rows, cols = np.meshgrid(np.arange(24), np.arange(24), indexing="ij")
    offset = np.empty((1, 18, 24, 24))
    offset[0, 0::2] = 5 - rows + rng.uniform(-2, 2, (9, 24, 24))
    offset[0, 1::2] = 5 - cols + rng.uniform(-2, 2, (9, 24, 24))
    case = DeformCase(x, offset, rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4),
                      rng.uniform(0, 1, (1, 9, 24, 24)), rng.standard_normal((1, 4, 24, 24)),
                      (1, 1), (1, 1), (1, 1))
    first = _forward_backward(case, "numba")
    for _ in range(3):
        for a, b in zip(_forward_backward(case, "numba"), first):
            np.testing.assert_array_equal(a, b)
