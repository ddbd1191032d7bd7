"""``Dropout``: zero each element with probability p while training (torch.nn.Dropout).

In training mode (``module.train()``, the default) each element of the input is kept with
probability ``1 - p`` and scaled by ``1 / (1 - p)``, so the expected output equals the input::

    keep ~ Bernoulli(1 - p) elementwise,   y = x * keep / (1 - p)             (13)

In evaluation mode (``module.eval()``), and always when ``p = 0``, the layer is the identity.
The backward multiplies by the same mask the forward drew, ``grad_x = grad_y * keep / (1 - p)``
(14): the layer is linear in x once the mask is fixed. With ``p = 1`` everything is dropped and
the output and gradient are zeros (torch does the same).

The mask comes from the layer's own ``numpy.random.Generator`` (``rng=``), so a training run is
reproducible from one seed; the numbers differ from torch's stream. Finite-difference checks
need a fixed function, so they run in evaluation mode (or with ``p = 0``), or reset the
generator before every forward. Equation numbers are those of the docs page "DETR's layers and
their gradients".
"""

from __future__ import annotations

import numpy as np

from .. import _checks
from .init import as_generator
from .module import Module

__all__ = ["Dropout"]


class Dropout(Module):
    """Equation (13) of the module docstring in training mode, the identity in evaluation mode.

    Args:
        p: the probability of zeroing an element, in [0, 1] (torch's default 0.5).
        rng: None, an int seed or a ``numpy.random.Generator``: the source of the masks (a
            Generator is used as is, so the masks continue its stream).

    No parameters. Any shape, float32 or float64; the output has the input's dtype.
    """

    def __init__(self, p: float = 0.5, *, rng=None):
        super().__init__()
        self.p = _checks.number_in_range(p, "p", 0.0, 1.0)
        self.generator = as_generator(rng)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    @property
    def active(self) -> bool:
        """Whether a forward call drops anything: training mode and ``p > 0``."""
        return self.training and self.p > 0

    def forward(self, x) -> np.ndarray:
        """x (any shape) -> y (same shape and dtype); remembers the scaled mask (None when the
        layer is the identity)."""
        x = _checks.float_array(x, "x")
        if not self.active:
            self._save_for_backward(shape=x.shape, scaled_keep=None)
            return x
        # --8<-- [start:forward]
        keep = self.generator.random(x.shape) >= self.p  # probability 1 - p each
        scale = 1.0 / (1.0 - self.p) if self.p < 1 else 0.0
        scaled_keep = (keep * scale).astype(x.dtype)  # keep / (1 - p), in x's dtype
        self._save_for_backward(shape=x.shape, scaled_keep=scaled_keep)
        return x * scaled_keep  # (13)
        # --8<-- [end:forward]

    def backward(self, grad) -> np.ndarray:
        """grad (the output's shape) -> ``grad * keep / (1 - p)`` with the forward's mask (14),
        or grad itself when the forward was the identity."""
        saved = self._saved_for_backward()
        grad = _checks.float_array(grad, "grad")
        _checks.shape_equals(grad, "grad", saved["shape"], "the shape of forward's output")
        if saved["scaled_keep"] is None:
            return grad
        # --8<-- [start:backward]
        return grad * saved["scaled_keep"]  # (14)
        # --8<-- [end:backward]
