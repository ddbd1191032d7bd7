"""Multi-scale deformable attention, the core of Deformable DETR (``MSDeformAttnFunction``).

Dense attention lets every query read every one of the S positions of a feature map. Deformable
attention lets each query read only a few learned points per head and level, bilinearly
sampled, and mixes them with learned weights:

    out[n, q, m*D + d] = sum_l sum_p  attn[n, q, m, l, p] * V_l[n, m, d](loc[n, q, m, l, p])

where ``V_l[n, m, d]`` is level l of ``value`` seen as an (H_l, W_l) image of head m, channel d,
and a normalised location ``(u, v)`` in [0, 1]^2 reads pixel ``(x, y) = (u W_l - 0.5,
v H_l - 0.5)`` (``grid_sample(align_corners=False)``'s mapping; integer (x, y) is a pixel
centre, taps outside the level read zero). This is exactly Deformable-DETR's
``ms_deform_attn_core_pytorch`` and its CUDA kernel.

Public functions validate and normalise their arguments (see ``scratchvision._checks``), then
dispatch to one of four tiers that all compute the same function:

* ``loop``  -- :mod:`scratchvision.ops.ms_deform_attn.loop`, the executable specification;
* ``numpy`` -- :mod:`scratchvision.ops.ms_deform_attn.vectorized`;
* ``numba`` -- :mod:`scratchvision.ops.ms_deform_attn.numba_cpu`, fused per query;
* ``cuda``  -- :mod:`scratchvision.ops.ms_deform_attn.numba_cuda`, GPU kernels (or the
  simulator).

Shapes (N batch, S = sum_l H_l W_l flattened positions, M heads, D channels per head, Lq
queries, L levels, P points per head and level):

* ``value`` (N, S, M, D): the levels flattened row-major and concatenated, level l occupying
  rows ``level_start_index[l] : level_start_index[l] + H_l * W_l``;
* ``spatial_shapes`` (L, 2) integers ``(H_l, W_l)``; ``level_start_index`` (L,) integers, the
  exclusive cumulative sum of ``H_l * W_l`` (checked);
* ``sampling_locations`` (N, Lq, M, L, P, 2), normalised ``(x, y)``;
* ``attention_weights`` (N, Lq, M, L, P): used as given (the module applies the softmax);
* output (N, Lq, M * D), head-major: channel ``m * D + d``.

The derivations are in ``docs/derivations/ms_deform_attn.md``.

GPU arrays (numba device arrays, CuPy arrays, torch CUDA tensors) for ``value``,
``sampling_locations``, ``attention_weights`` and ``gy`` are accepted by the ``cuda`` tier, which
then returns numba device arrays without touching the host; ``spatial_shapes`` and
``level_start_index`` stay host integer arrays (their values are checked, and reach the kernels
as launch parameters). NumPy in gives NumPy out (see ``scratchvision._checks``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ... import _checks
from ..._dispatch import TierModules

__all__ = ["forward", "backward", "MSDeformAttnGrads", "level_start_index_of"]

_tiers = TierModules(__name__)


class MSDeformAttnGrads(NamedTuple):
    """Gradients of :func:`forward`: ``grad_value`` (N, S, M, D), ``grad_sampling_locations``
    (N, Lq, M, L, P, 2) and ``grad_attention_weights`` (N, Lq, M, L, P)."""

    grad_value: np.ndarray
    grad_sampling_locations: np.ndarray
    grad_attention_weights: np.ndarray


class _Args(NamedTuple):
    """Validated arguments: float arrays in their common dtype, C-contiguous; the two index
    arrays as C-contiguous int64."""

    value: np.ndarray
    spatial_shapes: np.ndarray
    level_start_index: np.ndarray
    sampling_locations: np.ndarray
    attention_weights: np.ndarray


def level_start_index_of(spatial_shapes) -> np.ndarray:
    """(L,) int64: where each level starts in the flattened S axis, the exclusive cumulative
    sum of ``H_l * W_l`` (``[0, H_0 W_0, H_0 W_0 + H_1 W_1, ...]``)."""
    shapes = _checks.index_array(spatial_shapes, "spatial_shapes", ndim=2)
    sizes = shapes[:, 0] * shapes[:, 1]  # (L,)
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


def _check_levels(spatial_shapes, level_start_index, n_positions: int):
    """spatial_shapes (L, 2) of positive sizes summing to S; level_start_index their starts."""
    shapes = _checks.index_array(spatial_shapes, "spatial_shapes", ndim=2)
    _checks.last_dim(shapes, "spatial_shapes", 2, "(H, W) per level")
    if shapes.shape[0] == 0:
        raise ValueError("spatial_shapes must describe at least one level, got shape (0, 2)")
    if (shapes < 1).any():
        raise ValueError(f"spatial_shapes must hold positive (H, W) sizes, got "
                         f"{shapes.tolist()}")
    total = int((shapes[:, 0] * shapes[:, 1]).sum())
    if total != n_positions:
        raise ValueError(
            f"spatial_shapes must cover value's positions: sum of H * W over levels is {total}, "
            f"but value has S = {n_positions} positions (dim 1)")
    starts = _checks.index_array(level_start_index, "level_start_index", ndim=1)
    expected = level_start_index_of(shapes)
    if starts.shape != expected.shape or (starts != expected).any():
        raise ValueError(
            f"level_start_index must be the exclusive cumulative sum of H * W over "
            f"spatial_shapes, {expected.tolist()}, got {starts.tolist()}")
    return shapes, starts


def _validate(value, spatial_shapes, level_start_index, sampling_locations,
              attention_weights, backend, extra=()):
    """Check every argument against the others and resolve ``backend``; ``extra`` holds
    further ``(name, array)`` pairs (``gy``) that join the common dtype and are returned after
    the ``_Args`` and the tier module."""
    value = _checks.float_array(value, "value", ndim=4, device=True)
    locations = _checks.float_array(sampling_locations, "sampling_locations", ndim=6,
                                    device=True)
    weights = _checks.float_array(attention_weights, "attention_weights", ndim=5, device=True)
    n_batch, n_positions, n_heads, _ = value.shape
    shapes, starts = _check_levels(spatial_shapes, level_start_index, n_positions)
    n_levels = shapes.shape[0]
    _checks.last_dim(locations, "sampling_locations", 2, "(x, y)")
    _checks.same_size("value", n_batch, "sampling_locations", locations.shape[0],
                      "batch size (dim 0)")
    _checks.same_size("value", n_heads, "sampling_locations", locations.shape[2],
                      "number of heads M (dim 2)")
    _checks.same_size("spatial_shapes", n_levels, "sampling_locations", locations.shape[3],
                      "number of levels L (spatial_shapes dim 0, sampling_locations dim 3)")
    _checks.shape_equals(weights, "attention_weights", locations.shape[:5],
                         "(N, Lq, M, L, P) of sampling_locations")
    named = (("value", value), ("sampling_locations", locations),
             ("attention_weights", weights), *extra)
    tier = _tiers.get(backend, **dict(named))
    value, locations, weights, *extra = _checks.common_float(*named)
    return _Args(value, shapes, starts, locations, weights), tier, extra


def _is_empty(args: _Args) -> bool:
    """No output entry receives a term: zero batch, queries, heads, channels or points."""
    return args.value.shape[3] == 0 or args.attention_weights.size == 0


def forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
            backend: str = "auto") -> np.ndarray:
    """Multi-scale deformable attention of Deformable DETR.

    Args:
        value: (N, S, M, D) float array, the projected features of all levels, flattened.
        spatial_shapes: (L, 2) integer array, ``(H_l, W_l)`` of each level.
        level_start_index: (L,) integer array, the first row of each level in ``value``
            (see :func:`level_start_index_of`).
        sampling_locations: (N, Lq, M, L, P, 2) normalised ``(x, y)``; ``(0, 0)`` is the
            top-left corner of a level and ``(1, 1)`` its bottom-right corner.
        attention_weights: (N, Lq, M, L, P), one weight per sampled point.
        backend: ``"auto"``, ``"loop"``, ``"numpy"``, ``"numba"`` or ``"cuda"``.

    Returns:
        (N, Lq, M * D) array: ``out[n, q, m*D + d] = sum_{l, p} attn * V_l[n, m, d](loc)``;
        a numba device array when the inputs are GPU arrays (cuda tier).
    """
    args, tier, _ = _validate(value, spatial_shapes, level_start_index, sampling_locations,
                              attention_weights, backend)
    n_batch, _, n_heads, head_dim = args.value.shape
    n_queries = args.sampling_locations.shape[1]
    # an empty case on the host needs no tier; on the GPU the tier makes the device result
    if _is_empty(args) and not _checks.is_device_array(args.value):
        return np.zeros((n_batch, n_queries, n_heads * head_dim), dtype=args.value.dtype)
    return tier.forward(*args)


def backward(gy, value, spatial_shapes, level_start_index, sampling_locations,
             attention_weights, backend: str = "auto") -> MSDeformAttnGrads:
    """Vector-Jacobian product of :func:`forward` with respect to its three float inputs.

    Args:
        gy: (N, Lq, M * D) upstream gradient, the shape of ``forward``'s output.
        value: (N, S, M, D) as for :func:`forward`; so are the other arguments.

    Returns:
        ``MSDeformAttnGrads(grad_value, grad_sampling_locations, grad_attention_weights)``.
        Where a pixel coordinate is an integer (a kink of the bilinear interpolant) the
        location gradient is the right-hand derivative, as in :mod:`scratchvision.ops.bilinear`.
        Numba device arrays when the inputs are GPU arrays (cuda tier).
    """
    gy = _checks.float_array(gy, "gy", ndim=3, device=True)
    args, tier, (gy,) = _validate(value, spatial_shapes, level_start_index,
                                  sampling_locations, attention_weights, backend,
                                  extra=[("gy", gy)])
    n_batch, _, n_heads, head_dim = args.value.shape
    n_queries = args.sampling_locations.shape[1]
    _checks.shape_equals(gy, "gy", (n_batch, n_queries, n_heads * head_dim),
                         "the shape of forward's output (N, Lq, M * D)")
    if _is_empty(args) and not _checks.is_device_array(args.value):
        return MSDeformAttnGrads(np.zeros_like(args.value),
                                 np.zeros_like(args.sampling_locations),
                                 np.zeros_like(args.attention_weights))
    return MSDeformAttnGrads(*tier.backward(gy, *args))
