"""``Conv2d`` and ``DeformConv2d`` (DCNv1 and DCNv2 "pack" layers): finite-difference proofs of
the gradients of the input and of every parameter on every CPU tier (and a real GPU), torch's
initialisation and names, the zero-initialised offset predictor, agreement with torch /
torchvision for the same weights, and constructor / input errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from scratchvision import nn
from scratchvision.ops import conv2d, deform_conv2d

from layer_checks import check_layer
from tiers import available_tiers, awkward_layouts

#: the CUDA simulator is far too slow for finite differences of whole layers; a real GPU runs
GRADIENT_TIERS = available_tiers(simulated_cuda=False)


@dataclass(frozen=True)
class ConvConfig:
    """Hyper-parameters of one drawn layer and the input size it is applied to."""

    batch: int
    in_channels: int
    out_channels: int
    groups: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    height: int
    width: int
    bias: bool
    offset_groups: int = 1
    modulated: bool = True

    def layer_args(self) -> dict:
        return dict(in_channels=self.in_channels, out_channels=self.out_channels,
                    kernel_size=self.kernel, stride=self.stride, padding=self.padding,
                    dilation=self.dilation, groups=self.groups, bias=self.bias)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.in_channels, self.height, self.width)


@st.composite
def conv_configs(draw, max_side: int, max_per_group: int, deformable: bool) -> ConvConfig:
    """Small hyper-parameters for which the output is not empty; ``max_side`` bounds the
    input's height and width beyond the smallest valid size."""
    groups = draw(st.integers(1, 2))
    in_channels = groups * draw(st.integers(1, max_per_group))
    out_channels = groups * draw(st.integers(1, max_per_group))
    kernel, stride, padding, dilation, sides = [], [], [], [], []
    for _ in range(2):  # along H, then along W
        k, s, p, d = (draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(0, 2)),
                      draw(st.integers(1, 2)))
        smallest = max(1, d * (k - 1) + 1 - 2 * p)  # the output has at least one pixel
        sides.append(draw(st.integers(smallest, smallest + max_side)))
        kernel.append(k), stride.append(s), padding.append(p), dilation.append(d)
    offset_groups = 1
    modulated = True
    if deformable:
        offset_groups = draw(st.sampled_from(
            [g for g in range(1, in_channels + 1) if in_channels % g == 0]))
        modulated = draw(st.booleans())
        event("DCNv2 (modulated)" if modulated else "DCNv1")
    event(f"groups={groups}, stride={tuple(stride)}, dilation={tuple(dilation)}")
    return ConvConfig(draw(st.integers(1, 2)), in_channels, out_channels, groups, tuple(kernel),
                      tuple(stride), tuple(padding), tuple(dilation), sides[0], sides[1],
                      draw(st.booleans()), offset_groups, modulated)


def _sizes(tier: str) -> dict:
    """The loop tier gets the smallest layers: its inner sums are Python loops."""
    return dict(max_side=2, max_per_group=1) if tier == "loop" else dict(max_side=4,
                                                                          max_per_group=2)


def keep_offsets_off_the_kinks(layer: nn.DeformConv2d, rng: np.random.Generator) -> None:
    """Give ``conv_offset`` small random weights and offset biases of ``integer + 0.5``.

    Bilinear sampling has kinks where a sampled coordinate is an integer. A tap samples at its
    integer grid position plus ``dy = bias + sum(weight * x)``; with ``|x| <= 1`` and
    ``|weight| <= 0.25 / fan_in`` the sum lies in [-0.25, 0.25], so every sampled coordinate has
    a fractional part in [0.25, 0.75], 250000 finite-difference steps (1e-6) from a kink. The
    mask logits get any bias: the sigmoid is smooth.
    """
    conv = layer.conv_offset
    fan_in = conv.weight.data[0].size
    conv.weight.data[...] = rng.uniform(-0.25, 0.25, conv.weight.shape) / fan_in
    n_offsets = layer._offset_channels
    conv.bias.data[:n_offsets] = rng.integers(-2, 3, n_offsets) + 0.5
    conv.bias.data[n_offsets:] = rng.uniform(-2.0, 2.0, conv.bias.shape[0] - n_offsets)


