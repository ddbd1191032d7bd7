"""The case ``scratchvision bench`` times for conv2d (DESIGN.md section 5).

* ``conv2d``: x (2, 64, 64, 64), weight (64, 64, 3, 3), bias (64,), padding 1, float32,
  against ``torch.nn.functional.conv2d`` (oneDNN on the CPU); forward+backward computes the
  gradients of x, weight and bias.
"""

from __future__ import annotations

import numpy as np

from ...benchmark import BenchCase
from . import backward, forward

# (N, C_in, H, W) and C_out; both with a 3 x 3 kernel, stride 1 and padding 1 ('same' size)
SHAPE = ((2, 64, 64, 64), 64)
QUICK_SHAPE = ((1, 8, 16, 16), 8)
KERNEL, PADDING = (3, 3), 1


def _shape_text(shape) -> str:
    (n, c_in, h, w), c_out = shape
    return f"{n}x{c_in}x{h}x{w} -> {c_out} ch, {KERNEL[0]}x{KERNEL[1]}, pad {PADDING}"


def _inputs(rng: np.random.Generator, quick: bool) -> dict:
    x_shape, c_out = QUICK_SHAPE if quick else SHAPE
    n, c_in, h, w = x_shape
    scale = np.float32(1.0 / np.sqrt(c_in * KERNEL[0] * KERNEL[1]))  # keeps y of order 1
    return {
        "x": rng.standard_normal(x_shape, dtype=np.float32),
        "weight": rng.standard_normal((c_out, c_in) + KERNEL, dtype=np.float32) * scale,
        "bias": rng.standard_normal(c_out, dtype=np.float32),
        "gy": rng.standard_normal((n, c_out, h, w), dtype=np.float32),  # 'same' size
    }


def _forward(backend, x, weight, bias, gy):
    return forward(x, weight, bias, padding=PADDING, backend=backend)


def _forward_backward(backend, x, weight, bias, gy):
    forward(x, weight, bias, padding=PADDING, backend=backend)
    return backward(gy, x, weight, bias, padding=PADDING, backend=backend)


def _conv2d_reference(inputs: dict, device: str):
    import torch
    import torch.nn.functional as F

    x, weight, bias, gy = (torch.from_numpy(inputs[k]).to(device)
                           for k in ("x", "weight", "bias", "gy"))
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]

    def forward_only():
        with torch.no_grad():
            return F.conv2d(x, weight, bias, padding=PADDING)

    def forward_backward():
        for leaf in leaves:
            leaf.grad = None
        F.conv2d(*leaves, padding=PADDING).backward(gy)

    return forward_only, forward_backward


BENCH_CASES = [
    BenchCase(
        name="conv2d",
        shape=_shape_text(SHAPE),
        quick_shape=_shape_text(QUICK_SHAPE),
        make_inputs=_inputs,
        forward=_forward,
        forward_backward=_forward_backward,
        reference=_conv2d_reference,
        reference_name="F.conv2d",
    ),
]
