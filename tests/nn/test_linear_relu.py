"""``Linear`` and ``ReLU``: finite-difference proofs of every gradient, torch's initialisation
and state_dict names, outputs and gradients equal to torch's for the same weights, dtypes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from scratchvision import nn

from layer_checks import check_layer


@given(in_features=st.integers(1, 5), out_features=st.integers(1, 4), bias=st.booleans(),
       lead=st.lists(st.integers(1, 3), min_size=0, max_size=2), seed=st.integers(0, 2**32 - 1))
def test_linear_gradients_match_finite_differences(in_features, out_features, bias, lead, seed):
    """Input, weight and bias; any number of leading dimensions (..., in_features)."""
    event(f"{len(lead)} leading dimension(s), bias={bias}")
    rng = np.random.default_rng(seed)
    layer = nn.Linear(in_features, out_features, bias=bias, rng=rng)
    x = rng.standard_normal(tuple(lead) + (in_features,))
    check_layer(layer, x).raise_if_failed()


@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), seed=st.integers(0, 2**32 - 1))
def test_relu_gradient_matches_finite_differences(shape, seed):
    """Entries are kept 1e-3 away from the kink at 0, far beyond gradcheck's step of 1e-6."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    x = np.where(np.abs(x) < 1e-3, 0.5, x)
    check_layer(nn.ReLU(), x).raise_if_failed()


def test_relu_gradient_at_zero_is_zero_as_in_torch():
    relu = nn.ReLU()
    x = np.array([-1.0, 0.0, 2.0, np.nan])
    np.testing.assert_array_equal(relu(x), [0.0, 0.0, 2.0, np.nan])
    np.testing.assert_array_equal(relu.backward(np.full(4, 3.0)), [0.0, 0.0, 3.0, 0.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes_are_kept(dtype):
    linear = nn.Linear(3, 2, rng=0, dtype=dtype)
    assert linear.weight.dtype == dtype and linear.weight.grad.dtype == dtype
    x = np.ones((4, 3), dtype=dtype)
    y = linear(x)
    assert y.dtype == dtype
    assert linear.backward(np.ones_like(y)).dtype == dtype
    relu = nn.ReLU()
    assert relu(x).dtype == dtype and relu.backward(x).dtype == dtype


def test_linear_init_follows_torch():
    """U(-1/sqrt(in), 1/sqrt(in)) for weight and bias; the same seed gives the same layer."""
    layer = nn.Linear(400, 300, rng=0)
    bound = 1 / np.sqrt(400)
    for param in (layer.weight, layer.bias):
        assert np.abs(param.data).max() <= bound
        assert np.abs(param.data).max() > 0.95 * bound  # spread over the whole interval
    # the variance of U(-b, b) is b**2 / 3; 120000 draws pin it to about 1 %
    np.testing.assert_allclose(layer.weight.data.var(), bound**2 / 3, rtol=0.03)
    np.testing.assert_array_equal(nn.Linear(400, 300, rng=0).weight.data, layer.weight.data)
    assert layer.weight.shape == (300, 400) and layer.bias.shape == (300,)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="in_features"):
        nn.Linear(0, 2)
    with pytest.raises(TypeError, match="rng"):
        nn.Linear(2, 2, rng="seed")
    with pytest.raises(TypeError, match="dtype"):
        nn.Linear(2, 2, dtype=np.int32)
    with pytest.raises(ValueError, match="x must have a last dimension of size 2"):
        nn.Linear(2, 2)(np.ones((3, 4)))
    with pytest.raises(TypeError, match="x must be a float32 or float64"):
        nn.ReLU()(np.arange(3))
    layer = nn.Linear(2, 3)
    layer(np.ones((4, 2)))
    with pytest.raises(ValueError, match="grad must have shape"):
        layer.backward(np.ones((4, 2)))


def test_linear_loads_torch_and_matches_it():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    reference = torch.nn.Linear(5, 3).double()
    layer = nn.Linear(5, 3)
    layer.load_state_dict({k: v.detach().numpy() for k, v in reference.state_dict().items()})
    rng = np.random.default_rng(0)
    x, gy = rng.standard_normal((2, 4, 5)), rng.standard_normal((2, 4, 3))
    x_torch = torch.tensor(x, requires_grad=True)
    y_torch = reference(x_torch)
    y_torch.backward(torch.tensor(gy))
    np.testing.assert_allclose(layer(x), y_torch.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(layer.backward(gy), x_torch.grad.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(layer.weight.grad, reference.weight.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(layer.bias.grad, reference.bias.grad.numpy(), rtol=1e-12)
