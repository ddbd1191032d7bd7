"""Finite-difference checks of a whole layer: its input and every one of its parameters.

``scratchvision.gradcheck`` checks a pair of *functions of arrays*. A layer is a function of its
input **and** of its parameters, which live inside it; :func:`layer_as_functions` turns it into
such a pair::

    forward(x, weight, bias, ...)      -> layer.forward(x) with those parameter values
    backward(gy, x, weight, bias, ...) -> (grad x, grad weight, grad bias, ...)

where the backward starts from ``zero_grad()``, runs ``forward`` (so the layer remembers *this*
x) and ``backward(gy)``, and returns the returned input gradient followed by every parameter's
accumulated ``.grad``, in the order of ``named_parameters()``.
"""

from __future__ import annotations

import numpy as np

from scratchvision import gradcheck
from scratchvision.gradcheck import GradcheckReport

#: inputs up to this many elements get the full Jacobian (two forwards per element); larger
#: ones, e.g. a DeformConv2d's conv_offset.weight, random directions instead
JACOBIAN_MAX = 120


def layer_as_functions(layer):
    """``(forward, backward, names)`` for :func:`scratchvision.gradcheck`; ``names`` is
    ``["x", <parameter names>]``, the order of the arrays both functions take."""
    named = list(layer.named_parameters())
    names = ["x"] + [name for name, _ in named]

    def load(param_arrays):
        for (_, param), array in zip(named, param_arrays):
            param.data[...] = array

    def forward(x, *param_arrays):
        load(param_arrays)
        return layer.forward(x)

    def backward(gy, x, *param_arrays):
        load(param_arrays)
        layer.zero_grad()
        layer.forward(x)
        grad_x = layer.backward(gy)
        return (grad_x,) + tuple(param.grad.copy() for _, param in named)

    return forward, backward, names


def check_layer(layer, x: np.ndarray, *, rtol: float = 1e-6, atol: float = 1e-8,
                seed: int = 0) -> GradcheckReport:
    """Check the gradients of ``layer`` with respect to ``x`` and every parameter against
    central differences, in float64 (the layer's parameters must be float64).

    Small inputs get the full Jacobian, larger ones 8 random directions (see
    :data:`JACOBIAN_MAX`). The parameters are restored afterwards.
    """
    forward, backward, names = layer_as_functions(layer)
    original = [param.data.copy() for param in layer.parameters()]
    inputs = dict(zip(names, [x] + original))
    report = GradcheckReport()
    try:
        for name, array in inputs.items():
            mode = "jacobian" if array.size <= JACOBIAN_MAX else "directional"
            single = gradcheck(forward, backward, inputs, wrt=[name], mode=mode, rtol=rtol,
                               atol=atol, seed=seed)
            report.results.update(single.results)
    finally:
        for param, data in zip(layer.parameters(), original):
            param.data[...] = data
    return report
