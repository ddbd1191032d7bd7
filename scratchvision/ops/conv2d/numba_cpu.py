"""Numba CPU tier of conv2d: parallel im2col / col2im kernels around BLAS matrix products.

Names (n, c, i, j, ho, wo, r, q) and equation numbers follow ``loop.py`` and
``docs/derivations/conv2d.md``. What changes relative to the loop tier, and why:

* **Matrix products for the sums.** As in the NumPy tier, the sums of eq. (4) become matrix
  products (eqs. 5 and 10), done by the BLAS behind NumPy, which is an order of magnitude faster
  at them than any loop we could write. What numba adds is building the column matrix (im2col)
  and folding its gradient back onto the image (col2im) in parallel compiled loops, for as many
  images at a time as fit in ``_COLUMN_BYTES``, so that BLAS gets few, large products.
* **Borders without branches in the inner loop.** For each kernel tap, ``_valid_outputs``
  computes the range of output rows (columns) whose tap lands inside the image (eqs. 2-3):
  outside it the columns are zero-filled (im2col) or skipped (col2im), inside it the inner loop
  is a plain copy or add -- contiguous, hence vectorised, for stride 1.
* **col2im without races.** Eq. (8) adds every column entry onto the pixel it was copied
  from, and neighbouring output pixels' taps land on the same input pixels: threads that split
  the columns would add into the same pixel at once. Here a work item is one (image, channel)
  plane of the input gradient: the kh * kw column rows of that channel only ever land in that
  plane, so no two threads touch the same pixel, and each plane is summed in a fixed order --
  repeated runs are bit-identical.
* **What limits it.** The matrix products are most of the work (three of them for
  forward+backward, 0.3 GFLOP each per image at the benchmark's size); im2col and col2im are
  memory-bound copies. The BLAS library keeps its worker threads spinning for a while after
  each product (about 0.1 s for OpenBLAS), and on a machine with no spare cores whatever runs
  next -- our kernels, or another library's -- competes with them for the cores. On a 2-core
  machine that makes the timings of code that alternates between thread pools slow and noisy.

Precision: NumPy's BLAS multiplies and accumulates in the input dtype (float32 stays float32);
copies are exact. In float64 the sums run in BLAS's order rather than ``loop.py``'s, so results
agree to rounding (1e-10 relative), not bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..conv_geometry import ConvGeometry

_JIT = {"parallel": True, "cache": True, "fastmath": False}

# The column matrices of the images processed together stay under this many bytes (or hold
# one image): enough to cover the benchmark's batch in one pass (fewer, larger matrix
# products), small enough not to multiply a large batch's memory by kh * kw.
_COLUMN_BYTES = 64 * 2**20


@njit(cache=True)
def _valid_outputs(padding, offset, stride, in_size, out_size):
    """The output indices ``[lo, hi)`` whose tap, at ``offset = i * dilation``, reads an input
    index ``o * stride - padding + offset`` inside ``[0, in_size)`` (eqs. 2-3)."""
    first = padding - offset  # o * stride must be >= first ...
    last = in_size - 1 + padding - offset  # ... and <= last
    if last < 0:
        return 0, 0
    lo = 0 if first <= 0 else (first + stride - 1) // stride
    hi = min(out_size, last // stride + 1)
    return min(lo, hi), hi


@njit(**_JIT)
def _im2col(x, cols, kh, kw, sh, sw, ph, pw, dh, dw, out_h, out_w):
    """eq. (5): fill ``cols`` (N, C * kh * kw, Ho * Wo) from ``x`` (N, C, H, W).

    Row ``(c * kh + i) * kw + j`` of image ``n`` holds, at column ``ho * Wo + wo``, the pixel
    that tap ``(i, j)`` of output ``(ho, wo)`` reads, or zero in the padding. Parallel over
    (image, row): each work item writes one row of ``cols``.
    """
    n_batch, channels, height, width = x.shape
    n_rows = channels * kh * kw
    for item in prange(n_batch * n_rows):
        n = item // n_rows
        row = item % n_rows
        c = row // (kh * kw)
        i = (row // kw) % kh
        j = row % kw
        dst = cols[n, row]  # (Ho * Wo,)
        ho_lo, ho_hi = _valid_outputs(ph, i * dh, sh, height, out_h)
        wo_lo, wo_hi = _valid_outputs(pw, j * dw, sw, width, out_w)
        dst[:ho_lo * out_w] = 0  # output rows whose tap i is in the top padding ...
        dst[ho_hi * out_w:] = 0  # ... or in the bottom padding (eq. 3)
        q_lo = wo_lo * sw - pw + j * dw  # eq. (2): the column read by output column wo_lo
        for ho in range(ho_lo, ho_hi):
            src = x[n, c, ho * sh - ph + i * dh]  # eq. (2): the input row tap i reads
            start = ho * out_w
            dst[start:start + wo_lo] = 0
            if sw == 1:  # the common case: a contiguous copy
                dst[start + wo_lo:start + wo_hi] = src[q_lo:q_lo + wo_hi - wo_lo]
            else:
                for wo in range(wo_lo, wo_hi):
                    dst[start + wo] = src[q_lo + (wo - wo_lo) * sw]
            dst[start + wo_hi:start + out_w] = 0


@njit(**_JIT)
def _col2im(grad_cols, grad_x, kh, kw, sh, sw, ph, pw, dh, dw, out_h, out_w):
    """eq. (8) through the columns: ``grad_x`` (N, C, H, W) from ``grad_cols``
    (N, C * kh * kw, Ho * Wo) laid out as in ``_im2col``, each column entry added back onto
    the pixel it was copied from.

    Parallel over (image, channel) planes: the kh * kw rows of ``grad_cols`` that belong to
    channel c only ever land in plane c, so each work item owns its plane (no two threads add
    into the same pixel) and adds in a fixed order (bit-identical runs). The plane stays in
    cache while the rows stream through.
    """
    n_batch, channels, height, width = grad_x.shape
    for item in prange(n_batch * channels):
        n = item // channels
        c = item % channels
        plane = grad_x[n, c]  # (H, W)
        plane[:] = 0
        for i in range(kh):
            ho_lo, ho_hi = _valid_outputs(ph, i * dh, sh, height, out_h)
            for j in range(kw):
                src = grad_cols[n, (c * kh + i) * kw + j]  # (Ho * Wo,)
                wo_lo, wo_hi = _valid_outputs(pw, j * dw, sw, width, out_w)
                q_lo = wo_lo * sw - pw + j * dw
                for ho in range(ho_lo, ho_hi):
                    dst = plane[ho * sh - ph + i * dh]  # eq. (2): the row tap i read
                    start = ho * out_w + wo_lo
                    if sw == 1:  # contiguous: a vectorised add
                        for t in range(wo_hi - wo_lo):
                            dst[q_lo + t] += src[start + t]
                    else:
                        for t in range(wo_hi - wo_lo):
                            dst[q_lo + t * sw] += src[start + t]


def _kernel_args(geom: ConvGeometry) -> tuple:
    """The geometry flattened into the int arguments of ``_im2col`` / ``_col2im``."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (out_h, out_w) = geom
    return kh, kw, sh, sw, ph, pw, dh, dw, out_h, out_w


