"""Verification material for max pooling.

Check cases: max pooling is piecewise linear with kinks where two taps of a window tie. The
inputs are therefore a random permutation of evenly spaced values, 2 / size apart (more than
5e-3 here): no two equal, and a finite-difference step (1e-6) never changes a window's argmax.
The configurations cover ceil mode with padding, and a rectangular dilated window.

Bench case: (2, 64, 128, 128) float32, a 3x3 window with stride 2 and padding 1 (ResNet's
stem pool), against ``torch.nn.functional.max_pool2d``; forward+backward computes the
input's gradient.
"""

from __future__ import annotations

import functools

import numpy as np

from ..cases import BenchCase, CheckCase
from ..ops.max_pool2d import TIERS, backward, forward

__all__ = ["CHECK_CASES", "BENCH_CASES", "distinct_values"]


def distinct_values(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    """An array of ``shape`` holding a random permutation of evenly spaced values in [-1, 1]:
    any two entries differ by at least 2 / size (no max-pool ties)."""
    size = int(np.prod(shape))
    return (rng.permutation(size).reshape(shape) * (2.0 / max(size, 1)) - 1.0)


def _case(name: str, shape: tuple, tiny_shape: tuple, **options) -> CheckCase:
    def make_inputs(rng, tiny):
        return {"x": distinct_values(rng, tiny_shape if tiny else shape)}

    return CheckCase(name=f"max_pool2d {name}", make_inputs=make_inputs,
                     forward=functools.partial(forward, **options),
                     backward=functools.partial(backward, **options), wrt=("x",), tiers=TIERS)


CHECK_CASES = [
    _case("3x3, stride 2, padding 1, ceil_mode", (2, 3, 7, 8), (1, 2, 4, 5),
          kernel_size=3, stride=2, padding=1, ceil_mode=True),
    _case("(2, 3), stride (1, 2), dilation (2, 1), padding (1, 1)", (2, 2, 6, 7), (1, 1, 4, 5),
          kernel_size=(2, 3), stride=(1, 2), padding=1, dilation=(2, 1)),
]


# ============================================================================ bench cases

SHAPE, QUICK_SHAPE = (2, 64, 128, 128), (1, 8, 32, 32)
OPTIONS = {"kernel_size": 3, "stride": 2, "padding": 1}


def _shape_text(shape) -> str:
    return "x".join(map(str, shape)) + ", 3x3, stride 2, pad 1"


def _inputs(rng: np.random.Generator, quick: bool) -> dict:
    shape = QUICK_SHAPE if quick else SHAPE
    n, c, h, w = shape
    return {"x": rng.standard_normal(shape, dtype=np.float32),
            "gy": rng.standard_normal((n, c, (h + 1) // 2, (w + 1) // 2), dtype=np.float32)}


def _forward(backend, x, gy):
    return forward(x, backend=backend, **OPTIONS)


def _forward_backward(backend, x, gy):
    forward(x, backend=backend, **OPTIONS)
    return backward(gy, x, backend=backend, **OPTIONS)


def _max_pool2d_reference(inputs: dict, device: str):
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(inputs["x"]).to(device)
    gy = torch.from_numpy(inputs["gy"]).to(device)
    leaf = x.clone().requires_grad_()

    def forward_only():
        with torch.no_grad():
            return F.max_pool2d(x, **OPTIONS)

    def forward_backward():
        leaf.grad = None
        F.max_pool2d(leaf, **OPTIONS).backward(gy)

    return forward_only, forward_backward


BENCH_CASES = [
    BenchCase(
        name="max_pool2d",
        shape=_shape_text(SHAPE),
        quick_shape=_shape_text(QUICK_SHAPE),
        make_inputs=_inputs,
        forward=_forward,
        forward_backward=_forward_backward,
        reference=_max_pool2d_reference,
        reference_name="F.max_pool2d",
        tiers=TIERS,
    ),
]
