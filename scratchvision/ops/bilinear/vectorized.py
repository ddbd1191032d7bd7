"""NumPy tier of bilinear sampling and resizing: the same maths as ``loop.py``, no Python loop
over points or pixels.

What changes, and why: both operations are *linear maps* of the image, so this tier writes
them as sparse matrices (SciPy CSR) and lets matrix products do the loops.

* ``sample``: ``S`` has one row per point and one column per pixel, with the four bilinear
  weights of eq. (2) in each row; ``out = S @ image`` and, by eq. (5), ``grad_image = S^T @ gy``.
  The point gradients (eqs. 6-7) gather the four tap vectors, one tap at a time.
* ``resize``: separable, ``out = A_y x A_x^T`` with the tables of ``resize_tables.py``
  (eq. 11); the backward is the transpose, ``A_y^T g A_x`` (eq. 12).

The image is used channels-last, (N*H*W, C), so a matrix row picks whole pixel vectors.
Arithmetic runs in the input dtype (float32 stays float32; SciPy accumulates in that dtype).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .resize_tables import axis_taps

# the four taps in the order of eq. (2): (row offset, column offset)
_TAP_DY = np.array([0, 0, 1, 1])
_TAP_DX = np.array([0, 1, 0, 1])


def _point_taps(points: np.ndarray, height: int, width: int):
    """Eqs. (1)-(3) for all points at once.

    Args:
        points: (N, P, 2) pixel coordinates (x, y).

    Returns:
        ``pixel`` (N, P, 4) int64 flat index into the (N*H*W) pixels (clamped in range for
        out-of-bounds taps), and ``w``, ``dw_dx``, ``dw_dy`` (N, P, 4), zeroed for taps outside
        the image (per-tap zero padding, eq. 3).
    """
    n_batch = points.shape[0]
    x = points[..., 0]
    y = points[..., 1]
    # NOTE: non-finite points, and points so far out that no tap can be inside, are moved to
    # (-2, -2), where all four taps are outside: zero value, zero gradient, and no float->int
    # conversion of inf / nan / 1e300.
    usable = (x > -2) & (x < width + 1) & (y > -2) & (y < height + 1)  # False for nan
    x = np.where(usable, x, -2)
    y = np.where(usable, y, -2)
    # eq. (1), with the right-hand derivative at integers (floor)
    x0 = np.floor(x)
    y0 = np.floor(y)
    ax = (x - x0)[..., None]  # (N, P) -> (N, P, 1), broadcast over the 4 taps
    ay = (y - y0)[..., None]
    rows = y0.astype(np.int64)[..., None] + _TAP_DY  # (N, P, 4)
    cols = x0.astype(np.int64)[..., None] + _TAP_DX
    one = points.dtype.type(1)
    # eq. (2): weights and their partials, taps ordered as _TAP_DY / _TAP_DX
    w = np.concatenate([(one - ax) * (one - ay), ax * (one - ay), (one - ax) * ay, ax * ay], -1)
    dw_dx = np.concatenate([-(one - ay), one - ay, -ay, ay], -1)
    dw_dy = np.concatenate([-(one - ax), -ax, one - ax, ax], -1)
    # eq. (3): per-tap zero padding
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    w, dw_dx, dw_dy = (np.where(inside, a, 0).astype(points.dtype) for a in (w, dw_dx, dw_dy))
    batch = np.arange(n_batch).reshape(-1, 1, 1)
    pixel = (batch * height + np.clip(rows, 0, height - 1)) * width + np.clip(cols, 0, width - 1)
    return pixel, w, dw_dx, dw_dy


def _sampling_matrix(pixel: np.ndarray, w: np.ndarray, n_pixels: int) -> sp.csr_matrix:
    """S (N*P, N*H*W): row ``n*P + p`` holds the weights of point p's taps (eq. 4)."""
    n_rows = pixel.shape[0] * pixel.shape[1]
    row = np.repeat(np.arange(n_rows), 4)
    return sp.csr_matrix((w.reshape(-1), (row, pixel.reshape(-1))), shape=(n_rows, n_pixels))


def _channels_last(image: np.ndarray) -> np.ndarray:
    n_batch, channels, height, width = image.shape
    # (N, C, H, W) -> (N, H, W, C) -> (N*H*W, C)
    return image.transpose(0, 2, 3, 1).reshape(n_batch * height * width, channels)


