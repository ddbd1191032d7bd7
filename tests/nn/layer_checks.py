"""Finite-difference checks of a whole layer: its input and every one of its parameters.

``scratchvision.gradcheck`` checks a pair of *functions of arrays*. A layer is a function of its
input(s) **and** of its parameters, which live inside it; :func:`layer_as_functions` turns it
into such a pair::

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


def layer_as_functions(layer, input_names=("x",), fixed=None):
    """``(forward, backward, names)`` for :func:`scratchvision.gradcheck`; ``names`` is
    ``[*input_names, <parameter names>]``, the order of the arrays both functions take.

    A layer with several array inputs (``MultiheadAttention(query, key, value)``) names them in
    ``input_names``; its ``backward`` returns their gradients as a tuple in that order.
    ``fixed`` holds keyword arguments passed to every forward that are not differentiated
    (``spatial_shapes``, a padding mask).
    """
    named = list(layer.named_parameters())
    n_inputs = len(input_names)
    names = list(input_names) + [name for name, _ in named]
    fixed = {} if fixed is None else fixed

    def load(param_arrays):
        for (_, param), array in zip(named, param_arrays):
            param.data[...] = array

    def forward(*arrays):
        load(arrays[n_inputs:])
        return layer.forward(*arrays[:n_inputs], **fixed)

    def backward(gy, *arrays):
        load(arrays[n_inputs:])
        layer.zero_grad()
        layer.forward(*arrays[:n_inputs], **fixed)
        grad_inputs = layer.backward(gy)
        if n_inputs == 1:
            grad_inputs = (grad_inputs,)
        return tuple(grad_inputs) + tuple(param.grad.copy() for _, param in named)

    return forward, backward, names


def check_layer(layer, *inputs, input_names=None, fixed=None, rtol: float = 1e-6,
                atol: float = 1e-8, seed: int = 0) -> GradcheckReport:
    """Check the gradients of ``layer`` with respect to its array ``inputs`` and every
    parameter against central differences, in float64 (the layer's parameters must be float64).

    ``check_layer(layer, x)`` for a one-input layer; ``check_layer(layer, q, k, v,
    input_names=("query", "key", "value"))`` for several; ``fixed`` as in
    :func:`layer_as_functions`. Small inputs get the full Jacobian, larger ones 8 random
    directions (see :data:`JACOBIAN_MAX`). The parameters are restored afterwards.
    """
    if input_names is None:
        input_names = ("x",) if len(inputs) == 1 else tuple(f"input{i}" for i in
                                                               range(len(inputs)))
    forward, backward, names = layer_as_functions(layer, input_names, fixed)
    original = [param.data.copy() for param in layer.parameters()]
    arrays = dict(zip(names, list(inputs) + original))
    report = GradcheckReport()
    try:
        for name, array in arrays.items():
            mode = "jacobian" if array.size <= JACOBIAN_MAX else "directional"
            single = gradcheck(forward, backward, arrays, wrt=[name], mode=mode, rtol=rtol,
                               atol=atol, seed=seed)
            report.results.update(single.results)
    finally:
        for param, data in zip(layer.parameters(), original):
            param.data[...] = data
    return report
