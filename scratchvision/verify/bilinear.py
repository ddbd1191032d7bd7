"""Verification material for bilinear sampling and resizing.

Check cases (``scratchvision check bilinear``): sampling with points kept off the kinks, and
three resizes (bilinear with and without ``align_corners``, nearest).

Bench cases (``scratchvision bench bilinear``, the shapes of the design page):

* ``bilinear.sample``: a 1x64x128x128 image at 250k points spread uniformly over
  [-2, W + 1) x [-2, H + 1) (so a few percent fall partly or wholly outside), against
  ``F.grid_sample(align_corners=True, padding_mode="zeros")`` on the same positions.
* ``bilinear.resize``: (2, 256, 100, 168) -> (200, 336), bilinear, ``align_corners=False``,
  against ``F.interpolate``.
"""

from __future__ import annotations

import functools

import numpy as np

from ..cases import BenchCase, CheckCase
from ..ops.bilinear import resize, resize_backward, sample, sample_backward

# Sampled coordinates stay this far from integers (the kinks of the piecewise-linear
# interpolant), far more than gradcheck's eps = 1e-6, so central differences never straddle a
# kink. The kinks themselves are pinned by the test suite.
KINK_MARGIN = 1e-2


def points_off_kinks(rng: np.random.Generator, shape: tuple, height: int, width: int
                     ) -> np.ndarray:
    """Points (*shape, 2) over [-1.5, W + 0.5) x [-1.5, H + 0.5), so some taps fall outside
    the image and some points fall outside its support, with fractional parts in
    [KINK_MARGIN, 1 - KINK_MARGIN]."""
    cells = np.stack([rng.integers(-2, width + 1, size=shape),
                      rng.integers(-2, height + 1, size=shape)], axis=-1)
    return cells + rng.uniform(KINK_MARGIN, 1 - KINK_MARGIN, size=shape + (2,))


def _sample_inputs(rng, tiny):
    n, c, h, w, p = (1, 2, 4, 5, 6) if tiny else (2, 3, 6, 7, 12)
    return {"image": rng.standard_normal((n, c, h, w)),
            "points": points_off_kinks(rng, (n, p), h, w)}


def _resize_inputs(rng, tiny):
    shape = (1, 2, 3, 4) if tiny else (2, 3, 5, 6)
    return {"x": rng.standard_normal(shape)}


def _resize_case(size, align_corners, mode):
    kwargs = {"size": size, "align_corners": align_corners, "mode": mode}
    label = f"bilinear.resize {mode}" + (" align_corners" if align_corners else "")
    return CheckCase(
        name=f"{label} -> {size}",
        make_inputs=_resize_inputs,
        forward=functools.partial(resize, **kwargs),
        backward=lambda gy, x, backend: resize_backward(gy, x, backend=backend, **kwargs),
        wrt=("x",),
    )


CHECK_CASES = [
    CheckCase("bilinear.sample", _sample_inputs, sample, sample_backward, ("image", "points")),
    _resize_case((7, 4), False, "bilinear"),
    _resize_case((2, 9), True, "bilinear"),
    _resize_case((8, 3), False, "nearest"),
]


# ============================================================================ bench cases

SAMPLE_IMAGE, SAMPLE_POINTS = (1, 64, 128, 128), 250_000
QUICK_SAMPLE_IMAGE, QUICK_SAMPLE_POINTS = (1, 8, 32, 32), 10_000
RESIZE_INPUT, RESIZE_SIZE = (2, 256, 100, 168), (200, 336)
QUICK_RESIZE_INPUT, QUICK_RESIZE_SIZE = (1, 16, 25, 42), (50, 84)


def _shape_text(image_shape, n_points=None, size=None) -> str:
    text = "x".join(map(str, image_shape))
    if n_points is not None:
        return f"{text}, {n_points:,} points"
    return f"{text} -> {size[0]}x{size[1]}"


