"""CUDA building blocks shared by the ``numba_cuda`` tiers: the door between host and device,
the launch helper, device zeros, a deterministic counting sort by key, a tiled shared-memory
matrix product, and the "matrix half" of a convolution.

**Device arrays in, device arrays out.** Every tier function is written once, for device
arrays. :func:`host_or_device` wraps it: called with device arrays (numba's, or CuPy / torch
CUDA memory wrapped by ``scratchvision._checks``) it runs on them and returns device arrays,
touching the host never; called with NumPy arrays it copies them to the device, runs, and
copies every result back. That wrapper is the only place where the cuda tier copies between
host and device, and :data:`COPIES` counts the bytes it moves (``scratchvision bench
--device-resident`` reports them).

**Binning on the device.** A gather that replaces a scatter needs the scattered items grouped
by their target: bilinear's image gradient groups the points by the cell they fall in, the
resize backward groups the taps by the input index they read. :func:`bin_by_key` does it on
the GPU with a counting sort -- count per key (integer atomics), an exclusive scan of the
counts (the CSR offsets), a placement (integer atomics claim the slots of a bin in whatever
order the threads arrive), then a stabilising pass that puts every bin back into increasing
item order. The result is exactly the CSR a stable ``numpy.argsort`` gives on the host, on
every run: the atomics are on integers and only decide *where* an item lands first, so the
float sums of the gather that follows are bit-reproducible.

Both convolutions (``conv2d`` and ``deform_conv2d``) run on the GPU in two steps:

1. **Columns.** Gather the input into ``columns`` (N, C*K, L), ``K = kh*kw`` kernel taps and
   ``L = Ho*Wo`` output pixels: row ``c*K + k`` holds what tap ``k`` of channel ``c`` reads at
   every output pixel. ``conv2d`` copies pixels (im2col); ``deform_conv2d`` samples them
   bilinearly at the offset points (and multiplies by the mask).
2. **Matrix products**, one per image ``n`` and group ``g``, with ``R = C/groups * K`` rows
   of columns and ``Og = O/groups`` output channels per group::

       y[n, g]         (Og, L) = W[g] (Og, R)  @ columns[n, g] (R, L)      (+ bias)
       grad_columns[n, g] (R, L) = W[g]^T (R, Og) @ gy[n, g] (Og, L)
       grad_W[g]       (Og, R) = sum_n gy[n, g] (Og, L) @ columns[n, g]^T (L, R)
       grad_bias[o]            = sum_n sum_l gy[n, o, l]

   Step 2 is the same for both ops and lives here (:func:`conv_from_columns`,
   :func:`grad_columns`, :func:`grad_weight_and_bias`); each op then turns ``grad_columns``
   back into the gradient of its input (and offsets and mask) in its own way.

Every float kernel here writes each output element from exactly one thread, adding its terms
in a fixed order: no float atomics, so repeated runs are bit-identical.

Precision: kernels are built once per float type (:func:`_build_kernels`) with typed constants
and shared-memory tiles of that type, so float32 is computed (and accumulated) in float32 and
float64 in float64. Index arithmetic is int64.

All functions below take and return numba device arrays; :func:`host_or_device` does the
copies to and from the device. Every launch copes with zero-sized work (an empty batch gets
empty or zero-filled device results, never a launch with a zero grid).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
from numba import config as numba_config
from numba import cuda

# Launch shapes. A real GPU wants enough threads in flight to hide memory latency; flat grids
# are capped because every flat kernel strides over its range anyway. The simulator runs one
# Python thread per CUDA thread and pays tens of milliseconds per ``syncthreads``, so there
# blocks are small and each block does more of the work.
if numba_config.ENABLE_CUDASIM:
    THREADS_PER_BLOCK, MAX_BLOCKS = 16, 4
    BLOCK_SIDE, MICRO, CHUNK = 4, 8, 64
else:
    THREADS_PER_BLOCK, MAX_BLOCKS = 128, 65536
    BLOCK_SIDE, MICRO, CHUNK = 16, 4, 16
# The matrix product runs blocks of BLOCK_SIDE x BLOCK_SIDE threads; each thread computes a
# MICRO x MICRO piece of the block's TILE x TILE tile of the output, and the block walks the
# summed dimension CHUNK entries at a time. (16, 4, 16) is the classic 64 x 64 tile with 4 x 4
# outputs per thread: each entry staged in shared memory is used 64 times.
TILE = BLOCK_SIDE * MICRO
# Shared-memory tiles get one extra column so that stores down a column hit different memory
# banks. (Shapes of shared and local arrays must be compile-time constants: module globals.)
_TILE_PADDED, _CHUNK_PADDED = TILE + 1, CHUNK + 1

# BLOCK_SIDE must be a power of two for the tree in ``channel_sum_kernel``.
assert BLOCK_SIDE & (BLOCK_SIDE - 1) == 0

#: the largest grid extent along y and z that every CUDA device accepts
_MAX_GRID_YZ = 65535


def launch(kernel, n_items: int, *args) -> None:
    """Run ``kernel(*args)`` on a 1-D grid with enough threads to cover ``n_items`` flat work
    items (the kernel walks them with a grid-stride loop)."""
    blocks = min(MAX_BLOCKS, max(1, -(-n_items // THREADS_PER_BLOCK)))
    kernel[blocks, THREADS_PER_BLOCK](*args)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# ----------------------------------------------------------------------------- kernels

def _build_kernels(float_type) -> SimpleNamespace:
    """Compile-on-first-use kernels whose arithmetic stays in ``float_type``."""
    zero = float_type(0.0)

    @cuda.jit
    def matmul_kernel(a, b, c, a_transposed, b_transposed):
        """``c[nc, g] = sum_n op(a[n, g]) @ op(b[n, g])`` for every batch ``nc`` and group ``g``.

        c: (Bc, G, M, P). a: (Ba, G, M, D), or (Ba, G, D, M) with ``a_transposed``.
        b: (Bb, G, D, P), or (Bb, G, P, D) with ``b_transposed``. ``op`` is the transpose
        when the flag is set.

        Batches: an operand with batch extent 1 is shared by every batch (the weights). When
        ``c`` has batch extent 1 but an operand has more, the sum runs over all of them
        (``grad_W`` sums over the images); otherwise it is the single ``n = nc``.

        One block computes one TILE x TILE tile of ``c[nc, g]``; thread ``(ty, tx)`` owns the
        MICRO x MICRO entries at rows ``ty + u * BLOCK_SIDE`` and columns
        ``tx + v * BLOCK_SIDE`` of the tile (strided, so that neighbouring threads read
        neighbouring shared entries and write neighbouring addresses). The summed dimension is
        walked CHUNK entries at a time: the block stages the chunk of both operands in shared
        memory (neighbouring threads reading neighbouring global addresses in either layout),
        waits, and every thread then multiplies from there, so each global entry is read once
        per tile instead of once per product. Each output adds its products in increasing
        ``(n, d)``, whatever the tiling: the result does not depend on the launch shape.
        The tiles' extra column keeps the column-wise stores of the transposed layouts free of
        shared-memory bank conflicts.
        """
        a_tile = cuda.shared.array((TILE, _CHUNK_PADDED), float_type)  # a_tile[m, d]
        b_tile = cuda.shared.array((CHUNK, _TILE_PADDED), float_type)  # b_tile[d, p]
        acc = cuda.local.array((MICRO, MICRO), float_type)
        a_reg = cuda.local.array(MICRO, float_type)
        b_reg = cuda.local.array(MICRO, float_type)
        tx = np.int64(cuda.threadIdx.x)
        ty = np.int64(cuda.threadIdx.y)
        thread = ty * BLOCK_SIDE + tx
        c_batches, groups, rows, cols = c.shape
        depth = a.shape[2] if a_transposed else a.shape[3]
        n_sum = max(a.shape[0], b.shape[0]) if c_batches == 1 else 1
        col0 = np.int64(cuda.blockIdx.x) * TILE
        # The y and z grid extents are capped at 65535 by the hardware: blocks stride over
        # the row tiles and the (batch, group) pairs. Every thread of a block takes the same
        # trips through all loops that contain a syncthreads, so all of them reach it.
        row_tiles = (rows + TILE - 1) // TILE
        for row_tile in range(np.int64(cuda.blockIdx.y), row_tiles, np.int64(cuda.gridDim.y)):
            row0 = row_tile * TILE
            for pair in range(np.int64(cuda.blockIdx.z), c_batches * groups,
                              np.int64(cuda.gridDim.z)):
                nc = pair // groups
                g = pair - nc * groups
                for u in range(MICRO):
                    for v in range(MICRO):
                        acc[u, v] = zero
                for s in range(n_sum):
                    n = nc + s  # nc == 0 when summing over the batch
                    na = n if a.shape[0] > 1 else 0
                    nb = n if b.shape[0] > 1 else 0
                    for d0 in range(0, depth, CHUNK):
                        width = min(CHUNK, depth - d0)
                        # stage a_tile[m, d] = op(a)[row0 + m, d0 + d], zero past the last row
                        for e in range(thread, TILE * width, BLOCK_SIDE * BLOCK_SIDE):
                            if a_transposed:  # a[na, g] is (D, M): m varies fastest
                                d = e // TILE
                                m = e - d * TILE
                                inside = row0 + m < rows
                                a_tile[m, d] = a[na, g, d0 + d, row0 + m] if inside else zero
                            else:  # (M, D): d varies fastest
                                m = e // width
                                d = e - m * width
                                inside = row0 + m < rows
                                a_tile[m, d] = a[na, g, row0 + m, d0 + d] if inside else zero
                        # stage b_tile[d, p] = op(b)[d0 + d, col0 + p], zero past the last column
                        for e in range(thread, TILE * width, BLOCK_SIDE * BLOCK_SIDE):
                            if b_transposed:  # b[nb, g] is (P, D): d varies fastest
                                p = e // width
                                d = e - p * width
                                inside = col0 + p < cols
                                b_tile[d, p] = b[nb, g, col0 + p, d0 + d] if inside else zero
                            else:  # (D, P): p varies fastest
                                d = e // TILE
                                p = e - d * TILE
                                inside = col0 + p < cols
                                b_tile[d, p] = b[nb, g, d0 + d, col0 + p] if inside else zero
                        cuda.syncthreads()  # the chunk is staged
                        for k in range(width):
                            for u in range(MICRO):
                                a_reg[u] = a_tile[ty + u * BLOCK_SIDE, k]
                            for v in range(MICRO):
                                b_reg[v] = b_tile[k, tx + v * BLOCK_SIDE]
                            for u in range(MICRO):
                                for v in range(MICRO):
                                    acc[u, v] += a_reg[u] * b_reg[v]
                        cuda.syncthreads()  # everyone is done before the chunk is refilled
                for u in range(MICRO):
                    row = row0 + ty + u * BLOCK_SIDE
                    for v in range(MICRO):
                        col = col0 + tx + v * BLOCK_SIDE
                        if row < rows and col < cols:
                            c[nc, g, row, col] = acc[u, v]

    @cuda.jit
    def add_bias_kernel(y, bias):
        """y (N, O, L) += bias (O,) in place; one thread per element of ``y``."""
        n_batch, channels, pixels = y.shape
        for q in range(cuda.grid(1), n_batch * channels * pixels, cuda.gridsize(1)):
            o = (q // pixels) % channels
            n = q // (pixels * channels)
            y[n, o, q - (n * channels + o) * pixels] += bias[o]

    @cuda.jit
    def channel_sum_kernel(gy, out):
        """out[o] = sum over n and l of gy (N, O, L)[n, o, l].

        A block of BLOCK_SIDE x BLOCK_SIDE threads sums BLOCK_SIDE channels, one per row ``ty``
        of threads: each thread of the row adds a strided share of the channel's ``N * L``
        entries, then the row adds its partial sums in a fixed binary tree in shared memory.
        Parallel, and deterministic: the order of the additions never changes.
        """
        partial = cuda.shared.array((BLOCK_SIDE, BLOCK_SIDE), float_type)
        tx = np.int64(cuda.threadIdx.x)
        ty = np.int64(cuda.threadIdx.y)
        n_batch, channels, pixels = gy.shape
        for o0 in range(np.int64(cuda.blockIdx.x) * BLOCK_SIDE, channels,
                        np.int64(cuda.gridDim.x) * BLOCK_SIDE):
            o = o0 + ty
            acc = zero
            if o < channels:
                for q in range(tx, n_batch * pixels, BLOCK_SIDE):
                    n = q // pixels
                    acc += gy[n, o, q - n * pixels]
            partial[ty, tx] = acc
            cuda.syncthreads()
            step = BLOCK_SIDE // 2
            while step > 0:
                if tx < step:
                    partial[ty, tx] += partial[ty, tx + step]
                cuda.syncthreads()
                step //= 2
            if tx == 0 and o < channels:
                out[o] = partial[ty, 0]
            cuda.syncthreads()  # partial is read before the next channels overwrite it

    return SimpleNamespace(matmul=matmul_kernel, add_bias=add_bias_kernel,
                           channel_sum=channel_sum_kernel)


# Building is cheap: @cuda.jit only compiles on a kernel's first launch.
_KERNELS = {np.dtype(t): _build_kernels(t) for t in (np.float32, np.float64)}


@cuda.jit
def _fill_kernel(out, value):
    """out (K,) = value everywhere; one thread per entry (any dtype: compiled per signature)."""
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[i] = value


# The counting sort of :func:`bin_by_key`. Keys and counts are int64; an item with key -1 is
# left out. All of these are integer kernels: their atomics give the same counts on every run.

@cuda.jit
def _count_kernel(keys, counts):
    """counts[k] += 1 for every item with key k >= 0 (integer atomics)."""
    for i in range(cuda.grid(1), keys.shape[0], cuda.gridsize(1)):
        k = keys[i]
        if k >= 0:
            cuda.atomic.add(counts, k, 1)


@cuda.jit
def _chunk_sums_kernel(values, chunk, sums):
    """sums[j] = values[j * chunk : (j + 1) * chunk].sum(); one thread per chunk."""
    n = values.shape[0]
    for j in range(cuda.grid(1), sums.shape[0], cuda.gridsize(1)):
        acc = 0
        for i in range(j * chunk, min(n, (j + 1) * chunk)):
            acc += values[i]
        sums[j] = acc


@cuda.jit
def _scan_sums_kernel(sums, start):
    """One thread: the chunk sums become their exclusive prefix sums, in place, and the last
    entry of ``start`` the grand total."""
    if cuda.grid(1) == 0:
        running = 0
        for j in range(sums.shape[0]):
            total = sums[j]
            sums[j] = running
            running += total
        start[start.shape[0] - 1] = running


@cuda.jit
def _chunk_scan_kernel(values, chunk, sums, start):
    """start[i] = values[:i].sum() for i < len(values): each chunk's thread continues from its
    chunk's prefix."""
    n = values.shape[0]
    for j in range(cuda.grid(1), sums.shape[0], cuda.gridsize(1)):
        running = sums[j]
        for i in range(j * chunk, min(n, (j + 1) * chunk)):
            start[i] = running
            running += values[i]


