"""Numba CPU tier of multi-scale deformable attention: parallel kernels, same maths as loop.py.

Names (value, attn, level, u, v, x, y, x0, y0, ax, ay, w) and equation numbers follow
``loop.py`` and ``docs/derivations/ms_deform_attn.md``. What changes relative to the loop tier,
and why (each choice was measured against its alternative on the half-scale benchmark case;
the numbers are in the README's benchmark notes, not here, since they belong to one machine):

* **Fused per query, sorted per head.** The level and point loops of one (query, head) run as
  one stream of L * P points. :func:`_sort_points` first resolves all of them -- eq. (2), the
  cell and the bilinear weights -- into small per-work-item buffers without a single
  data-dependent branch, and lists them in two groups: points whose four taps are all inside
  their level (almost all of them) and points at the border. A point of the first group is
  then one pass over the D channels with its four taps and no bounds check; only the border
  group checks its taps one by one (eq. 3). Points with no tap inside (outside
  [-1, W) x [-1, H), or non-finite) are dropped *before* any float -> int conversion. The
  backward is faster so than deciding point by point as it goes: no branch to mispredict.
* **A head-major copy of value.** ``value`` (N, S, M, D) is copied to (N, M, S, D) (one
  pass over memory): a head's (S, D) slab is then contiguous, a tap reads D contiguous values
  (a vectorised channel loop) and the tap one column to its right is the next D values. The
  copy pays for itself, in the forward and the backward alike. The forward still visits
  queries in their own order with all heads of a query together: a query's heads sample
  around the same reference point, so their taps share cache lines (one head at a time is
  slower).
* **Backward partitioned by head, race-free.** Head m of batch element n only ever reads
  ``value[n, :, m, :]`` and writes ``grad_value[n, :, m, :]``. The backward is one pass over
  work items ``(n, m, chunk)``, each a fixed range of queries of one head: it computes
  grad_attention_weights (eq. 4) and grad_sampling_locations (eqs. 6-7) of its queries, and
  scatters eq. (5) into memory no other work item touches: chunk 0 straight into head
  (n, m)'s slab of the head-major gradient, chunk k > 0 into an (S, D) buffer of its own,
  added in chunk order when the gradient is copied back to (N, S, M, D). So there is no race,
  and repeated runs are bit-identical. With N * M >= the thread count (Deformable DETR:
  M = 8) there is one chunk per head and no buffer at all; with fewer heads than threads
  (N * M < threads), each head is cut into as many query ranges as it takes to give every
  thread work. There is no divisibility rule: ranges differ by at most one query. The
  alternative -- ranges of queries over all heads, each with a buffer the size of grad_value
  -- is faster on one thread but slower on two: it pays for zeroing and summing those
  buffers, and each thread needs all of value and of its buffer in cache instead of a few
  heads' slabs.
* **Reassociated channel sums in the backward.** Eqs. (4) and (6) need, per tap, the sum over
  channels ``gy[n, q, m, :] . value[n, m, tap, :]``. Without permission to reassociate, LLVM
  must add the D products one after the other and cannot vectorise the sum; the backward
  kernel is compiled with ``fastmath={"reassoc"}`` (no other fast-math flag: NaN and infinity
  keep their meaning), so each sum runs as vector-wide partial sums. The order of those
  additions is fixed when the kernel is compiled, so results are still reproducible from run
  to run.

Where the time goes: a point reads four rows of D = 32 float32 values -- eight cache lines --
at scattered places, so most of the forward's time is cache misses; the rest is the per-point
bookkeeping around a channel loop that is only two vector iterations long.

Precision: a point's pixel coordinates (eq. 2) are formed in the input dtype, as in every
tier (torch's rule: the product, then the sum, each rounded, never fused), and so are its
bilinear weights, the products with ``value`` and every sum over channels, points and
queries: float32 stays float32 end to end. Only the few scalar operations that combine a
point's four channel sums into its gradients (eqs. 4, 6, 7) run in float64 before rounding.
Sums run in another order than in ``loop.py``, so float64 results agree with it to rounding
(1e-10 relative), not bit for bit.

Contract: every array C-contiguous in one float dtype (spatial_shapes and level_start_index
int64), non-empty (N, Lq, M, D, P >= 1); see :mod:`scratchvision.ops.ms_deform_attn`.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ..bilinear.numba_cpu import cell_and_weights

_JIT = {"parallel": True, "cache": True, "fastmath": False}
# the backward's channel sums may be reassociated (see "Reassociated channel sums" above)
_JIT_SUMS = {"parallel": True, "cache": True, "fastmath": {"reassoc"}}

# Forward work items per thread: a few, so that one slow item does not leave a thread idle.
_ITEMS_PER_THREAD = 4
# A backward chunk gets at least this many queries: fewer would spend more time zeroing and
# summing its (S, D) buffer than scattering into it.
_MIN_CHUNK_QUERIES = 256


# ----------------------------------------------------------------------------- the points

@njit(inline="always")
def _sort_points(locations, weights, shapes, starts, n, q, m, cells, scales, fracs, order,
                 cast):
    """Eq. (2) and the bilinear cell and weights (bilinear eqs. 1-2) of the L * P points of
    head m of query q, and the order in which to visit them.

    Point ``j = level * P + p`` gets ``cells[j] = (s00, W, x0, y0)`` -- s00 is the position
    in value's S axis of its top-left tap (y0, x0), so its four taps are s00, s00 + 1,
    s00 + W and s00 + W + 1 --, ``scales[j]`` = attn * w of the taps (y0, x0), (y0, x1),
    (y1, x0), (y1, x1) in value's dtype, and ``fracs[j] = (ax, ay)``. ``order`` lists the
    points with all four taps inside their level first (``order[:n_fast]``) and those with
    only some inside last (``order[L*P - n_border : L*P]``); a point with no tap inside goes
    to the spare entry ``order[L*P]``, which is never read.

    cells, scales: (L*P, 4); fracs: (L*P, 2); order: (L*P + 1,). Returns
    ``(n_fast, n_border)``. Branch-free: every point is written, and the counters move by 0 or
    1, so there is no data-dependent branch for the CPU to mispredict.
    """
    n_levels, n_points = weights.shape[3], weights.shape[4]
    spare = n_levels * n_points
    n_fast = 0
    n_border = 0
    for level in range(n_levels):
        height = shapes[level, 0]
        width = shapes[level, 1]
        start = starts[level]  # where level l starts in value's S axis
        for p in range(n_points):
            j = level * n_points + p
            u = locations[n, q, m, level, p, 0]  # in the input dtype, as every tier
            v = locations[n, q, m, level, p, 1]
            x = u * cast(width) - cast(0.5)  # eq. (2), rounded like torch: product, then sum
            y = v * cast(height) - cast(0.5)
            # NOTE: outside [-1, W) x [-1, H) every tap is outside the level, and NaN fails
            # every comparison: such a point contributes zero and gets zero gradient. It is
            # moved to (-1, -1) -- no tap inside, so it lands in the spare entry -- before
            # floor() and the int conversion ever see it.
            inside = (x >= -1) & (x < width) & (y >= -1) & (y < height)
            x = x if inside else cast(-1.0)
            y = y if inside else cast(-1.0)
            # NOTE: bilinear's cell step floors: at an integer x the point is the left edge
            # of the cell to its right, so the location gradient is the right-hand derivative
            # (as in loop.py).
            x0, y0, ax, ay, w00, w01, w10, w11 = cell_and_weights(x, y, cast(1.0))
            cells[j, 0] = start + y0 * width + x0
            cells[j, 1] = width
            cells[j, 2] = x0
            cells[j, 3] = y0
            attn = weights[n, q, m, level, p]
            scales[j, 0] = attn * w00
            scales[j, 1] = attn * w01
            scales[j, 2] = attn * w10
            scales[j, 3] = attn * w11
            fracs[j, 0] = ax
            fracs[j, 1] = ay
            # eq. (3): all four taps inside the level, or only some
            all_inside = (x0 >= 0) & (y0 >= 0) & (x0 + 1 < width) & (y0 + 1 < height)
            order[n_fast if all_inside else (spare - 1 - n_border if inside else spare)] = j
            n_fast += all_inside
            n_border += inside & ~all_inside
    return n_fast, n_border


@njit(inline="always")
def _tap_inside(cells, shapes, n_points, j, tap):
    """eq. (3) for tap 0..3 -- (y0, x0), (y0, x1), (y1, x0), (y1, x1) -- of point j: whether
    it is inside its level, and its position in value's S axis."""
    s00, width, x0, y0 = cells[j, 0], cells[j, 1], cells[j, 2], cells[j, 3]
    height = shapes[j // n_points, 0]
    dy = tap // 2
    dx = tap % 2
    inside = (x0 + dx >= 0) & (x0 + dx < width) & (y0 + dy >= 0) & (y0 + dy < height)
    return inside, s00 + dy * width + dx


# ----------------------------------------------------------------------------- forward

@njit(inline="always")
def _add_point(out, value, n, q, m, cells, scales, j):
    """out[n, q, m, :] += the four terms of eq. (3) of point j, all of whose taps are inside."""
    s00, width = cells[j, 0], cells[j, 1]
    k00, k01, k10, k11 = scales[j, 0], scales[j, 1], scales[j, 2], scales[j, 3]
    for d in range(value.shape[3]):
        out[n, q, m, d] += ((k00 * value[n, m, s00, d] + k01 * value[n, m, s00 + 1, d])
                            + (k10 * value[n, m, s00 + width, d]
                               + k11 * value[n, m, s00 + width + 1, d]))


@njit(inline="always")
def _add_border_point(out, value, n, q, m, cells, scales, shapes, n_points, j):
    """out[n, q, m, :] += the terms of eq. (3) of point j whose taps are inside (eq. 3)."""
    for tap in range(4):
        inside, s = _tap_inside(cells, shapes, n_points, j, tap)
        if inside:
            k = scales[j, tap]
            for d in range(value.shape[3]):
                out[n, q, m, d] += k * value[n, m, s, d]


@njit(**_JIT)
def _forward_kernel(value, shapes, starts, locations, weights, out, chunks, cells, scales,
                    fracs, order, cast):
    """out (N, Lq, M, D) = eq. (3), every entry written.

    value (N, M, S, D), the head-major copy; shapes (L, 2) int64 (H, W); starts (L,) int64;
    locations (N, Lq, M, L, P, 2); weights (N, Lq, M, L, P); ``cast`` is value's scalar type.
    Work item ``item`` is query range ``item % chunks`` of batch element ``item // chunks``;
    it sorts each (query, head)'s points into its own ``cells[item]``, ``scales[item]``,
    ``fracs[item]`` and ``order[item]`` (see :func:`_sort_points`).
    """
    n_queries = locations.shape[1]
    n_heads, _, head_dim = value.shape[1:]
    n_points = weights.shape[4]
    n_listed = cells.shape[1]  # L * P
    zero = cast(0.0)
    for item in prange(out.shape[0] * chunks):
        n = item // chunks
        k = item % chunks
        ce, sc, fr, od = cells[item], scales[item], fracs[item], order[item]
        for q in range(k * n_queries // chunks, (k + 1) * n_queries // chunks):
            for m in range(n_heads):
                # zeroed here, where it is about to be used, rather than by np.zeros (one more
                # pass over out, on one thread)
                for d in range(head_dim):
                    out[n, q, m, d] = zero
                n_fast, n_border = _sort_points(locations, weights, shapes, starts, n, q, m,
                                                ce, sc, fr, od, cast)
                for i in range(n_fast):
                    _add_point(out, value, n, q, m, ce, sc, od[i])
                for i in range(n_listed - n_border, n_listed):
                    _add_border_point(out, value, n, q, m, ce, sc, shapes, n_points, od[i])


# ----------------------------------------------------------------------------- backward

@njit(inline="always")
def _scatter_tap(target, tn, tm, gy, n, q, m, s, scale):
    """eq. (5) for one tap: target[tn, tm, s, :] += attn * w * gy[n, q, m, :]."""
    for d in range(gy.shape[3]):
        target[tn, tm, s, d] += scale * gy[n, q, m, d]


@njit(inline="always")
def _border_tap(target, tn, tm, gy, value, n, q, m, cells, scales, shapes, n_points, j, tap,
                zero):
    """Tap ``tap`` of border point j: if it is inside its level, eq. (5)'s scatter and the
    channel sum ``gy[n, q, m, :] . value[n, m, s, :]``; otherwise nothing, and a sum of zero
    (a tap outside has no value, eq. 3)."""
    inside, s = _tap_inside(cells, shapes, n_points, j, tap)
    total = zero
    if inside:
        _scatter_tap(target, tn, tm, gy, n, q, m, s, scales[j, tap])
        for d in range(gy.shape[3]):
            total += gy[n, q, m, d] * value[n, m, s, d]
    return total


@njit(inline="always")
def _point_gradients(grad_locations, grad_weights, weights, shapes, n, q, m, fracs, j,
                     t00, t01, t10, t11, cast):
    """Eqs. (4), (6) and (7) of point j from its taps' channel sums
    ``t = gy[n, q, m, :] . value[n, m, tap, :]`` (zero for a tap outside the level)."""
    n_points = weights.shape[4]
    level = j // n_points
    p = j % n_points
    ax = fracs[j, 0]
    ay = fracs[j, 1]
    t00, t01 = np.float64(t00), np.float64(t01)
    t10, t11 = np.float64(t10), np.float64(t11)
    # eq. (4): d loss / d attn = sum over the taps of w * t, w of bilinear eq. (2)
    grad_weights[n, q, m, level, p] = cast(
        ((1.0 - ax) * (1.0 - ay) * t00 + ax * (1.0 - ay) * t01)
        + ((1.0 - ax) * ay * t10 + ax * ay * t11))
    # eq. (6) with the weights' derivatives dw/dx, dw/dy, then eq. (7): dx/du = W, dy/dv = H
    attn = np.float64(weights[n, q, m, level, p])
    g_x = attn * ((1.0 - ay) * (t01 - t00) + ay * (t11 - t10))
    g_y = attn * ((1.0 - ax) * (t10 - t00) + ax * (t11 - t01))
    grad_locations[n, q, m, level, p, 0] = cast(g_x * shapes[level, 1])
    grad_locations[n, q, m, level, p, 1] = cast(g_y * shapes[level, 0])


@njit(**_JIT_SUMS)
def _backward_kernel(gy, value, shapes, starts, locations, weights, grad_heads, buffers,
                     grad_locations, grad_weights, chunks, cells, scales, fracs, order, cast):
    """Fused eqs. (4)-(7), one work item per (n, m, chunk of queries).

    gy (N, Lq, M, D), value (N, M, S, D) (head-major); shapes, starts, locations, weights as
    in :func:`_forward_kernel`. Writes grad_locations (N, Lq, M, L, P, 2) and grad_weights
    (N, Lq, M, L, P) of the item's queries, and zeroes then scatters eq. (5) into its target:
    grad_heads[n, m] (chunk 0) or buffers[(n*M + m) * (chunks - 1) + chunk - 1, 0]
    (chunk > 0), with grad_heads (N, M, S, D) and buffers (N * M * (chunks - 1), 1, S, D).
    Every entry of every output is written, so they may come from np.empty: zeroing them here,
    in parallel and where they are about to be used, is cheaper than np.zeros on one thread.
    cells, scales, fracs, order: each item's buffers for :func:`_sort_points`.
    """
    n_batch, n_heads, _, head_dim = value.shape
    n_queries = locations.shape[1]
    n_points = weights.shape[4]
    n_listed = cells.shape[1]  # L * P
    zero = cast(0.0)
    for item in prange(n_batch * n_heads * chunks):
        k = item % chunks
        m = (item // chunks) % n_heads
        n = item // (chunks * n_heads)
        # this item's scatter target, seen as (N', M', S, D) with its own (n', m')
        if k == 0:
            target, tn, tm = grad_heads, n, m
        else:
            target, tn, tm = buffers, (n * n_heads + m) * (chunks - 1) + k - 1, 0
        for s in range(value.shape[2]):  # the item's (S, D) slab, zeroed before its scatter
            for d in range(head_dim):
                target[tn, tm, s, d] = zero
        ce, sc, fr, od = cells[item], scales[item], fracs[item], order[item]
        for q in range(k * n_queries // chunks, (k + 1) * n_queries // chunks):
            # points with no tap inside their level keep these zeros
            for level in range(weights.shape[3]):
                for p in range(n_points):
                    grad_weights[n, q, m, level, p] = zero
                    grad_locations[n, q, m, level, p, 0] = zero
                    grad_locations[n, q, m, level, p, 1] = zero
            n_fast, n_border = _sort_points(locations, weights, shapes, starts, n, q, m,
                                            ce, sc, fr, od, cast)
            for i in range(n_fast):
                j = od[i]
                s00, width = ce[j, 0], ce[j, 1]
                # the channel sums of eqs. (4) and (6), t = gy . value[tap]: one pass
                t00 = t01 = t10 = t11 = zero
                for d in range(head_dim):
                    g = gy[n, q, m, d]
                    t00 += g * value[n, m, s00, d]
                    t01 += g * value[n, m, s00 + 1, d]
                    t10 += g * value[n, m, s00 + width, d]
                    t11 += g * value[n, m, s00 + width + 1, d]
                # eq. (5): a scatter, race-free because this item owns the target's rows
                _scatter_tap(target, tn, tm, gy, n, q, m, s00, sc[j, 0])
                _scatter_tap(target, tn, tm, gy, n, q, m, s00 + 1, sc[j, 1])
                _scatter_tap(target, tn, tm, gy, n, q, m, s00 + width, sc[j, 2])
                _scatter_tap(target, tn, tm, gy, n, q, m, s00 + width + 1, sc[j, 3])
                _point_gradients(grad_locations, grad_weights, weights, shapes, n, q, m, fr,
                                 j, t00, t01, t10, t11, cast)
            for i in range(n_listed - n_border, n_listed):
                j = od[i]
                t00 = _border_tap(target, tn, tm, gy, value, n, q, m, ce, sc, shapes,
                                  n_points, j, 0, zero)
                t01 = _border_tap(target, tn, tm, gy, value, n, q, m, ce, sc, shapes,
                                  n_points, j, 1, zero)
                t10 = _border_tap(target, tn, tm, gy, value, n, q, m, ce, sc, shapes,
                                  n_points, j, 2, zero)
                t11 = _border_tap(target, tn, tm, gy, value, n, q, m, ce, sc, shapes,
                                  n_points, j, 3, zero)
                _point_gradients(grad_locations, grad_weights, weights, shapes, n, q, m, fr,
                                 j, t00, t01, t10, t11, cast)


@njit(**_JIT)
def _to_heads(value, heads):
    """heads[n, m, s, :] = value[n, s, m, :]: value (N, S, M, D) -> heads (N, M, S, D)."""
    n_batch, n_positions, n_heads, head_dim = value.shape
    for item in prange(n_batch * n_positions):
        n = item // n_positions
        s = item % n_positions
        for m in range(n_heads):
            for d in range(head_dim):
                heads[n, m, s, d] = value[n, s, m, d]


@njit(**_JIT)
def _from_heads(grad_heads, buffers, chunks, grad_value):
    """grad_value[n, s, m, :] = grad_heads[n, m, s, :] + the chunk buffers of head (n, m),
    added in chunk order: (N, M, S, D) (+ (N * M * (chunks - 1), 1, S, D)) -> (N, S, M, D)."""
    n_batch, n_positions, n_heads, head_dim = grad_value.shape
    for item in prange(n_batch * n_positions):
        n = item // n_positions
        s = item % n_positions
        for m in range(n_heads):
            for d in range(head_dim):
                grad_value[n, s, m, d] = grad_heads[n, m, s, d]
            for i in range(chunks - 1):
                other = (n * n_heads + m) * (chunks - 1) + i
                for d in range(head_dim):
                    grad_value[n, s, m, d] += buffers[other, 0, s, d]


# ----------------------------------------------------------------------------- wrappers

def _point_buffers(items: int, n_levels: int, n_points: int, dtype):
    """Each work item's buffers for :func:`_sort_points`: cells (items, L*P, 4) int64, scales
    (items, L*P, 4) and fracs (items, L*P, 2) in dtype, order (items, L*P + 1) int64."""
    n_listed = n_levels * n_points
    return (np.empty((items, n_listed, 4), dtype=np.int64),
            np.empty((items, n_listed, 4), dtype=dtype),
            np.empty((items, n_listed, 2), dtype=dtype),
            np.empty((items, n_listed + 1), dtype=np.int64))


def _chunks_per_head(n_heads_total: int, n_queries: int) -> int:
    """Query ranges per (n, m) head, so that every one of numba's threads has a work item,
    none with fewer than ``_MIN_CHUNK_QUERIES`` queries."""
    # NOTE: the chunking decides the summation order of grad_value, so it must not depend on
    # anything that changes between runs (numba.get_num_threads() can): it uses the problem
    # size and the process-wide maximum thread count only.
    wanted = -(-numba.config.NUMBA_NUM_THREADS // n_heads_total)  # ceil
    return int(max(1, min(wanted, n_queries // _MIN_CHUNK_QUERIES)))


def _head_major(value: np.ndarray) -> np.ndarray:
    """value (N, S, M, D) -> a (N, M, S, D) copy: each head's (S, D) slab contiguous."""
    n_batch, n_positions, n_heads, head_dim = value.shape
    heads = np.empty((n_batch, n_heads, n_positions, head_dim), dtype=value.dtype)
    _to_heads(value, heads)
    return heads


def forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """eq. (3).

    Args:
        value: (N, S, M, D); spatial_shapes: (L, 2) int64 (H, W); level_start_index: (L,)
            int64; sampling_locations: (N, Lq, M, L, P, 2) normalised (x, y);
            attention_weights: (N, Lq, M, L, P). The float arrays share one dtype.

    Returns:
        out (N, Lq, M*D), value's dtype.
    """
    n_batch, _, n_heads, head_dim = value.shape
    _, n_queries, _, n_levels, n_points, _ = sampling_locations.shape
    # every output row is written by one work item, so the chunking only balances the load
    wanted = -(-_ITEMS_PER_THREAD * numba.get_num_threads() // n_batch)  # ceil
    chunks = max(1, min(wanted, n_queries))
    out = np.empty((n_batch, n_queries, n_heads, head_dim), dtype=value.dtype)
    _forward_kernel(_head_major(value), spatial_shapes, level_start_index, sampling_locations,
                    attention_weights, out, chunks,
                    *_point_buffers(n_batch * chunks, n_levels, n_points, value.dtype),
                    value.dtype.type)
    return out.reshape(n_batch, n_queries, n_heads * head_dim)  # (N, Lq, M, D) -> (N, Lq, M*D)


def backward(gy, value, spatial_shapes, level_start_index, sampling_locations,
             attention_weights):
    """Vector-Jacobian product of :func:`forward`: eqs. (4)-(7).

    Args:
        gy: (N, Lq, M*D) upstream gradient; the others as for :func:`forward`.

    Returns:
        grad_value (N, S, M, D), grad_sampling_locations (N, Lq, M, L, P, 2),
        grad_attention_weights (N, Lq, M, L, P), in value's dtype.
    """
    n_batch, n_positions, n_heads, head_dim = value.shape
    _, n_queries, _, n_levels, n_points, _ = sampling_locations.shape
    chunks = _chunks_per_head(n_batch * n_heads, n_queries)
    # every entry of these is written by the kernel (see its docstring)
    grad_heads = np.empty((n_batch, n_heads, n_positions, head_dim), dtype=value.dtype)
    buffers = np.empty((n_batch * n_heads * (chunks - 1), 1, n_positions, head_dim),
                       dtype=value.dtype)
    grad_locations = np.empty_like(sampling_locations)
    grad_weights = np.empty_like(attention_weights)
    _backward_kernel(gy.reshape(n_batch, n_queries, n_heads, head_dim),  # (N, Lq, M*D) -> 4-d
                     _head_major(value), spatial_shapes, level_start_index, sampling_locations,
                     attention_weights, grad_heads, buffers, grad_locations, grad_weights,
                     chunks,
                     *_point_buffers(n_batch * n_heads * chunks, n_levels, n_points,
                                     value.dtype),
                     value.dtype.type)
    grad_value = np.empty_like(value)
    _from_heads(grad_heads, buffers, chunks, grad_value)
    return grad_value, grad_locations, grad_weights
