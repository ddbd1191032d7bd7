"""2-D max pooling, ``torch.nn.functional.max_pool2d``, with its hand-written backward.

Max pooling works on each (n, c) plane x (H, W) on its own. Output pixel (ho, wo) looks at a
``kh x kw`` window whose tap (i, j) sits at input row and column::

    r(ho, i) = ho * sh - ph + i * dh,     q(wo, j) = wo * sw - pw + j * dw            (1)

Taps outside [0, H) x [0, W) read the padding, which is ``-inf``: it never wins, so the tiers
simply skip those taps (as torch's CPU kernel does). Then::

    y[ho, wo] = max over the in-bounds taps (i, j) of x[r, q]                         (2)
    a[ho, wo] = the tap that attains the maximum, as the flat index r * W + q

and the gradient goes to the argmax, summed over the windows that chose a pixel::

    grad_x[h, w] = sum of gy[ho, wo] over the (ho, wo) with a[ho, wo] = h * W + w     (3)

Output size per axis, torch's ``pooling_output_shape`` (eq. 4), is in :func:`pool_geometry`.
The derivation, the tie / NaN / empty-window conventions and the code that implements each
equation are on the docs page ``derivations/max_pool2d.md``.

This package validates and dispatches to three tiers that return exactly the same arrays:

* ``loop``  -- :mod:`scratchvision.ops.max_pool2d.loop`, the executable specification;
* ``numpy`` -- :mod:`scratchvision.ops.max_pool2d.vectorized`, every window at once through a
  strided view;
* ``numba`` -- :mod:`scratchvision.ops.max_pool2d.numba_cpu`, the loop tier's own functions
  compiled, planes in parallel.

There is no cuda tier: pooling is a cheap pass over memory next to the convolutions around it.
``backend="cuda"`` raises :class:`~scratchvision.BackendUnavailableError`; the layer
:class:`scratchvision.nn.MaxPool2d` pools a ``"cuda"`` model on the CPU instead.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ... import _checks
from ..._dispatch import TierModules

__all__ = ["forward", "forward_with_indices", "backward", "backward_from_indices",
           "MaxPool2dGrads", "PoolGeometry",
           "pool_geometry", "hyper_parameters", "TIERS"]

#: the tiers this package implements
TIERS = ("loop", "numpy", "numba")

_tiers = TierModules(__name__, tiers=TIERS)


class PoolGeometry(NamedTuple):
    """Normalised hyper-parameters, each an ``(along H, along W)`` pair, and the output size."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    ceil_mode: bool
    out: tuple[int, int]


class MaxPool2dGrads(NamedTuple):
    """Gradient of :func:`forward`: ``grad_input`` (N, C, H, W)."""

    grad_input: np.ndarray


