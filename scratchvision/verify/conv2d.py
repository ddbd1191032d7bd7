"""Verification material for conv2d.

Check cases: convolution is bilinear in (x, weight) and linear in bias, smooth everywhere:
there are no kinks to keep the inputs away from. The configurations cover what the kernels
branch on: padding (taps that read zeros), stride and dilation (output pixels that skip input
pixels), groups (down to depthwise), rectangular kernels and no bias.

Bench case: x (2, 64, 64, 64), weight (64, 64, 3, 3), bias (64,), padding 1, float32, against
``torch.nn.functional.conv2d`` (oneDNN on the CPU); forward+backward computes the gradients of
x, weight and bias.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from ..cases import BenchCase, CheckCase
from ..ops.conv2d import backward, forward

@dataclass(frozen=True)
class _Config:
    """x (N, C_in, H, W) at the normal and the tiny (CUDA simulator) size, the weight's
    C_out and kernel (kh, kw), the hyper-parameters, and whether there is a bias."""

    x_shape: tuple
    tiny_x_shape: tuple
    c_out: int
    kernel: tuple
    options: dict = field(default_factory=dict)
    with_bias: bool = True

    def make_inputs(self, rng: np.random.Generator, tiny: bool) -> dict:
        x_shape = self.tiny_x_shape if tiny else self.x_shape
        groups = self.options.get("groups", 1)
        weight_shape = (self.c_out, x_shape[1] // groups) + self.kernel
        # weights of size 1 / sqrt(fan-in) keep y of order 1, and so the rounding error of
        # gradcheck's central differences (about 1e-16 |y| / eps) well under its atol of 1e-9
        fan_in = np.prod(weight_shape[1:])
        inputs = {"x": rng.standard_normal(x_shape),
                  "weight": rng.standard_normal(weight_shape) / np.sqrt(fan_in)}
        if self.with_bias:
            inputs["bias"] = rng.standard_normal(self.c_out)
        return inputs


CONFIGS = {
    "3x3, padding 1": _Config((2, 3, 6, 7), (1, 2, 4, 5), 4, (3, 3), dict(padding=1)),
    "groups 2, stride 2": _Config((2, 4, 7, 6), (1, 2, 5, 5), 4, (3, 2),
                                  dict(stride=2, padding=(1, 0), groups=2)),
    "dilation 2, no bias": _Config((1, 2, 7, 8), (1, 2, 5, 6), 3, (2, 3),
                                   dict(dilation=2, padding=(2, 1)), with_bias=False),
    "depthwise, stride (2, 1), dilation (1, 2)": _Config(
        (2, 3, 6, 7), (1, 3, 5, 6), 3, (3, 3),
        dict(stride=(2, 1), dilation=(1, 2), padding=2, groups=3)),
}


def _case(name: str, config: _Config) -> CheckCase:
    options = config.options

    def run_backward(gy, x, weight, bias=None, *, backend):
        grads = backward(gy, x, weight, bias, backend=backend, **options)
        # gradcheck wants one gradient per input: without a bias, leave out grad_bias (None)
        return tuple(grads) if config.with_bias else (grads.grad_input, grads.grad_weight)

    return CheckCase(
        name=f"conv2d {name}",
        make_inputs=config.make_inputs,
        forward=functools.partial(forward, **options),
        backward=run_backward,
        wrt=("x", "weight", "bias") if config.with_bias else ("x", "weight"),
    )


CHECK_CASES = [_case(name, config) for name, config in CONFIGS.items()]


# ============================================================================ bench cases

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
        gpu_target=1 / 3,  # within 3x of cuDNN
    ),
]
