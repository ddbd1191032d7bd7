"""Index/weight tables that make resizing separable, shared by the numpy, numba and cuda tiers.

Resizing reads ``out[oy, ox] = sum_ij Ay[oy, i] * Ax[ox, j] * x[i, j]`` (eq. 11 of
``docs/derivations/bilinear.md``): one 1-D interpolation matrix per axis, with two non-zeros
per row. The fast tiers never build those matrices densely; they apply them as tables:

* :func:`axis_taps` -- the rows of ``A``: for each output index, two input indices and two
  weights (eqs. 8-10, the vectorised form of ``loop.linear_taps`` / ``loop.nearest_index``).
* :func:`adjoint_taps` -- the rows of ``A^T`` in CSR form: for each *input* index, the output
  indices that read it and with which weight. The backward pass applies these, so every input
  pixel *gathers* its gradient instead of outputs *scattering* into it: race-free and
  deterministic on any number of threads.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class AxisTaps(NamedTuple):
    """``index`` (out, 2) int64 and ``weight`` (out, 2) float64: output ``o`` reads
    ``weight[o, 0] * in[index[o, 0]] + weight[o, 1] * in[index[o, 1]]``."""

    index: np.ndarray
    weight: np.ndarray


class AdjointTaps(NamedTuple):
    """CSR form of ``A^T``: input ``i`` receives ``weight[k] * g[out_index[k]]`` for
    ``k in range(indptr[i], indptr[i + 1])``, in increasing output order."""

    indptr: np.ndarray
    out_index: np.ndarray
    weight: np.ndarray


def axis_taps(in_size: int, out_size: int, align_corners: bool, mode: str) -> AxisTaps:
    """The two taps of every output index along one axis (eqs. 8-10)."""
    dst = np.arange(out_size)
    if mode == "nearest":
        # eq. (10), in float32 exactly as torch computes it
        scale = np.float32(in_size) / np.float32(out_size)
        i0 = np.minimum(np.floor(dst.astype(np.float32) * scale).astype(np.int64), in_size - 1)
        index = np.stack([i0, i0], axis=1)
        weight = np.zeros((out_size, 2))
        weight[:, 0] = 1.0
        return AxisTaps(index, weight)
    # eq. (8): the source coordinate of each output index
    if align_corners:
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        src = dst * scale
    else:
        src = np.maximum((dst + 0.5) * (in_size / out_size) - 0.5, 0.0)
    # eq. (9): two neighbours, the right one clamped to the border
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.where(i0 < in_size - 1, i0 + 1, i0)
    l1 = src - i0
    return AxisTaps(np.stack([i0, i1], axis=1), np.stack([1.0 - l1, l1], axis=1))


# --8<-- [start:adjoint_taps]
def adjoint_taps(taps: AxisTaps, in_size: int) -> AdjointTaps:
    """Transpose the tap table into CSR rows of ``A^T`` (one row per input index)."""
    out_size = taps.index.shape[0]
    # (out, 2) -> (2 * out,) entries, each an (input index, output index, weight) triple
    in_index = taps.index.reshape(-1)
    out_index = np.repeat(np.arange(out_size), 2)
    weight = taps.weight.reshape(-1)
    # stable sort by input index keeps each row's entries in increasing output order
    order = np.argsort(in_index, kind="stable")
    indptr = np.zeros(in_size + 1, dtype=np.int64)
    np.cumsum(np.bincount(in_index, minlength=in_size), out=indptr[1:])
    return AdjointTaps(indptr, out_index[order].astype(np.int64), weight[order])
# --8<-- [end:adjoint_taps]