@cuda.jit
def _place_kernel(keys, start, counts, slots):
    """Every kept item claims a slot of its bin: ``counts[k]`` still holds the bin's size, and
    taking one off it atomically hands each item a distinct slot in
    ``[start[k], start[k + 1])`` (in thread-arrival order; the next pass fixes the order).
    Leaves ``counts`` at zero."""
    for i in range(cuda.grid(1), keys.shape[0], cuda.gridsize(1)):
        k = keys[i]
        if k >= 0:
            slots[start[k] + cuda.atomic.sub(counts, k, 1) - 1] = i


@cuda.jit
def _stabilise_kernel(keys, start, slots, order):
    """order[start[k] + rank] = i, ``rank`` the number of items of bin k smaller than i: every
    bin in increasing item order, whatever order the placement left (a stable sort). Each
    item reads its whole bin, so the pass costs the sum over bins of (bin size)^2."""
    for i in range(cuda.grid(1), keys.shape[0], cuda.gridsize(1)):
        k = keys[i]
        if k >= 0:
            first = start[k]
            rank = 0
            for s in range(first, start[k + 1]):
                if slots[s] < i:
                    rank += 1
            order[first + rank] = i


# ----------------------------------------------------------------------------- host side

@dataclass
class CopyLog:
    """Bytes the cuda tier has copied between host and device (all through
    :func:`host_or_device`), since the last :meth:`reset`."""

    to_device: int = 0
    to_host: int = 0

    def reset(self) -> None:
        self.to_device = self.to_host = 0


