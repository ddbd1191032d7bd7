"""What one attention layer costs, dense against deformable: Deformable DETR's first claim,
measured on this machine.

Every position of an ``H x W`` map asks a question (``Lq = HW`` queries). Dense attention
compares each with every position of the map: ``M`` weight matrices of ``HW x HW``.
Deformable attention gives each query ``K`` sampled points on each of the ``L`` levels of the
map's pyramid per head: ``HW x M·L·K`` weights. On a 100x100 map that is 10⁴ x 10⁴ weights
per head against 10⁴ x 128 (M=8, L=4, K=4) in all: the dense layer's memory grows with
``(HW)²``, the deformable one's with ``HW``.

:func:`attention_cost` times the forward of one layer of each kind (this package's
:class:`~scratchvision.nn.MultiheadAttention` and :class:`~scratchvision.nn.MSDeformAttn`,
float32) and measures the peak memory its forward allocates (``tracemalloc``, which sees
every NumPy array). Before it runs a dense layer it predicts that layer's peak from the
previous size's measured ``peak / weights`` ratio and skips the run when the prediction
exceeds the memory the machine has available: that row says where dense attention stops
fitting.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tracemalloc

import numpy as np

from ..nn import MSDeformAttn, MultiheadAttention
from ..nn.deformable_encoder import encoder_reference_points
from ..ops.ms_deform_attn import level_start_index_of
from .machine import median_seconds

__all__ = ["AttentionCost", "attention_cost", "plot_attention_cost", "pyramid_shapes",
           "available_memory"]

#: the map sides of the measurement (the finest level of a 4-level pyramid)
SIDES = (25, 50, 100, 200)


@dataclasses.dataclass
class AttentionCost:
    """One layer at one size.

    ``kind``: ``"dense"`` or ``"deformable"``; ``side``: the map's side; ``queries``: ``Lq =
    side²``; ``weights_bytes``: the bytes of the attention weights alone (``M·Lq·Lq`` or
    ``Lq·M·L·K`` float32); ``peak_bytes``: the
    measured peak the forward allocated, or the predicted one when it was not run;
    ``forward_ms``: the median forward time, ``None`` when the layer was not run because it
    would not fit (``fits`` False).
    """

    kind: str
    side: int
    queries: int
    weights_bytes: int
    peak_bytes: int
    forward_ms: float | None
    fits: bool


def pyramid_shapes(side: int, n_levels: int) -> np.ndarray:
    """(n_levels, 2) int64: a ``side x side`` map and its halvings (rounded up), as strided
    convolutions make them, finest first."""
    shapes = [(side, side)]
    for _ in range(n_levels - 1):
        h, w = shapes[-1]
        shapes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return np.array(shapes, dtype=np.int64)


def available_memory() -> int:
    """Bytes the machine can still give (``MemAvailable`` of /proc/meminfo; where that file
    does not exist, physical pages available)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _peak_bytes(call) -> int:
    call()  # compile first: numba's and numpy's one-off allocations are not the layer's
    # (this call is also the warm-up of the timing that follows)
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def attention_cost(sides=SIDES, d_model: int = 256, n_heads: int = 8, n_levels: int = 4,
                   n_points: int = 4, repeats: int = 3, memory_limit: int | None = None,
                   backend: str = "auto", seed: int = 0) -> list[AttentionCost]:
    """Time and memory of one attention layer's forward, dense and deformable, over a
    ``side x side`` map for each side in ``sides`` (ascending): batch 1, ``d_model``
    channels, ``n_heads`` heads; the deformable layer samples ``n_points`` points per head on
    each level of the ``n_levels``-level pyramid of :func:`pyramid_shapes` (the paper's 256,
    8, 4, 4 by default); float32.

    ``memory_limit``: bytes a dense run may use (default: :func:`available_memory` at the call,
    less 2 GiB of headroom); a dense layer whose predicted peak exceeds it is not run.
    Returns two :class:`AttentionCost` rows per side, dense first.
    """
    rng = np.random.default_rng(seed)
    limit = memory_limit if memory_limit is not None else available_memory() - 2 ** 31
    dense = MultiheadAttention(d_model, n_heads, rng=rng, dtype=np.float32)
    deformable = MSDeformAttn(d_model, n_levels, n_heads, n_points, rng=rng, dtype=np.float32,
                              backend=backend)
    dense.eval()
    deformable.eval()
    rows: list[AttentionCost] = []
    peak_per_weight = None  # the dense layer's measured peak / weights bytes, last size run
    for side in sides:
        queries = side * side
        shapes = pyramid_shapes(side, n_levels)
        areas = shapes[:, 0] * shapes[:, 1]
        start_index = level_start_index_of(shapes)
        pyramid = rng.standard_normal((1, int(areas.sum()), d_model)).astype(np.float32)
        src = pyramid[:, :queries]  # (1, Lq, d_model): the finest level asks
        # each query's reference point: its own pixel centre, on every level
        reference = encoder_reference_points(shapes)[:, :queries].astype(np.float32)

        dense_weights = 4 * n_heads * queries * queries
        predicted = None if peak_per_weight is None else int(peak_per_weight * dense_weights)
        if predicted is not None and predicted > limit:
            rows.append(AttentionCost("dense", side, queries, dense_weights, predicted,
                                      None, False))
        else:
            def run_dense():
                dense(src, src, src)
            peak = _peak_bytes(run_dense)  # warms up too
            peak_per_weight = peak / dense_weights
            ms = 1e3 * median_seconds(run_dense, repeats, warmup=False)
            rows.append(AttentionCost("dense", side, queries, dense_weights, peak, ms, True))

        def run_deformable():
            deformable(src, reference, pyramid, shapes, start_index)
        peak = _peak_bytes(run_deformable)
        ms = 1e3 * median_seconds(run_deformable, repeats, warmup=False)
        rows.append(AttentionCost("deformable", side, queries,
                                  4 * queries * n_heads * n_levels * n_points, peak, ms, True))
    return rows


def plot_attention_cost(rows: list[AttentionCost], memory_line: int | None = None):
    """A figure of :func:`attention_cost`'s rows: forward time (left) and peak memory (right)
    against the map, log-log, dense and deformable; a dense layer that was not run is drawn
    hollow at its predicted memory. ``memory_line``: bytes to mark (the machine's memory).
    Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    fig, (ax_time, ax_memory) = plt.subplots(1, 2, figsize=(11, 3.8))
    for kind, marker in (("dense", "o"), ("deformable", "s")):
        mine = [r for r in rows if r.kind == kind]
        run = [r for r in mine if r.fits]
        ax_time.plot([r.side for r in run], [r.forward_ms for r in run], marker + "-",
                     label=kind)
        line, = ax_memory.plot([r.side for r in run], [r.peak_bytes / 1e6 for r in run],
                               marker + "-", label=kind)
        skipped = [r for r in mine if not r.fits]
        if skipped:
            ax_memory.plot([r.side for r in skipped], [r.peak_bytes / 1e6 for r in skipped],
                           marker, mfc="none", color=line.get_color(),
                           label=f"{kind}, predicted (not run)")
    if memory_line:
        ax_memory.axhline(memory_line / 1e6, color="grey", ls="--", label="the machine's memory")
    sides = sorted({r.side for r in rows})
    ax_time.set_ylabel("forward ms")
    ax_memory.set_ylabel("peak MB allocated by the forward")
    for ax in (ax_time, ax_memory):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sides, [f"{s}²" for s in sides])
        ax.minorticks_off()
        ax.set_xlabel("map side")
        ax.legend(fontsize=8)
    return fig
