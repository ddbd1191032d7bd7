"""Deformable convolution, DCNv1 and DCNv2 (modulated), as ``torchvision.ops.deform_conv2d``.

Each output pixel of an ordinary convolution reads its ``kh x kw`` input taps on a fixed grid.
Deformable convolution moves every tap by a learned, per-pixel offset and reads the input
there with bilinear sampling; DCNv2 also scales every tap by a learned mask:

    Y[n, o, p0] = b[o] + sum_c sum_k W[o, c, k] * m_k(p0) * X[n, c](p0 + p_k + dp_k(p0))

Public functions validate and normalise their arguments (see ``scratchvision._checks`` and
``scratchvision.ops.conv_geometry``), then dispatch to one of four tiers that all compute the
same function:

* ``loop``  -- :mod:`scratchvision.ops.deform_conv2d.loop`, the executable specification;
* ``numpy`` -- :mod:`scratchvision.ops.deform_conv2d.vectorized`, bilinear columns + GEMM;
* ``numba`` -- :mod:`scratchvision.ops.deform_conv2d.numba_cpu`, the same with numba kernels;
* ``cuda``  -- :mod:`scratchvision.ops.deform_conv2d.numba_cuda`, GPU kernels (or the
  simulator).

Layout (exactly torchvision's; K = kh * kw, tap k = i * kw + j):

* ``offset`` (N, 2 * G * K, Ho, Wo): channel ``g * 2K + 2k`` is the *row* offset dy and
  channel ``g * 2K + 2k + 1`` the *column* offset dx of tap k in offset group g. The number of
  offset groups G is ``offset.shape[1] // (2 * K)``; input channels are split into G
  contiguous groups of C_in / G, each moved by its own offsets.
* ``mask`` (N, G * K, Ho, Wo) or None: channel ``g * K + k`` scales tap k of offset group g.
  Values are used as given (not clamped to [0, 1]); ``None`` means DCNv1 (every mask 1).
* ``weight`` (C_out, C_in / groups, kh, kw): the weight groups are ``C_in // weight.shape[1]``,
  as in ``torch.nn.functional.conv2d``.
* Tap (i, j) of output pixel (ho, wo) samples the input at row
  ``ho * sh - ph + i * dh + dy`` and column ``wo * sw - pw + j * dw + dx``, with per-tap zero
  padding and the pixel-centre convention of :mod:`scratchvision.ops.bilinear`.

The derivations are in ``docs/derivations/deform_conv2d.md``.

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

__all__ = ["forward", "backward", "DeformConv2dGrads"]

_tiers = TierModules(__name__)


class DeformConv2dGrads(NamedTuple):
    """Gradients of :func:`forward`, in the order of its array arguments.

    ``grad_input`` (N, C_in, H, W), ``grad_offset`` (N, 2 * G * kh * kw, Ho, Wo),
    ``grad_weight`` (C_out, C_in / groups, kh, kw), ``grad_bias`` (C_out,) or None when
    ``bias`` is None, ``grad_mask`` (N, G * kh * kw, Ho, Wo) or None when ``mask`` is None.
    """

    grad_input: np.ndarray
    grad_offset: np.ndarray
    grad_weight: np.ndarray
    grad_bias: np.ndarray | None
    grad_mask: np.ndarray | None


class _Args(NamedTuple):
    """Validated arguments: arrays in their common float dtype, C-contiguous."""

    x: np.ndarray
    offset: np.ndarray
    weight: np.ndarray
    bias: np.ndarray | None
    mask: np.ndarray | None
    geom: ConvGeometry
    offset_groups: int
    weight_groups: int


def _weight_groups(x: np.ndarray, weight: np.ndarray) -> int:
    """The weight groups ``C_in // weight.shape[1]``, checked to split C_in exactly."""
    c_in, c_per_group = x.shape[1], weight.shape[1]
    if c_per_group == 0 or c_in % c_per_group:
        raise ValueError(
            f"weight must have C_in / groups input channels in dim 1, a divisor of x's {c_in} "
            f"channels (the weight groups are C_in // weight.shape[1]); got weight shape "
            f"{weight.shape}")
    groups = c_in // c_per_group
    if weight.shape[0] % groups:
        raise ValueError(
            f"the weight groups must divide the output channels: weight has {weight.shape[0]} "
            f"output channels (dim 0) and C_in // weight.shape[1] = {c_in} // {c_per_group} = "
            f"{groups} groups")
    return groups


def _offset_groups(x: np.ndarray, offset: np.ndarray, n_taps: int) -> int:
    """The offset groups ``offset.shape[1] // (2 * K)``, checked against the layout and C_in."""
    channels = offset.shape[1]
    if channels == 0 or channels % (2 * n_taps):
        raise ValueError(
            f"offset must have a positive multiple of 2 * kh * kw = {2 * n_taps} channels "
            f"(a (dy, dx) pair per kernel tap and offset group), got shape {offset.shape}")
    groups = channels // (2 * n_taps)
    if x.shape[1] % groups:
        raise ValueError(
            f"the offset groups must divide x's channels: offset has {channels} channels = "
            f"{groups} offset groups of 2 * {n_taps}, x has {x.shape[1]} channels")
    return groups


