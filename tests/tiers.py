"""Run one case on every tier and compare the results: the helper every tier test uses.

    results = run_on_every_tier(bilinear.sample, image, points)   # {"loop": out, "numpy": ...}
    assert_tiers_agree(results)                     # every tier against the loop tier
    assert_each_tier(results, expected)             # every tier against a hand-computed answer
    assert_each_tier_equal(results, expected)       # ... bit for bit (identities, indexing)

A result is an array or a tuple of arrays (e.g. a ``SampleGrads``); tuples are compared entry
by entry. Shapes and dtypes must match exactly, values to the tolerance of :func:`tolerance`.

The cuda tier runs wherever ``tier_status("cuda")`` says it can: on a real GPU, or in numba's
CUDA simulator, which ``tests/conftest.py`` switches on when there is no GPU. The simulator
runs every GPU thread as a Python thread, thousands of times slower than the hardware, so it
only gets tiny cases: a caller whose case is not tiny passes ``simulated_cuda=False`` (on a real
GPU the cuda tier then still runs).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from scratchvision import TIERS, tier_status

REFERENCE = "loop"

#: the two dtypes every op supports; float32 in gives float32 out
DTYPES = (np.float64, np.float32)

#: float64 tiers agree with the loop tier to 1e-10 relative (docs/design.md, the op contract).
FLOAT64_RTOL = 1e-10
#: float32: the unit roundoff is 2**-24 ~ 6e-8 and every entry in these tests is a sum of at
#: most ~50 products of 2-4 rounded factors (4 taps x 12 points, or 4 taps x 3 channels), so
#: two correct float32 computations can differ by about 2 * 55 * 6e-8 ~ 7e-6 of the summands'
#: magnitude. 2e-5 leaves room for that and still catches a wrong weight or tap (errors of
#: order 1e-2 or more).
FLOAT32_RTOL = 2e-5


def available_tiers(*, simulated_cuda: bool = True,
                    offered: tuple[str, ...] = TIERS) -> tuple[str, ...]:
    """The tiers of ``offered`` (what the op implements; all four by default) that can run
    here, in ``TIERS`` order; the cuda tier in the simulator only when ``simulated_cuda``."""
    tiers = []
    for tier in (t for t in TIERS if t in offered):
        status = tier_status(tier)
        if not status.available:
            continue
        if tier == "cuda" and status.kind == "simulator" and not simulated_cuda:
            continue
        tiers.append(tier)
    return tuple(tiers)


def run_on_every_tier(fn: Callable, *args, simulated_cuda: bool = True,
                      offered: tuple[str, ...] = TIERS, **kwargs) -> dict:
    """``{tier: fn(*args, backend=tier, **kwargs)}`` for every available tier of ``offered``."""
    return {tier: fn(*args, backend=tier, **kwargs)
            for tier in available_tiers(simulated_cuda=simulated_cuda, offered=offered)}


def tolerance(dtype) -> float:
    """The relative tolerance two tiers are held to for results of ``dtype``."""
    return FLOAT32_RTOL if np.dtype(dtype) == np.float32 else FLOAT64_RTOL


def _as_tuple(result) -> tuple:
    return tuple(result) if isinstance(result, tuple) else (result,)


def _entry_names(result) -> tuple[str, ...]:
    fields = getattr(result, "_fields", None)  # a NamedTuple names its entries
    if fields is not None:
        return tuple(fields)
    return tuple(f"[{i}]" for i in range(len(_as_tuple(result))))


def assert_close(actual, expected, *, label: str, rtol: float | None = None,
                 atol: float | None = None) -> None:
    """Compare two results (arrays or tuples of arrays): same structure, shapes and dtypes;
    values to ``|a - e| <= atol + rtol * |e|`` elementwise.

    ``rtol`` defaults to :func:`tolerance` of ``actual``'s dtype. ``atol`` defaults to
    ``rtol * max(1, max |expected|)``: an entry that is a sum of terms which cancel is only
    accurate relative to the terms, not to the (small) sum, and the terms are of the size of the
    largest entries. NaNs must sit in the same places.
    """
    actual_entries, expected_entries = _as_tuple(actual), _as_tuple(expected)
    assert len(actual_entries) == len(expected_entries), (
        f"{label}: {len(actual_entries)} results, expected {len(expected_entries)}")
    for name, a, e in zip(_entry_names(expected), actual_entries, expected_entries):
        if a is None or e is None:
            assert a is None and e is None, f"{label} {name}: {a!r} vs {e!r}"
            continue
        a, e = np.asarray(a), np.asarray(e)
        where = f"{label} {name}"
        assert a.shape == e.shape, f"{where}: shape {a.shape}, expected {e.shape}"
        assert a.dtype == e.dtype, f"{where}: dtype {a.dtype}, expected {e.dtype}"
        entry_rtol = tolerance(a.dtype) if rtol is None else rtol
        finite = e[np.isfinite(e)]
        scale = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
        entry_atol = entry_rtol * scale if atol is None else atol
        np.testing.assert_allclose(a, e, rtol=entry_rtol, atol=entry_atol, equal_nan=True,
                                   err_msg=where)


def assert_tiers_agree(results: dict, reference: str = REFERENCE, *, rtol: float | None = None,
                       atol: float | None = None) -> None:
    """Every tier's result equals the ``reference`` tier's (see :func:`assert_close`)."""
    assert reference in results, f"the reference tier {reference!r} did not run: {list(results)}"
    for tier, result in results.items():
        if tier != reference:
            assert_close(result, results[reference], label=f"tier {tier!r} vs {reference!r}:",
                         rtol=rtol, atol=atol)


def assert_each_tier(results: dict, expected, *, rtol: float | None = None,
                     atol: float | None = None) -> None:
    """Every tier's result equals ``expected``, an answer worked out by hand."""
    for tier, result in results.items():
        assert_close(result, expected, label=f"tier {tier!r}:", rtol=rtol, atol=atol)


def assert_each_tier_equal(results: dict, expected) -> None:
    """Every tier's result equals ``expected`` exactly (same bits), e.g. for identities."""
    for tier, result in results.items():
        assert len(_as_tuple(result)) == len(_as_tuple(expected)), f"tier {tier!r}: structure"
        for name, a, e in zip(_entry_names(expected), _as_tuple(result), _as_tuple(expected)):
            assert np.asarray(a).dtype == np.asarray(e).dtype, f"tier {tier!r} {name}: dtype"
            np.testing.assert_array_equal(a, e, err_msg=f"tier {tier!r} {name}")


def awkward_layouts(array: np.ndarray) -> dict[str, np.ndarray]:
    """Views of ``array`` (ndim >= 2) that equal it but are not plain C-contiguous arrays:
    the layouts that "just work" (docs/design.md, tests) and must never be written to."""
    readonly = array.copy()
    readonly.flags.writeable = False
    return {
        "fortran": np.asfortranarray(array),
        # a C-contiguous copy of the reversed array, reversed back: strides < 0 on the last axis
        "negative stride": np.ascontiguousarray(array[..., ::-1])[..., ::-1],
        "strided": np.repeat(array, 2, axis=-1)[..., ::2],  # every other element of a buffer
        "transposed": np.ascontiguousarray(np.swapaxes(array, -1, -2)).swapaxes(-1, -2),
        "read-only": readonly,
    }
