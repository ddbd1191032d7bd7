"""Bad input to ``bilinear``: one test per rule, asserting the error type and that the message
names the offending argument (docs/design.md, tests)."""

from __future__ import annotations

import numpy as np
import pytest

import scratchvision
from scratchvision import _dispatch
from scratchvision.ops import bilinear

from backend_rules import whole_word

IMAGE = np.zeros((2, 3, 4, 5))
POINTS = np.zeros((2, 6, 2))
GY = np.zeros((2, 3, 6))
X = np.zeros((2, 3, 4, 5))
RESIZE_GY = np.zeros((2, 3, 7, 8))


# ----------------------------------------------------------------------------- sample

SAMPLE_CALLS = {
    "sample": lambda image, points, gy: bilinear.sample(image, points),
    "sample_backward": lambda image, points, gy: bilinear.sample_backward(gy, image, points),
}


@pytest.fixture(params=list(SAMPLE_CALLS))
def sample_call(request):
    """``sample`` or ``sample_backward``, both taking (image, points, gy)."""
    return SAMPLE_CALLS[request.param]


@pytest.mark.parametrize("shape", [(3, 4, 5), (1, 2, 3, 4, 5), ()])
def test_image_must_have_four_dimensions(sample_call, shape):
    with pytest.raises(ValueError, match=whole_word("image")):
        sample_call(np.zeros(shape), POINTS, GY)


@pytest.mark.parametrize("shape", [(2, 6, 3), (2, 6, 1), (2, 3, 4, 5)])
def test_points_last_dimension_must_be_two(sample_call, shape):
    with pytest.raises(ValueError, match=whole_word("points")):
        sample_call(IMAGE, np.zeros(shape), GY)


@pytest.mark.parametrize("shape", [(2,), ()])
def test_points_need_a_batch_dimension(sample_call, shape):
    with pytest.raises(ValueError, match=whole_word("points")):
        sample_call(IMAGE, np.zeros(shape), GY)


def test_batch_sizes_must_match(sample_call):
    with pytest.raises(ValueError, match=r"\bimage\b.*\bpoints\b|\bpoints\b.*\bimage\b"):
        sample_call(IMAGE, np.zeros((3, 6, 2)), np.zeros((3, 3, 6)))


@pytest.mark.parametrize("shape", [(2, 3, 0, 5), (2, 3, 4, 0)])
def test_image_must_not_be_empty_in_space(sample_call, shape):
    with pytest.raises(ValueError, match=whole_word("image")):
        sample_call(np.zeros(shape), POINTS, GY)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.bool_, np.complex128])
def test_image_must_be_float(sample_call, dtype):
    with pytest.raises(TypeError, match=whole_word("image")):
        sample_call(IMAGE.astype(dtype), POINTS, GY)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_, np.float16])
def test_points_must_be_float32_or_float64(sample_call, dtype):
    with pytest.raises(TypeError, match=whole_word("points")):
        sample_call(IMAGE, POINTS.astype(dtype), GY)


def test_points_as_nested_lists_of_ints_are_rejected(sample_call):
    with pytest.raises(TypeError, match=whole_word("points")):
        sample_call(IMAGE, [[[1, 2]], [[3, 4]]], GY)


@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 2, 6), (1, 3, 6), (2, 3, 6, 1)])
def test_sample_gy_must_have_the_output_shape(shape):
    with pytest.raises(ValueError, match=whole_word("gy")):
        bilinear.sample_backward(np.zeros(shape), IMAGE, POINTS)


def test_sample_gy_must_be_float():
    with pytest.raises(TypeError, match=whole_word("gy")):
        bilinear.sample_backward(GY.astype(np.int64), IMAGE, POINTS)


# ----------------------------------------------------------------------------- resize

RESIZE_CALLS = {
    "resize": lambda x, size, gy=None, **kw: bilinear.resize(x, size, **kw),
    "resize_backward": lambda x, size, gy=None, **kw: bilinear.resize_backward(
        RESIZE_GY if gy is None else gy, x, size, **kw),
}


@pytest.fixture(params=list(RESIZE_CALLS))
def resize_call(request):
    """``resize`` or ``resize_backward``, both taking (x, size, gy=..., **options)."""
    return RESIZE_CALLS[request.param]


