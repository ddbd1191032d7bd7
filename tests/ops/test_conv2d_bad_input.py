"""Bad input to ``conv2d``: one test per rule, asserting the error type and that the message
names the offending argument (docs/design.md, tests). Every rule is checked on both the forward
and the backward, which validate the same way."""

from __future__ import annotations

import numpy as np
import pytest

from scratchvision.ops import conv2d

from backend_rules import (call_fixture, test_the_valid_call_runs,  # noqa: F401
                           test_unavailable_backend_says_which_and_why,
                           test_unknown_backend, whole_word)

X = np.zeros((2, 4, 6, 7))
WEIGHT = np.zeros((6, 2, 3, 3))  # groups = 2
BIAS = np.zeros(6)
GY = np.zeros((2, 6, 4, 5))  # no padding, stride 1
OPTIONS = dict(groups=2)


def _forward(x=X, weight=WEIGHT, bias=BIAS, gy=GY, **options):
    return conv2d.forward(x, weight, bias, **{**OPTIONS, **options})


def _backward(x=X, weight=WEIGHT, bias=BIAS, gy=GY, **options):
    return conv2d.backward(gy, x, weight, bias, **{**OPTIONS, **options})


# _forward and _backward default to a valid call (the arrays above), so nothing more is "valid"
call = call_fixture({}, _forward, _backward)


# ----------------------------------------------------------------------------- arrays

@pytest.mark.parametrize("shape", [(4, 6, 7), (1, 2, 4, 6, 7), (), (2, 4)])
def test_x_must_have_four_dimensions(call, shape):
    with pytest.raises(ValueError, match=whole_word("x")):
        call(x=np.zeros(shape))


@pytest.mark.parametrize("shape", [(6, 2, 3), (6, 2, 3, 3, 1), (6,)])
def test_weight_must_have_four_dimensions(call, shape):
    with pytest.raises(ValueError, match=whole_word("weight")):
        call(weight=np.zeros(shape))


@pytest.mark.parametrize("name", ["x", "weight", "bias", "gy"])
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.bool_, np.complex128,
                                   np.float16])
def test_arrays_must_be_float32_or_float64(name, dtype):
    """Integer (and other non-float) arrays are a TypeError, naming the array; gy is only an
    argument of the backward."""
    arrays = dict(x=X, weight=WEIGHT, bias=BIAS, gy=GY)
    arrays[name] = arrays[name].astype(dtype)
    calls = [_backward] if name == "gy" else [_forward, _backward]
    for fn in calls:
        with pytest.raises(TypeError, match=whole_word(name)):
            fn(**arrays)


@pytest.mark.parametrize("shape", [(2, 4, 0, 7), (2, 4, 6, 0)])
def test_x_must_not_be_empty_in_space(call, shape):
    with pytest.raises(ValueError, match=whole_word("x")):
        call(x=np.zeros(shape), padding=2)


def test_weight_must_have_a_kernel(call):
    with pytest.raises(ValueError, match=whole_word("weight")):
        call(weight=np.zeros((6, 2, 0, 3)))


# ----------------------------------------------------------------------------- channels

@pytest.mark.parametrize("groups", [3, 8])
def test_groups_must_divide_the_input_channels(call, groups):
    """x has 4 channels, which 3 and 8 do not divide (both divide C_out = 24)."""
    with pytest.raises(ValueError, match=whole_word("groups")):
        call(weight=np.zeros((24, 1, 3, 3)), bias=np.zeros(24), gy=np.zeros((2, 24, 4, 5)),
             groups=groups)


def test_groups_must_divide_the_output_channels(call):
    with pytest.raises(ValueError, match=whole_word("groups")):
        call(weight=np.zeros((5, 2, 3, 3)), bias=np.zeros(5), gy=np.zeros((2, 5, 4, 5)))


@pytest.mark.parametrize("in_channels", [1, 4, 3])
def test_weight_channels_must_match_x_and_groups(call, in_channels):
    """weight.shape[1] must be C_in / groups = 2."""
    with pytest.raises(ValueError, match=whole_word("weight")):
        call(weight=np.zeros((6, in_channels, 3, 3)))


@pytest.mark.parametrize("groups", [0, -1])
def test_groups_must_be_positive(call, groups):
    with pytest.raises(ValueError, match=whole_word("groups")):
        call(groups=groups)


@pytest.mark.parametrize("groups", [2.0, "2", None, True])
def test_groups_must_be_an_integer(call, groups):
    with pytest.raises(TypeError, match=whole_word("groups")):
        call(groups=groups)


# ----------------------------------------------------------------------------- bias and gy

@pytest.mark.parametrize("shape", [(5,), (7,), (6, 1), (1, 6), ()])
def test_bias_must_have_one_entry_per_output_channel(call, shape):
    with pytest.raises(ValueError, match=whole_word("bias")):
        call(bias=np.zeros(shape))


@pytest.mark.parametrize("shape", [(2, 6, 4, 6), (2, 6, 5, 5), (1, 6, 4, 5), (2, 5, 4, 5),
                                   (2, 6, 4), (2, 6, 4, 5, 1)])
def test_gy_must_have_the_output_shape(shape):
    with pytest.raises(ValueError, match=whole_word("gy")):
        _backward(gy=np.zeros(shape))


# ----------------------------------------------------------------------------- hyper-parameters

@pytest.mark.parametrize("name", ["stride", "dilation"])
@pytest.mark.parametrize("value", [0, -1, (1, 0), (0, 2), (-1, 1)])
def test_stride_and_dilation_must_be_positive(call, name, value):
    with pytest.raises(ValueError, match=whole_word(name)):
        call(**{name: value})


@pytest.mark.parametrize("value", [-1, (0, -1), (-2, 0)])
def test_padding_must_not_be_negative(call, value):
    with pytest.raises(ValueError, match=whole_word("padding")):
        call(padding=value)


@pytest.mark.parametrize("name", ["stride", "padding", "dilation"])
@pytest.mark.parametrize("value", [(1,), (1, 1, 1), ()])
def test_hyper_parameters_are_an_int_or_a_pair(call, name, value):
    with pytest.raises(ValueError, match=whole_word(name)):
        call(**{name: value})


@pytest.mark.parametrize("name", ["stride", "padding", "dilation"])
@pytest.mark.parametrize("value", [1.5, (1, 2.0), "1", None, True])
def test_hyper_parameters_must_be_integers(call, name, value):
    with pytest.raises(TypeError, match=whole_word(name)):
        call(**{name: value})


@pytest.mark.parametrize("options", [
    dict(),  # x 6 x 7 with a 7 x 7 kernel
    dict(dilation=(1, 4)),  # a 3 x 3 kernel spanning 3 x 9 pixels
    dict(dilation=3, stride=2),  # ... spanning 7 x 7
], ids=["kernel larger than x", "dilated kernel wider than x", "dilated kernel larger than x"])
def test_empty_output_is_an_error(call, options):
    """The (dilated) kernel does not fit in the padded input: eq. (1) gives Ho or Wo < 1.
    The message says so and shows the sizes that led there."""
    weight = np.zeros((6, 2, 7, 7)) if not options else WEIGHT
    with pytest.raises(ValueError, match=r"empty output.*\(6, 7\)"):
        call(weight=weight, **options)
