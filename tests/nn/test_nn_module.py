"""The Module machinery: registration and names, gradients that accumulate, zero_grad,
train/eval, backends, state dicts (round trip, strictness, clear errors), Sequential."""

from __future__ import annotations

import numpy as np
import pytest

from scratchvision import nn

from layer_checks import check_layer


class TwoLayer(nn.Module):
    """A small user-defined model: registration by assignment, nested modules."""

    def __init__(self, rng):
        super().__init__()
        self.scale = nn.Parameter(np.array([2.0]))
        self.body = nn.Sequential(nn.Linear(3, 4, rng=rng), nn.ReLU(), nn.Linear(4, 2, rng=rng))

    def forward(self, x):
        features = self.body(x)
        self._save_for_backward(features=features)
        return self.scale.data * features

    def backward(self, grad):
        features = self._saved_for_backward()["features"]
        self.scale.accumulate(np.sum(grad * features, keepdims=True).reshape(1))
        return self.body.backward(grad * self.scale.data)


def _model(seed=0):
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, rng=seed), nn.ReLU(),
                         nn.DeformConv2d(3, 2, 3, padding=1, rng=seed + 1))


# ----------------------------------------------------------------------------- parameters

def test_parameter_copies_its_data_and_starts_with_zero_grad():
    source = np.arange(6.0).reshape(2, 3)
    param = nn.Parameter(source)
    source[0, 0] = 99.0
    assert param.data[0, 0] == 0.0, "the Parameter must own a copy"
    assert param.grad.shape == (2, 3) and param.grad.dtype == np.float64
    assert not param.grad.any()
    assert param.shape == (2, 3) and param.size == 6 and param.dtype == np.float64
    param.accumulate(np.ones((2, 3)))
    param.accumulate(np.ones((2, 3)))
    np.testing.assert_array_equal(param.grad, 2.0)
    param.zero_grad()
    assert not param.grad.any()
    with pytest.raises(ValueError, match="shape"):
        param.accumulate(np.ones(3))


def test_parameter_rejects_integer_data():
    with pytest.raises(TypeError, match="data"):
        nn.Parameter(np.arange(3))


# ----------------------------------------------------------------------------- registration

def test_named_parameters_follow_registration_order_with_dotted_names():
    model = _model()
    assert [name for name, _ in model.named_parameters()] == [
        "0.weight", "0.bias",
        "2.weight", "2.bias", "2.conv_offset.weight", "2.conv_offset.bias",
    ]
    assert model.parameters() == [p for _, p in model.named_parameters()]
    custom = TwoLayer(np.random.default_rng(0))
    assert [name for name, _ in custom.named_parameters()] == [
        "scale", "body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias"]


def test_layers_without_bias_register_no_bias():
    assert [n for n, _ in nn.Linear(3, 2, bias=False).named_parameters()] == ["weight"]
    assert [n for n, _ in nn.Conv2d(3, 2, 1, bias=False).named_parameters()] == ["weight"]
    assert [n for n, _ in nn.DeformConv2d(3, 2, 1, bias=False).named_parameters()] == [
        "weight", "conv_offset.weight", "conv_offset.bias"]


def test_reassigning_an_attribute_unregisters_it():
    layer = nn.Linear(3, 2, rng=0)
    layer.bias = None
    assert [n for n, _ in layer.named_parameters()] == ["weight"]


def test_assigning_before_super_init_is_a_clear_error():
    class Forgetful(nn.Module):
        def __init__(self):
            self.weight = nn.Parameter(np.zeros(2))

    with pytest.raises(AttributeError, match="super"):
        Forgetful()


def test_backward_before_forward_is_a_clear_error():
    for layer in (nn.Linear(2, 2), nn.ReLU(), nn.Conv2d(1, 1, 1), nn.DeformConv2d(1, 1, 1)):
        with pytest.raises(RuntimeError, match="before forward"):
            layer.backward(np.zeros((1, 1, 1, 1)))


def test_call_is_forward():
    layer = nn.Linear(3, 2, rng=0)
    x = np.random.default_rng(1).standard_normal((4, 3))
    np.testing.assert_array_equal(layer(x), layer.forward(x))


