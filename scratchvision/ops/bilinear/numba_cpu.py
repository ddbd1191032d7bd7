"""Numba CPU tier of bilinear sampling and resizing: parallel kernels, same maths as ``loop.py``.

Names (x0, y0, ax, ay, w, ...) and equation numbers follow ``loop.py`` and
``docs/derivations/bilinear.md``. What changes relative to the loop tier, and why:

* **Channels-last, zero-padded image.** ``sample`` first copies the image to
  (N, H + 2, W + 2, C). A tap then reads C *contiguous* values (a few cache lines) instead of C
  values one plane apart, and the zero border makes per-tap zero padding (eq. 3) branch-free: a
  tap just outside the image reads a zero. Points that cannot have a tap inside the image
  (outside [-1, W) x [-1, H), or non-finite) are filtered *before* any float -> int conversion.
* **Tiles of points.** Points are processed in blocks of ``block`` into a (block, C) tile that
  is written transposed into ``out`` (N, C, P), so both the reads and the writes are contiguous.
* **Fused backward, per-chunk buffers.** ``sample_backward`` computes grad_points (eqs. 6-7)
  and scatters grad_image (eq. 5) in one pass over the points. Each chunk of points (a fixed
  point range of one batch element) owns a channels-last buffer, and the buffers are summed in
  chunk order afterwards: no two threads ever write the same memory and the result is
  bit-identical from run to run. The chunking depends only on the problem size and on
  ``numba.config.NUMBA_NUM_THREADS`` (fixed per process), not on ``numba.set_num_threads``.
* **Separable resize.** ``resize`` applies the 1-D tables of ``resize_tables`` (eq. 11), first
  along x for each input row, then along y; ``resize_backward`` applies their transposes as
  gathers (``adjoint_taps``, eq. 12): every input pixel collects the gradient of the outputs
  that read it, so there is no scatter at all. Both run in parallel over (N * C) planes.

Precision: all arithmetic -- weights, products and sums -- is done in the input dtype, so
float32 stays float32 end to end, as in the loop tier (both take the cell and weights from
:func:`~scratchvision.ops.bilinear.cell.cell_and_weights` in the points' dtype). In float64 the sums run in a different order than in ``loop.py`` in places (the backward's
channel and chunk sums), so results agree to rounding (1e-10 relative), not bit for bit.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from . import cell
from .resize_tables import adjoint_taps, axis_taps

_JIT = {"parallel": True, "cache": True, "fastmath": False}

# A tile of points holds about this many values (block * C): 32 KiB of float32, sized for L1.
_TILE_VALUES = 8192
_MIN_BLOCK, _MAX_BLOCK = 16, 256
# A backward chunk gets at least this many points: fewer would spend more time zeroing and
# summing its grad_image buffer than scattering into it.
_MIN_CHUNK_POINTS = 2048
# The per-chunk grad_image buffers of one backward call stay under this many bytes, or under
# _MIN_BUFFERS copies of grad_image when that is more: a many-core machine must not allocate a
# copy of a large grad_image per core.
_BUFFER_BYTES = 256 * 2**20
_MIN_BUFFERS = 4


def _block_size(channels: int) -> int:
    """Points per tile, so that a (block, C) tile stays around ``_TILE_VALUES`` values."""
    return int(min(_MAX_BLOCK, max(_MIN_BLOCK, _TILE_VALUES // channels)))


def _chunks_per_image(n_batch: int, n_points: int, n_chunks: int, min_points: int,
                      max_chunks: int | None = None) -> int:
    """How many fixed point ranges to cut each batch element's points into, so that about
    ``n_chunks`` work items exist in all, none with fewer than ``min_points`` points, and no
    more than ``max_chunks`` per batch element."""
    wanted = -(-n_chunks // n_batch)  # ceil
    if max_chunks is not None:
        wanted = min(wanted, max_chunks)
    return int(max(1, min(wanted, n_points // min_points)))


# ----------------------------------------------------------------------------- sampling

@njit(**_JIT)
def _padded_channels_last(image, padded):
    """Copy ``image`` (N, C, H, W) into the interior of ``padded`` (N, H + 2, W + 2, C), whose
    one-pixel border is (and stays) zero."""
    n_batch, channels, height, width = image.shape
    for row in prange(n_batch * height):
        n = row // height
        y = row % height
        for x in range(width):
            for c in range(channels):
                padded[n, y + 1, x + 1, c] = image[n, c, y, x]


@njit(inline="always")
def _lane_sum(values, count, zero):
    """``sum(values[:count])`` with eight interleaved partial sums (a fixed order, so the
    result is reproducible; one serial chain would stall on the add latency)."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = zero
    c = 0
    while c + 8 <= count:
        s0 += values[c]
        s1 += values[c + 1]
        s2 += values[c + 2]
        s3 += values[c + 3]
        s4 += values[c + 4]
        s5 += values[c + 5]
        s6 += values[c + 6]
        s7 += values[c + 7]
        c += 8
    tail = zero
    while c < count:
        tail += values[c]
        c += 1
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)) + tail


