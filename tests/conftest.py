"""Test-suite set-up that must happen before anything imports numba or matplotlib.

* Without a GPU, the cuda tier runs in numba's CUDA simulator. numba reads
  ``NUMBA_ENABLE_CUDASIM`` once, when it is first imported, so the variable is set here, at the
  top of the first file pytest imports. ``scratchvision._dispatch`` is safe to import first: it
  does not import numba.
* Plots go to the non-interactive Agg backend (tutorials are executed by the suite).
* Hypothesis profiles (docs/design.md, tests), chosen with ``SCRATCHVISION_HYPOTHESIS_PROFILE``:

  ========  ==========================================================================
  ci        the default: derandomized (the same examples on every run), few examples
  dev       more examples, fresh ones each run: for working on an op
  thorough  many examples: run before a release or after touching a kernel
  ========  ==========================================================================

  e.g. ``SCRATCHVISION_HYPOTHESIS_PROFILE=thorough python -m pytest tests/ops``.
"""

import os
import sys

from scratchvision._dispatch import gpu_device_files_present

if not gpu_device_files_present():
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
    if "numba" in sys.modules:  # pragma: no cover - only when a plugin imported numba first
        sys.stderr.write("conftest: numba was imported before NUMBA_ENABLE_CUDASIM could be set;"
                         " the cuda tier will report itself unavailable\n")
os.environ.setdefault("MPLBACKEND", "Agg")

from hypothesis import HealthCheck, settings  # noqa: E402  (after the environment is set)

# Kernels and finite differences are slow compared with hypothesis' expectations for a test
# body, and the first call of a numba tier compiles: deadlines would only report that noise.
_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])

settings.register_profile("ci", derandomize=True, max_examples=15, print_blob=True, **_COMMON)
settings.register_profile("dev", max_examples=50, print_blob=True, **_COMMON)
settings.register_profile("thorough", max_examples=500, print_blob=True, **_COMMON)
settings.load_profile(os.environ.get("SCRATCHVISION_HYPOTHESIS_PROFILE", "ci"))
