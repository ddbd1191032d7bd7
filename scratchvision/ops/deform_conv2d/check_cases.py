"""The cases ``scratchvision check`` verifies for deformable convolution: DCNv1 and DCNv2,
offset groups and weight groups, stride, padding and dilation.

Shapes are small because the loop tier's gradients are checked element by element (two
forward passes per input element, each a Python loop over every output, tap and channel).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ...selfcheck import CheckCase
from . import backward, forward

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
