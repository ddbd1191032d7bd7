"""Verification material for deformable convolution.

Check cases: DCNv1 and DCNv2, offset groups and weight groups, stride, padding and dilation.
Shapes are small because the loop tier's gradients are checked element by element (two
forward passes per input element, each a Python loop over every output, tap and channel).

Bench case ``deform_conv2d v2`` (the shape of the design page's benchmark section): DCNv2
with N=2, C=64 -> 64, a 3x3 kernel, 64x64 input, padding 1 (so Ho = Wo = 64), one offset
group, offsets drawn from N(0, 1) (most taps move by under a pixel or two; a few fall outside
the image) and a mask uniform in (0, 1), as a sigmoid would give. Reference: ``torchvision.ops.deform_conv2d`` on the same inputs; forward+backward
differentiates with respect to the input, offset, weight, bias and mask.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..cases import BenchCase, CheckCase
from ..ops.deform_conv2d import backward, forward

# A sampled coordinate is an integer grid position plus an offset, so it sits on a kink of the
# bilinear interpolant (an integer) exactly when the offset's fractional part is 0. Offsets
# keep their fractional part this far from 0 and 1: far more than gradcheck's eps = 1e-6.
KINK_MARGIN = 1e-2


def offsets_off_kinks(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    """Offsets in (-2, 2) with fractional parts in [KINK_MARGIN, 1 - KINK_MARGIN]: enough to
    move some taps across the image border and some points wholly outside it."""
    return rng.integers(-2, 2, size=shape) + rng.uniform(KINK_MARGIN, 1 - KINK_MARGIN, shape)


class _Sizes(NamedTuple):
    """Batch, input channels, output channels and input (H, W) of one configuration."""

    batch: int
    channels: int
    out_channels: int
    size: tuple[int, int]


class _Config(NamedTuple):
    """One configuration: sizes (normal, and tiny for the CUDA simulator, where every
    forward pass takes a good fraction of a second) and options."""

    sizes: _Sizes
    tiny: _Sizes
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    offset_groups: int
    weight_groups: int
    modulated: bool

    def out(self, size) -> tuple[int, int]:
        return tuple((size[a] + 2 * self.padding[a] - self.dilation[a] * (self.kernel[a] - 1)
                      - 1) // self.stride[a] + 1 for a in range(2))


def _case(name: str, config: _Config) -> CheckCase:
    options = dict(stride=config.stride, padding=config.padding, dilation=config.dilation)
    n_taps = config.kernel[0] * config.kernel[1]

    def make_inputs(rng, tiny):
        n, c, o, size = config.tiny if tiny else config.sizes
        out = config.out(size)
        inputs = {
            "x": rng.standard_normal((n, c) + size),
            "offset": offsets_off_kinks(rng, (n, 2 * config.offset_groups * n_taps) + out),
            "weight": rng.standard_normal((o, c // config.weight_groups) + config.kernel),
            "bias": rng.standard_normal(o),
        }
        if config.modulated:
            # DCNv2's mask is usually a sigmoid, but the op does not clamp it: test beyond [0, 1]
            inputs["mask"] = rng.uniform(-0.5, 1.5, (n, config.offset_groups * n_taps) + out)
        return inputs

    def run_forward(x, offset, weight, bias, mask=None, backend="auto"):
        return forward(x, offset, weight, bias, mask=mask, backend=backend, **options)

    def run_backward(gy, x, offset, weight, bias, mask=None, backend="auto"):
        grads = backward(gy, x, offset, weight, bias, mask=mask, backend=backend, **options)
        # one gradient per input: DCNv1 has no mask, so no grad_mask entry
        return grads if config.modulated else grads[:4]

    wrt = ("x", "offset", "weight", "bias") + (("mask",) if config.modulated else ())
    return CheckCase(name, make_inputs, run_forward, run_backward, wrt)


CHECK_CASES = [
    _case("deform_conv2d v1 3x3, pad 1",
          _Config(_Sizes(1, 2, 2, (4, 5)), _Sizes(1, 2, 2, (2, 3)), (3, 3), (1, 1), (1, 1),
                  (1, 1), 1, 1, False)),
    _case("deform_conv2d v2 3x3, pad 1",
          _Config(_Sizes(1, 2, 2, (4, 5)), _Sizes(1, 2, 2, (2, 3)), (3, 3), (1, 1), (1, 1),
                  (1, 1), 1, 1, True)),
    _case("deform_conv2d v2 offset groups 2, weight groups 2",
          _Config(_Sizes(2, 4, 4, (4, 4)), _Sizes(2, 2, 2, (2, 2)), (2, 2), (1, 1), (0, 1),
                  (1, 1), 2, 2, True)),
    _case("deform_conv2d v2 2x3, stride (2, 1), pad (1, 0), dilation (2, 1)",
          _Config(_Sizes(1, 2, 3, (5, 6)), _Sizes(1, 2, 2, (3, 3)), (2, 3), (2, 1), (1, 0),
                  (2, 1), 1, 1, True)),
]


# ============================================================================ bench cases

# (N, C_in, C_out, H, W); the kernel is 3x3 with padding 1
SHAPE = (2, 64, 64, 64, 64)
QUICK_SHAPE = (1, 8, 8, 16, 16)
KERNEL, PADDING = 3, 1


def _shape_text(shape) -> str:
    n, c_in, c_out, h, w = shape
    return f"{n}x{c_in}x{h}x{w} -> {c_out}, {KERNEL}x{KERNEL}, pad {PADDING}"


def _inputs(rng: np.random.Generator, quick: bool) -> dict:
    n, c_in, c_out, h, w = QUICK_SHAPE if quick else SHAPE
    taps = KERNEL * KERNEL
    # Ho = Wo = H, W: 3x3 with padding 1 keeps the size
    return {
        "x": rng.standard_normal((n, c_in, h, w), dtype=np.float32),
        "offset": rng.standard_normal((n, 2 * taps, h, w), dtype=np.float32),
        "weight": (rng.standard_normal((c_out, c_in, KERNEL, KERNEL), dtype=np.float32)
                   / np.float32(np.sqrt(c_in * taps))),
        "bias": rng.standard_normal(c_out, dtype=np.float32),
        "mask": rng.uniform(0.0, 1.0, (n, taps, h, w)).astype(np.float32),
        "gy": rng.standard_normal((n, c_out, h, w), dtype=np.float32),
    }


def _forward(backend, x, offset, weight, bias, mask, gy):
    return forward(x, offset, weight, bias, padding=PADDING, mask=mask, backend=backend)


def _forward_backward(backend, x, offset, weight, bias, mask, gy):
    forward(x, offset, weight, bias, padding=PADDING, mask=mask, backend=backend)
    return backward(gy, x, offset, weight, bias, padding=PADDING, mask=mask, backend=backend)


def _torchvision_reference(inputs: dict, device: str):
    import torch
    from torchvision.ops import deform_conv2d

    names = ("x", "offset", "weight", "bias", "mask")
    tensors = {name: torch.from_numpy(inputs[name]).to(device) for name in names}
    leaves = {name: t.clone().requires_grad_() for name, t in tensors.items()}
    gy = torch.from_numpy(inputs["gy"]).to(device)

    def forward_only():
        with torch.no_grad():
            return deform_conv2d(tensors["x"], tensors["offset"], tensors["weight"],
                                 tensors["bias"], padding=PADDING, mask=tensors["mask"])

    def forward_backward():
        for leaf in leaves.values():
            leaf.grad = None
        out = deform_conv2d(leaves["x"], leaves["offset"], leaves["weight"], leaves["bias"],
                            padding=PADDING, mask=leaves["mask"])
        out.backward(gy)

    return forward_only, forward_backward


BENCH_CASES = [
    BenchCase(
        name="deform_conv2d v2",
        shape=_shape_text(SHAPE),
        quick_shape=_shape_text(QUICK_SHAPE),
        make_inputs=_inputs,
        forward=_forward,
        forward_backward=_forward_backward,
        reference=_torchvision_reference,
        reference_name="torchvision deform_conv2d",
        gpu_target=1.0,  # at least as fast as torchvision's CUDA kernel
    ),
]
