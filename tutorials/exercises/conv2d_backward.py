"""Exercise: the backward pass of 2-D convolution, loop tier.

The forward pass is the seven-nested sum of eq. (4) of docs/derivations/conv2d.md:

    y[n, o, ho, wo] = bias[o] + sum_{cg, i, j} weight[o, cg, i, j] * x[n, c, r, q]

with ``c = group(o) * C_in / groups + cg`` and the tap's input position ``(r, q)`` of eq. (2);
taps in the zero padding add nothing (eq. 3). Write its gradient with respect to the input, the
weight and the bias: replace every ``raise NotImplementedError`` below by the lines the comment
above it describes, then run

    scratchvision exercise check conv2d_backward

from the repository root. The checker compares your ``backward`` with the library's on random
inputs (stride, padding, dilation and groups vary), then runs ``scratchvision.gradcheck`` of it
against central differences of the library's forward, and says which gradient is wrong, at
which index, and which equation to re-read. A worked answer is in
``tutorials/exercises/solutions/``; look there last.

Shapes: ``x`` (N, C_in, H, W); ``weight`` (C_out, C_in / groups, kh, kw); ``gy`` and the output
(N, C_out, Ho, Wo); ``geom`` holds ``stride``, ``padding`` and ``dilation`` as (along H,
along W) pairs and the output size ``out`` = (Ho, Wo).
"""

from __future__ import annotations

import numpy as np


def tap_position(out_index: int, tap: int, stride: int, padding: int, dilation: int) -> int:
    """eq. (2): the input row (or column) that kernel tap ``tap`` of output row (or column)
    ``out_index`` reads; < 0 or >= the input size in the padding."""
    return out_index * stride - padding + tap * dilation


def backward(gy: np.ndarray, x: np.ndarray, weight: np.ndarray, has_bias: bool, geom,
             groups: int):
    """``(grad_input (N, C_in, H, W), grad_weight (C_out, C_in / groups, kh, kw),
    grad_bias (C_out,) or None)``, derived on docs/derivations/conv2d.md:

    * eq. (6), grad_bias: docs/derivations/conv2d.md#with-respect-to-the-bias
    * eq. (7), grad_weight: docs/derivations/conv2d.md#the-backward-pass (the next section)
    * eq. (8), grad_input: docs/derivations/conv2d.md
      #with-respect-to-the-input-the-scatter-and-the-transposed-convolution
    """
    n_batch, c_in, height, width = x.shape
    c_out, in_per_group, kh, kw = weight.shape
    out_per_group = c_out // groups
    (sh, sw), (ph, pw), (dh, dw) = geom.stride, geom.padding, geom.dilation
    out_h, out_w = geom.out
    grad_input = np.zeros_like(x)
    grad_weight = np.zeros_like(weight)
    grad_bias = np.zeros(c_out, dtype=gy.dtype) if has_bias else None
    for n in range(n_batch):
        for o in range(c_out):
            grp = o // out_per_group  # the group of output channel o
            for ho in range(out_h):
                for wo in range(out_w):
                    g_out = gy[n, o, ho, wo]  # dL / dy[n, o, ho, wo]
                    if has_bias:
                        # eq. (6): bias[o] is added once to every output of channel o.
                        raise NotImplementedError(
                            "eq. (6): add this output's gradient to grad_bias")
                    for cg in range(in_per_group):
                        c = grp * in_per_group + cg  # input channel cg of group grp
                        for i in range(kh):
                            r = tap_position(ho, i, sh, ph, dh)  # eq. (2)
                            for j in range(kw):
                                q = tap_position(wo, j, sw, pw, dw)
                                # eq. (3): a tap in the padding read a constant zero; neither
                                # the weight nor any pixel gets gradient through it.
                                if not (0 <= r < height and 0 <= q < width):
                                    continue
                                # The forward added weight[o, cg, i, j] * x[n, c, r, q] to
                                # y[n, o, ho, wo]: send g_out back to both factors.
                                # eq. (7): dL / d weight[o, cg, i, j] is the sum over
                                #   n, ho, wo of g_out * x[n, c, r, q]
                                raise NotImplementedError(
                                    "eq. (7): add this term's share to grad_weight")
                                # eq. (8): dL / dx[n, c, r, q] is the sum, over every
                                #   term that read x[n, c, r, q], of g_out * weight[o, cg, i, j]
                                #   (a scatter: +=)
                                raise NotImplementedError(
                                    "eq. (8): add this term's share to grad_input")
    return grad_input, grad_weight, grad_bias
