"""``AnchorGenerator``: hand-worked base anchors, the order of the output, loop == numpy, and
torchvision's ``AnchorGenerator`` as the oracle (skipped cleanly without torchvision).

Anchors are integers stored in floats, so every comparison here is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from scratchvision import BackendUnavailableError
from scratchvision.detection.anchors import AnchorGenerator

from tiers import DTYPES, run_on_every_tier

OFFERED = ("loop", "numpy")


def _generate(sizes, ratios, image_size, feature_sizes, batch_size=1, dtype=np.float64,
              backend="auto"):
    generator = AnchorGenerator(sizes, ratios, backend=backend)
    return generator.generate(image_size, feature_sizes, batch_size=batch_size, dtype=dtype)


def _each_tier(*args, **kwargs) -> dict:
    """``{tier: generate(...)}`` for the loop and numpy tiers."""
    return run_on_every_tier(_generate, *args, offered=OFFERED, **kwargs)


def _cell_anchors_each_tier(sizes, ratios) -> dict:
    return {tier: AnchorGenerator(sizes, ratios, backend=tier).cell_anchors()
            for tier in OFFERED}


# ----------------------------------------------------------------------------- by hand

def test_base_anchors_of_the_three_standard_ratios():
    """size 32: ratio 0.5 has w = 32 sqrt(2) = 45.25, h = 22.63, halves 22.63 and 11.31
    -> (23, 11); ratio 1 halves 16; ratio 2 is ratio 0.5 transposed."""
    expected = np.array([[-23, -11, 23, 11],
                         [-16, -16, 16, 16],
                         [-11, -23, 11, 23]], dtype=np.float64)
    for tier, (base,) in _cell_anchors_each_tier(((32,),), ((0.5, 1.0, 2.0),)).items():
        assert base.dtype == np.float64
        np.testing.assert_array_equal(base, expected, err_msg=tier)


def test_base_anchors_are_ratio_major():
    """Ratios 1/4, 1, 4 have exact square roots 1/2, 1, 2, so the boxes are exact: for each
    ratio, for each size (16 then 32)."""
    expected = np.array([[-16, -4, 16, 4], [-32, -8, 32, 8],     # ratio 1/4: w = 2s, h = s/2
                         [-8, -8, 8, 8], [-16, -16, 16, 16],     # ratio 1
                         [-4, -16, 4, 16], [-8, -32, 8, 32]],    # ratio 4: w = s/2, h = 2s
                        dtype=np.float64)
    for tier, (base,) in _cell_anchors_each_tier(((16, 32),), ((0.25, 1.0, 4.0),)).items():
        np.testing.assert_array_equal(base, expected, err_msg=tier)


def test_halves_round_to_even():
    """Size 5, ratio 1: half-width 2.5 rounds to 2 (torch.round and np.round: half to even);
    size 7: 3.5 -> 4."""
    for tier, (base,) in _cell_anchors_each_tier(((5, 7),), ((1.0,),)).items():
        np.testing.assert_array_equal(base, [[-2, -2, 2, 2], [-4, -4, 4, 4]], err_msg=tier)


def test_base_anchors_are_computed_in_ieee_float32():
    """Size 7 with ratio (7/3)^2: in real arithmetic w = 3, half-width 1.5, which would round
    to 2 (even). In float32, as torchvision computes: float32(49/9) = 2854457 / 2^19, its
    correctly rounded square root is 2.3333335 (the true root 2.33333337875 is 1.1e-7 from it
    and 1.2e-7 from 2.3333333), 1 / 2.3333335 * 7 / 2 = 1.4999999 -> 1. h = 49/3: 8.17 -> 8.
    (torch's vectorised float32 sqrt returned 2.3333333 on an AVX-512 CPU, and so 2: the module
    docstring explains why the oracle cases stay off such knife edges.) The output dtype must
    not change it."""
    for dtype in DTYPES:
        for tier in OFFERED:
            generator = AnchorGenerator(((7,),), (((7 / 3) ** 2,),), backend=tier)
            (base,) = generator.cell_anchors(dtype=dtype)
            assert base.dtype == dtype
            np.testing.assert_array_equal(base, [[-1, -8, 1, 8]], err_msg=f"{tier} {dtype}")


def test_anchors_are_location_major_with_integer_division_strides():
    """Image 11 x 14 with a 2 x 3 feature map: strides 11 // 2 = 5 and 14 // 3 = 4 (neither
    divides). Location (i, j) shifts every base anchor by (4 j, 5 i, 4 j, 5 i), and the A = 2
    anchors of one location are consecutive, locations in row-major order."""
    sizes, ratios = ((4,),), ((1.0, 4.0),)  # bases (-2, -2, 2, 2) and (-1, -4, 1, 4)
    bases = [(-2, -2, 2, 2), (-1, -4, 1, 4)]
    expected = np.array([(x1 + 4 * j, y1 + 5 * i, x2 + 4 * j, y2 + 5 * i)
                         for i in range(2) for j in range(3)
                         for x1, y1, x2, y2 in bases], dtype=np.float64)
    assert AnchorGenerator(sizes, ratios).strides((11, 14), [(2, 3)]) == [(5, 4)]
    for tier, (anchors,) in _each_tier(sizes, ratios, (11, 14), [(2, 3)]).items():
        assert anchors.shape == (2 * 3 * 2, 4)
        np.testing.assert_array_equal(anchors, expected, err_msg=tier)


def test_levels_are_concatenated_finest_first():
    """Two levels, counts h * w * A per level: 4 * 4 * 3 + 2 * 2 * 1 rows; the second level's
    block starts at the origin again with its own base anchor."""
    generator = AnchorGenerator(((8,), (16,)), ((0.5, 1.0, 2.0), (1.0,)))
    assert generator.num_anchors_per_location() == [3, 1]
    (anchors,) = generator.generate((16, 16), [(4, 4), (2, 2)])
    assert anchors.shape == (4 * 4 * 3 + 2 * 2 * 1, 4)
    np.testing.assert_array_equal(anchors[48:], [[-8, -8, 8, 8], [0, -8, 16, 8],
                                                 [-8, 0, 8, 16], [0, 0, 16, 16]])


def test_every_image_gets_its_own_copy():
    anchors = _generate(((8,),), ((1.0,),), (8, 8), [(2, 2)], batch_size=3)
    assert len(anchors) == 3
    for other in anchors[1:]:
        np.testing.assert_array_equal(other, anchors[0])
        assert not np.shares_memory(other, anchors[0])
    assert _generate(((8,),), ((1.0,),), (8, 8), [(2, 2)], batch_size=0) == []


def test_an_empty_feature_map_contributes_no_anchors():
    for tier, (anchors,) in _each_tier(((8,), (16,)), ((1.0,), (1.0,)), (8, 8),
                                       [(0, 3), (1, 1)]).items():
        np.testing.assert_array_equal(anchors, [[-8, -8, 8, 8]], err_msg=tier)


def test_dtype_follows_the_feature_maps_in_call():
    generator = AnchorGenerator(((8,),), ((1.0,),))
    images = np.zeros((2, 3, 8, 8), dtype=np.float32)
    anchors = generator(images, [np.zeros((2, 5, 2, 2), dtype=np.float32)])
    assert len(anchors) == 2 and all(a.dtype == np.float32 for a in anchors)
    np.testing.assert_array_equal(anchors[1], [[-4, -4, 4, 4], [0, -4, 8, 4],
                                               [-4, 0, 4, 8], [0, 0, 8, 8]])


def test_flat_sizes_and_ratios_are_torchvisions_shorthand():
    flat = AnchorGenerator((32, 64), (0.5, 1.0))
    assert flat.sizes == ((32,), (64,))
    assert flat.aspect_ratios == ((0.5, 1.0), (0.5, 1.0))
    assert flat.num_anchors_per_location() == [2, 2]


# ----------------------------------------------------------------------------- tiers

@dataclass(frozen=True)
class AnchorCase:
    """Per-level ``sizes`` and ``ratios``, an ``image_size`` (H, W) and per-level
    ``feature_sizes`` (h, w) no larger than the image."""

    sizes: tuple
    ratios: tuple
    image_size: tuple[int, int]
    feature_sizes: list


@st.composite
def anchor_cases(draw, max_levels: int = 3) -> AnchorCase:
    levels = draw(st.integers(1, max_levels))
    size = st.one_of(st.integers(1, 600), st.floats(0.5, 600.0))
    ratio = st.one_of(st.sampled_from([0.5, 1.0, 2.0, 1 / 3, 3.0]), st.floats(0.05, 20.0))
    sizes = tuple(tuple(draw(st.lists(size, min_size=1, max_size=3))) for _ in range(levels))
    ratios = tuple(tuple(draw(st.lists(ratio, min_size=1, max_size=3))) for _ in range(levels))
    image_size = (draw(st.integers(1, 70)), draw(st.integers(1, 70)))
    feature_sizes = [(draw(st.integers(0, min(image_size[0], 9))),
                      draw(st.integers(0, min(image_size[1], 9)))) for _ in range(levels)]
    divides = all(h and w and image_size[0] % h == 0 and image_size[1] % w == 0
                  for h, w in feature_sizes)
    event("strides divide the image" if divides else "some stride does not divide")
    event(f"{levels} levels")
    return AnchorCase(sizes, ratios, image_size, feature_sizes)


@given(case=anchor_cases(), dtype=st.sampled_from(DTYPES))
def test_loop_and_numpy_tiers_agree_bit_for_bit(case, dtype):
    results = _each_tier(case.sizes, case.ratios, case.image_size, case.feature_sizes,
                         batch_size=2, dtype=dtype)
    assert set(results) == set(OFFERED)
    for tier, anchors in results.items():
        assert len(anchors) == 2
        for a in anchors:
            assert a.dtype == dtype
            np.testing.assert_array_equal(a, results["loop"][0], err_msg=tier)


# ----------------------------------------------------------------------------- oracle

def _torchvision_anchors(case: AnchorCase, batch_size: int, dtype) -> list[np.ndarray]:
    """torchvision's anchors: an ImageList of the image size and feature maps of the sizes."""
    torch = pytest.importorskip("torch")
    anchor_utils = pytest.importorskip("torchvision.models.detection.anchor_utils")
    image_list = pytest.importorskip("torchvision.models.detection.image_list")
    torch_dtype = {np.float32: torch.float32, np.float64: torch.float64}[dtype]
    height, width = case.image_size
    images = image_list.ImageList(torch.zeros(batch_size, 3, height, width, dtype=torch_dtype),
                                  [(height, width)] * batch_size)
    feature_maps = [torch.zeros(batch_size, 2, h, w, dtype=torch_dtype)
                    for h, w in case.feature_sizes]
    generator = anchor_utils.AnchorGenerator(case.sizes, case.ratios)
    return [a.numpy() for a in generator(images, feature_maps)]


