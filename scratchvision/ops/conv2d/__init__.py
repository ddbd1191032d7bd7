"""2-D convolution (cross-correlation, as in deep learning) with stride, padding, dilation and
groups: ``torch.nn.functional.conv2d``, forward and backward.

Public functions validate and normalise their arguments (see ``scratchvision._checks`` and
``scratchvision.ops.conv_geometry``), then dispatch to one of four tiers that all compute the
same function:

* ``loop``  -- :mod:`scratchvision.ops.conv2d.loop`, the seven-nested sum, the specification;
* ``numpy`` -- :mod:`scratchvision.ops.conv2d.vectorized`, im2col by strided views + matmul;
* ``numba`` -- :mod:`scratchvision.ops.conv2d.numba_cpu`, parallel im2col / col2im + BLAS;
* ``cuda``  -- :mod:`scratchvision.ops.conv2d.numba_cuda`, GPU kernels (or the simulator).

Shapes: ``x`` (N, C_in, H, W), ``weight`` (C_out, C_in / groups, kh, kw), ``bias`` (C_out,)
or None, output (N, C_out, Ho, Wo) with, per axis,
``Ho = floor((H + 2 * ph - dh * (kh - 1) - 1) / sh) + 1``. Output channel ``o`` belongs to
group ``grp = o // (C_out / groups)`` and sees only input channels
``grp * C_in / groups ... (grp + 1) * C_in / groups - 1``. The derivations are in
``docs/derivations/conv2d.md``.

GPU arrays (numba device arrays, CuPy arrays, torch CUDA tensors) are accepted by the ``cuda``
tier, which then returns numba device arrays without touching the host; NumPy in gives NumPy
out (see ``scratchvision._checks``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ... import _checks
from ..._dispatch import TierModules
from ..conv_geometry import ConvGeometry, check_weight_and_bias, conv_geometry

__all__ = ["forward", "backward", "Conv2dGrads"]

_tiers = TierModules(__name__)


class Conv2dGrads(NamedTuple):
    """Gradients of :func:`forward`: ``grad_input`` (N, C_in, H, W), ``grad_weight``
    (C_out, C_in / groups, kh, kw) and ``grad_bias`` (C_out,), or None when there is no bias."""

    grad_input: np.ndarray
    grad_weight: np.ndarray
    grad_bias: np.ndarray | None


def _conv_args(x, weight, bias, stride, padding, dilation, groups):
    """Validate the forward's inputs and hyper-parameters.

    Returns ``(x, weight, bias, geom, groups)``, the arrays validated but not yet cast to their
    common dtype (bias may be None).
    """
    x = _checks.float_array(x, "x", ndim=4, device=True)
    weight = _checks.float_array(weight, "weight", ndim=4, device=True)
    groups, bias = check_weight_and_bias(x, weight, bias, groups)
    _checks.nonempty_spatial(x, "x")
    geom = conv_geometry(x.shape[2:], weight.shape[2:], stride, padding, dilation)
    return x, weight, bias, geom, groups


def _output_shape(x: np.ndarray, weight: np.ndarray, geom: ConvGeometry) -> tuple:
    return (x.shape[0], weight.shape[0]) + tuple(geom.out)


def forward(x, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1,
            backend: str = "auto") -> np.ndarray:
    """Convolve ``x`` with ``weight`` like ``torch.nn.functional.conv2d``.

    Args:
        x: (N, C_in, H, W) float array.
        weight: (C_out, C_in / groups, kh, kw) float array.
        bias: (C_out,) float array, or None.
        stride: ``(sh, sw)`` or one int for both, >= 1.
        padding: ``(ph, pw)`` or one int, >= 0: zeros added on each side of each axis.
        dilation: ``(dh, dw)`` or one int, >= 1: the spacing between kernel taps.
        groups: splits the input and output channels into ``groups`` independent
            convolutions; must divide C_in and C_out.
        backend: ``"auto"``, ``"loop"``, ``"numpy"``, ``"numba"`` or ``"cuda"``.

    Returns:
        y: (N, C_out, Ho, Wo),
        ``y[n, o, ho, wo] = bias[o] + sum_{c, i, j} weight[o, c, i, j]
        * x[n, grp * C_in / groups + c, ho * sh - ph + i * dh, wo * sw - pw + j * dw]``,
        with ``grp`` the group of ``o`` and zero where the index falls in the padding. The dtype
        is the common float dtype of ``x``, ``weight`` and ``bias``; a numba device array when
        the inputs are GPU arrays (cuda tier).
    """
    x, weight, bias, geom, groups = _conv_args(x, weight, bias, stride, padding, dilation,
                                               groups)
    tier = _tiers.get(backend, x=x, weight=weight, bias=bias)
    x, weight, bias = _checks.common_float(("x", x), ("weight", weight), ("bias", bias))
    # empty batch or no channels: only the bias is left (on the GPU the tier computes that)
    if (x.size == 0 or weight.size == 0) and not _checks.is_device_array(x):
        y = np.zeros(_output_shape(x, weight, geom), dtype=x.dtype)
        if bias is not None:
            y += bias[:, None, None]  # (C_out,) -> (C_out, 1, 1), broadcast over the pixels
        return y
    return tier.forward(x, weight, bias, geom, groups)


def backward(gy, x, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1,
             backend: str = "auto") -> Conv2dGrads:
    """Vector-Jacobian product of :func:`forward`.

    Args:
        gy: (N, C_out, Ho, Wo) upstream gradient, the shape of ``forward``'s output.
        x, weight, bias, stride, padding, dilation, groups, backend: as for :func:`forward`.
            Only ``bias``'s presence (and dtype) matter: the output is linear in it.

    Returns:
        ``Conv2dGrads(grad_input (N, C_in, H, W), grad_weight (C_out, C_in / groups, kh, kw),
        grad_bias (C_out,) or None when bias is None)``, in the common float dtype of ``gy``,
        ``x``, ``weight`` and ``bias``; numba device arrays for GPU inputs (cuda tier).
    """
    x, weight, bias, geom, groups = _conv_args(x, weight, bias, stride, padding, dilation,
                                               groups)
    gy = _checks.float_array(gy, "gy", ndim=4, device=True)
    _checks.shape_equals(gy, "gy", _output_shape(x, weight, geom), "the shape of forward's output")
    tier = _tiers.get(backend, gy=gy, x=x, weight=weight, bias=bias)
    gy, x, weight, bias = _checks.common_float(("gy", gy), ("x", x), ("weight", weight),
                                               ("bias", bias))
    has_bias = bias is not None
    # nothing is multiplied: only the bias sees gy (on the GPU the tier computes that)
    if (x.size == 0 or weight.size == 0) and not _checks.is_device_array(x):
        grad_bias = gy.sum(axis=(0, 2, 3)) if has_bias else None
        return Conv2dGrads(np.zeros_like(x), np.zeros_like(weight), grad_bias)
    return Conv2dGrads(*tier.backward(gy, x, weight, has_bias, geom, groups))
