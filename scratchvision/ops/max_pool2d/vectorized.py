"""NumPy tier of max pooling: every window at once, no Python loop over pixels.

What changes relative to :mod:`~scratchvision.ops.max_pool2d.loop`: the ``-inf`` padded input
is viewed as (P, Ho, Wo, kh, kw) windows with ``as_strided``, ``argmax`` picks every window's
tap at once, and the backward's scatter-add (eq. 3) is one ``bincount``. The tie, NaN and
empty-window rules are the loop tier's, restored where ``argmax`` differs (marked ``NOTE``).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided


def _first_inside(out: int, k: int, s: int, p: int, d: int, size: int) -> np.ndarray:
    """For every output position along one axis, the first in-bounds input position of its
    window (eq. 1), or -1 when no tap of the window is in bounds. (out,) int64."""
    starts = np.arange(out) * s - p
    taps = starts[:, None] + np.arange(k) * d  # (out, k) input positions
    inside = (taps >= 0) & (taps < size)
    first = np.take_along_axis(taps, np.argmax(inside, axis=1)[:, None], axis=1)[:, 0]
    return np.where(inside.any(axis=1), first, -1)


def pool(x: np.ndarray, geom):
    """As :func:`loop.pool`. What changes: the -inf padded input is viewed, without copying,
    as (P, Ho, Wo, kh, kw) windows with ``as_strided``, and ``argmax`` scans all windows at
    once (it returns the first maximum: the loop tier's tie rule)."""
    n_planes, height, width = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), _, (out_h, out_w) = geom
    # --8<-- [start:windows]
    # pad the right far enough for the last window (ceil mode may reach past the padding)
    right_h = max(0, (out_h - 1) * sh + dh * (kh - 1) + 1 - ph - height)
    right_w = max(0, (out_w - 1) * sw + dw * (kw - 1) + 1 - pw - width)
    xp = np.pad(x, ((0, 0), (ph, right_h), (pw, right_w)), constant_values=-np.inf)
    s_p, s_h, s_w = xp.strides
    # (P, H', W') -> (P, Ho, Wo, kh, kw): one output pixel moves by the stride, a tap by the
    # dilation; a read-only view, nothing is copied until the reshape below
    windows = as_strided(xp, shape=(n_planes, out_h, out_w, kh, kw),
                         strides=(s_p, sh * s_h, sw * s_w, dh * s_h, dw * s_w), writeable=False)
    taps = windows.reshape(n_planes, out_h, out_w, kh * kw)  # (P, Ho, Wo, kh * kw), a copy
    tap = np.argmax(taps, axis=-1)  # first maximum; also the first NaN, see below
    # NOTE: NaN wins, and torch's rule picks the *last* NaN: argmax of the reversed NaN mask
    is_nan = np.isnan(taps)
    last_nan = kh * kw - 1 - np.argmax(is_nan[..., ::-1], axis=-1)
    tap = np.where(is_nan.any(axis=-1), last_nan, tap)
    y = np.take_along_axis(taps, tap[..., None], axis=-1)[..., 0]  # eq. (2)
    # --8<-- [end:windows]
    # the chosen tap (i, j) -> input pixel (r, q), eq. (1)
    i, j = np.divmod(tap, kw)
    r = np.arange(out_h)[:, None] * sh - ph + i * dh
    q = np.arange(out_w) * sw - pw + j * dw
    index = r * width + q
    # NOTE: a padding tap is chosen only when every in-bounds tap is -inf (the first -inf in
    # scan order may be padding); the loop tier points at the first in-bounds tap instead,
    # or at -1 when the window has none
    first_r = _first_inside(out_h, kh, sh, ph, dh, height)[:, None]  # (Ho, 1)
    first_q = _first_inside(out_w, kw, sw, pw, dw, width)  # (Wo,)
    first = np.where((first_r >= 0) & (first_q >= 0), first_r * width + first_q, -1)
    outside = (r < 0) | (r >= height) | (q < 0) | (q >= width)
    index = np.where(outside, first, index).astype(np.int64)
    return y, index


def unpool(gy: np.ndarray, index: np.ndarray, plane_size: int) -> np.ndarray:
    """As :func:`loop.unpool`. What changes: eq. (3)'s scatter-add is one ``bincount`` over
    ``plane * H * W + index``, which sums repeated indices (accumulates in float64, then
    rounds to gy's dtype)."""
    n_planes = gy.shape[0]
    # --8<-- [start:scatter]
    chosen = index >= 0  # -1: a window without in-bounds taps passes no gradient
    target = (np.arange(n_planes)[:, None, None] * plane_size + index)[chosen]
    # eq. (3): bincount adds up the gy of every window that chose the same pixel
    grad = np.bincount(target, weights=gy[chosen], minlength=n_planes * plane_size)
    # --8<-- [end:scatter]
    return grad.reshape(n_planes, plane_size).astype(gy.dtype, copy=False)
