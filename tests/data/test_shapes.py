"""``ShapesDataset``: the item form (torchvision's detection convention), reproducibility from
``(seed, index)`` alone, boxes exactly the extent of the visible pixels, the placement rules,
classes, COCO size buckets, colour contrast, clutter and noise, and bad arguments (generation
speed is a benchmark matter, not a test's).
"""

from __future__ import annotations

import numpy as np
import pytest

from scratchvision.data import CLASSES, ShapesDataset
from scratchvision.detection.boxes import box_iou

CLEAN = {"noise": 0.0, "clutter": 0.0}   # every pixel is background or one object's colour

SMALL, LARGE = 32 ** 2, 96 ** 2        # COCO's bucket edges (area)


def _areas(dataset) -> np.ndarray:
    boxes = np.concatenate([target["boxes"] for _, target in dataset])
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _assert_items_equal(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1]["boxes"], b[1]["boxes"])
    np.testing.assert_array_equal(a[1]["labels"], b[1]["labels"])


# ----------------------------------------------------------------------------- item form


@pytest.mark.parametrize("image_size", [256, (96, 160)])
def test_items_have_torchvision_detection_form(image_size):
    ds = ShapesDataset(20, image_size=image_size, max_side=64)
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    assert len(ds) == 20
    for image, target in ds:
        assert image.shape == (3, height, width) and image.dtype == np.float32
        assert image.flags.c_contiguous
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert set(target) == {"boxes", "labels"}
        boxes, labels = target["boxes"], target["labels"]
        assert boxes.dtype == np.float32 and labels.dtype == np.int64
        assert boxes.shape == (len(labels), 4) and 1 <= len(labels) <= 10
        assert set(labels.tolist()) <= {1, 2, 3}
        assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= width)
        assert np.all(boxes[:, 3] <= height)
        assert np.all(boxes[:, 2:] > boxes[:, :2])
        assert np.array_equal(boxes, np.round(boxes))           # pixel edges


def test_categories_are_coco_entries_with_ids_from_one():
    assert CLASSES == ("square", "disc", "triangle")
    ds = ShapesDataset(1)
    assert ds.categories == [{"id": 1, "name": "square", "supercategory": "shape"},
                             {"id": 2, "name": "disc", "supercategory": "shape"},
                             {"id": 3, "name": "triangle", "supercategory": "shape"}]
    ds.categories[0]["name"] = "changed"                         # a fresh list each time
    assert ds.categories[0]["name"] == "square"


def test_len_indexing_and_iteration():
    ds = ShapesDataset(3)
    assert len(ds) == 3 and len(ShapesDataset(0)) == 0 and list(ShapesDataset(0)) == []
    items = list(ds)
    assert len(items) == 3
    for i, item in enumerate(items):
        _assert_items_equal(item, ds[i])
    _assert_items_equal(ds[np.int64(2)], ds[2])
    for bad in (-1, 3, 100):
        with pytest.raises(IndexError, match=f"index {bad} is out of range"):
            ds[bad]
    for bad in (1.0, "0", slice(0, 2), True):
        with pytest.raises(TypeError, match="index must be an integer"):
            ds[bad]


# ----------------------------------------------------------------------------- reproducibility


def test_same_seed_same_items_different_seed_different_items():
    a, b, c = ShapesDataset(6, seed=7), ShapesDataset(6, seed=7), ShapesDataset(6, seed=8)
    for i in range(6):
        _assert_items_equal(a[i], b[i])
        assert not np.array_equal(a[i][0], c[i][0])
    assert not np.array_equal(a[0][0], a[1][0])


def test_item_depends_on_seed_and_index_only():
    """Access order, earlier accesses and the dataset's length change nothing."""
    forward = [ShapesDataset(8, seed=3)[i] for i in range(8)]
    ds = ShapesDataset(8, seed=3)
    backward = [ds[i] for i in reversed(range(8))][::-1]
    longer = ShapesDataset(1000, seed=3)
    for i in range(8):
        _assert_items_equal(forward[i], backward[i])
        _assert_items_equal(forward[i], ds[i])                   # second access
        _assert_items_equal(forward[i], longer[i])


def test_render_matches_getitem():
    ds = ShapesDataset(2, seed=1)
    sample = ds.render(1)
    _assert_items_equal((sample.image, sample.target()), ds[1])
    assert sample.instance_map.shape == (256, 256) and sample.instance_map.dtype == np.int32


# ----------------------------------------------------------------------------- boxes and masks


def _extent(mask: np.ndarray) -> list[float]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]


