"""``MLP``: DETR's and Deformable DETR's small multi-layer perceptron (the box head
``bbox_embed`` is ``MLP(d_model, d_model, 4, 3)``): Linear layers with a ReLU between each pair
and none after the last.

With ``h_0 = x`` and num_layers = K::

    h_k = relu(h_{k-1} W_k^T + b_k),   k = 1 .. K - 1
    y   = h_{K-1} W_K^T + b_K              (no activation)                        (15)

The backward runs the chain in reverse: each Linear's backward (``grad_x = grad W``, and it adds
``grad^T x`` and ``sum grad`` into its parameters), each ReLU's (keep the gradient where the
unit was positive)::

    grad_h_{k-1} = (grad_h_k * [h_k > 0]) W_k,   grad_W_k += (grad_h_k * [h_k > 0])^T h_{k-1}   (16)

(with no ReLU mask for the last layer). Equation numbers are those of the docs page "DETR's
layers and their gradients".
"""

from __future__ import annotations

import numpy as np

from .. import _checks
from .activation import ReLU
from .init import as_generator, float_dtype
from .linear import Linear
from .module import Module, ModuleList

__all__ = ["MLP"]


class MLP(Module):
    """``num_layers`` Linear layers, ReLU between them: (..., input_dim) -> (..., output_dim).

    Args:
        input_dim: the size of the input's last axis.
        hidden_dim: the width of every hidden layer (unused when num_layers is 1).
        output_dim: the size of the output's last axis.
        num_layers: K >= 1; layer k maps ``input_dim`` (k = 0) or ``hidden_dim`` to
            ``hidden_dim`` (k < K - 1) or ``output_dim`` (the last).
        rng: None, an int seed or a ``numpy.random.Generator`` for the initial values.
        dtype: float64 (default) or float32, the dtype of the parameters.

    Parameters (Deformable DETR's names, so its ``bbox_embed`` state_dict loads 1:1):
    ``layers.<k>.weight`` and ``layers.<k>.bias`` of the ``ModuleList`` ``layers``, torch's
    Linear initialisation. The ReLUs sit in ``activations`` (no parameters).
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int, *,
                 rng=None, dtype=np.float64):
        super().__init__()
        input_dim = _checks.positive_int(input_dim, "input_dim")
        hidden_dim = _checks.positive_int(hidden_dim, "hidden_dim")
        output_dim = _checks.positive_int(output_dim, "output_dim")
        self.num_layers = _checks.positive_int(num_layers, "num_layers")
        rng, dtype = as_generator(rng), float_dtype(dtype)
        hidden = [hidden_dim] * (self.num_layers - 1)
        sizes = zip([input_dim] + hidden, hidden + [output_dim])  # (in, out) of each layer
        self.layers = ModuleList(Linear(n_in, n_out, rng=rng, dtype=dtype)
                                 for n_in, n_out in sizes)
        self.activations = ModuleList(ReLU() for _ in range(self.num_layers - 1))

    def extra_repr(self) -> str:
        first, last = self.layers[0], self.layers[-1]
        hidden = first.out_features if self.num_layers > 1 else None
        return (f"input_dim={first.in_features}, hidden_dim={hidden}, "
                f"output_dim={last.out_features}, num_layers={self.num_layers}")

    def forward(self, x) -> np.ndarray:
        """x (..., input_dim) -> (..., output_dim), equation (15); each submodule remembers
        its input."""
        # --8<-- [start:forward]
        for k, layer in enumerate(self.layers):
            x = layer(x)
            if k < self.num_layers - 1:
                x = self.activations[k](x)
        return x
        # --8<-- [end:forward]

    def backward(self, grad) -> np.ndarray:
        """grad (..., output_dim) -> grad_x (..., input_dim); adds every Linear's weight and
        bias gradient into its ``.grad``; equation (16)."""
        # --8<-- [start:backward]
        for k in reversed(range(self.num_layers)):
            if k < self.num_layers - 1:
                grad = self.activations[k].backward(grad)
            grad = self.layers[k].backward(grad)
        return grad
        # --8<-- [end:backward]
