"""``Conv2d`` (torch.nn.Conv2d) and ``DeformConv2d`` (the DCNv1 / DCNv2 "pack" layer): layers
around :mod:`scratchvision.ops.conv2d` and :mod:`scratchvision.ops.deform_conv2d`.

Both are built with ``rng=`` (initial values), ``dtype=`` (of the parameters) and ``backend=``
(passed to the ops on every call; ``set_backend`` changes it later).
"""

from __future__ import annotations

import numpy as np

from .. import _checks
from .._dispatch import BACKENDS
from ..ops import conv2d as conv2d_op
from ..ops import deform_conv2d as deform_conv2d_op
from .init import as_generator, float_dtype, torch_uniform
from .module import Module, Parameter

__all__ = ["Conv2d", "DeformConv2d"]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-z))`` written with tanh, which never overflows."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class _ConvBase(Module):
    """The hyper-parameters, weight and bias shared by Conv2d and DeformConv2d.

    ``weight`` (out_channels, in_channels / groups, kh, kw) and ``bias`` (out_channels,) are
    initialised from ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, ``fan_in = in_channels / groups *
    kh * kw``, torch's default (see :mod:`scratchvision.nn.init`).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation,
                 groups, bias, rng, dtype, backend):
        super().__init__()
        self.in_channels = _checks.positive_int(in_channels, "in_channels")
        self.out_channels = _checks.positive_int(out_channels, "out_channels")
        self.kernel_size = _checks.int_pair(kernel_size, "kernel_size", minimum=1)
        self.stride = _checks.int_pair(stride, "stride", minimum=1)
        self.padding = _checks.int_pair(padding, "padding", minimum=0)
        self.dilation = _checks.int_pair(dilation, "dilation", minimum=1)
        self.groups = _checks.positive_int(groups, "groups")
        for name, channels in (("in_channels", self.in_channels),
                               ("out_channels", self.out_channels)):
            if channels % self.groups:
                raise ValueError(f"groups must divide {name}: {name} is {channels}, groups is "
                                 f"{self.groups}")
        bias = _checks.boolean(bias, "bias")
        _checks.choice(backend, "backend", BACKENDS)
        self.backend = backend
        rng, dtype = as_generator(rng), float_dtype(dtype)
        kh, kw = self.kernel_size
        fan_in = self.in_channels // self.groups * kh * kw
        self.weight = Parameter(torch_uniform(
            (self.out_channels, self.in_channels // self.groups, kh, kw), fan_in, rng, dtype))
        self.bias = (Parameter(torch_uniform((self.out_channels,), fan_in, rng, dtype))
                     if bias else None)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, bias={self.bias is not None}")

    def _check_input(self, x) -> np.ndarray:
        x = _checks.float_array(x, "x", ndim=4)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x must have in_channels = {self.in_channels} channels (dim 1) "
                             f"for {type(self).__name__}, got shape {x.shape}")
        return x

    @property
    def _geometry(self) -> dict:
        """The keyword arguments the ops take for stride, padding and dilation."""
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation)

    def _bias_data(self):
        return None if self.bias is None else self.bias.data


class Conv2d(_ConvBase):
    """2-D convolution, ``torch.nn.Conv2d`` (zero padding only).

    Args:
        in_channels, out_channels: C_in and C_out.
        kernel_size, stride, padding, dilation: ints or ``(along H, along W)`` pairs.
        groups: must divide C_in and C_out.
        bias: whether to add a learned bias.
        rng, dtype, backend: see the module docstring.

    Parameters: ``weight`` (C_out, C_in / groups, kh, kw), ``bias`` (C_out,).
    Shapes: x (N, C_in, H, W) -> y (N, C_out, Ho, Wo), Ho and Wo as in
    :mod:`scratchvision.ops.conv2d`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, *, rng=None,
                 dtype=np.float64, backend: str = "auto"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, rng, dtype, backend)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", backend={self.backend!r}"

    def forward(self, x) -> np.ndarray:
        """x (N, C_in, H, W) -> y (N, C_out, Ho, Wo); remembers x for backward."""
        x = self._check_input(x)
        self._save_for_backward(x=x)
        return conv2d_op.forward(x, self.weight.data, self._bias_data(), **self._geometry,
                                 groups=self.groups, backend=self.backend)

    def backward(self, grad) -> np.ndarray:
        """grad (N, C_out, Ho, Wo), with respect to the most recent forward's output ->
        the gradient with respect to its input x (N, C_in, H, W). Adds the weight and bias
        gradients into their ``.grad``."""
        x = self._saved_for_backward()["x"]
        grads = conv2d_op.backward(grad, x, self.weight.data, self._bias_data(),
                                   **self._geometry, groups=self.groups, backend=self.backend)
        self.weight.accumulate(grads.grad_weight)
        if self.bias is not None:
            self.bias.accumulate(grads.grad_bias)
        return grads.grad_input


