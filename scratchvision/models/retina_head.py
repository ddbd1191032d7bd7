"""The RetinaNet-style head: one small network run on every pyramid level with the same weights.

For each level's map P_l (N, C, H_l, W_l) two towers of ``num_convs`` 3x3 convolutions (+ ReLU)
end in a 3x3 convolution each (Lin et al. 2017, "Focal Loss for Dense Object Detection"):

* ``classification_head``: ``conv`` tower, then ``cls_logits`` with A * K outputs per pixel,
  one logit per anchor and class (sigmoid, not softmax: focal loss treats every class as its
  own binary problem, and background is "no class fires");
* ``regression_head``: ``conv`` tower, then ``bbox_reg`` with A * 4 outputs per pixel, the
  box deltas ``(dx, dy, dw, dh)`` of :class:`~scratchvision.detection.BoxCoder` per anchor.

The parameter names are torchvision's RetinaNet (v1) head names. With ``deformable=True`` the
last convolution of each tower is a :class:`~scratchvision.nn.DeformConv2d` (DCNv2): it learns
where to sample around each anchor's centre.

**Shared weights, separate activations.** The head is applied to every level with the same
parameters, so backward needs each level's remembered activations: after each level's forward
the head keeps ``saved_state()`` of its towers, and before that level's backward it restores
it (:meth:`~scratchvision.nn.Module.saved_state`). The parameter gradients of all levels add up
in the shared ``.grad`` -- the sum over levels the chain rule asks for.

Initialisation (RetinaNet's): tower and output weights from N(0, 0.01^2), biases 0, except
``cls_logits.bias = -log((1 - pi) / pi)`` with the prior ``pi = 0.01``: at the start every
anchor predicts "object" with probability 0.01, so the loss of the thousands of background
anchors does not swamp the first steps.
"""

from __future__ import annotations

import math

import numpy as np

from ..nn import Conv2d, DeformConv2d, Module, ReLU, Sequential

__all__ = ["RetinaHead", "PRIOR_PROBABILITY"]

PRIOR_PROBABILITY = 0.01


def _tower(channels: int, num_convs: int, deformable: bool, rng, dtype, backend) -> Sequential:
    layers = []
    for i in range(num_convs):
        kind = DeformConv2d if deformable and i == num_convs - 1 else Conv2d
        layers += [kind(channels, channels, 3, padding=1, rng=rng, dtype=dtype,
                        backend=backend), ReLU()]
    return Sequential(*layers)


def _normal_init(conv: Conv2d, rng: np.random.Generator, bias: float = 0.0) -> None:
    conv.weight.data[...] = rng.normal(0.0, 0.01, conv.weight.shape)
    conv.bias.data[...] = bias


class _Branch(Module):
    """One tower and its output convolution (``conv``, then ``cls_logits`` or ``bbox_reg``)."""

    def __init__(self, channels: int, outputs: int, output_name: str, num_convs: int,
                 deformable: bool, rng, dtype, backend, bias: float):
        super().__init__()
        self.conv = _tower(channels, num_convs, deformable, rng, dtype, backend)
        setattr(self, output_name, Conv2d(channels, outputs, 3, padding=1, rng=rng,
                                          dtype=dtype, backend=backend))
        object.__setattr__(self, "_output_name", output_name)  # a plain attribute, no registry
        for module in self.conv:
            if isinstance(module, Conv2d):  # DeformConv2d keeps its own initialisation
                _normal_init(module, rng)
        _normal_init(self.output, rng, bias)

    @property
    def output(self) -> Conv2d:
        return getattr(self, self._output_name)

    def forward(self, x):
        return self.output(self.conv(x))

    def backward(self, grad):
        return self.conv.backward(self.output.backward(grad))


class RetinaHead(Module):
    """``forward([P_0, ..., P_{L-1}])`` -> ``(cls_logits, bbox_deltas)``, two lists of L maps:
    cls (N, A * K, H_l, W_l) and box (N, A * 4, H_l, W_l), channel ``a * K + k`` the logit of
    class k for anchor a, ``a * 4 + i`` delta i of anchor a.

    Args:
        in_channels: C, the channels of every level.
        num_anchors: A, anchors per location (the same on every level).
        num_classes: K.
        num_convs: convolutions per tower (RetinaNet uses 4; 2 is plenty here).
        deformable: make the last convolution of each tower a DeformConv2d.
        rng, dtype, backend: as for :class:`~scratchvision.nn.Conv2d`.
    """

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int,
                 num_convs: int = 2, deformable: bool = False, *, rng=None,
                 dtype=np.float32, backend: str = "auto"):
        super().__init__()
        rng = np.random.default_rng(rng)
        self.num_anchors, self.num_classes = num_anchors, num_classes
        prior_bias = -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY)
        self.classification_head = _Branch(in_channels, num_anchors * num_classes,
                                           "cls_logits", num_convs, deformable, rng, dtype,
                                           backend, prior_bias)
        self.regression_head = _Branch(in_channels, num_anchors * 4, "bbox_reg", num_convs,
                                       deformable, rng, dtype, backend, 0.0)
        self.backend = backend

    def forward(self, maps) -> tuple[list[np.ndarray], list[np.ndarray]]:
        cls_logits, bbox_deltas, states = [], [], []
        for x in maps:
            cls_logits.append(self.classification_head(x))
            bbox_deltas.append(self.regression_head(x))
            # this level's activations, handed back before its backward
            states.append(self.classification_head.saved_state()
                          + self.regression_head.saved_state())
        self._save_for_backward(states=states)
        return cls_logits, bbox_deltas

    def backward(self, grads) -> list[np.ndarray]:
        """``(grad_cls_logits, grad_bbox_deltas)``, one map each per level -> the gradient with
        respect to every input level; the shared weights' gradients add up over levels."""
        grad_cls, grad_box = grads
        states = self._saved_for_backward()["states"]
        grad_maps = []
        for state, g_cls, g_box in zip(states, grad_cls, grad_box):
            self.restore_saved_state(state)
            grad_maps.append(self.classification_head.backward(g_cls)
                             + self.regression_head.backward(g_box))
        return grad_maps
