"""One thread pool for the library's parallel work: numba's.

A process that uses this library next to NumPy and torch holds up to three thread pools: numba's
OpenMP workers (our kernels), the BLAS library's workers behind NumPy and SciPy (OpenBLAS, its
own pthreads) and torch's OpenMP workers. Each pool keeps its idle workers *busy-waiting* for a
while after its work, so that its next job starts at once. On a machine with few cores, a
pool's waiting workers occupy the cores the next pool needs: measured on the 2-core
development machine, a small numba kernel run right after an OpenBLAS matrix product took
three times as long as the same kernel run alone.

So the library never hands work from one pool to another inside an operation. The numba tiers
do their matrix products *inside* numba's parallel loops: each loop iteration multiplies one
block with ``np.dot``, which numba compiles into a call of SciPy's BLAS, and while a numba
tier runs, BLAS is limited to one thread (:func:`single_threaded_blas`, with threadpoolctl), so
it computes in the numba worker that called it and never wakes a pool of its own. The cores
are shared by splitting the product into blocks, as they are for every other kernel.

Nothing here changes the process for the user: no environment variable is set (torch and
NumPy behave as they would without us), the BLAS limit holds only while one of our kernels
runs and is restored afterwards, and numba's threading layer is numba's default.
"""

from __future__ import annotations

import contextlib
import threading

__all__ = ["single_threaded_blas"]

_state = threading.local()
_controller_lock = threading.Lock()
_controller = None


def _blas_controller():
    """threadpoolctl's handle on the BLAS libraries: NumPy's and SciPy's (the one numba's
    ``np.dot`` calls, loaded here first so that it is found)."""
    global _controller
    with _controller_lock:
        if _controller is None:
            import scipy.linalg.cython_blas  # noqa: F401  (loads SciPy's BLAS)
            from threadpoolctl import ThreadpoolController

            _controller = ThreadpoolController().select(user_api="blas")
        return _controller


@contextlib.contextmanager
def single_threaded_blas():
    """Limit every loaded BLAS library to one thread while the block runs (re-entrant: only
    the outermost ``with`` sets and restores the limit)."""
    depth = getattr(_state, "depth", 0)
    if depth:
        _state.depth = depth + 1
        try:
            yield
        finally:
            _state.depth = depth
        return
    _state.depth = 1
    try:
        with _blas_controller().limit(limits=1):
            yield
    finally:
        _state.depth = 0
