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
  taps. In the backward, :func:`_modulate_backward_kernel` makes *one* pass over the columns
  and their gradient that computes grad_mask (the channel sum of eq. 8, a gather: each output
  row is written by one work item, summing the channels in order) and scales both arrays by
  the mask. NumPy needs an einsum and two more passes over arrays of N * C * K * Ho * Wo
  values for that.
* **The GEMMs** run in numba's threads (:func:`scratchvision.ops.gemm.matmul`: blocks of rows,
  one single-threaded BLAS call each), so the tier's sampling kernels and its products share
  one thread pool and no pool's waiting workers take the cores from another's (see
  :mod:`scratchvision._threads`).

Precision: the input dtype throughout (float32 stays float32, BLAS included); in float64 the
sums run in another order than ``loop.py``'s, so results agree to rounding.

Contract: as the numpy tier (see :mod:`scratchvision.ops.deform_conv2d.vectorized`).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import gemm
from ..bilinear import numba_cpu as _bilinear
from .columns import ColumnTier

_JIT = {"parallel": True, "cache": True, "fastmath": False}


@njit(**_JIT)
def _modulate_backward_kernel(columns, gamma, mask, grad_mask):
    """One pass over columns and gamma (N, G, C/G, K, P) with mask (N, G, K, P):
    grad_mask[n, g, k] = sum_c columns * gamma (eq. 8, channels in order), then
    columns *= mask (for eq. 6) and gamma *= mask (eq. 7), in place."""
    n_batch, groups, group_channels, n_taps, n_pixels = columns.shape
    for row in prange(n_batch * groups * n_taps):
        k = row % n_taps
        n = row // (groups * n_taps)
        g = (row // n_taps) % groups
        m = mask[n, g, k]
        total = grad_mask[n, g, k]  # (P,), zero on entry
        for c in range(group_channels):
            col = columns[n, g, c, k]
            gam = gamma[n, g, c, k]
            for p in range(n_pixels):
                total[p] += col[p] * gam[p]  # eq. (8)
                col[p] *= m[p]
                gam[p] *= m[p]  # eq. (7)


class _NumbaColumnTier(ColumnTier):
    """:class:`ColumnTier` on the numba bilinear tier, with the mask steps as kernels and the
    matrix products in numba's threads."""

    products = staticmethod(gemm.matmul)

    def sample(self, images, points, mask):
        """Sampling with the mask fused into the gather: each point's bilinear weights are
        scaled by its mask value (eq. 2) before the channels are summed."""
        scale = None if mask is None else mask.reshape(images.shape[0], -1)  # (N * G, K * P)
        return _bilinear.sample(images, points, scale)

    def modulate_backward(self, columns, gamma, mask):
        if mask is None:
            return None
        per_tap = columns.shape[:2] + columns.shape[3:]  # (N, G, K, P)
        grad_mask = np.zeros(per_tap, dtype=columns.dtype)
        _modulate_backward_kernel(columns, gamma, mask.reshape(per_tap), grad_mask)
        return grad_mask.reshape(mask.shape)


_tier = _NumbaColumnTier(_bilinear)

forward = _tier.forward
backward = _tier.backward
