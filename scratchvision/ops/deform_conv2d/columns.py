"""Deformable convolution as "sample the columns, then one GEMM": the computation the numpy and
numba tiers share.

``loop.py`` evaluates eq. (4) one output pixel at a time and samples the same
``X_c(p_k)`` once for every output channel that reads it. The fast tiers reorganise it the way
an ordinary convolution becomes im2col + GEMM, with bilinear sampling in place of im2col:

1. **Points** (eq. 1): for every offset group g, tap k and output pixel p the sampling point
   (x, y), an array (N * G, K * P, 2), P = Ho * Wo.
2. **Columns** (eq. 3): one call of the bilinear tier's ``sample`` on x seen as N * G images
   of C / G channels -- offset group g of batch element n is image ``n * G + g``, a free
   reshape of (N, C, H, W) -- gives the columns (N, C, K, P). The mask (eq. 2) scales them.
3. **GEMM** (eq. 4): with the weight as a matrix (O, C / groups * K) per weight group,
   ``Y[n] = W @ columns[n]`` (plus the bias), a product of (O, C * K) by (C * K, P) per group.

Backward, in the same terms:

* ``Gamma = W^T @ gy[n]``, the gradient of the modulated columns (eq. 7 before the mask);
* grad_weight ``= sum_n gy[n] @ (m * columns[n])^T`` (eq. 6); grad_bias sums gy (eq. 5);
* grad_mask ``= sum over the channels of an offset group of columns * Gamma`` (eq. 8), a
  gather: every output element is written by one reduction;
* ``m * Gamma`` is the gradient of the sampled values (eq. 7), and the bilinear tier's
  ``sample_backward`` turns it into grad_input (eq. 9) and the point gradients, which are
  grad_offset (eq. 10) with (x, y) swapped into the (dy, dx) layout. The input scatter is the
  bilinear tier's: race-free there (a sparse transpose product in the numpy tier, per-chunk
  buffers summed in a fixed order in the numba tier).

The columns hold C * K values per output pixel (K times the input), so a large batch is
processed in consecutive chunks of batch elements whose columns fit in ``COLUMN_BYTES``; the
weight gradient sums the chunks in order. The chunk size depends on the sizes only, and the
last chunk may be shorter (no divisor rule).

:class:`ColumnTier` holds these steps. A tier module is one instance, built on its bilinear
tier; the numba tier subclasses it to replace the two mask steps by numba kernels (and to run
them on one thread, see its module docstring). The GEMMs are ``np.matmul`` (BLAS) in both.
Arithmetic runs in the input dtype (BLAS accumulates float32 products in float32).
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from ..conv_geometry import ConvGeometry


def grid_positions(geom: ConvGeometry, dtype) -> tuple[np.ndarray, np.ndarray]:
    """eq. (1) without the offsets: the rows (K, Ho, 1) and columns (K, 1, Wo) that tap k of
    output pixel (ho, wo) reads in an ordinary convolution, ``ho * sh - ph + i * dh`` and
    ``wo * sw - pw + j * dw`` with k = i * kw + j, exact integers in ``dtype``."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geom.kernel, geom.stride, geom.padding, geom.dilation
    out_h, out_w = geom.out
    i, j = np.divmod(np.arange(kh * kw), kw)  # (K,) each
    rows = (np.arange(out_h) * sh - ph)[None, :, None] + (i * dh)[:, None, None]
    cols = (np.arange(out_w) * sw - pw)[None, None, :] + (j * dw)[:, None, None]
    return rows.astype(dtype), cols.astype(dtype)


def sampling_points(offset: np.ndarray, geom: ConvGeometry) -> np.ndarray:
    """eq. (1) for every point: offset (N, 2 * G * K, Ho, Wo) -> points
    (N * G, K * Ho * Wo, 2) as (x, y), ordered (g, k, ho, wo) within batch element n."""
    n_batch, offset_channels, out_h, out_w = offset.shape
    n_taps = geom.kernel[0] * geom.kernel[1]
    groups = offset_channels // (2 * n_taps)
    rows, cols = grid_positions(geom, offset.dtype)
    # (N, 2 * G * K, Ho, Wo) -> (N, G, K, 2, Ho, Wo): [..., 0, :, :] is dy, [..., 1, :, :] dx
    dy_dx = offset.reshape(n_batch, groups, n_taps, 2, out_h, out_w)
    points = np.empty((n_batch, groups, n_taps, out_h, out_w, 2), dtype=offset.dtype)
    points[..., 0] = cols + dy_dx[:, :, :, 1]  # x = grid column + dx
    points[..., 1] = rows + dy_dx[:, :, :, 0]  # y = grid row + dy
    # (N, G, K, Ho, Wo, 2) -> (N * G, K * Ho * Wo, 2)
    return points.reshape(n_batch * groups, n_taps * out_h * out_w, 2)


