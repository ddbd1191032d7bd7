"""Pooling layers: ``MaxPool2d`` (``torch.nn.MaxPool2d``) and ``GlobalAvgPool2d``
(``torch.nn.AdaptiveAvgPool2d(1)``), each with its hand-written backward.

``MaxPool2d`` is a thin layer over the op :mod:`scratchvision.ops.max_pool2d` (its equations,
tie and NaN rules and tiers are there and on the docs page ``derivations/max_pool2d.md``): the
forward keeps the argmax of every window, and the backward sends each window's gradient to it.
Max pooling has no cuda tier, so a layer set to ``"cuda"`` (a whole model moved with
``set_backend("cuda")``) pools on the CPU with the best CPU tier.
"""

from __future__ import annotations

import numpy as np

from .. import _checks
from .._dispatch import BACKENDS
from ..ops import max_pool2d
from .module import Module

__all__ = ["MaxPool2d", "GlobalAvgPool2d"]


def pool_backend(backend: str) -> str:
    """The max-pooling tier for a layer's ``backend``: ``"cuda"`` pools on the CPU."""
    return "auto" if backend == "cuda" else backend


class MaxPool2d(Module):
    """2-D max pooling, ``torch.nn.MaxPool2d`` (:mod:`scratchvision.ops.max_pool2d`).

    Args:
        kernel_size: the window, an int or ``(kh, kw)``.
        stride: an int or a pair; None (the default) means kernel_size.
        padding: ``-inf`` added on each side, at most ``kernel_size // 2`` (torch's rule).
        dilation: the spacing between the window's taps.
        ceil_mode: round the output size up instead of down.
        backend: ``"auto"``, ``"loop"``, ``"numpy"``, ``"numba"`` (``"cuda"`` pools on the
            CPU, see the module docstring).

    No parameters. Shapes: x (N, C, H, W) -> y (N, C, Ho, Wo).
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1,
                 ceil_mode: bool = False, *, backend: str = "auto"):
        super().__init__()
        (self.kernel_size, self.stride, self.padding, self.dilation,
         self.ceil_mode) = max_pool2d.hyper_parameters(kernel_size, stride, padding, dilation,
                                                       ceil_mode)
        _checks.choice(backend, "backend", BACKENDS)
        self.backend = backend

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, "
                f"ceil_mode={self.ceil_mode}, backend={self.backend!r}")

    def forward(self, x) -> np.ndarray:
        """x (N, C, H, W) -> y (N, C, Ho, Wo); remembers the argmax of every window."""
        x = _checks.float_array(x, "x", ndim=4)
        y, indices = max_pool2d.forward_with_indices(
            x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
            backend=pool_backend(self.backend))
        self._save_for_backward(indices=indices, x_shape=x.shape, dtype=x.dtype)
        return y

    def backward(self, grad) -> np.ndarray:
        """grad (N, C, Ho, Wo) -> the gradient with respect to x (N, C, H, W): each window's
        gradient goes to its argmax."""
        saved = self._saved_for_backward()
        return max_pool2d.backward_from_indices(
            grad, saved["indices"], saved["x_shape"], saved["dtype"],
            backend=pool_backend(self.backend), name="grad").grad_input


class GlobalAvgPool2d(Module):
    """The mean of every plane: x (N, C, H, W) -> y (N, C, 1, 1), ``y[n, c] = mean_hw x[n, c]``
    (``torch.nn.AdaptiveAvgPool2d(1)``). No parameters.

    Backward: every one of the H * W pixels of a plane contributed with weight 1 / (H W), so
    ``grad_x[n, c, h, w] = grad[n, c, 0, 0] / (H W)``. Arithmetic in x's dtype.
    """

    def forward(self, x) -> np.ndarray:
        x = _checks.float_array(x, "x", ndim=4)
        _checks.nonempty_spatial(x, "x")
        self._save_for_backward(x_shape=x.shape, dtype=x.dtype)
        return x.mean(axis=(2, 3), keepdims=True)

    def backward(self, grad) -> np.ndarray:
        """grad (N, C, 1, 1) -> grad_x (N, C, H, W)."""
        saved = self._saved_for_backward()
        n, c, height, width = saved["x_shape"]
        grad = _checks.float_array(grad, "grad")
        _checks.shape_equals(grad, "grad", (n, c, 1, 1), "the shape of forward's output")
        dtype = np.result_type(grad.dtype, saved["dtype"])
        scaled = grad.astype(dtype) / dtype.type(height * width)
        return np.broadcast_to(scaled, saved["x_shape"]).copy()  # (N, C, 1, 1) -> (N, C, H, W)