def test_repr_shows_the_tree():
    text = repr(_model())
    assert text.startswith("Sequential(")
    assert "(2): DeformConv2d(3, 2, kernel_size=(3, 3)" in text
    assert "(conv_offset): Conv2d(3, 27" in text


# ----------------------------------------------------------------------------- gradients

def test_zero_grad_clears_every_gradient():
    model = _model()
    x = np.random.default_rng(2).standard_normal((1, 2, 5, 5))
    y = model(x)
    model.backward(np.ones_like(y))
    assert all(p.grad.any() for p in model.parameters())
    model.zero_grad()
    assert not any(p.grad.any() for p in model.parameters())


@pytest.mark.parametrize("make", [
    lambda: (nn.Linear(3, 2, rng=0), (4, 3)),
    lambda: (nn.Conv2d(2, 3, 3, padding=1, rng=0), (2, 2, 5, 5)),
    lambda: (nn.DeformConv2d(2, 3, 3, padding=1, rng=0), (2, 2, 5, 5)),
    lambda: (_model(), (1, 2, 5, 5)),
], ids=["Linear", "Conv2d", "DeformConv2d", "Sequential"])
def test_two_backward_calls_add_their_gradients(make):
    """backward accumulates (+=): two calls give twice the gradient of one, and the input
    gradient it returns is the same each time (it is not accumulated)."""
    layer, shape = make()
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape)
    y = layer(x)
    gy = rng.standard_normal(y.shape)
    grad_x_once = layer.backward(gy)
    once = [p.grad.copy() for p in layer.parameters()]
    grad_x_twice = layer.backward(gy)
    for param, grad in zip(layer.parameters(), once):
        np.testing.assert_allclose(param.grad, 2 * grad, rtol=1e-14, atol=0)
    np.testing.assert_array_equal(grad_x_once, grad_x_twice)


def test_backward_refers_to_the_most_recent_forward():
    layer = nn.Linear(3, 2, rng=0)
    rng = np.random.default_rng(4)
    x_old, x_new = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    gy = rng.standard_normal((5, 2))
    layer(x_old)
    layer(x_new)
    layer.backward(gy)
    np.testing.assert_allclose(layer.weight.grad, gy.T @ x_new, rtol=1e-14)


# ----------------------------------------------------------------------------- modes, backends

def test_train_and_eval_set_the_flag_everywhere():
    model = _model()
    assert all(m.training for m in model.modules())
    assert model.eval() is model
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_set_backend_reaches_every_op_calling_layer():
    model = _model()
    assert model.set_backend("numpy") is model
    assert {m.backend for m in model.modules() if hasattr(m, "backend")} == {"numpy"}
    assert model[2].conv_offset.backend == "numpy"
    with pytest.raises(ValueError, match="backend"):
        model.set_backend("gpu")


# ----------------------------------------------------------------------------- state dicts

def test_state_dict_round_trip():
    source, target = _model(seed=0), _model(seed=10)
    state = source.state_dict()
    assert list(state) == [name for name, _ in source.named_parameters()]
    target.load_state_dict(state)
    for (name, a), (_, b) in zip(source.named_parameters(), target.named_parameters()):
        np.testing.assert_array_equal(a.data, b.data, err_msg=name)
    x = np.random.default_rng(5).standard_normal((2, 2, 6, 6))
    np.testing.assert_array_equal(source(x), target(x))


def test_state_dict_holds_copies_and_load_copies_in_place():
    layer = nn.Linear(3, 2, rng=0)
    weight_array = layer.weight.data
    state = layer.state_dict()
    state["weight"][...] = 7.0
    assert not (layer.weight.data == 7.0).any(), "state_dict must return copies"
    layer.load_state_dict(state)
    assert layer.weight.data is weight_array, "load must write into the existing arrays"
    np.testing.assert_array_equal(layer.weight.data, 7.0)
    state["weight"][...] = 8.0
    assert (layer.weight.data == 7.0).all(), "load must copy, not keep the caller's array"