def _validate(x, offset, weight, bias, stride, padding, dilation, mask, backend,
              extra=()) -> _Args:
    """Check every argument against the others and resolve ``backend``; ``extra`` holds
    further ``(name, array)`` pairs (``gy``) that join the common dtype and are returned after
    the ``_Args`` and the tier module."""
    x = _checks.float_array(x, "x", ndim=4, device=True)
    offset = _checks.float_array(offset, "offset", ndim=4, device=True)
    weight = _checks.float_array(weight, "weight", ndim=4, device=True)
    if mask is not None:
        mask = _checks.float_array(mask, "mask", ndim=4, device=True)
    weight_groups = _weight_groups(x, weight)
    weight_groups, bias = check_weight_and_bias(x, weight, bias, weight_groups)
    n_batch, _, height, width = x.shape
    kernel = weight.shape[2:]
    geom = conv_geometry((height, width), kernel, stride, padding, dilation)
    n_taps = kernel[0] * kernel[1]
    _checks.same_size("x", n_batch, "offset", offset.shape[0], "batch size (dim 0)")
    offset_groups = _offset_groups(x, offset, n_taps)
    _checks.shape_equals(offset, "offset",
                         (n_batch, offset.shape[1]) + geom.out,
                         f"batch and spatial size must match the output (N, ., Ho, Wo) = "
                         f"({n_batch}, ., {geom.out[0]}, {geom.out[1]})")
    if mask is not None:
        _checks.shape_equals(mask, "mask", (n_batch, offset_groups * n_taps) + geom.out,
                             f"(N, offset groups * kh * kw, Ho, Wo) with {offset_groups} "
                             f"offset groups")
    named = (("x", x), ("offset", offset), ("weight", weight), ("bias", bias), ("mask", mask),
             *extra)
    tier = _tiers.get(backend, **dict(named))
    x, offset, weight, bias, mask, *extra = _checks.common_float(*named)
    return _Args(x, offset, weight, bias, mask, geom, offset_groups, weight_groups), tier, extra


def forward(x, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None,
            backend: str = "auto") -> np.ndarray:
    """Deformable convolution of ``x``; DCNv2 when ``mask`` is given, DCNv1 otherwise.

    Args:
        x: (N, C_in, H, W) float array.
        offset: (N, 2 * G * kh * kw, Ho, Wo) sampling offsets; channel ``g * 2K + 2k`` is dy
            (rows), ``g * 2K + 2k + 1`` is dx (columns) of tap ``k = i * kw + j`` in offset
            group g. G, the number of offset groups, must divide C_in.
        weight: (C_out, C_in / groups, kh, kw); the weight groups are C_in // weight.shape[1].
        bias: (C_out,) or None.
        stride, padding, dilation: an int or an (along H, along W) pair, as for conv2d.
        mask: (N, G * kh * kw, Ho, Wo) modulation (DCNv2), channel ``g * K + k``; not clamped.
            None for DCNv1.
        backend: ``"auto"``, ``"loop"``, ``"numpy"``, ``"numba"`` or ``"cuda"``.

    Returns:
        (N, C_out, Ho, Wo) array, in the common float dtype of the inputs; a numba device array
        when the inputs are GPU arrays (cuda tier).
    """
    args, tier, _ = _validate(x, offset, weight, bias, stride, padding, dilation, mask, backend)
    n_batch = args.x.shape[0]
    c_out = args.weight.shape[0]
    # an empty case on the host needs no tier; on the GPU the tier makes the device result
    if (n_batch == 0 or c_out == 0) and not _checks.is_device_array(args.x):
        return np.zeros((n_batch, c_out) + args.geom.out, dtype=args.x.dtype)
    return tier.forward(args.x, args.offset, args.weight, args.bias, args.mask, args.geom,
                        args.offset_groups, args.weight_groups)


def backward(gy, x, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None,
             backend: str = "auto") -> DeformConv2dGrads:
    """Vector-Jacobian product of :func:`forward` with respect to every array argument.

    Args:
        gy: (N, C_out, Ho, Wo) upstream gradient, the shape of ``forward``'s output.
        x, offset, weight, bias, stride, padding, dilation, mask, backend: as for
            :func:`forward` (backward recomputes what it needs from them).

    Returns:
        ``DeformConv2dGrads(grad_input, grad_offset, grad_weight, grad_bias, grad_mask)``;
        ``grad_bias`` is None when ``bias`` is None and ``grad_mask`` is None when ``mask`` is
        None. Where a sampled coordinate is an integer (a kink of the bilinear interpolant) the
        offset gradient is the right-hand derivative, as in :mod:`scratchvision.ops.bilinear`.
        Numba device arrays when the inputs are GPU arrays (cuda tier).
    """
    gy = _checks.float_array(gy, "gy", ndim=4, device=True)
    args, tier, (gy,) = _validate(x, offset, weight, bias, stride, padding, dilation, mask,
                                  backend, extra=[("gy", gy)])
    n_batch = args.x.shape[0]
    c_out = args.weight.shape[0]
    _checks.shape_equals(gy, "gy", (n_batch, c_out) + args.geom.out,
                         "the shape of forward's output (N, C_out, Ho, Wo)")
    has_bias = args.bias is not None
    if (n_batch == 0 or c_out == 0) and not _checks.is_device_array(args.x):
        return DeformConv2dGrads(
            np.zeros_like(args.x), np.zeros_like(args.offset), np.zeros_like(args.weight),
            np.zeros(c_out, dtype=args.x.dtype) if has_bias else None,
            None if args.mask is None else np.zeros_like(args.mask))
    return DeformConv2dGrads(*tier.backward(
        gy, args.x, args.offset, args.weight, has_bias, args.mask, args.geom,
        args.offset_groups, args.weight_groups))