def sample(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """out (N, C, P) = S @ image, eq. (4)."""
    n_batch, channels, height, width = image.shape
    n_points = points.shape[1]
    pixel, w, _, _ = _point_taps(points, height, width)
    s = _sampling_matrix(pixel, w, n_batch * height * width)
    out = s @ _channels_last(image)  # (N*P, C)
    # (N*P, C) -> (N, P, C) -> (N, C, P)
    return np.ascontiguousarray(out.reshape(n_batch, n_points, channels).transpose(0, 2, 1))


def sample_backward(gy: np.ndarray, image: np.ndarray, points: np.ndarray):
    """grad_image = S^T @ gy (eq. 5); grad_points from the tap vectors (eqs. 6-7)."""
    n_batch, channels, height, width = image.shape
    n_points = points.shape[1]
    pixel, w, dw_dx, dw_dy = _point_taps(points, height, width)
    s = _sampling_matrix(pixel, w, n_batch * height * width)
    g = gy.transpose(0, 2, 1).reshape(n_batch * n_points, channels)  # (N, C, P) -> (N*P, C)
    grad_image = (s.T @ g).reshape(n_batch, height, width, channels)
    grad_image = np.ascontiguousarray(grad_image.transpose(0, 3, 1, 2))  # NHWC -> NCHW
    pixels = _channels_last(image)
    # <gy, image at tap t> for each point: (N*P, C) . (N*P, C) -> (N*P,), one tap at a time
    tap_dot = np.stack([np.einsum("pc,pc->p", pixels[pixel[..., t].reshape(-1)], g)
                        for t in range(4)], axis=-1).reshape(n_batch, n_points, 4)
    grad_points = np.stack([np.sum(dw_dx * tap_dot, axis=-1),  # eq. (6)
                            np.sum(dw_dy * tap_dot, axis=-1)], axis=-1)  # eq. (7)
    return grad_image, grad_points.astype(points.dtype, copy=False)


# ----------------------------------------------------------------------------- resizing

def _interpolation_matrix(in_size: int, out_size: int, align_corners: bool, mode: str,
                          dtype) -> sp.csr_matrix:
    """A (out, in): row o holds output index o's two tap weights (eqs. 8-10)."""
    taps = axis_taps(in_size, out_size, align_corners, mode)
    row = np.repeat(np.arange(out_size), 2)
    return sp.csr_matrix((taps.weight.reshape(-1).astype(dtype), (row, taps.index.reshape(-1))),
                         shape=(out_size, in_size))


def _apply_along_axis(matrix: sp.csr_matrix, arr: np.ndarray, axis: int) -> np.ndarray:
    """Multiply ``matrix`` (out, in) into axis ``axis`` of ``arr`` (size in there)."""
    moved = np.moveaxis(arr, axis, 0)  # (..., in, ...) -> (in, ...)
    result = matrix @ moved.reshape(moved.shape[0], -1)  # (in, rest) -> (out, rest)
    return np.moveaxis(result.reshape((matrix.shape[0],) + moved.shape[1:]), 0, axis)


def resize(x: np.ndarray, out_h: int, out_w: int, align_corners: bool, mode: str) -> np.ndarray:
    """out (N, C, Ho, Wo) = A_y x A_x^T, eq. (11): along x (width) first, then along y."""
    height, width = x.shape[2:]
    a_x = _interpolation_matrix(width, out_w, align_corners, mode, x.dtype)
    a_y = _interpolation_matrix(height, out_h, align_corners, mode, x.dtype)
    rows = _apply_along_axis(a_x, x, axis=3)  # (N, C, H, W) -> (N, C, H, Wo)
    return np.ascontiguousarray(_apply_along_axis(a_y, rows, axis=2))  # -> (N, C, Ho, Wo)


def resize_backward(gy: np.ndarray, height: int, width: int, align_corners: bool,
                    mode: str) -> np.ndarray:
    """grad_input (N, C, H, W) = A_y^T gy A_x, eq. (12)."""
    out_h, out_w = gy.shape[2:]
    a_x = _interpolation_matrix(width, out_w, align_corners, mode, gy.dtype)
    a_y = _interpolation_matrix(height, out_h, align_corners, mode, gy.dtype)
    rows = _apply_along_axis(a_y.T.tocsr(), gy, axis=2)  # (N, C, Ho, Wo) -> (N, C, H, Wo)
    return np.ascontiguousarray(_apply_along_axis(a_x.T.tocsr(), rows, axis=3))  # (N,C,H,W)
