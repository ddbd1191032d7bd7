"""Pooling layers: ``MaxPool2d`` (``torch.nn.MaxPool2d``) and ``GlobalAvgPool2d``
(``torch.nn.AdaptiveAvgPool2d(1)``), each with its hand-written backward.

Max pooling works on each (n, c) plane x (H, W) on its own. Output pixel (ho, wo) looks at a
``kh x kw`` window whose tap (i, j) sits at input row and column::

    r(ho, i) = ho * sh - ph + i * dh,     q(wo, j) = wo * sw - pw + j * dw            (1)

Taps outside [0, H) x [0, W) read the padding, which is ``-inf``: it never wins, so the loops
simply skip those taps (as torch's CPU kernel does). Then::

    y[ho, wo] = max over the in-bounds taps (i, j) of x[r, q]                         (2)
    a[ho, wo] = the tap that attains the maximum, as the flat index r * W + q

and, since y[ho, wo] is just x[a[ho, wo]], its derivative is 1 for that one input pixel and 0
for every other. The gradient goes to the argmax, summed over the windows that chose a pixel
(overlapping windows can choose the same one)::

    grad_x[h, w] = sum of gy[ho, wo] over the (ho, wo) with a[ho, wo] = h * W + w     (3)

Output size per axis, torch's ``pooling_output_shape``::

    Ho = floor((H + 2 ph - dh (kh - 1) - 1 + (sh - 1 if ceil_mode else 0)) / sh) + 1  (4)

and in ceil mode ``Ho`` drops by one when the last window would start in the right padding,
``(Ho - 1) sh - ph >= H``: every window starts inside the input or its left padding. Ceil-mode
windows may reach past the right padding; those taps are skipped like the padding's.

Non-smooth points, and the conventions chosen there (torch's CPU kernel, checked against
``torch.nn.functional.max_pool2d(..., return_indices=True)`` by the tests):

* ties: y is not differentiable where two taps of a window hold the same maximum. The
  gradient goes to the **first** of them in scan order (i, then j): a tap replaces the
  current maximum only when it is strictly greater;
* NaN wins: a window holding NaN outputs NaN, and its gradient goes to the **last** NaN in scan
  order (torch takes a tap when ``v > max or isnan(v)``);
* a window whose in-bounds taps are all ``-inf`` outputs ``-inf`` and points at its first
  in-bounds tap; a window with no in-bounds tap at all (possible with dilation, when the taps
  straddle a small input: taps at -1 and 2 of a 2-pixel row) outputs ``-inf``, records index
  ``-1`` and passes no gradient (torch records a meaningless index there).

Tiers (``backend=``): ``"loop"`` is the specification, explicit loops over every plane,
output pixel and tap; ``"numpy"`` views every window at once with ``as_strided`` (no Python
loop over pixels); ``"numba"`` compiles the loop tier's very functions and runs the planes in
parallel. There is no GPU kernel for pooling: ``"cuda"`` is accepted so that a whole model
can be moved with ``set_backend("cuda")``, and pools on the CPU with the best CPU tier (every
cuda op copies its arrays to and from the GPU per call anyway, so nothing is lost by pooling
on the host).
"""

from __future__ import annotations

import functools
import math
import types
from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .. import _checks
from .._dispatch import BACKENDS, resolve_backend
from .module import Module

__all__ = ["MaxPool2d", "GlobalAvgPool2d", "max_pool2d", "max_pool2d_with_indices",
           "max_pool2d_backward", "PoolGeometry", "pool_geometry", "POOL_TIERS"]

#: the tiers max pooling implements (``"cuda"`` pools with the best of them, see above)
POOL_TIERS = ("loop", "numpy", "numba")


class PoolGeometry(NamedTuple):
    """Normalised hyper-parameters, each an ``(along H, along W)`` pair, and the output size."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    ceil_mode: bool
    out: tuple[int, int]


def _hyper_parameters(kernel_size, stride, padding, dilation, ceil_mode):
    """Validate the hyper-parameters (not yet the input size); ``stride=None`` means
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
    """eq. (4) for one axis."""
    out = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s - p >= size:
        out -= 1  # the last window would start in the right padding
    return out


