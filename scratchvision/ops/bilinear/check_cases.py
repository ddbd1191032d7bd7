"""The cases ``scratchvision check`` verifies for bilinear sampling and resizing."""

from __future__ import annotations

import functools

import numpy as np

from ...selfcheck import CheckCase
from . import resize, resize_backward, sample, sample_backward

# Sampled coordinates stay this far from integers (the kinks of the piecewise-linear
# interpolant), far more than gradcheck's eps = 1e-6, so central differences never straddle a
# kink. The kinks themselves are pinned by the test suite.
KINK_MARGIN = 1e-2


def points_off_kinks(rng: np.random.Generator, shape: tuple, height: int, width: int
                     ) -> np.ndarray:
    """Points (*shape, 2) over [-1.5, W + 0.5) x [-1.5, H + 0.5), so some taps fall outside
    the image and some points fall outside its support, with fractional parts in
    [KINK_MARGIN, 1 - KINK_MARGIN]."""
    cells = np.stack([rng.integers(-2, width + 1, size=shape),
                      rng.integers(-2, height + 1, size=shape)], axis=-1)
    return cells + rng.uniform(KINK_MARGIN, 1 - KINK_MARGIN, size=shape + (2,))


def _sample_inputs(rng, tiny):
    n, c, h, w, p = (1, 2, 4, 5, 6) if tiny else (2, 3, 6, 7, 12)
    return {"image": rng.standard_normal((n, c, h, w)),
            "points": points_off_kinks(rng, (n, p), h, w)}


def _resize_inputs(rng, tiny):
    shape = (1, 2, 3, 4) if tiny else (2, 3, 5, 6)
    return {"x": rng.standard_normal(shape)}


def _resize_case(size, align_corners, mode):
    kwargs = {"size": size, "align_corners": align_corners, "mode": mode}
    label = f"bilinear.resize {mode}" + (" align_corners" if align_corners else "")
    return CheckCase(
        name=f"{label} -> {size}",
        make_inputs=_resize_inputs,
        forward=functools.partial(resize, **kwargs),
        backward=lambda gy, x, backend: resize_backward(gy, x, backend=backend, **kwargs),
        wrt=("x",),
    )


CHECK_CASES = [
    CheckCase("bilinear.sample", _sample_inputs, sample, sample_backward, ("image", "points")),
    _resize_case((7, 4), False, "bilinear"),
    _resize_case((2, 9), True, "bilinear"),
    _resize_case((8, 3), False, "nearest"),
]
