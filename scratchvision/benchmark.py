"""``scratchvision bench``: time the fast tiers against the torch / torchvision references.

For each bench case (``BENCH_CASES`` of the suites in :mod:`scratchvision.verify`) this
times, in one process and on the same inputs:

* every tier the op offers that can run here except ``loop`` (pure Python, far too slow at
  these shapes); ``cuda`` only on a real GPU -- numba's CUDA simulator is never timed;
* the reference (e.g. ``F.grid_sample``) on the CPU, and on the GPU when there is one.

Each contender is run once to warm up (numba compiles or loads its cache, torch allocates),
then ``repeats`` times, forward and forward+backward, with the contenders *interleaved* within
each repeat -- the reference first, then our tiers (numba, cuda, numpy: see
``TIMING_ORDER``), as a user comparing the two in a notebook runs them -- so that a burst of load from elsewhere on the machine hits all of them alike.
``--runs K`` does all of that K times (K runs, each its own warm-up and medians) and reports
the median over the runs and their range: a speed-up holds only if it holds run after run,
not on the best run. The table reports median milliseconds and the speed-up over the
reference of the same device (CPU tiers against torch on the CPU, the cuda tier against torch
on the GPU). Quote the ratios, not the absolute times. ``--quick`` runs the same code on small shapes, as a smoke test only. A
case without a backward (e.g. ``nms``) times the forward only; its forward+backward columns
say "no backward" (``None`` in the JSON rows).

``--device-resident`` times the cuda tier the way a GPU user runs it
(:func:`time_device_resident`):
on arrays already on the GPU, with CUDA events, beside torch on the same GPU with its tensors
already there, and again through the NumPy API, so that the cost of the copies shows. It needs
a real GPU: anywhere else it says so, times nothing (the CUDA simulator is never timed) and
exits 0.
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

# The order the contenders run in within each round: the reference, then the fast tiers, then
# NumPy's. The numba tier follows torch, as in a user's notebook; the NumPy tier runs last
# because its BLAS products leave OpenBLAS's workers busy-waiting for a while, which would slow
# whatever ran right after it (see the design page, "Thread pools").
TIMING_ORDER = ("numba", "cuda", "numpy", "loop")
assert sorted(TIMING_ORDER) == sorted(TIERS)

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


def machine_line(torch, quick: bool, repeats: int, runs: int = 1) -> str:
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
    parts.append(f"median of {repeats} interleaved repeats after a warm-up"
                 + (f", median (range) over {runs} such runs" if runs > 1 else ""))
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
    found = _references(case, inputs, torch, notes)
    for tier in TIMING_ORDER:
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
    return found


def _references(case: BenchCase, inputs: dict, torch, notes: list) -> list[Contender]:
    """The torch reference of ``case`` on the CPU (and on the GPU when there is one)."""
    reference = case.reference_name
    if case.reference is None:
        notes.append((reference, "no reference for this case"))
        return []
    if torch is None:
        notes.append((reference, "torch not installed"))
        return []
    forward, forward_backward = case.reference(inputs, "cpu")
    found = [Contender(f"{reference} (CPU)", "cpu", forward, forward_backward, True)]
    gpu = _gpu_name(torch)
    if gpu:
        forward, forward_backward = case.reference(inputs, "cuda")
        found.append(Contender(f"{reference} ({gpu})", "gpu", _synchronised(forward, torch),
                               _synchronised(forward_backward, torch), True))
    return found


def _time_once(fn: Timed) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def _one_run(contenders: list[Contender], repeats: int, timer=_time_once) -> dict:
    """Warm up, then ``repeats`` interleaved rounds: ``{label: (fwd median, fwd+bwd median or
    None)}`` in ms, each call timed by ``timer(fn) -> ms``."""
    for c in contenders:  # warm-up: compile, load caches, allocate
        c.forward()
        if c.forward_backward is not None:
            c.forward_backward()
    forward_ms = {c.label: [] for c in contenders}
    forward_backward_ms = {c.label: [] for c in contenders}
    for _ in range(repeats):
        for c in contenders:
            forward_ms[c.label].append(timer(c.forward))
            if c.forward_backward is not None:
                forward_backward_ms[c.label].append(timer(c.forward_backward))
    return {c.label: (statistics.median(forward_ms[c.label]),
                      statistics.median(forward_backward_ms[c.label])
                      if forward_backward_ms[c.label] else None) for c in contenders}


def _ratio(reference, value):
    return None if reference is None or value is None else reference / value


def _summary(values: list) -> tuple:
    """(median, min, max) of the values that are not None, or three Nones."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None, None
    return statistics.median(values), min(values), max(values)


