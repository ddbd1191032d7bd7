"""Loop tier of multi-scale deformable attention: the executable specification.

Deformable DETR writes the attention of query q (content z_q, reference point p_q) over the
feature maps {x^l} of L levels as

    MSDeformAttn(z_q, p_q, {x^l}) = sum_m W_m [ sum_l sum_k A_mlqk * W'_m x^l(phi_l(p_q) + dp_mlqk) ]

This operator is the bracket. Its inputs are already computed by the module
(:class:`scratchvision.nn.MSDeformAttn`):

* ``value[n, :, m, :]`` is ``W'_m x^l`` for every level, flattened and concatenated;
* ``sampling_locations[n, q, m, l, k]`` is ``phi_l(p_q) + dp_mlqk``, normalised to [0, 1]^2;
* ``attention_weights[n, q, m, l, k]`` is ``A_mlqk`` (the paper's k is our point index p);
* the output channel block ``m*D : (m+1)*D`` is head m's bracket, before ``W_m``
  (the module's ``output_proj``).

Equation numbers refer to ``docs/derivations/ms_deform_attn.md``; the bilinear taps and their
derivatives are :func:`scratchvision.ops.bilinear.loop.point_taps` (the bilinear page's
eqs. 1-3). Shapes as in :mod:`scratchvision.ops.ms_deform_attn`, already validated.
"""

from __future__ import annotations

import numpy as np

from ..bilinear.loop import point_taps


# --8<-- [start:pixel_coordinates]
def pixel_coordinates(u, v, height: int, width: int):
    """eq. (2): normalised ``(u, v)`` -> pixel ``(x, y)`` on an (H, W) level.

    ``u = 0`` is the left edge of pixel 0 and ``u = 1`` the right edge of pixel W - 1, so
    pixel centre x sits at ``u = (x + 0.5) / W`` (``grid_sample(align_corners=False)``).
    """
    # NOTE: computed in the float type of u and v -- the locations' dtype -- the product, then
    # the sum, each rounded, as torch does and as every tier does. Where float32 rounding puts
    # x on an integer (a kink), every tier then takes the same one-sided derivative.
    return u * width - 0.5, v * height - 0.5
# --8<-- [end:pixel_coordinates]


def forward(value: np.ndarray, spatial_shapes: np.ndarray, level_start_index: np.ndarray,
            sampling_locations: np.ndarray, attention_weights: np.ndarray) -> np.ndarray:
    """out (N, Lq, M*D) by eq. (3)."""
    n_batch, _, n_heads, head_dim = value.shape
    _, n_queries, _, n_levels, n_points, _ = sampling_locations.shape
    out = np.zeros((n_batch, n_queries, n_heads * head_dim), dtype=value.dtype)
    # --8<-- [start:forward]
    for n in range(n_batch):
        for q in range(n_queries):  # the query z_q
            for m in range(n_heads):  # head m
                for level in range(n_levels):  # level l: the map x^l, of size (H_l, W_l)
                    height, width = (int(s) for s in spatial_shapes[level])
                    start = int(level_start_index[level])  # where x^l starts in value
                    for p in range(n_points):  # the paper's k
                        # phi_l(p_q) + dp_mlqk, normalised, in the locations' dtype
                        u, v = sampling_locations[n, q, m, level, p]
                        x, y = pixel_coordinates(u, v, height, width)  # eq. (2)
                        attn = attention_weights[n, q, m, level, p]  # A_mlqk
                        for row, col, w, _, _ in point_taps(x, y, height, width):
                            s = start + row * width + col  # the tap's row in value
                            for d in range(head_dim):
                                # eq. (3): A_mlqk * w_tap * (W'_m x^l)[tap, d]
                                out[n, q, m * head_dim + d] += attn * w * value[n, s, m, d]
    # --8<-- [end:forward]
    return out


def backward(gy: np.ndarray, value: np.ndarray, spatial_shapes: np.ndarray,
             level_start_index: np.ndarray, sampling_locations: np.ndarray,
             attention_weights: np.ndarray):
    """grad_value (N, S, M, D) by eq. (5), grad_sampling_locations (N, Lq, M, L, P, 2) by
    eqs. (6)-(7), grad_attention_weights (N, Lq, M, L, P) by eq. (4)."""
    n_batch, _, n_heads, head_dim = value.shape
    _, n_queries, _, n_levels, n_points, _ = sampling_locations.shape
    grad_value = np.zeros_like(value)
    grad_locations = np.zeros_like(sampling_locations)
    grad_weights = np.zeros_like(attention_weights)
    # --8<-- [start:backward]
    for n in range(n_batch):
        for q in range(n_queries):
            for m in range(n_heads):
                for level in range(n_levels):
                    height, width = (int(s) for s in spatial_shapes[level])
                    start = int(level_start_index[level])
                    for p in range(n_points):
                        u, v = sampling_locations[n, q, m, level, p]
                        x, y = pixel_coordinates(u, v, height, width)  # eq. (2)
                        attn = attention_weights[n, q, m, level, p]
                        g_attn = 0.0  # d loss / d A_mlqk
                        g_x = g_y = 0.0  # d loss / d (x, y), the pixel coordinates
                        for row, col, w, dw_dx, dw_dy in point_taps(x, y, height, width):
                            s = start + row * width + col
                            for d in range(head_dim):
                                g = gy[n, q, m * head_dim + d]
                                v_tap = value[n, s, m, d]
                                g_attn += g * w * v_tap  # eq. (4)
                                # eq. (5): a scatter -- many (q, p) read the same tap
                                grad_value[n, s, m, d] += g * attn * w
                                g_x += g * attn * dw_dx * v_tap  # eq. (6)
                                g_y += g * attn * dw_dy * v_tap
                        grad_weights[n, q, m, level, p] = g_attn
                        # eq. (7): chain rule through eq. (2), dx/du = W_l, dy/dv = H_l
                        grad_locations[n, q, m, level, p, 0] = g_x * width
                        grad_locations[n, q, m, level, p, 1] = g_y * height
    # --8<-- [end:backward]
    return grad_value, grad_locations, grad_weights