#: what the cuda tier has copied so far (``scratchvision bench --device-resident`` reads it)
COPIES = CopyLog()


def _to_device(arg):
    """A NumPy argument copied to the device; anything else (a device array, a number, a
    geometry, None) as it is."""
    if not isinstance(arg, np.ndarray):
        return arg
    COPIES.to_device += arg.nbytes
    return cuda.to_device(arg)


def _to_host(result):
    """A result (a device array, None, or a tuple of them) copied back to the host."""
    if isinstance(result, tuple):
        return tuple(_to_host(r) for r in result)
    if result is None:
        return None
    COPIES.to_host += result.nbytes
    return result.copy_to_host()


def host_or_device(function):
    """Wrap a device function (device arrays in, device arrays out) so that it also takes
    NumPy arrays.

    With no NumPy argument the call goes straight through: device arrays in, device arrays out,
    nothing copied. With NumPy arguments (the validated, C-contiguous arrays of the op's public
    function) each is copied to the device, the function runs, and every device array it
    returns (alone or in a tuple, None left as None) is copied back: NumPy in, NumPy out.
    ``scratchvision._checks.same_device`` has already ruled out a call that mixes the two.
    """
    @functools.wraps(function)
    def run(*args):
        if not any(isinstance(arg, np.ndarray) for arg in args):
            return function(*args)
        return _to_host(function(*(_to_device(arg) for arg in args)))
    return run


