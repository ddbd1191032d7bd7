"""CUDA tier of bilinear sampling and resizing: ``numba.cuda`` kernels and their host wrappers.

Each public function copies its numpy inputs to the device, launches one or two kernels and
copies the result back, so it takes and returns numpy arrays like the other tiers. The
``*_on_device`` variants of sampling take and return device arrays instead: ``deform_conv2d``'s
cuda tier samples its columns and scatters their gradients through them. The launch helper is
``scratchvision.ops.cuda_common.launch``. Equation numbers refer to
``docs/derivations/bilinear.md`` and the names mirror ``loop.py``.

What changes relative to ``loop.py``, and why:

* **Thread mapping.** ``sample`` and the point gradient run one thread per point ``(n, p)``:
  the thread computes the point's cell and weights once (eqs. 1-3) and then loops over the
  channels, so the coordinates are never reloaded per channel. ``resize`` runs one thread per
  output element, ``resize_backward`` one per input element. Every kernel walks a flat 1-D
  index with a grid-stride loop, so any problem size fits any grid; all index arithmetic is
  int64.
* **Gather, not scatter, for the gradients of the image.** ``loop.py`` scatters each point's
  gradient into its four taps (eq. 5); on a GPU that is a race, and atomics would make the
  float sums depend on thread timing. Instead the host bins the points by the cell
  ``(floor(y), floor(x))`` they fall in (a stable ``numpy.argsort`` on the host, then CSR
  offsets per cell), and one thread per pixel ``(n, row, col)`` gathers from the four cells
  whose points can touch it, in that fixed order. ``resize_backward`` gathers the same way
  over the CSR rows of ``resize_tables.adjoint_taps`` (eq. 12). No atomics anywhere, so
  repeated runs are bit-identical.
* **Typed constants.** numba types a bare ``0``/``1``/``1.0`` as int64/float64 and would
  promote float32 arithmetic that touches it to float64, so the kernels are built once per
  float type (:func:`_build_kernels`) with ``zero``/``one`` of that type.

Precision: float64 inputs are computed in float64, float32 inputs entirely in float32
(weights, products and sums; only the exact range test ``x < W`` compares in float64); the
resize tables are cast to the data type, as ``loop.py``'s float32 arithmetic does. Results
agree with ``loop.py`` to rounding: the point-gradient and gather sums add the same terms in a
different order.

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

from ..cuda_common import launch
from ..recompile import with_globals
from . import cell
from .resize_tables import adjoint_taps, axis_taps

#: eqs. (1)-(2), the one step every tier shares (see :mod:`.cell`), as a device function;
#: ``floor`` is the GPU's ``math.floor``, which keeps the float type
cell_and_weights = cuda.jit(device=True)(with_globals(cell.cell_and_weights, floor=math.floor))

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
    def grad_image_kernel(gy, points, cell_start, cell_points, grad_image):
        """grad_image (N, C, H, W) by eq. (5), gathered: one thread per pixel ``(n, row, col)``.

        Pixel ``(row, col)`` is a tap of exactly the points whose cell ``(y0, x0)`` has
        ``y0 in {row - 1, row}`` and ``x0 in {col - 1, col}``. Cell ``(y0, x0)`` of image ``n``
        lists its points in ``cell_points[cell_start[k]:cell_start[k + 1]]`` with
        ``k = (n * (H + 1) + y0 + 1) * (W + 1) + x0 + 1`` (see :func:`_bin_points_by_cell`).
        """
        n_batch, channels, height, width = grad_image.shape
        pixels = height * width
        for q in range(cuda.grid(1), n_batch * pixels, cuda.gridsize(1)):
            n = q // pixels
            row = (q - n * pixels) // width
            col = q - n * pixels - row * width
            for c in range(channels):
                grad_image[n, c, row, col] = zero
            for y0 in range(row - 1, row + 1):
                for x0 in range(col - 1, col + 1):
                    cell = (n * (height + 1) + y0 + 1) * (width + 1) + x0 + 1
                    for k in range(cell_start[cell], cell_start[cell + 1]):
                        p = cell_points[k]
                        x = points[n, p, 0]
                        y = points[n, p, 1]
                        # eqs. (1)-(2); this pixel is one of the point's four taps
                        _, _, _, _, w00, w01, w10, w11 = cell_and_weights(x, y, one)
                        if row == y0:
                            w = w00 if col == x0 else w01
                        else:
                            w = w10 if col == x0 else w11
                        for c in range(channels):
                            grad_image[n, c, row, col] += w * gy[n, c, p]  # eq. (5)

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
    def resize_backward_kernel(gy, y_indptr, y_out, y_weight, x_indptr, x_out, x_weight,
                               nearest, grad):
        """grad (N, C, H, W) from gy (N, C, Ho, Wo) by eq. (12), gathered: one thread per
        input element sums over the CSR rows (``adjoint_taps``) of its row and column."""
        n_batch, channels, height, width = grad.shape
        for q in range(cuda.grid(1), n_batch * channels * height * width, cuda.gridsize(1)):
            ix = q % width
            rest = q // width
            iy = rest % height
            rest = rest // height
            c = rest % channels
            n = rest // channels
            acc = zero
            for ky in range(y_indptr[iy], y_indptr[iy + 1]):
                oy = y_out[ky]
                ly = y_weight[ky]
                for kx in range(x_indptr[ix], x_indptr[ix + 1]):
                    w = ly * x_weight[kx]
                    # NOTE: nearest's tables carry an unused second tap of weight 0; loop.py
                    # never adds it, which matters only for a non-finite gy (0 * inf = nan).
                    if nearest and w == zero:
                        continue
                    acc += w * gy[n, c, oy, x_out[kx]]
            grad[n, c, iy, ix] = acc

    return SimpleNamespace(sample=sample_kernel, grad_points=grad_points_kernel,
                           grad_image=grad_image_kernel, resize=resize_kernel,
                           resize_backward=resize_backward_kernel)


# Building is cheap: @cuda.jit only compiles on a kernel's first launch.
_KERNELS = {np.dtype(t): _build_kernels(t) for t in (np.float32, np.float64)}


# ----------------------------------------------------------------------------- host side

def _bin_points_by_cell(points: np.ndarray, height: int, width: int):
    """Sort the points by the cell they fall in, for the gather in ``grad_image_kernel``.

    Args:
        points: (N, P, 2) pixel ``(x, y)``.

    Returns:
        ``cell_start`` (N * (H + 1) * (W + 1) + 1,) int64 CSR offsets and ``cell_points``
        (K,) int64 point indices ``p``. Cell ``(y0, x0)`` with ``y0 in [-1, H - 1]``,
        ``x0 in [-1, W - 1]`` of image ``n`` is entry ``(n * (H + 1) + y0 + 1) * (W + 1) +
        x0 + 1``. Points with no tap in the image (including non-finite ones) are left out.
        The sort is numpy's stable argsort on the host, so each cell lists its points in
        increasing ``p`` and the gather adds them in the same order on every run.
    """
    n_batch = points.shape[0]
    x = points[:, :, 0]  # (N, P)
    y = points[:, :, 1]
    # the in_reach test of the kernels; NaN fails every comparison
    reach = (x >= -1) & (x < width) & (y >= -1) & (y < height)
    n_index, p_index = np.nonzero(reach)  # (K,) each, in (n, p) order
    x0 = np.floor(x[reach]).astype(np.int64)  # eq. (1), only for finite, in-range points
    y0 = np.floor(y[reach]).astype(np.int64)
    cell = (n_index * (height + 1) + y0 + 1) * (width + 1) + x0 + 1
    n_cells = n_batch * (height + 1) * (width + 1)
    order = np.argsort(cell, kind="stable")
    cell_start = np.zeros(n_cells + 1, dtype=np.int64)
    np.cumsum(np.bincount(cell, minlength=n_cells), out=cell_start[1:])
    return cell_start, p_index[order].astype(np.int64)


def _resize_tables(in_size: int, out_size: int, align_corners: bool, mode: str, dtype):
    """``axis_taps`` for one axis with the weights cast to the data type."""
    taps = axis_taps(in_size, out_size, align_corners, mode)
    return taps._replace(weight=taps.weight.astype(dtype))


def sample_on_device(image, points):
    """out (N, C, P) device array from device arrays image (N, C, H, W) and points (N, P, 2):
    eq. (4). ``deform_conv2d``'s cuda tier samples its columns with this."""
    n_batch, channels = image.shape[:2]
    n_points = points.shape[1]
    out = cuda.device_array((n_batch, channels, n_points), dtype=image.dtype)
    launch(_KERNELS[image.dtype].sample, n_batch * n_points, image, points, out)
    return out