@pytest.mark.parametrize("options", [CLEAN, {}], ids=["clean", "default"])
def test_every_box_is_the_extent_of_its_visible_pixels(options):
    ds = ShapesDataset(30, seed=5, **options)
    for i in range(len(ds)):
        s = ds.render(i)
        assert s.instance_map.max() == len(s.labels)
        for k, box in enumerate(s.boxes):
            assert box.tolist() == _extent(s.instance_map == k + 1)


def test_clean_boxes_are_tight_on_the_image_itself():
    """Without noise and clutter an object is one flat colour: every edge row and column of
    its box holds pixels of that colour, and every pixel of its mask has it."""
    ds = ShapesDataset(30, seed=11, **CLEAN)
    for i in range(len(ds)):
        s = ds.render(i)
        for k, (x1, y1, x2, y2) in enumerate(s.boxes.astype(int)):
            mask = s.instance_map == k + 1
            colour = s.image[:, mask][:, 0]
            assert np.all(s.image[:, mask] == colour[:, None])
            is_object = np.all(s.image[:, y1:y2, x1:x2] == colour[:, None, None], axis=0)
            assert is_object[0].any() and is_object[-1].any()
            assert is_object[:, 0].any() and is_object[:, -1].any()


def test_discs_and_squares_fill_their_window_when_unoccluded():
    """A square or disc that nothing covers has a square box: its side is the drawn side."""
    ds = ShapesDataset(20, seed=2, max_hidden=0.0, max_iou=0.0)
    for _, target in ds:
        boxes = target["boxes"][target["labels"] != 3]
        np.testing.assert_array_equal(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


def test_no_overlap_when_the_rules_forbid_it():
    ds = ShapesDataset(30, seed=4, max_iou=0.0, max_hidden=0.0)
    for _, target in ds:
        iou = box_iou(target["boxes"], target["boxes"])
        np.fill_diagonal(iou, 0.0)
        assert np.all(iou == 0.0)


@pytest.mark.parametrize("max_hidden", [0.0, 0.5, 0.9, 1.0])
def test_later_objects_hide_at_most_max_hidden(max_hidden):
    ds = ShapesDataset(40, seed=8, max_hidden=max_hidden, max_iou=1.0)
    fractions = np.concatenate([ds.render(i).visible for i in range(len(ds))])
    assert np.all(fractions >= 1.0 - max_hidden) and np.all(fractions > 0)
    assert fractions.max() == 1.0
    if max_hidden > 0:
        assert fractions.min() < 1.0 - 0.5 * max_hidden        # the limit is approached


def test_visible_fraction_counts_the_visible_pixels():
    """A square's drawn area is its side squared: visible * side² = its pixels on the map."""
    ds = ShapesDataset(20, seed=12, max_iou=1.0)
    checked = 0
    for i in range(len(ds)):
        s = ds.render(i)
        for k in np.flatnonzero((s.labels == 1) & (s.visible == 1.0)):
            x1, y1, x2, y2 = s.boxes[k]
            assert np.sum(s.instance_map == k + 1) == (x2 - x1) * (y2 - y1)
            checked += 1
    assert checked > 10


def test_occluded_objects_keep_their_own_pixels():
    """Objects overlap (the default allows IoU <= 0.3), yet every label stays visible."""
    ds = ShapesDataset(60, seed=9)
    overlapping = 0
    for i in range(len(ds)):
        s = ds.render(i)
        iou = box_iou(s.boxes, s.boxes)
        np.fill_diagonal(iou, 0.0)
        overlapping += int((iou > 0).any())
        assert set(np.unique(s.instance_map)) == set(range(len(s.labels) + 1))
    assert overlapping > 10


# ----------------------------------------------------------------------------- distributions


def test_all_classes_present_and_object_counts_vary():
    ds = ShapesDataset(60, seed=0)
    labels = np.concatenate([t["labels"] for _, t in ds])
    counts = np.bincount(labels, minlength=4)
    assert counts[0] == 0 and np.all(counts[1:] > 0.2 * len(labels))
    per_image = {len(t["labels"]) for _, t in ds}
    assert min(per_image) <= 2 and max(per_image) >= 9


def test_size_buckets_are_well_populated():
    areas = _areas(ShapesDataset(200, seed=0))
    fractions = [np.mean(areas < SMALL), np.mean((areas >= SMALL) & (areas <= LARGE)),
                 np.mean(areas > LARGE)]
    assert min(fractions) >= 0.15, fractions


def test_log_uniform_sizes_stay_in_range_and_favour_small_objects():
    ds = ShapesDataset(100, seed=0, size_sampling="log-uniform", min_side=8, max_side=128)
    areas = _areas(ds)
    assert areas.max() <= 128 ** 2
    assert np.mean(areas > LARGE) < 0.15 < np.mean(areas < SMALL)


def test_fixed_side_and_count():
    ds = ShapesDataset(10, image_size=128, min_side=16, max_side=16, min_objects=3,
                       max_objects=3, max_iou=0.0, max_hidden=0.0)
    for _, target in ds:
        boxes = target["boxes"]
        assert len(boxes) == 3
        assert np.all(boxes[:, 2:] - boxes[:, :2] <= 16)
        assert np.all(boxes[:, 2:] - boxes[:, :2] >= 15)          # a triangle may lose a row


# ----------------------------------------------------------------------------- appearance


def test_objects_contrast_with_the_background_around_them():
    ds = ShapesDataset(40, seed=6, **CLEAN)
    distances = []
    for i in range(len(ds)):
        s = ds.render(i)
        background = s.instance_map == 0
        for k, (x1, y1, x2, y2) in enumerate(s.boxes.astype(int)):
            colour = s.image[:, s.instance_map == k + 1][:, 0]
            ring = np.zeros_like(background)
            ring[max(y1 - 2, 0):y2 + 2, max(x1 - 2, 0):x2 + 2] = True
            ring &= background
            if ring.any():
                around = s.image[:, ring].mean(axis=1)
                distances.append(np.linalg.norm(colour - around))
    distances = np.array(distances)
    assert np.mean(distances >= 0.25) > 0.95 and distances.min() > 0.1


def _laplacian(image: np.ndarray) -> np.ndarray:
    return np.abs(image[:, 1:-1, 2:] + image[:, 1:-1, :-2] + image[:, 2:, 1:-1]
                  + image[:, :-2, 1:-1] - 4 * image[:, 1:-1, 1:-1]).max(axis=0)


def test_clutter_marks_the_background_only_when_asked():
    for clutter, expect_marks in [(0.0, False), (20.0, True)]:
        ds = ShapesDataset(10, seed=1, noise=0.0, clutter=clutter)
        marks = 0
        for i in range(len(ds)):
            s = ds.render(i)
            inner = s.instance_map[1:-1, 1:-1] == 0
            for dy, dx in [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)]:   # away from objects
                inner &= np.roll(s.instance_map == 0, (dy, dx), axis=(0, 1))[1:-1, 1:-1]
            marks += int((_laplacian(s.image)[inner] > 0.05).sum())
        assert (marks > 100) == expect_marks, (clutter, marks)


