"""CUDA tier of multi-scale deformable attention: ``numba.cuda`` kernels and the device functions
that launch them.

Each function runs on device arrays and returns device arrays;
:func:`~scratchvision.ops.cuda_common.host_or_device` lets it take NumPy arrays too (copied
in, results copied back). Nothing inside the op goes through the host: the level table
(``spatial_shapes`` and ``level_start_index``, a few integers checked on the host) reaches the
kernels as launch parameters, tuples of ints, not as arrays to copy, and ``grad_value`` is
zeroed on the device. Names mirror ``loop.py`` (value, attn, level, u, v, x, y, x0, y0, ax, ay,
w) and equation numbers refer to ``docs/derivations/ms_deform_attn.md``; the launch constants
come from :mod:`scratchvision.ops.cuda_common`. Shapes as in
:mod:`scratchvision.ops.ms_deform_attn`.

What changes relative to ``loop.py``, and why:

* **One block per query, taps staged once.** A block takes one query ``(n, q)`` at a time
  (blocks stride over the ``N * Lq`` queries, so any batch and query count fits any grid: no
  divisibility rule). Its threads first *stage* the query's sampled points in shared memory,
  one thread per point ``j = (m * L + level) * P + p``: the point's location is read once,
  mapped to pixels (eq. 2), and turned into its four taps (the bilinear page's eqs. 1-3) --
  the row ``s`` of ``value`` each tap reads (-1 when the tap lies outside the level) and its
  weight ``w`` -- next to ``attn`` and the offsets ``ax, ay``. After one ``syncthreads`` every
  thread works from there; no location or weight is read again per channel. Queries with more
  than ``CHUNK`` points are staged ``CHUNK`` points at a time.
* **Channel threads for what is per channel, point threads for what is per point.** The
  forward sum (eq. 3) and the value gradient (eq. 5) run one thread per output channel
  ``c = m * D + d``: the thread walks its head's staged points, and neighbouring threads read
  (and write) neighbouring ``d`` of the same ``value`` row, which the GPU merges into one
  memory transaction. The attention and location gradients (eqs. 4, 6, 7) are sums over the
  channels of one point: one thread per staged point adds them up in registers over ``d``, so
  no sum ever crosses threads -- no warp shuffles, no shared-memory reductions, nothing the
  simulator cannot run: the simulator tests exactly the code the GPU runs.
* **The value gradient is a scatter, done with atomics.** Many (query, point) pairs read the
  same tap (eq. 5), so the channel threads of different blocks add into the same
  ``grad_value`` entries, with ``cuda.atomic.add`` (hardware float32 and float64 atomics).
  The sum is exact up to rounding, but the *order* of the additions depends on thread timing:
  on a GPU ``grad_value`` may differ in the last bits from run to run. (The design page asks
  bit-identical runs of the numba CPU tier, which gets them from per-thread buffers. The
  deterministic GPU route is bilinear's: bin the taps by the ``value`` row they read with
  :func:`~scratchvision.ops.cuda_common.bin_by_key`, then gather per ``(n, s, m, d)``. Here
  that means binning ``N * Lq * M * L * P * 4`` taps -- 11.4 million at the full-scale
  benchmark, four times the entries the forward reads -- and re-deriving each tap's weight in
  the gather: more traffic than the whole backward, so this tier keeps the atomics and offers
  no deterministic variant.) ``out``, ``grad_sampling_locations`` and
  ``grad_attention_weights`` are written by one thread each, in a fixed order: those are
  bit-reproducible.
* **The pixel coordinate in the input dtype, never fused.** Eq. (2), ``x = u * W_l - 0.5``,
  is computed in the input dtype, as in every tier (torch's rule), with a product that the
  compiler may not fuse with the subtraction (``fmul_rn`` / ``dmul_rn``): a fused
  multiply-add rounds once instead of twice and could put a point that rounds onto a pixel
  centre just left of it, the other one-sided derivative. The cell and the weights are
  bilinear's :func:`~scratchvision.ops.bilinear.cell.cell_and_weights`, compiled as a device
  function.
* **Typed constants.** numba types a bare ``0.0`` as float64 and would promote float32
  arithmetic that touches it, so the kernels are built once per float type
  (:func:`_build_kernels`) with ``zero``/``one`` and shared arrays of that type.

Against the reference kernels:

* **Deformable-DETR's CUDA kernel** (``ms_deform_im2col_cuda.cuh``) runs one thread per output
  channel ``(n, q, m, d)``, the same thread-per-channel layout as the channel threads here (so
  the ``value`` reads are the same coalesced rows), but every one of the D threads of a head
  reads all L * P locations and weights of its query itself and redoes eq. (2) and the corner
  weights: D times the location arithmetic. Here a block stages each point once in shared
  memory and the channel threads read the taps from there. Its backward keeps the same
  mapping: ``grad_value`` by float ``atomicAdd`` as here, and the location and attention
  gradients summed across the D channel threads of each point through shared memory, with a
  ``__syncthreads`` per point (or global atomics when the block is not a power of two). Here
  one thread per point sums over ``d`` in registers instead: no cross-thread reduction and no
  barrier per point, at the price of each point thread walking its four taps' D values
  alone.
* **DCNv4's FlashDeformAttn kernels** go further: each thread owns ``d_stride`` consecutive
  channels (8 for float32) and moves them with one vector load and store (16 to 32 bytes), a
  block holds several queries, the levels and points are compile-time constants (the loops
  unrolled), a query's offsets and attention logits sit side by side in one tensor, and the
  softmax of the logits is fused into the kernel (forward and backward), so the weights never
  make a round trip through memory; the backward reduces across the channel threads with warp
  shuffles. This tier keeps one channel per thread, runtime L and P, and no shuffles -- what
  the CUDA simulator runs is exactly what the GPU runs -- and leaves the softmax to the layer
  (``nn.MSDeformAttn``), because the op's contract, like Deformable-DETR's, takes the weights
  as given.

Precision: float64 inputs are computed in float64; float32 inputs are computed and accumulated
in float32 (coordinates, weights, products and sums). Results agree with
``loop.py`` to rounding; ``grad_value`` adds its terms in a different order.

The kernels are compiled lazily, on their first launch for a given argument type. With
``NUMBA_ENABLE_CUDASIM=1`` (set before numba is imported) the same code runs in numba's CUDA
simulator, one Python thread per CUDA thread: correct but slow, so use it on tiny shapes only.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from numba import config as numba_config
from numba import cuda
from numba.cuda import libdevice

from ..bilinear.numba_cuda import cell_and_weights
from ..cuda_common import MAX_BLOCKS, THREADS_PER_BLOCK, host_or_device, zeros

# Sampled points staged in shared memory at a time. Deformable DETR's heads, levels and points
# (M * L * P = 8 * 4 * 4) fit in one chunk on a GPU; the simulator stages a few points at a
# time, so that tiny tests also take the multi-chunk path. (Shared arrays need compile-time
# shapes: a module global.)
CHUNK = 8 if numba_config.ENABLE_CUDASIM else 128
#: the four bilinear taps of a point, in loop.py's order: tap ``t = 2 * ty + tx`` is pixel
#: ``(y0 + ty, x0 + tx)``
TAPS = 4

# The GPU compiler fuses ``a * b - c`` into one fused multiply-add, rounded once instead of
# twice. For eq. (2) that would move ``u * W - 0.5`` off loop.py's value by an ulp, and a point
# that rounds onto a pixel centre could land just left of it (the other one-sided derivative).
# ``fmul_rn`` / ``dmul_rn`` are float32 / float64 products that are never fused. The simulator
# does not implement libdevice, and Python never fuses, so there the plain product is the same.
if numba_config.ENABLE_CUDASIM:
    def _plain_product(a, b):
        return a * b

    _UNFUSED_PRODUCT = {np.float32: _plain_product, np.float64: _plain_product}
else:
    _UNFUSED_PRODUCT = {np.float32: libdevice.fmul_rn, np.float64: libdevice.dmul_rn}


# ----------------------------------------------------------------------------- kernels

def _build_kernels(float_type) -> SimpleNamespace:
    """Compile-on-first-use kernels whose arithmetic stays in ``float_type``."""
    zero = float_type(0.0)
    one = float_type(1.0)
    half = float_type(0.5)
    unfused_product = _UNFUSED_PRODUCT[float_type]

    @cuda.jit(device=True)
    def stage_tap(k, t, start, row, col, w, height, width, tap_row, tap_w):
        """Tap ``t`` of staged point ``k``: its row of ``value``, or -1 when it lies outside
        the level (eq. 3 of the bilinear page: it reads zero), and its weight ``w``."""
        inside = 0 <= row < height and 0 <= col < width
        tap_row[k, t] = start + row * width + col if inside else -1
        tap_w[k, t] = w

    @cuda.jit(device=True)
    def point_of(j, n_levels, n_points):
        """The ``(m, level, p)`` of flat point index ``j = (m * L + level) * P + p``."""
        m = j // (n_levels * n_points)
        rest = j - m * n_levels * n_points
        level = rest // n_points
        return m, level, rest - level * n_points

    @cuda.jit(device=True)
    def stage_points(n, q, j0, count, level_shapes, level_starts, sampling_locations,
                     attention_weights, tap_row, tap_w, attn_s, ax_s, ay_s):
        """Stage points ``j0 .. j0 + count - 1`` of query ``(n, q)``, one thread per point.

        ``level_shapes`` is the tuple ``(H_0, W_0, H_1, W_1, ...)`` and ``level_starts`` the
        tuple of ``level_start_index`` (see :func:`_levels`). Fills entry ``k = j - j0`` of the
        shared arrays: ``tap_row[k, t]`` the row ``s`` of ``value`` that tap ``t`` reads, or -1
        outside the level; ``tap_w[k, t]`` its weight; ``attn_s[k]`` the attention weight;
        ``ax_s[k], ay_s[k]`` the offsets in the cell.
        """
        n_levels, n_points = sampling_locations.shape[3:5]
        for k in range(np.int64(cuda.threadIdx.x), count, np.int64(cuda.blockDim.x)):
            m, level, p = point_of(j0 + k, n_levels, n_points)
            height = level_shapes[2 * level]
            width = level_shapes[2 * level + 1]
            start = level_starts[level]  # where x^l starts in value
            attn_s[k] = attention_weights[n, q, m, level, p]  # A_mlqk
            # eq. (2) in the input dtype, as every tier (see the module docstring)
            u = sampling_locations[n, q, m, level, p, 0]
            v = sampling_locations[n, q, m, level, p, 1]
            x = unfused_product(u, float_type(width)) - half
            y = unfused_product(v, float_type(height)) - half
            # NOTE: a point with no tap inside the level contributes nothing and gets zero
            # gradient. The test is false for NaN and +-inf too, so non-finite coordinates
            # (and finite ones too large for an index) never reach floor() / int().
            if not (-1.0 <= x < width and -1.0 <= y < height):
                for t in range(TAPS):
                    tap_row[k, t] = -1
                    tap_w[k, t] = zero
                ax_s[k] = zero
                ay_s[k] = zero
                continue
            # eqs. (1)-(2) of the bilinear page: the cell, the offsets and the four weights.
            # NOTE: at an integer coordinate floor() puts the point at the left edge of the
            # cell to its right: the gradient is the right-hand derivative, as in loop.py.
            x0, y0, ax, ay, w00, w01, w10, w11 = cell_and_weights(x, y, one)
            ax_s[k] = ax
            ay_s[k] = ay
            # tap t = 2 * ty + tx is pixel (y0 + ty, x0 + tx)
            stage_tap(k, 0, start, y0, x0, w00, height, width, tap_row, tap_w)
            stage_tap(k, 1, start, y0, x0 + 1, w01, height, width, tap_row, tap_w)
            stage_tap(k, 2, start, y0 + 1, x0, w10, height, width, tap_row, tap_w)
            stage_tap(k, 3, start, y0 + 1, x0 + 1, w11, height, width, tap_row, tap_w)

    @cuda.jit(device=True)
    def tap_slopes(t, ax, ay):
        """``(dw/dx, dw/dy)`` of tap ``t``'s weight ``wx * wy`` (the bilinear page's eq. 2)."""
        tx = t % 2
        ty = t // 2
        wx = one - ax if tx == 0 else ax
        wy = one - ay if ty == 0 else ay
        dw_dx = -wy if tx == 0 else wy
        dw_dy = -wx if ty == 0 else wx
        return dw_dx, dw_dy

    @cuda.jit(device=True)
    def head_points(j0, count, m, points_per_head):
        """The flat points of head ``m`` in the staged chunk ``j0 .. j0 + count - 1``."""
        return max(j0, m * points_per_head), min(j0 + count, (m + 1) * points_per_head)

    @cuda.jit
    def forward_kernel(value, level_shapes, level_starts, sampling_locations,
                       attention_weights, out):
        """out (N, Lq, M*D) by eq. (3): one block per query, one thread per channel."""
        tap_row = cuda.shared.array((CHUNK, TAPS), np.int64)
        tap_w = cuda.shared.array((CHUNK, TAPS), float_type)
        attn_s = cuda.shared.array(CHUNK, float_type)
        ax_s = cuda.shared.array(CHUNK, float_type)
        ay_s = cuda.shared.array(CHUNK, float_type)
        thread = np.int64(cuda.threadIdx.x)
        n_threads = np.int64(cuda.blockDim.x)
        n_batch, _, n_heads, head_dim = value.shape
        _, n_queries, _, n_levels, n_points, _ = sampling_locations.shape
        points_per_head = n_levels * n_points
        channels = n_heads * head_dim
        # Every thread of a block takes the same trips through the loops that contain a
        # syncthreads, so all of them reach it.
        for nq in range(np.int64(cuda.blockIdx.x), n_batch * n_queries,
                        np.int64(cuda.gridDim.x)):
            n = nq // n_queries
            q = nq - n * n_queries
            for c in range(thread, channels, n_threads):
                out[n, q, c] = zero
            for j0 in range(0, n_heads * points_per_head, CHUNK):
                count = min(CHUNK, n_heads * points_per_head - j0)
                stage_points(n, q, j0, count, level_shapes, level_starts,
                             sampling_locations, attention_weights, tap_row, tap_w, attn_s,
                             ax_s, ay_s)
                cuda.syncthreads()  # the chunk is staged
                for c in range(thread, channels, n_threads):
                    m = c // head_dim
                    d = c - m * head_dim
                    acc = out[n, q, c]
                    first, end = head_points(j0, count, m, points_per_head)
                    for j in range(first, end):  # the head's levels and points, in order
                        k = j - j0
                        attn = attn_s[k]
                        for t in range(TAPS):
                            s = tap_row[k, t]
                            if s >= 0:
                                # eq. (3): A_mlqk * w_tap * (W'_m x^l)[tap, d]
                                acc += attn * tap_w[k, t] * value[n, s, m, d]
                    out[n, q, c] = acc
                cuda.syncthreads()  # everyone is done before the chunk is restaged

    @cuda.jit
    def backward_kernel(gy, value, level_shapes, level_starts, sampling_locations,
                        attention_weights, grad_value, grad_locations, grad_weights):
        """grad_value (N, S, M, D) += eq. (5) (zeroed by the caller), grad_locations
        (N, Lq, M, L, P, 2) by eqs. (6)-(7) and grad_weights (N, Lq, M, L, P) by eq. (4):
        one block per query; channel threads scatter eq. (5), point threads sum the rest."""
        tap_row = cuda.shared.array((CHUNK, TAPS), np.int64)
        tap_w = cuda.shared.array((CHUNK, TAPS), float_type)
        attn_s = cuda.shared.array(CHUNK, float_type)
        ax_s = cuda.shared.array(CHUNK, float_type)
        ay_s = cuda.shared.array(CHUNK, float_type)
        thread = np.int64(cuda.threadIdx.x)
        n_threads = np.int64(cuda.blockDim.x)
        n_batch, _, n_heads, head_dim = value.shape
        _, n_queries, _, n_levels, n_points, _ = sampling_locations.shape
        points_per_head = n_levels * n_points
        channels = n_heads * head_dim
        for nq in range(np.int64(cuda.blockIdx.x), n_batch * n_queries,
                        np.int64(cuda.gridDim.x)):
            n = nq // n_queries
            q = nq - n * n_queries
            for j0 in range(0, n_heads * points_per_head, CHUNK):
                count = min(CHUNK, n_heads * points_per_head - j0)
                stage_points(n, q, j0, count, level_shapes, level_starts,
                             sampling_locations, attention_weights, tap_row, tap_w, attn_s,
                             ax_s, ay_s)
                cuda.syncthreads()  # the chunk is staged
                # eq. (5), one thread per channel: a scatter -- many (q, p) read the same tap,
                # so the adds are atomic (see the module docstring)
                for c in range(thread, channels, n_threads):
                    m = c // head_dim
                    d = c - m * head_dim
                    g = gy[n, q, c]
                    first, end = head_points(j0, count, m, points_per_head)
                    for j in range(first, end):
                        k = j - j0
                        g_attn_w = g * attn_s[k]
                        for t in range(TAPS):
                            s = tap_row[k, t]
                            if s >= 0:
                                cuda.atomic.add(grad_value, (n, s, m, d),
                                                g_attn_w * tap_w[k, t])
                # eqs. (4), (6), (7), one thread per staged point: sums over the head's
                # channels, in registers, taps outer and channels inner as in loop.py
                for k in range(thread, count, n_threads):
                    m, level, p = point_of(j0 + k, n_levels, n_points)
                    attn = attn_s[k]
                    g_attn = zero  # d loss / d A_mlqk
                    g_x = zero  # d loss / d (x, y), the pixel coordinates
                    g_y = zero
                    for t in range(TAPS):
                        s = tap_row[k, t]
                        if s < 0:
                            continue
                        w = tap_w[k, t]
                        dw_dx, dw_dy = tap_slopes(t, ax_s[k], ay_s[k])
                        for d in range(head_dim):
                            g = gy[n, q, m * head_dim + d]
                            v_tap = value[n, s, m, d]
                            g_attn += g * w * v_tap  # eq. (4)
                            g_x += g * attn * dw_dx * v_tap  # eq. (6)
                            g_y += g * attn * dw_dy * v_tap
                    grad_weights[n, q, m, level, p] = g_attn
                    # eq. (7): chain rule through eq. (2), dx/du = W_l, dy/dv = H_l
                    grad_locations[n, q, m, level, p, 0] = g_x * float_type(
                        level_shapes[2 * level + 1])
                    grad_locations[n, q, m, level, p, 1] = g_y * float_type(
                        level_shapes[2 * level])
                cuda.syncthreads()  # everyone is done before the chunk is restaged

    return SimpleNamespace(forward=forward_kernel, backward=backward_kernel)


# Building is cheap: @cuda.jit only compiles on a kernel's first launch.
_KERNELS = {np.dtype(t): _build_kernels(t) for t in (np.float32, np.float64)}


# ----------------------------------------------------------------------------- device side

def _per_query_grid(n_batch: int, n_queries: int) -> tuple[int, int]:
    """(blocks, threads per block): a block per query, capped (and at least one: no zero grid);
    blocks stride over the rest."""
    return max(1, min(MAX_BLOCKS, n_batch * n_queries)), THREADS_PER_BLOCK


def _levels(spatial_shapes: np.ndarray, level_start_index: np.ndarray) -> tuple[tuple, tuple]:
    """The level table as launch parameters: ``(H_0, W_0, H_1, W_1, ...)`` and the level
    starts, tuples of Python ints. They travel with the launch (numba compiles one kernel per
    number of levels), so no array is copied to the device for them."""
    return (tuple(int(v) for v in spatial_shapes.reshape(-1)),
            tuple(int(v) for v in level_start_index))


def forward(value, spatial_shapes: np.ndarray, level_start_index: np.ndarray,
            sampling_locations, attention_weights):
    """out (N, Lq, M*D) by eq. (3), from value (N, S, M, D), spatial_shapes (L, 2) and
    level_start_index (L,) (host integers), sampling_locations (N, Lq, M, L, P, 2) and
    attention_weights (N, Lq, M, L, P)."""
    return _forward(value, *_levels(spatial_shapes, level_start_index), sampling_locations,
                    attention_weights)


def backward(gy, value, spatial_shapes: np.ndarray, level_start_index: np.ndarray,
             sampling_locations, attention_weights):
    """(grad_value (N, S, M, D) by eq. (5), grad_sampling_locations (N, Lq, M, L, P, 2) by
    eqs. (6)-(7), grad_attention_weights (N, Lq, M, L, P) by eq. (4)) from gy (N, Lq, M*D)
    and the forward's inputs."""
    return _backward(gy, value, *_levels(spatial_shapes, level_start_index),
                     sampling_locations, attention_weights)


@host_or_device
def _forward(value, level_shapes: tuple, level_starts: tuple, sampling_locations,
             attention_weights):
    n_batch, _, n_heads, head_dim = value.shape
    n_queries = sampling_locations.shape[1]
    out = cuda.device_array((n_batch, n_queries, n_heads * head_dim), dtype=value.dtype)
    _KERNELS[value.dtype].forward[_per_query_grid(n_batch, n_queries)](
        value, level_shapes, level_starts, sampling_locations, attention_weights, out)
    return out


@host_or_device
def _backward(gy, value, level_shapes: tuple, level_starts: tuple, sampling_locations,
              attention_weights):
    n_batch, n_queries = sampling_locations.shape[:2]
    grad_value = zeros(value.shape, value.dtype)  # the atomic scatter adds into it
    grad_locations = cuda.device_array(sampling_locations.shape, dtype=value.dtype)
    grad_weights = cuda.device_array(attention_weights.shape, dtype=value.dtype)
    _KERNELS[value.dtype].backward[_per_query_grid(n_batch, n_queries)](
        gy, value, level_shapes, level_starts, sampling_locations, attention_weights,
        grad_value, grad_locations, grad_weights)
    return grad_value, grad_locations, grad_weights
