"""This machine's two limits, against which each operator's benchmark is read: memory
bandwidth and the float32 matrix-product rate.

* **bandwidth**: a STREAM-style triad ``a = b + s * c`` over three 256 MiB float32 arrays in a
  numba parallel loop (two reads and one write per element: 12 bytes), far larger than any
  cache. An operator that must read ``R`` and write ``W`` bytes from memory cannot take less
  than ``(R + W) / bandwidth``.
* **matrix products**: a 2048 x 2048 x 2048 float32 product with NumPy's BLAS on all its
  threads, in GFLOP/s (``2 n³`` floating-point operations). An operator with ``F`` FLOPs in
  matrix products cannot take less than ``F / rate``.

Both are medians of several repeats after a warm-up (``scratchvision bench --limits``).
"""

from __future__ import annotations

import time

import numpy as np
from numba import njit, prange

__all__ = ["machine_limits", "median_seconds"]


@njit(parallel=True, cache=True)
def _triad(a, b, c, s):
    for i in prange(a.size):
        a[i] = b[i] + s * c[i]


def median_seconds(call, repeats: int, warmup: bool = True) -> float:
    """The median wall-clock seconds of ``repeats`` calls of ``call()``, after one call that
    is not counted (compilation, first touch of the pages) unless ``warmup`` is False."""
    if warmup:
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def machine_limits(repeats: int = 7, elements: int = 64 * 2 ** 20, n: int = 2048) -> dict:
    """``{"bandwidth_gb_s": ..., "sgemm_gflop_s": ...}``: the triad's bytes per second over
    ``elements``-long float32 arrays, and the float32 product rate at ``n x n x n``."""
    a = np.zeros(elements, np.float32)
    b = np.ones(elements, np.float32)
    c = np.ones(elements, np.float32)
    triad = median_seconds(lambda: _triad(a, b, c, np.float32(2.0)), repeats)
    x = np.random.default_rng(0).random((n, n), dtype=np.float32)
    product = median_seconds(lambda: x @ x, repeats)
    return {"bandwidth_gb_s": 3 * a.nbytes / triad / 1e9,
            "sgemm_gflop_s": 2 * n ** 3 / product / 1e9}
