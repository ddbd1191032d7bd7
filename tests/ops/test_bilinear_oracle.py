"""Oracle tests: ``bilinear`` against torch's ``F.grid_sample`` and ``F.interpolate``.

They need the ``oracle`` extra (torch) and skip cleanly without it. They complement, never
replace, the finite-difference proofs: they show that the function we differentiate is the one
users know from PyTorch.

``sample`` at pixel (x, y) is ``grid_sample(align_corners=True, padding_mode="zeros")`` at the
normalised grid point ``u = 2 x / (W - 1) - 1``, ``v = 2 y / (H - 1) - 1`` (W, H > 1), so
``d/dx = d/du * 2 / (W - 1)``. torch maps u back to pixels in floating point, which moves a point
by an ulp or so: exactly on a kink that can pick the other linear piece, so these tests draw
points off the kinks.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchvision.ops import bilinear

from strategies import Bounds, resize_cases, sample_cases
from tiers import DTYPES, assert_close, run_on_every_tier

torch = pytest.importorskip("torch")
F = torch.nn.functional

#: torch's float32 kernels compute the normalised coordinates and the resize source index in
#: float32 (a relative error of ~1e-7 in the position, times slopes of order 1), so float32 is
#: held to 1e-5; float64 agrees to rounding.
RTOL = {np.float64: 1e-10, np.float32: 1e-5}


def _torch_sample(image, points, gy):
    """grid_sample on the normalised grid: (out (N, C, P), grad_image, grad_points)."""
    n, c, h, w = image.shape
    image_t = torch.tensor(image, requires_grad=True)
    points_t = torch.tensor(points, requires_grad=True)
    scale = torch.tensor([2.0 / (w - 1), 2.0 / (h - 1)], dtype=image_t.dtype)
    grid = (points_t * scale - 1.0)[:, None]  # (N, P, 2) -> (N, 1, P, 2)
    out = F.grid_sample(image_t, grid, mode="bilinear", padding_mode="zeros",
                        align_corners=True)[:, :, 0]  # (N, C, 1, P) -> (N, C, P)
    out.backward(torch.tensor(gy))
    return out.detach().numpy(), image_t.grad.numpy(), points_t.grad.numpy()


@given(case=sample_cases(Bounds(min_side=2)), dtype=st.sampled_from(DTYPES))
def test_sample_matches_grid_sample(case, dtype):
    """Forward and both gradients, W, H > 1 (the normalised grid needs them), points off the
    kinks, inside, straddling the borders and outside."""
    image, points, gy = (a.astype(dtype) for a in (case.image, case.points, case.gy))
    expected = _torch_sample(image, points, gy)
    results = run_on_every_tier(
        lambda image, points, gy, backend: (
            bilinear.sample(image, points, backend=backend),
            *bilinear.sample_backward(gy, image, points, backend=backend)),
        image, points, gy)
    for tier, result in results.items():
        assert_close(result, expected, label=f"tier {tier!r} vs torch:", rtol=RTOL[dtype])


def _torch_resize(x, gy, size, align_corners, mode):
    """F.interpolate and its gradient: (out (N, C, Ho, Wo), grad_input (N, C, H, W))."""
    x_t = torch.tensor(x, requires_grad=True)
    # torch accepts align_corners only for the interpolating modes
    extra = dict(align_corners=align_corners) if mode == "bilinear" else {}
    out = F.interpolate(x_t, size=size, mode=mode, **extra)
    out.backward(torch.tensor(gy))
    return out.detach().numpy(), x_t.grad.numpy()


@given(case=resize_cases(), dtype=st.sampled_from(DTYPES))
def test_resize_matches_interpolate(case, dtype):
    """Up- and down-sampling, output size 1, bilinear (both align_corners) and nearest."""
    x, gy = case.x.astype(dtype), case.gy.astype(dtype)
    expected = _torch_resize(x, gy, case.size, case.align_corners, case.mode)
    results = run_on_every_tier(
        lambda x, gy, backend: (bilinear.resize(x, **case.options, backend=backend),
                                *bilinear.resize_backward(gy, x, **case.options,
                                                          backend=backend)),
        x, gy)
    for tier, result in results.items():
        assert_close(result, expected, label=f"tier {tier!r} vs torch:", rtol=RTOL[dtype])


@pytest.mark.parametrize("in_size, out_size", [(5, 1), (1, 4), (7, 3), (3, 7), (10, 3),
                                               (3, 10), (13, 7), (49, 7), (7, 49), (14, 46),
                                               (26, 22)])
@pytest.mark.parametrize("mode, align_corners", [("bilinear", False), ("bilinear", True),
                                                 ("nearest", False)])
def test_resize_matches_interpolate_on_awkward_ratios(in_size, out_size, mode, align_corners):
    """Ratios whose scale is not exact in binary (e.g. 3 / 10, 49 / 7): the nearest index and
    the clamped source coordinate must round as torch's do. For 14 -> 46 and 26 -> 22 the exact
    ``dst * in / out`` is an integer that torch's float32 product lands just below."""
    rng = np.random.default_rng(in_size * 100 + out_size)
    x = rng.standard_normal((1, 2, in_size, out_size + 1))
    size = (out_size, in_size + 1)
    gy = rng.standard_normal((1, 2) + size)
    expected = _torch_resize(x, gy, size, align_corners, mode)
    options = dict(size=size, align_corners=align_corners, mode=mode)
    results = run_on_every_tier(
        lambda backend: (bilinear.resize(x, **options, backend=backend),
                         *bilinear.resize_backward(gy, x, **options, backend=backend)),
)
    for tier, result in results.items():
        assert_close(result, expected, label=f"tier {tier!r} vs torch:", rtol=1e-10)