def sample_backward_on_device(gy, image, points, host_points: np.ndarray):
    """grad_image (N, C, H, W) by eq. (5) and grad_points (N, P, 2) by eqs. (6)-(7), as
    device arrays, from device arrays gy (N, C, P), image (N, C, H, W) and points (N, P, 2).

    ``host_points`` is the same (N, P, 2) array on the host: the gather for ``grad_image`` needs
    the points binned by cell, which :func:`_bin_points_by_cell` does there.
    """
    n_batch, _, height, width = image.shape
    n_points = points.shape[1]
    kernels = _KERNELS[image.dtype]
    cell_start, cell_points = _bin_points_by_cell(host_points, height, width)
    grad_image = cuda.device_array(image.shape, dtype=image.dtype)
    grad_points = cuda.device_array(points.shape, dtype=points.dtype)
    launch(kernels.grad_image, n_batch * height * width, gy, points,
           cuda.to_device(cell_start), cuda.to_device(cell_points), grad_image)
    launch(kernels.grad_points, n_batch * n_points, gy, image, points, grad_points)
    return grad_image, grad_points


def sample(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """out (N, C, P) from image (N, C, H, W) and points (N, P, 2): eq. (4)."""
    return sample_on_device(cuda.to_device(image), cuda.to_device(points)).copy_to_host()


def sample_backward(gy: np.ndarray, image: np.ndarray, points: np.ndarray):
    """grad_image (N, C, H, W) by eq. (5) and grad_points (N, P, 2) by eqs. (6)-(7), from
    gy (N, C, P), image (N, C, H, W) and points (N, P, 2)."""
    grad_image, grad_points = sample_backward_on_device(
        cuda.to_device(gy), cuda.to_device(image), cuda.to_device(points), points)
    return grad_image.copy_to_host(), grad_points.copy_to_host()


def resize(x: np.ndarray, out_h: int, out_w: int, align_corners: bool, mode: str) -> np.ndarray:
    """out (N, C, Ho, Wo) from x (N, C, H, W): eq. (11) for bilinear, eq. (10) for nearest."""
    n_batch, channels, height, width = x.shape
    rows = _resize_tables(height, out_h, align_corners, mode, x.dtype)
    cols = _resize_tables(width, out_w, align_corners, mode, x.dtype)
    out = cuda.device_array((n_batch, channels, out_h, out_w), dtype=x.dtype)
    launch(_KERNELS[x.dtype].resize, out.size, cuda.to_device(x),
           cuda.to_device(rows.index), cuda.to_device(rows.weight),
           cuda.to_device(cols.index), cuda.to_device(cols.weight), mode == "nearest", out)
    return out.copy_to_host()


def resize_backward(gy: np.ndarray, height: int, width: int, align_corners: bool,
                    mode: str) -> np.ndarray:
    """grad_input (N, C, H, W) from gy (N, C, Ho, Wo): eq. (12) as a gather over ``A^T``."""
    n_batch, channels, out_h, out_w = gy.shape
    rows = adjoint_taps(_resize_tables(height, out_h, align_corners, mode, gy.dtype), height)
    cols = adjoint_taps(_resize_tables(width, out_w, align_corners, mode, gy.dtype), width)
    grad = cuda.device_array((n_batch, channels, height, width), dtype=gy.dtype)
    launch(_KERNELS[gy.dtype].resize_backward, grad.size, cuda.to_device(gy),
           cuda.to_device(rows.indptr), cuda.to_device(rows.out_index),
           cuda.to_device(rows.weight), cuda.to_device(cols.indptr),
           cuda.to_device(cols.out_index), cuda.to_device(cols.weight),
           mode == "nearest", grad)
    return grad.copy_to_host()
