"""``FeaturePyramidNetwork`` and ``LastLevelMaxPool``: torchvision's FPN (Lin et al. 2017,
"Feature pyramid networks for object detection") with a hand-written backward.

A backbone gives maps C_0, ..., C_{L-1}, finest first, each coarser one deeper (more
semantic) but smaller. The FPN gives every level the semantics of the coarsest one, at its own
resolution, with a top-down pathway::

    inner_i = lateral_i(C_i)           1x1 conv, in_channels_list[i] -> out_channels     (1)
    t_{L-1} = inner_{L-1}
    t_i     = inner_i + up_i(t_{i+1})  up_i: nearest resize to C_i's H x W, i = L-2..0    (2)
    P_i     = output_i(t_i)            3x3 conv, padding 1, out_channels -> out_channels (3)

``lateral_i`` is ``inner_blocks.i`` and ``output_i`` is ``layer_blocks.i``. With
:class:`LastLevelMaxPool` a coarser level ``P_L = max_pool2d(P_{L-1}, kernel 1, stride 2)``
is appended: every other row and column of the coarsest output (P6 in Faster R-CNN).

Backward, from the gradients of the outputs ``g_P_i``. Each t_i feeds P_i and, through
``up_{i-1}``, t_{i-1}; so going from the finest level to the coarsest::

    g_t_i     = output_i.backward(g_P_i) + up_{i-1}^T(g_t_{i-1})    (none for i = 0)      (4)
    g_inner_i = g_t_i                                              (the sum in (2))
    g_C_i     = lateral_i.backward(g_t_i)                                                (5)

where ``up^T`` is the nearest resize's backward: every input pixel collects the gradients of
the output pixels that copied it (:func:`scratchvision.ops.bilinear.resize_backward`,
``mode="nearest"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .. import _checks
from .._dispatch import BACKENDS
from ..ops import bilinear
from .conv import Conv2d
from .init import as_generator, float_dtype
from .module import Module, ModuleList, Sequential
from .multiscale import check_feature_map
from .pooling import MaxPool2d

__all__ = ["FeaturePyramidNetwork", "LastLevelMaxPool"]


def _kaiming_uniform_a1(conv: Conv2d, rng: np.random.Generator) -> None:
    """torchvision's FPN initialisation: ``kaiming_uniform_(weight, a=1)``, bias 0.

    Kaiming-uniform's bound is ``gain * sqrt(3 / fan_in)`` with the leaky-ReLU gain
    ``sqrt(2 / (1 + a**2)) = 1`` for a = 1: ``U(-sqrt(3 / fan_in), sqrt(3 / fan_in))``, the
    variance ``1 / fan_in`` that keeps a linear layer's output variance equal to its input's.
    """
    weight = conv.weight.data
    fan_in = weight[0].size  # in_channels * kh * kw
    bound = math.sqrt(3.0 / fan_in)
    weight[...] = rng.uniform(-bound, bound, size=weight.shape)
    conv.bias.data.fill(0)


def _as_map_list(maps, name: str, count: int) -> list:
    if not isinstance(maps, (list, tuple)):
        raise TypeError(f"{name} must be a list of {count} arrays, finest level first, got "
                        f"{type(maps).__name__}")
    if len(maps) != count:
        raise ValueError(f"{name} must hold {count} arrays (one per level), got {len(maps)}")
    return list(maps)


class LastLevelMaxPool(Module):
    """torchvision's ``LastLevelMaxPool``: appends ``max_pool2d(results[-1], kernel_size=1,
    stride=2, padding=0)`` to the FPN's outputs. A 1x1 window's maximum is its one pixel, so
    this subsamples every other row and column: (N, C, H, W) -> (N, C, ceil(H/2), ceil(W/2)).

    ``forward(results)`` takes the list of outputs and returns it with the new level appended;
    ``backward(grads)`` takes one gradient per returned map and returns one per input map (the
    pooled level's gradient is added to the last one's, at the pixels that were kept).
    """

    def __init__(self, *, backend: str = "auto"):
        super().__init__()
        self.pool = MaxPool2d(1, stride=2, padding=0, backend=backend)

    def forward(self, results: Sequence[np.ndarray]) -> list[np.ndarray]:
        results = list(results)
        if not results:
            raise ValueError("results must hold at least one map")
        return results + [self.pool(results[-1])]

    def backward(self, grads: Sequence[np.ndarray]) -> list[np.ndarray]:
        grads = list(grads)
        *kept, grad_last, grad_pool = grads
        return kept + [grad_last + self.pool.backward(grad_pool)]


class FeaturePyramidNetwork(Module):
    """torchvision's ``FeaturePyramidNetwork``: a list of maps in, a list of maps out, finest
    first; equations (1)-(5) of the module docstring.

    Args:
        in_channels_list: the channels of each input level, finest first (all >= 1).
        out_channels: the channels of every output level.
        extra_blocks: None or a module that takes the list of outputs and returns it with
            levels appended, with the matching list-in / list-out ``backward``, e.g.
            :class:`LastLevelMaxPool`. It keeps its own backend (``set_backend`` sets both).
        rng, dtype, backend: as for :class:`~scratchvision.nn.Conv2d`; the backend also runs
            the nearest resize of the top-down pathway.

    Parameters (torchvision's names, so that ``{k: v.numpy() for k, v in
    fpn.state_dict().items()}`` of a torchvision FPN loads 1:1): ``inner_blocks.i.0.weight``
    (out_channels, in_channels_list[i], 1, 1), ``inner_blocks.i.0.bias``,
    ``layer_blocks.i.0.weight`` (out_channels, out_channels, 3, 3), ``layer_blocks.i.0.bias``.
    Each block is a one-convolution Sequential, as torchvision's ``Conv2dNormActivation``
    without norm and activation. Weights start from ``kaiming_uniform_(a=1)``, biases at 0,
    torchvision's initialisation.

    Shapes: ``forward([x_0, ..., x_{L-1}])``, x_i (N, in_channels_list[i], H_i, W_i), ->
    ``[P_0, ..., P_{L-1}]`` (+ the extra levels), P_i (N, out_channels, H_i, W_i). The levels
    need not halve in size: the nearest resize maps any coarser size onto any finer one.
    """

    def __init__(self, in_channels_list: Sequence[int], out_channels: int, extra_blocks=None,
                 *, rng=None, dtype=np.float64, backend: str = "auto"):
        super().__init__()
        if (isinstance(in_channels_list, (str, bytes))
                or not isinstance(in_channels_list, Sequence) or not in_channels_list):
            raise ValueError(f"in_channels_list must be a non-empty list of positive ints, got "
                             f"{in_channels_list!r}")
        self.in_channels_list = tuple(_checks.positive_int(c, "in_channels_list")
                                      for c in in_channels_list)
        self.out_channels = _checks.positive_int(out_channels, "out_channels")
        if extra_blocks is not None and not isinstance(extra_blocks, Module):
            raise TypeError(f"extra_blocks must be None or a Module such as LastLevelMaxPool, "
                            f"got {type(extra_blocks).__name__}")
        _checks.choice(backend, "backend", BACKENDS)
        self.backend = backend
        rng, dtype = as_generator(rng), float_dtype(dtype)
        # rng=0: the convolutions' default initial values are replaced just below
        layers = dict(rng=0, dtype=dtype, backend=backend)
        self.inner_blocks = ModuleList(Sequential(Conv2d(c, self.out_channels, 1, **layers))
                                       for c in self.in_channels_list)
        self.layer_blocks = ModuleList(
            Sequential(Conv2d(self.out_channels, self.out_channels, 3, padding=1, **layers))
            for _ in self.in_channels_list)
        for block in list(self.inner_blocks) + list(self.layer_blocks):
            _kaiming_uniform_a1(block[0], rng)
        self.extra_blocks = extra_blocks

    def extra_repr(self) -> str:
        return (f"in_channels_list={list(self.in_channels_list)}, "
                f"out_channels={self.out_channels}, backend={self.backend!r}")

    def forward(self, features) -> list[np.ndarray]:
        """[x_0, ..., x_{L-1}] (finest first) -> [P_0, ..., P_{L-1}] (+ extra levels)."""
        n_levels = len(self.in_channels_list)
        features = _as_map_list(features, "features", n_levels)
        features = [check_feature_map(x, f"features[{i}]", c, "FeaturePyramidNetwork")
                    for i, (x, c) in enumerate(zip(features, self.in_channels_list))]
        for i, x in enumerate(features[1:], start=1):
            _checks.same_size("features[0]", features[0].shape[0], f"features[{i}]",
                              x.shape[0], "batch size (dim 0)")
        top_down = [None] * n_levels  # t_i, eq. (2)
        results = [None] * n_levels
        top_down[-1] = self.inner_blocks[-1](features[-1])  # eq. (1), coarsest level
        results[-1] = self.layer_blocks[-1](top_down[-1])  # eq. (3)
        for i in range(n_levels - 2, -1, -1):
            inner = self.inner_blocks[i](features[i])  # eq. (1)
            upsampled = bilinear.resize(top_down[i + 1], inner.shape[2:], mode="nearest",
                                        backend=self.backend)
            top_down[i] = inner + upsampled  # eq. (2)
            results[i] = self.layer_blocks[i](top_down[i])  # eq. (3)
        if self.extra_blocks is not None:
            results = list(self.extra_blocks(results))
        self._save_for_backward(top_down=top_down,
                                out_shapes=[r.shape for r in results], dtype=results[0].dtype)
        return results

    def backward(self, grads) -> list[np.ndarray]:
        """One gradient per output of the most recent forward (None for an output that did not
        reach the loss) -> one gradient per input map, finest first; accumulates every
        convolution's weight and bias gradients (eqs. 4-5)."""
        saved = self._saved_for_backward()
        top_down, out_shapes = saved["top_down"], saved["out_shapes"]
        grads = _as_map_list(grads, "grads", len(out_shapes))
        grads = [np.zeros(shape, dtype=saved["dtype"]) if g is None else
                 _checks.float_array(g, f"grads[{i}]")
                 for i, (g, shape) in enumerate(zip(grads, out_shapes))]
        for i, (g, shape) in enumerate(zip(grads, out_shapes)):
            _checks.shape_equals(g, f"grads[{i}]", shape, f"the shape of output {i}")
        if self.extra_blocks is not None:
            grads = list(self.extra_blocks.backward(grads))
        grad_features = []
        grad_from_finer = None  # up_{i-1}^T(g_t_{i-1}), eq. (4)
        for i, grad_output in enumerate(grads):
            grad_t = self.layer_blocks[i].backward(grad_output)  # eq. (4)
            if grad_from_finer is not None:
                grad_t = grad_t + grad_from_finer
            grad_features.append(self.inner_blocks[i].backward(grad_t))  # eq. (5)
            if i + 1 < len(grads):
                # t_i = inner_i + up_i(t_{i+1}): t_{i+1} gets up_i's transpose of g_t_i
                grad_from_finer = bilinear.resize_backward(
                    grad_t, top_down[i + 1], grad_t.shape[2:], mode="nearest",
                    backend=self.backend).grad_input
        return grad_features