def time_case(case: BenchCase, quick: bool, torch, repeats: int, runs: int = 1) -> list[dict]:
    """Rows for one case: a timed row per contender (the median over ``runs`` runs of each
    run's median, and the range of the speed-up over the runs), then a row per tier left out.
    """
    inputs = case.make_inputs(np.random.default_rng(0), quick)
    shape = case.quick_shape if quick else case.shape
    notes = []
    contenders = _contenders(case, inputs, torch, notes)
    per_run = [_one_run(contenders, repeats) for _ in range(runs)]
    rows = []
    for c in contenders:
        reference = next((r for r in contenders if r.is_reference and r.device == c.device),
                         None)
        fwd = _summary([run[c.label][0] for run in per_run])
        fwd_bwd = _summary([run[c.label][1] for run in per_run])
        fwd_speedup = _summary([_ratio(run[reference.label][0], run[c.label][0])
                                for run in per_run] if reference else [])
        fwd_bwd_speedup = _summary([_ratio(run[reference.label][1], run[c.label][1])
                                    for run in per_run] if reference else [])
        rows.append({
            "case": case.name, "shape": shape, "tier": c.label, "runs": runs,
            "fwd_ms": fwd[0], "fwd_speedup": fwd_speedup[0],
            "fwd_speedup_range": list(fwd_speedup[1:]),
            "fwd_bwd_ms": fwd_bwd[0], "fwd_bwd_speedup": fwd_bwd_speedup[0],
            "fwd_bwd_speedup_range": list(fwd_bwd_speedup[1:]),
            "note": "reference" if c.is_reference else "",
        })
    for tier, why in notes:
        rows.append({"case": case.name, "shape": shape, "tier": tier, "runs": runs,
                     "fwd_ms": None, "fwd_speedup": None, "fwd_speedup_range": [None, None],
                     "fwd_bwd_ms": None, "fwd_bwd_speedup": None,
                     "fwd_bwd_speedup_range": [None, None], "note": why})
    return rows


# ----------------------------------------------------------------------------- output

HEADER = ("| case | shape | tier | fwd median ms | fwd speed-up | fwd+bwd median ms "
          "| fwd+bwd speed-up |")
RULE = "|---|---|---|---:|---:|---:|---:|"


def _ms(value) -> str:
    return "" if value is None else f"{value:.2f}"


def _speedup(value, note: str, spread=(None, None)) -> str:
    """``5.47x``, or ``5.47x (5.10-5.80)`` with the range over several runs."""
    if note == "reference" and value is not None:
        return "1.00x (reference)"
    if value is None:
        return ""
    low, high = spread
    if low is None or low == high:
        return f"{value:.2f}x"
    return f"{value:.2f}x ({low:.2f}-{high:.2f})"


def markdown_row(row: dict) -> str:
    if row["fwd_ms"] is None:  # a tier left out: say why across the timing columns
        return f"| {row['case']} | {row['shape']} | {row['tier']} | {row['note']} | | | |"
    fwd_bwd_ms = "no backward" if row["fwd_bwd_ms"] is None else _ms(row["fwd_bwd_ms"])
    return (f"| {row['case']} | {row['shape']} | {row['tier']} | {_ms(row['fwd_ms'])} "
            f"| {_speedup(row['fwd_speedup'], row['note'], row['fwd_speedup_range'])} "
            f"| {fwd_bwd_ms} "
            f"| {_speedup(row['fwd_bwd_speedup'], row['note'], row['fwd_bwd_speedup_range'])} |")


