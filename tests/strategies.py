"""Shared hypothesis strategies: shapes, arrays, sampling points and resize settings.

Every strategy that builds a test case returns a small dataclass whose fields are named, so a
failing example prints as ``SampleCase(image=array(...), points=array(...))`` rather than as
an anonymous tuple, and the composite strategies record an ``event`` (shown by
``pytest --hypothesis-show-statistics``) saying what kind of case was drawn.

Shapes are kept small (N <= 2, C <= 3, H, W <= 7, P <= 12) so that the loop tier and the CUDA
simulator stay fast; ``TINY`` bounds are smaller still for finite differences on slow tiers.

Bilinear interpolation is piecewise linear in the point coordinates, with kinks at every
integer and at the borders -1 / H (W). Central differences across a kink measure neither
one-sided slope, so :func:`smooth_points` keeps every coordinate ``KINK_MARGIN`` away from the
integers: ``1e-3`` is a thousand times the finite-difference step (1e-6) of
``scratchvision.gradcheck``. The behaviour exactly *at* the kinks is pinned by separate tests,
and :func:`any_points` deliberately lands on kinks, borders and non-finite values for the
tier-agreement tests, where no derivative is estimated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

KINK_MARGIN = 1e-3

#: the three valid (mode, align_corners) pairs of ``bilinear.resize``
RESIZE_SETTINGS = (("bilinear", False), ("bilinear", True), ("nearest", False))


@dataclass(frozen=True)
class Bounds:
    """Upper bounds on the drawn sizes; lower bounds are 1, and ``min_side`` for H and W."""

    batch: int = 2
    channels: int = 3
    side: int = 7
    points: int = 12
    out_side: int = 9
    min_side: int = 1


DEFAULT = Bounds()
#: small enough for the loop tier's full Jacobian and for the CUDA simulator
TINY = Bounds(batch=2, channels=2, side=4, points=4, out_side=5)


# ----------------------------------------------------------------------------- arrays

def image_shapes(bounds: Bounds = DEFAULT) -> st.SearchStrategy[tuple[int, int, int, int]]:
    """(N, C, H, W) with every entry between its lower and upper bound."""
    return st.tuples(
        st.integers(1, bounds.batch), st.integers(1, bounds.channels),
        st.integers(bounds.min_side, bounds.side), st.integers(bounds.min_side, bounds.side),
    )


def float64_arrays(shape, bound: float = 2.0) -> st.SearchStrategy[np.ndarray]:
    """float64 arrays of ``shape`` with finite entries in [-bound, bound]."""
    elements = st.floats(-bound, bound, allow_nan=False, allow_infinity=False,
                         allow_subnormal=False, width=64)
    return hnp.arrays(np.float64, shape, elements=elements)


# ----------------------------------------------------------------------------- coordinates

@st.composite
def smooth_coordinate(draw, size: int, margin: float = KINK_MARGIN) -> float:
    """A coordinate on an axis of ``size`` pixels, at least ``margin`` from every integer.

    The integer part ranges over -2 .. size, so the point may lie wholly outside the image
    ((-2, -1) or (size, size + 1)), straddle a border ((-1, 0) or (size - 1, size)) or lie
    inside.
    """
    cell = draw(st.integers(-2, size))
    fraction = draw(st.floats(margin, 1.0 - margin))
    return cell + fraction


def kink_coordinate(size: int) -> st.SearchStrategy[float]:
    """Any coordinate the tiers must agree on: smooth ones, exact integers (the kinks),
    the borders -1 and size - 1 and just outside them, and non-finite values."""
    return st.one_of(
        smooth_coordinate(size),
        st.integers(-2, size + 1).map(float),  # exact kinks, borders included
        st.floats(-2.5, size + 1.5, allow_nan=False),
        st.sampled_from([float("nan"), float("inf"), float("-inf")]),
    )


def _points_array(draw, coordinate, n: int, p: int, height: int, width: int) -> np.ndarray:
    """(N, P, 2) pixel coordinates (x, y): x along the width, y along the height."""
    count = n * p
    xs = draw(st.lists(coordinate(width), min_size=count, max_size=count))
    ys = draw(st.lists(coordinate(height), min_size=count, max_size=count))
    # (N * P,) twice -> (N, P, 2)
    return np.stack([xs, ys], axis=-1).reshape(n, p, 2).astype(np.float64)


@st.composite
def smooth_points(draw, n: int, p: int, height: int, width: int) -> np.ndarray:
    """(N, P, 2) points a :data:`KINK_MARGIN` away from every kink: safe for finite
    differences."""
    return _points_array(draw, smooth_coordinate, n, p, height, width)


@st.composite
def any_points(draw, n: int, p: int, height: int, width: int) -> np.ndarray:
    """(N, P, 2) points that may sit on kinks and borders or be non-finite."""
    points = _points_array(draw, kink_coordinate, n, p, height, width)
    if not np.isfinite(points).all():
        event("some points are non-finite")
    finite = points[np.isfinite(points)]
    if (finite == np.floor(finite)).any():
        event("some coordinates are integers (kinks)")
    return points


# ----------------------------------------------------------------------------- sampling

@dataclass(frozen=True)
class SampleCase:
    """One ``bilinear.sample`` case: ``image`` (N, C, H, W), ``points`` (N, P, 2) as (x, y),
    ``gy`` (N, C, P) an upstream gradient; all float64."""

    image: np.ndarray
    points: np.ndarray
    gy: np.ndarray


@st.composite
def sample_cases(draw, bounds: Bounds = DEFAULT, smooth: bool = True) -> SampleCase:
    """A drawn image, points and upstream gradient. ``smooth=True`` keeps the points off the
    kinks (:func:`smooth_points`); ``smooth=False`` seeks them out (:func:`any_points`)."""
    n, c, h, w = draw(image_shapes(bounds))
    p = draw(st.integers(1, bounds.points))
    image = draw(float64_arrays((n, c, h, w)))
    points_strategy = smooth_points if smooth else any_points
    points = draw(points_strategy(n, p, h, w))
    gy = draw(float64_arrays((n, c, p)))
    return SampleCase(image, points, gy)


# ----------------------------------------------------------------------------- resizing

@dataclass(frozen=True)
class ResizeCase:
    """One ``bilinear.resize`` case: ``x`` (N, C, H, W), output ``size`` (Ho, Wo), ``mode``,
    ``align_corners``, and ``gy`` (N, C, Ho, Wo) an upstream gradient; float64."""

    x: np.ndarray
    size: tuple[int, int]
    mode: str
    align_corners: bool
    gy: np.ndarray

    @property
    def options(self) -> dict:
        """Keyword arguments for ``resize`` / ``resize_backward``."""
        return dict(size=self.size, align_corners=self.align_corners, mode=self.mode)


def resize_settings() -> st.SearchStrategy[tuple[str, bool]]:
    """One of the valid ``(mode, align_corners)`` pairs."""
    return st.sampled_from(RESIZE_SETTINGS)


@st.composite
def resize_cases(draw, bounds: Bounds = DEFAULT) -> ResizeCase:
    """A drawn input, output size (up-, down- or same-size, per axis), mode and gradient."""
    n, c, h, w = draw(image_shapes(bounds))
    size = (draw(st.integers(1, bounds.out_side)), draw(st.integers(1, bounds.out_side)))
    mode, align_corners = draw(resize_settings())
    x = draw(float64_arrays((n, c, h, w)))
    gy = draw(float64_arrays((n, c) + size))
    for axis, (old, new) in zip("yx", zip((h, w), size)):
        event(f"{axis}: " + ("upsampling" if new > old else
                             "downsampling" if new < old else "same size"))
    event(f"mode={mode}, align_corners={align_corners}")
    return ResizeCase(x, size, mode, align_corners, gy)


# ------------------------------------------------------------------------ deformable convolution

@dataclass(frozen=True)
class DeformBounds:
    """Upper bounds for :func:`deform_cases`. Channels are drawn as multiples of both group
    counts; ``extra_side`` is how much larger than the smallest valid input H and W may be."""

    batch: int = 2
    groups: int = 2
    channels_per_group: int = 2
    kernel: int = 3
    stride: int = 2
    padding: int = 1
    dilation: int = 2
    extra_side: int = 3


DEFORM_DEFAULT = DeformBounds()
#: small enough for the loop tier's finite differences and for the CUDA simulator
DEFORM_TINY = DeformBounds(batch=2, groups=2, channels_per_group=1, kernel=2, stride=2,
                           padding=1, dilation=2, extra_side=2)


@dataclass(frozen=True)
class DeformCase:
    """One ``deform_conv2d`` case, all float64: ``x`` (N, C, H, W), ``offset``
    (N, 2 * G * kh * kw, Ho, Wo), ``weight`` (O, C / groups, kh, kw), ``bias`` (O,) or None,
    ``mask`` (N, G * kh * kw, Ho, Wo) or None, ``gy`` (N, O, Ho, Wo); hyper-parameters as
    (along H, along W) pairs."""

    x: np.ndarray
    offset: np.ndarray
    weight: np.ndarray
    bias: np.ndarray | None
    mask: np.ndarray | None
    gy: np.ndarray
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    @property
    def options(self) -> dict:
        """Keyword arguments for ``forward`` / ``backward`` (mask included)."""
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    mask=self.mask)

    @property
    def arrays(self) -> dict:
        """The array arguments in the order of ``forward``'s signature, without absent ones."""
        named = dict(x=self.x, offset=self.offset, weight=self.weight, bias=self.bias,
                     mask=self.mask)
        return {name: value for name, value in named.items() if value is not None}

    def astype(self, dtype) -> DeformCase:
        """The same case with every array cast to ``dtype``."""
        def cast(a):
            return None if a is None else a.astype(dtype)
        return DeformCase(cast(self.x), cast(self.offset), cast(self.weight), cast(self.bias),
                          cast(self.mask), cast(self.gy), self.stride, self.padding,
                          self.dilation)