# ----------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("tier", GRADIENT_TIERS)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_conv2d_gradients_match_finite_differences(tier, data, seed):
    config = data.draw(conv_configs(**_sizes(tier), deformable=False), label="config")
    rng = np.random.default_rng(seed)
    layer = nn.Conv2d(**config.layer_args(), rng=rng, backend=tier)
    x = rng.uniform(-1.0, 1.0, config.input_shape)
    check_layer(layer, x).raise_if_failed()


@pytest.mark.parametrize("tier", GRADIENT_TIERS)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_deform_conv2d_gradients_match_finite_differences(tier, data, seed):
    """Input (through both paths: sampled directly, and through the predicted offsets and
    mask), weight, bias, conv_offset.weight and conv_offset.bias; DCNv1 and DCNv2."""
    config = data.draw(conv_configs(**_sizes(tier), deformable=True), label="config")
    rng = np.random.default_rng(seed)
    layer = nn.DeformConv2d(**config.layer_args(), offset_groups=config.offset_groups,
                            modulated=config.modulated, rng=rng, backend=tier)
    keep_offsets_off_the_kinks(layer, rng)
    x = rng.uniform(-1.0, 1.0, config.input_shape)
    check_layer(layer, x).raise_if_failed()


def test_deform_conv2d_input_gradient_has_both_paths():
    """With a non-zero offset predictor, x's gradient is the sum of the direct path and the
    path through conv_offset: dropping the latter must change it."""
    rng = np.random.default_rng(0)
    layer = nn.DeformConv2d(2, 3, 3, padding=1, rng=rng, backend="numpy")
    keep_offsets_off_the_kinks(layer, rng)
    x = rng.uniform(-1, 1, (1, 2, 5, 5))
    gy = rng.standard_normal((1, 3, 5, 5))
    layer(x)
    total = layer.backward(gy)
    offset, mask = layer.offset_and_mask(x)
    direct = deform_conv2d.backward(gy, x, offset, layer.weight.data, layer.bias.data,
                                    padding=1, mask=mask, backend="numpy").grad_input
    assert np.abs(total - direct).max() > 1e-3 * np.abs(direct).max()


# ----------------------------------------------------------------------------- initialisation

