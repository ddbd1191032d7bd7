"""Oracle tests: ``deform_conv2d`` against ``torchvision.ops.deform_conv2d`` (forward and the
gradients of input, offset, weight, bias and mask), and with zero offsets against
``torch.nn.functional.conv2d``.

They need the ``oracle`` extra (torch, torchvision) and skip cleanly without it. They show that
the function whose gradients the finite-difference tests prove is the one users know; they
never replace those proofs.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchvision.ops import deform_conv2d

from strategies import DEFORM_TINY, DeformBounds, DeformCase, deform_cases
from tiers import DTYPES, assert_close, run_on_every_tier

torch = pytest.importorskip("torch")
torchvision_ops = pytest.importorskip("torchvision.ops")

#: torchvision's float32 kernels round in float32 too, in another order (sums of up to
#: C / groups * K products of four-tap samples), so float32 is held to 1e-4; float64 agrees to
#: rounding.
RTOL = {np.float64: 1e-10, np.float32: 1e-4}


def _torchvision(case: DeformCase):
    """(y, grad_input, grad_offset, grad_weight, grad_bias, grad_mask) from torchvision; the
    gradients of absent inputs are None."""
    tensors = {name: torch.tensor(value, requires_grad=True)
               for name, value in case.arrays.items()}
    out = torchvision_ops.deform_conv2d(
        tensors["x"], tensors["offset"], tensors["weight"], tensors.get("bias"),
        stride=case.stride, padding=case.padding, dilation=case.dilation,
        mask=tensors.get("mask"))
    out.backward(torch.tensor(case.gy))

    def grad(name):
        return tensors[name].grad.numpy() if name in tensors else None

    return (out.detach().numpy(), *(grad(name) for name in
                                    ("x", "offset", "weight", "bias", "mask")))


def _ours(case: DeformCase, backend):
    args = (case.x, case.offset, case.weight, case.bias)
    return (deform_conv2d.forward(*args, **case.options, backend=backend),
            *deform_conv2d.backward(case.gy, *args, **case.options, backend=backend))


def _compare(case: DeformCase, dtype, simulated_cuda: bool):
    case = case.astype(dtype)
    expected = _torchvision(case)
    for tier, result in run_on_every_tier(_ours, case, simulated_cuda=simulated_cuda).items():
        assert_close(result, expected, label=f"tier {tier!r} vs torchvision:", rtol=RTOL[dtype])


@given(case=deform_cases(DeformBounds()), dtype=st.sampled_from(DTYPES))
def test_matches_torchvision(case, dtype):
    """DCNv1 and DCNv2 (masks drawn from [-1.5, 1.5]: not clamped), offset groups and weight
    groups, kernels up to 3x3, stride, padding, dilation; offsets off the kinks, some taps
    outside the image."""
    _compare(case, dtype, simulated_cuda=False)


@given(case=deform_cases(DEFORM_TINY, mask=True))
def test_matches_torchvision_on_tiny_cases_every_tier(case):
    """The same on tiny shapes, with the cuda tier included (in the simulator without a GPU)."""
    _compare(case, np.float64, simulated_cuda=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_torchvision_at_integer_offsets(dtype):
    """Integer offsets put every sampled point on a kink, some on the borders -1 and H - 1 and
    some outside: torchvision returns the same one-sided (right-hand) gradients."""
    rng = np.random.default_rng(9)
    n, c, h, w = 2, 4, 4, 5
    case = DeformCase(rng.standard_normal((n, c, h, w)),
                      rng.integers(-2, 3, size=(n, 2 * 2 * 9, h, w)).astype(np.float64),
                      rng.standard_normal((6, 2, 3, 3)), rng.standard_normal(6),
                      rng.uniform(-0.5, 1.5, (n, 2 * 9, h, w)),
                      rng.standard_normal((n, 6, h, w)), (1, 1), (1, 1), (1, 1))
    _compare(case, dtype, simulated_cuda=False)


@given(case=deform_cases(DeformBounds(), bias=True), dtype=st.sampled_from(DTYPES))
def test_zero_offsets_match_conv2d(case, dtype):
    """Zero offsets and no mask: ``F.conv2d`` with groups = C_in // weight.shape[1]."""
    case = case.astype(dtype)
    offset = np.zeros_like(case.offset)
    groups = case.x.shape[1] // case.weight.shape[1]
    expected = torch.nn.functional.conv2d(
        torch.tensor(case.x), torch.tensor(case.weight), torch.tensor(case.bias),
        stride=case.stride, padding=case.padding, dilation=case.dilation, groups=groups)
    results = run_on_every_tier(
        deform_conv2d.forward, case.x, offset, case.weight, case.bias, stride=case.stride,
        padding=case.padding, dilation=case.dilation, simulated_cuda=False)
    for tier, y in results.items():
        assert_close(y, expected.numpy(), label=f"tier {tier!r} vs F.conv2d:", rtol=RTOL[dtype])