def _smallest_side(kernel: int, padding: int, dilation: int) -> int:
    """The smallest input size that leaves a non-empty output along one axis."""
    return max(1, dilation * (kernel - 1) + 1 - 2 * padding)


@st.composite
def conv_geometries(draw, bounds):
    """Per axis (H, W): kernel, stride, padding, dilation and an input size whose output is
    non-empty, within ``bounds`` (a ConvBounds or DeformBounds); returns those five pairs as
    lists and the output size ``out`` (Ho, Wo). Shared by conv and deform cases."""
    kernel, stride, padding, dilation, size = [], [], [], [], []
    for axis in "hw":
        k = draw(st.integers(1, bounds.kernel), label=f"k{axis}")
        s = draw(st.integers(1, bounds.stride), label=f"s{axis}")
        p = draw(st.integers(0, bounds.padding), label=f"p{axis}")
        d = draw(st.integers(1, bounds.dilation), label=f"d{axis}")
        smallest = _smallest_side(k, p, d)
        size.append(draw(st.integers(smallest, smallest + bounds.extra_side), label=axis))
        kernel.append(k), stride.append(s), padding.append(p), dilation.append(d)
    out = tuple((size[a] + 2 * padding[a] - dilation[a] * (kernel[a] - 1) - 1) // stride[a] + 1
                for a in range(2))
    return kernel, stride, padding, dilation, size, out


