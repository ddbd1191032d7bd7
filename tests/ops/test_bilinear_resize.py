"""``bilinear.resize`` / ``resize_backward`` on every tier: finite-difference proofs, tier
agreement, hand-written interpolation matrices for up- and down-sampling and output size 1,
same-size identity, the adjoint identity, and inputs that must "just work".

Resizing is separable and linear: ``out[n, c] = Ay @ x[n, c] @ Ax.T`` with one 1-D
interpolation matrix per axis, and ``grad_input[n, c] = Ay.T @ gy[n, c] @ Ax``. The matrices in
``HAND_MATRICES`` are worked out by hand from eqs. (8)-(10) of docs/derivations/bilinear.md.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchvision import gradcheck
from scratchvision.ops import bilinear

from strategies import RESIZE_SETTINGS, TINY, float64_arrays, image_shapes, resize_cases
from tiers import (
    DTYPES, assert_close, assert_each_tier, assert_each_tier_equal, assert_tiers_agree,
    available_tiers, awkward_layouts, run_on_every_tier,
)

SETTING_IDS = [f"{mode}-align_corners={ac}" for mode, ac in RESIZE_SETTINGS]


def _resize_both(x, gy, options, backend):
    """Forward and backward in one call, so one ``run_on_every_tier`` covers both."""
    return (bilinear.resize(x, **options, backend=backend),
            *bilinear.resize_backward(gy, x, **options, backend=backend))


# ----------------------------------------------------------------------------- gradients

def _gradcheck_resize(case, tier, **options):
    return gradcheck(
        lambda x: bilinear.resize(x, **case.options, backend=tier),
        lambda gy, x: bilinear.resize_backward(gy, x, **case.options, backend=tier),
        {"x": case.x},
        **options,
    )


@pytest.mark.parametrize("tier", available_tiers(simulated_cuda=False))
@given(case=resize_cases(TINY))
def test_gradient_matches_finite_differences(tier, case):
    """The full Jacobian of x by central differences, contracted with a random non-uniform
    upstream gradient, equals resize_backward (bilinear both align_corners, and nearest)."""
    _gradcheck_resize(case, tier, mode="jacobian").raise_if_failed()


@pytest.mark.skipif("cuda" not in available_tiers(), reason="the cuda tier cannot run here")
@settings(max_examples=max(1, settings.default.max_examples // 5))
@given(case=resize_cases(TINY))
def test_cuda_gradient_matches_finite_differences(case):
    _gradcheck_resize(case, "cuda", mode="directional", n_directions=4).raise_if_failed()


# ----------------------------------------------------------------------------- tier agreement

@given(case=resize_cases(), dtype=st.sampled_from(DTYPES))
def test_tiers_agree(case, dtype):
    """Forward and backward agree with the loop tier; float32 in gives float32 out."""
    x, gy = case.x.astype(dtype), case.gy.astype(dtype)
    results = run_on_every_tier(_resize_both, x, gy, case.options)
    for tier, outputs in results.items():
        assert all(o.dtype == dtype for o in outputs), f"tier {tier!r}: dtype"
    assert_tiers_agree(results)


@given(case=resize_cases())
def test_backward_is_the_adjoint_of_forward(case):
    """<resize(x), gy> == <x, resize_backward(gy)> on every tier: the backward is the
    transpose of the (linear) forward."""
    for tier, (out, grad) in run_on_every_tier(_resize_both, case.x, case.gy,
                                               case.options).items():
        lhs, rhs = np.vdot(out, case.gy), np.vdot(case.x, grad)
        scale = np.abs(out).sum() * np.abs(case.gy).max() + 1.0
        assert abs(lhs - rhs) <= 1e-12 * scale, f"tier {tier!r}: {lhs} != {rhs}"


@pytest.mark.parametrize("mode, align_corners", RESIZE_SETTINGS, ids=SETTING_IDS)
def test_numba_tier_is_deterministic(mode, align_corners):
    """Repeated runs are bit-identical; upsampling makes every input pixel gather from many
    outputs in the backward pass."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 13, 17))
    gy = rng.standard_normal((2, 3, 61, 83))
    options = dict(size=(61, 83), align_corners=align_corners, mode=mode)
    first = _resize_both(x, gy, options, "numba")
    for _ in range(4):
        for a, b in zip(_resize_both(x, gy, options, "numba"), first):
            np.testing.assert_array_equal(a, b)
    assert_tiers_agree({"loop": _resize_both(x, gy, options, "loop"), "numba": first})


# ----------------------------------------------------------------------------- hand-made cases

