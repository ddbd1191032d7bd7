"""Batched matrix products inside numba's thread pool (shared by the numba tiers and layers).

``matmul(a, b)`` is ``np.matmul(a, b)`` for a stack of products, computed by a numba parallel
loop over (product, block of rows): each iteration is one ``np.dot`` -- a BLAS call, which
numba compiles to SciPy's BLAS -- running single-threaded in the numba worker that makes it
(:func:`scratchvision._threads.single_threaded_blas`). So a tier that alternates between its
own kernels and matrix products keeps every core in one thread pool, instead of handing work
back and forth between numba's workers and BLAS's (see :mod:`scratchvision._threads`).

Shapes: ``a`` (A, M, K) and ``b`` (B, K, N) with A dividing B (product i uses ``a[i % A]``: a
weight shared by a batch), or ``b_transposed=True`` and ``b`` (B, N, K). Returns (B, M, N).
The order of every sum is BLAS's and fixed by the shapes, so results are reproducible.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from .._threads import single_threaded_blas

__all__ = ["matmul"]

# A block of rows keeps at least this many rows: BLAS is inefficient on thinner products.
_MIN_BLOCK_ROWS = 16


@njit(parallel=True, cache=True)
def _products(a, b, out, row_blocks):
    n_rows = out.shape[1]
    for item in prange(out.shape[0] * row_blocks):
        i = item // row_blocks
        lo = (item % row_blocks) * n_rows // row_blocks
        hi = (item % row_blocks + 1) * n_rows // row_blocks
        if hi > lo:
            np.dot(a[i % a.shape[0], lo:hi], b[i], out[i, lo:hi])


@njit(parallel=True, cache=True)
def _products_transposed(a, b, out, row_blocks):
    n_rows = out.shape[1]
    for item in prange(out.shape[0] * row_blocks):
        i = item // row_blocks
        lo = (item % row_blocks) * n_rows // row_blocks
        hi = (item % row_blocks + 1) * n_rows // row_blocks
        if hi > lo:
            np.dot(a[i % a.shape[0], lo:hi], b[i].T, out[i, lo:hi])


def _row_blocks(n_products: int, n_rows: int) -> int:
    """Blocks per product: a work item for every thread, blocks of at least
    ``_MIN_BLOCK_ROWS`` rows. (More, thinner blocks balance the load better but BLAS is less
    efficient on thin products: one block per thread was the faster of the two here.)"""
    wanted = -(-numba.get_num_threads() // n_products)  # ceil
    return int(max(1, min(wanted, n_rows // _MIN_BLOCK_ROWS)))


def matmul(a: np.ndarray, b: np.ndarray, *, b_transposed: bool = False) -> np.ndarray:
    """``a[i % A] @ b[i]`` (or ``@ b[i].T``) for every i: (A, M, K), (B, K, N) -> (B, M, N).

    ``a`` and ``b`` are brought to their common float dtype and made C-contiguous (copies
    only where they are not already).
    """
    dtype = np.result_type(a, b)
    a = np.ascontiguousarray(a, dtype=dtype)
    b = np.ascontiguousarray(b, dtype=dtype)
    n_products, n_rows = b.shape[0], a.shape[1]
    n_cols = b.shape[1] if b_transposed else b.shape[2]
    out = np.empty((n_products, n_rows, n_cols), dtype=dtype)
    if out.size == 0:
        return out
    if a.shape[2] == 0:
        out.fill(0)
        return out
    kernel = _products_transposed if b_transposed else _products
    with single_threaded_blas():
        kernel(a, b, out, _row_blocks(n_products, n_rows))
    return out