def _float32(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


# ----------------------------------------------------------------------------- sampling

def _sample_inputs(rng: np.random.Generator, quick: bool) -> dict:
    image_shape, n_points = ((QUICK_SAMPLE_IMAGE, QUICK_SAMPLE_POINTS) if quick
                             else (SAMPLE_IMAGE, SAMPLE_POINTS))
    n, c, h, w = image_shape
    points = np.stack([rng.uniform(-2, w + 1, (n, n_points)),
                       rng.uniform(-2, h + 1, (n, n_points))], axis=-1).astype(np.float32)
    return {"image": _float32(rng, image_shape), "points": points,  # points (N, P, 2)
            "gy": _float32(rng, (n, c, n_points))}


def _sample_forward(backend, image, points, gy):
    return sample(image, points, backend=backend)


def _sample_forward_backward(backend, image, points, gy):
    sample(image, points, backend=backend)
    return sample_backward(gy, image, points, backend=backend)


def _grid_sample_reference(inputs: dict, device: str):
    import torch
    import torch.nn.functional as F

    n, c, h, w = inputs["image"].shape
    # pixel (x, y) -> grid_sample's normalised [-1, 1] coordinates (align_corners=True);
    # (N, P, 2) -> (N, 1, P, 2), a one-row grid
    scale = np.array([2.0 / (w - 1), 2.0 / (h - 1)])
    grid = (inputs["points"] * scale - 1.0).astype(np.float32)[:, None]
    image = torch.from_numpy(inputs["image"]).to(device)
    grid = torch.from_numpy(grid).to(device)
    gy = torch.from_numpy(inputs["gy"]).to(device)[:, :, None]  # (N, C, P) -> (N, C, 1, P)
    image_leaf = image.clone().requires_grad_()
    grid_leaf = grid.clone().requires_grad_()

    def forward():
        with torch.no_grad():
            return F.grid_sample(image, grid, align_corners=True, padding_mode="zeros")

    def forward_backward():
        image_leaf.grad = grid_leaf.grad = None
        out = F.grid_sample(image_leaf, grid_leaf, align_corners=True, padding_mode="zeros")
        out.backward(gy)

    return forward, forward_backward


# ----------------------------------------------------------------------------- resizing

def _resize_inputs(rng: np.random.Generator, quick: bool) -> dict:
    shape, size = (QUICK_RESIZE_INPUT, QUICK_RESIZE_SIZE) if quick else (RESIZE_INPUT,
                                                                         RESIZE_SIZE)
    return {"x": _float32(rng, shape), "gy": _float32(rng, shape[:2] + size)}


def _resize_forward(backend, x, gy):
    return resize(x, gy.shape[2:], align_corners=False, backend=backend)


def _resize_forward_backward(backend, x, gy):
    resize(x, gy.shape[2:], align_corners=False, backend=backend)
    return resize_backward(gy, x, gy.shape[2:], align_corners=False, backend=backend)


def _interpolate_reference(inputs: dict, device: str):
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(inputs["x"]).to(device)
    gy = torch.from_numpy(inputs["gy"]).to(device)
    size = tuple(gy.shape[2:])
    x_leaf = x.clone().requires_grad_()

    def forward():
        with torch.no_grad():
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def forward_backward():
        x_leaf.grad = None
        F.interpolate(x_leaf, size=size, mode="bilinear", align_corners=False).backward(gy)

    return forward, forward_backward


BENCH_CASES = [
    BenchCase(
        name="bilinear.sample",
        shape=_shape_text(SAMPLE_IMAGE, SAMPLE_POINTS),
        quick_shape=_shape_text(QUICK_SAMPLE_IMAGE, QUICK_SAMPLE_POINTS),
        make_inputs=_sample_inputs,
        forward=_sample_forward,
        forward_backward=_sample_forward_backward,
        reference=_grid_sample_reference,
        reference_name="F.grid_sample",
        gpu_target=1 / 1.5,  # within 1.5x of grid_sample
    ),
    BenchCase(
        name="bilinear.resize",
        shape=_shape_text(RESIZE_INPUT, size=RESIZE_SIZE),
        quick_shape=_shape_text(QUICK_RESIZE_INPUT, size=QUICK_RESIZE_SIZE),
        make_inputs=_resize_inputs,
        forward=_resize_forward,
        forward_backward=_resize_forward_backward,
        reference=_interpolate_reference,
        reference_name="F.interpolate",
    ),
]