@pytest.mark.parametrize("noise", [0.02, 0.06])
def test_noise_has_the_requested_standard_deviation(noise):
    ds = ShapesDataset(6, seed=3, noise=noise, clutter=0.0, max_objects=1, max_side=16)
    clean = ShapesDataset(6, seed=3, noise=0.0, clutter=0.0, max_objects=1, max_side=16)
    residuals = np.concatenate([(ds[i][0] - clean[i][0]).ravel() for i in range(6)])
    unclipped = residuals[np.abs(residuals) < 0.1]       # clipping at 0 and 1 shrinks the rest
    assert np.std(residuals) == pytest.approx(noise, rel=0.15)
    assert abs(np.mean(unclipped)) < 0.1 * noise


# ----------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("kwargs, error, message", [
    ({"num_images": -1}, ValueError, "num_images must be a non-negative integer"),
    ({"num_images": 2.0}, TypeError, "num_images must be an integer"),
    ({"seed": -3}, ValueError, "seed must be a non-negative integer"),
    ({"image_size": 0}, ValueError, "image_size must be positive"),
    ({"image_size": (64, 64, 3)}, ValueError, "image_size must be an int or a pair"),
    ({"min_objects": 0}, ValueError, "min_objects must be a positive integer"),
    ({"min_objects": 5, "max_objects": 4}, ValueError, "min_objects must be <= max_objects"),
    ({"min_side": 1}, ValueError, "min_side must be >= 2"),
    ({"min_side": 50, "max_side": 40}, ValueError, "min_side must be <= max_side"),
    ({"image_size": (100, 200)}, ValueError, "max_side must fit in the image, at most 100"),
    ({"size_sampling": "uniform"}, ValueError, "size_sampling must be one of"),
    ({"noise": -0.1}, ValueError, "noise must be in"),
    ({"noise": "0.1"}, TypeError, "noise must be a real number"),
    ({"clutter": float("nan")}, ValueError, "clutter must not be nan"),
    ({"max_iou": 1.5}, ValueError, "max_iou must be in"),
    ({"max_hidden": -0.5}, ValueError, "max_hidden must be in"),
    ({"max_tries": 0}, ValueError, "max_tries must be a positive integer"),
])
def test_bad_arguments_name_the_argument(kwargs, error, message):
    kwargs = {"num_images": 1, **kwargs}
    with pytest.raises(error, match=message.replace("(", r"\(")):
        ShapesDataset(**kwargs)
