"""Loop tier of bilinear sampling and resizing: the executable specification.

Every line here reads like the derivation in ``docs/derivations/bilinear.md``; equation numbers
in the comments refer to that page. It is slow on purpose: one Python-level step per point,
tap and channel, so that each quantity has a name. The other tiers are checked against it.

Shapes (already validated and made contiguous by ``scratchvision.ops.bilinear``):
``image`` (N, C, H, W), ``points`` (N, P, 2) as pixel ``(x, y)``, ``gy`` (N, C, P).
"""

from __future__ import annotations

import math

import numpy as np

from .cell import cell_and_weights


# ----------------------------------------------------------------------------- sampling

def point_taps(x, y, height: int, width: int):
    """The in-bounds bilinear taps of the point ``(x, y)``.

    Returns a list of ``(row, col, w, dw_dx, dw_dy)``: the tap's pixel, its weight and the
    weight's derivatives with respect to ``x`` and ``y``, in the float type of ``x``. Taps
    outside the image are left out, which is per-tap zero padding (eq. 3).
    """
    taps = []
    # --8<-- [start:reach]
    # NOTE: a point outside [-1, W) x [-1, H) has no tap inside the image: it contributes
    # nothing and gets zero gradient. NaN fails every comparison and +-inf fails the range, so
    # non-finite coordinates leave here too, before floor() / int() could turn them into
    # garbage indices.
    if not (-1 <= x < width and -1 <= y < height):
        return taps
    # --8<-- [end:reach]
    one = type(x)(1)  # 1 in the float type of the coordinates (float32 stays float32)
    # eqs. (1)-(2): the cell, the offsets in it and the four weights (see cell.py)
    x0, y0, ax, ay, w00, w01, w10, w11 = cell_and_weights(x, y, one)
    # --8<-- [start:slopes]
    # eq. (2): each weight with its partial derivatives.
    #   tap              weight   d/dx          d/dy
    corners = (
        (y0, x0, w00, -(one - ay), -(one - ax)),
        (y0, x0 + 1, w01, (one - ay), -ax),
        (y0 + 1, x0, w10, -ay, (one - ax)),
        (y0 + 1, x0 + 1, w11, ay, ax),
    )
    # --8<-- [end:slopes]
    # --8<-- [start:padding]
    for row, col, w, dw_dx, dw_dy in corners:
        # eq. (3): a tap outside [0, H) x [0, W) reads zero.
        if 0 <= row < height and 0 <= col < width:
            taps.append((row, col, w, dw_dx, dw_dy))
    # --8<-- [end:padding]
    return taps


