"""Shape bookkeeping shared by ``conv2d`` and ``deform_conv2d``: hyper-parameters, groups,
weight and bias checks, and the output size.

Output size (torch's formula, per axis)::

    Ho = floor((H + 2 * ph - dh * (kh - 1) - 1) / sh) + 1

Kernel tap ``(i, j)`` of output pixel ``(ho, wo)`` reads input row
``ho * sh - ph + i * dh`` and column ``wo * sw - pw + j * dw`` (plus the learned offset in
deformable convolution).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import _checks


class ConvGeometry(NamedTuple):
    """Normalised hyper-parameters, each an ``(along H, along W)`` pair."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    out: tuple[int, int]


def conv_geometry(in_hw, kernel_hw, stride, padding, dilation) -> ConvGeometry:
    """Validate stride (>= 1), padding (>= 0) and dilation (>= 1) and compute the output size.

    Raises ``ValueError`` naming the argument, or saying that the output would be empty.
    """
    stride = _checks.int_pair(stride, "stride", minimum=1)
    padding = _checks.int_pair(padding, "padding", minimum=0)
    dilation = _checks.int_pair(dilation, "dilation", minimum=1)
    out = tuple(
        (size + 2 * pad - dil * (k - 1) - 1) // st + 1
        for size, k, st, pad, dil in zip(in_hw, kernel_hw, stride, padding, dilation)
    )
    if min(out) < 1:
        raise ValueError(
            f"empty output: input spatial size {tuple(in_hw)} with kernel {tuple(kernel_hw)}, "
            f"stride {stride}, padding {padding} and dilation {dilation} gives output size "
            f"{out}; expected at least (1, 1)")
    return ConvGeometry(tuple(kernel_hw), stride, padding, dilation, out)


def check_weight_and_bias(x: np.ndarray, weight: np.ndarray, bias, groups: int):
    """Check ``weight`` (C_out, C_in / groups, kh, kw) and ``bias`` (C_out,) or None against
    ``x`` (N, C_in, H, W) and ``groups``; return ``(groups, bias)`` validated (bias may be
    None)."""
    groups = _checks.positive_int(groups, "groups")
    c_in = x.shape[1]
    c_out, c_per_group = weight.shape[:2]
    if c_in % groups:
        raise ValueError(f"groups must divide the input channels: x has {c_in} channels, "
                         f"groups is {groups}")
    if c_out % groups:
        raise ValueError(f"groups must divide the output channels: weight has {c_out} output "
                         f"channels (dim 0), groups is {groups}")
    if c_per_group * groups != c_in:
        raise ValueError(f"weight must have C_in / groups = {c_in} / {groups} = "
                         f"{c_in // groups} channels in dim 1, got shape {weight.shape}")
    if weight.shape[2] == 0 or weight.shape[3] == 0:
        raise ValueError(f"weight must have a non-empty kernel, got shape {weight.shape}")
    if bias is None:
        return groups, None
    bias = _checks.float_array(bias, "bias", ndim=1, device=True)
    _checks.shape_equals(bias, "bias", (c_out,), "one entry per output channel, weight.shape[0]")
    return groups, bias
