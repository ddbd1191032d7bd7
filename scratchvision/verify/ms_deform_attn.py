"""Verification material for multi-scale deformable attention.

Check cases: one level (single-scale deformable attention), three levels with a level one
pixel wide, and several heads and points. Shapes are small because the loop tier's gradients
are checked element by element (two forward passes per input element, each a Python loop over
every query, head, level, point, tap and channel). The level shapes are the same in the normal
and the tiny (CUDA simulator) variant of a case; the tiny one has fewer queries, heads,
channels and points.

The torch reference, :func:`grid_sample_formulation`, is Deformable-DETR's pure-PyTorch
formulation (``ms_deform_attn_core_pytorch``): per level, ``value`` is reshaped to
(N*M, D, H, W) images and ``F.grid_sample`` samples them with ``align_corners=False``; the
samples are weighted and summed. It is what runs when the CUDA extension is not built, so it
is the CPU path a PyTorch user has. The bench cases time against it and the oracle tests
compare with it.

The bench cases are Deformable-DETR's encoder self-attention: N=1, M=8 heads of D=32
channels, L=4 levels, P=4 points, and one query per position (Lq = S):

* ``ms_deform_attn half scale``: levels (50, 84), (25, 42), (13, 21), (7, 11), S = 5600;
* ``ms_deform_attn full scale``: levels (100, 168), (50, 84), (25, 42), (13, 21), S = 22323.

The inputs look like a trained model's: a query at pixel (x, y) of level l_q has the
reference point ``((x + 0.5) / W_{l_q}, (y + 0.5) / H_{l_q})`` (the same normalised point on
every level), and each head, level and point samples it moved by an offset drawn from
N(0, 2 pixels of that level). Near the borders, and most on the small levels, that takes
some locations outside [0, 1]^2: about one in six at half scale, one in eleven at full
scale. The attention weights are a softmax over the L * P points of standard-normal logits.
forward+backward differentiates value, sampling_locations and attention_weights with a fixed
random ``gy``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..cases import BenchCase, CheckCase
from ..ops.ms_deform_attn import backward, forward, level_start_index_of
from .bilinear import KINK_MARGIN, points_off_kinks

__all__ = ["CHECK_CASES", "BENCH_CASES", "KINK_MARGIN", "locations_off_kinks",
           "grid_sample_formulation", "make_inputs"]


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


# ============================================================================ bench cases

def grid_sample_formulation(value, spatial_shapes, sampling_locations, attention_weights):
    """Deformable attention written with ``torch.nn.functional.grid_sample`` (torch tensors).

    Args:
        value: (N, S, M, D) tensor.
        spatial_shapes: (L, 2) sequence of ``(H, W)`` ints (a list, an array or a tensor).
        sampling_locations: (N, Lq, M, L, P, 2) tensor, normalised ``(x, y)``.
        attention_weights: (N, Lq, M, L, P) tensor.

    Returns:
        (N, Lq, M * D) tensor, differentiable with respect to the three tensors.
    """
    import torch
    import torch.nn.functional as F

    n_batch, _, n_heads, head_dim = value.shape
    _, n_queries, _, n_levels, n_points, _ = sampling_locations.shape
    sizes = [(int(h), int(w)) for h, w in spatial_shapes]
    value_levels = value.split([h * w for h, w in sizes], dim=1)
    # grid_sample's normalised coordinates run over [-1, 1]: pixel x = ((g + 1) W - 1) / 2
    # with align_corners=False, which is u W - 0.5 for g = 2u - 1
    grids = 2 * sampling_locations - 1
    samples = []
    for level, (height, width) in enumerate(sizes):
        # (N, H*W, M, D) -> (N, H*W, M*D) -> (N, M*D, H*W) -> (N*M, D, H, W)
        image = value_levels[level].flatten(2).transpose(1, 2).reshape(
            n_batch * n_heads, head_dim, height, width)
        # (N, Lq, M, P, 2) -> (N, M, Lq, P, 2) -> (N*M, Lq, P, 2)
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        # -> (N*M, D, Lq, P)
        samples.append(F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros",
                                     align_corners=False))
    # (N, Lq, M, L, P) -> (N, M, Lq, L, P) -> (N*M, 1, Lq, L*P)
    weights = attention_weights.transpose(1, 2).reshape(n_batch * n_heads, 1, n_queries,
                                                        n_levels * n_points)
    # L x (N*M, D, Lq, P) -> (N*M, D, Lq, L, P) -> (N*M, D, Lq, L*P); weighted sum -> (N*M, D, Lq)
    out = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1)
    # (N*M, D, Lq) -> (N, M*D, Lq) -> (N, Lq, M*D)
    return out.view(n_batch, n_heads * head_dim, n_queries).transpose(1, 2).contiguous()


# (H, W) per level, finest first
HALF_SCALE_LEVELS = ((50, 84), (25, 42), (13, 21), (7, 11))
FULL_SCALE_LEVELS = ((100, 168), (50, 84), (25, 42), (13, 21))
QUICK_LEVELS = ((8, 12), (4, 6))
# heads M, channels per head D, points P (the encoder's); quick: a smaller head
HEADS, HEAD_DIM, POINTS = 8, 32, 4
QUICK_HEADS, QUICK_HEAD_DIM, QUICK_POINTS = 2, 8, 2
OFFSET_PIXELS = 2.0  # standard deviation of a sampling offset, in pixels of its level


def _shape_text(levels, heads, head_dim, points) -> str:
    positions = sum(h * w for h, w in levels)
    sizes = ", ".join(f"{h}x{w}" for h, w in levels)
    return (f"N=1, Lq=S={positions}, M={heads}, D={head_dim}, P={points}, "
            f"levels {sizes}")


def reference_points(levels) -> np.ndarray:
    """(S, 2) normalised ``(x, y)``: the centre of each position of the flattened levels,
    normalised by its own level's size, in ``value``'s row order."""
    points = []
    for height, width in levels:
        y, x = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")  # (H, W) each
        # (H, W) x 2 -> (H, W, 2) -> (H*W, 2)
        points.append(np.stack([(x + 0.5) / width, (y + 0.5) / height], -1).reshape(-1, 2))
    return np.concatenate(points)


def make_inputs(rng: np.random.Generator, levels, heads: int, head_dim: int,
                points: int) -> dict:
    """float32 encoder inputs for ``levels`` (see the module docstring): value (1, S, M, D),
    spatial_shapes (L, 2), level_start_index (L,), sampling_locations (1, S, M, L, P, 2),
    attention_weights (1, S, M, L, P) and gy (1, S, M*D)."""
    shapes = np.array(levels, dtype=np.int64)  # (L, 2) as (H, W)
    n_levels = len(levels)
    n_positions = int((shapes[:, 0] * shapes[:, 1]).sum())
    # per level, one pixel in normalised units: (L, 2) as (1 / W, 1 / H)
    pixel = 1.0 / shapes[:, ::-1]
    offsets = rng.normal(0.0, OFFSET_PIXELS, (1, n_positions, heads, n_levels, points, 2))
    # (S, 2) -> (1, S, 1, 1, 1, 2); (L, 2) -> (1, 1, 1, L, 1, 2)
    locations = (reference_points(levels)[None, :, None, None, None]
                 + offsets * pixel[None, None, None, :, None])
    logits = rng.standard_normal((1, n_positions, heads, n_levels * points))
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)  # softmax over the L*P points of a head
    return {
        "value": rng.standard_normal((1, n_positions, heads, head_dim), dtype=np.float32),
        "spatial_shapes": shapes,
        "level_start_index": level_start_index_of(shapes),
        "sampling_locations": locations.astype(np.float32),
        # (1, S, M, L*P) -> (1, S, M, L, P)
        "attention_weights": weights.reshape(1, n_positions, heads, n_levels,
                                             points).astype(np.float32),
        "gy": rng.standard_normal((1, n_positions, heads * head_dim), dtype=np.float32),
    }


def _inputs_for(levels):
    def inputs(rng: np.random.Generator, quick: bool) -> dict:
        if quick:
            return make_inputs(rng, QUICK_LEVELS, QUICK_HEADS, QUICK_HEAD_DIM, QUICK_POINTS)
        return make_inputs(rng, levels, HEADS, HEAD_DIM, POINTS)
    return inputs


def _forward(backend, value, spatial_shapes, level_start_index, sampling_locations,
             attention_weights, gy):
    return forward(value, spatial_shapes, level_start_index, sampling_locations,
                   attention_weights, backend=backend)


def _forward_backward(backend, value, spatial_shapes, level_start_index, sampling_locations,
                      attention_weights, gy):
    forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
            backend=backend)
    return backward(gy, value, spatial_shapes, level_start_index, sampling_locations,
                    attention_weights, backend=backend)


def _grid_sample_reference(inputs: dict, device: str):
    import torch

    names = ("value", "sampling_locations", "attention_weights")
    tensors = {name: torch.from_numpy(inputs[name]).to(device) for name in names}
    leaves = {name: t.clone().requires_grad_() for name, t in tensors.items()}
    shapes = inputs["spatial_shapes"].tolist()
    gy = torch.from_numpy(inputs["gy"]).to(device)

    def forward_only():
        with torch.no_grad():
            return grid_sample_formulation(tensors["value"], shapes,
                                           tensors["sampling_locations"],
                                           tensors["attention_weights"])

    def forward_backward():
        for leaf in leaves.values():
            leaf.grad = None
        out = grid_sample_formulation(leaves["value"], shapes, leaves["sampling_locations"],
                                      leaves["attention_weights"])
        out.backward(gy)

    return forward_only, forward_backward


def _case(name: str, levels) -> BenchCase:
    return BenchCase(
        name=name,
        shape=_shape_text(levels, HEADS, HEAD_DIM, POINTS),
        quick_shape=_shape_text(QUICK_LEVELS, QUICK_HEADS, QUICK_HEAD_DIM, QUICK_POINTS),
        make_inputs=_inputs_for(levels),
        forward=_forward,
        forward_backward=_forward_backward,
        reference=_grid_sample_reference,
        reference_name="torch grid_sample formulation",
        gpu_target=3.0,  # at least 3x the grid_sample formulation
    )


BENCH_CASES = [
    _case("ms_deform_attn half scale", HALF_SCALE_LEVELS),
    _case("ms_deform_attn full scale", FULL_SCALE_LEVELS),
]
