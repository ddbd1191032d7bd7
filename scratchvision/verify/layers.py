"""The cases ``scratchvision check`` verifies for the multi-scale layers: ``InceptionBlock``,
``ASPP`` and ``FeaturePyramidNetwork`` (with ``LastLevelMaxPool``). Max pooling is an op with
cases of its own (:mod:`scratchvision.verify.max_pool2d`).

``scratchvision check`` verifies *functions of arrays*. A layer is a function of its input(s)
**and** of its parameters, so each case turns a layer into such a pair::

    forward(x, <parameters...>, backend=)       -> layer.forward(x) with those parameter values
    backward(gy, x, <parameters...>, backend=)  -> (grad x, grad of every parameter)

with the parameters in the order of ``named_parameters()``, under their names. Both build a
fresh layer, run it on ``backend`` (``set_backend``: every convolution, resize and pool in it)
and load the given parameter values. The FPN takes a list of maps and returns one: its case
takes the maps as separate inputs ``x0, x1`` and returns its outputs flattened and
concatenated into one vector (finest level first, then the extra level), and the backward
splits ``gy`` the same way.

The layers run their convolutions and resizes on every tier (their max pools, which have no
cuda tier, on the CPU). Inputs are :func:`~scratchvision.verify.max_pool2d.distinct_values`, so
no max pool ties; ReLU's kink at 0 is left to chance: a random pre-activation lands within a
finite-difference step of 0 with probability about 1e-6.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .._dispatch import TIERS
from ..cases import CheckCase
from ..nn import ASPP, FeaturePyramidNetwork, InceptionBlock, LastLevelMaxPool, Module
from .max_pool2d import distinct_values

__all__ = ["CHECK_CASES", "BENCH_CASES", "layer_functions"]


def _random_parameters(layer: Module, rng: np.random.Generator) -> dict:
    """Conv weights of size 1 / sqrt(fan-in) (outputs of order 1, so the rounding error of the
    central differences stays far under gradcheck's atol) and biases of size 0.5 (nonzero, so
    that a wrong bias gradient shows)."""
    params = {}
    for name, param in layer.named_parameters():
        scale = 1.0 / np.sqrt(param.data[0].size) if param.data.ndim > 1 else 0.5
        params[name] = scale * rng.standard_normal(param.shape)
    return params


def layer_functions(build: Callable[[], Module], input_names: tuple[str, ...],
                    list_input: bool = False):
    """``(forward, backward)`` of the layer that ``build()`` makes, as functions of
    ``(*inputs, *parameters)`` (module docstring). ``list_input``: the layer takes its inputs
    as one list and returns a list (the FPN)."""
    n_inputs = len(input_names)

    def prepared(arrays, backend):
        layer = build().set_backend(backend)
        for (_, param), array in zip(layer.named_parameters(), arrays[n_inputs:]):
            param.data[...] = array
        inputs = list(arrays[:n_inputs])
        return layer, ([inputs] if list_input else inputs)

    def forward(*arrays, backend="auto"):
        layer, inputs = prepared(arrays, backend)
        y = layer(*inputs)
        if list_input:  # [(N, C, H_i, W_i)] -> one vector
            y = np.concatenate([level.ravel() for level in y])
        return y

    def backward(gy, *arrays, backend="auto"):
        layer, inputs = prepared(arrays, backend)
        outputs = layer(*inputs)
        if list_input:  # one vector -> [(N, C, H_i, W_i)], the inverse of forward's ravel
            bounds = np.cumsum([level.size for level in outputs])[:-1]
            gy = [part.reshape(level.shape)
                  for part, level in zip(np.split(gy, bounds), outputs)]
        grad_inputs = layer.backward(gy)  # a list (list_input), else an array or a tuple
        if not list_input and n_inputs == 1:
            grad_inputs = (grad_inputs,)
        return tuple(grad_inputs) + tuple(param.grad.copy() for param in layer.parameters())

    return forward, backward


@dataclass(frozen=True)
class _LayerCase:
    """A layer (``build`` makes a fresh float64 one), the shapes of its inputs at the normal
    and the tiny (CUDA simulator) size, and the tiers it runs on."""

    name: str
    build: Callable[[], Module]
    input_shapes: dict
    tiny_input_shapes: dict
    list_input: bool = False
    tiers: tuple = TIERS
    # the simulator launches every convolution of the layer as Python threads: 30-50 s per
    # instance for the composite layers; their convolutions have simulator cases of their own
    in_simulator: bool = True

    def make_inputs(self, rng: np.random.Generator, tiny: bool) -> dict:
        shapes = self.tiny_input_shapes if tiny else self.input_shapes
        inputs = {name: distinct_values(rng, shape) for name, shape in shapes.items()}
        inputs.update(_random_parameters(self.build(), rng))
        return inputs

    def check_case(self) -> CheckCase:
        forward, backward = layer_functions(self.build, tuple(self.input_shapes),
                                            self.list_input)
        names = tuple(self.input_shapes) + tuple(n for n, _ in self.build().named_parameters())
        return CheckCase(self.name, self.make_inputs, forward, backward, wrt=names,
                         tiers=self.tiers, in_simulator=self.in_simulator)


_CASES = [
    _LayerCase("InceptionBlock 2 -> 1 + 2 + 1 + 1",
               lambda: InceptionBlock(2, 1, 1, 2, 1, 1, 1, rng=0),
               {"x": (1, 2, 5, 5)}, {"x": (1, 2, 3, 3)}, in_simulator=False),
    _LayerCase("ASPP 2 -> 2, rates (1, 2)",
               lambda: ASPP(2, 2, rates=(1, 2), rng=0),
               {"x": (1, 2, 5, 6)}, {"x": (1, 2, 3, 3)}, in_simulator=False),
    _LayerCase("FeaturePyramidNetwork [2, 3] -> 2, LastLevelMaxPool",
               lambda: FeaturePyramidNetwork([2, 3], 2, LastLevelMaxPool(), rng=0),
               {"x0": (1, 2, 6, 5), "x1": (1, 3, 3, 3)},
               {"x0": (1, 2, 3, 3), "x1": (1, 3, 2, 2)}, list_input=True, in_simulator=False),
]

CHECK_CASES = [case.check_case() for case in _CASES]

#: the layers are timed through their ops' bench cases
BENCH_CASES: list = []
