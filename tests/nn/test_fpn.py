"""``FeaturePyramidNetwork`` and ``LastLevelMaxPool``: finite-difference proofs for every input
map and every parameter, the top-down pathway worked out by hand, torchvision's outputs,
gradients, state_dict keys and initialisation, dtypes and bad input.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from scratchvision.nn.fpn import FeaturePyramidNetwork, LastLevelMaxPool
from scratchvision.nn.module import Module

from layer_checks import check_layer


class FlatPyramid(Module):
    """The FPN as a layer of several array inputs and one output, for ``check_layer``:
    ``forward(x0, x1, ...)`` returns the outputs flattened and concatenated, ``backward``
    splits the gradient back into one array per output."""

    def __init__(self, fpn: FeaturePyramidNetwork):
        super().__init__()
        self.fpn = fpn

    def forward(self, *maps):
        outputs = self.fpn(list(maps))
        self._save_for_backward(shapes=[o.shape for o in outputs])
        return np.concatenate([o.ravel() for o in outputs])

    def backward(self, grad):
        shapes = self._saved_for_backward()["shapes"]
        bounds = np.cumsum([int(np.prod(s)) for s in shapes])[:-1]
        grads = [g.reshape(s) for g, s in zip(np.split(grad, bounds), shapes)]
        grad_maps = self.fpn.backward(grads)
        return grad_maps[0] if len(grad_maps) == 1 else tuple(grad_maps)  # one input: an array


@st.composite
def pyramids(draw):
    """Channels and sizes of 1-3 levels, finest first; sizes need not halve (nearest resize
    maps any size onto any other), and a coarser level may even be larger."""
    n_levels = draw(st.integers(1, 3))
    channels = [draw(st.integers(1, 2)) for _ in range(n_levels)]
    sizes = [(draw(st.integers(1, 5)), draw(st.integers(1, 5))) for _ in range(n_levels)]
    extra = draw(st.booleans())
    event(f"{n_levels} level(s), LastLevelMaxPool={extra}")
    return channels, sizes, extra


@given(pyramid=pyramids(), out_channels=st.integers(1, 2), batch=st.integers(1, 2),
       seed=st.integers(0, 2**32 - 1))
def test_gradients_match_finite_differences(pyramid, out_channels, batch, seed):
    """Every input map and every parameter, with a random gradient for every output."""
    channels, sizes, extra = pyramid
    rng = np.random.default_rng(seed)
    extra_blocks = LastLevelMaxPool(backend="numpy") if extra else None
    fpn = FeaturePyramidNetwork(channels, out_channels, extra_blocks, rng=rng, backend="numpy")
    for param in fpn.parameters():  # torchvision starts the biases at 0; make them matter
        param.data[...] = rng.standard_normal(param.shape) * 0.5
    maps = [rng.standard_normal((batch, c) + size) for c, size in zip(channels, sizes)]
    names = tuple(f"x{i}" for i in range(len(maps)))
    check_layer(FlatPyramid(fpn), *maps, input_names=names).raise_if_failed()


def test_gradients_on_the_loop_tier():
    rng = np.random.default_rng(9)
    fpn = FeaturePyramidNetwork([1, 2], 1, LastLevelMaxPool(backend="loop"), rng=rng,
                                backend="loop")
    maps = [rng.standard_normal((1, 1, 4, 3)), rng.standard_normal((1, 2, 2, 2))]
    check_layer(FlatPyramid(fpn), *maps, input_names=("x0", "x1")).raise_if_failed()


def _identity_pyramid(extra=None) -> FeaturePyramidNetwork:
    """Two one-channel levels whose convolutions all pass their input through unchanged:
    the 1x1 laterals have weight 1, the 3x3 outputs a 1 at the centre, biases 0."""
    fpn = FeaturePyramidNetwork([1, 1], 1, extra, rng=0, backend="numpy")
    for block in list(fpn.inner_blocks) + list(fpn.layer_blocks):
        conv = block[0]
        conv.weight.data[...] = 0.0
        conv.weight.data[0, 0, conv.kernel_size[0] // 2, conv.kernel_size[1] // 2] = 1.0
        conv.bias.data[...] = 0.0
    return fpn


def test_top_down_pathway_by_hand():
    """P1 = x1 and P0 = x0 + nearest(x1); the extra level keeps every other pixel of P1."""
    fpn = _identity_pyramid(LastLevelMaxPool(backend="numpy"))
    x0 = np.full((1, 1, 4, 4), 10.0)
    x1 = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]).reshape(1, 1, 3, 3)
    p0, p1, pool = fpn([x0, x1])
    # nearest from 3 to 4 pixels reads source pixel floor(i * 3 / 4) = 0, 0, 1, 2
    np.testing.assert_array_equal(p0[0, 0], 10.0 + np.array([[1, 1, 2, 3], [1, 1, 2, 3],
                                                              [4, 4, 5, 6], [7, 7, 8, 9]]))
    np.testing.assert_array_equal(p1, x1)
    np.testing.assert_array_equal(pool[0, 0], [[1.0, 3.0], [7.0, 9.0]])
    grad_x0, grad_x1 = fpn.backward([np.ones((1, 1, 4, 4)), np.zeros((1, 1, 3, 3)),
                                     np.full((1, 1, 2, 2), 100.0)])
    np.testing.assert_array_equal(grad_x0, np.ones((1, 1, 4, 4)))
    # each x1 pixel: how many P0 pixels copied it, + 100 where the pool kept it
    np.testing.assert_array_equal(grad_x1[0, 0], [[104.0, 2.0, 102.0], [2.0, 1.0, 1.0],
                                                  [102.0, 1.0, 101.0]])


def test_none_gradient_means_the_output_did_not_reach_the_loss():
    fpn = FeaturePyramidNetwork([2, 3], 2, LastLevelMaxPool(backend="numpy"), rng=0,
                                backend="numpy")
    rng = np.random.default_rng(0)
    maps = [rng.standard_normal((2, 2, 6, 5)), rng.standard_normal((2, 3, 3, 3))]
    outputs = fpn(maps)
    grads = [rng.standard_normal(outputs[0].shape), None, rng.standard_normal(outputs[2].shape)]
    with_none = fpn.backward(grads)
    fpn(maps)
    with_zeros = fpn.backward([grads[0], np.zeros(outputs[1].shape), grads[2]])
    for a, b in zip(with_none, with_zeros):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- torchvision

@pytest.mark.parametrize("extra", [False, True], ids=["no extra block", "LastLevelMaxPool"])
def test_matches_torchvision_with_copied_weights(extra):
    """Outputs, input gradients and parameter gradients (autograd) of torchvision's FPN, on
    levels whose sizes do not halve exactly (9x11, 5x6, 3x3)."""
    torch = pytest.importorskip("torch")
    fpn_module = pytest.importorskip("torchvision.ops.feature_pyramid_network")
    torch.manual_seed(0)
    reference = fpn_module.FeaturePyramidNetwork(
        [2, 3, 4], 5, extra_blocks=fpn_module.LastLevelMaxPool() if extra else None).double()
    with torch.no_grad():
        for param in reference.parameters():  # nonzero biases
            param.add_(0.1 * torch.randn_like(param))
    fpn = FeaturePyramidNetwork([2, 3, 4], 5, LastLevelMaxPool(backend="numpy") if extra
                                else None, rng=0, backend="numpy")
    fpn.load_state_dict({k: v.detach().numpy() for k, v in reference.state_dict().items()})

    rng = np.random.default_rng(1)
    maps = [rng.standard_normal(s) for s in [(2, 2, 9, 11), (2, 3, 5, 6), (2, 4, 3, 3)]]
    maps_torch = [torch.tensor(m, requires_grad=True) for m in maps]
    outputs_torch = list(reference(OrderedDict(
        (f"feat{i}", m) for i, m in enumerate(maps_torch))).values())
    outputs = fpn(maps)
    assert len(outputs) == len(outputs_torch) == 3 + extra
    grads = [rng.standard_normal(o.shape) for o in outputs]
    sum((o * torch.tensor(g)).sum() for o, g in zip(outputs_torch, grads)).backward()
    grad_maps = fpn.backward(grads)
    for i, (ours, theirs) in enumerate(zip(outputs, outputs_torch)):
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-12, atol=1e-13,
                                   err_msg=f"output {i}")
    for i, (ours, theirs) in enumerate(zip(grad_maps, maps_torch)):
        np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=1e-12, atol=1e-13,
                                   err_msg=f"gradient of input {i}")
    for (name, ours), (torch_name, theirs) in zip(fpn.named_parameters(),
                                                  reference.named_parameters()):
        assert name == torch_name
        np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=1e-12, atol=1e-12,
                                   err_msg=name)


def test_state_dict_matches_torchvision():
    pytest.importorskip("torch")
    fpn_module = pytest.importorskip("torchvision.ops.feature_pyramid_network")
    reference = fpn_module.FeaturePyramidNetwork([3, 5], 4, fpn_module.LastLevelMaxPool())
    ours = FeaturePyramidNetwork([3, 5], 4, LastLevelMaxPool(), rng=0).state_dict()
    assert list(ours) == list(reference.state_dict())
    for name, value in reference.state_dict().items():
        assert ours[name].shape == tuple(value.shape), name


def test_parameter_names_and_initialisation():
    """torchvision's names; kaiming_uniform_(a=1), i.e. U(-sqrt(3 / fan_in), sqrt(3 / fan_in)),
    and zero biases."""
    fpn = FeaturePyramidNetwork([64, 8], 32, rng=0)
    assert list(fpn.state_dict()) == [
        "inner_blocks.0.0.weight", "inner_blocks.0.0.bias", "inner_blocks.1.0.weight",
        "inner_blocks.1.0.bias", "layer_blocks.0.0.weight", "layer_blocks.0.0.bias",
        "layer_blocks.1.0.weight", "layer_blocks.1.0.bias"]
    weight = fpn.layer_blocks[0][0].weight.data  # fan_in = 32 * 3 * 3
    bound = np.sqrt(3 / 288)
    assert np.abs(weight).max() <= bound and np.abs(weight).max() > 0.95 * bound
    # U(-b, b) has variance b**2 / 3 = 1 / fan_in; 9216 draws pin it to about 3 %
    np.testing.assert_allclose(weight.var(), 1 / 288, rtol=0.1)
    assert np.abs(fpn.inner_blocks[0][0].weight.data).max() <= np.sqrt(3 / 64)
    for name, param in fpn.named_parameters():
        if name.endswith("bias"):
            np.testing.assert_array_equal(param.data, 0.0)
    np.testing.assert_array_equal(FeaturePyramidNetwork([64, 8], 32, rng=0).state_dict()[
        "layer_blocks.1.0.weight"], fpn.state_dict()["layer_blocks.1.0.weight"])


# ----------------------------------------------------------------------------- dtypes, errors

def test_float32_stays_float32():
    fpn = FeaturePyramidNetwork([2, 3], 2, LastLevelMaxPool(backend="numpy"), rng=0,
                                dtype=np.float32, backend="numpy")
    rng = np.random.default_rng(0)
    maps = [rng.standard_normal((1, 2, 6, 5)).astype(np.float32),
            rng.standard_normal((1, 3, 3, 3)).astype(np.float32)]
    outputs = fpn(maps)
    assert all(o.dtype == np.float32 for o in outputs)
    grads = fpn.backward([np.ones_like(o) for o in outputs])
    assert all(g.dtype == np.float32 for g in grads)
    assert all(p.grad.dtype == np.float32 for p in fpn.parameters())


def test_empty_batch_just_works():
    fpn = FeaturePyramidNetwork([2, 3], 2, LastLevelMaxPool(backend="numpy"), rng=0,
                                backend="numpy")
    outputs = fpn([np.zeros((0, 2, 4, 4)), np.zeros((0, 3, 2, 2))])
    assert [o.shape for o in outputs] == [(0, 2, 4, 4), (0, 2, 2, 2), (0, 2, 1, 1)]
    assert [g.shape for g in fpn.backward(outputs)] == [(0, 2, 4, 4), (0, 3, 2, 2)]


def test_set_backend_reaches_the_extra_block():
    fpn = FeaturePyramidNetwork([1, 1], 1, LastLevelMaxPool(), rng=0).set_backend("loop")
    assert fpn.backend == "loop" and fpn.extra_blocks.pool.backend == "loop"
    assert fpn.layer_blocks[1][0].backend == "loop"


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="in_channels_list must be a non-empty list"):
        FeaturePyramidNetwork([], 4)
    with pytest.raises(ValueError, match="in_channels_list must be a positive integer"):
        FeaturePyramidNetwork([3, 0], 4)
    with pytest.raises(TypeError, match="extra_blocks must be None or a Module"):
        FeaturePyramidNetwork([3], 4, extra_blocks="pool")
    fpn = FeaturePyramidNetwork([2, 3], 2, rng=0, backend="numpy")
    good = [np.zeros((2, 2, 4, 4)), np.zeros((2, 3, 2, 2))]
    with pytest.raises(TypeError, match="features must be a list of 2 arrays"):
        fpn(good[0])
    with pytest.raises(ValueError, match="features must hold 2 arrays"):
        fpn(good[:1])
    with pytest.raises(ValueError, match=r"features\[1\] must have 3 channels \(dim 1\) for "
                                         r"FeaturePyramidNetwork"):
        fpn([good[0], np.zeros((2, 2, 2, 2))])
    with pytest.raises(ValueError, match=r"features\[0\] and features\[1\] must have the "
                                         r"same batch size"):
        fpn([good[0], np.zeros((1, 3, 2, 2))])
    with pytest.raises(TypeError, match=r"features\[0\] must be a float32 or float64"):
        fpn([good[0].astype(int), good[1]])
    with pytest.raises(RuntimeError, match="backward called before forward"):
        fpn.backward([np.zeros((2, 2, 4, 4)), np.zeros((2, 2, 2, 2))])
    fpn(good)
    with pytest.raises(ValueError, match="grads must hold 2 arrays"):
        fpn.backward([np.zeros((2, 2, 4, 4))])
    with pytest.raises(ValueError, match=r"grads\[1\] must have shape \(2, 2, 2, 2\)"):
        fpn.backward([np.zeros((2, 2, 4, 4)), np.zeros((2, 2, 4, 4))])