#: eqs. (1)-(2), the one step every tier shares (see :mod:`.cell`), compiled and inlined
cell_and_weights = njit(inline="always")(cell.cell_and_weights)


@njit(**_JIT)
def _sample_kernel(padded, points, out, chunks_per_image, block, tiles, one, scale,
                   use_scale):
    """out (N, C, P) from ``padded`` (N, H + 2, W + 2, C) and points (N, P, 2); eq. (4),
    each point's four weights times ``scale[n, p]`` when ``use_scale``.

    Work item ``item`` is chunk ``item % chunks_per_image`` of batch element
    ``item // chunks_per_image``; it fills ``tiles[item]`` (block, C) one block at a time.
    """
    n_batch, channels, n_points = out.shape
    height = padded.shape[1] - 2
    width = padded.shape[2] - 2
    zero = one - one
    for item in prange(n_batch * chunks_per_image):
        n = item // chunks_per_image
        k = item % chunks_per_image
        tile = tiles[item]
        for start in range(k * n_points // chunks_per_image,
                           (k + 1) * n_points // chunks_per_image, block):
            stop = min(start + block, (k + 1) * n_points // chunks_per_image)
            for j in range(stop - start):
                x = points[n, start + j, 0]
                y = points[n, start + j, 1]
                # NOTE: outside [-1, W) x [-1, H) every tap is outside the image; NaN fails
                # every comparison. Either way: zero, and no int conversion of x or y.
                if not (x >= -1 and x < width and y >= -1 and y < height):
                    for c in range(channels):
                        tile[j, c] = zero
                    continue
                x0, y0, ax, ay, w00, w01, w10, w11 = cell_and_weights(x, y, one)
                row, col = y0 + 1, x0 + 1  # (y0, x0) in the zero-bordered image
                if use_scale:
                    s = scale[n, start + j]
                    w00, w01, w10, w11 = s * w00, s * w01, s * w10, s * w11
                # eq. (4): taps outside the image read the zero border (eq. 3)
                for c in range(channels):
                    tile[j, c] = (w00 * padded[n, row, col, c]
                                  + w01 * padded[n, row, col + 1, c]
                                  + w10 * padded[n, row + 1, col, c]
                                  + w11 * padded[n, row + 1, col + 1, c])
            # (block, C) tile -> out[n, :, start:stop], contiguous along the points
            for c in range(channels):
                for j in range(stop - start):
                    out[n, c, start + j] = tile[j, c]


@njit(**_JIT)
def _sample_backward_kernel(gy, padded, points, grad_points, buffers, chunks_per_image,
                            block, tiles, scratch, one, scale, use_scale, values,
                            value_tiles, grad_scale):
    """Fused eqs. (5)-(7) for one chunk of points per work item.

    gy (N, C, P), padded (N, H + 2, W + 2, C), points (N, P, 2) -> grad_points (N, P, 2) and
    ``buffers`` (N * chunks_per_image, H + 2, W + 2, C): work item ``item`` scatters eq. (5)
    into ``buffers[item]`` only, using ``tiles[item]`` (block, C) for a transposed block of gy
    and ``scratch[item]`` (3, C) for the per-channel terms of eqs. (6)-(7) and of the scale's
    gradient.

    With ``use_scale`` the sampled function is ``scale[n, p] * sample`` (deformable
    convolution's mask): the upstream gradient of the sample becomes ``scale * gy``, the
    scale's own gradient ``grad_scale[n, p] = sum_c gy * sample`` is written, and the scaled
    samples themselves go to ``values`` (N, C, P) through ``value_tiles`` -- the forward's
    values, recomputed from the taps this kernel reads anyway.
    """
    n_batch, channels, n_points = gy.shape
    height = padded.shape[1] - 2
    width = padded.shape[2] - 2
    zero = one - one
    for item in prange(n_batch * chunks_per_image):
        n = item // chunks_per_image
        k = item % chunks_per_image
        tile = tiles[item]
        value_tile = value_tiles[item]
        grad_image = buffers[item]
        terms_x = scratch[item, 0]
        terms_y = scratch[item, 1]
        terms_s = scratch[item, 2]
        for start in range(k * n_points // chunks_per_image,
                           (k + 1) * n_points // chunks_per_image, block):
            stop = min(start + block, (k + 1) * n_points // chunks_per_image)
            # gy[n, :, start:stop] -> (block, C) tile: one contiguous channel vector per point
            for c in range(channels):
                for j in range(stop - start):
                    tile[j, c] = gy[n, c, start + j]
            for j in range(stop - start):
                p = start + j
                x = points[n, p, 0]
                y = points[n, p, 1]
                # NOTE: as in _sample_kernel: filtered before any int conversion
                if not (x >= -1 and x < width and y >= -1 and y < height):
                    grad_points[n, p, 0] = zero
                    grad_points[n, p, 1] = zero
                    if use_scale:
                        grad_scale[n, p] = zero
                        for c in range(channels):
                            value_tile[j, c] = zero
                    continue
                x0, y0, ax, ay, w00, w01, w10, w11 = cell_and_weights(x, y, one)
                row, col = y0 + 1, x0 + 1  # (y0, x0) in the zero-bordered image
                s = scale[n, p] if use_scale else one
                # eq. (2): the weights' partial derivatives
                dx00, dx01, dx10, dx11 = -(one - ay), one - ay, -ay, ay
                dy00, dy01, dy10, dy11 = -(one - ax), -ax, one - ax, ax
                for c in range(channels):
                    v00 = padded[n, row, col, c]
                    v01 = padded[n, row, col + 1, c]
                    v10 = padded[n, row + 1, col, c]
                    v11 = padded[n, row + 1, col + 1, c]
                    g = tile[j, c]
                    if use_scale:
                        sampled = (w00 * v00 + w01 * v01) + (w10 * v10 + w11 * v11)  # eq. (4)
                        terms_s[c] = g * sampled  # the scale's gradient, one channel's share
                        value_tile[j, c] = s * sampled
                        g = s * g  # the sample's upstream gradient
                    # eq. (5): scatter into this chunk's own buffer (border cells are discarded)
                    grad_image[row, col, c] += w00 * g
                    grad_image[row, col + 1, c] += w01 * g
                    grad_image[row + 1, col, c] += w10 * g
                    grad_image[row + 1, col + 1, c] += w11 * g
                    # eqs. (6)-(7), one channel's share; summed over channels below
                    terms_x[c] = g * (dx00 * v00 + dx01 * v01 + dx10 * v10 + dx11 * v11)
                    terms_y[c] = g * (dy00 * v00 + dy01 * v01 + dy10 * v10 + dy11 * v11)
                grad_points[n, p, 0] = _lane_sum(terms_x, channels, zero)
                grad_points[n, p, 1] = _lane_sum(terms_y, channels, zero)
                if use_scale:
                    grad_scale[n, p] = _lane_sum(terms_s, channels, zero)
            if use_scale:  # (block, C) value tile -> values[n, :, start:stop]
                for c in range(channels):
                    for j in range(stop - start):
                        values[n, c, start + j] = value_tile[j, c]


@njit(**_JIT)
def _sum_buffers(buffers, chunks_per_image, grad_image):
    """grad_image[n, c, y, x] = sum over k (in order) of buffers[n * K + k, y + 1, x + 1, c].

    buffers (N * K, H + 2, W + 2, C) are summed into their first chunk's buffer, row by row
    (each row belongs to one work item), then transposed into grad_image (N, C, H, W).
    """
    n_batch, channels, height, width = grad_image.shape
    for item in prange(n_batch * height):
        n = item // height
        y = item % height
        first = buffers[n * chunks_per_image, y + 1]  # (W + 2, C)
        for k in range(1, chunks_per_image):
            other = buffers[n * chunks_per_image + k, y + 1]
            for x in range(1, width + 1):
                for c in range(channels):
                    first[x, c] += other[x, c]
        # (W, C) -> (C, W)
        for c in range(channels):
            for x in range(width):
                grad_image[n, c, y, x] = first[x + 1, c]


def _padded(image: np.ndarray) -> np.ndarray:
    """image (N, C, H, W) -> zero-bordered channels-last copy (N, H + 2, W + 2, C)."""
    n_batch, channels, height, width = image.shape
    padded = np.zeros((n_batch, height + 2, width + 2, channels), dtype=image.dtype)
    _padded_channels_last(image, padded)
    return padded


def sample(image: np.ndarray, points: np.ndarray, scale=None) -> np.ndarray:
    """Bilinear sampling, eq. (4).

    Args:
        image: (N, C, H, W) float32 or float64, C-contiguous.
        points: (N, P, 2) pixel coordinates (x, y), same dtype.
        scale: None, or (N, P) factors, same dtype: each sample is multiplied by its point's
            factor as it is made (deformable convolution's mask, fused into the gather instead
            of a second pass over the samples).

    Returns:
        out (N, C, P), same dtype.
    """
    n_batch, channels = image.shape[:2]
    n_points = points.shape[1]
    block = _block_size(channels)
    # a few items per thread, so an unlucky chunk (points in slow memory) doesn't idle the rest
    chunks = _chunks_per_image(n_batch, n_points, 4 * numba.get_num_threads(), block)
    tiles = np.empty((n_batch * chunks, block, channels), dtype=image.dtype)
    out = np.empty((n_batch, channels, n_points), dtype=image.dtype)
    use_scale = scale is not None
    _sample_kernel(_padded(image), points, out, chunks, block, tiles, image.dtype.type(1),
                   scale if use_scale else points[:, :, 0], use_scale)
    return out


def sample_backward(gy: np.ndarray, image: np.ndarray, points: np.ndarray, scale=None):
    """Vector-Jacobian product of :func:`sample`: eqs. (5)-(7).

    Args:
        gy: (N, C, P) upstream gradient.
        image: (N, C, H, W); points: (N, P, 2) pixel (x, y). All one dtype, C-contiguous.
        scale: None, or (N, P) factors (see :func:`sample`): then the function differentiated
            is the scaled sample.

    Returns:
        grad_image (N, C, H, W) and grad_points (N, P, 2), same dtype; with ``scale`` also the
        scaled samples (N, C, P) -- the forward's output, which the kernel recomputes from the
        taps it reads anyway -- and grad_scale (N, P).
    """
    n_batch, channels, height, width = image.shape
    n_points = points.shape[1]
    block = _block_size(channels)
    # NOTE: the chunking decides the summation order of grad_image, so it must not depend on
    # anything that changes between runs (numba.get_num_threads() can): it uses the problem
    # size and the process-wide maximum thread count only.
    buffer_bytes = n_batch * (height + 2) * (width + 2) * channels * image.itemsize
    chunks = _chunks_per_image(n_batch, n_points, numba.config.NUMBA_NUM_THREADS,
                               _MIN_CHUNK_POINTS,
                               max(_MIN_BUFFERS, _BUFFER_BYTES // buffer_bytes))
    items = n_batch * chunks
    buffers = np.zeros((items, height + 2, width + 2, channels), dtype=image.dtype)
    tiles = np.empty((items, block, channels), dtype=image.dtype)
    scratch = np.empty((items, 3, channels), dtype=image.dtype)
    grad_points = np.empty_like(points)
    use_scale = scale is not None
    if use_scale:
        values = np.empty_like(gy)
        value_tiles = np.empty_like(tiles)
        grad_scale = np.empty(points.shape[:2], dtype=image.dtype)
    else:  # writable placeholders of the right types, never touched
        values = np.empty((0, 0, 0), dtype=image.dtype)
        value_tiles = np.empty((0, 0, 0), dtype=image.dtype)
        grad_scale = np.empty((0, 0), dtype=image.dtype)
    _sample_backward_kernel(gy, _padded(image), points, grad_points, buffers, chunks, block,
                            tiles, scratch, image.dtype.type(1),
                            scale if use_scale else points[:, :, 0], use_scale, values,
                            value_tiles, grad_scale)
    grad_image = np.empty_like(image)
    _sum_buffers(buffers, chunks, grad_image)
    if use_scale:
        return grad_image, grad_points, values, grad_scale
    return grad_image, grad_points


# ----------------------------------------------------------------------------- resizing

@njit(**_JIT)
def _resize_kernel(x, out, x0, x1, lx0, lx1, y0, y1, ly0, ly1, rows_needed, two_taps,
                   plane_chunks, rows):
    """Separable resize of x (Q, H, W) planes into out (Q, Ho, Wo); eq. (11), or eq. (10) when
    ``two_taps`` is False (nearest: only tap 0 is read, so a copied value stays bit-exact).

    x0, x1, lx0, lx1 (Wo,) and y0, y1, ly0, ly1 (Ho,) are the columns of the ``axis_taps``
    tables (output o reads l0[o] * in[i0[o]] + l1[o] * in[i1[o]]); ``rows_needed`` (H,) marks
    the input rows some output row reads. Chunk t handles a fixed range of planes and owns
    ``rows[t]`` (H, Wo), the input rows interpolated along x.
    """
    n_planes, height, _ = x.shape
    out_h, out_w = out.shape[1:]
    for t in prange(plane_chunks):
        r = rows[t]
        for q in range(t * n_planes // plane_chunks, (t + 1) * n_planes // plane_chunks):
            # eq. (11), inner sums: interpolate along x every input row that is read
            for i in range(height):
                if not rows_needed[i]:
                    continue
                src = x[q, i]  # (W,)
                dst = r[i]  # (Wo,)
                if two_taps:
                    for ox in range(out_w):
                        dst[ox] = lx0[ox] * src[x0[ox]] + lx1[ox] * src[x1[ox]]
                else:
                    for ox in range(out_w):
                        dst[ox] = src[x0[ox]]
            # eq. (11), outer sum: interpolate along y, whole rows at a time
            for oy in range(out_h):
                top = r[y0[oy]]
                dst = out[q, oy]
                if two_taps:
                    bottom = r[y1[oy]]
                    a = ly0[oy]
                    b = ly1[oy]
                    for ox in range(out_w):
                        dst[ox] = a * top[ox] + b * bottom[ox]
                else:
                    dst[:] = top


@njit(**_JIT)
def _resize_backward_kernel(gy, grad, x_indptr, x_out, x_weight, y_indptr, y_out, y_weight,
                            plane_chunks, rows, cols, grad_t):
    """Eq. (12) as two gathers: grad (Q, H, W) from gy (Q, Ho, Wo) planes.

    The ``adjoint_taps`` tables (CSR rows of A^T) say, for input row i (column j), which output
    rows (columns) read it and with what weight. Both gathers run over whole contiguous rows:
    the x gather works on transposed planes, so that it too adds rows instead of single values.
    Chunk t handles a fixed range of planes and owns the scratch planes ``rows[t]`` (H, Wo),
    ``cols[t]`` (Wo, H) and ``grad_t[t]`` (W, H).
    """
    n_planes, height, width = grad.shape
    out_w = gy.shape[2]
    zero = x_weight[0] - x_weight[0]
    for t in prange(plane_chunks):
        r = rows[t]
        col = cols[t]
        g_t = grad_t[t]
        for q in range(t * n_planes // plane_chunks, (t + 1) * n_planes // plane_chunks):
            # transpose of the y pass: input row i gathers the output rows that read it
            for i in range(height):
                dst = r[i]  # (Wo,)
                dst[:] = zero
                for e in range(y_indptr[i], y_indptr[i + 1]):
                    src = gy[q, y_out[e]]  # (Wo,)
                    ly = y_weight[e]
                    for ox in range(out_w):
                        dst[ox] += ly * src[ox]
            # (H, Wo) -> (Wo, H)
            for i in range(height):
                for ox in range(out_w):
                    col[ox, i] = r[i, ox]
            # transpose of the x pass: input column j gathers the output columns that read it
            for j in range(width):
                dst = g_t[j]  # (H,)
                dst[:] = zero
                for e in range(x_indptr[j], x_indptr[j + 1]):
                    src = col[x_out[e]]  # (H,)
                    lx = x_weight[e]
                    for i in range(height):
                        dst[i] += lx * src[i]
            # (W, H) -> (H, W)
            for i in range(height):
                for j in range(width):
                    grad[q, i, j] = g_t[j, i]


def _plane_chunks(n_planes: int) -> int:
    """Fixed plane ranges for the resize kernels: a few per thread, at most one per plane."""
    return int(max(1, min(n_planes, 4 * numba.get_num_threads())))


def resize(x: np.ndarray, out_h: int, out_w: int, align_corners: bool, mode: str
           ) -> np.ndarray:
    """Separable bilinear / nearest resize, eqs. (8)-(11).

    Args:
        x: (N, C, H, W) float32 or float64, C-contiguous.
        out_h, out_w: output size; align_corners, mode: as ``F.interpolate``.

    Returns:
        (N, C, out_h, out_w), same dtype.
    """
    n_batch, channels, height, width = x.shape
    tx = axis_taps(width, out_w, align_corners, mode)
    ty = axis_taps(height, out_h, align_corners, mode)
    two_taps = mode == "bilinear"
    rows_needed = np.zeros(height, dtype=np.bool_)
    rows_needed[ty.index[:, : 2 if two_taps else 1].ravel()] = True
    n_planes = n_batch * channels
    chunks = _plane_chunks(n_planes)
    rows = np.empty((chunks, height, out_w), dtype=x.dtype)
    out = np.empty((n_planes, out_h, out_w), dtype=x.dtype)
    # (out, 2) tables -> one contiguous array per column, weights in the data's dtype
    x0, x1 = np.ascontiguousarray(tx.index.T)
    lx0, lx1 = np.ascontiguousarray(tx.weight.T, dtype=x.dtype)
    y0, y1 = np.ascontiguousarray(ty.index.T)
    ly0, ly1 = np.ascontiguousarray(ty.weight.T, dtype=x.dtype)
    # (N, C, H, W) -> (N * C, H, W) planes
    _resize_kernel(x.reshape(n_planes, height, width), out, x0, x1, lx0, lx1, y0, y1, ly0,
                   ly1, rows_needed, two_taps, chunks, rows)
    return out.reshape(n_batch, channels, out_h, out_w)  # (N * C, Ho, Wo) -> (N, C, Ho, Wo)


def resize_backward(gy: np.ndarray, height: int, width: int, align_corners: bool, mode: str
                    ) -> np.ndarray:
    """Vector-Jacobian product of :func:`resize`, eq. (12), as gathers (no scatter).

    Args:
        gy: (N, C, Ho, Wo) upstream gradient, float32 or float64, C-contiguous.
        height, width: the input size H, W; align_corners, mode: as for :func:`resize`.

    Returns:
        grad_input (N, C, H, W), gy's dtype.
    """
    n_batch, channels, out_h, out_w = gy.shape
    ax = adjoint_taps(axis_taps(width, out_w, align_corners, mode), width)
    ay = adjoint_taps(axis_taps(height, out_h, align_corners, mode), height)
    n_planes = n_batch * channels
    chunks = _plane_chunks(n_planes)
    rows = np.empty((chunks, height, out_w), dtype=gy.dtype)
    cols = np.empty((chunks, out_w, height), dtype=gy.dtype)
    grad_t = np.empty((chunks, width, height), dtype=gy.dtype)
    grad = np.empty((n_planes, height, width), dtype=gy.dtype)
    # (N, C, Ho, Wo) -> (N * C, Ho, Wo) planes
    _resize_backward_kernel(gy.reshape(n_planes, out_h, out_w), grad,
                            ax.indptr, ax.out_index, ax.weight.astype(gy.dtype),
                            ay.indptr, ay.out_index, ay.weight.astype(gy.dtype),
                            chunks, rows, cols, grad_t)
    return grad.reshape(n_batch, channels, height, width)  # (N * C, H, W) -> (N, C, H, W)