# ----------------------------------------------------------------------------- device-resident

NEEDS_GPU = ("scratchvision bench --device-resident needs a real GPU: the cuda tier here is "
             "{detail}; nothing was timed (the CUDA simulator is never timed). Run it on a "
             "machine with an NVIDIA GPU, numba-cuda and torch.")

DEVICE_HEADER = ("| case | shape | contender | fwd ms | fwd vs torch | fwd+bwd ms "
                 "| fwd+bwd vs torch | target | copies MB | traffic MB fwd / fwd+bwd "
                 "| % of peak fwd / fwd+bwd |")
DEVICE_RULE = "|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|"


def _event_timer(cuda):
    """A timer for :func:`_one_run` that measures with CUDA events: everything queued on the
    default stream between the two records, kernels and the gaps while Python launches the
    next one (numba's launch overhead is part of the cost), copies too when the call makes
    them. torch launches on the same legacy default stream (unless a script switched streams),
    so its kernels fall between the records as well."""
    def timer(fn: Timed) -> float:
        start, stop = cuda.event(), cuda.event()
        cuda.synchronize()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop)
    return timer


def peak_bandwidth(cuda) -> float | None:
    """The GPU's theoretical memory bandwidth in bytes/s (double data rate x memory clock x
    bus width), or None when the driver does not report them."""
    try:
        device = cuda.get_current_device()
        clock_khz, bus_bits = device.MEMORY_CLOCK_RATE, device.GLOBAL_MEMORY_BUS_WIDTH
    except Exception:  # pragma: no cover - driver-specific
        return None
    return 2.0 * clock_khz * 1e3 * bus_bits / 8 if clock_khz and bus_bits else None


def _nbytes(result) -> int:
    """Bytes of a result: an array (host or device), None, or a tuple of them."""
    if isinstance(result, tuple):
        return sum(_nbytes(r) for r in result)
    return 0 if result is None else int(result.nbytes)


def compulsory_traffic(inputs: dict, forward_result, backward_result) -> tuple[int, int]:
    """(forward, forward+backward) bytes if every float input were read once and every output
    written once per call (the forward does not read ``gy``; the backward reads the inputs
    again and ``gy``): the traffic no implementation avoids, a lower bound on what the kernels
    move -- except where the backward ignores an input's values (``resize_backward`` needs
    only ``x``'s shape: 34 MB fewer at the benchmark shape). docs/gpu.md lists, per kernel,
    what ours move on top."""
    floats = {k: v for k, v in inputs.items() if v.dtype.kind == "f"}
    read = sum(v.nbytes for k, v in floats.items() if k != "gy")
    forward = read + _nbytes(forward_result)
    backward = read + floats["gy"].nbytes + _nbytes(backward_result)
    return forward, forward + backward


def _verdict(value, target) -> str:
    if target is None or value is None:
        return ""
    met = "met" if value >= target else f"missed by {100 * (1 - value / target):.0f}%"
    return f">= {target:.2f}x: {met}"


