"""Numba CPU tier of conv2d: blocks of im2col columns multiplied in place, in numba's threads.

Names (n, c, i, j, ho, wo, r, q, grp) and equation numbers follow ``loop.py`` and
``docs/derivations/conv2d.md``. What changes relative to the loop tier, and why:

* **Matrix products for the sums.** As in the NumPy tier, the sums of eq. (4) become matrix
  products of the weight with im2col columns (eqs. 5 and 10), done by BLAS, which is an order
  of magnitude faster at them than any loop we could write.
* **Blocks, one thread pool.** A work item is one image and a band of output rows: it fills
  the columns of that band into a buffer of its own (about an L2 cache's worth) and multiplies
  them by the weight with ``np.dot`` right there, inside numba's parallel loop -- BLAS runs
  single-threaded in the numba worker (see :mod:`scratchvision._threads`). The columns of a
  band are used while they are in cache, and no second thread pool (BLAS's own workers) ever
  competes with numba's for the cores.
* **Borders without branches in the inner loop.** For each kernel tap, ``_valid_outputs``
  computes the range of output rows (columns) whose tap lands inside the image (eqs. 2-3):
  outside it the columns are zero-filled (im2col) or skipped (col2im), inside it the inner loop
  is a plain copy or add -- contiguous, hence vectorised, for stride 1.
* **Backward in two race-free passes.** Pass one, per band: the weight gradient's share of the
  band (eq. 10, first product) into a buffer of the band's own, and the band's column
  gradient (eq. 10, second product) into the column-gradient matrix. Pass two folds the column
  gradient back onto the image (col2im, eq. 8) one (image, channel) plane per work item: the
  kh * kw column rows of channel c only ever land in plane c, so no two threads add into the
  same pixel. The bands' weight gradients are summed in band order afterwards. No atomics,
  no shared accumulators: repeated runs are bit-identical.

Precision: BLAS multiplies and accumulates in the input dtype (float32 stays float32); copies
are exact. In float64 the sums run in BLAS's order rather than ``loop.py``'s, so results
agree to rounding (1e-10 relative), not bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..._threads import single_threaded_blas
from ..conv_geometry import ConvGeometry

_JIT = {"parallel": True, "cache": True, "fastmath": False}
# Columns per band (output pixels per work item): with C_in * K column rows of float32 the
# band's matrix is C_in * K KiB -- a few hundred KiB for the layers here, L2-sized.
_BAND_COLUMNS = 256

# The column-gradient matrices of the images processed together in the backward stay under
# this many bytes (or hold one image): a large batch's memory is not multiplied by kh * kw.
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


@njit(inline="always")
def _fill_columns(x, n, ho0, ho1, cols, kh, kw, sh, sw, ph, pw, dh, dw, out_w):
    """eq. (5) for the output rows ``[ho0, ho1)`` of image n: ``cols`` (C * kh * kw,
    (ho1 - ho0) * Wo) from ``x`` (N, C, H, W).

    Row ``(c * kh + i) * kw + j`` holds, at column ``(ho - ho0) * Wo + wo``, the pixel that
    tap ``(i, j)`` of output ``(ho, wo)`` reads, or zero in the padding.
    """
    channels, height, width = x.shape[1:]
    for row in range(cols.shape[0]):
        c = row // (kh * kw)
        i = (row // kw) % kh
        j = row % kw
        dst = cols[row]  # ((ho1 - ho0) * Wo,)
        valid_lo, valid_hi = _valid_outputs(ph, i * dh, sh, height, ho1)
        ho_lo = max(ho0, valid_lo)
        ho_hi = max(ho_lo, valid_hi)
        wo_lo, wo_hi = _valid_outputs(pw, j * dw, sw, width, out_w)
        dst[:(ho_lo - ho0) * out_w] = 0  # output rows whose tap i is in the top padding ...
        dst[(ho_hi - ho0) * out_w:] = 0  # ... or in the bottom padding (eq. 3)
        q_lo = wo_lo * sw - pw + j * dw  # eq. (2): the column read by output column wo_lo
        for ho in range(ho_lo, ho_hi):
            src = x[n, c, ho * sh - ph + i * dh]  # eq. (2): the input row tap i reads
            start = (ho - ho0) * out_w
            dst[start:start + wo_lo] = 0
            if sw == 1:  # the common case: a contiguous copy
                dst[start + wo_lo:start + wo_hi] = src[q_lo:q_lo + wo_hi - wo_lo]
            else:
                for wo in range(wo_lo, wo_hi):
                    dst[start + wo] = src[q_lo + (wo - wo_lo) * sw]
            dst[start + wo_hi:start + out_w] = 0


@njit(**_JIT)
def _forward_kernel(x, w_groups, bias, y, kh, kw, sh, sw, ph, pw, dh, dw, out_h, out_w,
                    band_rows, use_bias):
    """y (N, C_out, Ho, Wo) by eq. (5), one (image, band of ``band_rows`` output rows) per
    work item: fill the band's columns, multiply each group's by its weight block."""
    channels = x.shape[1]
    groups, out_per_group, rows_per_group = w_groups.shape
    n_bands = (out_h + band_rows - 1) // band_rows
    for item in prange(x.shape[0] * n_bands):
        n = item // n_bands
        ho0 = (item % n_bands) * band_rows
        ho1 = min(out_h, ho0 + band_rows)
        width = (ho1 - ho0) * out_w  # the band's columns
        cols = np.empty((channels * kh * kw, width), dtype=x.dtype)
        _fill_columns(x, n, ho0, ho1, cols, kh, kw, sh, sw, ph, pw, dh, dw, out_w)
        product = np.empty((out_per_group, width), dtype=x.dtype)
        for grp in range(groups):
            # eq. (5): (C_out/G, C_in/G * K) @ (C_in/G * K, band) -> (C_out/G, band)
            np.dot(w_groups[grp], cols[grp * rows_per_group:(grp + 1) * rows_per_group],
                   product)
            for o in range(out_per_group):
                channel = grp * out_per_group + o
                shift = bias[channel] if use_bias else x.dtype.type(0)
                dst = y[n, channel].reshape(out_h * out_w)[ho0 * out_w:ho1 * out_w]
                for t in range(width):
                    dst[t] = product[o, t] + shift


@njit(**_JIT)
def _backward_bands(gy, x, w_groups_t, grad_cols, weight_parts, kh, kw, sh, sw, ph, pw, dh,
                    dw, out_h, out_w, band_rows):
    """Pass one of the backward, per (image, band): ``weight_parts[item]`` (G, C_in/G * K,
    C_out/G) = the band's columns times its gy, transposed (eq. 10, first product), and the
    band's slice of ``grad_cols`` (N, C_in * K, Ho * Wo) = W^T gy (eq. 10, second)."""
    channels = x.shape[1]
    groups, rows_per_group, out_per_group = w_groups_t.shape
    n_bands = (out_h + band_rows - 1) // band_rows
    for item in prange(x.shape[0] * n_bands):
        n = item // n_bands
        ho0 = (item % n_bands) * band_rows
        ho1 = min(out_h, ho0 + band_rows)
        width = (ho1 - ho0) * out_w
        cols = np.empty((channels * kh * kw, width), dtype=x.dtype)
        _fill_columns(x, n, ho0, ho1, cols, kh, kw, sh, sw, ph, pw, dh, dw, out_w)
        # gy of the band, (C_out, band), contiguous for BLAS
        g_band = np.empty((groups * out_per_group, width), dtype=x.dtype)
        for o in range(g_band.shape[0]):
            g_band[o] = gy[n, o].reshape(out_h * out_w)[ho0 * out_w:ho1 * out_w]
        grad_band = np.empty((rows_per_group, width), dtype=x.dtype)
        for grp in range(groups):
            cols_g = cols[grp * rows_per_group:(grp + 1) * rows_per_group]
            g_g = g_band[grp * out_per_group:(grp + 1) * out_per_group]
            # eq. (10), weight (transposed): (C_in/G * K, band) @ (band, C_out/G)
            np.dot(cols_g, g_g.T, weight_parts[item, grp])
            # eq. (10), columns: (C_in/G * K, C_out/G) @ (C_out/G, band)
            np.dot(w_groups_t[grp], g_g, grad_band)
            for r in range(rows_per_group):
                grad_cols[n, grp * rows_per_group + r, ho0 * out_w:ho1 * out_w] = grad_band[r]


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
    """The geometry flattened into the int arguments of the kernels."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (out_h, out_w) = geom
    return kh, kw, sh, sw, ph, pw, dh, dw, out_h, out_w


def _image_chunks(n_batch: int, column_bytes_per_image: int):
    """Ranges of images whose column-gradient matrices fit in ``_COLUMN_BYTES`` together (at
    least one image per range)."""
    step = max(1, _COLUMN_BYTES // max(1, column_bytes_per_image))
    return [slice(start, min(n_batch, start + step)) for start in range(0, n_batch, step)]


def _band_rows(out_w: int) -> int:
    """Output rows per band: about ``_BAND_COLUMNS`` columns (the band's column matrix then
    stays around an L2 cache's worth for the layer sizes of this library)."""
    return max(1, _BAND_COLUMNS // out_w)


def forward(x: np.ndarray, weight: np.ndarray, bias, geom: ConvGeometry,
            groups: int) -> np.ndarray:
    """y (N, C_out, Ho, Wo) by eq. (5), band by band."""
    c_out = weight.shape[0]
    w_groups = weight.reshape(groups, c_out // groups, -1)  # (G, C_out/G, C_in/G * K)
    y = np.empty((x.shape[0], c_out) + geom.out, dtype=x.dtype)
    use_bias = bias is not None
    with single_threaded_blas():
        _forward_kernel(x, w_groups, bias if use_bias else w_groups[0, 0], y,
                        *_kernel_args(geom), _band_rows(geom.out[1]), use_bias)
    return y


def backward(gy: np.ndarray, x: np.ndarray, weight: np.ndarray, has_bias: bool,
             geom: ConvGeometry, groups: int):
    """grad_input (N, C_in, H, W), grad_weight (C_out, C_in/G, kh, kw) and grad_bias
    (C_out,) or None, by eqs. (10), (8) and (6), a chunk of images at a time."""
    n_batch, c_in = x.shape[:2]
    c_out = weight.shape[0]
    out_h, out_w = geom.out
    args = _kernel_args(geom)
    band_rows = _band_rows(out_w)
    n_bands = -(-out_h // band_rows)
    # (C_out, C_in/G, kh, kw) -> (G, C_out/G, C_in/G * K) -> (G, C_in/G * K, C_out/G)
    w_groups_t = np.ascontiguousarray(weight.reshape(groups, c_out // groups, -1)
                                      .transpose(0, 2, 1))
    rows = c_in * geom.kernel[0] * geom.kernel[1]
    grad_weight_t = np.zeros_like(w_groups_t)
    grad_input = np.empty_like(x)
    with single_threaded_blas():
        for chunk in _image_chunks(n_batch, rows * out_h * out_w * x.itemsize):
            count = chunk.stop - chunk.start
            grad_cols = np.empty((count, rows, out_h * out_w), dtype=x.dtype)
            parts = np.empty((count * n_bands,) + w_groups_t.shape, dtype=x.dtype)
            _backward_bands(gy[chunk], x[chunk], w_groups_t, grad_cols, parts, *args,
                            band_rows)
            grad_weight_t += parts.sum(axis=0)  # the bands' shares, in band order
            _col2im(grad_cols, grad_input[chunk], *args)
    # (G, C_in/G * K, C_out/G) -> (G, C_out/G, C_in/G * K) -> (C_out, C_in/G, kh, kw)
    grad_weight = grad_weight_t.transpose(0, 2, 1).reshape(weight.shape)
    grad_bias = gy.sum(axis=(0, 2, 3)) if has_bias else None  # eq. (6)
    return grad_input, grad_weight, grad_bias
