"""Loop tier of deformable convolution: the executable specification.

It reads like the formula of DCNv2,

    Y(p0) = b + sum_k w_k * m_k * X(p0 + p_k + dp_k),

one Python-level step per output pixel, kernel tap and input channel, so that every quantity
has a name. Equation numbers in the comments refer to ``docs/derivations/deform_conv2d.md``.
Bilinear sampling is not written again here: ``point_taps`` of
:mod:`scratchvision.ops.bilinear.loop` gives each sampling point's in-bounds taps, their
weights and the weights' derivatives (the equations of ``docs/derivations/bilinear.md``).

Shapes (already validated and made contiguous by ``scratchvision.ops.deform_conv2d``), with
K = kh * kw taps, G offset groups and ``weight_groups`` weight groups: ``x`` (N, C, H, W),
``offset`` (N, 2 * G * K, Ho, Wo), ``weight`` (O, C / weight_groups, kh, kw), ``bias`` (O,)
or None, ``mask`` (N, G * K, Ho, Wo) or None, ``gy`` (N, O, Ho, Wo).

Precision: the sampling points and their bilinear weights are formed in the input dtype (the
rule every tier follows, torchvision's); every sum is accumulated in float64 and rounded to the
input dtype once, when the result is returned.
"""

from __future__ import annotations

import numpy as np

from ..bilinear.loop import point_taps
from ..conv_geometry import ConvGeometry


def sampling_point(offset: np.ndarray, n: int, g: int, i: int, j: int, ho: int, wo: int,
                   geom: ConvGeometry):
    """eq. (1): the point ``(x, y)`` that tap ``(i, j)`` of offset group ``g`` samples for
    output pixel ``(ho, wo)`` of batch element ``n``: its place on the regular grid of an
    ordinary convolution plus its learned offset."""
    # --8<-- [start:sampling_point]
    kh, kw = geom.kernel
    (sh, sw), (ph, pw), (dh, dw) = geom.stride, geom.padding, geom.dilation
    k = i * kw + j
    # NOTE: the offset layout is (dy, dx) per tap -- channel 2k is the *row* offset -- while a
    # bilinear point is (x, y), column first.
    dy = offset[n, g * 2 * kh * kw + 2 * k, ho, wo]
    dx = offset[n, g * 2 * kh * kw + 2 * k + 1, ho, wo]
    # NOTE: the grid position is an exact integer; adding the offset rounds once, in the
    # offset's dtype, as torchvision does and as every tier does: where float32 rounding lands
    # on an integer (a kink), every tier takes the same one-sided derivative.
    y = ho * sh - ph + i * dh + dy  # eq. (1): row of p0 + p_k + dp_k
    x = wo * sw - pw + j * dw + dx  # eq. (1): column
    return x, y
    # --8<-- [end:sampling_point]


def modulation(mask, n: int, g: int, k: int, ho: int, wo: int, n_taps: int) -> float:
    """eq. (2): the mask ``m_k`` of tap ``k`` in offset group ``g`` at output pixel
    ``(ho, wo)``, channel ``g * K + k``; 1 everywhere for DCNv1 (``mask`` None)."""
    # --8<-- [start:modulation]
    if mask is None:
        return 1.0
    return float(mask[n, g * n_taps + k, ho, wo])  # eq. (2)
    # --8<-- [end:modulation]


def sample_value(x: np.ndarray, n: int, c: int, taps) -> float:
    """eq. (3): ``X_c(p)``, channel ``c`` of ``x`` sampled bilinearly at a point whose in-bounds
    ``taps`` come from ``point_taps`` (taps outside the image read zero and are left out)."""
    # --8<-- [start:sample_value]
    # NOTE: a non-finite point (a NaN or infinite offset) has no taps at all: it reads zero,
    # and in the backward pass it gets and passes on no gradient.
    return sum(float(w) * float(x[n, c, row, col]) for row, col, w, _, _ in taps)  # eq. (3)
    # --8<-- [end:sample_value]


