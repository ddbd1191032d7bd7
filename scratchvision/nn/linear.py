"""``Linear``: an affine map of the last axis, ``y = x W^T + b`` (torch.nn.Linear)."""

from __future__ import annotations

import numpy as np

from .. import _checks
from .init import as_generator, float_dtype, torch_uniform
from .module import Module, Parameter

__all__ = ["Linear"]


class Linear(Module):
    """``y[..., o] = sum_i x[..., i] * weight[o, i] + bias[o]``.

    Args:
        in_features, out_features: sizes of the last axis of the input and of the output.
        bias: whether to add a learned bias.
        rng: None, an int seed or a ``numpy.random.Generator`` for the initial values.
        dtype: float64 (default) or float32, the dtype of the parameters.

    Parameters (torch's names and shapes): ``weight`` (out_features, in_features) and
    ``bias`` (out_features,), both initialised from ``U(-1/sqrt(in_features),
    1/sqrt(in_features))`` (torch's default; see :mod:`scratchvision.nn.init`).

    The input may have any number of leading dimensions: (..., in_features) ->
    (..., out_features). NumPy's matmul does the work; there is no op and no ``backend``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, rng=None,
                 dtype=np.float64):
        super().__init__()
        self.in_features = _checks.positive_int(in_features, "in_features")
        self.out_features = _checks.positive_int(out_features, "out_features")
        bias = _checks.boolean(bias, "bias")
        rng, dtype = as_generator(rng), float_dtype(dtype)
        self.weight = Parameter(torch_uniform((out_features, in_features), in_features, rng,
                                              dtype))
        self.bias = (Parameter(torch_uniform((out_features,), in_features, rng, dtype))
                     if bias else None)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")

    def forward(self, x) -> np.ndarray:
        """x (..., in_features) -> y (..., out_features); remembers x for backward."""
        x = _checks.float_array(x, "x", min_ndim=1)
        _checks.last_dim(x, "x", self.in_features, "(in_features)")
        y = x @ self.weight.data.T  # (..., in) @ (in, out) -> (..., out)
        if self.bias is not None:
            y = y + self.bias.data
        self._save_for_backward(x=x)
        return y

    def backward(self, grad) -> np.ndarray:
        """grad (..., out_features), the gradient of the loss with respect to the output of the
        most recent forward -> the gradient with respect to its input x (..., in_features).

        Adds ``grad_weight = sum over ... of grad^T x`` and ``grad_bias = sum over ... of grad``
        into the parameters' ``.grad``.
        """
        x = self._saved_for_backward()["x"]
        grad = _checks.float_array(grad, "grad")
        _checks.shape_equals(grad, "grad", x.shape[:-1] + (self.out_features,),
                             "the shape of forward's output")
        # (..., in) -> (M, in) and (..., out) -> (M, out), M = the product of the leading dims
        x_rows = x.reshape(-1, self.in_features)
        grad_rows = grad.reshape(-1, self.out_features)
        self.weight.accumulate(grad_rows.T @ x_rows)  # (out, M) @ (M, in) -> (out, in)
        if self.bias is not None:
            self.bias.accumulate(grad_rows.sum(axis=0))  # (M, out) -> (out,)
        return grad @ self.weight.data  # (..., out) @ (out, in) -> (..., in)
