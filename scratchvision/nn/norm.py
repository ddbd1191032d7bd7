"""``LayerNorm``: normalise the last axis to zero mean and unit variance, then scale and shift
(torch.nn.LayerNorm with an int ``normalized_shape``).

For one row ``x`` of C numbers (the last axis; every leading index is its own row)::

    mu    = mean_c x_c                                     (1)
    var   = mean_c (x_c - mu)^2        biased: divide by C   (2)
    r     = 1 / sqrt(var + eps)                            (3)
    xhat  = (x - mu) * r                                   (4)
    y     = xhat * weight + bias                           (5)

Backward. With ``g = grad_y * weight`` (the gradient reaching xhat, from (5)), the chain rule
through (1)-(4) collapses to one line, because mu and var depend on every x_c of the row::

    grad_x = r * (g - mean_c g - xhat * mean_c (g * xhat))    (6)

(d xhat_c / d x_k = r (delta_ck - 1/C - xhat_c xhat_k / C); contract with g.) The parameters
get ``grad_weight = sum over rows of grad_y * xhat`` and ``grad_bias = sum over rows of
grad_y`` (7). The function is smooth (eps > 0 keeps r finite even for a constant row).
"""

from __future__ import annotations


import numpy as np

from .. import _checks
from .init import as_generator, float_dtype
from .module import Module, Parameter

__all__ = ["LayerNorm"]


class LayerNorm(Module):
    """Layer normalisation over the last axis: (..., C) -> (..., C), equations (1)-(5) of the
    module docstring.

    Args:
        normalized_shape: C, the size of the last axis (an int; torch also accepts a tuple of
            trailing dimensions, which this layer does not).
        eps: added to the variance before the square root (torch's default 1e-5).
        elementwise_affine: whether to learn ``weight`` and ``bias``; without them y = xhat.
        rng: accepted like every layer's (None, an int seed or a Generator) but not used: the
            initial values are fixed.
        dtype: float64 (default) or float32, the dtype of the parameters.

    Parameters (torch's names and shapes, when ``elementwise_affine``): ``weight`` (C,),
    initialised to ones, and ``bias`` (C,), initialised to zeros. Otherwise both attributes
    are None and the layer has no parameters, as in torch.

    The variance is the biased one (divided by C, not C - 1), as in torch. Arithmetic happens
    in the common dtype of the input and the parameters: a float32 input to a float32 layer is
    normalised in float32 (numpy's pairwise sums) and gives float32 out.
    """

    def __init__(self, normalized_shape: int, eps: float = 1e-5, elementwise_affine: bool = True,
                 *, rng=None, dtype=np.float64):
        super().__init__()
        self.normalized_shape = _checks.positive_int(normalized_shape, "normalized_shape")
        self.eps = _checks.real_number(eps, "eps", finite=True, positive=True)
        self.elementwise_affine = _checks.boolean(elementwise_affine, "elementwise_affine")
        as_generator(rng)  # validated for a uniform constructor; nothing is random here
        dtype = float_dtype(dtype)
        if self.elementwise_affine:
            self.weight = Parameter(np.ones(self.normalized_shape, dtype=dtype))
            self.bias = Parameter(np.zeros(self.normalized_shape, dtype=dtype))
        else:
            self.weight = None
            self.bias = None

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")

    def forward(self, x) -> np.ndarray:
        """x (..., C) -> y (..., C); remembers xhat (..., C) and r (..., 1) for backward."""
        x = _checks.float_array(x, "x", min_ndim=1)
        _checks.last_dim(x, "x", self.normalized_shape, "(normalized_shape)")
        # --8<-- [start:forward]
        mu = x.mean(axis=-1, keepdims=True)  # (1): (..., C) -> (..., 1)
        centred = x - mu
        var = np.mean(centred * centred, axis=-1, keepdims=True)  # (2): (..., 1)
        r = 1.0 / np.sqrt(var + self.eps)  # (3): (..., 1), a Python float keeps x's dtype
        xhat = centred * r  # (4): (..., C)
        self._save_for_backward(xhat=xhat, r=r)
        if not self.elementwise_affine:
            return xhat
        return xhat * self.weight.data + self.bias.data  # (5)
        # --8<-- [end:forward]

    def backward(self, grad) -> np.ndarray:
        """grad (..., C), the gradient with respect to the most recent forward's output ->
        grad_x (..., C), equation (6); adds (7) into ``weight.grad`` and ``bias.grad``."""
        saved = self._saved_for_backward()
        xhat, r = saved["xhat"], saved["r"]
        grad = _checks.float_array(grad, "grad")
        _checks.shape_equals(grad, "grad", xhat.shape, "the shape of forward's output")
        # --8<-- [start:backward]
        if self.elementwise_affine:
            # (7): sum over every leading axis, (..., C) -> (C,)
            rows = grad.reshape(-1, self.normalized_shape)
            self.weight.accumulate((rows * xhat.reshape(rows.shape)).sum(axis=0))
            self.bias.accumulate(rows.sum(axis=0))
            g = grad * self.weight.data  # the gradient reaching xhat, from (5)
        else:
            g = grad
        g_mean = g.mean(axis=-1, keepdims=True)  # (..., 1)
        g_xhat_mean = np.mean(g * xhat, axis=-1, keepdims=True)  # (..., 1)
        return r * (g - g_mean - xhat * g_xhat_mean)  # (6)
        # --8<-- [end:backward]
