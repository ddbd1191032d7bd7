"""Exercise: the backward pass of bilinear sampling, loop tier.

``sample`` reads every point's four taps, eq. (4) of docs/derivations/bilinear.md:

    out[n, c, p] = sum_t w_t(x, y) * image[n, c, row_t, col_t]

Write its gradient with respect to the image and to the points: replace every
``raise NotImplementedError`` below by the lines the comment above it describes, then run

    scratchvision exercise check bilinear_backward

from the repository root. The checker compares your ``sample_backward`` with the library's on
random inputs, then runs ``scratchvision.gradcheck`` of it against central differences of the
library's forward, and says which gradient is wrong, at which index, and which equation to
re-read. A worked answer is in ``tutorials/exercises/solutions/``; look there last.

Shapes: ``image`` (N, C, H, W); ``points`` (N, P, 2), pixel ``(x, y)``: x runs along the
columns and y along the rows, and integer ``(x, y)`` is the centre of pixel
``image[n, c, y, x]``; ``gy`` (N, C, P) is dL / d out.
"""

from __future__ import annotations

import math

import numpy as np


def point_taps(x, y, height: int, width: int):
    """The in-bounds taps of the point ``(x, y)``: a list of ``(row, col, w, dw_dx, dw_dy)``,
    the tap's pixel, its weight and the weight's partial derivatives."""
    taps = []
    # A point outside [-1, W) x [-1, H) has no tap in the image (NaN fails this test too).
    if not (-1 <= x < width and -1 <= y < height):
        return taps
    # eq. (1): the cell's top-left tap (x0, y0) and the offsets ax, ay in [0, 1) inside it.
    x0 = math.floor(x)
    y0 = math.floor(y)
    ax = x - x0
    ay = y - y0
    # The four taps, in the order 00, 01, 10, 11: (y0, x0), (y0, x0 + 1), (y0 + 1, x0),
    # (y0 + 1, x0 + 1), and their weights, eq. (2).
    rows = (y0, y0, y0 + 1, y0 + 1)
    cols = (x0, x0 + 1, x0, x0 + 1)
    weights = ((1 - ax) * (1 - ay), ax * (1 - ay), (1 - ax) * ay, ax * ay)
    # eq. (2), docs/derivations/bilinear.md#the-four-weights: the slopes of the four weights,
    # in the same order. Inside a cell x0 and y0 are constants, so d ax / dx = 1,
    # d ay / dx = 0, d ax / dy = 0 and d ay / dy = 1; e.g. d w00 / dx = -(1 - ay).
    raise NotImplementedError(
        "eq. (2): the slopes d w_t / dx (slopes_x) and d w_t / dy (slopes_y) of the four weights")
    for row, col, w, dw_dx, dw_dy in zip(rows, cols, weights, slopes_x, slopes_y):
        # eq. (3), docs/derivations/bilinear.md#per-tap-zero-padding: each tap outside the
        # image reads zero, independently of the others, so it is left out; every tap inside
        # [0, H) x [0, W), the last row and column included, is kept.
        raise NotImplementedError(
            "eq. (3): append (row, col, w, dw_dx, dw_dy) to taps for the in-bounds taps only")
    return taps


def sample_backward(gy: np.ndarray, image: np.ndarray, points: np.ndarray):
    """``(grad_image (N, C, H, W), grad_points (N, P, 2))``, derived on
    docs/derivations/bilinear.md:

    * eq. (5), grad_image: docs/derivations/bilinear.md
      #with-respect-to-the-image-a-scatter-of-the-weights
    * eqs. (6)-(7), grad_points: docs/derivations/bilinear.md
      #with-respect-to-the-point-derivatives-of-the-weights
    """
    n_batch, channels, height, width = image.shape
    n_points = points.shape[1]
    grad_image = np.zeros_like(image)
    grad_points = np.zeros_like(points)
    for n in range(n_batch):
        for p in range(n_points):
            x, y = points[n, p]
            grad_x = grad_y = 0.0  # dL / dx and dL / dy of this point
            for row, col, w, dw_dx, dw_dy in point_taps(x, y, height, width):
                for c in range(channels):
                    g = gy[n, c, p]  # dL / d out[n, c, p]
                    pixel = image[n, c, row, col]
                    # eq. (5): out is linear in the image, and
                    # d out[n, c, p] / d image[n, c, row, col] = w for this tap. A scatter:
                    # many points can read the same pixel, so add (+=).
                    raise NotImplementedError(
                        "eq. (5): add this tap's share of dL / d image to grad_image")
                    # eqs. (6) and (7): the point moves the weights, not the pixels they read:
                    #   dL/dx = sum_c sum_t g * (d w_t / dx) * pixel_t     (6)
                    #   dL/dy = sum_c sum_t g * (d w_t / dy) * pixel_t     (7)
                    raise NotImplementedError(
                        "eqs. (6)-(7): add this tap's and channel's terms to grad_x and grad_y")
            grad_points[n, p, 0] = grad_x
            grad_points[n, p, 1] = grad_y
    return grad_image, grad_points
