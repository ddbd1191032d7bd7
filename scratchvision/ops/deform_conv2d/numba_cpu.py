"""Numba CPU tier of deformable convolution: bilinear columns from the numba bilinear tier, a
BLAS GEMM, and numba kernels for the mask.

The computation is that of :mod:`scratchvision.ops.deform_conv2d.columns` (shared with the
numpy tier; read it first). What this tier changes, and why:

* **Sampling** is :func:`scratchvision.ops.bilinear.numba_cpu.sample` and
  ``sample_backward`` -- channels-last tiles for the gathers, and for the input gradient
  (eq. 9) per-chunk buffers summed in a fixed order, so the scatter is race-free and repeated
  runs are bit-identical.
* **The mask** (eqs. 2, 7, 8) is applied by two small kernels instead of NumPy
  broadcasting: :func:`_modulate_kernel` scales the columns in place, and
  :func:`_modulate_backward_kernel` makes *one* pass over the columns and their gradient that
  computes grad_mask (the channel sum of eq. 8, a gather: each output row is written by one
  work item, summing the channels in order) and scales both arrays by the mask. NumPy needs
  an einsum and two more passes over arrays of N * C * K * Ho * Wo values for that.
* **The GEMMs** stay ``np.matmul`` (BLAS), as in the numpy tier.
* **One numba thread; BLAS gets the cores.** The tier alternates between numba kernels and
  BLAS products, and the two run on different thread pools. Each pool keeps its idle workers
  *spinning* for a while after its work -- tens of milliseconds for numba's OpenMP workers,
  about 0.1 s for OpenBLAS's -- so when both use every core, each step shares its cores with
  the other pool's spinning workers, and a parallel kernel waits for its slowest thread. On
  the 2-core development machine that made the benchmark case about twice as slow as the sum
  of its steps run alone (and erratic). So the numba kernels run on *one* thread
  (``numba.set_num_threads``, restored afterwards) and BLAS uses the cores; numba's workers
  are never woken, and BLAS's spinning worker has a core of its own. The kernels stay
  ``parallel=True`` for callers who do want them on more threads.

Precision: the input dtype throughout (float32 stays float32, BLAS included); in float64 the
sums run in another order than ``loop.py``'s, so results agree to rounding.

Contract: as the numpy tier (see :mod:`scratchvision.ops.deform_conv2d.vectorized`).
"""

from __future__ import annotations

import contextlib

import numba
import numpy as np
from numba import njit, prange

from ..bilinear import numba_cpu as _bilinear
from .columns import ColumnTier

_JIT = {"parallel": True, "cache": True, "fastmath": False}

# numba threads for this tier's kernels; see "One numba thread" in the module docstring
_NUMBA_THREADS = 1


@contextlib.contextmanager
def _numba_threads(count: int):
    """Run numba's parallel kernels on at most ``count`` threads (of the calling thread) for
    the duration of the block."""
    previous = numba.get_num_threads()
    numba.set_num_threads(min(count, previous))
    try:
        yield
    finally:
        numba.set_num_threads(previous)


@njit(**_JIT)
def _modulate_kernel(columns, mask):
    """columns (N, G, C/G, K, P) *= mask (N, G, K, P) in place, eq. (2)."""
    n_batch, groups, group_channels, n_taps, n_pixels = columns.shape
    for row in prange(n_batch * groups * group_channels * n_taps):
        k = row % n_taps
        c = (row // n_taps) % group_channels
        ng = row // (n_taps * group_channels)
        n = ng // groups
        g = ng % groups
        m = mask[n, g, k]
        col = columns[n, g, c, k]
        for p in range(n_pixels):
            col[p] *= m[p]


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
    """:class:`ColumnTier` on the numba bilinear tier, with the mask steps as kernels, its
    numba kernels on ``_NUMBA_THREADS`` threads."""

    def forward(self, *args):
        with _numba_threads(_NUMBA_THREADS):
            return super().forward(*args)

    def backward(self, *args):
        with _numba_threads(_NUMBA_THREADS):
            return super().backward(*args)

    def modulate(self, columns, mask):
        if mask is not None:
            # (N, G * K, Ho, Wo) -> (N, G, K, P)
            _modulate_kernel(columns, mask.reshape(columns.shape[:2] + columns.shape[3:]))
        return columns

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
