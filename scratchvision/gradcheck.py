"""Finite-difference checking of hand-written backward passes.

You wrote ``forward(*inputs) -> y`` and ``backward(gy, *inputs) -> grads``; is ``backward``
right? :func:`gradcheck` answers by comparing it with central differences of ``forward``:

* ``mode="jacobian"`` perturbs every input element in turn, building the numerical Jacobian
  one column at a time (two ``forward`` calls per element), and contracts it with a random,
  non-uniform upstream gradient ``gy``. The result is compared elementwise with
  ``backward(gy)``, so the report says *which element* of which input is wrong.
* ``mode="directional"`` is for inputs too large for that: for random directions ``u`` it
  compares ``<gy, (f(x + eps u) - f(x - eps u)) / (2 eps)>`` with ``<backward(gy)[x], u>``.

Why a random ``gy``: with ``gy`` all ones, a backward that forgets to weight by ``gy`` (or that
swaps two output positions) can still pass. A standard-normal ``gy`` catches both.

Central differences are exact for piecewise-linear functions as long as ``x +- eps`` stays on
one linear piece, and have error ``O(eps^2)`` for smooth ones; work in float64 and keep inputs
away from kinks by more than ``eps`` (the test strategies do exactly that).

What they are never free of is rounding: each ``y_j(x +- eps)`` carries an error of a few units
of roundoff ``u`` times ``|y_j|``, and dividing the difference by ``2 eps`` magnifies it, so the
contracted difference is uncertain by about ``u * sum_j |gy_j| |y_j| / eps``. With many outputs
of size ~10 that is ~1e-9, larger than a fixed ``atol`` would allow for a near-zero gradient
entry. Every element therefore also gets ``rounding = ROUNDING_UNITS * u * sum_j |gy_j| |y_j|
/ eps`` of slack (reported as ``rounding``); a wrong gradient is off by far more than that.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["gradcheck", "numerical_vjp", "GradcheckReport", "InputCheck"]

JACOBIAN_MAX_ELEMENTS = 2000
#: units of roundoff allowed per output value in the rounding slack (sums of a few dozen
#: products carry a few units of roundoff; 16 is a safe multiple of that)
ROUNDING_UNITS = 16


@dataclass
class InputCheck:
    """The comparison for one input.

    ``analytic`` and ``numeric`` are the compared quantities: the gradient arrays in
    ``"jacobian"`` mode (shape of the input) or the directional derivatives in
    ``"directional"`` mode (shape ``(n_directions,)``). ``worst_index`` is the position (in
    those arrays) of the largest violation of ``|a - n| <= atol + rounding + rtol * |n|``,
    where ``rounding`` bounds the floating-point error of the central differences.
    """

    name: str
    mode: str
    max_abs_error: float
    max_rel_error: float
    worst_index: tuple
    rounding: float
    analytic: np.ndarray
    numeric: np.ndarray
    ok: bool


@dataclass
class GradcheckReport:
    """All per-input comparisons; truthy when every input passed."""

    results: dict[str, InputCheck] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results.values())

    def __bool__(self) -> bool:
        return self.ok

    @property
    def max_rel_error(self) -> float:
        return max((r.max_rel_error for r in self.results.values()), default=0.0)

    def __str__(self) -> str:
        lines = [f"{'input':<20} {'mode':<12} {'max abs err':>12} {'max rel err':>12} "
                 f"{'worst at':<16} status"]
        for r in self.results.values():
            lines.append(f"{r.name:<20} {r.mode:<12} {r.max_abs_error:>12.3e} "
                         f"{r.max_rel_error:>12.3e} {str(r.worst_index):<16} "
                         f"{'ok' if r.ok else 'FAIL'}")
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        """Raise ``AssertionError`` carrying the table when any input failed."""
        if not self.ok:
            raise AssertionError("gradient check failed:\n" + str(self))


def _named_inputs(inputs) -> dict[str, np.ndarray]:
    if isinstance(inputs, Mapping):
        items = list(inputs.items())
    elif isinstance(inputs, Sequence) and not isinstance(inputs, (str, bytes)):
        items = [(f"input{i}", v) for i, v in enumerate(inputs)]
    else:
        raise TypeError(f"inputs must be a dict name -> array or a sequence of arrays, "
                        f"got {type(inputs).__name__}")
    named = {}
    for name, value in items:
        arr = np.array(value, copy=True)  # perturbed in place below: never touch the caller's
        if arr.dtype != np.float64:
            raise TypeError(f"inputs[{name!r}] must be float64 for finite differences "
                            f"(float32 rounding swamps the O(eps) signal), got {arr.dtype}")
        named[name] = arr
    return named


def _grads_by_name(grads, names: list[str]) -> dict[str, np.ndarray | None]:
    if isinstance(grads, np.ndarray):
        grads = (grads,)
    grads = tuple(grads)
    if len(grads) != len(names):
        raise ValueError(f"backward returned {len(grads)} gradients for {len(names)} inputs "
                         f"({names})")
    return dict(zip(names, grads))


def numerical_vjp(forward: Callable, arrays: dict[str, np.ndarray], name: str,
                  gy: np.ndarray, eps: float) -> np.ndarray:
    """``sum_j gy[j] * d y[j] / d x[i]`` for every element ``i`` of input ``name``, by central
    differences: column ``i`` of the Jacobian, contracted with ``gy``."""
    x = arrays[name]
    grad = np.zeros_like(x)
    flat = x.reshape(-1)  # a view: perturbing flat perturbs x
    values = list(arrays.values())
    for i in range(flat.size):
        original = flat[i]
        flat[i] = original + eps
        y_plus = np.asarray(forward(*values), dtype=np.float64)
        flat[i] = original - eps
        y_minus = np.asarray(forward(*values), dtype=np.float64)
        flat[i] = original
        grad.reshape(-1)[i] = np.sum(gy * (y_plus - y_minus)) / (2 * eps)
    return grad


def _directional(forward, arrays, name, gy, grad, eps, n_directions, rng):
    x = arrays[name]
    original = x.copy()
    values = list(arrays.values())
    analytic = np.empty(n_directions)
    numeric = np.empty(n_directions)
    for k in range(n_directions):
        u = rng.standard_normal(x.shape)
        x[...] = original + eps * u
        y_plus = np.asarray(forward(*values), dtype=np.float64)
        x[...] = original - eps * u
        y_minus = np.asarray(forward(*values), dtype=np.float64)
        x[...] = original
        numeric[k] = np.sum(gy * (y_plus - y_minus)) / (2 * eps)
        analytic[k] = np.sum(grad * u)
    return analytic, numeric


def _compare(name, mode, analytic, numeric, rtol, atol, rounding) -> InputCheck:
    error = np.abs(analytic - numeric)
    allowed = atol + rounding + rtol * np.abs(numeric)
    violation = error / allowed
    worst = np.unravel_index(int(np.argmax(violation)), violation.shape) if error.size else ()
    rel = error / np.maximum(np.abs(numeric), atol / rtol if rtol > 0 else atol)
    return InputCheck(
        name=name, mode=mode,
        max_abs_error=float(error.max(initial=0.0)),
        max_rel_error=float(rel.max(initial=0.0)),
        worst_index=tuple(int(i) for i in worst),
        rounding=rounding,
        analytic=analytic, numeric=numeric,
        ok=bool(np.all(error <= allowed)),
    )


def gradcheck(forward: Callable, backward: Callable, inputs, *, wrt=None, mode: str = "auto",
              eps: float = 1e-6, rtol: float = 1e-6, atol: float = 1e-9,
              n_directions: int = 8, seed: int = 0) -> GradcheckReport:
    """Check ``backward`` against central differences of ``forward``.

    Args:
        forward: ``forward(*arrays) -> y``.
        backward: ``backward(gy, *arrays) -> grads``: a tuple (or NamedTuple) aligned with the
            inputs, entries may be ``None`` for inputs that are not differentiable; a single
            array when there is one input.
        inputs: dict ``name -> float64 array`` (names label the report) or a sequence of
            arrays (named ``input0``, ``input1``, ...). They are copied, never modified.
        wrt: names (or positions) of the inputs to check; default every input.
        mode: ``"jacobian"``, ``"directional"`` or ``"auto"`` (jacobian for inputs of at most
            2000 elements).
        eps: the central-difference step.
        rtol, atol: an element passes when ``|analytic - numeric| <= atol + rounding +
            rtol * |numeric|``, ``rounding`` being the rounding-error slack described in the
            module docstring.
        n_directions: random directions per input in directional mode.
        seed: seeds the upstream gradient ``gy`` (standard normal) and the directions.

    Returns:
        :class:`GradcheckReport`; ``report.raise_if_failed()`` turns a failure into an
        ``AssertionError`` showing the table.
    """
    if mode not in ("auto", "jacobian", "directional"):
        raise ValueError(f"mode must be 'auto', 'jacobian' or 'directional', got {mode!r}")
    arrays = _named_inputs(inputs)
    names = list(arrays)
    if wrt is None:
        wrt = names
    wrt = [names[w] if isinstance(w, int) else w for w in wrt]
    for w in wrt:
        if w not in arrays:
            raise ValueError(f"wrt names an unknown input {w!r}; inputs are {names}")

    rng = np.random.default_rng(seed)
    y = np.asarray(forward(*arrays.values()), dtype=np.float64)
    gy = rng.standard_normal(y.shape)  # random, non-uniform upstream gradient
    # rounding error of a contracted central difference (module docstring)
    rounding = ROUNDING_UNITS * np.finfo(np.float64).eps / 2 * float(np.sum(np.abs(gy * y))) / eps
    grads = _grads_by_name(backward(gy, *arrays.values()), names)

    report = GradcheckReport()
    for name in wrt:
        grad = grads[name]
        if grad is None:
            raise ValueError(f"backward returned None for input {name!r}, which wrt asks to "
                             f"check")
        grad = np.asarray(grad, dtype=np.float64)
        if grad.shape != arrays[name].shape:
            raise ValueError(f"backward's gradient for {name!r} has shape {grad.shape}, "
                             f"expected the input's shape {arrays[name].shape}")
        use = mode
        if use == "auto":
            use = "jacobian" if arrays[name].size <= JACOBIAN_MAX_ELEMENTS else "directional"
        if use == "jacobian":
            numeric = numerical_vjp(forward, arrays, name, gy, eps)
            report.results[name] = _compare(name, use, grad, numeric, rtol, atol, rounding)
        else:
            analytic, numeric = _directional(forward, arrays, name, gy, grad, eps,
                                             n_directions, rng)
            report.results[name] = _compare(name, use, analytic, numeric, rtol, atol, rounding)
    return report
