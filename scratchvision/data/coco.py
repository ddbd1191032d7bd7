"""COCO-format detection data on disk: write a dataset out, read a folder back, checked.

The layout written by :func:`save_coco` and read by :class:`CocoDetection`::

    directory/
      annotations.json     {"images": [...], "annotations": [...], "categories": [...]}
      images/000000.png    8-bit RGB PNG, one per entry of "images"
      images/000001.png    ...

with the COCO entries

* image: ``{"id", "file_name", "width", "height"}`` (``file_name`` relative to ``images/``);
* annotation: ``{"id", "image_id", "category_id", "bbox": [x, y, w, h], "area": w * h,
  "iscrowd": 0}``, ``bbox`` in pixels from the top-left corner of the image;
* category: ``{"id", "name", "supercategory"}``.

In memory an item is torchvision's detection pair ``(image, {"boxes", "labels"})``: the image
(3, H, W) float32 in [0, 1], boxes (K, 4) float32 ``[x1, y1, x2, y2] = [x, y, x + w, y + h]``
and labels (K,) int64 category ids. Images are stored with 8 bits per channel
(``round(255 * value)``), so a save/load round trip returns every pixel to within
0.5 / 255 of the original; boxes and labels come back exactly.

Ids: image ``i`` of a saved dataset has id ``i`` and file ``{i:06d}.png``; annotation ids
start at 1 because pycocotools' ``COCOeval`` uses 0 as "unmatched".

Writing is atomic per file: each file is written to a temporary file in its own folder and
then renamed over the target (``os.replace``), so a process killed mid-write leaves the old
file or the new one, never half of one. The images are written first and ``annotations.json``
last, so an annotations file never names an image that was not written.

Reading checks the whole folder when the dataset is built and raises
:class:`CocoFormatError`, whose message starts with the path of the file at fault and names
the entry and key: missing keys, malformed boxes (not 4 finite numbers, negative size, more
than ``BOX_TOLERANCE`` pixels outside the image), unknown or duplicate ids, and image files
that are missing, unreadable or of another size than the JSON says.
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .. import _checks
from .._files import atomic_write

__all__ = ["CocoDetection", "CocoFormatError", "coco_ground_truth", "save_coco",
           "BOX_TOLERANCE"]

#: how far (pixels) a box may reach outside its image before the file is refused: rounding
#: in other tools' exports puts edges a fraction of a pixel out
BOX_TOLERANCE = 1.0

_TOP_LEVEL_KEYS = ("images", "annotations", "categories")


class CocoFormatError(ValueError):
    """A COCO folder that cannot be read; the message starts with the path of the file."""

    def __init__(self, path, message: str):
        self.path = Path(path)
        super().__init__(f"{path}: {message}")


# ---------------------------------------------------------------------------- writing


def coco_ground_truth(dataset, categories=None) -> dict:
    """The COCO dict of a detection dataset, without writing any file (e.g. for evaluation).

    Args:
        dataset: a sequence of ``(image (3, H, W), {"boxes": (K, 4) xyxy, "labels": (K,)})``
            items (``len`` and integer indexing), e.g. a :class:`ShapesDataset`.
        categories: the COCO category dicts; by default ``dataset.categories`` if it has
            them, else one ``{"id": label, "name": str(label)}`` per label that occurs.

    Returns:
        ``{"images", "annotations", "categories"}`` as :func:`save_coco` writes it (image
        ``i`` has id ``i``, annotation ids start at 1). Generates every item once.
    """
    images, annotations = [], []
    for _, image_entry, entries in _entries(dataset):
        images.append(image_entry)
        annotations.extend(entries)
    return _assemble(dataset, images, annotations, categories)


def save_coco(dataset, directory, categories=None) -> Path:
    """Write ``dataset`` as a COCO folder (layout in the module docstring); return the path
    of ``annotations.json``.

    The images are quantised to 8 bits per channel (``round(255 * value)``, values clipped to
    [0, 1]); reading them back gives each pixel to within 0.5 / 255. Every file is written
    atomically, annotations last. Existing files of the same names are replaced; other files
    in ``directory`` are left alone. ``categories`` as in :func:`coco_ground_truth`.
    """
    directory = Path(directory)
    image_dir = directory / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image, image_entry, entries in _entries(dataset):
        pixels = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8).transpose(1, 2, 0)
        picture = Image.fromarray(np.ascontiguousarray(pixels), mode="RGB")
        atomic_write(image_dir / image_entry["file_name"],
                      lambda f, picture=picture: picture.save(f, format="PNG"), binary=True)
        images.append(image_entry)
        annotations.extend(entries)
    coco = _assemble(dataset, images, annotations, categories)
    path = directory / "annotations.json"
    atomic_write(path, lambda f: json.dump(coco, f), binary=False)
    return path


def _entries(dataset):
    """``(image, image entry, annotation entries)`` per item, annotation ids counted from 1."""
    next_id = 1
    for index in range(len(dataset)):
        image, target = dataset[index]
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"dataset[{index}] image must have shape (3, H, W), "
                             f"got {image.shape}")
        height, width = image.shape[1:]
        boxes = np.asarray(target["boxes"], dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(target["labels"]).reshape(-1)
        if len(labels) != len(boxes):
            raise ValueError(f"dataset[{index}] has {len(boxes)} boxes but {len(labels)} labels")
        entries = []
        for (x1, y1, x2, y2), label in zip(boxes.tolist(), labels.tolist()):
            w, h = x2 - x1, y2 - y1
            entries.append({"id": next_id, "image_id": index, "category_id": int(label),
                            "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0})
            next_id += 1
        yield image, {"id": index, "file_name": f"{index:06d}.png",
                      "width": int(width), "height": int(height)}, entries


def _assemble(dataset, images, annotations, categories) -> dict:
    if categories is None:
        categories = getattr(dataset, "categories", None)
    if categories is None:
        labels = sorted({a["category_id"] for a in annotations})
        categories = [{"id": label, "name": str(label), "supercategory": "none"}
                      for label in labels]
    categories = [dict(c) for c in categories]
    known = {c["id"] for c in categories}
    for a in annotations:
        if a["category_id"] not in known:
            raise ValueError(f"label {a['category_id']} of image {a['image_id']} is not among "
                             f"the category ids {sorted(known)}")
    return {"images": images, "annotations": annotations, "categories": categories}


# ---------------------------------------------------------------------------- reading


class CocoDetection:
    """A COCO-format folder as a detection dataset (checked when built).

    Args:
        directory: the folder; images are read from ``directory/images/<file_name>``.
        annotation_file: the JSON file, relative to ``directory`` (or absolute).

    ``dataset[i]`` returns ``(image, {"boxes": boxes, "labels": labels})`` for the ``i``-th
    entry of ``"images"``: the image as (3, H, W) float32 in [0, 1] (8-bit pixels / 255;
    grayscale, palette and RGBA files are converted to RGB, alpha dropped), boxes (K, 4)
    float32 xyxy pixels and labels (K,) int64 category ids, in the order of the annotations in
    the file. Crowd annotations (``"iscrowd": 1``) are checked but left out of the items, as
    torchvision's detection references do. ``images`` and ``categories`` hold the entries of
    the file, ``coco`` the whole parsed file.

    Raises:
        FileNotFoundError: no annotation file.
        CocoFormatError: anything wrong in the file or the images (the module docstring).
    """

    def __init__(self, directory, annotation_file: str = "annotations.json"):
        self.directory = Path(directory)
        self.annotation_path = self.directory / annotation_file
        self.image_dir = self.directory / "images"
        if not self.annotation_path.is_file():
            raise FileNotFoundError(f"{self.annotation_path}: no such annotation file")
        try:
            with open(self.annotation_path, encoding="utf-8") as f:
                self.coco = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CocoFormatError(self.annotation_path, f"not valid JSON: {error}") from None
        self.images, self.categories, self._targets = _parse(self.coco, self.annotation_path)
        for j, entry in enumerate(self.images):
            self._check_image_file(j, entry)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index) -> tuple[np.ndarray, dict]:
        index = _checks.dataset_index(index, len(self.images))
        entry = self.images[index]
        path = self.image_dir / entry["file_name"]
        try:
            with Image.open(path) as picture:
                pixels = np.asarray(picture.convert("RGB"), dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as error:
            raise CocoFormatError(path, f"cannot read the image: {error}") from None
        image = pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
        boxes, labels = self._targets[entry["id"]]
        return image, {"boxes": boxes.copy(), "labels": labels.copy()}

    def __iter__(self):
        for index in range(len(self)):
            yield self[index]

    def __repr__(self) -> str:
        return f"CocoDetection({str(self.directory)!r}, {len(self)} images)"

    def _check_image_file(self, j: int, entry: dict) -> None:
        path = self.image_dir / entry["file_name"]
        where = f"(images[{j}] 'file_name' in {self.annotation_path})"
        if not path.is_file():
            raise CocoFormatError(path, f"image file not found {where}")
        try:
            with Image.open(path) as picture:
                size = picture.size
        except (OSError, UnidentifiedImageError) as error:
            raise CocoFormatError(path, f"not a readable image {where}: {error}") from None
        if size != (entry["width"], entry["height"]):
            raise CocoFormatError(
                path, f"image is {size[0]}x{size[1]} (width x height) but images[{j}] in "
                f"{self.annotation_path} says 'width' {entry['width']}, "
                f"'height' {entry['height']}")


def _parse(coco, path: Path):
    """Check the parsed JSON and return ``(images, categories, {image id: (boxes, labels)})``."""
    if not isinstance(coco, dict):
        raise CocoFormatError(path, f"the top level must be a JSON object with keys "
                              f"{list(_TOP_LEVEL_KEYS)}, got {type(coco).__name__}")
    for key in _TOP_LEVEL_KEYS:
        if key not in coco:
            raise CocoFormatError(path, f"missing top-level key '{key}'")
        if not isinstance(coco[key], list):
            raise CocoFormatError(path, f"'{key}' must be a list, got {type(coco[key]).__name__}")

    categories = coco["categories"]
    category_ids = set()
    for j, c in enumerate(categories):
        where = f"categories[{j}]"
        _require_keys(c, ("id", "name"), where, path)
        cid = _integer(c["id"], f"{where} 'id'", path, minimum=1,
                       why="ids start at 1: label 0 is the background")
        if cid in category_ids:
            raise CocoFormatError(path, f"{where} 'id' {cid} is a duplicate")
        category_ids.add(cid)

    images = coco["images"]
    sizes = {}
    for j, entry in enumerate(images):
        where = f"images[{j}]"
        _require_keys(entry, ("id", "file_name", "width", "height"), where, path)
        iid = _integer(entry["id"], f"{where} 'id'", path)
        if iid in sizes:
            raise CocoFormatError(path, f"{where} 'id' {iid} is a duplicate")
        if not isinstance(entry["file_name"], str) or not entry["file_name"]:
            raise CocoFormatError(path, f"{where} 'file_name' must be a non-empty string, "
                                  f"got {entry['file_name']!r}")
        sizes[iid] = (_integer(entry["width"], f"{where} 'width'", path, minimum=1),
                      _integer(entry["height"], f"{where} 'height'", path, minimum=1))

    per_image = {iid: ([], []) for iid in sizes}
    for j, a in enumerate(coco["annotations"]):
        where = f"annotations[{j}]" + (f" (id {a['id']})" if isinstance(a, dict) and "id" in a
                                        else "")
        _require_keys(a, ("image_id", "category_id", "bbox"), where, path)
        if not _is_int(a["image_id"]) or a["image_id"] not in sizes:
            raise CocoFormatError(path, f"{where} 'image_id' {a['image_id']!r} is not the id "
                                  f"of any entry of 'images'")
        if not _is_int(a["category_id"]) or a["category_id"] not in category_ids:
            raise CocoFormatError(path, f"{where} 'category_id' {a['category_id']!r} is not "
                                  f"among the category ids {sorted(category_ids)}")
        box = _bbox(a["bbox"], sizes[a["image_id"]], where, path)
        if a.get("iscrowd", 0) not in (0, 1, False, True):
            raise CocoFormatError(path, f"{where} 'iscrowd' must be 0 or 1, got {a['iscrowd']!r}")
        if not a.get("iscrowd", 0):
            per_image[a["image_id"]][0].append(box)
            per_image[a["image_id"]][1].append(a["category_id"])
    targets = {iid: (np.array(boxes, dtype=np.float32).reshape(-1, 4),
                     np.array(labels, dtype=np.int64))
               for iid, (boxes, labels) in per_image.items()}
    return images, categories, targets


def _require_keys(entry, keys, where: str, path: Path) -> None:
    if not isinstance(entry, dict):
        raise CocoFormatError(path, f"{where} must be a JSON object, got {entry!r}")
    for key in keys:
        if key not in entry:
            raise CocoFormatError(path, f"{where} is missing the key '{key}'")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _integer(value, what: str, path: Path, *, minimum: int | None = None, why: str = "") -> int:
    if not _is_int(value):
        raise CocoFormatError(path, f"{what} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise CocoFormatError(path, f"{what} must be >= {minimum}"
                              + (f" ({why})" if why else "") + f", got {value!r}")
    return value


def _bbox(bbox, size: tuple[int, int], where: str, path: Path) -> list[float]:
    """Check a COCO ``[x, y, w, h]`` against its image ``(width, height)``; return xyxy."""
    if (not isinstance(bbox, list) or len(bbox) != 4
            or any(isinstance(v, bool) or not isinstance(v, numbers.Real)
                   or not math.isfinite(v) for v in bbox)):
        raise CocoFormatError(path, f"{where} 'bbox' must be 4 finite numbers [x, y, w, h], "
                              f"got {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    if w < 0 or h < 0:
        raise CocoFormatError(path, f"{where} 'bbox' {bbox!r} has a negative width or height")
    width, height = size
    t = BOX_TOLERANCE
    if x < -t or y < -t or x + w > width + t or y + h > height + t:
        raise CocoFormatError(path, f"{where} 'bbox' {bbox!r} reaches outside its "
                              f"{width}x{height} image (by more than {t:g} px)")
    return [x, y, x + w, y + h]
