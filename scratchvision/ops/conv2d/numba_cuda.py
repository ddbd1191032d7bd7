"""CUDA tier of conv2d: ``numba.cuda`` kernels and the device functions that launch them.

Each function runs on device arrays and returns device arrays;
:func:`~scratchvision.ops.cuda_common.host_or_device` lets it take NumPy arrays too (copied
in, results copied back), so NumPy in gives NumPy out like the other tiers. Nothing inside the
op goes through the host. Names mirror ``loop.py``; the derivation is
``docs/derivations/conv2d.md``.

What changes relative to ``loop.py``, and why:

* **im2col + matrix products.** Instead of the seven-nested sum, the input is first copied into
  ``columns`` (N, C*K, L), ``K = kh*kw``, ``L = Ho*Wo``: row ``c*K + k`` of image ``n`` holds
  what tap ``k = i*kw + j`` of channel ``c`` reads at every output pixel (zero in the padding).
  Every sum of the convolution is then a matrix product per image and group, computed by the
  tiled shared-memory kernel in :mod:`scratchvision.ops.cuda_common`, which
  ``deform_conv2d``'s cuda tier shares::

      y[n, grp]            = W[grp] @ columns[n, grp]  (+ bias)      eq. (5)
      grad_bias[o]         = sum_{n, l} gy[n, o, l]                  eq. (6)
      grad_W[grp]          = sum_n gy[n, grp] @ columns[n, grp]^T    eq. (10), first product
      grad_columns[n, grp] = W[grp]^T @ gy[n, grp]                   eq. (10), before col2im

* **grad_input is a gather (col2im).** ``loop.py`` scatters ``gy * w`` into every input pixel
  a tap read (eq. 8); on a GPU that is a race. Here one thread per input element
  ``(n, c, r, q)`` sums ``grad_columns`` over the taps ``(i, j)`` and output pixels
  ``(ho, wo)`` that read it, found by inverting eq. (2), ``r = ho*sh - ph + i*dh`` (``ho``
  must be a whole number in ``[0, Ho)``): the correlation of ``gy`` with the flipped kernel.
  No atomics anywhere, so repeated runs are bit-identical.
* **Thread mapping.** im2col runs one thread per entry of ``columns`` (neighbouring threads
  write neighbouring output pixels), col2im one per input element; both walk a flat int64
  index with a grid-stride loop.
* **Against cuDNN.** cuDNN picks, per shape, among implicit-GEMM kernels that never write the
  columns to memory (they are formed tile by tile in shared memory), Winograd and FFT
  convolutions, and runs them on tensor cores (TF32 for float32: torch's default,
  ``torch.backends.cudnn.allow_tf32``). This tier
  writes the columns out (K = 9 times the input for a 3x3 kernel), reads them back in the
  product, and multiplies in plain float32 FMAs with a 64 x 64 tile: simpler to read, and the
  reason its target is "within 3x of cuDNN", not parity.

Precision: float64 inputs are computed in float64, float32 inputs entirely in float32 (the
kernels are built per float type with typed constants). Results agree with ``loop.py`` to
rounding: the matrix products add the same terms in a different order.

With ``NUMBA_ENABLE_CUDASIM=1`` (set before numba is imported) the same code runs in numba's
CUDA simulator: correct but slow, so use it on tiny shapes only.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from numba import cuda

from ..conv_geometry import ConvGeometry
from ..cuda_common import (conv_from_columns, grad_columns, grad_weight_and_bias,
                           host_or_device, launch)


# ----------------------------------------------------------------------------- kernels

def _build_kernels(float_type) -> SimpleNamespace:
    """Compile-on-first-use kernels whose arithmetic stays in ``float_type``."""
    zero = float_type(0.0)

    @cuda.jit
    def im2col_kernel(x, kernel, stride, padding, dilation, out_w, columns):
        """columns (N, C*K, L) from x (N, C, H, W): one thread per entry ``(n, c*K + k, l)``.

        ``kernel``, ``stride``, ``padding`` and ``dilation`` are ``(along H, along W)`` pairs;
        output pixel ``l = ho * out_w + wo``, tap ``k = i * kw + j``.
        """
        n_batch, c_in, height, width = x.shape
        rows, pixels = columns.shape[1], columns.shape[2]
        kh, kw = kernel
        for flat in range(cuda.grid(1), n_batch * rows * pixels, cuda.gridsize(1)):
            n = flat // (rows * pixels)
            row = (flat // pixels) % rows
            pixel = flat - (n * rows + row) * pixels
            c = row // (kh * kw)
            i = (row // kw) % kh
            j = row % kw
            ho = pixel // out_w
            wo = pixel - ho * out_w
            r = ho * stride[0] - padding[0] + i * dilation[0]  # eq. (2)
            q = wo * stride[1] - padding[1] + j * dilation[1]
            if 0 <= r < height and 0 <= q < width:
                columns[n, row, pixel] = x[n, c, r, q]
            else:
                columns[n, row, pixel] = zero  # eq. (3): the padding reads zero

    @cuda.jit
    def col2im_kernel(grad_columns, kernel, stride, padding, dilation, out_w, grad_input):
        """grad_input (N, C, H, W) by eq. (8) from grad_columns (N, C*K, L) (which already holds
        ``sum_o weight * gy`` per tap), gathered: one thread per input element ``(n, c, r, q)``
        adds the entries of the columns that copied it, taps in ``(i, j)`` order."""
        n_batch, c_in, height, width = grad_input.shape
        out_h = grad_columns.shape[2] // out_w
        kh, kw = kernel
        for flat in range(cuda.grid(1), grad_input.size, cuda.gridsize(1)):
            q = flat % width
            r = (flat // width) % height
            c = (flat // (width * height)) % c_in
            n = flat // (width * height * c_in)
            acc = zero
            for i in range(kh):
                # eq. (2) inverted: r = ho * sh - ph + i * dh  =>  ho = (r + ph - i * dh) / sh,
                # a tap of this pixel only when that is a whole number in [0, Ho)
                t = r + padding[0] - i * dilation[0]
                if t < 0 or t % stride[0] != 0 or t // stride[0] >= out_h:
                    continue
                ho = t // stride[0]
                for j in range(kw):
                    t = q + padding[1] - j * dilation[1]
                    if t < 0 or t % stride[1] != 0 or t // stride[1] >= out_w:
                        continue
                    wo = t // stride[1]
                    acc += grad_columns[n, (c * kh + i) * kw + j, ho * out_w + wo]
            grad_input[n, c, r, q] = acc

    return SimpleNamespace(im2col=im2col_kernel, col2im=col2im_kernel)


# Building is cheap: @cuda.jit only compiles on a kernel's first launch.
_KERNELS = {np.dtype(t): _build_kernels(t) for t in (np.float32, np.float64)}


# ----------------------------------------------------------------------------- device side

def _geometry_args(geom: ConvGeometry) -> tuple:
    """The kernels' geometry arguments: (kernel, stride, padding, dilation, out_w)."""
    return geom.kernel, geom.stride, geom.padding, geom.dilation, geom.out[1]