@st.composite
def smooth_offsets(draw, shape: tuple, margin: float = KINK_MARGIN) -> np.ndarray:
    """Offsets of ``shape`` in (-2, 2) whose fractional part lies in [margin, 1 - margin].

    A sampled coordinate is an integer grid position plus an offset, so it is an integer --
    a kink of the bilinear interpolant -- exactly when the offset is: these offsets keep every
    sampled point ``margin`` away from the kinks (the image borders included).
    """
    count = int(np.prod(shape))
    cells = draw(st.lists(st.integers(-2, 1), min_size=count, max_size=count))
    fractions = draw(st.lists(st.floats(margin, 1.0 - margin), min_size=count,
                              max_size=count))
    return (np.array(cells, dtype=np.float64) + fractions).reshape(shape)


@st.composite
def any_offsets(draw, shape: tuple) -> np.ndarray:
    """Offsets of ``shape`` that may be exact integers (kinks), zero or non-finite."""
    count = int(np.prod(shape))
    values = draw(st.lists(st.one_of(
        st.floats(-2.5, 2.5, allow_nan=False),
        st.integers(-2, 2).map(float),
        st.sampled_from([float("nan"), float("inf"), float("-inf")]),
    ), min_size=count, max_size=count))
    offsets = np.array(values, dtype=np.float64).reshape(shape)
    if not np.isfinite(offsets).all():
        event("some offsets are non-finite")
    finite = offsets[np.isfinite(offsets)]
    if (finite == np.floor(finite)).any():
        event("some offsets are integers (kinks)")
    return offsets