def forward(x: np.ndarray, offset: np.ndarray, weight: np.ndarray, bias, mask,
            geom: ConvGeometry, offset_groups: int, weight_groups: int) -> np.ndarray:
    """out (N, O, Ho, Wo) by eq. (4): ``b[o] + sum_c sum_k W[o, c, k] m_k X_c(p_k)``."""
    n_batch, channels, height, width = x.shape
    out_channels, group_channels, kh, kw = weight.shape
    out_h, out_w = geom.out
    n_taps = kh * kw
    outs_per_weight_group = out_channels // weight_groups
    channels_per_offset_group = channels // offset_groups
    out = np.zeros((n_batch, out_channels, out_h, out_w))
    # --8<-- [start:forward]
    for n in range(n_batch):
        for o in range(out_channels):
            # output channel o reads the input channels of its weight group only
            first_channel = (o // outs_per_weight_group) * group_channels
            for ho, wo in np.ndindex(out_h, out_w):
                total = 0.0 if bias is None else float(bias[o])
                for k in range(n_taps):
                    i, j = divmod(k, kw)  # tap k = i * kw + j
                    for c_in_group in range(group_channels):
                        c = first_channel + c_in_group
                        g = c // channels_per_offset_group  # c's offset group
                        px, py = sampling_point(offset, n, g, i, j, ho, wo, geom)
                        m = modulation(mask, n, g, k, ho, wo, n_taps)
                        value = sample_value(x, n, c, point_taps(px, py, height, width))
                        # eq. (4): w_k * m_k * X(p0 + p_k + dp_k)
                        total += float(weight[o, c_in_group, i, j]) * m * value
                out[n, o, ho, wo] = total
    # --8<-- [end:forward]
    return out.astype(x.dtype)


def backward(gy: np.ndarray, x: np.ndarray, offset: np.ndarray, weight: np.ndarray,
             has_bias: bool, mask, geom: ConvGeometry, offset_groups: int, weight_groups: int):
    """The vector-Jacobian product of :func:`forward`, term by term: grad_bias by eq. (5),
    grad_weight by eq. (6), the gradient of each sampled value by eq. (7), grad_mask by
    eq. (8), grad_input by eq. (9) and grad_offset by eq. (10).

    Returns:
        grad_input (N, C, H, W), grad_offset (N, 2 * G * K, Ho, Wo), grad_weight
        (O, C / weight_groups, kh, kw), grad_bias (O,) or None, grad_mask (N, G * K, Ho, Wo)
        or None.
    """
    n_batch, channels, height, width = x.shape
    out_channels, group_channels, kh, kw = weight.shape
    out_h, out_w = geom.out
    n_taps = kh * kw
    outs_per_weight_group = out_channels // weight_groups
    channels_per_offset_group = channels // offset_groups
    grad_input = np.zeros(x.shape)
    grad_offset = np.zeros(offset.shape)
    grad_weight = np.zeros(weight.shape)
    grad_bias = np.zeros(out_channels)
    grad_mask = np.zeros(offset.shape[:1] + (offset_groups * n_taps,) + offset.shape[2:])
    # --8<-- [start:backward]
    for n in range(n_batch):
        for o in range(out_channels):
            first_channel = (o // outs_per_weight_group) * group_channels
            for ho, wo in np.ndindex(out_h, out_w):
                g_out = float(gy[n, o, ho, wo])
                grad_bias[o] += g_out  # eq. (5)
                for k in range(n_taps):
                    i, j = divmod(k, kw)
                    for c_in_group in range(group_channels):
                        c = first_channel + c_in_group
                        g = c // channels_per_offset_group
                        px, py = sampling_point(offset, n, g, i, j, ho, wo, geom)
                        m = modulation(mask, n, g, k, ho, wo, n_taps)
                        taps = point_taps(px, py, height, width)
                        value = sample_value(x, n, c, taps)
                        w_ock = float(weight[o, c_in_group, i, j])
                        grad_weight[o, c_in_group, i, j] += g_out * m * value  # eq. (6)
                        grad_mask[n, g * n_taps + k, ho, wo] += g_out * w_ock * value  # eq. (8)
                        # eq. (7): this output's share of dL / d X_c(p)
                        g_value = g_out * w_ock * m
                        dy_channel = g * 2 * n_taps + 2 * k
                        # NOTE: where a coordinate of the point is an integer -- the offset's
                        # fractional part is 0, as the grid position is an integer -- the
                        # interpolant has a kink; point_taps' weights and slopes are those of
                        # the piece to the right (floor): the right-hand derivative.
                        for row, col, w, dw_dx, dw_dy in taps:
                            pixel = float(x[n, c, row, col])
                            grad_input[n, c, row, col] += float(w) * g_value  # eq. (9)
                            # eq. (10): dy is channel 2k, dx is channel 2k + 1
                            grad_offset[n, dy_channel, ho, wo] += g_value * float(dw_dy) * pixel
                            grad_offset[n, dy_channel + 1, ho, wo] += (g_value * float(dw_dx)
                                                                       * pixel)
    # --8<-- [end:backward]
    dtype = x.dtype
    return (grad_input.astype(dtype), grad_offset.astype(dtype), grad_weight.astype(dtype),
            grad_bias.astype(dtype) if has_bias else None,
            grad_mask.astype(dtype) if mask is not None else None)
