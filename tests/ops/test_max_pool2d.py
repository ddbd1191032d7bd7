"""The max_pool2d op: finite-difference proofs on every tier, tiers agreeing bit for bit
(argmax included, ties and NaN too), hand-worked windows for the size rules, torch's values,
argmax and gradients (ties, NaN, -inf, ceil_mode, padding, dilation), bad input and layouts.
The layer ``MaxPool2d`` is tested in ``tests/nn/test_pooling.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import assume, event, given
from hypothesis import strategies as st

from scratchvision import BackendUnavailableError, gradcheck
from scratchvision.ops import max_pool2d
from scratchvision.ops.max_pool2d import pool_geometry

from tiers import assert_each_tier_equal, available_tiers, awkward_layouts, run_on_every_tier

POOL_TIERS = max_pool2d.TIERS
TIERS = available_tiers(offered=POOL_TIERS)


def max_pool2d_backward(*args, **kwargs) -> np.ndarray:
    """The op's backward, its one gradient unwrapped."""
    return max_pool2d.backward(*args, **kwargs).grad_input


max_pool2d_with_indices = max_pool2d.forward_with_indices


@dataclass(frozen=True)
class PoolConfig:
    """One drawn pooling: the input shape and the hyper-parameters (pairs along H, W)."""

    shape: tuple[int, int, int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    ceil_mode: bool

    @property
    def args(self) -> tuple:
        return self.kernel, self.stride, self.padding, self.dilation, self.ceil_mode

    def windows_all_hold_a_pixel(self) -> bool:
        """Whether every window has an in-bounds tap (with dilation a window can straddle a
        small input; torch records a meaningless index there)."""
        out = pool_geometry(self.shape[2:], *self.args).out
        for size, o_size, k, s, p, d in zip(self.shape[2:], out, self.kernel, self.stride,
                                            self.padding, self.dilation):
            for o in range(o_size):
                if not any(0 <= o * s - p + t * d < size for t in range(k)):
                    return False
        return True


@st.composite
def pool_configs(draw, max_side: int = 6, max_planes: int = 2) -> PoolConfig:
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    config = PoolConfig(
        shape=(draw(st.integers(1, max_planes)), draw(st.integers(1, max_planes)),
               draw(st.integers(1, max_side)), draw(st.integers(1, max_side))),
        kernel=kernel,
        stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        padding=(draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2))),
        dilation=(draw(st.integers(1, 2)), draw(st.integers(1, 2))),
        ceil_mode=draw(st.booleans()))
    try:
        pool_geometry(config.shape[2:], *config.args)
    except ValueError:
        assume(False)  # the output would be empty: drawn too small an input
    event(f"ceil_mode={config.ceil_mode}, dilation={config.dilation}")
    return config


def distinct(rng: np.random.Generator, shape) -> np.ndarray:
    """Entries at least 1e-2 apart (a random permutation): no ties, and a finite-difference
    step (1e-6) never changes which tap is a window's maximum."""
    return rng.permutation(int(np.prod(shape))).reshape(shape) * 1e-2


def with_ties(rng: np.random.Generator, shape, special: str) -> np.ndarray:
    """Small integers (many ties), optionally with some NaN or -inf entries."""
    x = rng.integers(-2, 3, shape).astype(np.float64)
    if special != "none":
        x[rng.random(shape) < 0.3] = np.nan if special == "nan" else -np.inf
    return x


# ----------------------------------------------------------------------------- tiers

@given(config=pool_configs(), special=st.sampled_from(["none", "nan", "-inf"]),
       seed=st.integers(0, 2**32 - 1))
def test_tiers_agree_bit_for_bit_with_ties_nan_and_inf(config, special, seed):
    """Selection, not arithmetic: values, argmax and gradients are the same bits on every
    tier (the gradient sums at most a few gy values, in window order on every tier)."""
    rng = np.random.default_rng(seed)
    x = with_ties(rng, config.shape, special)
    results = run_on_every_tier(max_pool2d_with_indices, x, *config.args, offered=POOL_TIERS)
    assert_each_tier_equal(results, results["loop"])
    gy = rng.standard_normal(results["loop"][0].shape)
    grads = run_on_every_tier(max_pool2d_backward, gy, x, *config.args, offered=POOL_TIERS)
    for tier, grad in grads.items():
        np.testing.assert_allclose(grad, grads["loop"], rtol=1e-15, atol=1e-15, err_msg=tier)


@pytest.mark.parametrize("tier", TIERS)
@given(config=pool_configs(max_side=5), seed=st.integers(0, 2**32 - 1))
def test_gradient_matches_finite_differences(tier, config, seed):
    assume(config.windows_all_hold_a_pixel())  # an empty window outputs -inf
    x = distinct(np.random.default_rng(seed), config.shape)
    gradcheck(lambda x: max_pool2d.forward(x, *config.args, backend=tier),
              lambda gy, x: max_pool2d.backward(gy, x, *config.args, backend=tier),
              {"x": x}, seed=seed % 2**31).raise_if_failed()


