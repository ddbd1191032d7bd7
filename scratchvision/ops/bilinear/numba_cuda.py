"""CUDA tier of bilinear sampling and resizing: ``numba.cuda`` kernels and the device functions
that launch them.

**Device arrays in, device arrays out.** Every public function here runs on device arrays and
returns device arrays; :func:`~scratchvision.ops.cuda_common.host_or_device` lets the same
function take NumPy arrays (copied in, results copied back). Nothing inside an op goes through
the host: the resize tables and the binning of the points for the image gradient are built on
the device too. The ``*_on_device`` functions are the same computations without that door, for
``deform_conv2d``'s cuda tier, which samples its columns and sends their gradients back through
them. Equation numbers refer to ``docs/derivations/bilinear.md`` and the names mirror
``loop.py``.

What changes relative to ``loop.py``, and why:

* **Thread mapping.** ``sample`` and the point gradient run one thread per point ``(n, p)``:
  the thread computes the point's cell and weights once (eqs. 1-3) and then loops over the
  channels, so the coordinates are never reloaded per channel, and neighbouring threads write
  neighbouring ``p`` of every channel row of ``out`` (coalesced). This is the mapping of
  torch's ``grid_sample`` kernel (a thread per output location, looping over channels).
  ``resize`` runs one thread per output element, ``resize_backward`` one per input element,
  the image gradient one per image element ``(n, c, row, col)``. Every kernel walks a flat 1-D
  index with a grid-stride loop, so any problem size fits any grid; index arithmetic is int64.
* **Gather, not scatter, for the gradients of the image.** ``loop.py`` scatters each point's
  gradient into its four taps (eq. 5); on a GPU that is a race. torch's ``grid_sample``
  backward resolves it with float atomics, whose additions land in thread-timing order (the
  last bits of the result vary from run to run). Here the points are first *binned* by the
  cell ``(floor(y), floor(x))`` they fall in -- on the device, with the deterministic counting
  sort :func:`~scratchvision.ops.cuda_common.bin_by_key` (integer atomics to count and place,
  then a stabilising pass: each cell lists its points in increasing ``p``) -- and one thread
  per image element ``(n, c, row, col)`` then gathers from the four cells whose points can
  touch its pixel, in that fixed order, summing in a register and writing once. No float
  atomics, so repeated runs are bit-identical. What it costs against an atomic scatter: the
  binning (about ten small launches and a few passes over the points) and, in the gather, a
  point's coordinates and weights recomputed per channel, and ``gy`` read by point index
  (scattered) instead of in order. ``resize_backward`` gathers the same way over ``A^T``
  (eq. 12): the tap tables of the forward, binned by the input index they read.
* **Tables on the device.** The resize tables (``resize_tables.axis_taps``'s contract) are
  computed by a kernel with one thread per output index, calling ``loop.py``'s own
  ``linear_taps`` / ``nearest_index`` compiled as device functions. The GPU may fuse eq. (8)'s
  product and subtraction into one multiply-add, which moves a source coordinate by at most an
  ulp: results differ from the CPU tiers' tables by rounding only.
* **Typed constants.** numba types a bare ``0``/``1``/``1.0`` as int64/float64 and would
  promote float32 arithmetic that touches it to float64, so the kernels are built once per
  float type (:func:`_build_kernels`) with ``zero``/``one`` of that type.

Precision: float64 inputs are computed in float64, float32 inputs entirely in float32
(weights, products and sums; only the exact range test ``x < W`` compares in float64); the
resize weights are computed in float64 and cast to the data type, as ``loop.py``'s float32
arithmetic does. Results agree with ``loop.py`` to rounding: the point-gradient and gather
sums add the same terms in a different order.

The kernels are compiled lazily, on their first launch for a given argument type, and cached
by numba for the life of the process. With ``NUMBA_ENABLE_CUDASIM=1`` (set before numba is
imported) the same code runs in numba's CUDA simulator, one Python thread per CUDA thread:
correct but slow, so use it on tiny shapes only.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
from numba import cuda

from ..cuda_common import bin_by_key, host_or_device, launch
from ..recompile import with_globals
from . import cell, loop

#: eqs. (1)-(2), the one step every tier shares (see :mod:`.cell`), as a device function;
#: ``floor`` is the GPU's ``math.floor``, which keeps the float type
cell_and_weights = cuda.jit(device=True)(with_globals(cell.cell_and_weights, floor=math.floor))
#: eqs. (8)-(10): loop.py's tap functions of one output index, as device functions
linear_taps = cuda.jit(device=True)(with_globals(
    loop.linear_taps, source_coordinate=cuda.jit(device=True)(loop.source_coordinate)))
nearest_index = cuda.jit(device=True)(loop.nearest_index)

# ----------------------------------------------------------------------------- kernels

def _build_kernels(float_type) -> SimpleNamespace:
    """Compile-on-first-use kernels whose arithmetic stays in ``float_type``."""
    zero = float_type(0.0)
    one = float_type(1.0)

    @cuda.jit(device=True)
    def in_reach(x, y, height, width):
        """True when at least one tap of ``(x, y)`` can lie inside the image.

        The taps span ``[floor(x), floor(x) + 1]``, so some tap is a column in ``[0, W)`` iff
        ``-1 <= x < W`` (likewise for rows). NaN fails every comparison and +-inf fails the
        range, so this test also drops the non-finite points before anything reaches
        ``floor``/``int`` (loop.py's ``isfinite`` check), as well as finite points too large to
        convert to an index.
        """
        return -1.0 <= x < width and -1.0 <= y < height

    @cuda.jit
    def sample_kernel(image, points, out):
        """out (N, C, P) = eq. (4); one thread per point ``(n, p)``, looping over channels."""
        n_batch, channels, height, width = image.shape
        n_points = points.shape[1]
        # --8<-- [start:sample_kernel]
        for q in range(cuda.grid(1), n_batch * n_points, cuda.gridsize(1)):
            n = q // n_points
            p = q - n * n_points
            x = points[n, p, 0]
            y = points[n, p, 1]
            if not in_reach(x, y, height, width):
                for c in range(channels):
                    out[n, c, p] = zero
                continue
            # eqs. (1)-(2): the cell and the four weights
            x0, y0, ax, ay, w00, w01, w10, w11 = cell_and_weights(x, y, one)
            x1 = x0 + 1
            y1 = y0 + 1
            for c in range(channels):
                acc = zero  # eq. (4), the taps added in loop.py's order
                # eq. (3): in reach, x0 < W and x1 >= 0 hold, so only x0 >= 0 and x1 < W
                # (and likewise for rows) remain to be checked per tap
                if y0 >= 0 and x0 >= 0:
                    acc += w00 * image[n, c, y0, x0]
                if y0 >= 0 and x1 < width:
                    acc += w01 * image[n, c, y0, x1]
                if y1 < height and x0 >= 0:
                    acc += w10 * image[n, c, y1, x0]
                if y1 < height and x1 < width:
                    acc += w11 * image[n, c, y1, x1]
                out[n, c, p] = acc
        # --8<-- [end:sample_kernel]

    @cuda.jit
    def grad_points_kernel(gy, image, points, grad_points):
        """grad_points (N, P, 2) by eqs. (6) and (7); one thread per point, looping over
        channels. Each tap's value is read once for both coordinates."""
        n_batch, channels, height, width = image.shape
        n_points = points.shape[1]
        for q in range(cuda.grid(1), n_batch * n_points, cuda.gridsize(1)):
            n = q // n_points
            p = q - n * n_points
            x = points[n, p, 0]
            y = points[n, p, 1]
            grad_x = zero
            grad_y = zero
            if in_reach(x, y, height, width):
                x0, y0, ax, ay, _, _, _, _ = cell_and_weights(x, y, one)
                x1 = x0 + 1
                y1 = y0 + 1
                for c in range(channels):
                    g = gy[n, c, p]
                    # eq. (2)'s derivative columns (dw/dx, dw/dy), tap by tap, for the taps
                    # inside the image (eq. 3, as in sample_kernel)
                    if y0 >= 0 and x0 >= 0:
                        v = image[n, c, y0, x0]
                        grad_x += g * -(one - ay) * v
                        grad_y += g * -(one - ax) * v
                    if y0 >= 0 and x1 < width:
                        v = image[n, c, y0, x1]
                        grad_x += g * (one - ay) * v
                        grad_y += g * -ax * v
                    if y1 < height and x0 >= 0:
                        v = image[n, c, y1, x0]
                        grad_x += g * -ay * v
                        grad_y += g * (one - ax) * v
                    if y1 < height and x1 < width:
                        v = image[n, c, y1, x1]
                        grad_x += g * ay * v
                        grad_y += g * ax * v
            grad_points[n, p, 0] = grad_x  # eq. (6)
            grad_points[n, p, 1] = grad_y  # eq. (7)

    @cuda.jit
    def cell_keys_kernel(points, height, width, keys):
        """keys (N*P,) int64: the cell of point ``(n, p)`` as a bin of :func:`bin_by_key`,
        ``(n * (H + 1) + y0 + 1) * (W + 1) + x0 + 1`` for the cell ``(y0, x0)`` in
        ``[-1, H - 1] x [-1, W - 1]``, or -1 for a point with no tap in the image (non-finite
        ones included). One thread per point."""
        n_batch, n_points = points.shape[:2]
        for q in range(cuda.grid(1), n_batch * n_points, cuda.gridsize(1)):
            n = q // n_points
            p = q - n * n_points
            x = points[n, p, 0]
            y = points[n, p, 1]
            if in_reach(x, y, height, width):
                x0, y0, _, _, _, _, _, _ = cell_and_weights(x, y, one)  # eq. (1)
                keys[q] = (n * (height + 1) + y0 + 1) * (width + 1) + x0 + 1
            else:
                keys[q] = -1

    @cuda.jit
    def grad_image_kernel(gy, points, cell_start, cell_points, grad_image):
        """grad_image (N, C, H, W) by eq. (5), gathered: one thread per element
        ``(n, c, row, col)``, summing in a register and writing once.

        Pixel ``(row, col)`` is a tap of exactly the points whose cell ``(y0, x0)`` has
        ``y0 in {row - 1, row}`` and ``x0 in {col - 1, col}``. Cell ``(y0, x0)`` of image ``n``
        lists its points, as flat indices ``n * P + p``, in
        ``cell_points[cell_start[k]:cell_start[k + 1]]`` with
        ``k = (n * (H + 1) + y0 + 1) * (W + 1) + x0 + 1`` (see ``cell_keys_kernel``).
        """
        n_batch, channels, height, width = grad_image.shape
        n_points = points.shape[1]
        pixels = height * width
        # --8<-- [start:grad_image_kernel]
        for q in range(cuda.grid(1), n_batch * channels * pixels, cuda.gridsize(1)):
            nc = q // pixels
            n = nc // channels
            c = nc - n * channels
            row = (q - nc * pixels) // width
            col = q - nc * pixels - row * width
            acc = zero
            for y0 in range(row - 1, row + 1):
                for x0 in range(col - 1, col + 1):
                    bin_ = (n * (height + 1) + y0 + 1) * (width + 1) + x0 + 1
                    for k in range(cell_start[bin_], cell_start[bin_ + 1]):
                        p = cell_points[k] - n * n_points
                        x = points[n, p, 0]
                        y = points[n, p, 1]
                        # eqs. (1)-(2); this pixel is one of the point's four taps
                        _, _, _, _, w00, w01, w10, w11 = cell_and_weights(x, y, one)
                        if row == y0:
                            w = w00 if col == x0 else w01
                        else:
                            w = w10 if col == x0 else w11
                        acc += w * gy[n, c, p]  # eq. (5)
            grad_image[n, c, row, col] = acc
        # --8<-- [end:grad_image_kernel]

    @cuda.jit
    def axis_taps_kernel(in_size, align_corners, nearest, index, weight):
        """One axis of the resize tables, ``resize_tables.axis_taps``'s contract: ``index``
        (out, 2) int64 and ``weight`` (out, 2) for every output index ``o``, by loop.py's
        ``linear_taps`` (eqs. 8-9) or ``nearest_index`` (eq. 10); one thread per ``o``."""
        out_size = index.shape[0]
        for o in range(cuda.grid(1), out_size, cuda.gridsize(1)):
            if nearest:
                i0 = nearest_index(o, in_size, out_size)
                index[o, 0] = i0
                index[o, 1] = i0
                weight[o, 0] = one
                weight[o, 1] = zero
            else:
                i0, i1, l0, l1 = linear_taps(o, in_size, out_size, align_corners)
                index[o, 0] = i0
                index[o, 1] = i1
                weight[o, 0] = float_type(l0)  # computed in float64, rounded once
                weight[o, 1] = float_type(l1)

    @cuda.jit
    def resize_kernel(x, y_index, y_weight, x_index, x_weight, nearest, out):
        """out (N, C, Ho, Wo) from x (N, C, H, W): one thread per output element.

        ``*_index`` (out, 2) int64 and ``*_weight`` (out, 2) are ``axis_taps`` per axis.
        """
        n_batch, channels, out_h, out_w = out.shape
        for q in range(cuda.grid(1), n_batch * channels * out_h * out_w, cuda.gridsize(1)):
            ox = q % out_w
            rest = q // out_w
            oy = rest % out_h
            rest = rest // out_h
            c = rest % channels
            n = rest // channels
            y0 = y_index[oy, 0]
            x0 = x_index[ox, 0]
            if nearest:
                out[n, c, oy, ox] = x[n, c, y0, x0]  # eq. (10): a copy, no arithmetic
                continue
            y1 = y_index[oy, 1]
            x1 = x_index[ox, 1]
            ly0 = y_weight[oy, 0]
            ly1 = y_weight[oy, 1]
            lx0 = x_weight[ox, 0]
            lx1 = x_weight[ox, 1]
            # eq. (11): along x in rows y0 and y1, then along y, in loop.py's order
            out[n, c, oy, ox] = (ly0 * (lx0 * x[n, c, y0, x0] + lx1 * x[n, c, y0, x1])
                                 + ly1 * (lx0 * x[n, c, y1, x0] + lx1 * x[n, c, y1, x1]))

    @cuda.jit
    def resize_backward_kernel(gy, y_start, y_entries, y_weight, x_start, x_entries,
                               x_weight, nearest, grad):
        """grad (N, C, H, W) from gy (N, C, Ho, Wo) by eq. (12), gathered: one thread per input
        element sums over the rows of ``A^T`` of its row and column.

        Per axis, input index ``i`` is read by the table entries ``e = 2 * o + t`` listed in
        ``entries[start[i]:start[i + 1]]`` (increasing ``e``, so increasing output ``o``:
        ``resize_tables.adjoint_taps``'s order), each with weight ``weight.flat[e]``.
        """
        n_batch, channels, height, width = grad.shape
        for q in range(cuda.grid(1), n_batch * channels * height * width, cuda.gridsize(1)):
            ix = q % width
            rest = q // width
            iy = rest % height
            rest = rest // height
            c = rest % channels
            n = rest // channels
            acc = zero
            for ky in range(y_start[iy], y_start[iy + 1]):
                ey = y_entries[ky]
                oy = ey // 2
                ly = y_weight[oy, ey - 2 * oy]
                for kx in range(x_start[ix], x_start[ix + 1]):
                    ex = x_entries[kx]
                    ox = ex // 2
                    w = ly * x_weight[ox, ex - 2 * ox]
                    # NOTE: nearest's tables carry an unused second tap of weight 0; loop.py
                    # never adds it, which matters only for a non-finite gy (0 * inf = nan).
                    if nearest and w == zero:
                        continue
                    acc += w * gy[n, c, oy, ox]
            grad[n, c, iy, ix] = acc

    return SimpleNamespace(sample=sample_kernel, grad_points=grad_points_kernel,
                           cell_keys=cell_keys_kernel, grad_image=grad_image_kernel,
                           axis_taps=axis_taps_kernel, resize=resize_kernel,
                           resize_backward=resize_backward_kernel)


# Building is cheap: @cuda.jit only compiles on a kernel's first launch.
_KERNELS = {np.dtype(t): _build_kernels(t) for t in (np.float32, np.float64)}


# ----------------------------------------------------------------------------- device side

def _axis_taps(in_size: int, out_size: int, align_corners: bool, mode: str, dtype):
    """``axis_taps`` of one axis on the device: index (out, 2) int64, weight (out, 2) dtype."""
    index = cuda.device_array((out_size, 2), dtype=np.int64)
    weight = cuda.device_array((out_size, 2), dtype=dtype)
    launch(_KERNELS[np.dtype(dtype)].axis_taps, out_size, in_size, align_corners,
           mode == "nearest", index, weight)
    return index, weight


def _adjoint(index, in_size: int):
    """The rows of ``A^T`` of one axis: its table entries ``e = 2 * o + t`` binned by the input
    index ``index.flat[e]`` they read (``resize_tables.adjoint_taps`` on the device)."""
    return bin_by_key(index.reshape(index.size), in_size)


def sample_on_device(image, points):
    """out (N, C, P) device array from device arrays image (N, C, H, W) and points (N, P, 2):
    eq. (4). ``deform_conv2d``'s cuda tier samples its columns with this."""
    n_batch, channels = image.shape[:2]
    n_points = points.shape[1]
    out = cuda.device_array((n_batch, channels, n_points), dtype=image.dtype)
    launch(_KERNELS[image.dtype].sample, n_batch * n_points, image, points, out)
    return out


def sample_backward_on_device(gy, image, points):
    """grad_image (N, C, H, W) by eq. (5) and grad_points (N, P, 2) by eqs. (6)-(7), as
    device arrays, from device arrays gy (N, C, P), image (N, C, H, W) and points (N, P, 2).

    The points are binned by cell on the device (``cell_keys_kernel``, then
    :func:`~scratchvision.ops.cuda_common.bin_by_key`) for the deterministic gather of
    ``grad_image``.
    """
    n_batch, channels, height, width = image.shape
    n_points = points.shape[1]
    kernels = _KERNELS[image.dtype]
    keys = cuda.device_array(n_batch * n_points, dtype=np.int64)
    launch(kernels.cell_keys, n_batch * n_points, points, height, width, keys)
    cell_start, cell_points = bin_by_key(keys, n_batch * (height + 1) * (width + 1))
    grad_image = cuda.device_array(image.shape, dtype=image.dtype)
    grad_points = cuda.device_array(points.shape, dtype=points.dtype)
    launch(kernels.grad_image, grad_image.size, gy, points, cell_start, cell_points,
           grad_image)
    launch(kernels.grad_points, n_batch * n_points, gy, image, points, grad_points)
    return grad_image, grad_points


# ----------------------------------------------------------------------------- the tier

@host_or_device
def sample(image, points):
    """out (N, C, P) from image (N, C, H, W) and points (N, P, 2): eq. (4)."""
    return sample_on_device(image, points)


@host_or_device
def sample_backward(gy, image, points):
    """grad_image (N, C, H, W) by eq. (5) and grad_points (N, P, 2) by eqs. (6)-(7), from
    gy (N, C, P), image (N, C, H, W) and points (N, P, 2)."""
    return sample_backward_on_device(gy, image, points)


@host_or_device
def resize(x, out_h: int, out_w: int, align_corners: bool, mode: str):
    """out (N, C, Ho, Wo) from x (N, C, H, W): eq. (11) for bilinear, eq. (10) for nearest."""
    n_batch, channels, height, width = x.shape
    y_index, y_weight = _axis_taps(height, out_h, align_corners, mode, x.dtype)
    x_index, x_weight = _axis_taps(width, out_w, align_corners, mode, x.dtype)
    out = cuda.device_array((n_batch, channels, out_h, out_w), dtype=x.dtype)
    launch(_KERNELS[x.dtype].resize, out.size, x, y_index, y_weight, x_index, x_weight,
           mode == "nearest", out)
    return out


@host_or_device
def resize_backward(gy, height: int, width: int, align_corners: bool, mode: str):
    """grad_input (N, C, H, W) from gy (N, C, Ho, Wo): eq. (12) as a gather over ``A^T``."""
    n_batch, channels, out_h, out_w = gy.shape
    y_index, y_weight = _axis_taps(height, out_h, align_corners, mode, gy.dtype)
    x_index, x_weight = _axis_taps(width, out_w, align_corners, mode, gy.dtype)
    y_start, y_entries = _adjoint(y_index, height)
    x_start, x_entries = _adjoint(x_index, width)
    grad = cuda.device_array((n_batch, channels, height, width), dtype=gy.dtype)
    launch(_KERNELS[gy.dtype].resize_backward, grad.size, gy, y_start, y_entries, y_weight,
           x_start, x_entries, x_weight, mode == "nearest", grad)
    return grad
