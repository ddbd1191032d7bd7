"""Numba CPU tier of max pooling: the loop tier's own functions, compiled.

What changes relative to :mod:`~scratchvision.ops.max_pool2d.loop`: nothing in the maths. The
loop tier's functions are compiled with ``prange`` rebound to ``numba.prange``, so the planes
run in parallel, each plane one thread's alone (its output and its slice of the gradient): no
races, and repeated runs are bit-identical.
"""

from __future__ import annotations

import functools

import numba
import numpy as np

from ..recompile import with_globals
from . import loop


def _compiled(func, parallel: bool, **names):
    """``numba.njit`` of ``func`` with the global ``names`` rebound, e.g. ``prange`` to
    ``numba.prange``: the loop tier's own code, compiled."""
    return numba.njit(parallel=parallel, cache=True)(with_globals(func, **names))


@functools.cache
def _kernels():
    """Compile on first use: (pool_planes, unpool_planes)."""
    pool_plane = _compiled(loop.pool_plane, parallel=False)
    unpool_plane = _compiled(loop.unpool_plane, parallel=False)
    pool_planes = _compiled(loop.pool_planes, parallel=True, prange=numba.prange,
                            pool_plane=pool_plane)
    unpool_planes = _compiled(loop.unpool_planes, parallel=True, prange=numba.prange,
                              unpool_plane=unpool_plane)
    return pool_planes, unpool_planes


def _writable(a: np.ndarray) -> np.ndarray:
    """numba compiles a separate specialisation for read-only arrays: a copy is cheaper."""
    return a if a.flags.writeable else a.copy()


def pool(x: np.ndarray, geom):
    """As :func:`loop.pool`, planes in parallel."""
    return loop.pool(_writable(x), geom, planes=_kernels()[0])


def unpool(gy: np.ndarray, index: np.ndarray, plane_size: int) -> np.ndarray:
    """As :func:`loop.unpool`, planes in parallel."""
    return loop.unpool(_writable(gy), index, plane_size, planes=_kernels()[1])
