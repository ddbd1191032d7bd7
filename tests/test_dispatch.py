"""The tier registry (``scratchvision._dispatch``): names, availability, ``"auto"``, the
unavailable-tier error, and lazy imports."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import scratchvision
from scratchvision import _dispatch
from scratchvision._dispatch import TierStatus, resolve_backend, tier_status
from scratchvision.ops import bilinear

OP_FUNCTIONS = ("sample", "sample_backward", "resize", "resize_backward")


def test_tier_names():
    assert scratchvision.TIERS == ("loop", "numpy", "numba", "cuda")
    assert _dispatch.BACKENDS == ("auto", "loop", "numpy", "numba", "cuda")
    assert set(_dispatch.TIER_MODULES) == set(scratchvision.TIERS)


@pytest.mark.parametrize("tier", ["loop", "numpy", "numba"])
def test_cpu_tiers_are_available(tier):
    status = tier_status(tier)
    assert status.available and status.kind == "cpu"
    assert resolve_backend(tier) == tier


def test_cuda_tier_runs_in_the_test_suite():
    """tests/conftest.py switches the simulator on when there is no GPU, so the cuda tier is
    always exercised: on a GPU, or in the simulator."""
    status = tier_status("cuda")
    assert status.available, status.detail
    expected = "GPU" if _dispatch.gpu_device_files_present() else "simulator"
    assert status.kind == expected, status


def test_auto_resolves_to_numba_without_a_gpu(monkeypatch):
    for status in (TierStatus(True, "simulator", "numba CUDA simulator"),
                   TierStatus(False, "unavailable", "no GPU")):
        monkeypatch.setattr(_dispatch, "_cuda_status", lambda status=status: status)
        assert resolve_backend("auto") == "numba", status


def test_auto_resolves_to_cuda_on_a_gpu(monkeypatch):
    monkeypatch.setattr(_dispatch, "_cuda_status",
                        lambda: TierStatus(True, "GPU", "a test double"))
    assert resolve_backend("auto") == "cuda"


def test_auto_here():
    expected = "cuda" if tier_status("cuda").kind == "GPU" else "numba"
    assert resolve_backend("auto") == expected


@pytest.mark.parametrize("backend", ["gpu", "CUDA", "", None, 3, "numpy "])
def test_unknown_backend_is_a_value_error_naming_the_choices(backend):
    with pytest.raises(ValueError, match=r"\bbackend\b") as excinfo:
        resolve_backend(backend)
    for name in _dispatch.BACKENDS:
        assert repr(name) in str(excinfo.value)


def test_auto_picks_the_best_tier_a_package_offers(monkeypatch):
    monkeypatch.setattr(_dispatch, "_cuda_status",
                        lambda: TierStatus(True, "GPU", "a test double"))
    assert resolve_backend("auto", ("loop", "numpy", "numba", "cuda")) == "cuda"
    assert resolve_backend("auto", ("loop", "numpy", "numba")) == "numba"
    assert resolve_backend("auto", ("loop", "numpy")) == "numpy"
    assert resolve_backend("auto", ("loop",)) == "loop"


@pytest.mark.parametrize("backend", ["numba", "cuda"])
def test_a_tier_the_package_lacks_is_unavailable_and_named(backend):
    modules = _dispatch.TierModules("scratchvision.ops.bilinear", tiers=("loop", "numpy"))
    with pytest.raises(scratchvision.BackendUnavailableError) as excinfo:
        modules.get(backend)
    message = str(excinfo.value)
    assert repr(backend) in message and "bilinear has no" in message and "'numpy'" in message
    assert modules.get("auto").__name__ == "scratchvision.ops.bilinear.vectorized"


@pytest.mark.parametrize("tiers", [(), ("loop", "gpu")])
def test_tier_modules_rejects_unknown_tiers(tiers):
    with pytest.raises(ValueError, match=r"\btiers\b"):
        _dispatch.TierModules("scratchvision.ops.bilinear", tiers=tiers)


def test_unknown_tier_status_is_a_value_error():
    with pytest.raises(ValueError, match=r"\btier\b"):
        tier_status("auto")


def test_unavailable_tier_error_names_the_tier_and_the_reason(monkeypatch):
    monkeypatch.setattr(_dispatch, "_cuda_status",
                        lambda: TierStatus(False, "unavailable", "numba-cuda is not installed"))
    with pytest.raises(scratchvision.BackendUnavailableError) as excinfo:
        resolve_backend("cuda")
    message = str(excinfo.value)
    assert "'cuda'" in message and "numba-cuda is not installed" in message
    assert issubclass(scratchvision.BackendUnavailableError, RuntimeError)


@pytest.mark.parametrize("tier", scratchvision.TIERS)
def test_every_tier_module_implements_the_contract(tier):
    """Each available tier of bilinear has the four functions and a module docstring."""
    if not tier_status(tier).available:
        pytest.skip(tier_status(tier).detail)
    module = bilinear._tiers.get(tier)
    assert module.__name__.endswith(_dispatch.TIER_MODULES[tier])
    assert module.__doc__ and module.__doc__.strip()
    for name in OP_FUNCTIONS:
        assert callable(getattr(module, name, None)), f"{module.__name__}.{name} is missing"


def _python(code: str, **env) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (nothing imported yet)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_importing_the_package_does_not_import_numba():
    """The CUDA simulator switch must be possible after ``import scratchvision``, and a
    NumPy-only user never pays for numba: the loop and numpy tiers run without importing it."""
    code = (
        "import sys, numpy as np\n"
        "import scratchvision, scratchvision._dispatch\n"
        "from scratchvision.ops import bilinear\n"
        "assert 'numba' not in sys.modules, 'imported by the package'\n"
        "image, points = np.ones((1, 1, 2, 2)), np.full((1, 1, 2), 0.5)\n"
        "for tier in ('loop', 'numpy'):\n"
        "    bilinear.sample(image, points, backend=tier)\n"
        "    bilinear.resize(image, 3, backend=tier)\n"
        "    assert 'numba' not in sys.modules, 'imported by the ' + tier + ' tier'\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