def pool_geometry(in_hw, kernel_size, stride=None, padding=0, dilation=1,
                  ceil_mode: bool = False) -> PoolGeometry:
    """Validate the hyper-parameters and compute the output size (eq. 4) for an input of
    spatial size ``in_hw`` = (H, W). ``ValueError`` names the argument, or says that the
    output would be empty."""
    kernel, stride, padding, dilation, ceil_mode = _hyper_parameters(
        kernel_size, stride, padding, dilation, ceil_mode)
    out = tuple(_output_size(*axis, ceil_mode)
                for axis in zip(in_hw, kernel, stride, padding, dilation))
    if min(out) < 1:
        raise ValueError(
            f"empty output: input spatial size {tuple(in_hw)} with kernel_size {kernel}, "
            f"stride {stride}, padding {padding} and dilation {dilation} gives output size "
            f"{out}; expected at least (1, 1)")
    return PoolGeometry(kernel, stride, padding, dilation, ceil_mode, out)


# ----------------------------------------------------------------------------- loop tier
# These four functions are the specification. They use only what numba can compile (scalars,
# math, array indexing), and the numba tier compiles these very functions: in it, ``prange``
# is ``numba.prange`` and the planes run in parallel; here it is ``range``.

prange = range


def _pool_plane(x, kh, kw, sh, sw, ph, pw, dh, dw, y, index):
    """eqs. (1)-(2) on one plane: x (H, W) -> y (Ho, Wo) and index (Ho, Wo), written in place.
    """
    height, width = x.shape
    out_h, out_w = y.shape
    for ho in range(out_h):
        for wo in range(out_w):
            best = -math.inf
            best_index = -1  # no in-bounds tap seen yet
            for i in range(kh):
                r = ho * sh - ph + i * dh  # eq. (1)
                if r < 0 or r >= height:
                    continue  # padding (-inf) or past it in ceil mode: never the maximum
                for j in range(kw):
                    q = wo * sw - pw + j * dw  # eq. (1)
                    if q < 0 or q >= width:
                        continue
                    v = x[r, q]
                    # NOTE: ties: only a strictly greater value replaces the maximum, so the
                    # first maximum in scan order (i, then j) gets the gradient, as in torch.
                    # NOTE: NaN: isnan(v) always takes the tap, so the last NaN wins (torch).
                    # The first in-bounds tap is always taken: an all -inf window points at it.
                    if best_index < 0 or v > best or math.isnan(v):
                        best = v
                        best_index = r * width + q
            y[ho, wo] = best  # eq. (2); -inf when the window has no in-bounds tap
            index[ho, wo] = best_index


def _unpool_plane(gy, index, grad):
    """eq. (3) on one plane: add gy (Ho, Wo) into grad (H * W,) at the argmax of each window.
    """
    out_h, out_w = gy.shape
    for ho in range(out_h):
        for wo in range(out_w):
            k = index[ho, wo]
            if k >= 0:  # -1: a window without in-bounds taps passes no gradient
                grad[k] += gy[ho, wo]


def _pool_planes(x, kh, kw, sh, sw, ph, pw, dh, dw, y, index):
    """Every plane: x (P, H, W) -> y (P, Ho, Wo), index (P, Ho, Wo), written in place."""
    for plane in prange(x.shape[0]):
        _pool_plane(x[plane], kh, kw, sh, sw, ph, pw, dh, dw, y[plane], index[plane])


def _unpool_planes(gy, index, grad):
    """Every plane: gy, index (P, Ho, Wo) -> grad (P, H * W), added in place."""
    for plane in prange(gy.shape[0]):
        _unpool_plane(gy[plane], index[plane], grad[plane])


def _forward_loop(x: np.ndarray, geom: PoolGeometry, planes=_pool_planes):
    """x (P, H, W), P = N * C planes -> y (P, Ho, Wo), index (P, Ho, Wo) int64."""
    y = np.empty((x.shape[0],) + geom.out, dtype=x.dtype)
    index = np.empty((x.shape[0],) + geom.out, dtype=np.int64)
    planes(x, *geom.kernel, *geom.stride, *geom.padding, *geom.dilation, y, index)
    return y, index


def _backward_loop(gy: np.ndarray, index: np.ndarray, plane_size: int,
                   planes=_unpool_planes) -> np.ndarray:
    """gy, index (P, Ho, Wo) -> grad (P, H * W), accumulated in gy's dtype."""
    grad = np.zeros((gy.shape[0], plane_size), dtype=gy.dtype)
    planes(gy, index, grad)
    return grad


# ----------------------------------------------------------------------------- numpy tier

def _first_inside(out: int, k: int, s: int, p: int, d: int, size: int) -> np.ndarray:
    """For every output position along one axis, the first in-bounds input position of its
    window (eq. 1), or -1 when no tap of the window is in bounds. (out,) int64."""
    starts = np.arange(out) * s - p
    taps = starts[:, None] + np.arange(k) * d  # (out, k) input positions
    inside = (taps >= 0) & (taps < size)
    first = np.take_along_axis(taps, np.argmax(inside, axis=1)[:, None], axis=1)[:, 0]
    return np.where(inside.any(axis=1), first, -1)


