"""Exercise: the backward pass of a feature pyramid network's top-down path.

The FPN of docs/strategies/fpn.md (torchvision's, ``scratchvision.nn.FeaturePyramidNetwork``)
turns the backbone's maps C_0, ..., C_{L-1} (finest first) into P_0, ..., P_{L-1}:

    inner_i = lateral_i(C_i)                 1x1 convolution                            (1)
    t_{L-1} = inner_{L-1},  t_i = inner_i + up_i(t_{i+1})   up_i: nearest resize         (2)
    P_i     = output_i(t_i)                  3x3 convolution, padding 1                 (3)

Given the gradients of the outputs, g_P_i, write the gradients of the inputs, g_C_i: the
nearest upsampling's transpose and the top-down accumulation. Replace every
``raise NotImplementedError`` below by the lines the comment above it describes, then run

    scratchvision exercise check fpn_top_down_backward

from the repository root. The checker compares your ``top_down_backward`` with the library's
``FeaturePyramidNetwork.backward`` on random pyramids (levels that do not halve exactly
included), then runs ``scratchvision.gradcheck`` of it against central differences of the
library's forward, and says which level's gradient is wrong, at which index, and which
equation to re-read. A worked answer is in ``tutorials/exercises/solutions/``; look there
last.

The convolutions' backward passes are given (``output_transpose``, ``lateral_transpose``:
the library's ``conv2d.backward``, derived on docs/derivations/conv2d.md), and so is the
nearest index map sigma of eq. (6) (``nearest_index``, from bilinear's loop tier).

Shapes: ``features[i]`` (N, c_i, H_i, W_i); ``grad_outputs[i]`` (N, D, H_i, W_i);
``lateral_weights[i]`` (D, c_i, 1, 1); ``output_weights[i]`` (D, D, 3, 3).
"""

from __future__ import annotations

import numpy as np

from scratchvision.ops import conv2d
from scratchvision.ops.bilinear.loop import nearest_index


def output_transpose(grad_p: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """output_i^T: the 3x3 convolution's (padding 1) gradient with respect to its input t_i.
    A convolution is linear in its input, so only the input's shape matters, and t_i has the
    shape of P_i."""
    t_like = np.zeros(grad_p.shape[:1] + (weight.shape[1],) + grad_p.shape[2:])
    return conv2d.backward(grad_p, t_like, weight, padding=1, backend="numpy").grad_input


def lateral_transpose(grad_inner: np.ndarray, feature: np.ndarray,
                      weight: np.ndarray) -> np.ndarray:
    """lateral_i^T, eq. (5): the 1x1 convolution's gradient with respect to C_i."""
    return conv2d.backward(grad_inner, feature, weight, backend="numpy").grad_input


def upsample_transpose(grad: np.ndarray, in_height: int, in_width: int) -> np.ndarray:
    """up^T: the gradient of the nearest resize (N, C, in_height, in_width) ->
    (N, C, H', W') with respect to its input, from ``grad`` (N, C, H', W'); eqs. (6)-(7) of
    docs/strategies/fpn.md#nearest-upsampling-the-backward-sums-over-the-copies."""
    n_batch, channels, out_height, out_width = grad.shape
    grad_input = np.zeros((n_batch, channels, in_height, in_width))
    for h in range(out_height):
        a = nearest_index(h, in_height, out_height)  # eq. (6): sigma(h), the row h copied
        for w in range(out_width):
            b = nearest_index(w, in_width, out_width)  # sigma'(w), the column w copied
            # eq. (7): output (h, w) is a copy of input (a, b); every input pixel collects the
            # gradients of all its copies (how many depends on the sizes: add, +=).
            raise NotImplementedError(
                "eq. (7): add the gradient of output (h, w) to input pixel (a, b)")
    return grad_input


def top_down_backward(grad_outputs, features, lateral_weights, output_weights):
    """``[g_C_0, ..., g_C_{L-1}]``, one gradient per input map, finest first; eqs. (4)-(5) of
    docs/strategies/fpn.md#the-backward-of-the-top-down-path:

        g_t_i = output_i^T(g_P_i) + up_{i-1}^T(g_t_{i-1})   (no second term for i = 0)  (4)
        g_C_i = lateral_i^T(g_t_i)                          (g_inner_i = g_t_i)          (5)

    t_i is used twice, by P_i and (through up_{i-1}) by t_{i-1}, so its gradient is the sum of
    what comes back along both uses. g_t_i needs g_t_{i-1}: go from the finest level to the
    coarsest, the reverse of the forward's order.
    """
    n_levels = len(features)
    grad_features = []
    grad_from_finer = None  # up_{i-1}^T(g_t_{i-1}), once level i - 1 is done
    for i in range(n_levels):
        grad_t = output_transpose(grad_outputs[i], output_weights[i])  # eq. (4), first term
        # eq. (4), second term: t_i also fed the finer level i - 1 through up_{i-1}.
        raise NotImplementedError(
            "eq. (4): add what came back from the finer level (none for i = 0) to grad_t")
        grad_features.append(lateral_transpose(grad_t, features[i], lateral_weights[i]))  # (5)
        if i + 1 < n_levels:
            # t_i = inner_i + up_i(t_{i+1}): the sum passes g_t_i unchanged to up_i(t_{i+1}),
            # and t_{i+1} (the size of C_{i+1}) gets up_i's transpose of it, eq. (7).
            raise NotImplementedError(
                "eqs. (4) and (7): grad_from_finer, the gradient t_{i+1} gets through up_i")
    return grad_features
