"""NumPy tier of multi-scale deformable attention: per level, bilinear sampling by the numpy
bilinear tier, then an einsum over the points.

What changes relative to ``loop.py``, and why: the loops over queries, heads, points, taps and
channels disappear into two library calls per level.

* Level l of ``value`` is a batch of N*M images of D channels, (N*M, D, H_l, W_l): image
  ``n*M + m`` is head m of batch element n. Every (query, point) of that head is a point on
  it, at the pixel coordinates of eq. (2). :func:`scratchvision.ops.bilinear.vectorized.sample`
  samples all of them at once (a sparse matrix of bilinear weights times the image).
* The weighted sum over points of eq. (3) is an einsum, accumulated over the (few) levels in a
  Python loop.
* Backward, per level: the sampled values give eq. (4); the upstream gradient of each sample,
  ``gy * attn``, goes through
  :func:`scratchvision.ops.bilinear.vectorized.sample_backward`, whose image gradient is the
  scatter of eq. (5) written as the transposed sparse product ``S^T g`` (no races, no
  ``np.add.at``) and whose point gradient is eq. (6); eq. (7) scales it by (W_l, H_l).

Non-finite and far-away locations are handled by the bilinear tier: they read zero, get zero
gradient and are never converted to integers.

Arithmetic runs in the input dtype: float32 stays float32 (pixel coordinates, bilinear weights,
SciPy's sparse products and the einsums all accumulate in it); float64 in float64.

Contract (arrays validated, C-contiguous, one float dtype, N, Lq, M, D, P >= 1): value
(N, S, M, D), spatial_shapes (L, 2) int64, level_start_index (L,) int64, sampling_locations
(N, Lq, M, L, P, 2), attention_weights (N, Lq, M, L, P). Equation numbers refer to
``docs/derivations/ms_deform_attn.md``.
"""

from __future__ import annotations

import numpy as np

from ..bilinear import vectorized as _bilinear


def _level_images(value: np.ndarray, start: int, height: int, width: int) -> np.ndarray:
    """Level l of ``value`` (N, S, M, D) as N*M images of D channels, (N*M, D, H_l, W_l)."""
    n_batch, _, n_heads, head_dim = value.shape
    level = value[:, start:start + height * width]  # (N, H*W, M, D)
    # (N, H*W, M, D) -> (N, M, D, H*W) -> (N*M, D, H, W)
    return level.transpose(0, 2, 3, 1).reshape(n_batch * n_heads, head_dim, height, width)


def _level_grad_to_value(grad_images: np.ndarray, n_batch: int) -> np.ndarray:
    """The inverse of :func:`_level_images`: (N*M, D, H, W) -> (N, H*W, M, D)."""
    _, head_dim, height, width = grad_images.shape
    # (N*M, D, H, W) -> (N, M, D, H*W) -> (N, H*W, M, D)
    return grad_images.reshape(n_batch, -1, head_dim, height * width).transpose(0, 3, 1, 2)


def _level_points(sampling_locations: np.ndarray, level: int, height: int,
                  width: int) -> np.ndarray:
    """eq. (2) for every point on level l: (N*M, Lq*P, 2) pixel coordinates (x, y), the point
    layout of :func:`_level_images`' images."""
    n_batch, n_queries, n_heads, _, n_points, _ = sampling_locations.shape
    uv = sampling_locations[:, :, :, level]  # (N, Lq, M, P, 2) normalised (u, v)
    scale = np.array([width, height], dtype=uv.dtype)
    # a huge u may overflow to inf here: inf is "far away" for the bilinear tier too
    with np.errstate(over="ignore"):
        xy = uv * scale - 0.5  # eq. (2): x = u W_l - 0.5, y = v H_l - 0.5
    # (N, Lq, M, P, 2) -> (N, M, Lq, P, 2) -> (N*M, Lq*P, 2)
    return xy.transpose(0, 2, 1, 3, 4).reshape(n_batch * n_heads, n_queries * n_points, 2)


def _level_weights(attention_weights: np.ndarray, level: int) -> np.ndarray:
    """attn of level l in the layout of :func:`_level_images`: (N*M, Lq, P)."""
    n_batch, n_queries, n_heads, _, n_points = attention_weights.shape
    attn = attention_weights[:, :, :, level]  # (N, Lq, M, P)
    # (N, Lq, M, P) -> (N, M, Lq, P) -> (N*M, Lq, P)
    return attn.transpose(0, 2, 1, 3).reshape(n_batch * n_heads, n_queries, n_points)


def _levels(spatial_shapes: np.ndarray, level_start_index: np.ndarray):
    """(level, H_l, W_l, start) for every level, as Python ints."""
    for level, ((height, width), start) in enumerate(zip(spatial_shapes.tolist(),
                                                         level_start_index.tolist())):
        yield level, height, width, start


