"""``GroupNorm``: normalise groups of channels of each sample, then scale and shift each channel
(torch.nn.GroupNorm). Deformable DETR uses it after every 1x1 input projection
(``Conv2d`` then ``GroupNorm(32, 256)``), where batch statistics would be useless with two
images per GPU.

The C channels of an (N, C, *) input are split into G groups of K = C / G consecutive
channels. Each (sample n, group g) is one **row** of M = K * (product of *) numbers: the K
channels at every position. With x one such row, c(i) the channel of entry i::

    mu    = mean_i x_i                                      (1)
    var   = mean_i (x_i - mu)^2       biased: divide by M    (2)
    r     = 1 / sqrt(var + eps)                             (3)
    xhat  = (x - mu) * r                                    (4)
    y_i   = xhat_i * weight[c(i)] + bias[c(i)]              (5)

Backward, derived step by step on the docs page "DETR's layers and their gradients"
(``docs/derivations/detr_layers.md``). With ``g_i = grad_y_i * weight[c(i)]`` (6), the
gradient reaching xhat, the chain rule through (1)-(4) gives, for every row::

    grad_x = r * (g - mean_i g - xhat * mean_i (g * xhat))   (7)

LayerNorm's equation (6) on the group's row; and each channel's parameters collect from every
sample and position of that channel::

    grad_weight[c] = sum over n, * of grad_y * xhat,   grad_bias[c] = sum over n, * of grad_y   (8)

G = 1 normalises each sample over all its channels and positions (LayerNorm over (C, *));
G = C normalises each channel of each sample on its own (InstanceNorm).
"""

from __future__ import annotations

import math

import numpy as np

from .. import _checks
from .init import as_generator, float_dtype
from .module import Module, Parameter

__all__ = ["GroupNorm"]


class GroupNorm(Module):
    """Group normalisation of (N, C, *) inputs, equations (1)-(5) of the module docstring.

    Args:
        num_groups: G, which must divide num_channels.
        num_channels: C, the size of dimension 1 of the input.
        eps: added to the variance before the square root (torch's default 1e-5).
        affine: whether to learn a per-channel ``weight`` and ``bias``; without them y = xhat.
        rng: accepted like every layer's (None, an int seed or a Generator) but not used: the
            initial values are fixed.
        dtype: float64 (default) or float32, the dtype of the parameters.

    Parameters (torch's names and shapes, when ``affine``): ``weight`` (C,) initialised to ones
    and ``bias`` (C,) initialised to zeros. Otherwise both attributes are None.

    The input is (N, C) or (N, C, d1, d2, ...), e.g. (N, C, H, W) feature maps; the output has
    its shape. Statistics are per sample (never across the batch), with the biased variance,
    as in torch; arithmetic happens in the common dtype of the input and the parameters.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5,
                 affine: bool = True, *, rng=None, dtype=np.float64):
        super().__init__()
        self.num_groups = _checks.positive_int(num_groups, "num_groups")
        self.num_channels = _checks.positive_int(num_channels, "num_channels")
        if self.num_channels % self.num_groups:
            raise ValueError(f"num_groups must divide num_channels: num_channels is "
                             f"{self.num_channels}, num_groups is {self.num_groups}")
        self.eps = _checks.real_number(eps, "eps", finite=True, positive=True)
        self.affine = _checks.boolean(affine, "affine")
        as_generator(rng)  # validated for a uniform constructor; nothing is random here
        dtype = float_dtype(dtype)
        if self.affine:
            self.weight = Parameter(np.ones(self.num_channels, dtype=dtype))
            self.bias = Parameter(np.zeros(self.num_channels, dtype=dtype))
        else:
            self.weight = None
            self.bias = None

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"

    def _per_channel(self, values: np.ndarray, ndim: int) -> np.ndarray:
        """(C,) -> (C, 1, ..., 1): broadcast over the positions of an ndim-d input (N, C, *)."""
        return values.reshape((self.num_channels,) + (1,) * (ndim - 2))

    def _rows(self, x: np.ndarray) -> np.ndarray:
        """(N, C, *) -> (N, G, M), M = C / G * prod(*): a group's channels are consecutive, so
        in row-major order its K channels at all positions are one contiguous row."""
        row_length = self.num_channels // self.num_groups * math.prod(x.shape[2:])
        return x.reshape(x.shape[0], self.num_groups, row_length)

    def forward(self, x) -> np.ndarray:
        """x (N, C, *) -> y (N, C, *); remembers xhat (N, C, *) and r (N, G, 1) for backward."""
        x = _checks.float_array(x, "x", min_ndim=2)
        if x.shape[1] != self.num_channels:
            raise ValueError(f"x must have num_channels = {self.num_channels} channels in "
                             f"dimension 1, (N, C, *), got shape {x.shape}")
        # --8<-- [start:forward]
        rows = self._rows(x)  # (N, C, *) -> (N, G, M)
        mu = rows.mean(axis=-1, keepdims=True)  # (1): (N, G, 1)
        centred = rows - mu
        var = np.mean(centred * centred, axis=-1, keepdims=True)  # (2): (N, G, 1)
        r = 1.0 / np.sqrt(var + self.eps)  # (3): (N, G, 1)
        xhat = (centred * r).reshape(x.shape)  # (4): (N, G, M) -> (N, C, *)
        self._save_for_backward(xhat=xhat, r=r)
        if not self.affine:
            return xhat
        # (5): weight and bias (C,) -> (C, 1, ..., 1), one value per channel
        return (xhat * self._per_channel(self.weight.data, x.ndim)
                + self._per_channel(self.bias.data, x.ndim))
        # --8<-- [end:forward]

    def backward(self, grad) -> np.ndarray:
        """grad (N, C, *), the gradient with respect to the most recent forward's output ->
        grad_x (N, C, *), equation (7); adds (8) into ``weight.grad`` and ``bias.grad``."""
        saved = self._saved_for_backward()
        xhat, r = saved["xhat"], saved["r"]
        grad = _checks.float_array(grad, "grad")
        _checks.shape_equals(grad, "grad", xhat.shape, "the shape of forward's output")
        # --8<-- [start:backward]
        if self.affine:
            not_channels = (0,) + tuple(range(2, grad.ndim))  # every axis but C
            self.weight.accumulate((grad * xhat).sum(axis=not_channels))  # (8)
            self.bias.accumulate(grad.sum(axis=not_channels))  # (8)
            g = grad * self._per_channel(self.weight.data, grad.ndim)  # (6)
        else:
            g = grad
        g, xhat = self._rows(g), self._rows(xhat)  # (N, C, *) -> (N, G, M)
        g_mean = g.mean(axis=-1, keepdims=True)  # (N, G, 1)
        g_xhat_mean = np.mean(g * xhat, axis=-1, keepdims=True)  # (N, G, 1)
        return (r * (g - g_mean - xhat * g_xhat_mean)).reshape(grad.shape)  # (7)
        # --8<-- [end:backward]
