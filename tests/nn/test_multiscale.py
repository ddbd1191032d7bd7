"""``InceptionBlock`` and ``ASPP``: finite-difference proofs for the input and every parameter,
output shapes and channel order worked out by hand, agreement with the same blocks written
with torch's functions (outputs and autograd gradients), parameter names, dtypes, bad input;
and the layer check cases that ``scratchvision check`` runs.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from scratchvision.verify.layers import CHECK_CASES
from scratchvision.verify.max_pool2d import distinct_values
from scratchvision.nn.multiscale import (ASPP, InceptionBlock, concat_channels,
                                         split_channels)
from scratchvision.ops import bilinear
from scratchvision.selfcheck import check_case

from layer_checks import check_layer

#: the layers route their work to the ops, whose tiers are proved in tests/ops; here the loop
#: tier gets one small block and numpy the drawn ones
FD_TIER = "numpy"


def _torch_parameters(layer, torch):
    """{name: float64 leaf tensor requiring grad} with the layer's parameter values."""
    return {name: torch.tensor(param.data, requires_grad=True)
            for name, param in layer.named_parameters()}


def _compare_with_torch(layer, x, reference, torch):
    """Run ``layer`` and ``reference(x_torch, params)`` (torch functions, same weights) on x
    with the same random upstream gradient; compare outputs and every gradient."""
    params = _torch_parameters(layer, torch)
    x_torch = torch.tensor(x, requires_grad=True)
    y_torch = reference(x_torch, params)
    y = layer(x)
    np.testing.assert_allclose(y, y_torch.detach().numpy(), rtol=1e-12, atol=1e-13)
    gy = np.random.default_rng(0).standard_normal(y.shape)
    y_torch.backward(torch.tensor(gy))
    layer.zero_grad()
    np.testing.assert_allclose(layer.backward(gy), x_torch.grad.numpy(), rtol=1e-12,
                               atol=1e-13)
    for name, param in layer.named_parameters():
        np.testing.assert_allclose(param.grad, params[name].grad.numpy(), rtol=1e-12,
                                   atol=1e-13, err_msg=name)


# ----------------------------------------------------------------------------- concatenation

def test_concat_and_split_by_hand():
    a = np.zeros((2, 1, 3, 3))
    b = np.ones((2, 2, 3, 3))
    y = concat_channels([a, b])
    assert y.shape == (2, 3, 3, 3)
    assert (y[:, 0] == 0).all() and (y[:, 1:] == 1).all()
    parts = split_channels(np.arange(2 * 3 * 9.0).reshape(2, 3, 3, 3), [1, 2])
    assert [p.shape for p in parts] == [(2, 1, 3, 3), (2, 2, 3, 3)]
    assert parts[0][1, 0, 0, 0] == 27.0 and parts[1][0, 0, 0, 0] == 9.0


# ----------------------------------------------------------------------------- Inception

@st.composite
def inception_args(draw) -> dict:
    names = ("ch1x1", "ch3x3red", "ch3x3", "ch5x5red", "ch5x5", "pool_proj")
    return dict(in_channels=draw(st.integers(1, 2)),
                **{name: draw(st.integers(1, 2)) for name in names})


