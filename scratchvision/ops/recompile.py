"""One source, several compilers: a copy of a function with some of its global names rebound.

The loop tier is the specification, and where its code is plain enough the faster tiers
compile that very code instead of a second copy of it: max pooling's numba tier compiles the
loop tier's functions with ``prange`` rebound to ``numba.prange``, and the cuda tiers compile
bilinear's :func:`~scratchvision.ops.bilinear.cell.cell_and_weights` with ``floor`` rebound to
the GPU's float-to-float ``math.floor``.
"""

from __future__ import annotations

import types


def with_globals(func: types.FunctionType, **names) -> types.FunctionType:
    """A copy of ``func`` that sees ``names`` in place of its module's globals of those names.

    The copy keeps ``func``'s module, name and qualified name, which key numba's on-disk cache
    (``cache=True``), so compiled copies are cached like the original would be.
    """
    scope = dict(func.__globals__, **names)
    copy = types.FunctionType(func.__code__, scope, func.__name__, func.__defaults__,
                              func.__closure__)
    copy.__module__, copy.__qualname__ = func.__module__, func.__qualname__
    copy.__doc__ = func.__doc__
    return copy
