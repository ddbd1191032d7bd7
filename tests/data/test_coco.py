"""COCO format: ``coco_ground_truth``'s dict, the ``save_coco`` -> ``CocoDetection`` round trip
(images to 1/255, boxes and labels exact), image modes, crowd annotations, every bad-file rule
(the error starts with the file's path and names the key), and atomic writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scratchvision.data import (
    BOX_TOLERANCE,
    CocoDetection,
    CocoFormatError,
    ShapesDataset,
    coco_ground_truth,
    save_coco,
)


@pytest.fixture(scope="module")
def shapes():
    return ShapesDataset(5, image_size=(64, 96), seed=2, max_side=48)


@pytest.fixture(scope="module")
def saved(shapes, tmp_path_factory):
    directory = tmp_path_factory.mktemp("coco")
    save_coco(shapes, directory)
    return directory


# ----------------------------------------------------------------------------- the dict


def test_ground_truth_dict(shapes):
    coco = coco_ground_truth(shapes)
    assert set(coco) == {"images", "annotations", "categories"}
    assert coco["categories"] == shapes.categories
    assert coco["images"] == [{"id": i, "file_name": f"{i:06d}.png", "width": 96, "height": 64}
                              for i in range(5)]
    ids = [a["id"] for a in coco["annotations"]]
    assert ids == list(range(1, len(ids) + 1))                 # pycocotools: 0 = unmatched
    for i, (_, target) in enumerate(shapes):
        mine = [a for a in coco["annotations"] if a["image_id"] == i]
        assert [a["category_id"] for a in mine] == target["labels"].tolist()
        for a, (x1, y1, x2, y2) in zip(mine, target["boxes"].tolist()):
            assert a["bbox"] == [x1, y1, x2 - x1, y2 - y1]
            assert a["area"] == (x2 - x1) * (y2 - y1) and a["iscrowd"] == 0
    json.dumps(coco)                                           # serialisable as it is


def test_ground_truth_of_a_plain_list_derives_categories():
    image = np.zeros((3, 4, 5), dtype=np.float32)
    items = [(image, {"boxes": np.array([[0, 0, 2, 2]], np.float32), "labels": np.array([7])}),
             (image, {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64)})]
    coco = coco_ground_truth(items)
    assert coco["categories"] == [{"id": 7, "name": "7", "supercategory": "none"}]
    assert len(coco["annotations"]) == 1 and coco["images"][1]["width"] == 5
    with pytest.raises(ValueError, match=r"label 7 of image 0 is not among the category ids \[1\]"):
        coco_ground_truth(items, categories=[{"id": 1, "name": "one"}])


# ----------------------------------------------------------------------------- round trip


def test_round_trip(shapes, saved):
    assert sorted(p.name for p in (saved / "images").iterdir()) == [
        f"{i:06d}.png" for i in range(5)]
    with Image.open(saved / "images" / "000000.png") as picture:
        assert picture.mode == "RGB" and picture.size == (96, 64)
    with open(saved / "annotations.json", encoding="utf-8") as f:
        assert json.load(f) == coco_ground_truth(shapes)
    loaded = CocoDetection(saved)
    assert len(loaded) == len(shapes) and loaded.categories == shapes.categories
    for (image, target), (original, expected) in zip(loaded, shapes):
        assert image.dtype == np.float32 and image.shape == original.shape
        assert np.abs(image - original).max() <= 1 / 255            # 8-bit quantisation
        assert np.array_equal(image * 255, np.round(image * 255))   # exactly k / 255
        assert target["boxes"].dtype == np.float32 and target["labels"].dtype == np.int64
        np.testing.assert_array_equal(target["boxes"], expected["boxes"])
        np.testing.assert_array_equal(target["labels"], expected["labels"])


def test_loaded_items_are_fresh_copies(saved):
    loaded = CocoDetection(saved)
    _, target = loaded[0]
    target["boxes"][:] = -1
    assert loaded[0][1]["boxes"].min() >= 0
    with pytest.raises(IndexError):
        loaded[-1]
    with pytest.raises(IndexError):
        loaded[len(loaded)]


# ----------------------------------------------------------------------------- a hand-made folder


def _write_folder(directory: Path, coco: dict | None = None, images=None) -> Path:
    """A valid two-image COCO folder (one image grayscale) unless told otherwise."""
    (directory / "images").mkdir(parents=True, exist_ok=True)
    if images is None:
        images = {"a.png": Image.new("RGB", (20, 10), (255, 0, 0)),
                  "b.png": Image.new("L", (8, 6), 128)}
    for name, picture in images.items():
        picture.save(directory / "images" / name)
    if coco is None:
        coco = _valid_coco()
    (directory / "annotations.json").write_text(json.dumps(coco), encoding="utf-8")
    return directory / "annotations.json"


def _valid_coco() -> dict:
    return {
        "images": [{"id": 10, "file_name": "a.png", "width": 20, "height": 10},
                   {"id": 11, "file_name": "b.png", "width": 8, "height": 6}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 2, "bbox": [1, 2, 3, 4], "area": 12,
             "iscrowd": 0},
            {"id": 2, "image_id": 11, "category_id": 1, "bbox": [0.5, 0, 7.5, 6]},
            {"id": 3, "image_id": 10, "category_id": 1, "bbox": [0, 0, 20, 10], "iscrowd": 1},
            {"id": 4, "image_id": 10, "category_id": 1, "bbox": [-0.5, 0, 21, 10.5]},
        ],
        "categories": [{"id": 1, "name": "cat", "supercategory": "animal"},
                       {"id": 2, "name": "dog", "supercategory": "animal"}],
    }


def test_reads_a_foreign_folder(tmp_path):
    _write_folder(tmp_path)
    ds = CocoDetection(tmp_path)
    assert len(ds) == 2 and [c["name"] for c in ds.categories] == ["cat", "dog"]
    image, target = ds[0]
    assert image.shape == (3, 10, 20)
    np.testing.assert_array_equal(image[:, 0, 0], [1.0, 0.0, 0.0])
    # the crowd annotation (id 3) is left out; the one 0.5 px outside is within tolerance
    np.testing.assert_array_equal(target["boxes"], [[1, 2, 4, 6], [-0.5, 0, 20.5, 10.5]])
    np.testing.assert_array_equal(target["labels"], [2, 1])
    image, target = ds[1]                                      # grayscale -> RGB
    assert image.shape == (3, 6, 8) and np.all(image == np.float32(128 / 255))
    np.testing.assert_array_equal(target["boxes"], [[0.5, 0, 8, 6]])


@pytest.mark.parametrize("mode, colour", [("RGBA", (10, 20, 30, 40)), ("P", 3), ("L", 200)])
def test_image_modes_become_rgb(tmp_path, mode, colour):
    picture = Image.new(mode, (20, 10), colour)
    images = {"a.png": picture, "b.png": Image.new("L", (8, 6), 1)}
    _write_folder(tmp_path, images=images)
    image, _ = CocoDetection(tmp_path)[0]
    expected = np.asarray(picture.convert("RGB"))[0, 0] / 255
    assert image.shape == (3, 10, 20)
    np.testing.assert_allclose(image[:, 0, 0], expected, atol=1e-7)


def test_annotation_file_name_and_missing_file(tmp_path):
    coco = _valid_coco()
    _write_folder(tmp_path, coco)
    (tmp_path / "annotations.json").rename(tmp_path / "train.json")
    assert len(CocoDetection(tmp_path, annotation_file="train.json")) == 2
    with pytest.raises(FileNotFoundError, match="annotations.json"):
        CocoDetection(tmp_path)


def _drop(key):
    return lambda c: c.pop(key)


def _set(path, value):
    """Set ``coco[path[0]][path[1]]...[path[-1]] = value``."""
    def edit(coco):
        target = coco
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value
    return edit


def _delete(path):
    def edit(coco):
        target = coco
        for step in path[:-1]:
            target = target[step]
        del target[path[-1]]
    return edit


BAD_JSON = [
    ("no images", _drop("images"), ["missing top-level key 'images'"]),
    ("no annotations", _drop("annotations"), ["missing top-level key 'annotations'"]),
    ("no categories", _drop("categories"), ["missing top-level key 'categories'"]),
    ("images not a list", _set(["images"], {}), ["'images' must be a list"]),
    ("no bbox", _delete(["annotations", 1, "bbox"]), ["annotations[1] (id 2)", "'bbox'"]),
    ("no image_id", _delete(["annotations", 0, "image_id"]), ["annotations[0]", "'image_id'"]),
    ("no category_id", _delete(["annotations", 3, "category_id"]),
     ["annotations[3]", "'category_id'"]),
    ("bbox of 3", _set(["annotations", 0, "bbox"], [1, 2, 3]),
     ["annotations[0]", "'bbox' must be 4 finite numbers"]),
    ("bbox of strings", _set(["annotations", 0, "bbox"], [1, 2, "3", 4]), ["'bbox' must be 4"]),
    ("bbox of bools", _set(["annotations", 0, "bbox"], [1, 2, True, 4]), ["'bbox' must be 4"]),
    ("bbox not a list", _set(["annotations", 0, "bbox"], 5), ["'bbox' must be 4"]),
    ("negative width", _set(["annotations", 0, "bbox"], [5, 2, -1, 4]),
     ["annotations[0]", "'bbox'", "negative width"]),
    ("negative height", _set(["annotations", 0, "bbox"], [5, 2, 1, -4]), ["negative"]),
    ("left of the image", _set(["annotations", 0, "bbox"], [-1.5, 0, 3, 3]),
     ["annotations[0]", "'bbox'", "outside its 20x10 image"]),
    ("below the image", _set(["annotations", 1, "bbox"], [0, 0, 8, 7.5]),
     ["annotations[1]", "outside its 8x6 image"]),
    ("unknown category", _set(["annotations", 0, "category_id"], 3),
     ["annotations[0]", "'category_id' 3", "[1, 2]"]),
    ("unknown image", _set(["annotations", 1, "image_id"], 12),
     ["annotations[1]", "'image_id' 12"]),
    ("image id as string", _set(["annotations", 1, "image_id"], "11"), ["'image_id' '11'"]),
    ("image without width", _delete(["images", 1, "width"]), ["images[1]", "'width'"]),
    ("image without file_name", _delete(["images", 0, "file_name"]), ["images[0]", "'file_name'"]),
    ("zero height", _set(["images", 0, "height"], 0), ["images[0] 'height' must be >= 1"]),
    ("duplicate image id", _set(["images", 1, "id"], 10), ["images[1] 'id' 10 is a duplicate"]),
    ("category without id", _delete(["categories", 0, "id"]), ["categories[0]", "'id'"]),
    ("category id 0", _set(["categories", 0, "id"], 0), ["categories[0] 'id' must be >= 1",
                                                          "background"]),
    ("duplicate category", _set(["categories", 1, "id"], 1), ["categories[1] 'id' 1"]),
    ("annotation not an object", _set(["annotations", 0], [1, 2]), ["annotations[0] must be"]),
    ("bad iscrowd", _set(["annotations", 0, "iscrowd"], 2), ["annotations[0]", "'iscrowd'"]),
]


@pytest.mark.parametrize("edit, fragments", [case[1:] for case in BAD_JSON],
                         ids=[case[0] for case in BAD_JSON])
def test_bad_annotation_file(tmp_path, edit, fragments):
    coco = _valid_coco()
    edit(coco)
    path = _write_folder(tmp_path, coco)
    with pytest.raises(CocoFormatError) as info:
        CocoDetection(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and info.value.path == path
    for fragment in fragments:
        assert fragment in message, message


def test_tolerance_is_one_pixel(tmp_path):
    assert BOX_TOLERANCE == 1.0
    coco = _valid_coco()
    coco["annotations"][0]["bbox"] = [-1, -1, 22, 12]                # exactly 1 px out
    _write_folder(tmp_path, coco)
    assert CocoDetection(tmp_path)[0][1]["boxes"][0].tolist() == [-1, -1, 21, 11]


@pytest.mark.parametrize("text, fragment", [
    ('{"images": [', "not valid JSON"),
    ("", "not valid JSON"),
    ("[1, 2]", "the top level must be a JSON object"),
    (b"\xff\xfe\x00{", "not valid JSON"),
])
def test_invalid_json(tmp_path, text, fragment):
    path = _write_folder(tmp_path)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(CocoFormatError, match=fragment) as info:
        CocoDetection(tmp_path)
    assert str(info.value).startswith(f"{path}: ")


def test_missing_image_file(tmp_path):
    _write_folder(tmp_path)
    (tmp_path / "images" / "b.png").unlink()
    with pytest.raises(CocoFormatError) as info:
        CocoDetection(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'images' / 'b.png'}: image file not found")
    assert "images[1] 'file_name'" in message and "annotations.json" in message


def test_image_file_that_is_not_an_image(tmp_path):
    _write_folder(tmp_path)
    (tmp_path / "images" / "a.png").write_text("not a picture")
    with pytest.raises(CocoFormatError) as info:
        CocoDetection(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'images' / 'a.png'}: not a readable image")
    assert "images[0] 'file_name'" in message


def test_image_file_broken_after_loading(tmp_path):
    """A file that goes bad after the check fails on access, naming the file."""
    _write_folder(tmp_path)
    ds = CocoDetection(tmp_path)
    path = tmp_path / "images" / "a.png"
    path.write_bytes(path.read_bytes()[:40])                   # header intact, data cut
    with pytest.raises(CocoFormatError, match="cannot read the image") as info:
        ds[0]
    assert str(info.value).startswith(f"{path}: ")


def test_image_size_disagrees_with_json(tmp_path):
    coco = _valid_coco()
    coco["images"][0]["width"] = 21
    _write_folder(tmp_path, coco)
    with pytest.raises(CocoFormatError) as info:
        CocoDetection(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'images' / 'a.png'}: image is 20x10")
    assert "'width' 21" in message and "'height' 10" in message


# ----------------------------------------------------------------------------- atomic writes


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.name.endswith(".tmp"))


def test_failed_annotation_write_leaves_the_previous_file(tmp_path, monkeypatch):
    small = ShapesDataset(2, image_size=32, max_side=16)
    path = save_coco(small, tmp_path)
    before = path.read_bytes()

    def dump_then_die(obj, f, **kwargs):
        f.write('{"images": [')                                # half of a file
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(json, "dump", dump_then_die)
    with pytest.raises(KeyboardInterrupt):
        save_coco(ShapesDataset(3, image_size=32, max_side=16, seed=1), tmp_path)
    assert path.read_bytes() == before and _leftovers(tmp_path) == []
    monkeypatch.undo()
    assert len(CocoDetection(tmp_path)) == 2                   # still the old, whole dataset


def test_failed_first_write_leaves_no_annotation_file(tmp_path, monkeypatch):
    def die(obj, f, **kwargs):
        f.write("{")
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", die)
    with pytest.raises(OSError, match="disk full"):
        save_coco(ShapesDataset(1, image_size=32, max_side=16), tmp_path)
    assert not (tmp_path / "annotations.json").exists() and _leftovers(tmp_path) == []


def test_failed_image_write_leaves_the_previous_image(tmp_path, monkeypatch):
    save_coco(ShapesDataset(1, image_size=32, max_side=16), tmp_path)
    image_path = tmp_path / "images" / "000000.png"
    before, annotations = image_path.read_bytes(), (tmp_path / "annotations.json").read_bytes()
    original_save = Image.Image.save

    def save_then_die(self, fp, *args, **kwargs):
        original_save(self, fp, *args, **kwargs)
        raise OSError("killed after the data")

    monkeypatch.setattr(Image.Image, "save", save_then_die)
    with pytest.raises(OSError, match="killed after the data"):
        save_coco(ShapesDataset(1, image_size=32, max_side=16, seed=5), tmp_path)
    assert image_path.read_bytes() == before and _leftovers(tmp_path) == []
    assert (tmp_path / "annotations.json").read_bytes() == annotations


def test_saving_again_replaces_files(tmp_path):
    save_coco(ShapesDataset(2, image_size=32, max_side=16, seed=0), tmp_path)
    other = ShapesDataset(2, image_size=32, max_side=16, seed=1)
    save_coco(other, tmp_path)
    loaded = CocoDetection(tmp_path)
    for (image, target), (original, expected) in zip(loaded, other):
        assert np.abs(image - original).max() <= 1 / 255
        np.testing.assert_array_equal(target["boxes"], expected["boxes"])
    assert (tmp_path / "annotations.json").stat().st_mode & 0o777 == 0o644


def test_saved_dict_is_not_shared(shapes):
    coco = coco_ground_truth(shapes)
    coco["categories"][0]["name"] = "changed"
    assert shapes.categories[0]["name"] == "square"
