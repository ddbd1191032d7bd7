"""Exercise: the offset and mask gradients of deformable convolution (DCNv2), loop tier.

The forward pass is eq. (4) of docs/derivations/deform_conv2d.md,

    y[n, o, ho, wo] = bias[o] + sum_{c, k} weight[o, c', k] * m_k * X_c(p_k),

where tap k = (i, j) of output pixel (ho, wo) samples input channel c bilinearly at the
point p0 + p_k + dp_k (its place on the regular grid plus its learned offset, eq. 1) and is
scaled by its mask m_k (eq. 2). The bias, weight and input gradients are written for you;
write the gradient that reaches a sampled value and the gradients of the mask and of the
offsets: replace every ``raise NotImplementedError`` below by the lines the comment above it
describes, then run

    scratchvision exercise check deform_conv2d_offset_mask

from the repository root. The checker compares your ``backward`` with the library's on random
inputs (offset groups, weight groups, stride and dilation vary), then runs
``scratchvision.gradcheck`` of it against central differences of the library's forward, and
says which gradient is wrong, at which index, and which equation to re-read. A worked answer
is in ``tutorials/exercises/solutions/``; look there last.

The forward pieces come from the library's loop tier (``sampling_point``: eq. 1,
``modulation``: eq. 2, ``sample_value``: eq. 3) and bilinear sampling's ``point_taps``: each
in-bounds tap of a point as ``(row, col, w, dw_dx, dw_dy)``, its weight and the weight's
slopes (eqs. 2-3 of docs/derivations/bilinear.md).

Shapes, with K = kh * kw taps and G offset groups: ``x`` (N, C, H, W); ``offset``
(N, 2 * G * K, Ho, Wo), channel ``g * 2K + 2k`` the *row* offset dy of tap k in offset group
g and ``g * 2K + 2k + 1`` the column offset dx; ``mask`` (N, G * K, Ho, Wo), channel
``g * K + k``; ``weight`` (O, C / weight_groups, kh, kw); ``gy`` (N, O, Ho, Wo).
"""

from __future__ import annotations

import numpy as np

from scratchvision.ops.bilinear.loop import point_taps
from scratchvision.ops.deform_conv2d.loop import modulation, sample_value, sampling_point


def backward(gy: np.ndarray, x: np.ndarray, offset: np.ndarray, weight: np.ndarray,
             has_bias: bool, mask, geom, offset_groups: int, weight_groups: int):
    """``(grad_input, grad_offset, grad_weight, grad_bias, grad_mask)``, the shapes of
    ``x``, ``offset``, ``weight``, ``(O,)`` and ``mask``; derived on
    docs/derivations/deform_conv2d.md:

    * eq. (7), the gradient of a sampled value: docs/derivations/deform_conv2d.md
      #the-gradient-of-a-sampled-value
    * eq. (8), grad_mask: docs/derivations/deform_conv2d.md#mask
    * eq. (10), grad_offset: docs/derivations/deform_conv2d.md
      #offset-the-slopes-of-the-interpolant
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
    grad_mask = np.zeros(mask.shape)
    for n in range(n_batch):
        for o in range(out_channels):
            first_channel = (o // outs_per_weight_group) * group_channels
            for ho, wo in np.ndindex(out_h, out_w):
                g_out = float(gy[n, o, ho, wo])  # dL / dy[n, o, ho, wo]
                grad_bias[o] += g_out  # eq. (5)
                for k in range(n_taps):
                    i, j = divmod(k, kw)  # tap k = i * kw + j
                    for c_in_group in range(group_channels):
                        c = first_channel + c_in_group
                        g = c // channels_per_offset_group  # c's offset group
                        px, py = sampling_point(offset, n, g, i, j, ho, wo, geom)  # eq. (1)
                        m = modulation(mask, n, g, k, ho, wo, n_taps)  # eq. (2)
                        taps = point_taps(px, py, height, width)
                        value = sample_value(x, n, c, taps)  # eq. (3): X_c(p_k)
                        w_ock = float(weight[o, c_in_group, i, j])
                        grad_weight[o, c_in_group, i, j] += g_out * m * value  # eq. (6)
                        # This output added w_ock * m * value to y[n, o, ho, wo].
                        # eq. (7): its share of dL / d value, the gradient reaching the sample.
                        g_value = g_out * w_ock * m
                        # eq. (8): the mask multiplied the sample; its gradient sums, over
                        # the channels of its offset group and every output channel,
                        # g_out * w_ock * value. Mask channel: g * K + k.
                        grad_mask[n, g * n_taps + k, ho, wo] += g_out * w_ock * value
                        dy_channel = g * 2 * n_taps + 2 * k  # the row offset dy of tap k
                        for row, col, w, dw_dx, dw_dy in taps:
                            pixel = float(x[n, c, row, col])
                            grad_input[n, c, row, col] += float(w) * g_value  # eq. (9)
                            # eq. (10): the offset moves the point (d y / d dy = 1,
                            # d x / d dx = 1), the point moves the weights:
                            #   dL/d dy += g_value * (d w_t / dy) * pixel_t  -> channel 2k
                            #   dL/d dx += g_value * (d w_t / dx) * pixel_t  -> channel 2k + 1
                            grad_offset[n, dy_channel, ho, wo] += g_value * float(dw_dy) * pixel
                            grad_offset[n, dy_channel + 1, ho, wo] += (g_value * float(dw_dx)
                                                                       * pixel)
    return grad_input, grad_offset, grad_weight, (grad_bias if has_bias else None), grad_mask