def test_conv_init_follows_torch():
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = in_channels / groups * kh * kw."""
    layer = nn.Conv2d(64, 96, (3, 5), groups=4, rng=0)
    assert layer.weight.shape == (96, 16, 3, 5) and layer.bias.shape == (96,)
    bound = 1 / np.sqrt(16 * 3 * 5)
    for param in (layer.weight, layer.bias):
        assert np.abs(param.data).max() <= bound
    np.testing.assert_allclose(layer.weight.data.var(), bound**2 / 3, rtol=0.05)


@pytest.mark.parametrize("modulated", [True, False])
def test_deform_conv2d_starts_as_a_plain_convolution(modulated):
    """conv_offset starts at zero: every offset is 0 and every mask sigmoid(0) = 1/2, so the
    layer computes conv2d(x, weight / 2) + bias (DCNv2) or conv2d(x, weight) + bias (DCNv1)."""
    layer = nn.DeformConv2d(4, 6, 3, stride=2, padding=1, dilation=(1, 2), groups=2,
                            offset_groups=2, modulated=modulated, rng=0, backend="numpy")
    per_tap = 3 if modulated else 2
    assert layer.conv_offset.weight.shape == (per_tap * 2 * 9, 4, 3, 3)
    assert not layer.conv_offset.weight.data.any() and not layer.conv_offset.bias.data.any()
    x = np.random.default_rng(1).standard_normal((2, 4, 9, 10))
    scale = 0.5 if modulated else 1.0
    expected = conv2d.forward(x, scale * layer.weight.data, layer.bias.data, stride=2,
                              padding=1, dilation=(1, 2), groups=2, backend="numpy")
    np.testing.assert_allclose(layer(x), expected, rtol=1e-12, atol=1e-12)
    offset, mask = layer.offset_and_mask(x)
    assert offset.shape == (2, 2 * 2 * 9) + expected.shape[2:] and not offset.any()
    if modulated:
        assert mask.shape == (2, 2 * 9) + expected.shape[2:] and (mask == 0.5).all()
    else:
        assert mask is None


# ----------------------------------------------------------------------------- errors

def test_constructor_errors_name_the_argument():
    with pytest.raises(ValueError, match="groups must divide in_channels"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="groups must divide out_channels"):
        nn.Conv2d(4, 3, 3, groups=2)
    with pytest.raises(ValueError, match="offset_groups must divide in_channels"):
        nn.DeformConv2d(3, 4, 3, offset_groups=2)
    with pytest.raises(ValueError, match="stride must be positive"):
        nn.Conv2d(1, 1, 3, stride=0)
    with pytest.raises(ValueError, match="padding must be >= 0"):
        nn.DeformConv2d(1, 1, 3, padding=-1)
    with pytest.raises(ValueError, match="kernel_size must be positive"):
        nn.Conv2d(1, 1, 0)
    with pytest.raises(ValueError, match="backend must be one of"):
        nn.Conv2d(1, 1, 1, backend="torch")


@pytest.mark.parametrize("layer", [nn.Conv2d(3, 2, 3), nn.DeformConv2d(3, 2, 3)],
                         ids=["Conv2d", "DeformConv2d"])
def test_input_errors_name_the_layer_and_argument(layer):
    with pytest.raises(ValueError, match=r"x must have in_channels = 3 channels"):
        layer(np.zeros((1, 2, 5, 5)))
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        layer(np.zeros((3, 5, 5)))
    with pytest.raises(ValueError, match="empty output"):
        layer(np.zeros((1, 3, 2, 2)))


def test_float32_layers_give_float32():
    layer = nn.DeformConv2d(2, 2, 3, padding=1, rng=0, dtype=np.float32, backend="numpy")
    assert all(p.dtype == np.float32 for p in layer.parameters())
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)
    y = layer(x)
    assert y.dtype == np.float32
    assert layer.backward(np.ones_like(y)).dtype == np.float32


# ----------------------------------------------------------------------------- torch

def _to_numpy_state(*prefixed_modules) -> dict:
    """{prefix + name: array} from torch modules' state_dicts, the conversion a user writes."""
    return {prefix + name: value.detach().numpy()
            for prefix, module in prefixed_modules
            for name, value in module.state_dict().items()}


@pytest.mark.parametrize("groups, stride, padding, dilation",
                         [(1, 1, 0, 1), (2, (2, 1), (1, 2), (1, 2))])