def _forward_numpy(x: np.ndarray, geom: PoolGeometry):
    """As ``_forward_loop``. What changes: the -inf padded input is viewed, without copying,
    as (P, Ho, Wo, kh, kw) windows with ``as_strided``, and ``argmax`` scans all windows at
    once (it returns the first maximum: the loop tier's tie rule)."""
    n_planes, height, width = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), _, (out_h, out_w) = geom
    # pad the right far enough for the last window (ceil mode may reach past the padding)
    right_h = max(0, (out_h - 1) * sh + dh * (kh - 1) + 1 - ph - height)
    right_w = max(0, (out_w - 1) * sw + dw * (kw - 1) + 1 - pw - width)
    xp = np.pad(x, ((0, 0), (ph, right_h), (pw, right_w)), constant_values=-np.inf)
    s_p, s_h, s_w = xp.strides
    # (P, H', W') -> (P, Ho, Wo, kh, kw): one output pixel moves by the stride, a tap by the
    # dilation; a read-only view, nothing is copied until the reshape below
    windows = as_strided(xp, shape=(n_planes, out_h, out_w, kh, kw),
                         strides=(s_p, sh * s_h, sw * s_w, dh * s_h, dw * s_w), writeable=False)
    taps = windows.reshape(n_planes, out_h, out_w, kh * kw)  # (P, Ho, Wo, kh * kw), a copy
    tap = np.argmax(taps, axis=-1)  # first maximum; also the first NaN, see below
    # NOTE: NaN wins, and torch's rule picks the *last* NaN: argmax of the reversed NaN mask
    is_nan = np.isnan(taps)
    last_nan = kh * kw - 1 - np.argmax(is_nan[..., ::-1], axis=-1)
    tap = np.where(is_nan.any(axis=-1), last_nan, tap)
    y = np.take_along_axis(taps, tap[..., None], axis=-1)[..., 0]  # eq. (2)
    # the chosen tap (i, j) -> input pixel (r, q), eq. (1)
    i, j = np.divmod(tap, kw)
    r = np.arange(out_h)[:, None] * sh - ph + i * dh
    q = np.arange(out_w) * sw - pw + j * dw
    index = r * width + q
    # NOTE: a padding tap is chosen only when every in-bounds tap is -inf (the first -inf in
    # scan order may be padding); the loop tier points at the first in-bounds tap instead,
    # or at -1 when the window has none
    first_r = _first_inside(out_h, kh, sh, ph, dh, height)[:, None]  # (Ho, 1)
    first_q = _first_inside(out_w, kw, sw, pw, dw, width)  # (Wo,)
    first = np.where((first_r >= 0) & (first_q >= 0), first_r * width + first_q, -1)
    outside = (r < 0) | (r >= height) | (q < 0) | (q >= width)
    index = np.where(outside, first, index).astype(np.int64)
    return y, index


def _backward_numpy(gy: np.ndarray, index: np.ndarray, plane_size: int) -> np.ndarray:
    """As ``_backward_loop``. What changes: eq. (3)'s scatter-add is one ``bincount`` over
    ``plane * H * W + index``, which sums repeated indices (accumulates in float64, then
    rounds to gy's dtype)."""
    n_planes = gy.shape[0]
    chosen = index >= 0
    target = (np.arange(n_planes)[:, None, None] * plane_size + index)[chosen]
    grad = np.bincount(target, weights=gy[chosen], minlength=n_planes * plane_size)
    return grad.reshape(n_planes, plane_size).astype(gy.dtype, copy=False)


# ----------------------------------------------------------------------------- numba tier

def _compiled(func, parallel: bool, **names):
    """``numba.njit`` of ``func`` with the global ``names`` rebound, e.g. ``prange`` to
    ``numba.prange``: the loop tier's own code, compiled. The copy keeps ``func``'s module and
    name, which key numba's on-disk cache (``cache=True``)."""
    import numba

    scope = dict(func.__globals__, **names)
    copy = types.FunctionType(func.__code__, scope, func.__name__, func.__defaults__)
    copy.__module__, copy.__qualname__ = func.__module__, func.__qualname__
    return numba.njit(parallel=parallel, cache=True)(copy)