# ----------------------------------------------------------------------------- by hand

@pytest.mark.parametrize("tier", TIERS)
def test_floor_and_ceil_mode_by_hand(tier):
    x = np.arange(25.0).reshape(1, 1, 5, 5)
    np.testing.assert_array_equal(max_pool2d.forward(x, 2, backend=tier)[0, 0], [[6, 8], [16, 18]])
    # ceil_mode keeps the partial windows at the right and bottom
    np.testing.assert_array_equal(max_pool2d.forward(x, 2, ceil_mode=True, backend=tier)[0, 0],
                                  [[6, 8, 9], [16, 18, 19], [21, 23, 24]])
    # windows of 2 with padding 1 start at -1, 1 and 3 along a row of 3: the third would start
    # in the right padding, so ceil_mode drops it (2 outputs, not 3)
    row = np.array([4.0, 1.0, 7.0]).reshape(1, 1, 1, 3)
    np.testing.assert_array_equal(
        max_pool2d.forward(row, (1, 2), (1, 2), (0, 1), ceil_mode=True, backend=tier)[0, 0],
        [[4, 7]])


@pytest.mark.parametrize("tier", TIERS)
def test_gradient_goes_to_the_first_of_tied_maxima_and_adds_up(tier):
    tied = np.array([1.0, 3.0, 3.0, 2.0]).reshape(1, 1, 1, 4)
    y, index = max_pool2d_with_indices(tied, (1, 4), backend=tier)
    assert y[0, 0, 0, 0] == 3.0 and index[0, 0, 0, 0] == 1
    np.testing.assert_array_equal(
        max_pool2d_backward(np.full((1, 1, 1, 1), 2.5), tied, (1, 4), backend=tier)[0, 0, 0],
        [0.0, 2.5, 0.0, 0.0])
    # overlapping windows [0, 5] and [5, 1] both choose the 5: its gradient is the sum
    shared = np.array([0.0, 5.0, 1.0]).reshape(1, 1, 1, 3)
    gy = np.array([2.0, 3.0]).reshape(1, 1, 1, 2)
    np.testing.assert_array_equal(
        max_pool2d_backward(gy, shared, (1, 2), 1, backend=tier)[0, 0, 0], [0.0, 5.0, 0.0])


@pytest.mark.parametrize("tier", TIERS)
def test_constant_input_sends_each_gradient_to_the_top_left_of_its_window(tier):
    """The tie example of docs/derivations/max_pool2d.md: a constant 4x4 input, 3x3 windows,
    stride 1, padding 1, gradient 1 everywhere; each window's first in-bounds tap wins."""
    x = np.ones((1, 1, 4, 4))
    grad = max_pool2d_backward(np.ones((1, 1, 4, 4)), x, 3, 1, 1, backend=tier)
    np.testing.assert_array_equal(grad[0, 0], [[4, 2, 2, 0], [2, 1, 1, 0], [2, 1, 1, 0],
                                               [0, 0, 0, 0]])


@pytest.mark.parametrize("tier", TIERS)
def test_nan_inf_and_windows_without_pixels_by_hand(tier):
    nan = np.array([np.nan, 1.0, np.nan, 2.0]).reshape(1, 1, 1, 4)
    y, index = max_pool2d_with_indices(nan, (1, 4), backend=tier)
    assert np.isnan(y[0, 0, 0, 0]) and index[0, 0, 0, 0] == 2  # the last NaN
    # windows [pad, 0], [0, 1], [1, pad] of a row of -inf: the first in-bounds tap
    minus_inf = np.full((1, 1, 1, 2), -np.inf)
    y, index = max_pool2d_with_indices(minus_inf, (1, 2), 1, (0, 1), backend=tier)
    np.testing.assert_array_equal(y[0, 0, 0], [-np.inf] * 3)
    np.testing.assert_array_equal(index[0, 0, 0], [0, 0, 1])
    # one column, taps at columns -1, 1, 3 (dilation 2): no window holds a pixel
    narrow = np.array([[[[1.0], [2.0]]]])
    args = ((1, 3), (1, 3), (0, 1), (1, 2), True)
    y, index = max_pool2d_with_indices(narrow, *args, backend=tier)
    np.testing.assert_array_equal(y, np.full((1, 1, 2, 1), -np.inf))
    np.testing.assert_array_equal(index, np.full((1, 1, 2, 1), -1))
    np.testing.assert_array_equal(max_pool2d_backward(np.ones((1, 1, 2, 1)), narrow, *args,
                                                      backend=tier), np.zeros_like(narrow))


# ----------------------------------------------------------------------------- torch

