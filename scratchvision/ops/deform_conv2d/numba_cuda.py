"""CUDA tier of deformable convolution (DCNv1 / DCNv2): ``numba.cuda`` kernels and their host
wrappers.

Each function copies its numpy inputs to the device, launches the kernels and copies the
results back, so it takes and returns numpy arrays like the other tiers. Names mirror
``loop.py`` and equation numbers refer to ``docs/derivations/deform_conv2d.md``.

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
  the input gradient as its race-free gather (points binned by cell on the host, one thread
  per pixel; no atomics, so repeated runs are bit-identical) and the offset gradient as its
  per-point gather of ``dL/d(x, y)`` (the offset enters the point with slope 1).
* **Sampling points on the host.** The points (eq. 1) are the regular grid
  (``columns.sampling_points``, shared with the numpy and numba tiers) plus the offsets,
  computed with numpy in the data type (the grid is exact); the host needs them anyway to bin
  them for the gather.

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
from ..cuda_common import conv_from_columns, grad_columns, grad_weight_and_bias, launch
from .columns import offset_gradient, sampling_points


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

    return SimpleNamespace(modulate=modulate_kernel, modulate_backward=modulate_backward_kernel)


# Building is cheap: @cuda.jit only compiles on a kernel's first launch.
_KERNELS = {np.dtype(t): _build_kernels(t) for t in (np.float32, np.float64)}


# ----------------------------------------------------------------------------- host side

def _grouped_images(x: np.ndarray, offset_groups: int):
    """x (N, C, H, W) on the device as (N*G, C/G, H, W): one bilinear image per offset group
    (the channels of a group are contiguous, so this is a view)."""
    n_batch, channels, height, width = x.shape
    return cuda.to_device(
        x.reshape(n_batch * offset_groups, channels // offset_groups, height, width))


def forward(x: np.ndarray, offset: np.ndarray, weight: np.ndarray, bias, mask,
            geom: ConvGeometry, offset_groups: int, weight_groups: int) -> np.ndarray:
    """out (N, O, Ho, Wo) by eq. (4), from x (N, C, H, W), offset (N, 2*G*K, Ho, Wo), weight
    (O, C/weight_groups, kh, kw), bias (O,) or None and mask (N, G*K, Ho, Wo) or None."""
    n_batch, channels = x.shape[:2]
    out_h, out_w = geom.out
    n_taps, pixels = geom.kernel[0] * geom.kernel[1], out_h * out_w
    points = sampling_points(offset, geom)
    # eq. (3) at every point: (N*G, C/G, K*L)
    columns = sample_on_device(_grouped_images(x, offset_groups), cuda.to_device(points))
    if mask is not None:
        # (N, G*K, Ho, Wo) -> (N*G, K*L)
        d_mask = cuda.to_device(mask.reshape(n_batch * offset_groups, n_taps * pixels))
        launch(_KERNELS[x.dtype].modulate, n_batch * offset_groups * n_taps * pixels,
               columns, d_mask)
    # (N*G, C/G, K*L) -> (N, C*K, L): row c*K + k, conv2d's column layout
    columns = columns.reshape(n_batch, channels * n_taps, pixels)
    out = conv_from_columns(columns, cuda.to_device(weight),
                            None if bias is None else cuda.to_device(bias), weight_groups)
    # (N, O, L) -> (N, O, Ho, Wo)
    return out.copy_to_host().reshape(n_batch, weight.shape[0], out_h, out_w)


def backward(gy: np.ndarray, x: np.ndarray, offset: np.ndarray, weight: np.ndarray,
             has_bias: bool, mask, geom: ConvGeometry, offset_groups: int, weight_groups: int):
    """(grad_input (N, C, H, W) by eq. (9), grad_offset (N, 2*G*K, Ho, Wo) by eq. (10),
    grad_weight (O, C/weight_groups, kh, kw) by eq. (6), grad_bias (O,) by eq. (5) or None,
    grad_mask (N, G*K, Ho, Wo) by eq. (8) or None) from gy (N, O, Ho, Wo) and the forward's
    inputs."""
    n_batch, channels = x.shape[:2]
    out_h, out_w = geom.out
    n_taps, pixels = geom.kernel[0] * geom.kernel[1], out_h * out_w
    images, group_channels = n_batch * offset_groups, channels // offset_groups
    points = sampling_points(offset, geom)
    d_points = cuda.to_device(points)
    d_images = _grouped_images(x, offset_groups)
    columns = sample_on_device(d_images, d_points)  # X by eq. (3): (N*G, C/G, K*L)
    # (N, O, Ho, Wo) -> (N, O, L)
    d_gy = cuda.to_device(gy.reshape(n_batch, weight.shape[0], pixels))
    # dL/d(m X) = W^T gy per weight group: (N, C*K, L) -> (N*G, C/G, K*L)
    d_grad_columns = grad_columns(d_gy, cuda.to_device(weight), weight_groups).reshape(
        images, group_channels, n_taps * pixels)
    grad_mask = None
    if mask is not None:
        # (N, G*K, Ho, Wo) -> (N*G, K*L)
        d_mask = cuda.to_device(mask.reshape(images, n_taps * pixels))
        d_grad_mask = cuda.device_array((images, n_taps * pixels), dtype=x.dtype)
        launch(_KERNELS[x.dtype].modulate_backward, images * n_taps * pixels,
               d_grad_columns, columns, d_mask, d_grad_mask)
        # (N*G, K*L) -> (N, G*K, Ho, Wo)
        grad_mask = d_grad_mask.copy_to_host().reshape(mask.shape)
    # eqs. (5) and (6) from the modulated columns: (N*G, C/G, K*L) -> (N, C*K, L)
    grad_weight, grad_bias = grad_weight_and_bias(
        d_gy, columns.reshape(n_batch, channels * n_taps, pixels), weight.shape,
        weight_groups, has_bias)
    # eqs. (9) and (10): dL/dX sent back through the bilinear taps of every point
    grad_images, grad_points = sample_backward_on_device(d_grad_columns, d_images, d_points,
                                                         points)
    # (N*G, K*L, 2) as (x, y) -> (N*G, K, L, 2) -> (dy, dx) -> (N*G, K, 2, L) -> offset's layout
    grad_offset = offset_gradient(grad_points.copy_to_host(), offset.shape)  # eq. (10)
    return (grad_images.copy_to_host().reshape(x.shape),  # (N*G, C/G, H, W) -> (N, C, H, W)
            grad_offset, grad_weight.copy_to_host(),
            None if grad_bias is None else grad_bias.copy_to_host(), grad_mask)