def device_resident_case(case: BenchCase, quick: bool, torch, cuda, repeats: int, runs: int,
                         peak: float | None) -> list[dict]:
    """Rows for one case: torch on the GPU (tensors already there), the cuda tier on device
    arrays, and the cuda tier through the NumPy API (copies included); medians over ``runs``
    runs of CUDA-event times."""
    from .ops.cuda_common import COPIES

    inputs = case.make_inputs(np.random.default_rng(0), quick)
    on_gpu = {k: cuda.to_device(v) if v.dtype.kind == "f" else v for k, v in inputs.items()}
    gpu = _gpu_name(torch) or "GPU"
    contenders = []
    if torch is not None and case.reference is not None:
        forward, forward_backward = case.reference(inputs, "cuda")
        contenders.append(Contender(f"{case.reference_name} ({gpu}), tensors on the GPU",
                                    "gpu", forward, forward_backward, True))
    contenders.append(Contender(
        "cuda tier, device arrays", "gpu", lambda: case.forward("cuda", **on_gpu),
        lambda: case.forward_backward("cuda", **on_gpu)))
    contenders.append(Contender(
        "cuda tier, NumPy in/out (copies)", "gpu", lambda: case.forward("cuda", **inputs),
        lambda: case.forward_backward("cuda", **inputs)))
    per_run = [_one_run(contenders, repeats, _event_timer(cuda)) for _ in range(runs)]
    traffic = compulsory_traffic(inputs, case.forward("cuda", **on_gpu),
                                 case.forward_backward("cuda", **on_gpu))
    COPIES.reset()
    case.forward_backward("cuda", **inputs)  # what the NumPy path copies per fwd+bwd
    copied = COPIES.to_device + COPIES.to_host
    shape = case.quick_shape if quick else case.shape
    reference = contenders[0] if contenders[0].is_reference else None
    rows = []
    for c in contenders:
        fwd = _summary([run[c.label][0] for run in per_run])[0]
        fwd_bwd = _summary([run[c.label][1] for run in per_run])[0]
        speedups = [None, None]
        if reference is not None:
            speedups = [_summary([_ratio(run[reference.label][i], run[c.label][i])
                                  for run in per_run])[0] for i in (0, 1)]
        ours = c.label == "cuda tier, device arrays"
        copies = copied if "NumPy" in c.label else 0
        fraction = [traffic[i] / (ms * 1e-3) / peak if peak and ms else None
                    for i, ms in enumerate((fwd, fwd_bwd))]
        rows.append({
            "case": case.name, "shape": shape, "contender": c.label, "runs": runs,
            "fwd_ms": fwd, "fwd_speedup": speedups[0], "fwd_bwd_ms": fwd_bwd,
            "fwd_bwd_speedup": speedups[1],
            "target": case.gpu_target if ours else None,
            "verdict": (f"fwd {_verdict(speedups[0], case.gpu_target)}; "
                        f"fwd+bwd {_verdict(speedups[1], case.gpu_target)}"
                        if ours and case.gpu_target and reference else ""),
            "copied_bytes": copies, "traffic_bytes": list(traffic),
            "fraction_of_peak": fraction,
            "note": "reference" if c.is_reference else "",
        })
    return rows


def _percent(value) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def device_markdown_row(row: dict) -> str:
    traffic = " / ".join(f"{b / 1e6:.1f}" for b in row["traffic_bytes"])
    return (f"| {row['case']} | {row['shape']} | {row['contender']} | {_ms(row['fwd_ms'])} "
            f"| {_speedup(row['fwd_speedup'], row['note'])} | {_ms(row['fwd_bwd_ms'])} "
            f"| {_speedup(row['fwd_bwd_speedup'], row['note'])} | {row['verdict']} "
            f"| {row['copied_bytes'] / 1e6:.1f} | {traffic} "
            f"| {' / '.join(_percent(f) for f in row['fraction_of_peak'])} |")