def test_load_casts_to_the_parameter_dtype():
    layer = nn.Linear(3, 2, rng=0, dtype=np.float32)
    layer.load_state_dict({"weight": np.ones((2, 3)), "bias": np.zeros(2)})
    assert layer.weight.dtype == np.float32
    np.testing.assert_array_equal(layer.weight.data, 1.0)


def test_load_state_dict_names_missing_and_unexpected_keys():
    layer = nn.Conv2d(2, 3, 3, rng=0)
    state = layer.state_dict()
    missing = {"weight": state["weight"]}
    with pytest.raises(KeyError, match=r"missing keys \['bias'\]"):
        layer.load_state_dict(missing)
    unexpected = dict(state, running_mean=np.zeros(3))
    with pytest.raises(KeyError, match=r"unexpected keys \['running_mean'\]"):
        layer.load_state_dict(unexpected)


def test_load_state_dict_names_a_wrong_shape_and_changes_nothing():
    layer = nn.DeformConv2d(2, 3, 3, rng=0)
    before = layer.state_dict()
    state = {name: value + 1.0 for name, value in before.items()}
    state["conv_offset.bias"] = np.zeros(18)  # a DCNv1 offset conv's bias
    with pytest.raises(ValueError, match=r"state_dict\['conv_offset.bias'\] has shape \(18,\)"):
        layer.load_state_dict(state)
    for name, value in layer.state_dict().items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_load_state_dict_rejects_integer_arrays():
    layer = nn.Linear(2, 2, rng=0)
    with pytest.raises(TypeError, match=r"state_dict\['weight'\]"):
        layer.load_state_dict({"weight": np.ones((2, 2), dtype=int), "bias": np.zeros(2)})


# ----------------------------------------------------------------------------- Sequential

def test_sequential_chains_forward_and_backward():
    rng = np.random.default_rng(6)
    first, act, second = nn.Linear(3, 4, rng=rng), nn.ReLU(), nn.Linear(4, 2, rng=rng)
    model = nn.Sequential(first, act, second)
    assert len(model) == 3 and model[1] is act and list(model) == [first, act, second]
    x = rng.standard_normal((5, 3))
    np.testing.assert_array_equal(model(x), second(act(first(x))))
    gy = rng.standard_normal((5, 2))
    grad_x = model.backward(gy)
    expected = first.weight.data.T @ ((second.weight.data.T @ gy.T) * (first(x) > 0).T)
    np.testing.assert_allclose(grad_x, expected.T, rtol=1e-12)


def test_composed_models_pass_gradcheck():
    """Sequential and a user-defined Module: the chain rule through several layers, and a
    parameter of the user's own (``scale``). Fixed seeds keep every ReLU input far (> 1e-3)
    from its kink at 0, which the assertion below confirms."""
    rng = np.random.default_rng(12)
    stack = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, rng=rng, backend="numpy"), nn.ReLU(),
                          nn.Conv2d(3, 2, (1, 2), stride=(1, 2), rng=rng, backend="numpy"))
    x = rng.standard_normal((2, 2, 4, 4))
    assert np.abs(stack[0](x)).min() > 1e-3
    check_layer(stack, x).raise_if_failed()

    custom = TwoLayer(rng)
    x = rng.standard_normal((5, 3))
    assert np.abs(custom.body[0](x)).min() > 1e-3
    check_layer(custom, x).raise_if_failed()


def test_wrapped_methods_wraps_one_instance_and_restores_it_even_after_an_error():
    from scratchvision.nn import Linear, wrapped_methods

    probed, other = Linear(2, 2, rng=0), Linear(2, 2, rng=1)
    calls = []

    def counting(original):
        def forward(x):
            calls.append(x.shape)
            return original(x)
        return forward

    x = np.ones((3, 2))
    with pytest.raises(RuntimeError, match="inside"):
        with wrapped_methods([(probed, "forward", counting)]):
            np.testing.assert_array_equal(probed(x), x @ probed.weight.data.T
                                          + probed.bias.data)
            other(x)  # another instance of the class is not wrapped
            raise RuntimeError("inside")
    assert calls == [(3, 2)]
    assert "forward" not in vars(probed)
    probed(x)
    assert calls == [(3, 2)]  # back to the class's method
