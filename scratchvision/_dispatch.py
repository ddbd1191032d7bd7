"""The tier registry: which implementations exist, which can run here, and which one to use.

Every heavy operator lives in a package ``scratchvision/ops/<op>/`` with one module per tier:

========  ==================  ===========================================================
tier      module              what it is
========  ==================  ===========================================================
loop      ``loop.py``         explicit Python loops; the executable specification
numpy     ``vectorized.py``   NumPy only, no Python loop over pixels, points or queries
numba     ``numba_cpu.py``    ``numba.njit(parallel=True, cache=True)`` kernels
cuda      ``numba_cuda.py``   ``numba.cuda`` kernels and a host wrapper that moves arrays
========  ==================  ===========================================================

``backend="auto"`` picks ``cuda`` when a real GPU is present and ``numba`` otherwise. The CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1``) makes the cuda tier *runnable* (for tests, on tiny
shapes) but never *chosen* by ``"auto"``: it is thousands of times slower than the CPU.
"""

from __future__ import annotations

import functools
import importlib
import os
import shutil
from types import ModuleType
from typing import NamedTuple

from . import _checks

TIERS = ("loop", "numpy", "numba", "cuda")
BACKENDS = ("auto",) + TIERS

TIER_MODULES = {
    "loop": "loop",
    "numpy": "vectorized",
    "numba": "numba_cpu",
    "cuda": "numba_cuda",
}


class BackendUnavailableError(RuntimeError):
    """Raised when a tier is asked for that cannot run on this machine."""


class TierStatus(NamedTuple):
    """Whether a tier can run here. ``kind`` is ``"cpu"``, ``"GPU"``, ``"simulator"`` or
    ``"unavailable"``; ``detail`` says which device, or why the tier cannot run."""

    available: bool
    kind: str
    detail: str


def gpu_device_files_present() -> bool:
    """A cheap guess, made *without importing numba*, whether this machine has an NVIDIA GPU.

    The test suite and ``scratchvision check`` use it to decide whether to switch numba into
    its CUDA simulator, which must happen before numba is first imported.
    """
    return os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi") is not None


@functools.lru_cache(maxsize=None)
def _cuda_status() -> TierStatus:
    try:
        from numba import config as numba_config
        from numba import cuda
    except ImportError as exc:  # pragma: no cover - depends on the installation
        return TierStatus(False, "unavailable", f"numba.cuda cannot be imported ({exc})")
    if numba_config.ENABLE_CUDASIM:
        return TierStatus(True, "simulator", "numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1)")
    try:
        import numba_cuda  # noqa: F401  (the maintained CUDA target, the `cuda` extra)
    except ImportError:
        return TierStatus(
            False, "unavailable",
            "the numba-cuda package is not installed (pip install 'scratchvision[cuda]')",
        )
    try:
        present = cuda.is_available()
    except Exception as exc:  # pragma: no cover - driver-specific failures
        return TierStatus(False, "unavailable", f"CUDA driver error: {exc}")
    if not present:
        return TierStatus(
            False, "unavailable",
            "no CUDA GPU or driver found (NUMBA_ENABLE_CUDASIM=1 runs the simulator instead)",
        )
    try:
        name = cuda.get_current_device().name
        name = name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # pragma: no cover
        name = "CUDA GPU"
    return TierStatus(True, "GPU", name)


def tier_status(tier: str) -> TierStatus:
    """Report whether ``tier`` can run on this machine, and as what."""
    if tier not in TIERS:
        raise ValueError(f"tier must be one of {TIERS}, got {tier!r}")
    if tier == "cuda":
        return _cuda_status()
    if tier == "numba":
        try:
            import numba  # noqa: F401
        except ImportError as exc:  # pragma: no cover - numba is a hard dependency
            return TierStatus(False, "unavailable", f"numba cannot be imported ({exc})")
    return TierStatus(True, "cpu", "CPU")


# "auto" takes the first tier of this list that the operator offers and that can run here.
_AUTO_PREFERENCE = ("numba", "numpy", "loop")


def resolve_backend(backend: str, offered: tuple[str, ...] = TIERS, what: str = "this op") -> str:
    """Turn ``backend`` (``"auto"`` or a tier name) into a tier that can run here.

    ``offered`` lists the tiers the operator implements (all four for the heavy ops; fewer for
    e.g. the box utilities, where a GPU kernel would not pay) and ``what`` names it in errors.
    ``"auto"`` picks ``cuda`` on a real GPU if offered, else the first offered of numba, numpy,
    loop. Raises ``ValueError`` for an unknown name and ``BackendUnavailableError`` for a tier
    that the operator does not offer or that cannot run on this machine (the message says why).
    """
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if "cuda" in offered and tier_status("cuda").kind == "GPU":
            return "cuda"
        return next(t for t in _AUTO_PREFERENCE if t in offered and tier_status(t).available)
    if backend not in offered:
        raise BackendUnavailableError(
            f"backend {backend!r} is unavailable: {what} has no {backend} tier "
            f"(it offers {offered})")
    status = tier_status(backend)
    if not status.available:
        raise BackendUnavailableError(f"backend {backend!r} is unavailable: {status.detail}")
    return backend


class TierModules:
    """Lazily imports the tier modules of one operator package.

    ``TierModules(__name__)`` inside ``scratchvision/ops/<op>/__init__.py``;
    ``.get(backend)`` resolves ``backend`` and returns the module implementing that tier, so a
    NumPy-only user never pays for compiling numba kernels and a missing numba-cuda only
    matters to someone who asks for ``"cuda"``. A package that implements fewer tiers names
    them: ``TierModules(__name__, tiers=("loop", "numpy"))``.

    ``.get(backend, image=image, points=points)`` also checks where the call's arrays live
    (:func:`scratchvision._checks.same_device`): all on the host, or all on the GPU and then
    only for the cuda tier; a GPU array for a CPU tier raises ``TypeError`` naming it.
    """

    def __init__(self, package: str, tiers: tuple[str, ...] = TIERS):
        unknown = [t for t in tiers if t not in TIERS]
        if unknown or not tiers:
            raise ValueError(f"tiers must be a non-empty subset of {TIERS}, got {tiers!r}")
        self.package = package
        self.tiers = tuple(tiers)

    def get(self, backend: str, **arrays) -> ModuleType:
        tier = resolve_backend(backend, self.tiers, what=self.package.rsplit(".", 1)[-1])
        _checks.same_device(tier, backend, **arrays)
        return importlib.import_module(f"{self.package}.{TIER_MODULES[tier]}")
