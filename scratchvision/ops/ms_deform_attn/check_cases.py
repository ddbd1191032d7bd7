"""The cases ``scratchvision check`` verifies for multi-scale deformable attention: one level
(single-scale deformable attention), three levels with a level one pixel wide, and several
heads and points.

Shapes are small because the loop tier's gradients are checked element by element (two
forward passes per input element, each a Python loop over every query, head, level, point, tap
and channel). The level shapes are the same in the normal and the tiny (CUDA simulator)
variant of a case; the tiny one has fewer queries, heads, channels and points.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ...selfcheck import CheckCase
from ..bilinear.check_cases import KINK_MARGIN, points_off_kinks
from . import backward, forward, level_start_index_of

__all__ = ["CHECK_CASES", "KINK_MARGIN", "locations_off_kinks"]


def locations_off_kinks(rng: np.random.Generator, shape: tuple, spatial_shapes) -> np.ndarray:
    """Normalised sampling locations (N, Lq, M, L, P, 2), ``shape`` being (N, Lq, M, L, P)
    and ``spatial_shapes`` (L, 2) the levels' (H, W).

    The kinks of the bilinear interpolant are the integer pixel coordinates, so the pixel
    coordinates ``u W_l - 0.5`` and ``v H_l - 0.5`` (eq. 2) keep their fractional parts in
    [KINK_MARGIN, 1 - KINK_MARGIN]. The points are drawn in pixel space over
    (-2, W_l + 1) x (-2, H_l + 1) and mapped back with ``u = (x + 0.5) / W_l``, so some lie
    outside [0, 1] (some of their taps, or all four, outside the level).
    """
    locations = np.empty(tuple(shape) + (2,))
    per_level = shape[:3] + shape[4:]  # (N, Lq, M, P)
    for level, (height, width) in enumerate(np.asarray(spatial_shapes).tolist()):
        xy = points_off_kinks(rng, per_level, height, width)  # (N, Lq, M, P, 2) pixels
        locations[:, :, :, level] = (xy + 0.5) / np.array([width, height])  # eq. (2) inverted
    return locations


class _Sizes(NamedTuple):
    """Batch N, queries Lq, heads M, channels per head D and points per level P."""

    batch: int
    queries: int
    heads: int
    head_dim: int
    points: int


def _case(name: str, levels: list[tuple[int, int]], sizes: _Sizes, tiny: _Sizes) -> CheckCase:
    spatial_shapes = np.array(levels, dtype=np.int64)  # (L, 2) as (H, W)
    level_start_index = level_start_index_of(spatial_shapes)
    n_positions = int(np.prod(spatial_shapes, axis=1).sum())  # S

    def make_inputs(rng, use_tiny):
        n, lq, m, d, p = tiny if use_tiny else sizes
        shape = (n, lq, m, len(levels), p)
        return {
            "value": rng.standard_normal((n, n_positions, m, d)),
            "sampling_locations": locations_off_kinks(rng, shape, spatial_shapes),
            # the module's weights are a softmax, but the op does not need them normalised
            "attention_weights": rng.standard_normal(shape),
        }

    def run_forward(value, sampling_locations, attention_weights, backend="auto"):
        return forward(value, spatial_shapes, level_start_index, sampling_locations,
                       attention_weights, backend=backend)

    def run_backward(gy, value, sampling_locations, attention_weights, backend="auto"):
        return backward(gy, value, spatial_shapes, level_start_index, sampling_locations,
                        attention_weights, backend=backend)

    return CheckCase(name, make_inputs, run_forward, run_backward,
                     ("value", "sampling_locations", "attention_weights"))


CHECK_CASES = [
    _case("ms_deform_attn one level (single-scale)", [(4, 5)],
          _Sizes(2, 4, 2, 3, 3), _Sizes(1, 2, 1, 2, 2)),
    _case("ms_deform_attn three levels, one of width 1", [(3, 4), (5, 1), (1, 2)],
          _Sizes(1, 5, 2, 2, 2), _Sizes(1, 2, 1, 2, 1)),
    _case("ms_deform_attn 4 heads, 4 points, 2 levels", [(3, 3), (2, 2)],
          _Sizes(1, 3, 4, 2, 4), _Sizes(1, 1, 2, 1, 2)),
]
