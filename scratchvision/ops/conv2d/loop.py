"""Loop tier of conv2d: the executable specification.

The textbook seven-nested sum -- batch, output channel, output row, output column, input
channel of the group, kernel row, kernel column -- one Python-level step per multiply-add, so
that every index has a name. Equation numbers in the comments refer to
``docs/derivations/conv2d.md``. The other tiers are checked against this one.

Names: ``grp`` is a group index and ``groups`` the number of groups; ``gy`` is the upstream
gradient dL/dy (the docs' Y-bar) and ``g_out`` one entry of it; ``weight`` is the kernel (the
docs' theta) and ``width`` the input's width.

Shapes (already validated and made contiguous by ``scratchvision.ops.conv2d``): ``x``
(N, C_in, H, W), ``weight`` (C_out, C_in / groups, kh, kw), ``bias`` (C_out,) or None, ``gy``
and the output (N, C_out, Ho, Wo). Sums run in the input dtype (float32 stays float32).
"""

from __future__ import annotations

import numpy as np

from ..conv_geometry import ConvGeometry


# --8<-- [start:tap_position]
def tap_position(out_index: int, tap: int, stride: int, padding: int, dilation: int) -> int:
    """eq. (2): the input row (or column) that kernel tap ``tap`` of output row (or column)
    ``out_index`` reads. It may lie in the padding: < 0, or >= the input size."""
    return out_index * stride - padding + tap * dilation
# --8<-- [end:tap_position]


def forward(x: np.ndarray, weight: np.ndarray, bias, geom: ConvGeometry,
            groups: int) -> np.ndarray:
    """y (N, C_out, Ho, Wo) by eq. (4)."""
    n_batch, c_in, height, width = x.shape
    c_out, in_per_group, kh, kw = weight.shape
    out_per_group = c_out // groups
    (sh, sw), (ph, pw), (dh, dw) = geom.stride, geom.padding, geom.dilation
    out_h, out_w = geom.out
    y = np.zeros((n_batch, c_out, out_h, out_w), dtype=x.dtype)
    # --8<-- [start:forward]
    for n in range(n_batch):
        for o in range(c_out):
            grp = o // out_per_group  # the group of output channel o (gamma(o) in the docs)
            for ho in range(out_h):
                for wo in range(out_w):
                    total = bias[o] if bias is not None else x.dtype.type(0)
                    for cg in range(in_per_group):
                        c = grp * in_per_group + cg  # input channel cg of group grp
                        for i in range(kh):
                            r = tap_position(ho, i, sh, ph, dh)  # eq. (2)
                            for j in range(kw):
                                q = tap_position(wo, j, sw, pw, dw)
                                # --8<-- [start:padding]
                                # NOTE: eq. (3), padding reads zero: a tap in the padding adds
                                # nothing, so it is skipped and never indexes x.
                                if 0 <= r < height and 0 <= q < width:
                                    total += weight[o, cg, i, j] * x[n, c, r, q]  # eq. (4)
                                # --8<-- [end:padding]
                    y[n, o, ho, wo] = total
    # --8<-- [end:forward]
    return y


def backward(gy: np.ndarray, x: np.ndarray, weight: np.ndarray, has_bias: bool,
             geom: ConvGeometry, groups: int):
    """grad_input (N, C_in, H, W) by eq. (8), grad_weight (C_out, C_in / groups, kh, kw) by
    eq. (7) and grad_bias (C_out,) by eq. (6) (None without a bias).

    One pass over the same seven loops as :func:`forward`: every multiply-add
    ``weight[o, cg, i, j] * x[n, c, r, q]`` of the forward sends ``gy[n, o, ho, wo]`` back to
    both of its factors.
    """
    n_batch, c_in, height, width = x.shape
    c_out, in_per_group, kh, kw = weight.shape
    out_per_group = c_out // groups
    (sh, sw), (ph, pw), (dh, dw) = geom.stride, geom.padding, geom.dilation
    out_h, out_w = geom.out
    grad_input = np.zeros_like(x)
    grad_weight = np.zeros_like(weight)
    grad_bias = np.zeros(c_out, dtype=gy.dtype) if has_bias else None
    # --8<-- [start:backward]
    for n in range(n_batch):
        for o in range(c_out):
            grp = o // out_per_group
            for ho in range(out_h):
                for wo in range(out_w):
                    g_out = gy[n, o, ho, wo]
                    if has_bias:
                        grad_bias[o] += g_out  # eq. (6)
                    for cg in range(in_per_group):
                        c = grp * in_per_group + cg
                        for i in range(kh):
                            r = tap_position(ho, i, sh, ph, dh)  # eq. (2)
                            for j in range(kw):
                                q = tap_position(wo, j, sw, pw, dw)
                                # NOTE: a tap in the padding read a constant zero: neither the
                                # weight nor any pixel gets gradient through it (eq. 3).
                                if 0 <= r < height and 0 <= q < width:
                                    grad_weight[o, cg, i, j] += g_out * x[n, c, r, q]  # eq. (7)
                                    grad_input[n, c, r, q] += g_out * weight[o, cg, i, j]  # eq. (8)
    # --8<-- [end:backward]
    return grad_input, grad_weight, grad_bias
