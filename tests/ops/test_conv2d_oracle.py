"""Oracle tests: ``conv2d`` against ``torch.nn.functional.conv2d`` and its autograd.

They need the ``oracle`` extra (torch) and skip cleanly without it. They complement, never
replace, the finite-difference proofs: they show that the function we differentiate is the one
users know from PyTorch, with torch's conventions for stride, padding, dilation and groups.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchvision.ops import conv2d

from strategies import ConvCase, conv_cases
from tiers import DTYPES, assert_close, run_on_every_tier

torch = pytest.importorskip("torch")
F = torch.nn.functional

#: float64 agrees to rounding. float32: torch (oneDNN) and our BLAS sum up to a few hundred
#: products in different orders and blockings; 1e-5 of the largest entry covers that.
RTOL = {np.float64: 1e-10, np.float32: 1e-5}


def _torch_conv2d(case: ConvCase):
    """F.conv2d and its autograd: (y, grad_input, grad_weight, grad_bias or None)."""
    x = torch.tensor(case.x, requires_grad=True)
    weight = torch.tensor(case.weight, requires_grad=True)
    bias = None if case.bias is None else torch.tensor(case.bias, requires_grad=True)
    y = F.conv2d(x, weight, bias, **case.options)
    y.backward(torch.tensor(case.gy))
    return (y.detach().numpy(), x.grad.numpy(), weight.grad.numpy(),
            None if bias is None else bias.grad.numpy())


@given(case=conv_cases(), dtype=st.sampled_from(DTYPES))
def test_conv2d_matches_torch(case, dtype):
    """Forward and the three gradients; groups, stride, padding, dilation drawn per axis."""
    case = case.astype(dtype)
    expected = _torch_conv2d(case)
    results = run_on_every_tier(
        lambda backend: (conv2d.forward(case.x, case.weight, case.bias, **case.options,
                                        backend=backend),
                         *conv2d.backward(case.gy, case.x, case.weight, case.bias,
                                          **case.options, backend=backend)),
        simulated_cuda=False)
    for tier, result in results.items():
        assert_close(result, expected, label=f"tier {tier!r} vs torch:", rtol=RTOL[dtype])


@pytest.mark.parametrize("options", [
    dict(stride=3, padding=0),  # the floor in eq. (1) drops rows: they get zero gradient
    dict(stride=(3, 4), padding=(0, 1), dilation=1),  # stride > kernel: rows never read
    dict(padding=4, dilation=(1, 3)),  # outputs whose every tap is in the padding
    dict(groups=4),  # depthwise
], ids=["floor drops rows", "stride > kernel", "all-padding outputs", "depthwise"])
def test_conv2d_matches_torch_on_corner_cases(options):
    rng = np.random.default_rng(len(str(options)))
    x = rng.standard_normal((2, 4, 8, 9))
    groups = options.get("groups", 1)
    weight = rng.standard_normal((4, 4 // groups, 2, 3))
    bias = rng.standard_normal(4)
    y_shape = F.conv2d(torch.tensor(x), torch.tensor(weight), **options).shape
    pairs = {k: (v, v) if isinstance(v, int) else v for k, v in options.items()
             if k != "groups"}
    case = ConvCase(x, weight, bias, rng.standard_normal(tuple(y_shape)),
                    pairs.get("stride", (1, 1)), pairs.get("padding", (0, 0)),
                    pairs.get("dilation", (1, 1)), groups)
    expected = _torch_conv2d(case)
    results = run_on_every_tier(
        lambda backend: (conv2d.forward(x, weight, bias, **case.options, backend=backend),
                         *conv2d.backward(case.gy, x, weight, bias, **case.options,
                                          backend=backend)),
        simulated_cuda=False)
    for tier, result in results.items():
        assert_close(result, expected, label=f"tier {tier!r} vs torch:", rtol=1e-10)
