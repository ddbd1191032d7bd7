"""The pooling layers: ``MaxPool2d`` (a thin layer over the max_pool2d op, tested in
``tests/ops/test_max_pool2d.py``) and ``GlobalAvgPool2d``: finite-difference proofs, torch's
modules, the argmax a layer keeps, dtypes, empty batches and bad input.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchvision.nn import GlobalAvgPool2d, MaxPool2d
from scratchvision.ops import max_pool2d

from layer_checks import check_layer
from tiers import available_tiers

TIERS = available_tiers(offered=max_pool2d.TIERS)


def distinct(rng: np.random.Generator, shape) -> np.ndarray:
    """Entries at least 1e-2 apart (a random permutation): no ties, and a finite-difference
    step (1e-6) never changes which tap is a window's maximum."""
    return rng.permutation(int(np.prod(shape))).reshape(shape) * 1e-2


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("options", [dict(kernel_size=2), dict(kernel_size=3, stride=2,
                                                                padding=1, ceil_mode=True)])
def test_max_pool_layer_gradient_matches_finite_differences(tier, options):
    x = distinct(np.random.default_rng(7), (2, 2, 5, 6))
    check_layer(MaxPool2d(**options, backend=tier), x).raise_if_failed()


def test_layer_matches_torch_module_with_defaults():
    """stride defaults to kernel_size, as in torch.nn.MaxPool2d."""
    torch = pytest.importorskip("torch")
    x = distinct(np.random.default_rng(1), (2, 3, 7, 6))
    reference = torch.nn.MaxPool2d(3, padding=1, ceil_mode=True)
    np.testing.assert_array_equal(MaxPool2d(3, padding=1, ceil_mode=True)(x),
                                  reference(torch.tensor(x)).numpy())


# ----------------------------------------------------------------------------- the layer

def test_layer_remembers_the_argmax_of_its_latest_forward():
    pool = MaxPool2d(2)
    first = np.array([[[[1.0, 0.0], [0.0, 0.0]]]])
    second = np.array([[[[0.0, 0.0], [0.0, 1.0]]]])
    pool(first)
    pool(second)
    np.testing.assert_array_equal(pool.backward(np.ones((1, 1, 1, 1)))[0, 0],
                                  [[0.0, 0.0], [0.0, 1.0]])
    assert pool.parameters() == []


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept(tier, dtype):
    x = distinct(np.random.default_rng(0), (1, 2, 5, 4)).astype(dtype)
    pool = MaxPool2d(2, padding=1, backend=tier)
    y = pool(x)
    assert y.dtype == dtype
    assert pool.backward(np.ones_like(y)).dtype == dtype
    # max pooling selects, it does not round: float32 gives the float64 result's values
    np.testing.assert_array_equal(y, max_pool2d.forward(x.astype(np.float64), 2, padding=1))


def test_cuda_backend_pools_on_the_cpu():
    """No GPU kernel: "cuda" (e.g. from set_backend on a whole model) pools with a CPU tier."""
    x = distinct(np.random.default_rng(4), (1, 2, 4, 4))
    np.testing.assert_array_equal(MaxPool2d(2, backend="cuda")(x), max_pool2d.forward(x, 2))


def test_max_pool_layer_bad_input_is_a_clear_error():
    x = np.zeros((1, 1, 4, 4))
    for kwargs, error, match in [
        (dict(kernel_size=0), ValueError, "kernel_size must be positive"),
        (dict(kernel_size=3, padding=2), ValueError, "padding must be at most half of "
                                                     "kernel_size"),
        (dict(kernel_size=2, ceil_mode=1), TypeError, "ceil_mode must be True or False"),
        (dict(kernel_size=2, backend="gpu"), ValueError, "backend must be one of"),
    ]:
        with pytest.raises(error, match=match):
            MaxPool2d(**kwargs)
    pool = MaxPool2d(2)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        pool.backward(np.zeros((1, 1, 2, 2)))
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        pool(np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="empty output"):
        MaxPool2d(3, dilation=2)(x)
    pool(x)
    with pytest.raises(ValueError, match=r"grad must have shape \(1, 1, 2, 2\)"):
        pool.backward(np.zeros((1, 1, 3, 3)))
    assert MaxPool2d(2)(np.zeros((0, 2, 4, 4))).shape == (0, 2, 2, 2)


# ----------------------------------------------------------------------------- global average

@given(shape=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 4),
                       st.integers(1, 4)), seed=st.integers(0, 2**32 - 1))
def test_global_avg_pool_gradient_matches_finite_differences(shape, seed):
    x = np.random.default_rng(seed).standard_normal(shape)
    check_layer(GlobalAvgPool2d(), x).raise_if_failed()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_global_avg_pool_by_hand_and_dtype(dtype):
    pool = GlobalAvgPool2d()
    x = np.arange(12, dtype=dtype).reshape(1, 2, 2, 3)  # planes 0..5 and 6..11
    y = pool(x)
    assert y.dtype == dtype and y.shape == (1, 2, 1, 1)
    np.testing.assert_array_equal(y.ravel(), [2.5, 8.5])
    grad = pool.backward(np.array([6.0, 12.0], dtype=dtype).reshape(1, 2, 1, 1))
    assert grad.dtype == dtype
    np.testing.assert_array_equal(grad, np.repeat([1.0, 2.0], 6).reshape(1, 2, 2, 3))


def test_global_avg_pool_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(6).standard_normal((2, 3, 5, 4))
    np.testing.assert_allclose(
        GlobalAvgPool2d()(x),
        torch.nn.AdaptiveAvgPool2d(1)(torch.tensor(x)).numpy(), rtol=1e-14, atol=1e-15)
