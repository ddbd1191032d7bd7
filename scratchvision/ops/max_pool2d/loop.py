"""Loop tier of max pooling: the executable specification.

Equation numbers refer to ``docs/derivations/max_pool2d.md`` (and the package docstring).
These functions use only what numba can compile (scalars, ``math``, array indexing), and the
numba tier compiles these very functions: there ``prange`` is ``numba.prange`` and the planes
run in parallel; here it is ``range``.

Shapes: ``planes`` (P, H, W) with P = N * C, validated and contiguous.
"""

from __future__ import annotations

import math

import numpy as np

prange = range


def pool_plane(x, kh, kw, sh, sw, ph, pw, dh, dw, y, index):
    """eqs. (1)-(2) on one plane: x (H, W) -> y (Ho, Wo) and index (Ho, Wo), written in place.
    """
    height, width = x.shape
    out_h, out_w = y.shape
    for ho in range(out_h):
        for wo in range(out_w):
            # --8<-- [start:window]
            best = -math.inf
            best_index = -1  # no in-bounds tap seen yet
            for i in range(kh):
                r = ho * sh - ph + i * dh  # eq. (1)
                if r < 0 or r >= height:
                    continue  # padding (-inf) or past it in ceil mode: never the maximum
                for j in range(kw):
                    q = wo * sw - pw + j * dw  # eq. (1)
                    if q < 0 or q >= width:
                        continue
                    v = x[r, q]
                    # NOTE: ties: only a strictly greater value replaces the maximum, so the
                    # first maximum in scan order (i, then j) gets the gradient, as in torch.
                    # NOTE: NaN: isnan(v) always takes the tap, so the last NaN wins (torch).
                    # The first in-bounds tap is always taken: an all -inf window points at it.
                    if best_index < 0 or v > best or math.isnan(v):
                        best = v
                        best_index = r * width + q
            y[ho, wo] = best  # eq. (2); -inf when the window has no in-bounds tap
            index[ho, wo] = best_index
            # --8<-- [end:window]


def unpool_plane(gy, index, grad):
    """eq. (3) on one plane: add gy (Ho, Wo) into grad (H * W,) at the argmax of each window.
    """
    out_h, out_w = gy.shape
    for ho in range(out_h):
        for wo in range(out_w):
            # --8<-- [start:unpool]
            k = index[ho, wo]
            if k >= 0:  # -1: a window without in-bounds taps passes no gradient
                grad[k] += gy[ho, wo]  # eq. (3)
            # --8<-- [end:unpool]


def pool_planes(x, kh, kw, sh, sw, ph, pw, dh, dw, y, index):
    """Every plane: x (P, H, W) -> y (P, Ho, Wo), index (P, Ho, Wo), written in place."""
    for plane in prange(x.shape[0]):
        pool_plane(x[plane], kh, kw, sh, sw, ph, pw, dh, dw, y[plane], index[plane])


def unpool_planes(gy, index, grad):
    """Every plane: gy, index (P, Ho, Wo) -> grad (P, H * W), added in place."""
    for plane in prange(gy.shape[0]):
        unpool_plane(gy[plane], index[plane], grad[plane])


def pool(x: np.ndarray, geom, planes=pool_planes):
    """x (P, H, W) -> y (P, Ho, Wo), index (P, Ho, Wo) int64. ``geom`` is a
    :class:`~scratchvision.ops.max_pool2d.PoolGeometry`; ``planes`` the per-plane driver (the
    numba tier passes its compiled one)."""
    y = np.empty((x.shape[0],) + geom.out, dtype=x.dtype)
    index = np.empty((x.shape[0],) + geom.out, dtype=np.int64)
    planes(x, *geom.kernel, *geom.stride, *geom.padding, *geom.dilation, y, index)
    return y, index


def unpool(gy: np.ndarray, index: np.ndarray, plane_size: int,
           planes=unpool_planes) -> np.ndarray:
    """gy, index (P, Ho, Wo) -> grad (P, H * W), accumulated in gy's dtype."""
    grad = np.zeros((gy.shape[0], plane_size), dtype=gy.dtype)
    planes(gy, index, grad)
    return grad
