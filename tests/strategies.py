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