class DeformConv2d(_ConvBase):
    """Deformable convolution with its own offset (and mask) predictor: the "pack" layer of
    DCNv1 (``modulated=False``) and DCNv2 (``modulated=True``, the default).

    ``conv_offset``, a plain :class:`Conv2d` with the same kernel size, stride, padding and
    dilation (so its output has the deformable convolution's output size), predicts from x,
    for every output pixel, ``offset_groups * K`` sampling offsets ``(dy, dx)`` (K = kh * kw
    taps) and, for DCNv2, as many mask logits. Its weight and bias start at **zero**: the layer
    starts as a plain convolution (every offset 0) whose taps are all weighted by
    ``sigmoid(0) = 0.5``, and learns where to look.

    Output channels of ``conv_offset`` (G = offset_groups)::

        [0, 2GK)     offset, torchvision's layout: channel g*2K + 2k is dy, +1 is dx
        [2GK, 3GK)   mask logits (DCNv2 only); mask = sigmoid(logits), channel g*K + k

    then ``y = deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask)``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias:
            as for :class:`Conv2d` (``groups`` splits the channels of the main weight).
        offset_groups: G; input channels are split into G contiguous groups that share their
            offsets (and mask). Must divide in_channels.
        modulated: True for DCNv2 (offsets and a mask), False for DCNv1 (offsets only).
        rng, dtype, backend: see the module docstring.

    Parameters (names and shapes of torchvision's ``DeformConv2d`` plus mmcv's
    ``conv_offset``): ``weight`` (C_out, C_in / groups, kh, kw), ``bias`` (C_out,),
    ``conv_offset.weight`` (3GK or 2GK, C_in, kh, kw), ``conv_offset.bias`` (3GK or 2GK,).

    Backward: x reaches the output along two paths, directly (sampled by the deformable
    convolution) and through the offsets and mask that ``conv_offset`` predicts from it, so
    ``grad_x = grad_input of deform_conv2d + grad_input of conv_offset``, where conv_offset
    receives ``[grad_offset | grad_mask * mask * (1 - mask)]`` (the sigmoid's derivative).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, *, offset_groups: int = 1,
                 modulated: bool = True, rng=None, dtype=np.float64, backend: str = "auto"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, rng, dtype, backend)
        self.offset_groups = _checks.positive_int(offset_groups, "offset_groups")
        if self.in_channels % self.offset_groups:
            raise ValueError(f"offset_groups must divide in_channels: in_channels is "
                             f"{self.in_channels}, offset_groups is {self.offset_groups}")
        self.modulated = _checks.boolean(modulated, "modulated")
        kh, kw = self.kernel_size
        per_tap = 3 if self.modulated else 2  # (dy, dx[, mask logit]) per group and tap
        # rng=0: its random initial values are replaced by zeros just below, so they need not
        # draw from (and shift) the caller's stream
        self.conv_offset = Conv2d(self.in_channels, per_tap * self.offset_groups * kh * kw,
                                  self.kernel_size, self.stride, self.padding, self.dilation,
                                  rng=0, dtype=self.weight.dtype, backend=backend)
        self.conv_offset.weight.data.fill(0)
        self.conv_offset.bias.data.fill(0)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", offset_groups={self.offset_groups}, "
                f"modulated={self.modulated}, backend={self.backend!r}")

    @property
    def _offset_channels(self) -> int:
        """2 G K: the number of offset channels (the mask logits follow them)."""
        kh, kw = self.kernel_size
        return 2 * self.offset_groups * kh * kw

    # --8<-- [start:split]
    def _split(self, predicted: np.ndarray):
        """conv_offset's output (N, 3GK or 2GK, Ho, Wo) -> (offset (N, 2GK, Ho, Wo),
        mask (N, GK, Ho, Wo) or None)."""
        offset = predicted[:, :self._offset_channels]
        if not self.modulated:
            return offset, None
        return offset, _sigmoid(predicted[:, self._offset_channels:])
    # --8<-- [end:split]

    def offset_and_mask(self, x):
        """The offsets (N, 2GK, Ho, Wo) and mask (N, GK, Ho, Wo), or None for DCNv1, that the
        layer predicts for x (N, C_in, H, W). Computed afresh; forward's saved values are left
        alone, so this is safe to call between forward and backward."""
        x = self._check_input(x)
        conv = self.conv_offset
        predicted = conv2d_op.forward(x, conv.weight.data, conv.bias.data, **conv._geometry,
                                      backend=conv.backend)
        return self._split(predicted)

    def forward(self, x) -> np.ndarray:
        """x (N, C_in, H, W) -> y (N, C_out, Ho, Wo); remembers x, the offsets and the mask."""
        x = self._check_input(x)
        offset, mask = self._split(self.conv_offset(x))
        self._save_for_backward(x=x, offset=offset, mask=mask)
        return deform_conv2d_op.forward(x, offset, self.weight.data, self._bias_data(),
                                        **self._geometry, mask=mask, backend=self.backend)

    def backward(self, grad) -> np.ndarray:
        """grad (N, C_out, Ho, Wo), with respect to the most recent forward's output -> the
        gradient with respect to its input x (N, C_in, H, W), summed over both paths. Adds the
        gradients of weight, bias, conv_offset.weight and conv_offset.bias into their ``.grad``.
        """
        saved = self._saved_for_backward()
        x, offset, mask = saved["x"], saved["offset"], saved["mask"]
        grads = deform_conv2d_op.backward(grad, x, offset, self.weight.data, self._bias_data(),
                                          **self._geometry, mask=mask, backend=self.backend)
        self.weight.accumulate(grads.grad_weight)
        if self.bias is not None:
            self.bias.accumulate(grads.grad_bias)
        # --8<-- [start:mask_backward]
        if self.modulated:
            grad_logits = grads.grad_mask * mask * (1.0 - mask)  # sigmoid' = s (1 - s)
            # [(N, 2GK, Ho, Wo), (N, GK, Ho, Wo)] -> (N, 3GK, Ho, Wo), conv_offset's layout
            grad_predicted = np.concatenate([grads.grad_offset, grad_logits], axis=1)
        else:
            grad_predicted = grads.grad_offset
        grad_x_through_offsets = self.conv_offset.backward(grad_predicted)
        return grads.grad_input + grad_x_through_offsets
        # --8<-- [end:mask_backward]
