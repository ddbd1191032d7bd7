"""``Linear``: an affine map of the last axis, ``y = x W^T + b`` (torch.nn.Linear), and the
matrix products every layer shares.

:func:`affine`, :func:`affine_backward` and :func:`batched_matmul` are the layers' matrix
products. They run inside numba's thread pool (:func:`scratchvision.ops.gemm.matmul`: blocks
of rows, one single-threaded BLAS call each) rather than in NumPy's BLAS threads, so a model
that alternates between products and the ops' numba kernels never hands the cores back and
forth between two pools (see the design page, "Thread pools").
"""

from __future__ import annotations

import math

import numpy as np

from .. import _checks
from ..ops import gemm
from .init import as_generator, float_dtype, torch_uniform
from .module import Module, Parameter

__all__ = ["Linear", "affine", "affine_backward", "batched_matmul"]


def batched_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for stacks of matrices of the same leading shape: a (..., M, K), b (..., K, N)
    -> (..., M, N), the products run in numba's threads."""
    lead = a.shape[:-2]
    count = math.prod(lead)
    # (..., M, K) -> (B, M, K) and (..., K, N) -> (B, K, N)
    out = gemm.matmul(a.reshape((count,) + a.shape[-2:]), b.reshape((count,) + b.shape[-2:]))
    return out.reshape(lead + out.shape[1:])  # (B, M, N) -> (..., M, N)


def affine(x: np.ndarray, weight: np.ndarray, bias) -> np.ndarray:
    """x (..., E_in) @ weight^T (E_in, E_out) + bias (E_out,) -> (..., E_out)."""
    rows = x.reshape(1, math.prod(x.shape[:-1]), x.shape[-1])  # (..., E_in) -> (1, R, E_in)
    y = gemm.matmul(rows, np.ascontiguousarray(weight.T)[None])[0]  # (R, E_out)
    y = y.reshape(x.shape[:-1] + (weight.shape[0],))
    return y if bias is None else y + bias


def affine_backward(grad_y: np.ndarray, x: np.ndarray, weight: np.ndarray):
    """The gradients of :func:`affine`: grad_y (..., E_out), x (..., E_in), weight
    (E_out, E_in) -> (grad_x (..., E_in), grad_weight (E_out, E_in), grad_bias (E_out,))."""
    rows = math.prod(x.shape[:-1])
    x_rows = x.reshape(rows, x.shape[-1])  # (..., E_in) -> (R, E_in)
    grad_rows = grad_y.reshape(rows, grad_y.shape[-1])  # (..., E_out) -> (R, E_out)
    grad_x = gemm.matmul(grad_rows[None], weight[None])[0].reshape(x.shape)  # (R, E_in)
    # (E_out, R) @ (R, E_in) -> (E_out, E_in)
    grad_weight = gemm.matmul(np.ascontiguousarray(grad_rows.T)[None], x_rows[None])[0]
    return grad_x, grad_weight, grad_rows.sum(axis=0)


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
    (..., out_features). :func:`affine` does the work; there is no op and no ``backend``.
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
        # (..., in) @ (in, out) -> (..., out)
        y = affine(x, self.weight.data, None if self.bias is None else self.bias.data)
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
        grad = grad.astype(np.result_type(grad, x), copy=False)
        grad_x, grad_weight, grad_bias = affine_backward(grad, x, self.weight.data)
        self.weight.accumulate(grad_weight)  # (out, M) @ (M, in) -> (out, in)
        if self.bias is not None:
            self.bias.accumulate(grad_bias)  # (M, out) -> (out,)
        return grad_x  # (..., out) @ (out, in) -> (..., in)