ORACLE_CASES = {
    # the FPN defaults, strides 4 .. 64 that divide the image
    "fpn defaults": AnchorCase(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5,
                               (128, 192), [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]),
    # a non-square image whose strides do not divide: 37 // 10 = 3, 53 // 7 = 7, ...
    "non-dividing strides": AnchorCase(((16, 24), (40,)), ((0.5, 1.0), (1.0, 3.0, 0.3)),
                                       (37, 53), [(10, 7), (5, 4)]),
    # torchvision's own default: one level with three sizes and three ratios
    "torchvision default": AnchorCase(((128, 256, 512),), ((0.5, 1.0, 2.0),),
                                      (100, 150), [(13, 19)]),
    # exact halves (5 / 2, 7 / 2 with ratio 1) round to even; float32 ratios 0.7 and 0.3
    "halves": AnchorCase(((7, 5),), ((1.0, 0.7),), (9, 9), [(3, 2)]),
    # float sizes and awkward ratios, a 1 x 1 map and an empty one
    "float sizes": AnchorCase(((17.5, 45.25), (3,), (9,)), ((1 / 3, 7.0), (0.7,), (1.0,)),
                              (20, 11), [(1, 1), (20, 11), (0, 4)]),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(ORACLE_CASES))
def test_matches_torchvision(name, dtype):
    case = ORACLE_CASES[name]
    if name == "float sizes":
        # torchvision divides by the feature size without checking it: an empty map raises
        # ZeroDivisionError there, so it gets the case without the empty level
        case = AnchorCase(case.sizes[:2], case.ratios[:2], case.image_size,
                          case.feature_sizes[:2])
    expected = _torchvision_anchors(case, batch_size=2, dtype=dtype)
    results = _each_tier(case.sizes, case.ratios, case.image_size, case.feature_sizes,
                         batch_size=2, dtype=dtype)
    for tier, anchors in results.items():
        assert len(anchors) == len(expected)
        for ours, theirs in zip(anchors, expected):
            assert ours.dtype == theirs.dtype, tier
            np.testing.assert_array_equal(ours, theirs, err_msg=f"{name}, tier {tier!r}")


