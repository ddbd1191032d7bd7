"""Bilinear sampling at arbitrary points, and bilinear / nearest resizing.

Public functions validate and normalise their arguments (see ``scratchvision._checks``), then
dispatch to one of four tiers that all compute the same function:

* ``loop``  -- :mod:`scratchvision.ops.bilinear.loop`, the executable specification;
* ``numpy`` -- :mod:`scratchvision.ops.bilinear.vectorized`, sparse-matrix formulation;
* ``numba`` -- :mod:`scratchvision.ops.bilinear.numba_cpu`, parallel CPU kernels;
* ``cuda``  -- :mod:`scratchvision.ops.bilinear.numba_cuda`, GPU kernels (or the simulator).

Conventions (the design page, docs/design.md): a point is ``(x, y)`` in pixel units, integer ``(x, y)`` is
the centre of pixel ``[y, x]``; each of the four bilinear taps that falls outside the image
contributes zero (as ``grid_sample(align_corners=True, padding_mode="zeros")``); non-finite
points contribute zero and receive zero gradient. ``resize`` matches
``torch.nn.functional.interpolate`` in ``"bilinear"`` (both ``align_corners``) and ``"nearest"``
modes. The derivations are in ``docs/derivations/bilinear.md``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ... import _checks
from ..._dispatch import TierModules

__all__ = ["sample", "sample_backward", "resize", "resize_backward", "SampleGrads",
           "ResizeGrads", "RESIZE_MODES"]

_tiers = TierModules(__name__)

RESIZE_MODES = ("bilinear", "nearest")


class SampleGrads(NamedTuple):
    """Gradients of :func:`sample`: ``grad_image`` (N, C, H, W), ``grad_points`` (N, *, 2)."""

    grad_image: np.ndarray
    grad_points: np.ndarray


class ResizeGrads(NamedTuple):
    """Gradient of :func:`resize`: ``grad_input`` (N, C, H, W)."""

    grad_input: np.ndarray


# ----------------------------------------------------------------------------- sampling

def _sample_args(image, points):
    """Validate ``sample``'s inputs; return them as (N, C, H, W) and (N, P, 2) plus the
    points' middle shape ``*``."""
    image = _checks.float_array(image, "image", ndim=4)
    points = _checks.float_array(points, "points", min_ndim=2)
    _checks.last_dim(points, "points", 2, "(x, y)")
    _checks.same_size("image", image.shape[0], "points", points.shape[0], "batch size (dim 0)")
    _checks.nonempty_spatial(image, "image")
    point_shape = points.shape[1:-1]
    n = points.shape[0]
    # (N, *, 2) -> (N, P, 2) with P = prod(*)
    flat_points = points.reshape(n, math.prod(point_shape), 2)
    return image, flat_points, point_shape


def sample(image, points, backend: str = "auto") -> np.ndarray:
    """Sample ``image`` bilinearly at sub-pixel ``points``.

    Args:
        image: (N, C, H, W) float array.
        points: (N, *, 2) float array of pixel coordinates ``(x, y)``; any number of middle
            dimensions ``*`` (e.g. (N, P, 2) or (N, Ho, Wo, 2)).
        backend: ``"auto"``, ``"loop"``, ``"numpy"``, ``"numba"`` or ``"cuda"``.

    Returns:
        (N, C, *) array: ``out[n, c, *i] = sum over the 4 taps of w_tap * image[n, c, tap]``.
    """
    image, flat_points, point_shape = _sample_args(image, points)
    tier = _tiers.get(backend)
    image, flat_points = _checks.common_float(("image", image), ("points", flat_points))
    n, c = image.shape[:2]
    if image.size == 0 or flat_points.size == 0:
        return np.zeros((n, c) + point_shape, dtype=image.dtype)
    out = tier.sample(image, flat_points)  # (N, C, P)
    return out.reshape((n, c) + point_shape)  # (N, C, P) -> (N, C, *)


