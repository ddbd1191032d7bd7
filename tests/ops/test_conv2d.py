"""``conv2d.forward`` / ``backward`` on every tier: finite-difference proofs of the three
gradients, tier agreement, hand-checked identities (a one-hot kernel is a shift, a 1x1 kernel
is a channel mix), batch sizes, empty batches, layouts, purity and determinism.

Equations refer to docs/derivations/conv2d.md. Oracle tests against ``F.conv2d`` are in
test_conv2d_oracle.py, the bad-input rules in test_conv2d_bad_input.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchvision import gradcheck
from scratchvision.ops import conv2d

from strategies import CONV_TINY, ConvCase, conv_cases, float64_arrays
from tiers import (
    DTYPES, assert_close, assert_each_tier_equal, assert_tiers_agree, available_tiers,
    awkward_layouts, run_on_every_tier,
)


def _forward_backward(x, weight, bias, gy, options, backend):
    """(y, grad_input, grad_weight, grad_bias) in one call, so one ``run_on_every_tier``
    covers both passes."""
    y = conv2d.forward(x, weight, bias, **options, backend=backend)
    return (y, *conv2d.backward(gy, x, weight, bias, **options, backend=backend))


def _case_forward_backward(case: ConvCase, backend):
    return _forward_backward(case.x, case.weight, case.bias, case.gy, case.options, backend)


def _random_case(rng, x_shape, c_out, kernel, groups=1, bias=True, **options) -> ConvCase:
    """A float64 case with standard-normal entries; ``options`` are stride / padding /
    dilation (ints or pairs, default 1, 0, 1)."""
    pairs = {name: options.get(name, default) for name, default in
             (("stride", 1), ("padding", 0), ("dilation", 1))}
    pairs = {name: (v, v) if isinstance(v, int) else tuple(v) for name, v in pairs.items()}
    x = rng.standard_normal(x_shape)
    weight = rng.standard_normal((c_out, x_shape[1] // groups) + tuple(kernel))
    y = conv2d.forward(x, weight, groups=groups, backend="numpy", **pairs)
    return ConvCase(x, weight, rng.standard_normal(c_out) if bias else None,
                    rng.standard_normal(y.shape), pairs["stride"], pairs["padding"],
                    pairs["dilation"], groups)


# ----------------------------------------------------------------------------- gradients

def _gradcheck(case: ConvCase, tier: str, **options):
    def backward(gy, *arrays):
        grads = conv2d.backward(gy, *arrays, **case.options, backend=tier)
        return grads if case.bias is not None else grads[:2]  # one gradient per input

    return gradcheck(lambda *arrays: conv2d.forward(*arrays, **case.options, backend=tier),
                     backward, case.arrays, **options)


@pytest.mark.parametrize("tier", available_tiers(simulated_cuda=False))
@given(case=conv_cases(CONV_TINY))
def test_gradients_match_finite_differences(tier, case):
    """Gradients of x, weight and bias (eqs. 6-10) against central differences of the tier's
    own forward, with a random non-uniform upstream gradient. The compiled tiers are checked
    element by element (full Jacobians); the loop tier, too slow for that, along random
    directions."""
    mode = "directional" if tier == "loop" else "jacobian"
    _gradcheck(case, tier, mode=mode, n_directions=3).raise_if_failed()


@pytest.mark.skipif("cuda" not in available_tiers(), reason="the cuda tier cannot run here")
@settings(max_examples=max(1, settings.default.max_examples // 5))
@given(case=conv_cases(CONV_TINY))
def test_cuda_gradients_match_finite_differences(case):
    """The cuda tier, in the simulator when there is no GPU: random directions to keep the
    number of (slow) launches small."""
    _gradcheck(case, "cuda", mode="directional", n_directions=2).raise_if_failed()


# ----------------------------------------------------------------------------- tier agreement

@given(case=conv_cases(), dtype=st.sampled_from(DTYPES))
def test_tiers_agree(case, dtype):
    """Forward and all three gradients agree with the loop tier, in float64 and float32;
    float32 in gives float32 out."""
    case = case.astype(dtype)
    results = run_on_every_tier(_case_forward_backward, case, simulated_cuda=False)
    for tier, outputs in results.items():
        assert all(o is None or o.dtype == dtype for o in outputs), f"tier {tier!r}: dtype"
    assert_tiers_agree(results)


@pytest.mark.skipif("cuda" not in available_tiers(), reason="the cuda tier cannot run here")
@settings(max_examples=max(1, settings.default.max_examples // 3))
@given(case=conv_cases(CONV_TINY), dtype=st.sampled_from(DTYPES))
def test_cuda_tier_agrees(case, dtype):
    """The cuda tier (in the simulator when there is no GPU) on tiny cases."""
    assert_tiers_agree(run_on_every_tier(_case_forward_backward, case.astype(dtype)))


@pytest.mark.parametrize("n_batch", [3, 5])
def test_batch_sizes_that_are_not_powers_of_two(n_batch):
    """Each image of a batch is convolved on its own: the batch result is the stack of the
    one-image results (gradients of x too; weight and bias gradients sum over the batch)."""
    rng = np.random.default_rng(n_batch)
    case = _random_case(rng, (n_batch, 4, 6, 5), 6, (3, 2), groups=2, stride=(2, 1),
                        padding=1, dilation=(1, 2))
    results = run_on_every_tier(_case_forward_backward, case, simulated_cuda=False)
    assert_tiers_agree(results)
    for tier, (y, grad_input, grad_weight, grad_bias) in results.items():
        singles = [_forward_backward(case.x[k:k + 1], case.weight, case.bias,
                                     case.gy[k:k + 1], case.options, tier)
                   for k in range(n_batch)]
        assert_close((y, grad_input, grad_weight, grad_bias),
                     (np.concatenate([s[0] for s in singles]),
                      np.concatenate([s[1] for s in singles]),
                      sum(s[2] for s in singles), sum(s[3] for s in singles)),
                     label=f"tier {tier!r}: batch vs images")


def test_numba_tier_is_deterministic():
    """Repeated runs are bit-identical: stride 1 with a 3x3 kernel makes every input pixel
    collect the gradient of nine outputs per channel, and no thread adds into another's rows."""
    rng = np.random.default_rng(3)
    case = _random_case(rng, (3, 8, 17, 19), 12, (3, 3), groups=2, padding=1)
    first = _case_forward_backward(case, "numba")
    for _ in range(4):
        again = _case_forward_backward(case, "numba")
        for a, b in zip(again, first):
            np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- identities