_T = 1.0 / 3.0
# (mode, align_corners, in_size, out_size) -> the 1-D matrix A (out_size, in_size),
# each row the weights of one output index, from eqs. (8)-(10):
#   bilinear, align_corners=False: src = max((dst + 0.5) * in / out - 0.5, 0)
#   bilinear, align_corners=True:  src = dst * (in - 1) / (out - 1)   (0 when out == 1)
#   nearest:                       src = floor(dst * in / out)
# and the right neighbour clamped to in - 1.
HAND_MATRICES = {
    # upsampling 2 -> 4
    ("bilinear", False, 2, 4): [[1, 0], [0.75, 0.25], [0.25, 0.75],
                                [0, 1]],  # src 0 (clamped), .25, .75, 1.25 (right tap clamped)
    ("bilinear", True, 2, 4): [[1, 0], [1 - _T, _T], [_T, 1 - _T], [0, 1]],  # src 0, 1/3, 2/3, 1
    ("nearest", False, 2, 4): [[1, 0], [1, 0], [0, 1], [0, 1]],  # floor(0, .5, 1, 1.5)
    # upsampling 3 -> 5
    ("bilinear", False, 3, 5): [[1, 0, 0], [0.6, 0.4, 0], [0, 1, 0], [0, 0.4, 0.6],
                                [0, 0, 1]],  # src 0(clamped), 0.4, 1, 1.6, 2.2(clamped)
    ("bilinear", True, 3, 5): [[1, 0, 0], [0.5, 0.5, 0], [0, 1, 0], [0, 0.5, 0.5],
                               [0, 0, 1]],  # src 0, .5, 1, 1.5, 2
    ("nearest", False, 3, 5): [[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0],
                               [0, 0, 1]],  # floor(0, .6, 1.2, 1.8, 2.4)
    # downsampling 4 -> 2
    ("bilinear", False, 4, 2): [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]],  # src 0.5, 2.5
    ("bilinear", True, 4, 2): [[1, 0, 0, 0], [0, 0, 0, 1]],  # src 0, 3
    ("nearest", False, 4, 2): [[1, 0, 0, 0], [0, 0, 1, 0]],  # floor(0, 2)
    # downsampling 5 -> 3
    ("bilinear", False, 5, 3): [[1 - _T, _T, 0, 0, 0], [0, 0, 1, 0, 0],
                                [0, 0, 0, _T, 1 - _T]],  # src 1/3, 2, 11/3
    ("bilinear", True, 5, 3): [[1, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 1]],  # 0, 2, 4
    ("nearest", False, 5, 3): [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0],
                               [0, 0, 0, 1, 0]],  # floor(0, 5/3, 10/3)
    # output size 1
    ("bilinear", False, 4, 1): [[0, 0.5, 0.5, 0]],  # src 1.5: the centre
    ("bilinear", True, 4, 1): [[1, 0, 0, 0]],  # src 0: the first pixel
    ("nearest", False, 4, 1): [[1, 0, 0, 0]],
    # input size 1: every output reads the single pixel
    ("bilinear", False, 1, 3): [[1], [1], [1]],
    ("bilinear", True, 1, 3): [[1], [1], [1]],
    ("nearest", False, 1, 3): [[1], [1], [1]],
}


def _hand_pairs():
    """(mode, align_corners, rows key, cols key): each matrix along y, paired with another of
    the same setting along x so that the two axes differ."""
    pairs = []
    for mode, align_corners in RESIZE_SETTINGS:
        keys = [k for k in HAND_MATRICES if k[:2] == (mode, align_corners)]
        for i, key in enumerate(keys):
            pairs.append(pytest.param(key, keys[(i + 1) % len(keys)],
                                      id=f"{mode}-ac={align_corners}-"
                                         f"{key[2]}x{keys[(i + 1) % len(keys)][2]}->"
                                         f"{key[3]}x{keys[(i + 1) % len(keys)][3]}"))
    return pairs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows_key, cols_key", _hand_pairs())
def test_hand_written_interpolation_matrices(rows_key, cols_key, dtype):
    mode, align_corners, height, out_h = rows_key
    _, _, width, out_w = cols_key
    ay = np.array(HAND_MATRICES[rows_key], dtype=np.float64)  # (Ho, H)
    ax = np.array(HAND_MATRICES[cols_key], dtype=np.float64)  # (Wo, W)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 2, height, width)).astype(dtype)
    gy = rng.standard_normal((2, 2, out_h, out_w)).astype(dtype)
    expected_out = (ay @ x.astype(np.float64) @ ax.T).astype(dtype)  # (N, C, Ho, Wo)
    expected_grad = (ay.T @ gy.astype(np.float64) @ ax).astype(dtype)  # (N, C, H, W)
    options = dict(size=(out_h, out_w), align_corners=align_corners, mode=mode)
    results = run_on_every_tier(_resize_both, x, gy, options)
    rtol = 1e-12 if dtype == np.float64 else 1e-6
    assert_each_tier(results, (expected_out, expected_grad), rtol=rtol)


@given(data=st.data(), shape=image_shapes(), dtype=st.sampled_from(DTYPES))
@pytest.mark.parametrize("mode, align_corners", RESIZE_SETTINGS, ids=SETTING_IDS)
def test_same_size_is_the_identity(mode, align_corners, data, shape, dtype):
    """Resizing to the input's own size returns it exactly, and passes gy straight back."""
    x = data.draw(float64_arrays(shape), label="x").astype(dtype)
    gy = data.draw(float64_arrays(shape), label="gy").astype(dtype)
    options = dict(size=shape[2:], align_corners=align_corners, mode=mode)
    assert_each_tier_equal(run_on_every_tier(_resize_both, x, gy, options), (x, gy))