@st.composite
def deform_cases(draw, bounds: DeformBounds = DEFORM_DEFAULT, smooth: bool = True,
                 mask: bool | None = None, bias: bool | None = None) -> DeformCase:
    """A drawn deformable convolution: weight groups and offset groups (1 .. bounds.groups),
    channels that both divide, kernel, stride, padding, dilation, an input size with a
    non-empty output, offsets (off the kinks when ``smooth``, else seeking them), a mask with
    values outside [0, 1] too (DCNv2; none for DCNv1) and a bias. ``mask`` / ``bias``: True or
    False to force, None to draw."""
    weight_groups = draw(st.integers(1, bounds.groups), label="weight groups")
    offset_groups = draw(st.integers(1, bounds.groups), label="offset groups")
    unit = int(np.lcm(weight_groups, offset_groups))  # C_in must split both ways
    channels = unit * draw(st.integers(1, bounds.channels_per_group), label="C_in / lcm")
    out_channels = weight_groups * draw(st.integers(1, bounds.channels_per_group),
                                        label="C_out / groups")
    n = draw(st.integers(1, bounds.batch), label="N")
    kernel, stride, padding, dilation, size, out = draw(conv_geometries(bounds))
    n_taps = kernel[0] * kernel[1]
    x = draw(float64_arrays((n, channels) + tuple(size)), label="x")
    offset_shape = (n, 2 * offset_groups * n_taps) + out
    offset = draw((smooth_offsets if smooth else any_offsets)(offset_shape), label="offset")
    weight = draw(float64_arrays((out_channels, channels // weight_groups) + tuple(kernel)),
                  label="weight")
    has_bias = draw(st.booleans(), label="has bias") if bias is None else bias
    has_mask = draw(st.booleans(), label="DCNv2 (mask)") if mask is None else mask
    bias_array = draw(float64_arrays((out_channels,)), label="bias") if has_bias else None
    mask_array = (draw(float64_arrays((n, offset_groups * n_taps) + out, bound=1.5),
                       label="mask") if has_mask else None)
    gy = draw(float64_arrays((n, out_channels) + out), label="gy")
    event(f"offset groups {offset_groups}, weight groups {weight_groups}")
    event("DCNv2 (mask)" if has_mask else "DCNv1 (no mask)")
    return DeformCase(x, offset, weight, bias_array, mask_array, gy, tuple(stride),
                      tuple(padding), tuple(dilation))


# ----------------------------------------------------------------------------- convolution

@dataclass(frozen=True)
class ConvBounds:
    """Upper bounds for :func:`conv_cases`; channels are drawn per group, and ``extra_side``
    is how much larger than the smallest valid input H and W may be."""

    batch: int = 2
    groups: int = 3
    channels_per_group: int = 2
    kernel: int = 3
    stride: int = 2
    padding: int = 2
    dilation: int = 2
    extra_side: int = 4


CONV_DEFAULT = ConvBounds()
#: small enough for the loop tier's finite differences and for the CUDA simulator
CONV_TINY = ConvBounds(batch=2, groups=2, channels_per_group=2, kernel=3, stride=2, padding=1,
                       dilation=2, extra_side=2)


@dataclass(frozen=True)
class ConvCase:
    """One ``conv2d`` case: ``x`` (N, C_in, H, W), ``weight`` (C_out, C_in / groups, kh, kw),
    ``bias`` (C_out,) or None, ``gy`` (N, C_out, Ho, Wo); hyper-parameters as (along H,
    along W) pairs; float64 unless cast with :meth:`astype`."""

    x: np.ndarray
    weight: np.ndarray
    bias: np.ndarray | None
    gy: np.ndarray
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    @property
    def options(self) -> dict:
        """Keyword arguments for ``conv2d.forward`` / ``backward``."""
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups)

    @property
    def arrays(self) -> dict:
        """``x``, ``weight`` and (when present) ``bias``, in ``forward``'s order."""
        named = dict(x=self.x, weight=self.weight, bias=self.bias)
        return {name: value for name, value in named.items() if value is not None}

    def astype(self, dtype) -> ConvCase:
        """The same case with every array cast to ``dtype``."""
        def cast(a):
            return None if a is None else a.astype(dtype)
        return ConvCase(cast(self.x), cast(self.weight), cast(self.bias), cast(self.gy),
                        self.stride, self.padding, self.dilation, self.groups)


@st.composite
def conv_cases(draw, bounds: ConvBounds = CONV_DEFAULT, bias: bool | None = None) -> ConvCase:
    """A drawn convolution: groups, channels per group (in and out), batch, and per axis the
    kernel, stride, padding, dilation and an input size with a non-empty output; a bias
    (``bias``: True / False to force, None to draw) and an upstream gradient."""
    groups = draw(st.integers(1, bounds.groups), label="groups")
    c_in = groups * draw(st.integers(1, bounds.channels_per_group), label="C_in / groups")
    c_out = groups * draw(st.integers(1, bounds.channels_per_group), label="C_out / groups")
    n = draw(st.integers(1, bounds.batch), label="N")
    kernel, stride, padding, dilation, size, out = draw(conv_geometries(bounds))
    x = draw(float64_arrays((n, c_in) + tuple(size)), label="x")
    weight = draw(float64_arrays((c_out, c_in // groups) + tuple(kernel)), label="weight")
    has_bias = draw(st.booleans(), label="has bias") if bias is None else bias
    bias_array = draw(float64_arrays((c_out,)), label="bias") if has_bias else None
    gy = draw(float64_arrays((n, c_out) + out), label="gy")
    event("depthwise" if groups == c_in == c_out > 1 else f"groups {groups}")
    if max(padding) > 0:
        event("padding")
    if max(stride) > 1 or max(dilation) > 1:
        event("stride or dilation > 1")
    return ConvCase(x, weight, bias_array, gy, tuple(stride), tuple(padding), tuple(dilation),
                    groups)


# ------------------------------------------------------------------ multi-scale deformable attn

#: A pixel coordinate ``u W - 0.5`` is a kink of the bilinear interpolant when it is an integer.
#: Smooth MSDA locations keep its fractional part this far from 0 and 1 (as the check cases do),
#: far more than the finite-difference step and the rounding of ``u = (x + 0.5) / W``.
MSDA_KINK_MARGIN = 1e-2
#: locations on this grid are exact in float32 and float64, and so are ``u W - 0.5`` for every
#: W drawn here: every tier lands on exactly the same kinks
MSDA_GRID = 1 / 32
#: non-finite and far-away normalised coordinates, all exact in float32 as well
MSDA_FAR = (float("nan"), float("inf"), float("-inf"), 1e30, -1e30, 5.0, -3.0)


@dataclass(frozen=True)
class MSDABounds:
    """Upper bounds for :func:`ms_deform_attn_cases`; lower bounds are 1. ``side`` bounds
    every level's H and W."""

    batch: int = 2
    queries: int = 7
    heads: int = 3
    head_dim: int = 3
    levels: int = 3
    points: int = 3
    side: int = 5


MSDA_DEFAULT = MSDABounds()
#: for the loop tier's full Jacobians: a few hundred input elements at most
MSDA_GRAD = MSDABounds(batch=2, queries=3, heads=2, head_dim=2, levels=3, points=2, side=3)
#: small enough for the CUDA simulator
MSDA_TINY = MSDABounds(batch=2, queries=3, heads=2, head_dim=2, levels=2, points=2, side=3)


@dataclass(frozen=True)
class MSDACase:
    """One ``ms_deform_attn`` case: ``value`` (N, S, M, D), ``spatial_shapes`` (L, 2) int64
    as (H, W), ``level_start_index`` (L,) int64, ``sampling_locations`` (N, Lq, M, L, P, 2)
    normalised (x, y), ``attention_weights`` (N, Lq, M, L, P) and ``gy`` (N, Lq, M * D) an
    upstream gradient; float64 unless cast with :meth:`astype`."""

    value: np.ndarray
    spatial_shapes: np.ndarray
    level_start_index: np.ndarray
    sampling_locations: np.ndarray
    attention_weights: np.ndarray
    gy: np.ndarray

    @property
    def args(self) -> tuple:
        """The arguments of ``forward`` (and of ``backward`` after ``gy``), in order."""
        return (self.value, self.spatial_shapes, self.level_start_index,
                self.sampling_locations, self.attention_weights)

    @property
    def arrays(self) -> dict:
        """The three differentiable inputs, by name, in ``forward``'s order."""
        return dict(value=self.value, sampling_locations=self.sampling_locations,
                    attention_weights=self.attention_weights)

    def astype(self, dtype) -> MSDACase:
        """The same case with the float arrays cast to ``dtype`` (far-away coordinates that
        overflow float32 become inf, which is just as far away)."""
        with np.errstate(over="ignore"):
            return MSDACase(self.value.astype(dtype), self.spatial_shapes,
                            self.level_start_index, self.sampling_locations.astype(dtype),
                            self.attention_weights.astype(dtype), self.gy.astype(dtype))


@st.composite
def level_shapes(draw, bounds: MSDABounds = MSDA_DEFAULT) -> np.ndarray:
    """(L, 2) int64 level sizes (H_l, W_l), L in 1 .. bounds.levels, sides in 1 .. bounds.side
    (so levels one pixel high or wide are common)."""
    n_levels = draw(st.integers(1, bounds.levels), label="L")
    sides = [(draw(st.integers(1, bounds.side), label=f"H_{level}"),
              draw(st.integers(1, bounds.side), label=f"W_{level}"))
             for level in range(n_levels)]
    event("L = 1 (single-scale)" if n_levels == 1 else f"L = {n_levels}")
    if any(1 in side for side in sides):
        event("a level of height or width 1")
    return np.array(sides, dtype=np.int64)


@st.composite
def smooth_locations(draw, shape: tuple, spatial_shapes: np.ndarray,
                     margin: float = MSDA_KINK_MARGIN) -> np.ndarray:
    """Normalised locations (N, Lq, M, L, P, 2) for ``shape`` = (N, Lq, M, L, P) whose pixel
    coordinates (eq. 2) are ``margin`` away from every integer: drawn in pixel space as a cell
    in -2 .. size plus a fraction in [margin, 1 - margin] (so some points lie outside [0, 1],
    straddling a border or wholly outside), then mapped back by ``u = (x + 0.5) / W``."""
    per_level = shape[:3] + shape[4:]  # (N, Lq, M, P)
    locations = np.empty(tuple(shape) + (2,))
    for level, sizes in enumerate(spatial_shapes.tolist()):
        height, width = sizes
        for axis, size in ((0, width), (1, height)):  # x along the width, y along the height
            cells = draw(hnp.arrays(np.int64, per_level, elements=st.integers(-2, size)),
                         label=f"level {level} {'xy'[axis]} cells")
            fractions = draw(hnp.arrays(np.float64, per_level,
                                        elements=st.floats(margin, 1.0 - margin)),
                             label=f"level {level} {'xy'[axis]} fractions")
            locations[:, :, :, level, :, axis] = (cells + fractions + 0.5) / size
    return locations


@st.composite
def any_locations(draw, shape: tuple, spatial_shapes: np.ndarray) -> np.ndarray:
    """Normalised locations the tiers must agree on although no derivative is estimated
    there: smooth ones, or ones on a 1/32 grid over [-0.75, 1.75] (whose pixel coordinates
    ``u W - 0.5`` are exact, and often integers: kinks and borders), with some coordinates
    replaced by non-finite or far-away values."""
    if draw(st.booleans(), label="locations on the 1/32 grid"):
        steps = draw(hnp.arrays(np.int64, tuple(shape) + (2,), elements=st.integers(-24, 56)),
                     label="grid steps")
        locations = steps * MSDA_GRID
        pixels = locations * spatial_shapes[None, None, None, :, None, ::-1] - 0.5  # eq. (2)
        if (pixels == np.floor(pixels)).any():
            event("some pixel coordinates are integers (kinks)")
    else:
        locations = draw(smooth_locations(shape, spatial_shapes), label="smooth locations")
    flat = locations.reshape(-1).copy()
    n_far = draw(st.integers(0, min(4, flat.size)), label="far or non-finite coordinates")
    where = draw(st.lists(st.integers(0, flat.size - 1), min_size=n_far, max_size=n_far,
                          unique=True), label="their positions")
    flat[where] = draw(st.lists(st.sampled_from(MSDA_FAR), min_size=n_far, max_size=n_far),
                       label="their values")
    locations = flat.reshape(locations.shape)
    if not np.isfinite(locations).all():
        event("some locations are non-finite")
    return locations


@st.composite
def ms_deform_attn_cases(draw, bounds: MSDABounds = MSDA_DEFAULT,
                         smooth: bool = True) -> MSDACase:
    """A drawn multi-scale deformable attention: level shapes (L = 1 and levels of height or
    width 1 included), N, Lq, M, D, P, value, locations (off the kinks when ``smooth``, else
    seeking kinks, non-finite and far-away values), attention weights (not normalised: the op
    uses them as given) and an upstream gradient."""
    spatial_shapes = draw(level_shapes(bounds), label="spatial_shapes")
    sizes = spatial_shapes[:, 0] * spatial_shapes[:, 1]  # (L,) H_l * W_l
    level_start_index = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    n = draw(st.integers(1, bounds.batch), label="N")
    n_queries = draw(st.integers(1, bounds.queries), label="Lq")
    m = draw(st.integers(1, bounds.heads), label="M")
    d = draw(st.integers(1, bounds.head_dim), label="D")
    p = draw(st.integers(1, bounds.points), label="P")
    shape = (n, n_queries, m, len(spatial_shapes), p)
    value = draw(float64_arrays((n, int(sizes.sum()), m, d)), label="value")
    locations = draw((smooth_locations if smooth else any_locations)(shape, spatial_shapes),
                     label="sampling_locations")
    weights = draw(float64_arrays(shape), label="attention_weights")
    gy = draw(float64_arrays((n, n_queries, m * d)), label="gy")
    event(f"{m} head(s), {p} point(s)")
    return MSDACase(value, spatial_shapes, level_start_index, locations, weights, gy)