def sample(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """out (N, C, P): eq. (4), ``out[n, c, p] = sum_t w_t * image[n, c, row_t, col_t]``."""
    n_batch, channels, height, width = image.shape
    n_points = points.shape[1]
    out = np.zeros((n_batch, channels, n_points), dtype=image.dtype)
    # --8<-- [start:sample]
    for n in range(n_batch):
        for p in range(n_points):
            x, y = points[n, p]  # in the points' dtype
            for row, col, w, _, _ in point_taps(x, y, height, width):
                for c in range(channels):
                    out[n, c, p] += w * image[n, c, row, col]  # eq. (4)
    # --8<-- [end:sample]
    return out


def sample_backward(gy: np.ndarray, image: np.ndarray, points: np.ndarray):
    """grad_image (N, C, H, W) by eq. (5), grad_points (N, P, 2) by eqs. (6) and (7).

    ``gy`` (N, C, P) is the upstream gradient; ``grad_x`` and ``grad_y`` are a point's
    gradients with respect to its coordinates."""
    n_batch, channels, height, width = image.shape
    n_points = points.shape[1]
    grad_image = np.zeros_like(image)
    grad_points = np.zeros_like(points)
    # --8<-- [start:sample_backward]
    for n in range(n_batch):
        for p in range(n_points):
            x, y = points[n, p]
            grad_x = grad_y = 0.0
            for row, col, w, dw_dx, dw_dy in point_taps(x, y, height, width):
                for c in range(channels):
                    g = gy[n, c, p]
                    grad_image[n, c, row, col] += w * g  # eq. (5): scatter to the tap
                    grad_x += g * dw_dx * image[n, c, row, col]  # eq. (6)
                    grad_y += g * dw_dy * image[n, c, row, col]  # eq. (7)
            grad_points[n, p, 0] = grad_x
            grad_points[n, p, 1] = grad_y
    # --8<-- [end:sample_backward]
    return grad_image, grad_points


# ----------------------------------------------------------------------------- resizing

# --8<-- [start:source_coordinate]
def source_coordinate(dst: int, in_size: int, out_size: int, align_corners: bool) -> float:
    """eq. (8): the input coordinate that output index ``dst`` reads, as torch defines it."""
    if align_corners:
        # corner pixel centres coincide: 0 -> 0 and out_size - 1 -> in_size - 1
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        return dst * scale
    # pixel areas coincide: the centre of output pixel dst is at (dst + 0.5) * in/out - 0.5
    src = (dst + 0.5) * (in_size / out_size) - 0.5
    # NOTE: torch clamps negative source coordinates to 0 (the first half output pixel reads
    # the first input pixel); the clamp is flat, so no gradient flows through coordinates.
    return max(src, 0.0)
# --8<-- [end:source_coordinate]


# --8<-- [start:linear_taps]
def linear_taps(dst: int, in_size: int, out_size: int, align_corners: bool):
    """eq. (9): the two input indices and weights ``(i0, i1, l0, l1)`` of output index ``dst``."""
    src = source_coordinate(dst, in_size, out_size, align_corners)
    i0 = min(int(math.floor(src)), in_size - 1)
    # NOTE: resize replicates the border instead of zero padding: the last input index is its
    # own right neighbour, so the weights still sum to one.
    i1 = i0 + 1 if i0 < in_size - 1 else i0
    l1 = src - i0
    return i0, i1, 1.0 - l1, l1
# --8<-- [end:linear_taps]


# --8<-- [start:nearest_index]
def nearest_index(dst: int, in_size: int, out_size: int) -> int:
    """eq. (10): torch's ``mode="nearest"`` index, ``floor(dst * in / out)``.

    torch computes the scale and the product in float32 whatever the data type, and so do we:
    in float64 ``dst * in / out`` can land exactly on an integer that float32 rounds below.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    return min(int(math.floor(np.float32(dst) * scale)), in_size - 1)
# --8<-- [end:nearest_index]


# --8<-- [start:resize]
def resize(x: np.ndarray, out_h: int, out_w: int, align_corners: bool, mode: str) -> np.ndarray:
    """out (N, C, Ho, Wo) from x (N, C, H, W): eq. (11) for bilinear, eq. (10) for nearest."""
    n_batch, channels, height, width = x.shape
    out = np.zeros((n_batch, channels, out_h, out_w), dtype=x.dtype)
    for n in range(n_batch):
        for c in range(channels):
            for oy in range(out_h):
                for ox in range(out_w):
                    if mode == "nearest":
                        iy = nearest_index(oy, height, out_h)
                        ix = nearest_index(ox, width, out_w)
                        out[n, c, oy, ox] = x[n, c, iy, ix]
                        continue
                    y0, y1, ly0, ly1 = linear_taps(oy, height, out_h, align_corners)
                    x0, x1, lx0, lx1 = linear_taps(ox, width, out_w, align_corners)
                    # eq. (11): interpolate along x in rows y0 and y1, then along y
                    top = lx0 * x[n, c, y0, x0] + lx1 * x[n, c, y0, x1]
                    bottom = lx0 * x[n, c, y1, x0] + lx1 * x[n, c, y1, x1]
                    out[n, c, oy, ox] = ly0 * top + ly1 * bottom
    return out
# --8<-- [end:resize]


# --8<-- [start:resize_backward]
def resize_backward(gy: np.ndarray, height: int, width: int, align_corners: bool,
                    mode: str) -> np.ndarray:
    """grad_input (N, C, H, W) from gy (N, C, Ho, Wo): eq. (12), each output pixel gives its
    gradient back to the taps it read, with the same weights (resize is linear in x)."""
    n_batch, channels, out_h, out_w = gy.shape
    grad = np.zeros((n_batch, channels, height, width), dtype=gy.dtype)
    for n in range(n_batch):
        for c in range(channels):
            for oy in range(out_h):
                for ox in range(out_w):
                    g = gy[n, c, oy, ox]
                    if mode == "nearest":
                        iy = nearest_index(oy, height, out_h)
                        ix = nearest_index(ox, width, out_w)
                        grad[n, c, iy, ix] += g
                        continue
                    y0, y1, ly0, ly1 = linear_taps(oy, height, out_h, align_corners)
                    x0, x1, lx0, lx1 = linear_taps(ox, width, out_w, align_corners)
                    # eq. (12): d out / d x[y_i, x_j] = ly_i * lx_j
                    grad[n, c, y0, x0] += ly0 * lx0 * g
                    grad[n, c, y0, x1] += ly0 * lx1 * g
                    grad[n, c, y1, x0] += ly1 * lx0 * g
                    grad[n, c, y1, x1] += ly1 * lx1 * g
    return grad
# --8<-- [end:resize_backward]