@functools.cache
def _numba_kernels():
    """Compile the numba tier on first use. What changes relative to the loop tier: nothing
    in the maths; the planes run in parallel (``prange``), each plane one thread's alone (its
    output and its slice of the gradient), so there are no races and repeated runs are
    bit-identical. numba is imported here, not at module import, so that importing the layers
    never imports numba (the test suite must set up the CUDA simulator first)."""
    import numba

    pool_plane = _compiled(_pool_plane, parallel=False)
    unpool_plane = _compiled(_unpool_plane, parallel=False)
    pool = _compiled(_pool_planes, parallel=True, prange=numba.prange, _pool_plane=pool_plane)
    unpool = _compiled(_unpool_planes, parallel=True, prange=numba.prange,
                       _unpool_plane=unpool_plane)
    return pool, unpool


def _writable(a: np.ndarray) -> np.ndarray:
    """numba compiles a separate specialisation for read-only arrays: a copy is cheaper."""
    return a if a.flags.writeable else a.copy()


def _forward_numba(x: np.ndarray, geom: PoolGeometry):
    return _forward_loop(_writable(x), geom, planes=_numba_kernels()[0])


def _backward_numba(gy: np.ndarray, index: np.ndarray, plane_size: int) -> np.ndarray:
    return _backward_loop(_writable(gy), index, plane_size, planes=_numba_kernels()[1])


_TIERS = {
    "loop": (_forward_loop, _backward_loop),
    "numpy": (_forward_numpy, _backward_numpy),
    "numba": (_forward_numba, _backward_numba),
}


def _pool_tier(backend: str) -> str:
    """``backend`` as one of :data:`POOL_TIERS`; ``"cuda"`` pools with the best CPU tier
    (module docstring)."""
    _checks.choice(backend, "backend", BACKENDS)
    return resolve_backend("auto" if backend == "cuda" else backend, POOL_TIERS, "max_pool2d")


# ----------------------------------------------------------------------------- functions

def _pool_input(x) -> np.ndarray:
    x = _checks.float_array(x, "x", ndim=4)
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"x must have a non-empty height and width, got shape {x.shape}")
    return x


def _pool(x: np.ndarray, geom: PoolGeometry, tier: str):
    """x (N, C, H, W), validated -> (y (N, C, Ho, Wo), index (N, C, Ho, Wo) int64)."""
    n, c, height, width = x.shape
    # (N, C, H, W) -> (N * C, H, W): every plane is pooled on its own
    planes = np.ascontiguousarray(x).reshape(n * c, height, width)
    y, index = _TIERS[tier][0](planes, geom)
    return y.reshape((n, c) + geom.out), index.reshape((n, c) + geom.out)


def _unpool(gy, index: np.ndarray, x_shape: tuple, dtype, tier: str,
            name: str = "gy") -> np.ndarray:
    """eq. (3): gy (N, C, Ho, Wo) -> grad_x (N, C, H, W) of ``dtype`` (or wider, if gy is);
    ``name`` is the gradient's name in error messages."""
    gy = _checks.float_array(gy, name)
    _checks.shape_equals(gy, name, index.shape, "the shape of the pooling's output")
    n, c, height, width = x_shape
    dtype = np.result_type(gy.dtype, dtype)
    # (N, C, Ho, Wo) -> (N * C, Ho, Wo)
    gy = np.ascontiguousarray(gy, dtype=dtype).reshape((n * c,) + index.shape[2:])
    grad = _TIERS[tier][1](gy, index.reshape(gy.shape), height * width)
    return grad.reshape(x_shape)  # (N * C, H * W) -> (N, C, H, W)


def max_pool2d_with_indices(x, kernel_size, stride=None, padding=0, dilation=1,
                            ceil_mode: bool = False, backend: str = "auto"):
    """Max pooling with the argmax of every window, like
    ``torch.nn.functional.max_pool2d(..., return_indices=True)``.

    Args:
        x: (N, C, H, W) float array.
        kernel_size, stride, padding, dilation: ints or ``(along H, along W)`` pairs; stride
            defaults to kernel_size; padding (``-inf``) at most ``kernel_size // 2``.
        ceil_mode: round the output size up (eq. 4, with torch's last-window rule).
        backend: ``"auto"``, ``"loop"``, ``"numpy"``, ``"numba"`` (or ``"cuda"``, see the
            module docstring).

    Returns:
        ``(y, indices)``: y (N, C, Ho, Wo) of x's dtype; indices (N, C, Ho, Wo) int64, the
        flat position ``h * W + w`` of each window's maximum in its plane (torch's layout;
        -1 for a window without in-bounds taps).
    """
    x = _pool_input(x)
    geom = pool_geometry(x.shape[2:], kernel_size, stride, padding, dilation, ceil_mode)
    return _pool(x, geom, _pool_tier(backend))


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               backend: str = "auto") -> np.ndarray:
    """Max pooling, ``torch.nn.functional.max_pool2d``: x (N, C, H, W) -> y (N, C, Ho, Wo).
    Arguments as for :func:`max_pool2d_with_indices`."""
    return max_pool2d_with_indices(x, kernel_size, stride, padding, dilation, ceil_mode,
                                   backend)[0]


