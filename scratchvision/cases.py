"""The two case types that ``scratchvision check`` and ``scratchvision bench`` run.

This module sits on the ground floor, beside ``_checks`` and ``_dispatch``: it imports nothing
from the package above them, so the verification material in :mod:`scratchvision.verify`
(which builds cases from the ops) and the engines that run the cases
(:mod:`scratchvision.selfcheck`, :mod:`scratchvision.benchmark`) both import downward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ._dispatch import TIERS

#: a timed callable of a bench case: runs one forward (or forward+backward), returns anything
Timed = Callable[[], object]


@dataclass(frozen=True)
class CheckCase:
    """One operator configuration for ``scratchvision check`` to verify.

    ``make_inputs(rng, tiny)`` returns a dict name -> float64 array (tiny shapes for the CUDA
    simulator), kept off the operator's kinks by more than gradcheck's ``eps``;
    ``forward(*arrays, backend=...)`` and ``backward(gy, *arrays, backend=...)`` are the
    operator's public functions with the non-array arguments bound; ``wrt`` names the inputs
    whose gradients are checked; ``tiers`` the tiers the case can run on (a layer built on an
    op without a cuda tier, say, leaves "cuda" out). ``in_simulator=False`` skips the case in
    the CUDA simulator (a layer's many kernel launches take minutes there; its ops have their
    own simulator cases) -- on a real GPU it runs.
    """

    name: str
    make_inputs: Callable[[np.random.Generator, bool], dict]
    forward: Callable
    backward: Callable
    wrt: tuple[str, ...]
    tiers: tuple[str, ...] = TIERS
    in_simulator: bool = True


@dataclass(frozen=True)
class BenchCase:
    """One operator configuration for ``scratchvision bench`` to time.

    ``make_inputs(rng, quick)`` returns a dict name -> float32 array, including ``gy``, the
    fixed random upstream gradient that forward+backward feeds to the backward.
    ``forward(backend, **inputs)`` and ``forward_backward(backend, **inputs)`` run our public
    API (the forward alone; the forward then the backward). ``reference(inputs, device)``
    moves the inputs to torch on ``device`` ("cpu" or "cuda") *outside* the timed region and
    returns the two timed callables ``(forward, forward_backward)``; it may raise ImportError.
    ``shape`` and ``quick_shape`` describe the inputs for the table. An op without a backward
    leaves ``forward_backward`` None (and its reference returns ``(forward, None)``); only
    the forward is timed. ``tiers`` lists the tiers the op offers. ``gpu_target`` is the
    speed-up over the reference that the design asks of the cuda tier on device-resident
    arrays, forward and forward+backward (``scratchvision bench --device-resident``; e.g.
    ``1 / 1.5`` for "within 1.5x of the reference"), or None.
    """

    name: str
    shape: str
    quick_shape: str
    make_inputs: Callable[[np.random.Generator, bool], dict]
    forward: Callable[..., object]
    forward_backward: Callable[..., object] | None = None
    reference: Callable[[dict, str], tuple[Timed, Timed | None]] | None = None
    reference_name: str = "torch"
    tiers: tuple[str, ...] = TIERS
    gpu_target: float | None = None
