"""NumPy tier of conv2d: im2col with a strided view, then one matrix product per group.

What changes relative to ``loop.py``, and why: the four inner loops of eq. (4) (input channel,
kernel row, kernel column, summed; output pixel, free) are a matrix product once the input
patches are laid out as *columns* (eq. 5). The zero-padded input is viewed, without copying,
as an array indexed by (channel, kernel tap, output pixel) with ``as_strided``; reshaping that
view to a matrix makes the one copy, and BLAS does the sums.

Below, ``grp`` indexes the G groups, ``weight_grp`` is group ``grp``'s weight as a
(C_out/G, C_in/G * kh * kw) matrix (the docs' Theta_gamma) and ``gy`` the upstream gradient.

* forward (eq. 5): ``y[n, grp] = weight_grp @ cols[n, grp]``.
* backward (eq. 10): ``grad_weight_grp = sum_n gy[n, grp] @ cols[n, grp]^T``,
  ``grad_cols = weight_grp^T @ gy[n, grp]``, and ``grad_input`` = col2im(grad_cols): the scatter of
  eq. (8), done as one strided-slice addition per kernel tap (within a tap no two output pixels
  read the same input pixel, so ``+=`` on the slice is exact). ``grad_bias`` is eq. (6).

The only Python loops run over the kh * kw kernel taps, never over pixels. Arithmetic runs in
the input dtype (BLAS accumulates float32 products in float32).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..conv_geometry import ConvGeometry


def _padded(x: np.ndarray, padding) -> np.ndarray:
    """(N, C, H, W) -> (N, C, H + 2 ph, W + 2 pw) with a frame of zeros (eq. 3)."""
    ph, pw = padding
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))


# --8<-- [start:columns]
def _columns(x: np.ndarray, geom: ConvGeometry, groups: int) -> np.ndarray:
    """eq. (5): the im2col matrix of every image and group.

    Returns (N, G, C_in/G * kh * kw, Ho * Wo): row ``(cg, i, j)`` (in that order), column
    ``(ho, wo)`` holds the zero-padded input at channel ``grp * C_in/G + cg``, row
    ``ho * sh + i * dh`` and column ``wo * sw + j * dw`` of the padded image (eq. 2 shifted by
    the padding).
    """
    xp = _padded(x, geom.padding)
    n_batch, c_in = x.shape[:2]
    (kh, kw), (sh, sw), (dh, dw), (out_h, out_w) = (geom.kernel, geom.stride, geom.dilation,
                                                    geom.out)
    s_n, s_c, s_h, s_w = xp.strides
    in_per_group = c_in // groups
    # a read-only view (N, G, C_in/G, kh, kw, Ho, Wo) of xp: moving one kernel tap moves by the
    # dilation, one output pixel by the stride
    patches = as_strided(
        xp,
        shape=(n_batch, groups, in_per_group, kh, kw, out_h, out_w),
        strides=(s_n, in_per_group * s_c, s_c, dh * s_h, dw * s_w, sh * s_h, sw * s_w),
        writeable=False,
    )
    # (N, G, C_in/G, kh, kw, Ho, Wo) -> (N, G, C_in/G * kh * kw, Ho * Wo): the copy
    return patches.reshape(n_batch, groups, in_per_group * kh * kw, out_h * out_w)
# --8<-- [end:columns]


def _grouped_weight(weight: np.ndarray, groups: int) -> np.ndarray:
    """(C_out, C_in/G, kh, kw) -> (G, C_out/G, C_in/G * kh * kw), rows in the order of
    ``_columns``."""
    c_out = weight.shape[0]
    return weight.reshape(groups, c_out // groups, -1)


def forward(x: np.ndarray, weight: np.ndarray, bias, geom: ConvGeometry,
            groups: int) -> np.ndarray:
    """y (N, C_out, Ho, Wo) by eq. (5)."""
    n_batch = x.shape[0]
    c_out = weight.shape[0]
    cols = _columns(x, geom, groups)  # (N, G, C_in/G * K, L), L = Ho * Wo
    # (G, C_out/G, C_in/G * K) @ (N, G, C_in/G * K, L) -> (N, G, C_out/G, L)
    y = np.matmul(_grouped_weight(weight, groups), cols)
    y = y.reshape((n_batch, c_out) + tuple(geom.out))  # -> (N, C_out, Ho, Wo)
    if bias is not None:
        y += bias[:, None, None]  # (C_out,) -> (C_out, 1, 1)
    return y


def _col2im(grad_cols: np.ndarray, x_shape, geom: ConvGeometry) -> np.ndarray:
    """The transpose of ``_columns`` (eq. 8): add every column entry back onto the input pixel
    it was copied from.

    Args:
        grad_cols: (N, C_in, kh, kw, Ho, Wo).

    Returns:
        (N, C_in, H, W): the padded gradient with its frame cut off (pixels in the padding were
        constant zeros, eq. 3).
    """
    n_batch, c_in, height, width = x_shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (out_h, out_w) = geom
    grad_padded = np.zeros((n_batch, c_in, height + 2 * ph, width + 2 * pw),
                           dtype=grad_cols.dtype)
    for i in range(kh):
        for j in range(kw):
            # tap (i, j) of output pixel (ho, wo) read padded pixel (ho sh + i dh, wo sw + j dw):
            # over all (ho, wo) these are distinct pixels, a strided slice of the padded image
            rows = slice(i * dh, i * dh + (out_h - 1) * sh + 1, sh)
            cols = slice(j * dw, j * dw + (out_w - 1) * sw + 1, sw)
            grad_padded[:, :, rows, cols] += grad_cols[:, :, i, j]
    return grad_padded[:, :, ph:ph + height, pw:pw + width]


def backward(gy: np.ndarray, x: np.ndarray, weight: np.ndarray, has_bias: bool,
             geom: ConvGeometry, groups: int):
    """grad_input (N, C_in, H, W), grad_weight (C_out, C_in/G, kh, kw) and grad_bias
    (C_out,) or None, by eqs. (10) and (6)."""
    n_batch, c_in = x.shape[:2]
    c_out = weight.shape[0]
    (kh, kw), (out_h, out_w) = geom.kernel, geom.out
    # (N, C_out, Ho, Wo) -> (N, G, C_out/G, L)
    gy_groups = gy.reshape(n_batch, groups, c_out // groups, out_h * out_w)
    cols = _columns(x, geom, groups)  # (N, G, C_in/G * K, L)
    # eq. (10), weight: (N, G, C_out/G, L) @ (N, G, L, C_in/G * K), summed over the batch
    grad_weight = np.matmul(gy_groups, cols.transpose(0, 1, 3, 2)).sum(axis=0)
    grad_weight = grad_weight.reshape(weight.shape)  # (G, C_out/G, C_in/G * K) -> weight's
    # eq. (10), columns: (G, C_in/G * K, C_out/G) @ (N, G, C_out/G, L) -> (N, G, C_in/G * K, L)
    grad_cols = np.matmul(_grouped_weight(weight, groups).transpose(0, 2, 1), gy_groups)
    # (N, G, C_in/G * K, L) -> (N, C_in, kh, kw, Ho, Wo)
    grad_cols = grad_cols.reshape(n_batch, c_in, kh, kw, out_h, out_w)
    grad_input = _col2im(grad_cols, x.shape, geom)
    grad_bias = gy.sum(axis=(0, 2, 3)) if has_bias else None  # eq. (6)
    return np.ascontiguousarray(grad_input), grad_weight, grad_bias
