"""Bad input to ``deform_conv2d``: one test per rule, for ``forward`` and ``backward`` alike,
asserting the error type and that the message names the offending argument (docs/design.md,
tests)."""

from __future__ import annotations

import numpy as np
import pytest

from scratchvision.ops import deform_conv2d

from backend_rules import (call_fixture, test_the_valid_call_runs,  # noqa: F401
                           test_unavailable_backend_says_which_and_why,
                           test_unknown_backend, whole_word)

# A valid DCNv2 call: N=2, C_in=4 in 2 offset groups, 2 weight groups, C_out=6, 3x3 kernel,
# padding 1 on a 5x7 input, so Ho x Wo = 5 x 7; K = 9.
X = np.zeros((2, 4, 5, 7))
OFFSET = np.zeros((2, 2 * 2 * 9, 5, 7))
WEIGHT = np.zeros((6, 2, 3, 3))
BIAS = np.zeros(6)
MASK = np.zeros((2, 2 * 9, 5, 7))
GY = np.zeros((2, 6, 5, 7))
VALID = dict(x=X, offset=OFFSET, weight=WEIGHT, bias=BIAS, mask=MASK, gy=GY, stride=1,
             padding=1, dilation=1)


def _forward(x, offset, weight, bias, mask, gy, **options):
    return deform_conv2d.forward(x, offset, weight, bias, mask=mask, **options)


def _backward(x, offset, weight, bias, mask, gy, **options):
    return deform_conv2d.backward(gy, x, offset, weight, bias, mask=mask, **options)


call = call_fixture(VALID, _forward, _backward)


# ----------------------------------------------------------------------------- arrays

@pytest.mark.parametrize("name", ["x", "offset", "weight", "mask"])
@pytest.mark.parametrize("shape", [(2, 4, 5), (1, 2, 4, 5, 7), ()])
def test_arrays_must_have_four_dimensions(call, name, shape):
    with pytest.raises(ValueError, match=whole_word(name)):
        call(**{name: np.zeros(shape)})


NOT_FLOAT = [np.int64, np.int32, np.uint8, np.bool_, np.complex128, np.float16]


@pytest.mark.parametrize("name", ["x", "offset", "weight", "bias", "mask"])
@pytest.mark.parametrize("dtype", NOT_FLOAT)
def test_integer_and_other_dtypes_are_rejected(call, name, dtype):
    with pytest.raises(TypeError, match=whole_word(name)):
        call(**{name: VALID[name].astype(dtype)})


@pytest.mark.parametrize("dtype", NOT_FLOAT)
def test_gy_must_be_float(dtype):
    with pytest.raises(TypeError, match=whole_word("gy")):
        _backward(**{**VALID, "gy": GY.astype(dtype)})


# ----------------------------------------------------------------------------- groups

def test_channels_must_be_divisible_by_the_offset_groups(call):
    """3 input channels, offset channels for 2 offset groups."""
    x = np.zeros((2, 3, 5, 7))
    weight = np.zeros((6, 3, 3, 3))
    with pytest.raises(ValueError, match=whole_word("offset") + ".*groups|groups.*" + whole_word("x")):
        call(x=x, weight=weight)


@pytest.mark.parametrize("channels", [0, 17, 35, 9])
def test_offset_channels_must_be_a_multiple_of_two_kh_kw(call, channels):
    with pytest.raises(ValueError, match=whole_word("offset")):
        call(offset=np.zeros((2, channels, 5, 7)))


def test_weight_channels_must_divide_the_input_channels(call):
    """weight.shape[1] = 3 does not divide C_in = 4: no whole number of weight groups."""
    with pytest.raises(ValueError, match=whole_word("weight")):
        call(weight=np.zeros((6, 3, 3, 3)))


def test_weight_groups_must_divide_the_output_channels(call):
    """2 weight groups (C_in 4 / weight.shape[1] 2) and 5 output channels."""
    with pytest.raises(ValueError, match=whole_word("weight")):
        call(weight=np.zeros((5, 2, 3, 3)), bias=np.zeros(5), gy=np.zeros((2, 5, 5, 7)))


def test_weight_kernel_must_not_be_empty(call):
    with pytest.raises(ValueError, match=whole_word("weight")):
        call(weight=np.zeros((6, 2, 0, 3)))


# ----------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("shape", [(2, 36, 5, 6), (2, 36, 4, 7), (2, 36, 7, 5)])
def test_offset_spatial_size_must_match_the_output(call, shape):
    with pytest.raises(ValueError, match=whole_word("offset")):
        call(offset=np.zeros(shape))


def test_offset_batch_size_must_match(call):
    with pytest.raises(ValueError, match=whole_word("offset")):
        call(offset=np.zeros((3, 36, 5, 7)))


@pytest.mark.parametrize("shape", [(2, 9, 5, 7), (2, 36, 5, 7), (2, 19, 5, 7)])
def test_mask_channels_must_be_offset_groups_times_kh_kw(call, shape):
    with pytest.raises(ValueError, match=whole_word("mask")):
        call(mask=np.zeros(shape))


@pytest.mark.parametrize("shape", [(2, 18, 5, 6), (2, 18, 6, 7), (1, 18, 5, 7)])
def test_mask_batch_and_spatial_size_must_match(call, shape):
    with pytest.raises(ValueError, match=whole_word("mask")):
        call(mask=np.zeros(shape))


@pytest.mark.parametrize("shape", [(5,), (6, 1), (7,)])
def test_bias_must_have_one_entry_per_output_channel(call, shape):
    with pytest.raises(ValueError, match=whole_word("bias")):
        call(bias=np.zeros(shape))


@pytest.mark.parametrize("shape", [(2, 6, 5, 6), (2, 5, 5, 7), (3, 6, 5, 7), (2, 6, 35)])
def test_gy_must_have_the_output_shape(shape):
    with pytest.raises(ValueError, match=whole_word("gy")):
        _backward(**{**VALID, "gy": np.zeros(shape)})


# ----------------------------------------------------------------------------- hyper-parameters

@pytest.mark.parametrize("name", ["stride", "dilation"])
@pytest.mark.parametrize("value", [0, -1, (1, 0), (0, 2)])
def test_stride_and_dilation_must_be_positive(call, name, value):
    with pytest.raises(ValueError, match=whole_word(name)):
        call(**{name: value})


@pytest.mark.parametrize("value", [-1, (0, -1), (-2, 1)])
def test_padding_must_not_be_negative(call, value):
    with pytest.raises(ValueError, match=whole_word("padding")):
        call(padding=value)


@pytest.mark.parametrize("name", ["stride", "padding", "dilation"])
@pytest.mark.parametrize("value", [1.5, "1", None, (1, 2, 3)])
def test_hyper_parameters_must_be_ints_or_pairs(call, name, value):
    with pytest.raises((TypeError, ValueError), match=whole_word(name)):
        call(**{name: value})


def test_empty_output_is_rejected(call):
    """A 3x3 kernel without padding on a 2-pixel-high input leaves no output row."""
    with pytest.raises(ValueError, match="empty output"):
        call(x=np.zeros((2, 4, 2, 7)), padding=0)
