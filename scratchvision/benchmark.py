"""``scratchvision bench``: time the fast tiers against the torch / torchvision references.

For each bench case (``BENCH_CASES`` of the suites in :mod:`scratchvision.verify`) this
times, in one process and on the same inputs:

* every tier the op offers that can run here except ``loop`` (pure Python, far too slow at
  these shapes); ``cuda`` only on a real GPU -- numba's CUDA simulator is never timed;
* the reference (e.g. ``F.grid_sample``) on the CPU, and on the GPU when there is one.

Each contender is run once to warm up (numba compiles or loads its cache, torch allocates),
then ``repeats`` times, forward and forward+backward, with the contenders *interleaved* within
each repeat so that a burst of load from elsewhere on the machine hits all of them alike. The
table reports median milliseconds and the speed-up over the reference of the same device (CPU
tiers against torch on the CPU, the cuda tier against torch on the GPU). Quote the ratios, not
the absolute times. ``--quick`` runs the same code on small shapes, as a smoke test only. A
case without a backward (e.g. ``nms``) times the forward only; its forward+backward columns
say "no backward" (``None`` in the JSON rows).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np

from ._dispatch import TIERS, tier_status
from .cases import BenchCase, Timed
from .verify import bench_cases, suites_with

REPEATS = 7
QUICK_REPEATS = 2
DTYPE = "float32"

# tier -> why it is not timed (in addition to tiers that cannot run here at all)
NOT_TIMED = {"loop": "not timed: pure-Python loops, far too slow at these shapes"}

#: what ``scratchvision bench NAME`` accepts: the suites of :mod:`scratchvision.verify` with
#: bench cases (the heavy operators, then the detection ops)
BENCH_SUITES = suites_with("BENCH_CASES")




# ----------------------------------------------------------------------------- environment

def _torch():
    """The torch module, or None when it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def _gpu_name(torch) -> str | None:
    if torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0)


def machine_line(torch, quick: bool, repeats: int) -> str:
    """One line saying where and how the numbers were taken."""
    import numba

    parts = [f"{os.cpu_count()} CPU cores",
             f"numba {numba.__version__} with {numba.get_num_threads()} threads"]
    if torch is None:
        parts.append("torch not installed")
    else:
        parts.append(f"torch {torch.__version__} with {torch.get_num_threads()} threads")
    gpu = _gpu_name(torch)
    if gpu:
        parts.append(f"GPU {gpu}")
    parts.append(DTYPE)
    parts.append(f"median of {repeats} runs after a warm-up")
    if quick:
        parts.append("QUICK shapes (smoke test, not a measurement)")
    return ", ".join(parts)


# ----------------------------------------------------------------------------- timing

@dataclass
class Contender:
    """Something timed in a case: one of our tiers, or a reference on one device."""

    label: str
    device: str  # "cpu" or "gpu": the speed-up is taken against the reference of this device
    forward: Timed
    forward_backward: Timed | None  # None: the op has no backward
    is_reference: bool = False


def _synchronised(fn: Timed | None, torch) -> Timed | None:
    if fn is None:
        return None

    def run():
        fn()
        torch.cuda.synchronize()
    return run


def _contenders(case: BenchCase, inputs: dict, torch, notes: list) -> list[Contender]:
    """Everything to time for ``case``; what is left out is explained in ``notes``."""
    found = []
    for tier in TIERS:
        status = tier_status(tier)
        if tier not in case.tiers:
            notes.append((tier, f"not timed: {case.name} has no {tier} tier"))
        elif tier in NOT_TIMED:
            notes.append((tier, NOT_TIMED[tier]))
        elif not status.available:
            notes.append((tier, f"unavailable: {status.detail}"))
        elif tier == "cuda" and status.kind != "GPU":
            notes.append((tier, f"not timed: {status.detail} (the simulator is never timed)"))
        else:
            device = "gpu" if tier == "cuda" else "cpu"
            found.append(Contender(
                f"{tier} ({status.detail})" if tier == "cuda" else tier, device,
                lambda tier=tier: case.forward(tier, **inputs),
                None if case.forward_backward is None else
                lambda tier=tier: case.forward_backward(tier, **inputs)))
    reference = case.reference_name
    if case.reference is None:
        notes.append((reference, "no reference for this case"))
    elif torch is None:
        notes.append((reference, "torch not installed"))
    else:
        forward, forward_backward = case.reference(inputs, "cpu")
        found.append(Contender(f"{reference} (CPU)", "cpu", forward, forward_backward, True))
        gpu = _gpu_name(torch)
        if gpu:
            forward, forward_backward = case.reference(inputs, "cuda")
            found.append(Contender(f"{reference} ({gpu})", "gpu",
                                   _synchronised(forward, torch),
                                   _synchronised(forward_backward, torch), True))
    return found


