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

GPU arrays (numba device arrays, or CuPy arrays and torch CUDA tensors through
``__cuda_array_interface__``) are accepted by the ``cuda`` tier, which then returns numba device
arrays and never copies to the host (see ``scratchvision._checks``); NumPy in gives NumPy out.
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
    """Validate ``sample``'s inputs; return them, (N, C, H, W) and (N, *, 2), plus the points'
    middle shape ``*``."""
    image = _checks.float_array(image, "image", ndim=4, device=True)
    points = _checks.float_array(points, "points", min_ndim=2, device=True)
    _checks.last_dim(points, "points", 2, "(x, y)")
    _checks.same_size("image", image.shape[0], "points", points.shape[0], "batch size (dim 0)")
    _checks.nonempty_spatial(image, "image")
    return image, points, tuple(points.shape[1:-1])


def sample(image, points, backend: str = "auto") -> np.ndarray:
    """Sample ``image`` bilinearly at sub-pixel ``points``.

    Args:
        image: (N, C, H, W) float array.
        points: (N, *, 2) float array of pixel coordinates ``(x, y)``; any number of middle
            dimensions ``*`` (e.g. (N, P, 2) or (N, Ho, Wo, 2)).
        backend: ``"auto"``, ``"loop"``, ``"numpy"``, ``"numba"`` or ``"cuda"``.

    Returns:
        (N, C, *) array: ``out[n, c, *i] = sum over the 4 taps of w_tap * image[n, c, tap]``;
        a numba device array when the inputs are GPU arrays (cuda tier).
    """
    image, points, point_shape = _sample_args(image, points)
    tier = _tiers.get(backend, image=image, points=points)
    image, points = _checks.common_float(("image", image), ("points", points))
    n, c = image.shape[:2]
    # an empty case on the host needs no tier; on the GPU the tier makes the device result
    if (image.size == 0 or points.size == 0) and not _checks.is_device_array(image):
        return np.zeros((n, c) + point_shape, dtype=image.dtype)
    # (N, *, 2) -> (N, P, 2) with P = prod(*): free, the arrays are contiguous now
    out = tier.sample(image, points.reshape(n, math.prod(point_shape), 2))  # (N, C, P)
    return out.reshape((n, c) + point_shape)  # (N, C, P) -> (N, C, *)


def sample_backward(gy, image, points, backend: str = "auto") -> SampleGrads:
    """Vector-Jacobian product of :func:`sample`.

    Args:
        gy: (N, C, *) upstream gradient, the shape of ``sample``'s output.
        image, points, backend: as for :func:`sample`.

    Returns:
        ``SampleGrads(grad_image (N, C, H, W), grad_points (N, *, 2))``. At integer coordinates
        (the kinks) the gradient of the linear piece to the right is used; non-finite points get
        zero gradient. Numba device arrays when the inputs are GPU arrays (cuda tier).
    """
    image, points, point_shape = _sample_args(image, points)
    n, c = image.shape[:2]
    gy = _checks.float_array(gy, "gy", device=True)
    _checks.shape_equals(gy, "gy", (n, c) + point_shape, "the shape of sample's output")
    tier = _tiers.get(backend, gy=gy, image=image, points=points)
    image, points, gy = _checks.common_float(("image", image), ("points", points), ("gy", gy))
    if (image.size == 0 or points.size == 0) and not _checks.is_device_array(image):
        return SampleGrads(np.zeros_like(image), np.zeros_like(points))
    n_points = math.prod(point_shape)
    # (N, *, 2) -> (N, P, 2) and (N, C, *) -> (N, C, P): free, the arrays are contiguous now
    grad_image, grad_points = tier.sample_backward(
        gy.reshape(n, c, n_points), image, points.reshape(n, n_points, 2))
    # (N, P, 2) -> (N, *, 2)
    return SampleGrads(grad_image, grad_points.reshape((n,) + point_shape + (2,)))


# ----------------------------------------------------------------------------- resizing

def _resize_args(x, size, align_corners, mode):
    x = _checks.float_array(x, "x", ndim=4, device=True)
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
        (N, C, Ho, Wo) array; a numba device array when ``x`` is a GPU array (cuda tier).
    """
    x, out_h, out_w, align_corners = _resize_args(x, size, align_corners, mode)
    tier = _tiers.get(backend, x=x)
    (x,) = _checks.common_float(("x", x))
    if x.size == 0 and not _checks.is_device_array(x):
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
        ``ResizeGrads(grad_input (N, C, H, W))``; a numba device array for GPU inputs.
    """
    x, out_h, out_w, align_corners = _resize_args(x, size, align_corners, mode)
    gy = _checks.float_array(gy, "gy", ndim=4, device=True)
    _checks.shape_equals(gy, "gy", x.shape[:2] + (out_h, out_w), "the shape of resize's output")
    tier = _tiers.get(backend, gy=gy, x=x)
    # only x's dtype joins the common dtype: its values are not needed
    (gy,) = _checks.common_float(("gy", gy), with_dtypes=(x.dtype,))
    if x.size == 0 and not _checks.is_device_array(gy):
        return ResizeGrads(np.zeros(x.shape, dtype=gy.dtype))
    height, width = x.shape[2:]
    return ResizeGrads(tier.resize_backward(gy, height, width, align_corners, mode))