@pytest.mark.parametrize("shape", [(3, 4, 5), (4, 5), (1, 2, 3, 4, 5)])
def test_x_must_have_four_dimensions(resize_call, shape):
    with pytest.raises(ValueError, match=whole_word("x")):
        resize_call(np.zeros(shape), (7, 8))


@pytest.mark.parametrize("shape", [(2, 3, 0, 5), (2, 3, 4, 0)])
def test_x_must_not_be_empty_in_space(resize_call, shape):
    with pytest.raises(ValueError, match=whole_word("x")):
        resize_call(np.zeros(shape), (7, 8))


@pytest.mark.parametrize("dtype", [np.int64, np.uint8, np.bool_, np.complex64])
def test_x_must_be_float(resize_call, dtype):
    with pytest.raises(TypeError, match=whole_word("x")):
        resize_call(X.astype(dtype), (7, 8))


@pytest.mark.parametrize("size", [0, -1, (0, 3), (3, 0), (-2, 4)])
def test_size_must_be_positive(resize_call, size):
    """A non-positive size means an empty output: rejected, like torch."""
    with pytest.raises(ValueError, match=whole_word("size")):
        resize_call(X, size)


@pytest.mark.parametrize("size", [(7,), (7, 8, 9), ()])
def test_size_must_be_an_int_or_a_pair(resize_call, size):
    with pytest.raises(ValueError, match=whole_word("size")):
        resize_call(X, size)


@pytest.mark.parametrize("size", [2.5, (7.0, 8), "7", None, True])
def test_size_entries_must_be_integers(resize_call, size):
    with pytest.raises(TypeError, match=whole_word("size")):
        resize_call(X, size)


@pytest.mark.parametrize("mode", ["bicubic", "linear", "Bilinear", None])
def test_mode_must_be_known(resize_call, mode):
    with pytest.raises(ValueError, match=whole_word("mode")):
        resize_call(X, (7, 8), mode=mode)


def test_align_corners_does_not_apply_to_nearest(resize_call):
    with pytest.raises(ValueError, match=whole_word("align_corners")):
        resize_call(X, (7, 8), mode="nearest", align_corners=True)


@pytest.mark.parametrize("value", [1, 0, "yes", None])
def test_align_corners_must_be_a_bool(resize_call, value):
    with pytest.raises(TypeError, match=whole_word("align_corners")):
        resize_call(X, (7, 8), align_corners=value)


@pytest.mark.parametrize("shape", [(2, 3, 8, 7), (2, 3, 7), (1, 3, 7, 8), (2, 2, 7, 8)])
def test_resize_gy_must_have_the_output_shape(shape):
    with pytest.raises(ValueError, match=whole_word("gy")):
        bilinear.resize_backward(np.zeros(shape), X, (7, 8))


def test_resize_gy_must_be_float():
    with pytest.raises(TypeError, match=whole_word("gy")):
        bilinear.resize_backward(RESIZE_GY.astype(np.int32), X, (7, 8))


# ----------------------------------------------------------------------------- backend

ALL_CALLS = {
    "sample": lambda backend: bilinear.sample(IMAGE, POINTS, backend=backend),
    "sample_backward": lambda backend: bilinear.sample_backward(GY, IMAGE, POINTS,
                                                                backend=backend),
    "resize": lambda backend: bilinear.resize(X, (7, 8), backend=backend),
    "resize_backward": lambda backend: bilinear.resize_backward(RESIZE_GY, X, (7, 8),
                                                                backend=backend),
}


@pytest.mark.parametrize("call", list(ALL_CALLS))
@pytest.mark.parametrize("backend", ["gpu", "torch", "Numba", "", None, 1])
def test_unknown_backend(call, backend):
    with pytest.raises(ValueError, match=whole_word("backend")):
        ALL_CALLS[call](backend)


@pytest.mark.parametrize("call", list(ALL_CALLS))
def test_unavailable_backend_says_which_and_why(call, monkeypatch):
    why = "no CUDA GPU or driver found (test double)"
    monkeypatch.setattr(_dispatch, "_cuda_status",
                        lambda: _dispatch.TierStatus(False, "unavailable", why))
    with pytest.raises(scratchvision.BackendUnavailableError, match="cuda") as excinfo:
        ALL_CALLS[call]("cuda")
    assert why in str(excinfo.value)
    # "auto" never picks a tier that cannot run
    ALL_CALLS[call]("auto")