def _image_chunks(n_batch: int, column_bytes_per_image: int):
    """Ranges of images whose column matrices fit in ``_COLUMN_BYTES`` together (at least
    one image per range)."""
    step = max(1, _COLUMN_BYTES // max(1, column_bytes_per_image))
    return [slice(start, min(n_batch, start + step)) for start in range(0, n_batch, step)]


def forward(x: np.ndarray, weight: np.ndarray, bias, geom: ConvGeometry,
            groups: int) -> np.ndarray:
    """y (N, C_out, Ho, Wo) by eq. (5), a chunk of images at a time."""
    n_batch, c_in = x.shape[:2]
    c_out = weight.shape[0]
    out_h, out_w = geom.out
    args = _kernel_args(geom)
    # (C_out, C_in/G, kh, kw) -> (G, C_out/G, C_in/G * K)
    w_groups = weight.reshape(groups, c_out // groups, -1)
    rows = c_in * geom.kernel[0] * geom.kernel[1]  # C_in * K rows of columns per image
    y = np.empty((n_batch, groups, c_out // groups, out_h * out_w), dtype=x.dtype)
    for chunk in _image_chunks(n_batch, rows * out_h * out_w * x.itemsize):
        cols = np.empty((chunk.stop - chunk.start, rows, out_h * out_w), dtype=x.dtype)
        _im2col(x[chunk], cols, *args)
        # (n, C_in * K, L) -> (n, G, C_in/G * K, L): the rows of group grp are a block
        cols = cols.reshape(cols.shape[0], groups, -1, out_h * out_w)
        # (G, C_out/G, C_in/G * K) @ (n, G, C_in/G * K, L) -> (n, G, C_out/G, L), in place
        np.matmul(w_groups, cols, out=y[chunk])
    y = y.reshape(n_batch, c_out, out_h, out_w)  # (N, G, C_out/G, L) -> (N, C_out, Ho, Wo)
    if bias is not None:
        y += bias[:, None, None]  # (C_out,) -> (C_out, 1, 1)
    return y


def backward(gy: np.ndarray, x: np.ndarray, weight: np.ndarray, has_bias: bool,
             geom: ConvGeometry, groups: int):
    """grad_input (N, C_in, H, W), grad_weight (C_out, C_in/G, kh, kw) and grad_bias
    (C_out,) or None, by eqs. (10), (8) and (6), a chunk of images at a time."""
    n_batch, c_in = x.shape[:2]
    c_out = weight.shape[0]
    out_h, out_w = geom.out
    args = _kernel_args(geom)
    w_groups = weight.reshape(groups, c_out // groups, -1)  # (G, C_out/G, C_in/G * K)
    w_groups_t = np.ascontiguousarray(w_groups.transpose(0, 2, 1))  # (G, C_in/G * K, C_out/G)
    # (N, C_out, Ho, Wo) -> (N, G, C_out/G, L)
    gy_groups = gy.reshape(n_batch, groups, c_out // groups, out_h * out_w)
    rows = c_in * geom.kernel[0] * geom.kernel[1]
    grad_weight_t = np.zeros_like(w_groups_t)
    grad_input = np.empty_like(x)
    for chunk in _image_chunks(n_batch, rows * out_h * out_w * x.itemsize):
        # one buffer for the columns of x and then, reused, for their gradient
        cols = np.empty((chunk.stop - chunk.start, rows, out_h * out_w), dtype=x.dtype)
        _im2col(x[chunk], cols, *args)
        cols_groups = cols.reshape(cols.shape[0], groups, -1, out_h * out_w)  # a view
        # eq. (10), weight, transposed (the faster shape for BLAS here):
        # (n, G, C_in/G * K, L) @ (n, G, L, C_out/G) -> (n, G, C_in/G * K, C_out/G), summed
        grad_weight_t += np.matmul(cols_groups, gy_groups[chunk].transpose(0, 1, 3, 2)).sum(0)
        # eq. (10), columns: (G, C_in/G * K, C_out/G) @ (n, G, C_out/G, L), over the columns
        np.matmul(w_groups_t, gy_groups[chunk], out=cols_groups)
        _col2im(cols, grad_input[chunk], *args)
    # (G, C_in/G * K, C_out/G) -> (G, C_out/G, C_in/G * K) -> (C_out, C_in/G, kh, kw)
    grad_weight = grad_weight_t.transpose(0, 2, 1).reshape(weight.shape)
    grad_bias = gy.sum(axis=(0, 2, 3)) if has_bias else None  # eq. (6)
    return grad_input, grad_weight, grad_bias