@given(case=anchor_cases(), dtype=st.sampled_from(DTYPES))
def test_matches_torchvision_on_drawn_cases(case, dtype):
    if any(0 in size for size in case.feature_sizes):
        event("an empty feature map: torchvision cannot take it, compared without it")
        keep = [level for level, size in enumerate(case.feature_sizes) if 0 not in size]
        if not keep:
            return
        case = AnchorCase(tuple(case.sizes[i] for i in keep),
                          tuple(case.ratios[i] for i in keep), case.image_size,
                          [case.feature_sizes[i] for i in keep])
    (expected,) = _torchvision_anchors(case, batch_size=1, dtype=dtype)
    (anchors,) = _generate(case.sizes, case.ratios, case.image_size, case.feature_sizes,
                           dtype=dtype, backend="numpy")
    np.testing.assert_array_equal(anchors, expected)


# ----------------------------------------------------------------------------- bad input

def _word(name: str) -> str:
    return rf"\b{name}\b"


@pytest.mark.parametrize("sizes, ratios, name", [
    ((), (1.0,), "sizes"),
    (((32,), ()), (1.0,), r"sizes\[1\]"),
    (((32, -4),), (1.0,), r"sizes\[0\]"),
    (((32, float("nan")),), (1.0,), r"sizes\[0\]"),
    (((32,),), ((0.0, 1.0),), r"aspect_ratios\[0\]"),
    (((32,),), ((float("inf"),),), r"aspect_ratios\[0\]"),
    (((32,),), "wide", "aspect_ratios"),
    (((32,), (64,)), ((1.0,), (1.0,), (2.0,)), "aspect_ratios"),
], ids=["no levels", "empty level", "negative size", "nan size", "zero ratio",
        "infinite ratio", "string ratios", "level counts differ"])