def hyper_parameters(kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Validate the hyper-parameters (not yet the input size) and return them as
    ``(kernel, stride, padding, dilation, ceil_mode)`` pairs; ``stride=None`` means
    ``kernel_size``, as in torch."""
    kernel = _checks.int_pair(kernel_size, "kernel_size", minimum=1)
    stride = kernel if stride is None else _checks.int_pair(stride, "stride", minimum=1)
    padding = _checks.int_pair(padding, "padding", minimum=0)
    dilation = _checks.int_pair(dilation, "dilation", minimum=1)
    ceil_mode = _checks.boolean(ceil_mode, "ceil_mode")
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        # torch's rule (its CPU kernel ignores the dilation here): more padding could make
        # windows of padding only
        raise ValueError(f"padding must be at most half of kernel_size (torch's rule), got "
                         f"padding {padding} and kernel_size {kernel}")
    return kernel, stride, padding, dilation, ceil_mode


def _output_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """eq. (4) for one axis: ``floor((size + 2p - d(k - 1) - 1 [+ s - 1]) / s) + 1``, and in
    ceil mode one less when the last window would start in the right padding."""
    # --8<-- [start:output_size]
    # eq. (4): floor((size + 2p - d(k - 1) - 1) / s) + 1; ceil mode adds s - 1 before the
    # floor division, which rounds up instead
    out = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s - p >= size:
        out -= 1  # torch's rule: the last window must start before the right padding
    return out
    # --8<-- [end:output_size]


def pool_geometry(in_hw, kernel_size, stride=None, padding=0, dilation=1,
                  ceil_mode: bool = False) -> PoolGeometry:
    """Validate the hyper-parameters and compute the output size (eq. 4) for an input of
    spatial size ``in_hw`` = (H, W). ``ValueError`` names the argument, or says that the
    output would be empty."""
    kernel, stride, padding, dilation, ceil_mode = hyper_parameters(
        kernel_size, stride, padding, dilation, ceil_mode)
    out = tuple(_output_size(*axis, ceil_mode)
                for axis in zip(in_hw, kernel, stride, padding, dilation))
    if min(out) < 1:
        raise ValueError(
            f"empty output: input spatial size {tuple(in_hw)} with kernel_size {kernel}, "
            f"stride {stride}, padding {padding} and dilation {dilation} gives output size "
            f"{out}; expected at least (1, 1)")
    return PoolGeometry(kernel, stride, padding, dilation, ceil_mode, out)


def _input(x) -> np.ndarray:
    x = _checks.float_array(x, "x", ndim=4)
    _checks.nonempty_spatial(x, "x")
    return x


def _pool(x: np.ndarray, geom: PoolGeometry, tier):
    """x (N, C, H, W), validated -> (y (N, C, Ho, Wo), index (N, C, Ho, Wo) int64)."""
    n, c, height, width = x.shape
    # (N, C, H, W) -> (N * C, H, W): every plane is pooled on its own
    planes = np.ascontiguousarray(x).reshape(n * c, height, width)
    y, index = tier.pool(planes, geom)
    return y.reshape((n, c) + geom.out), index.reshape((n, c) + geom.out)


def forward_with_indices(x, kernel_size, stride=None, padding=0, dilation=1,
                         ceil_mode: bool = False, backend: str = "auto"):
    """Max pooling with the argmax of every window, like
    ``torch.nn.functional.max_pool2d(..., return_indices=True)``.

    Args:
        x: (N, C, H, W) float array.
        kernel_size, stride, padding, dilation: ints or ``(along H, along W)`` pairs; stride
            defaults to kernel_size; padding (``-inf``) at most ``kernel_size // 2``.
        ceil_mode: round the output size up (eq. 4, with torch's last-window rule).
        backend: ``"auto"``, ``"loop"``, ``"numpy"`` or ``"numba"``.

    Returns:
        ``(y, indices)``: y (N, C, Ho, Wo) of x's dtype; indices (N, C, Ho, Wo) int64, the
        flat position ``h * W + w`` of each window's maximum in its plane (torch's layout;
        -1 for a window without in-bounds taps).
    """
    x = _input(x)
    geom = pool_geometry(x.shape[2:], kernel_size, stride, padding, dilation, ceil_mode)
    return _pool(x, geom, _tiers.get(backend))


def forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
            backend: str = "auto") -> np.ndarray:
    """Max pooling, ``torch.nn.functional.max_pool2d``: x (N, C, H, W) -> y (N, C, Ho, Wo).
    Arguments as for :func:`forward_with_indices`."""
    return forward_with_indices(x, kernel_size, stride, padding, dilation, ceil_mode,
                                backend)[0]


def backward_from_indices(gy, indices, x_shape, dtype, backend: str = "auto",
                          name: str = "gy") -> MaxPool2dGrads:
    """eq. (3) from saved indices: gy (N, C, Ho, Wo) and the forward's ``indices`` ->
    grad_input (N, C, H, W) of ``dtype`` (or wider, if gy is). A layer that kept the indices
    of its forward calls this instead of :func:`backward`; ``name`` is the gradient's name in
    error messages."""
    tier = _tiers.get(backend)
    gy = _checks.float_array(gy, name)
    _checks.shape_equals(gy, name, indices.shape, "the shape of the pooling's output")
    n, c, height, width = x_shape
    dtype = np.result_type(gy.dtype, dtype)
    # (N, C, Ho, Wo) -> (N * C, Ho, Wo)
    gy = np.ascontiguousarray(gy, dtype=dtype).reshape((n * c,) + indices.shape[2:])
    grad = tier.unpool(gy, indices.reshape(gy.shape), height * width)
    return MaxPool2dGrads(grad.reshape(x_shape))  # (N * C, H * W) -> (N, C, H, W)


def backward(gy, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
             backend: str = "auto") -> MaxPool2dGrads:
    """Vector-Jacobian product of :func:`forward`: gy (N, C, Ho, Wo) ->
    ``MaxPool2dGrads(grad_input (N, C, H, W))``, eq. (3). Takes the forward's arguments and
    recomputes the argmax."""
    x = _input(x)
    geom = pool_geometry(x.shape[2:], kernel_size, stride, padding, dilation, ceil_mode)
    _, indices = _pool(x, geom, _tiers.get(backend))
    return backward_from_indices(gy, indices, x.shape, x.dtype, backend)