@given(data=st.data(), dtype=st.sampled_from(DTYPES))
def test_one_hot_kernel_shifts_the_image(data, dtype):
    """A kernel that is 1 at tap (i, j) and 0 elsewhere copies the zero-padded input from
    the tap's position (eqs. 2-4): ``y[n, c, ho, wo] = padded[n, c, ho sh + i dh, wo sw + j dw]``
    exactly, and grad_input scatters gy back to those pixels (eq. 8). Depthwise, so each
    channel is shifted on its own; computed by hand with slicing, not with the code under
    test."""
    n = data.draw(st.integers(1, 2), label="N")
    channels = data.draw(st.integers(1, 3), label="C")
    kh, kw = data.draw(st.integers(1, 3), label="kh"), data.draw(st.integers(1, 3), label="kw")
    i, j = data.draw(st.integers(0, kh - 1), label="i"), data.draw(st.integers(0, kw - 1),
                                                                   label="j")
    (sh, sw), (ph, pw), (dh, dw) = (
        data.draw(st.tuples(st.integers(1, 2), st.integers(1, 2)), label="stride"),
        data.draw(st.tuples(st.integers(0, 2), st.integers(0, 2)), label="padding"),
        data.draw(st.tuples(st.integers(1, 2), st.integers(1, 2)), label="dilation"))
    height = data.draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 6), label="H")
    width = data.draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 6), label="W")
    x = data.draw(float64_arrays((n, channels, height, width)), label="x").astype(dtype)
    weight = np.zeros((channels, 1, kh, kw), dtype=dtype)
    weight[:, 0, i, j] = 1
    out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    gy = data.draw(float64_arrays((n, channels, out_h, out_w)), label="gy").astype(dtype)
    options = dict(stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), groups=channels)

    padded = np.zeros((n, channels, height + 2 * ph, width + 2 * pw), dtype=dtype)
    padded[:, :, ph:ph + height, pw:pw + width] = x
    rows = slice(i * dh, i * dh + (out_h - 1) * sh + 1, sh)
    cols = slice(j * dw, j * dw + (out_w - 1) * sw + 1, sw)
    expected_y = padded[:, :, rows, cols]
    grad_padded = np.zeros_like(padded)
    grad_padded[:, :, rows, cols] = gy
    expected_grad_input = grad_padded[:, :, ph:ph + height, pw:pw + width]

    results = run_on_every_tier(
        lambda backend: _forward_backward(x, weight, None, gy, options, backend)[:2],
        simulated_cuda=False)
    assert_each_tier_equal(results, (expected_y, expected_grad_input))


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_by_one_kernel_mixes_channels(dtype):
    """A 1x1 kernel is a matrix product over channels at every pixel:
    ``y[n, :, r, q] = W[:, :, 0, 0] @ x[n, :, r, q] + b``, and its gradients are the
    matching products (eqs. 6-8 with k = 1)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 4, 5)).astype(dtype)
    weight = rng.standard_normal((4, 3, 1, 1)).astype(dtype)
    bias = rng.standard_normal(4).astype(dtype)
    gy = rng.standard_normal((2, 4, 4, 5)).astype(dtype)
    # the expectation in float64, from the same (rounded) numbers
    w = weight[:, :, 0, 0].astype(np.float64)  # (C_out, C_in, 1, 1) -> (C_out, C_in)
    x64, gy64 = x.astype(np.float64), gy.astype(np.float64)
    expected = (
        np.einsum("oc,nchw->nohw", w, x64) + bias[:, None, None],
        np.einsum("oc,nohw->nchw", w, gy64),
        np.einsum("nohw,nchw->oc", gy64, x64)[:, :, None, None],  # (C_out, C_in, 1, 1)
        gy64.sum(axis=(0, 2, 3)),
    )
    expected = tuple(e.astype(dtype) for e in expected)
    results = run_on_every_tier(_forward_backward, x, weight, bias, gy, {})
    for tier, result in results.items():
        assert_close(result, expected, label=f"tier {tier!r}:")


def test_int_and_pair_hyper_parameters_are_the_same():
    rng = np.random.default_rng(6)
    x, weight = rng.standard_normal((1, 2, 7, 7)), rng.standard_normal((2, 2, 3, 3))
    for tier in available_tiers(simulated_cuda=False):
        np.testing.assert_array_equal(
            conv2d.forward(x, weight, stride=2, padding=1, dilation=2, backend=tier),
            conv2d.forward(x, weight, stride=(2, 2), padding=[1, 1], dilation=(2, 2),
                           backend=tier))


# ----------------------------------------------------------------------------- shapes and layouts

@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no bias"])
def test_empty_batch(bias):
    """N = 0: the output and grad_input are empty, grad_weight is zero (a sum over no
    images), and so is grad_bias; with no bias, grad_bias is None."""
    x = np.zeros((0, 4, 5, 6))
    weight = np.ones((6, 2, 3, 3))
    b = np.ones(6) if bias else None
    gy = np.zeros((0, 6, 3, 2))
    options = dict(stride=(1, 2), groups=2)
    expected = (np.zeros((0, 6, 3, 2)), np.zeros_like(x), np.zeros_like(weight),
                np.zeros(6) if bias else None)
    assert_each_tier_equal(run_on_every_tier(_forward_backward, x, weight, b, gy, options),
                           expected)


def test_no_bias_gives_no_bias_gradient():
    rng = np.random.default_rng(7)
    case = _random_case(rng, (1, 2, 4, 4), 3, (2, 2), bias=False)
    for tier, grads in run_on_every_tier(
            lambda backend: conv2d.backward(case.gy, case.x, case.weight, backend=backend),
            simulated_cuda=False).items():
        assert isinstance(grads, conv2d.Conv2dGrads), tier
        assert grads.grad_bias is None, tier


def _bias_layouts(bias: np.ndarray) -> dict[str, np.ndarray]:
    """Non-contiguous and read-only views of a 1-D array (``awkward_layouts`` needs 2-D)."""
    readonly = bias.copy()
    readonly.flags.writeable = False
    return {"negative stride": bias[::-1].copy()[::-1],
            "strided": np.repeat(bias, 2)[::2],
            "read-only": readonly}


def test_views_and_read_only_arrays_just_work():
    """Fortran-ordered, negative-stride, strided, transposed and read-only x / weight / bias /
    gy give the same numbers as their C-contiguous copies, and are not modified."""
    rng = np.random.default_rng(1)
    case = _random_case(rng, (2, 4, 5, 6), 4, (3, 2), groups=2, stride=(1, 2), padding=1)
    args = [case.x, case.weight, case.bias, case.gy]
    reference = run_on_every_tier(_forward_backward, *args, case.options, simulated_cuda=False)
    for index, name in enumerate(("x", "weight", "bias", "gy")):
        layouts = _bias_layouts(args[index]) if name == "bias" else awkward_layouts(args[index])
        for layout, view in layouts.items():
            before = view.copy()
            varied = list(args)
            varied[index] = view
            results = run_on_every_tier(_forward_backward, *varied, case.options,
                                        simulated_cuda=False)
            for tier, result in results.items():
                assert_close(result, reference[tier], label=f"{tier} {name} {layout}",
                             rtol=0.0, atol=0.0)
            np.testing.assert_array_equal(view, before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_inputs_are_not_modified(dtype):
    rng = np.random.default_rng(2)
    case = _random_case(rng, (2, 3, 5, 5), 3, (3, 3), groups=3, padding=2, dilation=2)
    case = case.astype(dtype)
    arrays = (case.x, case.weight, case.bias, case.gy)
    copies = [a.copy() for a in arrays]
    run_on_every_tier(_case_forward_backward, case)
    for original, copy in zip(arrays, copies):
        np.testing.assert_array_equal(original, copy)


def test_mixed_dtypes_promote_to_float64():
    """float32 x with a float64 weight (or bias, or gy) computes in float64."""
    rng = np.random.default_rng(4)
    case = _random_case(rng, (1, 2, 4, 4), 2, (3, 3), padding=1).astype(np.float32)
    for which in ("weight", "bias", "gy"):
        args = dict(x=case.x, weight=case.weight, bias=case.bias, gy=case.gy)
        args[which] = args[which].astype(np.float64)
        results = run_on_every_tier(_forward_backward, *args.values(), case.options,
                                    simulated_cuda=False)
        for tier, (y, *grads) in results.items():
            # gy only enters the backward: the forward of float32 x, weight, bias stays float32
            assert y.dtype == (np.float32 if which == "gy" else np.float64), f"{tier}: {which}"
            assert all(g.dtype == np.float64 for g in grads), f"{tier}: {which}"