def max_pool2d_backward(gy, x, kernel_size, stride=None, padding=0, dilation=1,
                        ceil_mode: bool = False, backend: str = "auto") -> np.ndarray:
    """Vector-Jacobian product of :func:`max_pool2d`: gy (N, C, Ho, Wo) -> grad_x
    (N, C, H, W), eq. (3). Takes the forward's arguments and recomputes the argmax."""
    x = _pool_input(x)
    geom = pool_geometry(x.shape[2:], kernel_size, stride, padding, dilation, ceil_mode)
    tier = _pool_tier(backend)
    _, index = _pool(x, geom, tier)
    return _unpool(gy, index, x.shape, x.dtype, tier)


# ----------------------------------------------------------------------------- layers

class MaxPool2d(Module):
    """2-D max pooling, ``torch.nn.MaxPool2d`` (module docstring: equations, ties, NaN).

    Args:
        kernel_size: the window, an int or ``(kh, kw)``.
        stride: an int or a pair; None (the default) means kernel_size.
        padding: ``-inf`` added on each side, at most ``kernel_size // 2`` (torch's rule).
        dilation: the spacing between the window's taps.
        ceil_mode: round the output size up instead of down (eq. 4).
        backend: ``"auto"``, ``"loop"``, ``"numpy"``, ``"numba"`` (``"cuda"`` pools on the
            CPU, see the module docstring).

    No parameters. Shapes: x (N, C, H, W) -> y (N, C, Ho, Wo), eq. (4).
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1,
                 ceil_mode: bool = False, *, backend: str = "auto"):
        super().__init__()
        (self.kernel_size, self.stride, self.padding, self.dilation,
         self.ceil_mode) = _hyper_parameters(kernel_size, stride, padding, dilation, ceil_mode)
        _checks.choice(backend, "backend", BACKENDS)
        self.backend = backend

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, "
                f"ceil_mode={self.ceil_mode}, backend={self.backend!r}")

    def forward(self, x) -> np.ndarray:
        """x (N, C, H, W) -> y (N, C, Ho, Wo); remembers the argmax of every window."""
        x = _pool_input(x)
        geom = pool_geometry(x.shape[2:], self.kernel_size, self.stride, self.padding,
                             self.dilation, self.ceil_mode)
        tier = _pool_tier(self.backend)
        y, index = _pool(x, geom, tier)
        self._save_for_backward(index=index, x_shape=x.shape, dtype=x.dtype)
        return y

    def backward(self, grad) -> np.ndarray:
        """grad (N, C, Ho, Wo) -> the gradient with respect to x (N, C, H, W): each window's
        gradient goes to its argmax (eq. 3)."""
        saved = self._saved_for_backward()
        return _unpool(grad, saved["index"], saved["x_shape"], saved["dtype"],
                       _pool_tier(self.backend), name="grad")


class GlobalAvgPool2d(Module):
    """The mean of every plane: x (N, C, H, W) -> y (N, C, 1, 1), ``y[n, c] = mean_hw x[n, c]``
    (``torch.nn.AdaptiveAvgPool2d(1)``). No parameters.

    Backward: every one of the H * W pixels of a plane contributed with weight 1 / (H W), so
    ``grad_x[n, c, h, w] = grad[n, c, 0, 0] / (H W)``. Arithmetic in x's dtype.
    """

    def forward(self, x) -> np.ndarray:
        x = _pool_input(x)
        self._save_for_backward(x_shape=x.shape, dtype=x.dtype)
        return x.mean(axis=(2, 3), keepdims=True)

    def backward(self, grad) -> np.ndarray:
        """grad (N, C, 1, 1) -> grad_x (N, C, H, W)."""
        saved = self._saved_for_backward()
        n, c, height, width = saved["x_shape"]
        grad = _checks.float_array(grad, "grad")
        _checks.shape_equals(grad, "grad", (n, c, 1, 1), "the shape of forward's output")
        dtype = np.result_type(grad.dtype, saved["dtype"])
        scaled = grad.astype(dtype) / dtype.type(height * width)
        return np.broadcast_to(scaled, saved["x_shape"]).copy()  # (N, C, 1, 1) -> (N, C, H, W)