def _samples(images: np.ndarray, points: np.ndarray, n_queries: int,
             n_points: int) -> np.ndarray:
    """V_l at every point of level l: (N*M, D, Lq, P), from :func:`_level_images` and
    :func:`_level_points`."""
    samples = _bilinear.sample(images, points)  # (N*M, D, Lq*P)
    # (N*M, D, Lq*P) -> (N*M, D, Lq, P)
    return samples.reshape(samples.shape[0], samples.shape[1], n_queries, n_points)


def forward(value: np.ndarray, spatial_shapes: np.ndarray, level_start_index: np.ndarray,
            sampling_locations: np.ndarray, attention_weights: np.ndarray) -> np.ndarray:
    """out (N, Lq, M*D) by eq. (3), one level at a time."""
    n_batch, _, n_heads, head_dim = value.shape
    _, n_queries, _, _, n_points, _ = sampling_locations.shape
    out = np.zeros((n_batch * n_heads, n_queries, head_dim), dtype=value.dtype)
    for level, height, width, start in _levels(spatial_shapes, level_start_index):
        images = _level_images(value, start, height, width)
        points = _level_points(sampling_locations, level, height, width)
        samples = _samples(images, points, n_queries, n_points)
        attn = _level_weights(attention_weights, level)  # (N*M, Lq, P)
        # eq. (3): sum_p attn * V_l(loc): (N*M, D, Lq, P) x (N*M, Lq, P) -> (N*M, Lq, D)
        out += np.einsum("bdqp,bqp->bqd", samples, attn)
    # (N*M, Lq, D) -> (N, M, Lq, D) -> (N, Lq, M, D) -> (N, Lq, M*D)
    out = out.reshape(n_batch, n_heads, n_queries, head_dim).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(out).reshape(n_batch, n_queries, n_heads * head_dim)


def backward(gy: np.ndarray, value: np.ndarray, spatial_shapes: np.ndarray,
             level_start_index: np.ndarray, sampling_locations: np.ndarray,
             attention_weights: np.ndarray):
    """grad_value (N, S, M, D) by eq. (5), grad_sampling_locations (N, Lq, M, L, P, 2) by
    eqs. (6)-(7), grad_attention_weights (N, Lq, M, L, P) by eq. (4)."""
    n_batch, _, n_heads, head_dim = value.shape
    _, n_queries, _, _, n_points, _ = sampling_locations.shape
    grad_value = np.zeros_like(value)
    grad_locations = np.zeros_like(sampling_locations)
    grad_weights = np.zeros_like(attention_weights)
    # (N, Lq, M*D) -> (N, Lq, M, D) -> (N, M, D, Lq) -> (N*M, D, Lq)
    g_out = gy.reshape(n_batch, n_queries, n_heads, head_dim).transpose(0, 2, 3, 1).reshape(
        n_batch * n_heads, head_dim, n_queries)
    for level, height, width, start in _levels(spatial_shapes, level_start_index):
        images = _level_images(value, start, height, width)
        points = _level_points(sampling_locations, level, height, width)
        samples = _samples(images, points, n_queries, n_points)
        attn = _level_weights(attention_weights, level)  # (N*M, Lq, P)
        # eq. (4): <gy, V_l(loc)> over d: (N*M, D, Lq, P) x (N*M, D, Lq) -> (N*M, Lq, P)
        g_attn = np.einsum("bdqp,bdq->bqp", samples, g_out)
        # (N*M, Lq, P) -> (N, M, Lq, P) -> (N, Lq, M, P)
        grad_weights[:, :, :, level] = g_attn.reshape(
            n_batch, n_heads, n_queries, n_points).transpose(0, 2, 1, 3)
        # the upstream gradient of each sample: gy * attn, (N*M, D, Lq, P) -> (N*M, D, Lq*P)
        g_samples = (g_out[..., None] * attn[:, None]).reshape(
            n_batch * n_heads, head_dim, n_queries * n_points)
        # eq. (6) per point, and the images' gradient
        # NOTE: at an integer x or y the bilinear tier floors, so grad_xy is the right-hand
        # derivative there, as in loop.py
        grad_images, grad_xy = _bilinear.sample_backward(g_samples, images, points)
        # eq. (5): the scatter onto level l's rows of value, done by S^T g in the bilinear tier
        grad_value[:, start:start + height * width] = _level_grad_to_value(grad_images,
                                                                           n_batch)
        # eq. (7): chain rule through eq. (2), dx/du = W_l, dy/dv = H_l
        grad_uv = grad_xy * np.array([width, height], dtype=grad_xy.dtype)
        # (N*M, Lq*P, 2) -> (N, M, Lq, P, 2) -> (N, Lq, M, P, 2)
        grad_locations[:, :, :, level] = grad_uv.reshape(
            n_batch, n_heads, n_queries, n_points, 2).transpose(0, 2, 1, 3, 4)
    return grad_value, grad_locations, grad_weights