def sample_backward(gy, image, points, backend: str = "auto") -> SampleGrads:
    """Vector-Jacobian product of :func:`sample`.

    Args:
        gy: (N, C, *) upstream gradient, the shape of ``sample``'s output.
        image, points, backend: as for :func:`sample`.

    Returns:
        ``SampleGrads(grad_image (N, C, H, W), grad_points (N, *, 2))``. At integer coordinates
        (the kinks) the gradient of the linear piece to the right is used; non-finite points get
        zero gradient.
    """
    image, flat_points, point_shape = _sample_args(image, points)
    n, c = image.shape[:2]
    gy = _checks.float_array(gy, "gy")
    _checks.shape_equals(gy, "gy", (n, c) + point_shape, "the shape of sample's output")
    tier = _tiers.get(backend)
    gy = gy.reshape(n, c, flat_points.shape[1])  # (N, C, *) -> (N, C, P)
    image, flat_points, gy = _checks.common_float(
        ("image", image), ("points", flat_points), ("gy", gy))
    if image.size == 0 or flat_points.size == 0:
        grad_image, grad_points = np.zeros_like(image), np.zeros_like(flat_points)
    else:
        grad_image, grad_points = tier.sample_backward(gy, image, flat_points)
    # (N, P, 2) -> (N, *, 2)
    return SampleGrads(grad_image, grad_points.reshape((n,) + point_shape + (2,)))


# ----------------------------------------------------------------------------- resizing

def _resize_args(x, size, align_corners, mode):
    x = _checks.float_array(x, "x", ndim=4)
    out_h, out_w = _checks.int_pair(size, "size", minimum=1)
    _checks.choice(mode, "mode", RESIZE_MODES)
    align_corners = _checks.boolean(align_corners, "align_corners")
    if mode == "nearest" and align_corners:
        raise ValueError("align_corners=True only applies to mode='bilinear' "
                         "(torch raises the same error for mode='nearest')")
    _checks.nonempty_spatial(x, "x")
    return x, out_h, out_w, align_corners


def resize(x, size, align_corners: bool = False, mode: str = "bilinear",
           backend: str = "auto") -> np.ndarray:
    """Resize feature maps like ``torch.nn.functional.interpolate(x, size, mode=...)``.

    Args:
        x: (N, C, H, W) float array.
        size: output ``(Ho, Wo)``, or one int for both.
        align_corners: bilinear only. ``False`` maps pixel *areas* (the corners of the input
            and output grids coincide), ``True`` maps the centres of the corner pixels.
        mode: ``"bilinear"`` or ``"nearest"``.
        backend: ``"auto"``, ``"loop"``, ``"numpy"``, ``"numba"`` or ``"cuda"``.

    Returns:
        (N, C, Ho, Wo) array.
    """
    x, out_h, out_w, align_corners = _resize_args(x, size, align_corners, mode)
    tier = _tiers.get(backend)
    (x,) = _checks.common_float(("x", x))
    if x.size == 0:
        return np.zeros(x.shape[:2] + (out_h, out_w), dtype=x.dtype)
    return tier.resize(x, out_h, out_w, align_corners, mode)


def resize_backward(gy, x, size, align_corners: bool = False, mode: str = "bilinear",
                    backend: str = "auto") -> ResizeGrads:
    """Vector-Jacobian product of :func:`resize` (the transpose of the resize matrix).

    Args:
        gy: (N, C, Ho, Wo) upstream gradient.
        x, size, align_corners, mode, backend: as for :func:`resize`. Only ``x``'s shape and
            dtype are used: resizing is linear in ``x``.

    Returns:
        ``ResizeGrads(grad_input (N, C, H, W))``.
    """
    x, out_h, out_w, align_corners = _resize_args(x, size, align_corners, mode)
    gy = _checks.float_array(gy, "gy", ndim=4)
    _checks.shape_equals(gy, "gy", x.shape[:2] + (out_h, out_w), "the shape of resize's output")
    tier = _tiers.get(backend)
    dtype = np.result_type(x, gy)
    (gy,) = _checks.common_float(("gy", gy.astype(dtype, copy=False)))
    if x.size == 0:
        return ResizeGrads(np.zeros(x.shape, dtype=dtype))
    height, width = x.shape[2:]
    return ResizeGrads(tier.resize_backward(gy, height, width, align_corners, mode))