@given(config=pool_configs(), special=st.sampled_from(["none", "nan", "-inf"]),
       seed=st.integers(0, 2**32 - 1))
def test_matches_torch_values_argmax_and_gradient(config, special, seed):
    """F.max_pool2d(return_indices=True) and autograd, with ties, NaN, -inf, padding,
    dilation and ceil_mode; windows without pixels are compared by value only (torch records
    an index outside the window there)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    x = with_ties(rng, config.shape, special)
    x_torch = torch.tensor(x, requires_grad=True)
    y_torch, index_torch = torch.nn.functional.max_pool2d(
        x_torch, config.kernel, config.stride, config.padding, config.dilation,
        config.ceil_mode, return_indices=True)
    y, index = max_pool2d_with_indices(x, *config.args, backend="numpy")
    np.testing.assert_array_equal(y, y_torch.detach().numpy())
    if not config.windows_all_hold_a_pixel():
        event("a window without pixels")
        return
    np.testing.assert_array_equal(index, index_torch.numpy())
    gy = rng.standard_normal(y.shape)
    y_torch.backward(torch.tensor(gy))
    np.testing.assert_allclose(max_pool2d_backward(gy, x, *config.args, backend="numpy"),
                               x_torch.grad.numpy(), rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("tier", TIERS)
def test_layouts_empty_batch_and_no_mutation(tier):
    x = distinct(np.random.default_rng(2), (2, 2, 5, 6))
    gy = np.random.default_rng(3).standard_normal((2, 2, 3, 4))
    expected_y = max_pool2d.forward(x, 2, padding=1, backend=tier)
    expected_grad = max_pool2d_backward(gy, x, 2, padding=1, backend=tier)
    for layout, view in awkward_layouts(x).items():
        before = view.copy()
        np.testing.assert_array_equal(max_pool2d.forward(view, 2, padding=1, backend=tier),
                                      expected_y, err_msg=layout)
        np.testing.assert_array_equal(
            max_pool2d_backward(awkward_layouts(gy)[layout], view, 2, padding=1, backend=tier),
            expected_grad, err_msg=layout)
        np.testing.assert_array_equal(view, before, err_msg=layout)
    assert max_pool2d.forward(np.zeros((0, 2, 5, 6)), 2, padding=1,
                              backend=tier).shape == (0, 2, 3, 4)
    assert max_pool2d_backward(np.zeros((0, 2, 3, 4)), np.zeros((0, 2, 5, 6)), 2, padding=1,
                               backend=tier).shape == (0, 2, 5, 6)


def test_numba_runs_are_bit_identical():
    if "numba" not in TIERS:
        pytest.skip("numba is not available")
    rng = np.random.default_rng(5)
    x = with_ties(rng, (2, 3, 9, 8), "none")
    gy = rng.standard_normal((2, 3, 8, 7))
    first = max_pool2d_backward(gy, x, 2, 1, backend="numba")
    np.testing.assert_array_equal(max_pool2d_backward(gy, x, 2, 1, backend="numba"), first)


def test_bad_arguments_are_clear_errors():
    x = np.zeros((1, 1, 4, 4))
    for kwargs, error, match in [
        (dict(kernel_size=0), ValueError, "kernel_size must be positive"),
        (dict(kernel_size=2, stride=0), ValueError, "stride must be positive"),
        (dict(kernel_size=2, padding=-1), ValueError, "padding must be >= 0"),
        (dict(kernel_size=3, padding=2), ValueError, "padding must be at most half of "
                                                     "kernel_size"),
        (dict(kernel_size=2, dilation=0), ValueError, "dilation must be positive"),
        (dict(kernel_size=2, ceil_mode=1), TypeError, "ceil_mode must be True or False"),
        (dict(kernel_size=2.0), TypeError, "kernel_size must be an integer"),
        (dict(kernel_size=2, backend="gpu"), ValueError, "backend must be one of"),
    ]:
        with pytest.raises(error, match=match):
            max_pool2d.forward(x, **kwargs)
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        max_pool2d.forward(np.zeros((1, 4, 4)), 2)
    with pytest.raises(TypeError, match="x must be a float32 or float64 array"):
        max_pool2d.forward(np.zeros((1, 1, 4, 4), dtype=np.int64), 2)
    with pytest.raises(ValueError, match="x must have a non-empty height and width"):
        max_pool2d.forward(np.zeros((1, 1, 0, 4)), 2)
    with pytest.raises(ValueError, match="empty output"):
        max_pool2d.forward(x, 3, dilation=2)
    with pytest.raises(BackendUnavailableError, match="max_pool2d has no cuda tier"):
        max_pool2d.forward(x, 2, backend="cuda")
    with pytest.raises(ValueError, match=r"gy must have shape \(1, 1, 2, 2\)"):
        max_pool2d_backward(np.zeros((1, 1, 3, 3)), x, 2)
