"""``ReLU``: ``max(x, 0)`` elementwise (torch.nn.ReLU)."""

from __future__ import annotations

import numpy as np

from .. import _checks
from .module import Module

__all__ = ["ReLU"]


class ReLU(Module):
    """``y = max(x, 0)``, any shape; no parameters.

    The derivative is 1 where ``x > 0`` and 0 where ``x < 0``. At ``x == 0`` it does not exist;
    we use 0 there, as torch does (so a unit that outputs exactly 0 passes no gradient). NaN in
    gives NaN out, and zero gradient.
    """

    def forward(self, x) -> np.ndarray:
        """x (any shape) -> y (same shape, same dtype); remembers where x > 0."""
        x = _checks.float_array(x, "x")
        self._save_for_backward(positive=x > 0)
        return np.maximum(x, 0)  # np.maximum propagates NaN, like torch.relu

    def backward(self, grad) -> np.ndarray:
        """grad (shape of the output) -> grad * (x > 0), the gradient with respect to x."""
        positive = self._saved_for_backward()["positive"]
        grad = _checks.float_array(grad, "grad")
        _checks.shape_equals(grad, "grad", positive.shape, "the shape of forward's output")
        return np.where(positive, grad, 0).astype(grad.dtype, copy=False)