def offset_gradient(grad_points: np.ndarray, offset_shape) -> np.ndarray:
    """eq. (10): grad_points (N * G, K * P, 2) as (x, y) -> grad_offset
    (N, 2 * G * K, Ho, Wo) in the (dy, dx) layout."""
    n_batch, offset_channels, out_h, out_w = offset_shape
    # (N * G, K * P, 2) -> (N, G * K, P, 2) -> (N, G * K, 2, P), then swap x and y
    per_tap = grad_points.reshape(n_batch, offset_channels // 2, out_h * out_w, 2)
    dy_dx = per_tap.transpose(0, 1, 3, 2)[:, :, ::-1]
    return np.ascontiguousarray(dy_dx).reshape(offset_shape)


# The columns of one batch chunk stay under this many bytes (the backward holds them and their
# gradient): a large batch is processed a few elements at a time, however many there are.
COLUMN_BYTES = 256 * 2**20


def column_bytes(x: np.ndarray, weight: np.ndarray, geom: ConvGeometry) -> int:
    """Bytes of the columns of one batch element: C * K * Ho * Wo values."""
    return (x.shape[1] * weight.shape[2] * weight.shape[3] * geom.out[0] * geom.out[1]
            * x.itemsize)


def batch_chunks(n_batch: int, bytes_per_element: int) -> list[slice]:
    """Consecutive batch slices whose columns fit in ``COLUMN_BYTES`` (at least one element
    each; the last slice may be shorter: no divisor rule)."""
    size = max(1, COLUMN_BYTES // max(1, bytes_per_element))
    return [slice(start, min(start + size, n_batch)) for start in range(0, n_batch, size)]


class ColumnTier:
    """forward / backward of the deformable-convolution tier contract, computed with the
    bilinear tier ``bilinear`` (a module with ``sample`` and ``sample_backward``)."""

    def __init__(self, bilinear: ModuleType):
        self.bilinear = bilinear

    # ------------------------------------------------------------------ matrix products

    @staticmethod
    def products(a: np.ndarray, b: np.ndarray, b_transposed: bool = False) -> np.ndarray:
        """``a[i % A] @ b[i]`` (``@ b[i].T`` if ``b_transposed``) for every i: a (A, M, K),
        b (B, K, N) or (B, N, K) -> (B, M, N). NumPy's matmul here; the numba tier runs the
        products in numba's threads (:func:`scratchvision.ops.gemm.matmul`)."""
        if b_transposed:
            b = b.transpose(0, 2, 1)
        # (A, M, K) -> (B // A, A, M, K) broadcast against (B // A, A, K, N)
        stacked = np.matmul(a, b.reshape((-1, a.shape[0]) + b.shape[1:]))
        return stacked.reshape((b.shape[0],) + stacked.shape[2:])

    # ------------------------------------------------------------------ elementwise steps

    def sample_backward(self, gamma, images, points, mask):
        """The sampling's backward, given ``gamma`` (N * G, C / G, K * P), the gradient of the
        *modulated* columns: returns the modulated columns (for eq. 6), grad_mask (N, G * K,
        Ho, Wo) by eq. (8) or None, and grad_images, grad_points from the bilinear backward
        of the sampled values' gradient ``m * gamma`` (eqs. 7, 9, 10)."""
        columns = self.bilinear.sample(images, points)  # (N * G, C / G, K * P), unmodulated
        if mask is None:
            return (columns, None) + tuple(self.bilinear.sample_backward(gamma, images, points))
        n_images, _, n_samples = columns.shape
        m = mask.reshape(n_images, 1, n_samples)  # (N, G * K, Ho, Wo) -> (N * G, 1, K * P)
        grad_mask = np.einsum("icp,icp->ip", columns, gamma).reshape(mask.shape)  # eq. (8)
        columns *= m
        grad_images, grad_points = self.bilinear.sample_backward(gamma * m, images, points)
        return columns, grad_mask, grad_images, grad_points  # eq. (7): gamma * m above

    # ------------------------------------------------------------------ the two passes

    def sample(self, images, points, mask):
        """The bilinear tier's ``sample(images, points)``, then the mask (eq. 2): columns
        (N * G, C / G, K * P); ``mask`` None or (N, G * K, Ho, Wo)."""
        columns = self.bilinear.sample(images, points)
        if mask is not None:
            n_images, group_channels, n_samples = columns.shape
            # (N, G * K, Ho, Wo) -> (N * G, 1, K * P), broadcast over the group's channels
            columns *= mask.reshape(n_images, 1, n_samples)
        return columns

    @staticmethod
    def _images_and_points(x, offset, geom, offset_groups):
        """eq. (1): the bilinear "images" (N * G, C / G, H, W), one per offset group, and their
        points (N * G, K * P, 2)."""
        n_batch, channels, height, width = x.shape
        images = x.reshape(n_batch * offset_groups, channels // offset_groups, height, width)
        return images, sampling_points(offset, geom)

    def _columns(self, x, offset, geom, offset_groups, mask=None):
        """eqs. (1)-(3): points (N * G, K * P, 2) and columns (N, G, C / G, K, P), times the
        mask if one is given."""
        n_batch, channels = x.shape[:2]
        n_taps = geom.kernel[0] * geom.kernel[1]
        images, points = self._images_and_points(x, offset, geom, offset_groups)
        columns = self.sample(images, points, mask)  # (N * G, C / G, K * P)
        # (N * G, C / G, K * P) -> (N, G, C / G, K, P)
        shape = (n_batch, offset_groups, channels // offset_groups, n_taps, -1)
        return images, points, columns.reshape(shape)

    def forward(self, x, offset, weight, bias, mask, geom, offset_groups, weight_groups):
        """out (N, O, Ho, Wo), eq. (4): a GEMM per batch element and weight group."""
        out = np.empty((x.shape[0], weight.shape[0]) + geom.out, dtype=x.dtype)
        for batch in batch_chunks(x.shape[0], column_bytes(x, weight, geom)):
            out[batch] = self._forward_chunk(x[batch], offset[batch], weight, bias,
                                             None if mask is None else mask[batch], geom,
                                             offset_groups, weight_groups)
        return out

    def backward(self, gy, x, offset, weight, has_bias, mask, geom, offset_groups,
                 weight_groups):
        """(grad_input, grad_offset, grad_weight, grad_bias or None, grad_mask or None),
        eqs. (5)-(10). The weight gradient sums over the batch chunks, in order."""
        grad_input = np.empty_like(x)
        grad_offset = np.empty_like(offset)
        grad_weight = np.zeros_like(weight)
        grad_mask = None if mask is None else np.empty_like(mask)
        for batch in batch_chunks(x.shape[0], column_bytes(x, weight, geom)):
            grads = self._backward_chunk(gy[batch], x[batch], offset[batch], weight,
                                         None if mask is None else mask[batch], geom,
                                         offset_groups, weight_groups)
            grad_input[batch], grad_offset[batch], weight_part, mask_part = grads
            grad_weight += weight_part
            if mask is not None:
                grad_mask[batch] = mask_part
        grad_bias = gy.sum(axis=(0, 2, 3)) if has_bias else None  # eq. (5)
        return grad_input, grad_offset, grad_weight, grad_bias, grad_mask

    def _forward_chunk(self, x, offset, weight, bias, mask, geom, offset_groups,
                       weight_groups):
        n_batch = x.shape[0]
        out_channels = weight.shape[0]
        _, _, columns = self._columns(x, offset, geom, offset_groups, mask)  # modulated
        # (N, G, C/G, K, P) -> (N, groups, C/groups * K, P); weight (O, C/groups, kh, kw)
        # -> (groups, O/groups, C/groups * K): rows and columns both ordered (c, k)
        columns = columns.reshape(n_batch * weight_groups, -1, columns.shape[-1])
        matrix = weight.reshape(weight_groups, out_channels // weight_groups, -1)
        out = self.products(matrix, columns)  # (N * groups, O/groups, P), eq. (4)
        out = out.reshape((n_batch, out_channels) + geom.out)
        if bias is not None:
            out += bias[:, None, None]
        return out

    def _backward_chunk(self, gy, x, offset, weight, mask, geom, offset_groups,
                        weight_groups):
        """grad_input, grad_offset, grad_weight (this chunk's share) and grad_mask or None.

        The order keeps the two GEMMs apart from the sampling steps (GEMM, then sample,
        mask and bilinear backward, then GEMM): the numba tier's kernels and BLAS run on
        different thread pools, and every switch between them costs time.
        """
        n_batch = x.shape[0]
        out_channels = weight.shape[0]
        # gy (N, O, Ho, Wo) -> (N * groups, O/groups, P); weight -> (groups, O/groups, C/g * K)
        gy_groups = gy.reshape(n_batch * weight_groups, out_channels // weight_groups, -1)
        matrix = weight.reshape(weight_groups, out_channels // weight_groups, -1)
        # eq. (7), Gamma = W^T @ gy:
        # (groups, C/g * K, O/g) @ (N * groups, O/g, P) -> (N * groups, C/g * K, P)
        gamma = self.products(np.ascontiguousarray(matrix.transpose(0, 2, 1)), gy_groups)
        images, points = self._images_and_points(x, offset, geom, offset_groups)
        # (N * groups, C/g * K, P) -> (N * G, C/G, K * P): the same memory
        gamma = gamma.reshape(images.shape[:2] + (-1,))
        # eqs. (7)-(10): modulated columns, grad_mask and the bilinear backward
        columns, grad_mask, grad_images, grad_points = self.sample_backward(gamma, images,
                                                                            points, mask)
        # eq. (6): sum_n gy[n] @ (m * columns[n])^T,
        # (N * groups, O/g, P) @ (N * groups, P, C/g * K) -> (N, groups, O/g, C/g * K), summed
        modulated = columns.reshape(n_batch * weight_groups, -1, gy_groups.shape[-1])
        per_image = self.products(gy_groups, modulated, b_transposed=True)
        grad_weight = per_image.reshape((n_batch,) + matrix.shape).sum(axis=0)
        return (grad_images.reshape(x.shape), offset_gradient(grad_points, offset.shape),
                grad_weight.reshape(weight.shape), grad_mask)
