"""Exercise: the backward pass of multi-scale deformable attention, loop tier.

The forward pass is eq. (3) of docs/derivations/ms_deform_attn.md: query q, head m reads P
points on each level l, at normalised locations ``(u, v)`` mapped to pixels ``(x, y)`` by
eq. (2), and sums the bilinear samples weighted by the attention weights:

    out[n, q, m*D + d] = sum_{l, p} A[n, q, m, l, p] * sum_t w_t(x, y) * value[n, s_t, m, d]

with ``s_t = start_l + row_t * W_l + col_t`` the tap's row in ``value``. Write its gradient
with respect to the value, the sampling locations and the attention weights: replace every
``raise NotImplementedError`` below by the lines the comment above it describes, then run

    scratchvision exercise check ms_deform_attn_backward

from the repository root. The checker compares your ``backward`` with the library's on random
inputs (levels of different sizes, some locations near or beyond the borders), then runs
``scratchvision.gradcheck`` of it against central differences of the library's forward, and
says which gradient is wrong, at which index, and which equation to re-read. A worked answer is
in ``tutorials/exercises/solutions/``; look there last.

The bilinear taps come from the library: ``point_taps(x, y, H, W)`` lists the in-bounds taps of
a pixel point as ``(row, col, w, dw_dx, dw_dy)``, the weight and its slopes (eqs. 2-3 of
docs/derivations/bilinear.md).

Shapes: ``value`` (N, S, M, D), the L levels flattened and concatenated; ``spatial_shapes``
(L, 2), (H_l, W_l) per level; ``level_start_index`` (L,); ``sampling_locations``
(N, Lq, M, L, P, 2), normalised ``(u, v)``; ``attention_weights`` (N, Lq, M, L, P);
``gy`` (N, Lq, M * D).
"""

from __future__ import annotations

import numpy as np

from scratchvision.ops.bilinear.loop import point_taps


def pixel_coordinates(u, v, height: int, width: int):
    """eq. (2): normalised ``(u, v)`` -> pixel ``(x, y)`` on an (H, W) level; pixel centre x
    sits at ``u = (x + 0.5) / W`` (``grid_sample(align_corners=False)``)."""
    return u * width - 0.5, v * height - 0.5


def backward(gy: np.ndarray, value: np.ndarray, spatial_shapes: np.ndarray,
             level_start_index: np.ndarray, sampling_locations: np.ndarray,
             attention_weights: np.ndarray):
    """``(grad_value (N, S, M, D), grad_sampling_locations (N, Lq, M, L, P, 2),
    grad_attention_weights (N, Lq, M, L, P))``, derived on docs/derivations/ms_deform_attn.md:

    * eq. (4), grad_attention_weights: docs/derivations/ms_deform_attn.md#attention-weights
    * eq. (5), grad_value: docs/derivations/ms_deform_attn.md#value-a-scatter
    * eqs. (6)-(7), grad_sampling_locations: docs/derivations/ms_deform_attn.md
      #locations-the-slopes-of-the-interpolant
    """
    n_batch, _, n_heads, head_dim = value.shape
    _, n_queries, _, n_levels, n_points, _ = sampling_locations.shape
    grad_value = np.zeros_like(value)
    grad_locations = np.zeros_like(sampling_locations)
    grad_weights = np.zeros_like(attention_weights)
    for n in range(n_batch):
        for q in range(n_queries):
            for m in range(n_heads):
                for level in range(n_levels):
                    height, width = (int(s) for s in spatial_shapes[level])  # H_l, W_l
                    start = int(level_start_index[level])
                    for p in range(n_points):
                        u, v = sampling_locations[n, q, m, level, p]
                        x, y = pixel_coordinates(u, v, height, width)  # eq. (2)
                        attn = attention_weights[n, q, m, level, p]  # A
                        g_attn = 0.0  # dL / dA of this point
                        g_x = g_y = 0.0  # dL / dx and dL / dy, in pixels
                        for row, col, w, dw_dx, dw_dy in point_taps(x, y, height, width):
                            s = start + row * width + col  # the tap's row in value
                            for d in range(head_dim):
                                g = gy[n, q, m * head_dim + d]  # dL / d out[n, q, m*D + d]
                                v_tap = value[n, s, m, d]
                                # eq. (4): dL/dA = sum_d g * sum_t w_t * value[s_t]
                                raise NotImplementedError(
                                    "eq. (4): add this tap's and channel's term to g_attn")
                                # eq. (5): dL / d value[n, s, m, d] collects g * A * w_t from
                                # every sample that read row s (a scatter: +=).
                                raise NotImplementedError(
                                    "eq. (5): add this sample's share to grad_value")
                                # eq. (6): the point moves the weights, not the taps:
                                #   dL/dx = A * sum_d g * sum_t (d w_t / dx) * value[s_t]
                                #   dL/dy = A * sum_d g * sum_t (d w_t / dy) * value[s_t]
                                raise NotImplementedError(
                                    "eq. (6): add this tap's and channel's terms to g_x and g_y")
                        grad_weights[n, q, m, level, p] = g_attn
                        # eq. (7): chain rule through eq. (2), x = u * W_l - 0.5 and
                        # y = v * H_l - 0.5: dL/du = (dx/du) dL/dx, dL/dv = (dy/dv) dL/dy.
                        raise NotImplementedError(
                            "eq. (7): store dL/du and dL/dv in grad_locations[n, q, m, level, p]")
    return grad_value, grad_locations, grad_weights
