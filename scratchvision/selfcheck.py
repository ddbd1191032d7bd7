"""``scratchvision check``: verify every operator's maths on every tier this machine can run.

For each check case (``CHECK_CASES`` of the suites in :mod:`scratchvision.verify`: one per
operator, and the layers') and each tier it can run on:

* forward error: the largest difference from the loop tier (the specification), relative to
  the largest magnitude of the loop tier's output;
* gradient error: :func:`scratchvision.gradcheck` of the tier's own backward against central
  differences of the tier's own forward, in float64, with a random upstream gradient.

A row passes when the forward error is at most ``FORWARD_RTOL`` and the gradient check passes.
The cuda tier runs on the GPU when there is one. Without one, ``check`` runs it in numba's
CUDA simulator in a child process (``NUMBA_ENABLE_CUDASIM=1`` must be set before numba is
imported, and this process has already imported numba for the numba tier) on tiny shapes, and
says so in the ``device`` column.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import numpy as np

from ._dispatch import TIERS, tier_status
from .cases import CheckCase
from .gradcheck import gradcheck
from .verify import check_cases, suites_with

FORWARD_RTOL = 1e-10




#: what ``scratchvision check NAME`` accepts: the suites of :mod:`scratchvision.verify` with
#: check cases (each operator's, and ``layers``)
CHECK_SUITES = suites_with("CHECK_CASES")


def _row(case, tier, device, forward_error, gradient_error, status):
    return {"op": case if isinstance(case, str) else case.name, "tier": tier, "device": device,
            "forward_error": forward_error, "gradient_error": gradient_error, "status": status}


def check_case(case: CheckCase, tier: str, device: str, n_cases: int, tiny: bool) -> dict:
    """Run ``n_cases`` random instances of ``case`` on ``tier``; the worst errors win.

    ``tiny`` (the CUDA simulator): tiny shapes, and the gradient checked along 4 random
    directions per input rather than element by element.
    """
    worst_forward = 0.0
    worst_gradient = 0.0
    failures = []
    for seed in range(n_cases):
        arrays = case.make_inputs(np.random.default_rng(seed), tiny)
        values = list(arrays.values())
        ours = case.forward(*values, backend=tier)
        reference = case.forward(*values, backend="loop")
        scale = max(float(np.max(np.abs(reference), initial=0.0)), 1e-300)
        worst_forward = max(worst_forward,
                            float(np.max(np.abs(ours - reference), initial=0.0)) / scale)
        # The simulator runs each GPU thread as a Python thread: a full Jacobian (two forward
        # calls per input element) would take minutes, so it gets random directions instead.
        report = gradcheck(lambda *a: case.forward(*a, backend=tier),
                           lambda g, *a: case.backward(g, *a, backend=tier),
                           arrays, wrt=case.wrt, seed=seed,
                           mode="directional" if tiny else "auto", n_directions=4)
        worst_gradient = max(worst_gradient, report.max_rel_error)
        if not report.ok:
            failures.append(f"seed {seed}:\n{report}")
    ok = worst_forward <= FORWARD_RTOL and not failures
    status = "ok" if ok else "FAIL"
    if failures:
        status += " (gradient) " + "; ".join(failures)
    return _row(case, tier, device, worst_forward, worst_gradient, status)


def _simulated_cuda_rows(ops, n_cases) -> list[dict]:
    """Run the cuda tier in a child process with the simulator switched on."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    cmd = [sys.executable, "-m", "scratchvision", "check", *ops, "--backend", "cuda",
           "--cases", str(n_cases), "--json"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return [_row(case, "cuda", "simulator", None, None,
                     "FAIL (simulator child crashed: " + " | ".join(tail) + ")")
                for case in check_cases(ops) if "cuda" in case.tiers]


def run_checks(ops, tiers=TIERS, n_cases: int = 3) -> list[dict]:
    rows = []
    for tier in tiers:
        cases = [case for case in check_cases(ops) if tier in case.tiers]
        if not cases:
            continue
        status = tier_status(tier)
        if status.available:
            device = {"GPU": status.detail, "cpu": "CPU"}.get(status.kind, status.kind)
            tiny = status.kind == "simulator"
            for case in cases:
                if tiny and not case.in_simulator:
                    rows.append(_row(case, tier, device, None, None,
                                     "skipped: too slow for the simulator (runs on a GPU)"))
                else:
                    rows.append(check_case(case, tier, device, n_cases, tiny))
        elif tier == "cuda" and importlib.util.find_spec("numba_cuda") is not None:
            rows.extend(_simulated_cuda_rows(ops, n_cases))
        else:
            rows.extend(_row(case, tier, "-", None, None, f"unavailable: {status.detail}")
                        for case in cases)
    return rows


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.1e}"


def format_table(rows) -> str:
    header = ("op", "tier", "device", "forward error", "gradient error", "status")
    body = [(r["op"], r["tier"], r["device"], _fmt(r["forward_error"]),
             _fmt(r["gradient_error"]), r["status"]) for r in rows]
    widths = [max(len(str(line[i])) for line in [header] + body) for i in range(5)]
    lines = []
    for line in [header] + body:
        cells = [str(c).ljust(w) for c, w in zip(line[:5], widths)] + [line[5]]
        lines.append("  ".join(cells))
    lines.insert(1, "  ".join("-" * w for w in widths) + "  ------")
    return "\n".join(lines)


def failed(rows) -> bool:
    return any(r["status"].startswith("FAIL") for r in rows)


def main(ops, backends, as_json: bool, n_cases: int = 3) -> int:
    rows = run_checks(ops, backends, n_cases)
    if as_json:
        print(json.dumps(rows, indent=1))
    else:
        print(format_table(rows))
        print()
        print("forward error: max |tier - loop| / max |loop|; gradient error: worst relative "
              "error of the tier's backward against central differences (float64).")
        print("FAILED" if failed(rows) else "all checks passed")
    return 1 if failed(rows) else 0
