"""Verification material, one layer above the ops and layers it verifies.

Each module here holds, for one operator (or for the multi-scale layers):

* ``CHECK_CASES``: the :class:`~scratchvision.cases.CheckCase` list ``scratchvision check``
  verifies on every tier (forward against the loop tier, backward against finite differences);
* ``BENCH_CASES``: the :class:`~scratchvision.cases.BenchCase` list ``scratchvision bench``
  times against torch / torchvision;
* the torch reference formulations the bench cases and the oracle tests share (e.g.
  :func:`scratchvision.verify.ms_deform_attn.grid_sample_formulation`).

Either list may be empty (NMS has no gradient to check; the layers have no benchmark). The op
packages under ``scratchvision/ops/`` never import from here: they hold only the op.

:data:`SUITES` lists them: every operator of :data:`scratchvision.ops.OPERATORS` (the
registry: a new op is one name there, and this package's module of the same name), then the
detection ops and the layers.
"""

from __future__ import annotations

import importlib

from ..cases import BenchCase, CheckCase
from ..ops import OPERATORS

#: every suite, in the order the commands run them; ``scratchvision.verify.<name>`` holds it
SUITES = OPERATORS + ("nms", "layers")


def _cases(name: str, kind: str) -> list:
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose from {', '.join(SUITES)}")
    return list(getattr(importlib.import_module(f"{__name__}.{name}"), kind))


def check_cases(names) -> list[CheckCase]:
    """The check cases of the suites ``names``, in that order."""
    return [case for name in names for case in _cases(name, "CHECK_CASES")]


def bench_cases(names) -> list[BenchCase]:
    """The bench cases of the suites ``names``, in that order."""
    return [case for name in names for case in _cases(name, "BENCH_CASES")]


def suites_with(kind: str) -> tuple[str, ...]:
    """The suites that have cases of ``kind`` (``"CHECK_CASES"`` or ``"BENCH_CASES"``): the
    names ``scratchvision check`` and ``scratchvision bench`` accept."""
    return tuple(name for name in SUITES if _cases(name, kind))