def test_bad_sizes_and_ratios(sizes, ratios, name):
    with pytest.raises(ValueError, match=name):
        AnchorGenerator(sizes, ratios)


@pytest.mark.parametrize("image_size, feature_sizes, name", [
    ((0, 8), [(1, 1)], "image_size"),
    ((8, 8), [(1, 1), (1, 1)], "feature_sizes"),
    ((8, 8), [(-1, 1)], r"feature_sizes\[0\]"),
    ((8, 8), [(2, 9)], r"feature_sizes\[0\]"),
], ids=["empty image", "too many levels", "negative feature size", "feature map > image"])
def test_bad_image_and_feature_sizes(image_size, feature_sizes, name):
    with pytest.raises(ValueError, match=name):
        AnchorGenerator(((8,),), ((1.0,),)).generate(image_size, feature_sizes)


def test_bad_batch_size_and_dtype():
    generator = AnchorGenerator(((8,),), ((1.0,),))
    with pytest.raises(ValueError, match=_word("batch_size")):
        generator.generate((8, 8), [(1, 1)], batch_size=-1)
    with pytest.raises(TypeError, match=_word("batch_size")):
        generator.generate((8, 8), [(1, 1)], batch_size=1.0)
    with pytest.raises(TypeError, match=_word("dtype")):
        generator.generate((8, 8), [(1, 1)], dtype=np.int64)
    with pytest.raises(TypeError, match=r"feature_maps\[0\]"):
        generator(np.zeros((1, 3, 8, 8)), [np.zeros((1, 2, 1, 1), dtype=np.int64)])


def test_backends():
    with pytest.raises(ValueError, match=_word("backend")):
        AnchorGenerator(backend="fortran")
    with pytest.raises(BackendUnavailableError, match="numba"):
        AnchorGenerator(((8,),), ((1.0,),), backend="numba").generate((8, 8), [(1, 1)])