def time_device_resident(op: str | None, as_json: bool, quick: bool, runs: int = 1) -> int:
    """Entry point of ``scratchvision bench [op] --device-resident``; returns the exit code.

    For every bench case whose op has a cuda tier, three contenders on the GPU, timed with CUDA
    events after a warm-up, interleaved, median of ``repeats`` (and of ``runs`` runs): torch
    with its tensors already on the GPU (the reference), the cuda tier on numba device arrays
    (kernel-only: no copy; numba's launch overhead included), and the cuda tier through the
    NumPy API (end to end: the copies to and from the device included). Each row also gives the
    bytes the NumPy path copied per forward+backward, the compulsory memory traffic of the
    call (:func:`compulsory_traffic`) and that traffic over the time as a fraction of the GPU's
    theoretical bandwidth (:func:`peak_bandwidth`). Without a real GPU it prints why and
    returns 0 without timing anything.
    """
    status = tier_status("cuda")
    if status.kind != "GPU":
        note = NEEDS_GPU.format(detail=f"{status.kind} ({status.detail})")
        if as_json:
            print(json.dumps([]))
            print(note, file=sys.stderr)
        else:
            print(note)
        return 0
    from numba import cuda

    torch = _torch()
    repeats = QUICK_REPEATS if quick else REPEATS
    peak = peak_bandwidth(cuda)
    cases = [c for c in bench_cases([op] if op else BENCH_SUITES) if "cuda" in c.tiers]
    if not as_json:
        print(f"scratchvision bench{' ' + op if op else ''} --device-resident: "
              f"{machine_line(torch, quick, repeats, runs)}, CUDA-event times, theoretical "
              f"memory bandwidth {'unknown' if peak is None else f'{peak / 1e9:.0f} GB/s'}")
        print()
        print(DEVICE_HEADER)
        print(DEVICE_RULE, flush=True)
    rows = []
    for case in cases:
        case_rows = device_resident_case(case, quick, torch, cuda, repeats, runs, peak)
        rows.extend(case_rows)
        if not as_json:
            for row in case_rows:
                print(device_markdown_row(row), flush=True)
    if as_json:
        print(json.dumps(rows, indent=1))
    else:
        print()
        print("fwd / fwd+bwd ms: CUDA-event time of one call, median; device arrays = "
              "inputs already on the GPU, results left there (kernels and numba's launch "
              "overhead, no copy); NumPy in/out = the same call on NumPy arrays, copies to and "
              "from the device included. vs torch = torch's time / ours, torch's tensors on "
              "the same GPU. copies MB = bytes the NumPy path moved per fwd+bwd. traffic = "
              "every input read and every output written once (the compulsory traffic); "
              "% of peak = traffic / time over the theoretical bandwidth (docs/gpu.md).")
    return 0


def main(op: str | None, as_json: bool, quick: bool, runs: int = 1,
         device_resident: bool = False) -> int:
    """Entry point of ``scratchvision bench [op] [--json] [--quick] [--runs K]
    [--device-resident]``; returns the exit code. With ``device_resident`` it runs
    :func:`time_device_resident` instead.

    Prints a markdown table (rows appear as each case finishes) or, with ``as_json``, one JSON
    list of row dicts with keys case, shape, tier, runs, fwd_ms, fwd_speedup,
    fwd_speedup_range, fwd_bwd_ms, fwd_bwd_speedup, fwd_bwd_speedup_range, note (times in ms,
    medians over the runs; the ranges are [min, max] over the runs; ``None`` where not timed).
    """
    if op is not None and op not in BENCH_SUITES:
        print(f"scratchvision bench: unknown op {op!r}; choose from "
              f"{', '.join(BENCH_SUITES)}", file=sys.stderr)
        return 2
    if device_resident:
        return time_device_resident(op, as_json, quick, runs)
    torch = _torch()
    repeats = QUICK_REPEATS if quick else REPEATS
    cases = bench_cases([op] if op else BENCH_SUITES)
    rows = []
    if not as_json:
        print(f"scratchvision bench{' ' + op if op else ''}: "
              f"{machine_line(torch, quick, repeats, runs)}")
        print()
        print(HEADER)
        print(RULE, flush=True)
    for case in cases:
        case_rows = time_case(case, quick, torch, repeats, runs)
        rows.extend(case_rows)
        if not as_json:
            for row in case_rows:
                print(markdown_row(row), flush=True)
    if as_json:
        print(json.dumps(rows, indent=1))
    else:
        print()
        print("speed-up = reference median / tier median on the same device (higher is "
              "faster), the reference timed first in each round; the cuda tier is timed through "
              "the NumPy API, host<->device copies included (--device-resident times it on "
              "arrays already on the GPU).")
    return 0
