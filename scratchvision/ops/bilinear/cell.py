"""Eqs. (1)-(2) of bilinear interpolation, written once: the cell a point falls in, and the
weights of its four taps.

Every tier of every op that interpolates bilinearly -- bilinear sampling, deformable
convolution (through bilinear sampling) and multi-scale deformable attention -- takes the cell
and the weights of a point from :func:`cell_and_weights`, one name with one contract:

* the loop tiers call it as it is (``bilinear.loop.point_taps`` wraps it);
* the numba tiers call ``bilinear.numba_cpu.cell_and_weights``, this function compiled by
  ``numba.njit`` and inlined;
* the cuda tiers call ``bilinear.numba_cuda.cell_and_weights``, this function compiled as a
  device function, with ``floor`` rebound to the GPU's ``math.floor`` (float in, the same
  float out; NumPy's ``floor`` is what the CPU tiers compile).

Precision: everything is computed in the float type of ``x``, ``y`` and ``one`` (float32 stays
float32, as in torch). ``x - floor(x)`` is exact in binary floating point, so the cell and the
offsets do not depend on the dtype at all; only the weights round.

Note for developers: numba's on-disk cache of a kernel that inlines this function is keyed on
the kernel's own file; after editing this file, clear the ``__pycache__`` folders (or touch the
tier files) so that no stale compiled kernel survives.
"""

from __future__ import annotations

import numpy as np

#: the floor the CPU tiers use (float in, same float out); the cuda tier rebinds it
floor = np.floor


def cell_and_weights(x, y, one):
    """The cell of the point ``(x, y)`` and the weights of its four taps (eqs. 1-2).

    Args:
        x, y: the point's pixel coordinates, finite. Callers pass only points with a tap
            inside the image, ``-1 <= x < W`` and ``-1 <= y < H``, having filtered the others
            (and NaN and infinities, which must never reach ``floor`` and ``int``) before.
        one: 1 in the float type to compute in.

    Returns:
        ``(x0, y0, ax, ay, w00, w01, w10, w11)``: the top-left tap ``(x0, y0)`` as ints (the
        four taps are ``(y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)``, in that
        order), the offsets ``ax, ay`` in [0, 1) inside the cell, and the four taps' weights,
        in the float type of ``one``. Whether a tap lies inside the image (eq. 3) is the
        caller's business.
    """
    # --8<-- [start:cell]
    # eq. (1): the top-left tap and the fractional offsets inside the cell.
    # NOTE: at an integer coordinate, floor() puts the point at the *left* edge of the cell to
    # its right, so the derivative every tier returns there is the right-hand derivative (the
    # linear piece on [x0, x0 + 1)). This holds at the borders too: x = -1 still sees x1 = 0.
    x0f = floor(x)
    y0f = floor(y)
    ax = x - x0f  # in [0, 1), exact
    ay = y - y0f
    # --8<-- [end:cell]
    # --8<-- [start:weights]
    # eq. (2): the four weights, tap (y0 + ty, x0 + tx) weighted by the x and y factors
    w00 = (one - ax) * (one - ay)
    w01 = ax * (one - ay)
    w10 = (one - ax) * ay
    w11 = ax * ay
    # --8<-- [end:weights]
    return int(x0f), int(y0f), ax, ay, w00, w01, w10, w11
