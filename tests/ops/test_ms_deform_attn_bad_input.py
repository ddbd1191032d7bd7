"""Bad input to ``ms_deform_attn``: one test per rule, for ``forward`` and ``backward`` alike,
asserting the error type and that the message names the offending argument (docs/design.md,
tests)."""

from __future__ import annotations

import numpy as np
import pytest

from scratchvision.ops import ms_deform_attn

from backend_rules import (call_fixture, test_the_valid_call_runs,  # noqa: F401
                           test_unavailable_backend_says_which_and_why,
                           test_unknown_backend, whole_word)

# A valid call: N=2, two levels (3, 4) and (1, 2), so S = 14; M=2 heads of D=3 channels;
# Lq=5 queries with P=2 points per head and level.
VALUE = np.zeros((2, 14, 2, 3))
SPATIAL_SHAPES = np.array([[3, 4], [1, 2]])
LEVEL_START_INDEX = np.array([0, 12])
LOCATIONS = np.full((2, 5, 2, 2, 2, 2), 0.5)
WEIGHTS = np.ones((2, 5, 2, 2, 2))
GY = np.zeros((2, 5, 6))
VALID = dict(value=VALUE, spatial_shapes=SPATIAL_SHAPES, level_start_index=LEVEL_START_INDEX,
             sampling_locations=LOCATIONS, attention_weights=WEIGHTS, gy=GY)


def _forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
             gy, **options):
    return ms_deform_attn.forward(value, spatial_shapes, level_start_index,
                                  sampling_locations, attention_weights, **options)


def _backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
              gy, **options):
    return ms_deform_attn.backward(gy, value, spatial_shapes, level_start_index,
                                   sampling_locations, attention_weights, **options)


call = call_fixture(VALID, _forward, _backward)


# ----------------------------------------------------------------------------- dtypes, ndim

NOT_FLOAT = [np.int64, np.int32, np.uint8, np.bool_, np.complex128, np.float16]


@pytest.mark.parametrize("name", ["value", "sampling_locations", "attention_weights"])
@pytest.mark.parametrize("dtype", NOT_FLOAT)
def test_integer_and_other_dtypes_are_rejected(call, name, dtype):
    with pytest.raises(TypeError, match=whole_word(name)):
        call(**{name: VALID[name].astype(dtype)})


@pytest.mark.parametrize("dtype", NOT_FLOAT)
def test_gy_must_be_float(dtype):
    with pytest.raises(TypeError, match=whole_word("gy")):
        _backward(**{**VALID, "gy": GY.astype(dtype)})


@pytest.mark.parametrize("name", ["spatial_shapes", "level_start_index"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.bool_, np.complex128])
def test_index_arrays_must_be_integers(call, name, dtype):
    """A whole number stored as a float is still rejected: a size of 12.0 hides where it came
    from."""
    with pytest.raises(TypeError, match=whole_word(name)):
        call(**{name: VALID[name].astype(dtype)})


@pytest.mark.parametrize("name, shape", [
    ("value", (2, 14, 6)), ("value", (2, 14, 2, 3, 1)),
    ("sampling_locations", (2, 5, 2, 2, 4)), ("sampling_locations", (2, 5, 2, 2, 2, 2, 1)),
    ("attention_weights", (2, 5, 2, 4)), ("attention_weights", (2, 5, 2, 2, 2, 1)),
])
def test_float_arrays_must_have_the_right_number_of_dimensions(call, name, shape):
    with pytest.raises(ValueError, match=whole_word(name)):
        call(**{name: np.zeros(shape)})


@pytest.mark.parametrize("name, value", [
    ("spatial_shapes", np.array([3, 4, 1, 2])), ("spatial_shapes", np.zeros((2, 2, 1), int)),
    ("level_start_index", np.array([[0, 12]])), ("level_start_index", np.array(0)),
])
def test_index_arrays_must_have_the_right_number_of_dimensions(call, name, value):
    with pytest.raises(ValueError, match=whole_word(name)):
        call(**{name: value})


@pytest.mark.parametrize("shape", [(2, 5, 6, 1), (2, 30)])
def test_gy_must_have_three_dimensions(shape):
    with pytest.raises(ValueError, match=whole_word("gy")):
        _backward(**{**VALID, "gy": np.zeros(shape)})


