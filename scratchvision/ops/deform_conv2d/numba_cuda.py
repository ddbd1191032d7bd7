"""CUDA tier of deformable convolution (DCNv1 / DCNv2): ``numba.cuda`` kernels and the device
functions that launch them.

Each function runs on device arrays and returns device arrays;
:func:`~scratchvision.ops.cuda_common.host_or_device` lets it take NumPy arrays too (copied
in, results copied back). Nothing inside the op goes through the host: the sampling points,
their binning for the input gradient and the offset gradient's layout are all built on the
device. Names mirror ``loop.py`` and equation numbers refer to
``docs/derivations/deform_conv2d.md``.

What changes relative to ``loop.py``, and why:

* **Bilinear columns + matrix products.** The sampled values ``X_c(p)`` (eq. 3) of every tap
  and output pixel are gathered into ``columns`` (N, C*K, L), ``K = kh*kw``, ``L = Ho*Wo``,
  laid out as ``conv2d``'s im2col (row ``c*K + k``), and multiplied by the mask (eq. 2). The
  sums over channels and taps (eqs. 4 and 6) and the gradient of each sampled value (eq. 7)
  are then matrix products per image and weight group, computed by the tiled kernel that
  ``conv2d`` shares (:mod:`scratchvision.ops.cuda_common`).
* **Bilinear sampling is not written again.** Offset group ``g`` of image ``n`` is one
  bilinear "image" ``n * G + g`` of C/G channels sampled at ``K*L`` points, so the columns are
  exactly what the bilinear cuda tier's sampling kernel computes on the regrouped views
  ``x`` (N*G, C/G, H, W) and points (N*G, K*L, 2), and its backward gives eqs. (9) and (10):
  the input gradient as its race-free gather (points binned by cell on the device, one thread
  per input element; no float atomics, so repeated runs are bit-identical) and the offset
  gradient as its per-point gather of ``dL/d(x, y)`` (the offset enters the point with
  slope 1).
* **Points on the device.** ``points_kernel`` writes the points (eq. 1), the regular grid plus
  the offsets, one thread per point, in the data type (the grid is exact);
  ``offset_gradient_kernel`` lays the point gradients back out as torchvision's (dy, dx)
  offset channels. Both are the device form of ``columns.sampling_points`` /
  ``columns.offset_gradient``, which the numpy and numba tiers use.

Against torchvision's CUDA kernel: torchvision samples the columns with one thread per
``(input channel, image, output pixel)`` looping over the K taps (so each offset is re-read
once per channel, and each thread writes K column rows), multiplies with cuBLAS (``addmm``; float32
FMAs, since torch leaves TF32 off for matrix products by default), and in the backward scatters the input gradient with
float ``atomicAdd`` (non-deterministic last bits) while one thread per offset coordinate loops
over the channels for the offset and mask gradients. This tier samples with one thread per
point (the offset and weights computed once for all C/G channels), runs its own float32 tiled
product, and gathers the input gradient deterministically after binning the points by cell
(the cost of that determinism: the binning launches, and a point's weights recomputed per
channel in the gather).

Precision: float64 inputs are computed in float64, float32 inputs entirely in float32,
including the sampling points (``loop.py`` accumulates in float64 and rounds once at the end,
so float32 results agree to float32 rounding; float64 ones to 1e-10 relative).

With ``NUMBA_ENABLE_CUDASIM=1`` (set before numba is imported) the same code runs in numba's
CUDA simulator: correct but slow, so use it on tiny shapes only.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from numba import cuda

from ..bilinear.numba_cuda import sample_backward_on_device, sample_on_device
from ..conv_geometry import ConvGeometry
from ..cuda_common import (conv_from_columns, grad_columns, grad_weight_and_bias,
                           host_or_device, launch)


# ----------------------------------------------------------------------------- kernels

def _build_kernels(float_type) -> SimpleNamespace:
    """Compile-on-first-use kernels whose arithmetic stays in ``float_type``."""
    zero = float_type(0.0)

    @cuda.jit
    def modulate_kernel(columns, mask):
        """columns (N*G, C/G, K*L) *= mask (N*G, K*L) in place, the ``m_k`` of eq. (4): one
        thread per sampling point, looping over the channels of its offset group."""
        images, channels, n_points = columns.shape
        for q in range(cuda.grid(1), images * n_points, cuda.gridsize(1)):
            n = q // n_points
            p = q - n * n_points
            m = mask[n, p]
            for c in range(channels):
                columns[n, c, p] *= m

    @cuda.jit
    def modulate_backward_kernel(grad_columns, columns, mask, grad_mask):
        """The mask's part of the backward pass, one thread per sampling point ``(n, p)``.

        On entry ``grad_columns`` (N*G, C/G, K*L) is ``dL/d(m X)`` and ``columns`` holds the
        sampled values ``X``. Writes grad_mask (N*G, K*L) by eq. (8), ``sum_c dL/d(m X) * X``;
        then, in place, turns ``grad_columns`` into ``dL/dX`` (eq. 7, times ``m``) and
        ``columns`` into the forward's modulated columns ``m X`` (for eq. 6).
        """
        images, channels, n_points = columns.shape
        for q in range(cuda.grid(1), images * n_points, cuda.gridsize(1)):
            n = q // n_points
            p = q - n * n_points
            m = mask[n, p]
            acc = zero
            for c in range(channels):
                acc += grad_columns[n, c, p] * columns[n, c, p]  # eq. (8)
                grad_columns[n, c, p] *= m  # eq. (7)
                columns[n, c, p] *= m
            grad_mask[n, p] = acc

    @cuda.jit
    def points_kernel(offset, kernel, stride, padding, dilation, points):
        """points (N*G, K*L, 2) as (x, y) by eq. (1), from offset (N, 2*G*K, Ho, Wo): one thread
        per point ``(n, g, k, l)``, ``l`` fastest (neighbouring threads read neighbouring
        offsets). Tap ``k = i * kw + j`` of output pixel ``l = ho * Wo + wo`` reads row
        ``ho * sh - ph + i * dh + dy`` and column ``wo * sw - pw + j * dw + dx``, with dy, dx
        from channels ``g * 2K + 2k`` and ``g * 2K + 2k + 1``."""
        n_batch, offset_channels, out_h, out_w = offset.shape
        kh, kw = kernel
        n_taps = kh * kw
        groups = offset_channels // (2 * n_taps)
        pixels = out_h * out_w
        for q in range(cuda.grid(1), n_batch * groups * n_taps * pixels, cuda.gridsize(1)):
            l = q % pixels
            rest = q // pixels
            k = rest % n_taps
            ng = rest // n_taps  # n * G + g
            g = ng % groups
            n = ng // groups
            ho = l // out_w
            wo = l - ho * out_w
            i = k // kw
            j = k - i * kw
            channel = g * 2 * n_taps + 2 * k
            # the grid position is an exact integer in the data type; then + the offset
            row = float_type(ho * stride[0] - padding[0] + i * dilation[0])
            col = float_type(wo * stride[1] - padding[1] + j * dilation[1])
            points[ng, k * pixels + l, 0] = col + offset[n, channel + 1, ho, wo]  # x = .. + dx
            points[ng, k * pixels + l, 1] = row + offset[n, channel, ho, wo]  # y = .. + dy

    @cuda.jit
    def offset_gradient_kernel(grad_points, grad_offset):
        """grad_offset (N, 2*G*K, L) by eq. (10) from grad_points (N*G, K*L, 2) as (x, y):
        channel ``g * 2K + 2k`` (dy) takes the y gradient of point ``(n * G + g, k * L + l)``,
        the next channel (dx) its x gradient. One thread per entry of ``grad_offset``."""
        n_batch, offset_channels, pixels = grad_offset.shape
        n_taps = grad_points.shape[1] // pixels
        groups = offset_channels // (2 * n_taps)
        for q in range(cuda.grid(1), n_batch * offset_channels * pixels, cuda.gridsize(1)):
            l = q % pixels
            rest = q // pixels
            channel = rest % offset_channels
            n = rest // offset_channels
            g = channel // (2 * n_taps)
            tap_channel = channel - g * 2 * n_taps  # 2k for dy, 2k + 1 for dx
            k = tap_channel // 2
            coordinate = 1 - (tap_channel - 2 * k)  # dy <- y (1), dx <- x (0)
            grad_offset[n, channel, l] = grad_points[n * groups + g, k * pixels + l,
                                                     coordinate]

    return SimpleNamespace(modulate=modulate_kernel, modulate_backward=modulate_backward_kernel,
                           points=points_kernel, offset_gradient=offset_gradient_kernel)


# Building is cheap: @cuda.jit only compiles on a kernel's first launch.
_KERNELS = {np.dtype(t): _build_kernels(t) for t in (np.float32, np.float64)}


# ----------------------------------------------------------------------------- device side

def _sampling_points(offset, geom: ConvGeometry, n_taps: int):
    """points (N*G, K*L, 2) device array by eq. (1), from the device array offset
    (N, 2*G*K, Ho, Wo)."""
    n_batch, offset_channels = offset.shape[:2]
    groups = offset_channels // (2 * n_taps)
    n_points = n_taps * geom.out[0] * geom.out[1]
    points = cuda.device_array((n_batch * groups, n_points, 2), dtype=offset.dtype)
    launch(_KERNELS[offset.dtype].points, n_batch * groups * n_points, offset, geom.kernel,
           geom.stride, geom.padding, geom.dilation, points)
    return points


def _grouped_images(x, offset_groups: int):
    """x (N, C, H, W) as (N*G, C/G, H, W): one bilinear image per offset group (the channels
    of a group are contiguous, so this is a view)."""
    n_batch, channels, height, width = x.shape
    return x.reshape(n_batch * offset_groups, channels // offset_groups, height, width)


@host_or_device
def forward(x, offset, weight, bias, mask, geom: ConvGeometry, offset_groups: int,
            weight_groups: int):
    """out (N, O, Ho, Wo) by eq. (4), from x (N, C, H, W), offset (N, 2*G*K, Ho, Wo), weight
    (O, C/weight_groups, kh, kw), bias (O,) or None and mask (N, G*K, Ho, Wo) or None."""
    n_batch, channels = x.shape[:2]
    out_h, out_w = geom.out
    n_taps, pixels = geom.kernel[0] * geom.kernel[1], out_h * out_w
    points = _sampling_points(offset, geom, n_taps)
    # eq. (3) at every point: (N*G, C/G, K*L)
    columns = sample_on_device(_grouped_images(x, offset_groups), points)
    if mask is not None:
        # (N, G*K, Ho, Wo) -> (N*G, K*L)
        launch(_KERNELS[x.dtype].modulate, n_batch * offset_groups * n_taps * pixels,
               columns, mask.reshape(n_batch * offset_groups, n_taps * pixels))
    # (N*G, C/G, K*L) -> (N, C*K, L): row c*K + k, conv2d's column layout
    columns = columns.reshape(n_batch, channels * n_taps, pixels)
    out = conv_from_columns(columns, weight, bias, weight_groups)
    # (N, O, L) -> (N, O, Ho, Wo)
    return out.reshape(n_batch, weight.shape[0], out_h, out_w)


@host_or_device
def backward(gy, x, offset, weight, has_bias: bool, mask, geom: ConvGeometry,
             offset_groups: int, weight_groups: int):
    """(grad_input (N, C, H, W) by eq. (9), grad_offset (N, 2*G*K, Ho, Wo) by eq. (10),
    grad_weight (O, C/weight_groups, kh, kw) by eq. (6), grad_bias (O,) by eq. (5) or None,
    grad_mask (N, G*K, Ho, Wo) by eq. (8) or None) from gy (N, O, Ho, Wo) and the forward's
    inputs."""
    n_batch, channels = x.shape[:2]
    out_h, out_w = geom.out
    n_taps, pixels = geom.kernel[0] * geom.kernel[1], out_h * out_w
    images, group_channels = n_batch * offset_groups, channels // offset_groups
    kernels = _KERNELS[x.dtype]
    points = _sampling_points(offset, geom, n_taps)
    grouped = _grouped_images(x, offset_groups)
    columns = sample_on_device(grouped, points)  # X by eq. (3): (N*G, C/G, K*L)
    # (N, O, Ho, Wo) -> (N, O, L)
    gy = gy.reshape(n_batch, weight.shape[0], pixels)
    # dL/d(m X) = W^T gy per weight group: (N, C*K, L) -> (N*G, C/G, K*L)
    d_grad_columns = grad_columns(gy, weight, weight_groups).reshape(
        images, group_channels, n_taps * pixels)
    grad_mask = None
    if mask is not None:
        grad_mask = cuda.device_array(mask.shape, dtype=x.dtype)
        # (N, G*K, Ho, Wo) -> (N*G, K*L)
        launch(kernels.modulate_backward, images * n_taps * pixels, d_grad_columns, columns,
               mask.reshape(images, n_taps * pixels),
               grad_mask.reshape(images, n_taps * pixels))
    # eqs. (5) and (6) from the modulated columns: (N*G, C/G, K*L) -> (N, C*K, L)
    grad_weight, grad_bias = grad_weight_and_bias(
        gy, columns.reshape(n_batch, channels * n_taps, pixels), weight.shape,
        weight_groups, has_bias)
    # eqs. (9) and (10): dL/dX sent back through the bilinear taps of every point
    grad_images, grad_points = sample_backward_on_device(d_grad_columns, grouped, points)
    # (N*G, K*L, 2) as (x, y) -> offset's (dy, dx) layout, eq. (10)
    grad_offset = cuda.device_array(offset.shape, dtype=offset.dtype)
    launch(kernels.offset_gradient, grad_offset.size, grad_points,
           grad_offset.reshape(n_batch, offset.shape[1], pixels))
    # (N*G, C/G, H, W) -> (N, C, H, W)
    return (grad_images.reshape(x.shape), grad_offset, grad_weight, grad_bias, grad_mask)