@pytest.mark.parametrize("mode, align_corners", RESIZE_SETTINGS, ids=SETTING_IDS)
def test_output_size_one(mode, align_corners):
    """A 1 x 1 output reads the centre (align_corners=False) or the first pixel."""
    x = np.arange(2 * 3 * 4 * 6, dtype=np.float64).reshape(2, 3, 4, 6)
    gy = np.array([1.0, -2.0, 0.5, 3.0, 0.25, -1.0]).reshape(2, 3, 1, 1)
    expected_grad = np.zeros_like(x)
    if mode == "bilinear" and not align_corners:
        # src = 0.5 * 4 - 0.5 = 1.5 along y and 0.5 * 6 - 0.5 = 2.5 along x
        expected_out = x[:, :, 1:3, 2:4].mean(axis=(2, 3), keepdims=True)
        expected_grad[:, :, 1:3, 2:4] = 0.25 * gy
    else:
        expected_out = x[:, :, :1, :1]
        expected_grad[:, :, :1, :1] = gy
    results = run_on_every_tier(_resize_both, x, gy, dict(size=1, align_corners=align_corners,
                                                          mode=mode))
    assert_each_tier(results, (expected_out, expected_grad), rtol=1e-12)


def test_nearest_index_is_computed_in_float32_like_torch():
    """Resizing 26 -> 22 pixels, output 11 reads ``floor(11 * 26 / 22) = floor(13)`` in exact
    arithmetic, but torch computes the scale 26 / 22 in float32, which rounds it down, and
    reads pixel 12. (The oracle test confirms torch's choice.)"""
    assert np.float32(11) * (np.float32(26) / np.float32(22)) < 13  # the premise
    x = np.arange(26.0).reshape(1, 1, 26, 1)  # pixel i holds the value i
    gy = np.zeros((1, 1, 22, 1))
    gy[0, 0, 11, 0] = 1.0
    for tier, (out, grad) in run_on_every_tier(
            _resize_both, x, gy, dict(size=(22, 1), align_corners=False,
                                      mode="nearest")).items():
        assert out[0, 0, 11, 0] == 12.0, f"tier {tier!r} reads pixel {out[0, 0, 11, 0]}"
        assert grad[0, 0, 12, 0] == 1.0 and grad.sum() == 1.0, f"tier {tier!r}"


# ----------------------------------------------------------------------------- shapes and layouts

@pytest.mark.parametrize("shape", [(0, 2, 3, 4), (2, 0, 3, 4)], ids=["N=0", "C=0"])
@pytest.mark.parametrize("mode, align_corners", RESIZE_SETTINGS, ids=SETTING_IDS)
def test_empty_batch_and_channels(shape, mode, align_corners):
    x = np.zeros(shape)
    gy = np.zeros(shape[:2] + (5, 2))
    options = dict(size=(5, 2), align_corners=align_corners, mode=mode)
    assert_each_tier_equal(run_on_every_tier(_resize_both, x, gy, options), (gy, x))


@pytest.mark.parametrize("mode, align_corners", RESIZE_SETTINGS, ids=SETTING_IDS)
def test_views_and_read_only_arrays_just_work(mode, align_corners):
    """Non-contiguous, Fortran, negative-stride and read-only x / gy give the same numbers as
    their contiguous copies and are not modified."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 4, 5))
    gy = rng.standard_normal((2, 3, 7, 3))
    options = dict(size=(7, 3), align_corners=align_corners, mode=mode)
    reference = run_on_every_tier(_resize_both, x, gy, options)
    for which, index in (("x", 0), ("gy", 1)):
        for layout, view in awkward_layouts((x, gy)[index]).items():
            args = [x, gy]
            args[index] = view
            before = view.copy()
            results = run_on_every_tier(_resize_both, *args, options)
            for tier, result in results.items():
                assert_close(result, reference[tier], label=f"{tier} {which} {layout}",
                             rtol=0.0, atol=0.0)
            np.testing.assert_array_equal(view, before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode, align_corners", RESIZE_SETTINGS, ids=SETTING_IDS)
def test_inputs_are_not_modified(mode, align_corners, dtype):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 2, 3, 4)).astype(dtype)
    gy = rng.standard_normal((1, 2, 5, 2)).astype(dtype)
    copies = x.copy(), gy.copy()
    run_on_every_tier(_resize_both, x, gy, dict(size=(5, 2), align_corners=align_corners,
                                                 mode=mode))
    np.testing.assert_array_equal(x, copies[0])
    np.testing.assert_array_equal(gy, copies[1])


def test_mixed_dtypes_in_backward_promote_to_float64():
    x = np.ones((1, 1, 2, 2), dtype=np.float32)
    gy = np.ones((1, 1, 3, 3))  # float64
    for tier, (grad,) in run_on_every_tier(bilinear.resize_backward, gy, x, (3, 3)).items():
        assert grad.dtype == np.float64, tier