def zeros(shape, dtype):
    """A device array of ``shape`` and ``dtype`` filled with zeros, on the device."""
    out = cuda.device_array(shape, dtype=dtype)
    if out.size:
        flat = out.reshape(out.size)
        launch(_fill_kernel, out.size, flat, flat.dtype.type(0))
    return out


def exclusive_scan(values):
    """start (K + 1,) int64 device array, ``start[i] = values[:i].sum()``, from values (K,)
    int64.

    Square-root decomposition in three launches: sums of chunks of about sqrt(K) entries (one
    thread per chunk), a one-thread scan of those sums, then each chunk's prefix sums from its
    chunk's offset. Simple and deterministic; a one-pass decoupled look-back scan (CUB's) is
    faster on large K, which the bins here do not reach.
    """
    n = values.shape[0]
    chunk = max(1, math.isqrt(n))
    n_chunks = _ceil_div(n, chunk)
    sums = cuda.device_array(n_chunks, dtype=np.int64)
    start = cuda.device_array(n + 1, dtype=np.int64)
    launch(_chunk_sums_kernel, n_chunks, values, chunk, sums)
    _scan_sums_kernel[1, 1](sums, start)
    launch(_chunk_scan_kernel, n_chunks, values, chunk, sums, start)
    return start


def bin_by_key(keys, n_keys: int):
    """Group items by key on the device, as CSR: a stable counting sort.

    Args:
        keys: (K,) int64 device array, item i's key in ``[0, n_keys)``, or -1 to leave it out.

    Returns:
        ``start`` (n_keys + 1,) int64 and ``order`` (K,) int64 device arrays: the items with key
        k are ``order[start[k]:start[k + 1]]``, in increasing i -- the CSR of a stable
        ``numpy.argsort(keys)`` over the kept items, identical on every run. ``order`` has
        room for every item; its first ``start[n_keys]`` entries are used (the count stays on
        the device: reading it would be a copy to the host).

    Four steps (see the module docstring): count, scan, place, stabilise. Cost: a few passes
    over the K keys and the n_keys counts, plus the stabilising pass, the sum over bins of
    (bin size)^2 reads -- about 16 per point for bilinear's benchmark (250,000 points over
    16,641 cells); quadratic in the largest bin when many items share one key.
    """
    n_items = keys.shape[0]
    counts = zeros(n_keys, np.int64)
    launch(_count_kernel, n_items, keys, counts)
    start = exclusive_scan(counts)
    slots = cuda.device_array(n_items, dtype=np.int64)
    launch(_place_kernel, n_items, keys, start, counts, slots)
    order = cuda.device_array(n_items, dtype=np.int64)
    launch(_stabilise_kernel, n_items, keys, start, slots, order)
    return start, order


