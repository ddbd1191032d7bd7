"""Argument validation shared by every op (``scratchvision._checks``): error types, and
messages that name the argument, say what was given and what was expected."""

from __future__ import annotations

import numpy as np
import pytest

from scratchvision import _checks


# ----------------------------------------------------------------------------- float_array

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_array_accepts_float32_and_float64(dtype):
    arr = np.zeros((2, 3), dtype=dtype)
    assert _checks.float_array(arr, "x", ndim=2) is arr  # validated, not copied


@pytest.mark.parametrize("dtype", [np.int8, np.int64, np.uint16, np.bool_])
def test_float_array_rejects_integers_and_suggests_a_cast(dtype):
    with pytest.raises(TypeError, match=r"\bweight\b.*float32 or float64.*astype") as excinfo:
        _checks.float_array(np.zeros(3, dtype=dtype), "weight")
    assert str(np.dtype(dtype)) in str(excinfo.value)


@pytest.mark.parametrize("value", [np.zeros(3, np.complex128), np.zeros(3, np.float16),
                                   np.array(["a"]), np.array([None])])
def test_float_array_rejects_other_dtypes(value):
    with pytest.raises(TypeError, match=r"\bvalue\b"):
        _checks.float_array(value, "value")


def test_float_array_accepts_lists_of_floats():
    assert _checks.float_array([[1.0, 2.0]], "x", ndim=2).dtype == np.float64


def test_float_array_ndim_message_shows_the_shape():
    with pytest.raises(ValueError, match=r"image must have 4 dimensions, got shape \(2, 3\)"):
        _checks.float_array(np.zeros((2, 3)), "image", ndim=4)
    with pytest.raises(ValueError, match=r"points must have at least 2 dimensions"):
        _checks.float_array(np.zeros(3), "points", min_ndim=2)


# ----------------------------------------------------------------------------- common_float

def test_common_float_keeps_float32_when_all_are_float32():
    a, b = _checks.common_float(("a", np.zeros(2, np.float32)), ("b", np.zeros(3, np.float32)))
    assert a.dtype == b.dtype == np.float32


def test_common_float_promotes_mixed_inputs_to_float64():
    a, b = _checks.common_float(("a", np.zeros(2, np.float32)), ("b", np.zeros(3)))
    assert a.dtype == b.dtype == np.float64


def test_common_float_makes_views_contiguous_without_touching_them():
    base = np.arange(12.0).reshape(3, 4)
    views = {"fortran": np.asfortranarray(base), "negative stride": base[::-1],
             "strided": base[:, ::2], "transposed": base.T}
    for name, view in views.items():
        before = view.copy()
        (out,) = _checks.common_float((name, view))
        assert out.flags.c_contiguous, name
        np.testing.assert_array_equal(out, view)
        np.testing.assert_array_equal(view, before)


def test_common_float_does_not_copy_what_is_already_right():
    arr = np.zeros((2, 3))
    (out,) = _checks.common_float(("arr", arr))
    assert out is arr


def test_common_float_accepts_read_only_arrays():
    arr = np.zeros((2, 3))[:, ::2]
    arr.flags.writeable = False
    (out,) = _checks.common_float(("arr", arr))
    np.testing.assert_array_equal(out, arr)


# ----------------------------------------------------------------------------- shapes

def test_last_dim():
    _checks.last_dim(np.zeros((2, 5, 2)), "points", 2, "(x, y)")
    with pytest.raises(ValueError, match=r"points must have a last dimension of size 2 "
                                         r"\(x, y\), got shape \(2, 5, 3\)"):
        _checks.last_dim(np.zeros((2, 5, 3)), "points", 2, "(x, y)")


def test_same_size_names_both_arguments():
    _checks.same_size("image", 2, "points", 2, "batch size")
    with pytest.raises(ValueError, match=r"image and points must have the same batch size, "
                                         r"got 2 and 3"):
        _checks.same_size("image", 2, "points", 3, "batch size")


def test_shape_equals_says_why():
    _checks.shape_equals(np.zeros((1, 2)), "gy", (1, 2), "the output's shape")
    with pytest.raises(ValueError, match=r"gy must have shape \(1, 2\) \(the output's shape\), "
                                         r"got shape \(2, 1\)"):
        _checks.shape_equals(np.zeros((2, 1)), "gy", (1, 2), "the output's shape")


# ----------------------------------------------------------------------------- scalars

@pytest.mark.parametrize("value, expected", [
    (3, (3, 3)), ((2, 5), (2, 5)), ([4, 1], (4, 1)), (np.int64(7), (7, 7)),
    (np.array([2, 3]), (2, 3)), ((np.int32(1), 2), (1, 2)),
])
def test_int_pair_accepts_ints_and_pairs(value, expected):
    pair = _checks.int_pair(value, "size", minimum=1)
    assert pair == expected and all(type(v) is int for v in pair)


def test_int_pair_minimum():
    assert _checks.int_pair(0, "padding", minimum=0) == (0, 0)
    with pytest.raises(ValueError, match=r"padding must be >= 0, got -1"):
        _checks.int_pair(-1, "padding", minimum=0)
    with pytest.raises(ValueError, match=r"stride must be positive, got \(1, 0\)"):
        _checks.int_pair((1, 0), "stride", minimum=1)


@pytest.mark.parametrize("value", [(1, 2, 3), (1,), [], np.array([1, 2, 3])])
def test_int_pair_rejects_wrong_lengths(value):
    with pytest.raises((ValueError, TypeError), match=r"\bstride\b"):
        _checks.int_pair(value, "stride", minimum=1)


@pytest.mark.parametrize("value", [1.5, 2.0, "2", None, True, (1, 2.0), (False, 1)])
def test_int_pair_rejects_non_integers(value):
    with pytest.raises(TypeError, match=r"\bdilation\b"):
        _checks.int_pair(value, "dilation", minimum=1)


def test_choice():
    _checks.choice("nearest", "mode", ("bilinear", "nearest"))
    with pytest.raises(ValueError, match=r"mode must be one of \('bilinear', 'nearest'\), "
                                         r"got 'cubic'"):
        _checks.choice("cubic", "mode", ("bilinear", "nearest"))


@pytest.mark.parametrize("value", [True, False, np.bool_(True)])
def test_boolean_accepts_bools(value):
    assert _checks.boolean(value, "align_corners") is bool(value)


@pytest.mark.parametrize("value", [1, 0, "True", None, 1.0])
def test_boolean_rejects_everything_else(value):
    with pytest.raises(TypeError, match=r"\balign_corners\b"):
        _checks.boolean(value, "align_corners")
