"""The two commands: ``scratchvision check`` must be able to fail, and must say honestly which
tiers ran; ``scratchvision bench --quick`` must produce its table (a smoke test: speed is never
asserted here)."""

import json

import numpy as np
import pytest

from scratchvision import _dispatch, cli, selfcheck, verify
from scratchvision.cases import CheckCase
from scratchvision.ops.bilinear import sample_backward
from scratchvision.verify import bilinear as check_cases


def _json_rows(capsys, argv):
    code = cli.main(argv)
    return code, json.loads(capsys.readouterr().out)


def test_check_passes_and_reports_every_case(capsys):
    code, rows = _json_rows(capsys, ["check", "bilinear", "--backend", "numpy", "--cases", "1",
                                     "--json"])
    assert code == 0
    assert {r["op"] for r in rows} == {c.name for c in check_cases.CHECK_CASES}
    for r in rows:
        assert r["tier"] == "numpy" and r["status"] == "ok"
        assert r["forward_error"] <= selfcheck.FORWARD_RTOL


def test_check_fails_on_a_wrong_backward(capsys, monkeypatch):
    def off_by_one_percent(gy, image, points, backend):
        grads = sample_backward(gy, image, points, backend=backend)
        return grads._replace(grad_points=grads.grad_points * 1.01)

    broken = check_cases.CHECK_CASES[0]
    assert broken.name == "bilinear.sample"
    patched = CheckCase(broken.name, broken.make_inputs, broken.forward,
                                  off_by_one_percent, broken.wrt)
    monkeypatch.setattr(check_cases, "CHECK_CASES", [patched] + check_cases.CHECK_CASES[1:])
    code, rows = _json_rows(capsys, ["check", "--backend", "numpy", "--cases", "1", "--json"])
    assert code == 1
    status = {r["op"]: r["status"] for r in rows}
    assert status["bilinear.sample"].startswith("FAIL")
    assert "points" in status["bilinear.sample"]


def test_check_fails_on_a_wrong_forward(capsys, monkeypatch):
    broken = check_cases.CHECK_CASES[1]

    def shifted_forward(x, backend):
        out = broken.forward(x, backend=backend)
        return out + 1e-6 if backend == "numpy" else out

    patched = CheckCase(broken.name, broken.make_inputs, shifted_forward,
                                  broken.backward, broken.wrt)
    cases = list(check_cases.CHECK_CASES)
    cases[1] = patched
    monkeypatch.setattr(check_cases, "CHECK_CASES", cases)
    code, rows = _json_rows(capsys, ["check", "--backend", "numpy", "--cases", "1", "--json"])
    assert code == 1
    row = next(r for r in rows if r["op"] == broken.name)
    assert row["status"] == "FAIL" and row["forward_error"] > selfcheck.FORWARD_RTOL


def test_check_reports_an_unavailable_tier_without_failing(capsys, monkeypatch):
    def no_cuda(tier):
        if tier == "cuda":
            return _dispatch.TierStatus(False, "unavailable", "no CUDA GPU (test)")
        return _dispatch.TierStatus(True, "cpu", "CPU")

    monkeypatch.setattr(selfcheck, "tier_status", no_cuda)
    monkeypatch.setattr(selfcheck.importlib.util, "find_spec", lambda name: None)
    code, rows = _json_rows(capsys, ["check", "--backend", "cuda", "--json"])
    assert code == 0
    assert rows and all(r["status"] == "unavailable: no CUDA GPU (test)" for r in rows)


def test_check_runs_the_cuda_tier_and_says_where(capsys):
    # conftest switches on the simulator when there is no GPU; with a GPU this is the real one
    status = _dispatch.tier_status("cuda")
    if not status.available:
        pytest.skip(f"cuda tier unavailable: {status.detail}")
    code, rows = _json_rows(capsys, ["check", "--backend", "cuda", "--cases", "1", "--json"])
    assert code == 0
    expected = "simulator" if status.kind == "simulator" else status.detail
    assert rows and all(r["device"] == expected for r in rows)
    # every op runs; in the simulator the composite layers say they were skipped, and why
    skipped = {r["op"] for r in rows if r["status"].startswith("skipped")}
    assert all(r["status"] == "ok" for r in rows if r["op"] not in skipped)
    layer_cases = {case.name for case in verify.check_cases(["layers"])
                   if not case.in_simulator}
    assert skipped == (layer_cases if status.kind == "simulator" else set())
    assert any(r["op"].startswith("ms_deform_attn") for r in rows)


def test_check_table_and_unknown_op(capsys):
    assert cli.main(["check", "bilinear", "--backend", "loop", "--cases", "1"]) == 0
    out = capsys.readouterr().out
    assert "all checks passed" in out and "bilinear.sample" in out
    with pytest.raises(SystemExit, match="unknown op 'nope'"):
        cli.main(["check", "nope"])


def test_bench_quick_prints_a_row_per_tier(capsys):
    assert cli.main(["bench", "bilinear", "--quick", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows, "bench printed no rows"
    text = json.dumps(rows)
    for name in ("bilinear.sample", "bilinear.resize", "numba", "numpy"):
        assert name in text
    timed = [r for r in rows if isinstance(r, dict) and r.get("fwd_ms") is not None]
    assert timed and all(np.isfinite(r["fwd_ms"]) and r["fwd_ms"] > 0 for r in timed)


def test_bench_limits_measures_bandwidth_and_product_rate(capsys, monkeypatch):
    from scratchvision.verify import machine

    limits = machine.machine_limits(repeats=1, elements=2 ** 16, n=64)
    assert set(limits) == {"bandwidth_gb_s", "sgemm_gflop_s"}
    assert all(np.isfinite(v) and v > 0 for v in limits.values())
    # the command prints what the measurement returns (small arrays here: a smoke test)
    monkeypatch.setattr(machine, "machine_limits",
                        lambda: {"bandwidth_gb_s": 12.5, "sgemm_gflop_s": 150.0})
    assert cli.main(["bench", "--limits"]) == 0
    assert "12.5 GB/s" in capsys.readouterr().out
    assert cli.main(["bench", "--limits", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"bandwidth_gb_s": 12.5, "sgemm_gflop_s": 150.0}
