"""Numba CPU tier of deformable convolution: bilinear columns from the numba bilinear tier, a
BLAS GEMM, and numba kernels for the mask.

The computation is that of :mod:`scratchvision.ops.deform_conv2d.columns` (shared with the
numpy tier; read it first). What this tier changes, and why:

* **Sampling** is :func:`scratchvision.ops.bilinear.numba_cpu.sample` and
  ``sample_backward`` -- channels-last tiles for the gathers, and for the input gradient
  (eq. 9) per-chunk buffers summed in a fixed order, so the scatter is race-free and repeated
  runs are bit-identical.
* **The mask** (eqs. 2, 7, 8) costs no pass of its own in the forward: the sampling kernel
  scales each point's four bilinear weights by the point's mask value before it sums the
  taps. In the backward, the bilinear backward kernel takes the mask as the points' scale and,
  in the same pass over the taps, recomputes the modulated columns (eq. 6 needs them) and
  grad_mask (eq. 8, the channel sum of gamma times the sample, summed in channel order):
  NumPy resamples the columns and needs an einsum and two more passes over arrays of
  N * C * K * Ho * Wo values for that.
* **The GEMMs** run in numba's threads (:func:`scratchvision.ops.gemm.matmul`: blocks of rows,
  one single-threaded BLAS call each), so the tier's sampling kernels and its products share
  one thread pool and no pool's waiting workers take the cores from another's (see
  :mod:`scratchvision._threads`).

Precision: the input dtype throughout (float32 stays float32, BLAS included); in float64 the
sums run in another order than ``loop.py``'s, so results agree to rounding.

Contract: as the numpy tier (see :mod:`scratchvision.ops.deform_conv2d.vectorized`).
"""

from __future__ import annotations

from .. import gemm
from ..bilinear import numba_cpu as _bilinear
from .columns import ColumnTier


class _NumbaColumnTier(ColumnTier):
    """:class:`ColumnTier` on the numba bilinear tier, with the mask fused into its sampling
    kernels and the matrix products in numba's threads."""

    products = staticmethod(gemm.matmul)

    def sample(self, images, points, mask):
        """Sampling with the mask fused into the gather: each point's bilinear weights are
        scaled by its mask value (eq. 2) before the channels are summed."""
        scale = None if mask is None else mask.reshape(images.shape[0], -1)  # (N * G, K * P)
        return _bilinear.sample(images, points, scale)

    def sample_backward(self, gamma, images, points, mask):
        """One pass instead of three: the bilinear backward kernel, given the mask as the
        points' scale, also recomputes the modulated columns and grad_mask from the taps it
        reads anyway (see :func:`scratchvision.ops.bilinear.numba_cpu.sample_backward`)."""
        if mask is None:
            return super().sample_backward(gamma, images, points, None)
        scale = mask.reshape(images.shape[0], -1)  # (N, G * K, Ho, Wo) -> (N * G, K * P)
        grad_images, grad_points, columns, grad_scale = _bilinear.sample_backward(
            gamma, images, points, scale)
        return columns, grad_scale.reshape(mask.shape), grad_images, grad_points


_tier = _NumbaColumnTier(_bilinear)

forward = _tier.forward
backward = _tier.backward