def _im2col(x, geom: ConvGeometry):
    """columns (N, C*K, L) device array from the device array x (N, C, H, W)."""
    n_batch, channels = x.shape[:2]
    kh, kw = geom.kernel
    columns = cuda.device_array((n_batch, channels * kh * kw, geom.out[0] * geom.out[1]),
                                dtype=x.dtype)
    launch(_KERNELS[x.dtype].im2col, columns.size, x, *_geometry_args(geom), columns)
    return columns


@host_or_device
def forward(x, weight, bias, geom: ConvGeometry, groups: int):
    """y (N, O, Ho, Wo) from x (N, C, H, W), weight (O, C/groups, kh, kw) and bias (O,) or
    None."""
    y = conv_from_columns(_im2col(x, geom), weight, bias, groups)
    # (N, O, L) -> (N, O, Ho, Wo)
    return y.reshape((x.shape[0], weight.shape[0]) + tuple(geom.out))


@host_or_device
def backward(gy, x, weight, has_bias: bool, geom: ConvGeometry, groups: int):
    """(grad_input (N, C, H, W), grad_weight (O, C/groups, kh, kw), grad_bias (O,) or None)
    from gy (N, O, Ho, Wo), x (N, C, H, W) and weight (O, C/groups, kh, kw)."""
    n_batch, out_channels = gy.shape[:2]
    gy = gy.reshape(n_batch, out_channels, geom.out[0] * geom.out[1])  # -> (N, O, L)
    columns = _im2col(x, geom)
    grad_weight, grad_bias = grad_weight_and_bias(gy, columns, weight.shape, groups, has_bias)
    grad_input = cuda.device_array(x.shape, dtype=x.dtype)
    launch(_KERNELS[x.dtype].col2im, grad_input.size, grad_columns(gy, weight, groups),
           *_geometry_args(geom), grad_input)
    return grad_input, grad_weight, grad_bias
