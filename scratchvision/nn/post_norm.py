"""The two sublayer patterns of a post-norm transformer layer (DETR, Deformable DETR), forward
and backward, shared by :class:`~scratchvision.nn.DeformableEncoderLayer` and
:class:`~scratchvision.nn.DeformableDecoderLayer`.

Equation numbers are those of the docs page "DETR's layers and their gradients"
(``docs/derivations/detr_layers.md``), which derives them.

**Add & norm**: a sublayer's output y (an attention's) joins the residual stream x::

    out = norm(x + dropout(y))                                                    (9)

Its backward: the sum sends the gradient reaching it, ``g = norm.backward(grad)``, unchanged
to both terms::

    grad_x = g,   grad_y = dropout.backward(g)                                   (10)

**Feed-forward** (the FFN, itself closed by add & norm)::

    out = norm(x + dropout_b(linear2(dropout_a(activation(linear1(x))))))        (11)

x is both terms' input, so its gradient is the sum of the residual path and the FFN path::

    grad_x = g + linear1.backward(activation.backward(dropout_a.backward(
                     linear2.backward(dropout_b.backward(g)))))                     (12)

These are functions of the layer's own submodules, not a submodule: the parameters keep the
reference implementation's names (``linear1.weight``, ``norm2.bias``, ...), and each submodule
remembers its own forward. A dropout of None is the identity (the encoder layer has none).
"""

from __future__ import annotations

import numpy as np

__all__ = ["add_and_norm", "add_and_norm_backward", "feed_forward", "feed_forward_backward"]


def _apply(module, x: np.ndarray) -> np.ndarray:
    return x if module is None else module(x)


def _apply_backward(module, grad: np.ndarray) -> np.ndarray:
    return grad if module is None else module.backward(grad)


# --8<-- [start:add_and_norm]
def add_and_norm(x: np.ndarray, y: np.ndarray, norm, dropout=None) -> np.ndarray:
    """``norm(x + dropout(y))``, equation (9): x the residual stream, y a sublayer's output,
    both (..., C)."""
    return norm(x + _apply(dropout, y))


def add_and_norm_backward(grad: np.ndarray, norm, dropout=None):
    """The gradient of the most recent :func:`add_and_norm` output -> ``(grad_x, grad_y)``,
    equation (10)."""
    g = norm.backward(grad)  # the gradient of x + dropout(y)
    return g, _apply_backward(dropout, g)
# --8<-- [end:add_and_norm]


# --8<-- [start:feed_forward]
def feed_forward(x: np.ndarray, linear1, activation, linear2, norm,
                 dropouts=(None, None)) -> np.ndarray:
    """Equation (11), x (..., C) -> (..., C): ``dropouts`` are dropout_a (after the activation)
    and dropout_b (after linear2)."""
    dropout_a, dropout_b = dropouts
    hidden = _apply(dropout_a, activation(linear1(x)))  # (..., d_ffn)
    return add_and_norm(x, linear2(hidden), norm, dropout_b)


def feed_forward_backward(grad: np.ndarray, linear1, activation, linear2, norm,
                          dropouts=(None, None)) -> np.ndarray:
    """The gradient of the most recent :func:`feed_forward` output -> that of x, equation (12)
    (the residual path plus the FFN path); adds the Linears' and the norm's gradients into
    their parameters."""
    dropout_a, dropout_b = dropouts
    g_residual, g_ffn = add_and_norm_backward(grad, norm, dropout_b)
    g_hidden = _apply_backward(dropout_a, linear2.backward(g_ffn))  # (..., d_ffn)
    return g_residual + linear1.backward(activation.backward(g_hidden))
# --8<-- [end:feed_forward]
