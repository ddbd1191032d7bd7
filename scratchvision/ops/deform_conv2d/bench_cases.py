"""The case ``scratchvision bench`` times for deformable convolution (DESIGN.md section 5).

``deform_conv2d v2``: DCNv2 with N=2, C=64 -> 64, a 3x3 kernel, 64x64 input, padding 1
(so Ho = Wo = 64), one offset group, offsets drawn from N(0, 1) (most taps move by under a
pixel or two; a few fall outside the image) and a mask uniform in (0, 1), as a sigmoid would
give. Reference: ``torchvision.ops.deform_conv2d`` on the same inputs; forward+backward
differentiates with respect to the input, offset, weight, bias and mask.
"""

from __future__ import annotations

import numpy as np

from ...benchmark import BenchCase
from . import backward, forward

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
    ),
]