@given(args=inception_args(), batch=st.integers(1, 2), height=st.integers(1, 5),
       width=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_inception_gradients_match_finite_differences(args, batch, height, width, seed):
    """Input (through all four branches, the max pool included) and all ten parameters.
    The input's entries are distinct (no max-pool ties)."""
    event(f"{height}x{width} input")
    rng = np.random.default_rng(seed)
    block = InceptionBlock(**args, rng=rng, backend=FD_TIER)
    x = distinct_values(rng, (batch, args["in_channels"], height, width))
    check_layer(block, x).raise_if_failed()


def test_inception_gradients_on_the_loop_tier():
    rng = np.random.default_rng(7)
    block = InceptionBlock(2, 1, 1, 1, 1, 1, 1, rng=rng, backend="loop")
    check_layer(block, distinct_values(rng, (1, 2, 4, 3))).raise_if_failed()


def test_inception_shape_and_channel_order_by_hand():
    """Zero weights and a different positive bias per branch: each branch outputs its last
    bias everywhere, so the output's channels read 1 | 2 2 | 3 3 3 | 4 in branch order."""
    block = InceptionBlock(3, 1, 2, 2, 1, 3, 1, rng=0, backend="numpy")
    for name, param in block.named_parameters():
        param.data[...] = 0.0 if name.endswith("weight") else 0.5
    for value, branch in enumerate((block.branch1, block.branch2, block.branch3,
                                    block.branch4), start=1):
        branch[-2].bias.data[...] = value  # the last convolution, before its ReLU
    y = block(np.random.default_rng(0).standard_normal((2, 3, 5, 4)))
    assert y.shape == (2, 7, 5, 4) and block.out_channels == 7
    expected = np.array([1, 2, 2, 3, 3, 3, 4], dtype=float)[None, :, None, None]
    np.testing.assert_array_equal(y, np.broadcast_to(expected, (2, 7, 5, 4)))


def test_inception_parameter_names():
    block = InceptionBlock(3, 1, 2, 2, 1, 3, 1, rng=0)
    names = [name for name, _ in block.named_parameters()]
    assert names == [f"{prefix}.{kind}" for prefix in ("branch1.0", "branch2.0", "branch2.2",
                                                       "branch3.0", "branch3.2", "branch4.1")
                     for kind in ("weight", "bias")]
    assert block.branch3[2].weight.shape == (3, 1, 5, 5)  # the paper's 5x5
    assert block.branch2[2].weight.shape == (2, 2, 3, 3)


def test_inception_matches_torch():
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    block = InceptionBlock(3, 2, 2, 3, 1, 2, 2, rng=1, backend="numpy")
    x = distinct_values(np.random.default_rng(1), (2, 3, 6, 5))

    def reference(x, p):
        def conv_relu(z, prefix, padding=0):
            return functional.relu(functional.conv2d(z, p[f"{prefix}.weight"],
                                                     p[f"{prefix}.bias"], padding=padding))
        b1 = conv_relu(x, "branch1.0")
        b2 = conv_relu(conv_relu(x, "branch2.0"), "branch2.2", padding=1)
        b3 = conv_relu(conv_relu(x, "branch3.0"), "branch3.2", padding=2)
        b4 = conv_relu(functional.max_pool2d(x, 3, stride=1, padding=1), "branch4.1")
        return torch.cat([b1, b2, b3, b4], dim=1)

    _compare_with_torch(block, x, reference, torch)


# ----------------------------------------------------------------------------- ASPP

@given(in_channels=st.integers(1, 2), out_channels=st.integers(1, 2),
       rates=st.lists(st.integers(1, 3), min_size=1, max_size=2), height=st.integers(1, 5),
       width=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_aspp_gradients_match_finite_differences(in_channels, out_channels, rates, height,
                                                 width, seed):
    """Input (through every branch and the image pooling) and every parameter; rates as
    large as the map (taps that read only padding)."""
    event(f"{len(rates)} rate(s)")
    rng = np.random.default_rng(seed)
    aspp = ASPP(in_channels, out_channels, rates=rates, rng=rng, backend=FD_TIER)
    x = rng.standard_normal((1, in_channels, height, width))
    check_layer(aspp, x).raise_if_failed()


def test_aspp_gradients_on_the_loop_tier():
    rng = np.random.default_rng(8)
    aspp = ASPP(2, 1, rates=(1, 2), rng=rng, backend="loop")
    check_layer(aspp, rng.standard_normal((1, 2, 3, 4))).raise_if_failed()


def test_aspp_channel_order_by_hand():
    """Zero weights and bias k + 1 for branch k (convs.0, the two rates, the pooling): every
    branch outputs k + 1 on all its 4 channels. The projection's output channel o copies its
    input channel 4 o (weight 1), the first channel of branch o, so it reads o + 1."""
    aspp = ASPP(3, 4, rates=(2, 4), rng=0, backend="numpy")
    for name, param in aspp.named_parameters():
        param.data[...] = 0.0
    for k, branch in enumerate(aspp.convs):
        conv = branch[1] if k == len(aspp.convs) - 1 else branch[0]  # the pool comes first
        conv.bias.data[...] = k + 1
    for o in range(4):
        aspp.project[0].weight.data[o, 4 * o] = 1.0
    y = aspp(np.random.default_rng(1).standard_normal((2, 3, 5, 6)))
    assert y.shape == (2, 4, 5, 6)
    np.testing.assert_array_equal(
        y, np.broadcast_to(np.array([1.0, 2.0, 3.0, 4.0])[None, :, None, None], y.shape))


def test_aspp_parameter_names_and_dilations():
    aspp = ASPP(3, 2, rates=(2, 4), rng=0)
    names = [name for name, _ in aspp.named_parameters()]
    assert names == [f"{prefix}.{kind}" for prefix in ("convs.0.0", "convs.1.0", "convs.2.0",
                                                       "convs.3.1", "project.0")
                     for kind in ("weight", "bias")]
    assert [aspp.convs[k][0].dilation for k in (1, 2)] == [(2, 2), (4, 4)]
    assert [aspp.convs[k][0].padding for k in (1, 2)] == [(2, 2), (4, 4)]
    assert aspp.project[0].weight.shape == (2, 8, 1, 1)


def test_aspp_image_pooling_branch_is_the_bilinear_upsampling_of_one_pixel():
    aspp = ASPP(2, 3, rates=(1,), rng=2, backend="numpy")
    x = np.random.default_rng(2).standard_normal((2, 2, 4, 5))
    pooling = aspp.convs[2]
    y = pooling(x)
    one_pixel = np.maximum(pooling[1](x.mean(axis=(2, 3), keepdims=True)), 0)
    np.testing.assert_allclose(y, bilinear.resize(one_pixel, (4, 5), backend="numpy"),
                               rtol=1e-15, atol=1e-15)


def test_aspp_matches_torch():
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    aspp = ASPP(3, 2, rates=(1, 3), rng=3, backend="numpy")
    x = np.random.default_rng(3).standard_normal((2, 3, 6, 7))

    def reference(x, p):
        def conv_relu(z, prefix, **kwargs):
            return functional.relu(functional.conv2d(z, p[f"{prefix}.weight"],
                                                     p[f"{prefix}.bias"], **kwargs))
        branches = [conv_relu(x, "convs.0.0")]
        branches += [conv_relu(x, f"convs.{k}.0", padding=rate, dilation=rate)
                     for k, rate in enumerate((1, 3), start=1)]
        pooled = conv_relu(functional.adaptive_avg_pool2d(x, 1), "convs.3.1")
        branches.append(functional.interpolate(pooled, size=x.shape[-2:], mode="bilinear",
                                               align_corners=False))
        return conv_relu(torch.cat(branches, dim=1), "project.0")

    _compare_with_torch(aspp, x, reference, torch)


# ----------------------------------------------------------------------------- both

@pytest.mark.parametrize("make", [
    lambda dtype: InceptionBlock(2, 1, 1, 2, 1, 1, 1, rng=0, dtype=dtype, backend="numpy"),
    lambda dtype: ASPP(2, 3, rates=(1, 2), rng=0, dtype=dtype, backend="numpy"),
], ids=["InceptionBlock", "ASPP"])
def test_float32_stays_float32(make):
    layer = make(np.float32)
    x = distinct_values(np.random.default_rng(0), (1, 2, 5, 4)).astype(np.float32)
    y = layer(x)
    assert y.dtype == np.float32
    assert layer.backward(np.ones_like(y)).dtype == np.float32
    assert all(p.grad.dtype == np.float32 for p in layer.parameters())
    reference = make(np.float64)
    np.testing.assert_allclose(y, reference(x.astype(np.float64)), rtol=1e-5, atol=1e-5)


def test_empty_batch_just_works():
    for layer in (InceptionBlock(2, 1, 1, 2, 1, 1, 1, rng=0, backend="numpy"),
                  ASPP(2, 3, rates=(1, 2), rng=0, backend="numpy")):
        y = layer(np.zeros((0, 2, 4, 5)))
        assert y.shape == (0, layer.out_channels, 4, 5)
        assert layer.backward(y).shape == (0, 2, 4, 5)


def test_set_backend_reaches_every_layer_inside():
    block = InceptionBlock(2, 1, 1, 1, 1, 1, 1, rng=0).set_backend("loop")
    assert block.branch4[0].backend == "loop" and block.branch3[2].backend == "loop"
    aspp = ASPP(2, 1, rates=(1,), rng=0).set_backend("numpy")
    assert aspp.convs[2][1].backend == "numpy" and aspp.project[0].backend == "numpy"


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="in_channels must be a positive integer"):
        InceptionBlock(0, 1, 1, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="ch5x5 must be a positive integer"):
        InceptionBlock(2, 1, 1, 1, 1, 0, 1)
    with pytest.raises(ValueError, match="backend must be one of"):
        InceptionBlock(2, 1, 1, 1, 1, 1, 1, backend="gpu")
    with pytest.raises(ValueError, match="rates must be a non-empty sequence"):
        ASPP(2, 2, rates=())
    with pytest.raises(ValueError, match="rates must be a positive integer"):
        ASPP(2, 2, rates=(6, 0))
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        ASPP(2, 2, dtype=np.int32)
    block = InceptionBlock(2, 1, 1, 1, 1, 1, 1, rng=0, backend="numpy")
    with pytest.raises(ValueError, match=r"x must have 2 channels \(dim 1\) for InceptionBlock"):
        block(np.zeros((1, 3, 4, 4)))
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        ASPP(2, 2, rng=0)(np.zeros((2, 4, 4)))
    block(np.zeros((1, 2, 4, 4)))
    with pytest.raises(ValueError, match="grad must have 4 channels"):
        block.backward(np.zeros((1, 3, 4, 4)))


# ----------------------------------------------------------------------------- check cases

@pytest.mark.parametrize("case", CHECK_CASES, ids=[case.name for case in CHECK_CASES])
def test_check_cases_pass(case):
    """What ``scratchvision check`` runs: the numpy tier's forward against the loop tier's and
    its backward against central differences (one random instance, element by element), and
    the tiny (CUDA simulator) variant along random directions."""
    assert set(case.wrt) == set(case.make_inputs(np.random.default_rng(0), False))
    for tiny in (False, True):
        row = check_case(case, "numpy", "CPU", n_cases=1, tiny=tiny)
        assert row["status"] == "ok", row["status"]
        assert row["forward_error"] <= 1e-10