def matmul(a, b, c, *, a_transposed: bool = False, b_transposed: bool = False) -> None:
    """Fill ``c`` (Bc, G, M, P) with batched, grouped products of ``a`` and ``b``, in place.

    See ``matmul_kernel`` for the shapes and the batch rule (extent 1 is shared; a ``c`` of
    extent 1 sums over the operands' batch).
    """
    c_batches, groups, rows, cols = c.shape
    # at least one block per axis: an empty product launches one idle block, never a zero grid
    grid = (max(1, _ceil_div(cols, TILE)), max(1, min(_ceil_div(rows, TILE), _MAX_GRID_YZ)),
            max(1, min(c_batches * groups, _MAX_GRID_YZ)))
    _KERNELS[c.dtype].matmul[grid, (BLOCK_SIDE, BLOCK_SIDE)](a, b, c, a_transposed,
                                                           b_transposed)


def conv_from_columns(columns, weight, bias, groups: int):
    """y (N, O, L) = per group ``W[g] @ columns[n, g]``, plus ``bias`` when it is not None.

    Args:
        columns: (N, C*K, L) device array, row ``c*K + k``.
        weight: (O, C/groups, kh, kw) device array.
        bias: (O,) device array or None.
    """
    n_batch, rows, pixels = columns.shape
    out_channels = weight.shape[0]
    y = cuda.device_array((n_batch, out_channels, pixels), dtype=columns.dtype)
    # (O, C/groups, kh, kw) -> (1, groups, O/groups, R); (N, C*K, L) -> (N, groups, R, L)
    matmul(weight.reshape(1, groups, out_channels // groups, rows // groups),
           columns.reshape(n_batch, groups, rows // groups, pixels),
           y.reshape(n_batch, groups, out_channels // groups, pixels))
    if bias is not None:
        launch(_KERNELS[y.dtype].add_bias, y.size, y, bias)
    return y


def grad_columns(gy, weight, groups: int):
    """grad_columns (N, C*K, L) = per group ``W[g]^T @ gy[n, g]``.

    Args:
        gy: (N, O, L) device array, the gradient of the output.
        weight: (O, C/groups, kh, kw) device array.
    """
    n_batch, out_channels, pixels = gy.shape
    rows = weight.size // out_channels * groups  # C*K
    grad = cuda.device_array((n_batch, rows, pixels), dtype=gy.dtype)
    # (O, C/groups, kh, kw) -> (1, groups, O/groups, R), used transposed
    matmul(weight.reshape(1, groups, out_channels // groups, rows // groups),
           gy.reshape(n_batch, groups, out_channels // groups, pixels),
           grad.reshape(n_batch, groups, rows // groups, pixels), a_transposed=True)
    return grad


def grad_weight_and_bias(gy, columns, weight_shape, groups: int, has_bias: bool):
    """grad_weight (weight_shape) = per group ``sum_n gy[n, g] @ columns[n, g]^T``, and
    grad_bias (O,) = ``gy`` summed over images and pixels (None unless ``has_bias``).

    Args:
        gy: (N, O, L) device array.
        columns: (N, C*K, L) device array, the forward's columns.
        weight_shape: (O, C/groups, kh, kw).
    """
    n_batch, out_channels, pixels = gy.shape
    rows = columns.shape[1]
    grad_weight = cuda.device_array(weight_shape, dtype=gy.dtype)
    # (O, C/groups, kh, kw) -> (1, groups, O/groups, R): extent 1 sums over the N images
    matmul(gy.reshape(n_batch, groups, out_channels // groups, pixels),
           columns.reshape(n_batch, groups, rows // groups, pixels),
           grad_weight.reshape(1, groups, out_channels // groups, rows // groups),
           b_transposed=True)
    if not has_bias:
        return grad_weight, None
    grad_bias = cuda.device_array(out_channels, dtype=gy.dtype)
    blocks = max(1, min(_ceil_div(out_channels, BLOCK_SIDE), MAX_BLOCKS))
    _KERNELS[gy.dtype].channel_sum[blocks, (BLOCK_SIDE, BLOCK_SIDE)](gy, grad_bias)
    return grad_weight, grad_bias