# ----------------------------------------------------------------------------- levels

@pytest.mark.parametrize("shapes", [[[3, 4], [1, 1]], [[3, 4], [2, 2]], [[14, 1], [1, 1]]])
def test_spatial_shapes_must_sum_to_the_number_of_positions(call, shapes):
    """sum H * W over levels must be value's S = 14 (here 13, 16 and 15)."""
    shapes = np.array(shapes)
    with pytest.raises(ValueError, match=whole_word("spatial_shapes")):
        call(spatial_shapes=shapes,
             level_start_index=np.array([0, shapes[0, 0] * shapes[0, 1]]))


@pytest.mark.parametrize("shapes", [[[7, 2], [0, 2]], [[7, 2], [2, 0]], [[-3, -4], [1, 2]]])
def test_level_sizes_must_be_positive(call, shapes):
    """An empty level or negative sizes, although H * W still sums to S = 14 each time."""
    with pytest.raises(ValueError, match=whole_word("spatial_shapes")):
        call(spatial_shapes=np.array(shapes))


def test_spatial_shapes_must_hold_height_and_width(call):
    with pytest.raises(ValueError, match=whole_word("spatial_shapes")):
        call(spatial_shapes=np.array([[3, 4, 1], [1, 2, 1]]))


def test_there_must_be_at_least_one_level(call):
    with pytest.raises(ValueError, match=whole_word("spatial_shapes")):
        call(spatial_shapes=np.zeros((0, 2), dtype=np.int64),
             level_start_index=np.zeros(0, dtype=np.int64),
             sampling_locations=np.zeros((2, 5, 2, 0, 2, 2)),
             attention_weights=np.zeros((2, 5, 2, 0, 2)))


@pytest.mark.parametrize("starts", [[0, 11], [1, 12], [12, 0], [0], [0, 12, 14]])
def test_level_start_index_must_agree_with_spatial_shapes(call, starts):
    with pytest.raises(ValueError, match=whole_word("level_start_index")):
        call(level_start_index=np.array(starts))


# ----------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("shape", [(3, 5, 2, 2, 2, 2), (2, 5, 3, 2, 2, 2), (2, 5, 1, 2, 2, 2)],
                         ids=["batch", "heads M", "heads M (fewer)"])
def test_sampling_locations_must_match_value(call, shape):
    with pytest.raises(ValueError, match=whole_word("sampling_locations")):
        call(sampling_locations=np.zeros(shape),
             attention_weights=np.zeros(shape[:-1]))


@pytest.mark.parametrize("levels", [1, 3])
def test_sampling_locations_must_have_one_entry_per_level(call, levels):
    shape = (2, 5, 2, levels, 2)
    with pytest.raises(ValueError, match=whole_word("sampling_locations")):
        call(sampling_locations=np.zeros(shape + (2,)), attention_weights=np.zeros(shape))


@pytest.mark.parametrize("size", [1, 3])
def test_sampling_locations_must_be_x_y_pairs(call, size):
    with pytest.raises(ValueError, match=whole_word("sampling_locations")):
        call(sampling_locations=np.zeros((2, 5, 2, 2, 2, size)))


@pytest.mark.parametrize("shape", [(2, 5, 2, 2, 3), (2, 5, 2, 2, 1), (2, 5, 2, 3, 2),
                                   (2, 5, 3, 2, 2), (2, 4, 2, 2, 2), (1, 5, 2, 2, 2)],
                         ids=["points P", "points P (fewer)", "levels L", "heads M",
                              "queries Lq", "batch"])
def test_attention_weights_must_match_sampling_locations(call, shape):
    with pytest.raises(ValueError, match=whole_word("attention_weights")):
        call(attention_weights=np.zeros(shape))


@pytest.mark.parametrize("shape", [(2, 5, 5), (2, 5, 7), (2, 4, 6), (1, 5, 6), (2, 6, 6)])
def test_gy_must_have_the_output_shape(shape):
    with pytest.raises(ValueError, match=whole_word("gy")):
        _backward(**{**VALID, "gy": np.zeros(shape)})