def test_conv2d_loads_torch_and_matches_it(groups, stride, padding, dilation):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    reference = torch.nn.Conv2d(4, 6, (3, 2), stride, padding, dilation, groups).double()
    layer = nn.Conv2d(4, 6, (3, 2), stride, padding, dilation, groups, backend="numpy")
    layer.load_state_dict(_to_numpy_state(("", reference)))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 7, 6))
    x_torch = torch.tensor(x, requires_grad=True)
    y_torch = reference(x_torch)
    gy = rng.standard_normal(tuple(y_torch.shape))
    y_torch.backward(torch.tensor(gy))
    np.testing.assert_allclose(layer(x), y_torch.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.backward(gy), x_torch.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.weight.grad, reference.weight.grad.numpy(), rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(layer.bias.grad, reference.bias.grad.numpy(), rtol=1e-10)


@pytest.mark.parametrize("modulated", [True, False])
def test_deform_conv2d_loads_torchvision_and_matches_it(modulated):
    """torchvision.ops.DeformConv2d (weight, bias) plus a torch Conv2d offset predictor, the
    pack layer built by hand in torch; our layer loads their state dicts and agrees in the
    output and in the gradients of x and of all four parameters."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    c_in, c_out, kernel, offset_groups = 4, 3, (3, 3), 2
    per_tap = 3 if modulated else 2
    n_offsets = 2 * offset_groups * 9
    main = torchvision.ops.DeformConv2d(c_in, c_out, kernel, stride=1, padding=1, dilation=1,
                                        groups=1).double()
    conv_offset = torch.nn.Conv2d(c_in, per_tap * offset_groups * 9, kernel, padding=1).double()
    with torch.no_grad():  # small offsets (up to ~ +-2 pixels), so the taps really move
        conv_offset.weight.mul_(2.0)
        conv_offset.bias.uniform_(-1.5, 1.5)
    layer = nn.DeformConv2d(c_in, c_out, kernel, padding=1, offset_groups=offset_groups,
                            modulated=modulated, backend="numpy")
    layer.load_state_dict(_to_numpy_state(("", main), ("conv_offset.", conv_offset)))

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, c_in, 6, 7))
    x_torch = torch.tensor(x, requires_grad=True)
    predicted = conv_offset(x_torch)
    mask = torch.sigmoid(predicted[:, n_offsets:]) if modulated else None
    y_torch = torchvision.ops.deform_conv2d(x_torch, predicted[:, :n_offsets], main.weight,
                                            main.bias, padding=(1, 1), mask=mask)
    gy = rng.standard_normal(tuple(y_torch.shape))
    y_torch.backward(torch.tensor(gy))

    np.testing.assert_allclose(layer(x), y_torch.detach().numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(layer.backward(gy), x_torch.grad.numpy(), rtol=1e-9, atol=1e-11)
    expected_grads = {"weight": main.weight.grad, "bias": main.bias.grad,
                      "conv_offset.weight": conv_offset.weight.grad,
                      "conv_offset.bias": conv_offset.bias.grad}
    for name, param in layer.named_parameters():
        np.testing.assert_allclose(param.grad, expected_grads[name].numpy(), rtol=1e-9,
                                   atol=1e-11, err_msg=name)


# ----------------------------------------------------------------------------- odd inputs

def _conv_layers():
    rng = np.random.default_rng(0)
    deform = nn.DeformConv2d(2, 3, 3, padding=1, offset_groups=2, rng=rng, backend="numpy")
    keep_offsets_off_the_kinks(deform, rng)
    return {"Conv2d": nn.Conv2d(2, 3, 3, stride=2, padding=1, rng=rng, backend="numpy"),
            "DeformConv2d": deform}


@pytest.mark.parametrize("name", ["Conv2d", "DeformConv2d"])
def test_empty_batch(name):
    layer = _conv_layers()[name]
    y = layer(np.zeros((0, 2, 5, 5)))
    assert y.shape[:2] == (0, 3)
    assert layer.backward(np.zeros_like(y)).shape == (0, 2, 5, 5)
    assert not any(p.grad.any() for p in layer.parameters())


@pytest.mark.parametrize("name", ["Conv2d", "DeformConv2d"])
def test_awkward_layouts_just_work(name):
    """Fortran-ordered, negative-stride, strided, transposed and read-only inputs and
    upstream gradients give the results of plain arrays, and are never written to."""
    layer = _conv_layers()[name]
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (2, 2, 5, 6))
    y = layer(x)
    gy = rng.standard_normal(y.shape)
    layer.zero_grad()
    grad_x = layer.backward(gy)
    expected_grads = [p.grad.copy() for p in layer.parameters()]
    for (kind, x_view), gy_view in zip(awkward_layouts(x).items(), awkward_layouts(gy).values()):
        x_before = x_view.copy()
        np.testing.assert_allclose(layer(x_view), y, rtol=1e-12, atol=1e-12, err_msg=kind)
        layer.zero_grad()
        np.testing.assert_allclose(layer.backward(gy_view), grad_x, rtol=1e-12, atol=1e-12,
                                   err_msg=kind)
        for param, expected in zip(layer.parameters(), expected_grads):
            np.testing.assert_allclose(param.grad, expected, rtol=1e-12, atol=1e-12,
                                       err_msg=kind)
        np.testing.assert_array_equal(x_view, x_before, err_msg=kind)