def _time_once(fn: Timed) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def time_case(case: BenchCase, quick: bool, torch, repeats: int) -> list[dict]:
    """Rows for one case: a timed row per contender, then a row per tier left out."""
    inputs = case.make_inputs(np.random.default_rng(0), quick)
    shape = case.quick_shape if quick else case.shape
    notes = []
    contenders = _contenders(case, inputs, torch, notes)
    for c in contenders:  # warm-up: compile, load caches, allocate
        c.forward()
        if c.forward_backward is not None:
            c.forward_backward()
    forward_ms = {c.label: [] for c in contenders}
    forward_backward_ms = {c.label: [] for c in contenders}
    for _ in range(repeats):
        for c in contenders:
            forward_ms[c.label].append(_time_once(c.forward))
            if c.forward_backward is not None:
                forward_backward_ms[c.label].append(_time_once(c.forward_backward))
    medians = {c.label: (statistics.median(forward_ms[c.label]),
                         statistics.median(forward_backward_ms[c.label])
                         if forward_backward_ms[c.label] else None) for c in contenders}
    reference_of = {c.device: medians[c.label] for c in contenders if c.is_reference}
    rows = []
    for c in contenders:
        fwd, fwd_bwd = medians[c.label]
        ref = reference_of.get(c.device)
        rows.append({
            "case": case.name, "shape": shape, "tier": c.label,
            "fwd_ms": fwd, "fwd_speedup": ref[0] / fwd if ref else None,
            "fwd_bwd_ms": fwd_bwd,
            "fwd_bwd_speedup": (ref[1] / fwd_bwd if ref and None not in (ref[1], fwd_bwd)
                                else None),
            "note": "reference" if c.is_reference else "",
        })
    for tier, why in notes:
        rows.append({"case": case.name, "shape": shape, "tier": tier, "fwd_ms": None,
                     "fwd_speedup": None, "fwd_bwd_ms": None, "fwd_bwd_speedup": None,
                     "note": why})
    return rows


# ----------------------------------------------------------------------------- output

HEADER = ("| case | shape | tier | fwd median ms | fwd speed-up | fwd+bwd median ms "
          "| fwd+bwd speed-up |")
RULE = "|---|---|---|---:|---:|---:|---:|"


def _ms(value) -> str:
    return "" if value is None else f"{value:.2f}"


def _speedup(value, note: str) -> str:
    if note == "reference" and value is not None:
        return "1.00x (reference)"
    return "" if value is None else f"{value:.2f}x"


def markdown_row(row: dict) -> str:
    if row["fwd_ms"] is None:  # a tier left out: say why across the timing columns
        return f"| {row['case']} | {row['shape']} | {row['tier']} | {row['note']} | | | |"
    fwd_bwd_ms = "no backward" if row["fwd_bwd_ms"] is None else _ms(row["fwd_bwd_ms"])
    return (f"| {row['case']} | {row['shape']} | {row['tier']} | {_ms(row['fwd_ms'])} "
            f"| {_speedup(row['fwd_speedup'], row['note'])} | {fwd_bwd_ms} "
            f"| {_speedup(row['fwd_bwd_speedup'], row['note'])} |")


def main(op: str | None, as_json: bool, quick: bool) -> int:
    """Entry point of ``scratchvision bench [op] [--json] [--quick]``; returns the exit code.

    Prints a markdown table (rows appear as each case finishes) or, with ``as_json``, one JSON
    list of row dicts with keys case, shape, tier, fwd_ms, fwd_speedup, fwd_bwd_ms,
    fwd_bwd_speedup, note (times in ms; ``None`` where not timed).
    """
    if op is not None and op not in BENCH_SUITES:
        print(f"scratchvision bench: unknown op {op!r}; choose from "
              f"{', '.join(BENCH_SUITES)}", file=sys.stderr)
        return 2
    torch = _torch()
    repeats = QUICK_REPEATS if quick else REPEATS
    cases = bench_cases([op] if op else BENCH_SUITES)
    rows = []
    if not as_json:
        print(f"scratchvision bench{' ' + op if op else ''}: {machine_line(torch, quick, repeats)}")
        print()
        print(HEADER)
        print(RULE, flush=True)
    for case in cases:
        case_rows = time_case(case, quick, torch, repeats)
        rows.extend(case_rows)
        if not as_json:
            for row in case_rows:
                print(markdown_row(row), flush=True)
    if as_json:
        print(json.dumps(rows, indent=1))
    else:
        print()
        print("speed-up = reference median / tier median on the same device (higher is "
              "faster); the cuda tier is timed through the NumPy API, host<->device copies "
              "included.")
    return 0
