"""Every tier forms sampling coordinates in the input dtype, so the tiers agree at the kinks.

The bilinear interpolant has a kink wherever a pixel coordinate is an integer, and there every
tier returns the right-hand derivative. That promise only holds if every tier computes the
*same* coordinate: if one tier forms ``x = u * W - 0.5`` in float64 while another rounds it
in float32, a float32 coordinate that rounds onto an integer (u = 0.64166665 with W = 60 gives
38.0 in float32 and 37.99999905 in float64) gets the right-hand slope on one tier and the
left-hand slope on the other: gradients about 1e-2 apart. The rule, torch's: coordinates are
formed in the input dtype, the product and the sum each rounded.

These tests search for such coordinates on purpose -- inputs whose coordinates land exactly on
an integer in the input dtype but not in exact arithmetic -- and demand that every tier agree,
forward and backward, in float32 and in float64.
"""

from __future__ import annotations

import numpy as np
import pytest

from scratchvision.ops import deform_conv2d, ms_deform_attn
from scratchvision.ops.ms_deform_attn import level_start_index_of

from tiers import DTYPES, assert_tiers_agree, run_on_every_tier


def _neighbours(value, dtype, ulps: int) -> list:
    """``value`` in ``dtype`` and its neighbours up to ``ulps`` units in the last place away."""
    found = [np.asarray(value, dtype=dtype)]
    for direction in (np.inf, -np.inf):
        v = found[0]
        for _ in range(ulps):
            v = np.nextafter(v, np.asarray(direction, dtype=dtype))
            found.append(v)
    return found


def _is_integer(x) -> bool:
    return bool(x == np.floor(x))


def locations_rounding_onto_integers(dtype, width: int, count: int,
                                     rng: np.random.Generator) -> np.ndarray:
    """``count`` normalised coordinates u in ``dtype`` for which ``u * W - 0.5``, computed in
    ``dtype`` (the product, then the difference, each rounded), is an integer while its exact
    value (in long double, which holds the product of a float64 and a small int exactly) is
    not: the coordinate lands on a kink only because of the dtype's rounding."""
    found = []
    while len(found) < count:
        k = int(rng.integers(0, width))  # the pixel centre to land on
        for u in _neighbours((k + 0.5) / width, dtype, ulps=4):
            in_dtype = u * dtype(width) - dtype(0.5)
            exact = np.longdouble(u) * width - np.longdouble(0.5)
            if _is_integer(in_dtype) and not _is_integer(exact):
                found.append(u)
                break
    return np.array(found, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ms_deform_attn_tiers_agree_where_coordinates_round_onto_integers(dtype):
    rng = np.random.default_rng(0)
    shapes = np.array([[6, 60], [5, 7]], dtype=np.int64)  # (L, 2) as (H, W)
    n_queries, heads, head_dim, points = 3, 2, 3, 2
    n_levels = len(shapes)
    s = int(shapes.prod(1).sum())
    loc_shape = (1, n_queries, heads, n_levels, points)
    locations = rng.uniform(0.1, 0.9, loc_shape + (2,)).astype(dtype)
    # every u on level 0, and every v on level 1, rounds onto a pixel coordinate
    per_level = n_queries * heads * points
    locations[:, :, :, 0, :, 0] = locations_rounding_onto_integers(
        dtype, int(shapes[0, 1]), per_level, rng).reshape(1, n_queries, heads, points)
    locations[:, :, :, 1, :, 1] = locations_rounding_onto_integers(
        dtype, int(shapes[1, 0]), per_level, rng).reshape(1, n_queries, heads, points)
    args = (rng.standard_normal((1, s, heads, head_dim)).astype(dtype), shapes,
            level_start_index_of(shapes), locations,
            rng.uniform(0.5, 1.5, loc_shape).astype(dtype))
    gy = rng.standard_normal((1, n_queries, heads * head_dim)).astype(dtype)
    assert_tiers_agree(run_on_every_tier(ms_deform_attn.forward, *args))
    grads = run_on_every_tier(lambda *a, backend: ms_deform_attn.backward(gy, *a,
                                                                          backend=backend), *args)
    assert_tiers_agree(grads)


def offsets_rounding_onto_integers(dtype, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` offsets d in ``dtype`` just below a whole number (by half an ulp of 1): added
    to a grid position g in 4..7 in ``dtype``, ``g + d`` rounds up onto the next integer,
    while the exact sum is not one."""
    whole = rng.integers(-1, 2, size=count).astype(dtype)
    return whole + (dtype(1) - dtype(np.finfo(dtype).eps / 2))


@pytest.mark.parametrize("dtype", DTYPES)
def test_deform_conv2d_tiers_agree_where_offsets_round_onto_integers(dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 9, 9)).astype(dtype)
    weight = rng.standard_normal((2, 2, 3, 3)).astype(dtype)
    # padding 0, stride 1: tap (i, j) of output (ho, wo) sits at (ho + i, wo + j), 0..8; the
    # outputs at ho, wo >= 4 add offsets to positions >= 4, where d rounds the sum up
    offset = rng.uniform(0.2, 0.8, (1, 18, 7, 7)).astype(dtype)
    offset[:, :, 4:, 4:] = offsets_rounding_onto_integers(dtype, 18 * 3 * 3, rng).reshape(
        1, 18, 3, 3)
    # the construction works: in the dtype the sum is whole, exactly it is not
    assert _is_integer(dtype(5) + offset[0, 0, 4, 4])
    assert not _is_integer(np.longdouble(5) + np.longdouble(offset[0, 0, 4, 4]))
    mask = rng.uniform(0.2, 1.0, (1, 9, 7, 7)).astype(dtype)
    gy = rng.standard_normal((1, 2, 7, 7)).astype(dtype)
    outs = run_on_every_tier(deform_conv2d.forward, x, offset, weight, None, mask=mask)
    assert_tiers_agree(outs)
    grads = run_on_every_tier(
        lambda *a, backend: deform_conv2d.backward(gy, *a, mask=mask, backend=backend),
        x, offset, weight, None)
    assert_tiers_agree(grads)
