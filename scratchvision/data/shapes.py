"""``ShapesDataset``: a reproducible synthetic detection dataset of squares, discs and triangles.

A detector needs data whose answer is known exactly. Each image here is drawn from nothing
but a seed and its index, and holds 1-10 objects of three classes whose sizes span all three
of COCO's size buckets, so that what a multi-scale model gains on small, medium and large
objects can be measured (COCO: *small* area < 32², *medium* 32²-96², *large* > 96²).

How one image is drawn (``render``), in this order:

1. **background**: a linear colour gradient between two nearby random colours, in a random
   direction;
2. **clutter**: ``Poisson(clutter)`` distractors that are not objects -- 1-pixel lines and
   blobs of 2-5 pixels, both smaller than any object, so they carry no box;
3. **objects**: the number ``K`` is uniform in ``[min_objects, max_objects]``, each class is
   uniform over :data:`CLASSES`, and each object has a side ``s`` (see *sizes* below); every
   shape fills an ``s x s`` window: an axis-aligned square, a disc of diameter ``s``, or a
   triangle with its base on one side of the window and its apex anywhere on the opposite one.
   The objects are placed largest first, each at the first of ``max_tries`` random positions
   whose window has IoU <= ``max_iou`` with every earlier window and that leaves at least
   ``1 - max_hidden`` of every earlier object's pixels visible; an object with no such
   position is left out (so a crowded image can hold fewer than drawn, never fewer than one).
   Its colour is the first of 16 random colours at RGB distance >= ``min_contrast`` from
   the background under it and from every object it touches (else the farthest one);
4. **noise**: i.i.d. Gaussian noise of standard deviation ``noise`` on every channel, then
   the image is clipped to [0, 1].

Masks are hard-edged (no anti-aliasing): a pixel belongs to a shape iff its centre
``(x + 0.5, y + 0.5)`` lies inside it. The **box** of an object is the tight bounding box of
its *visible* pixels (later objects may hide part of it, as COCO's boxes are of the visible
object), in torchvision's convention: ``[x1, y1, x2, y2]`` covers the pixels ``x1 <= x < x2``,
``y1 <= y < y2``, so ``x2 - x1`` is the width in pixels. A disc's or a square's box is its
whole ``s x s`` window; a triangle's may lose the top row, where the apex is thinner than a
pixel.

**Sizes.** With ``size_sampling="balanced"`` (the default) each object first draws one of the
COCO buckets that ``[min_side, max_side]`` reaches, uniformly, then its side log-uniformly
within the bucket (sides ``[min_side, 32)``, ``[32, 96)``, ``[96, max_side]``); with
``"log-uniform"`` the side is log-uniform over ``[min_side, max_side]``. Plain log-uniform
sides over 8-128 px put only ~10% of the objects in the large bucket (log(128/96) / log(16)),
and the large ones are the hardest to place, which is why "balanced" is the default.

**Reproducibility.** Item ``i`` is a pure function of ``(seed, i)``: it draws from
``np.random.default_rng([seed, i])`` only, so items can be generated in any order, in parallel
workers, or again later, and are identical every time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from .. import _checks
from ..detection.boxes import box_iou

__all__ = ["ShapesDataset", "ShapesSample", "CLASSES", "SIZE_SAMPLING"]

#: the object classes; the label of ``CLASSES[j]`` is ``j + 1`` (0 is the background, as in
#: torchvision's detection models)
CLASSES = ("square", "disc", "triangle")

#: how object sides are drawn (see the module docstring)
SIZE_SAMPLING = ("balanced", "log-uniform")

#: side boundaries of COCO's size buckets: area 32² and 96² for a square box
_BUCKET_EDGES = (32, 96)
#: colour candidates drawn per object
_COLOUR_CANDIDATES = 16


@dataclass(frozen=True)
class ShapesSample:
    """One rendered image with everything known about it.

    Attributes:
        image: (3, H, W) float32 in [0, 1].
        boxes: (K, 4) float32 ``[x1, y1, x2, y2]`` pixel boxes, in placement order (largest
            object first).
        labels: (K,) int64 class ids in 1..3 (``CLASSES[label - 1]``).
        instance_map: (H, W) int32; ``k + 1`` where object ``k`` is visible, 0 elsewhere
            (background and clutter). ``boxes[k]`` is the extent of ``instance_map == k + 1``.
        visible: (K,) float64, the fraction of each object's drawn pixels still visible (1 when
            nothing covers it; at least ``1 - max_hidden``).
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    instance_map: np.ndarray
    visible: np.ndarray

    def target(self) -> dict:
        """The torchvision detection target ``{"boxes": (K, 4), "labels": (K,)}``."""
        return {"boxes": self.boxes, "labels": self.labels}


class ShapesDataset:
    """Reproducible synthetic detection images: squares, discs and triangles on cluttered,
    noisy backgrounds (the recipe is in the module docstring).

    Args:
        num_images: ``len(dataset)``; may be 0.
        image_size: ``S`` for ``S x S`` images, or ``(H, W)``.
        seed: non-negative integer; item ``i`` depends on ``(seed, i)`` only.
        min_objects, max_objects: the number of objects drawn per image, uniformly in
            ``[min_objects, max_objects]`` (fewer are placed when the image gets too crowded,
            never fewer than one).
        min_side, max_side: object sides in pixels, ``2 <= min_side <= max_side <= min(H, W)``.
        size_sampling: ``"balanced"`` (each COCO size bucket equally likely, log-uniform
            within it) or ``"log-uniform"`` over ``[min_side, max_side]``.
        noise: standard deviation of the Gaussian pixel noise (0 for none).
        clutter: expected number of distractors (lines and small blobs) per image (0: none).
        max_iou: largest IoU allowed between the windows of two objects.
        max_hidden: largest fraction of an object's pixels that later objects may cover (one
            pixel always stays visible).
        min_contrast: wanted RGB distance between an object's colour and its surroundings.
        max_tries: random positions tried per object before it is left out.

    ``dataset[i]`` returns ``(image, {"boxes": boxes, "labels": labels})``: the image (3, H, W)
    float32 in [0, 1], boxes (K, 4) float32 xyxy pixels and labels (K,) int64, torchvision's
    detection convention. ``render(i)`` returns the :class:`ShapesSample` with the instance
    map as well. Negative indices raise ``IndexError`` like out-of-range ones.
    """

    def __init__(self, num_images: int, image_size=256, seed: int = 0, *,
                 min_objects: int = 1, max_objects: int = 10, min_side: int = 8,
                 max_side: int = 128, size_sampling: str = "balanced", noise: float = 0.03,
                 clutter: float = 8.0, max_iou: float = 0.3, max_hidden: float = 0.5,
                 min_contrast: float = 0.3, max_tries: int = 30):
        self.num_images = _checks.nonnegative_int(num_images, "num_images")
        self.image_size = _checks.int_pair(image_size, "image_size", minimum=1)
        self.seed = _checks.nonnegative_int(seed, "seed")
        self.min_objects = _checks.positive_int(min_objects, "min_objects")
        self.max_objects = _checks.positive_int(max_objects, "max_objects")
        _ordered("min_objects", self.min_objects, "max_objects", self.max_objects)
        self.min_side = _checks.positive_int(min_side, "min_side")
        self.max_side = _checks.positive_int(max_side, "max_side")
        if self.min_side < 2:
            raise ValueError(f"min_side must be >= 2 (a triangle needs 2 pixels), got {min_side!r}")
        _ordered("min_side", self.min_side, "max_side", self.max_side)
        if self.max_side > min(self.image_size):
            raise ValueError(f"max_side must fit in the image, at most {min(self.image_size)} "
                             f"for image_size {self.image_size} (H, W), got {max_side!r}")
        _checks.choice(size_sampling, "size_sampling", SIZE_SAMPLING)
        self.size_sampling = size_sampling
        self.noise = _checks.number_in_range(noise, "noise", 0.0, math.inf)
        self.clutter = _checks.number_in_range(clutter, "clutter", 0.0, 1000.0)
        self.max_iou = _checks.number_in_range(max_iou, "max_iou", 0.0, 1.0)
        self.max_hidden = _checks.number_in_range(max_hidden, "max_hidden", 0.0, 1.0)
        self.min_contrast = _checks.number_in_range(min_contrast, "min_contrast", 0.0, math.sqrt(3))
        self.max_tries = _checks.positive_int(max_tries, "max_tries")

    @property
    def categories(self) -> list[dict]:
        """The COCO ``categories`` entries: ``{"id": 1, "name": "square", ...}`` (a fresh list)."""
        return [{"id": j + 1, "name": name, "supercategory": "shape"}
                for j, name in enumerate(CLASSES)]

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index) -> tuple[np.ndarray, dict]:
        sample = self.render(index)
        return sample.image, sample.target()

    def __iter__(self):
        for index in range(self.num_images):
            yield self[index]

    def __repr__(self) -> str:
        return (f"ShapesDataset(num_images={self.num_images}, image_size={self.image_size}, "
                f"seed={self.seed})")

    def render(self, index) -> ShapesSample:
        """Draw item ``index`` (the steps of the module docstring) with its instance map."""
        index = _checks.dataset_index(index, self.num_images)
        rng = np.random.default_rng([self.seed, index])
        height, width = self.image_size
        canvas, background_at = _background(rng, height, width)
        _draw_clutter(rng, canvas, rng.poisson(self.clutter))
        instance_map, boxes, labels, visible = self._draw_objects(rng, canvas, background_at)
        if self.noise > 0:
            noise = rng.standard_normal(canvas.shape, dtype=np.float32)
            canvas += np.multiply(noise, np.float32(self.noise), out=noise)
            np.clip(canvas, 0.0, 1.0, out=canvas)
        return ShapesSample(canvas, boxes, labels, instance_map, visible)

    # ------------------------------------------------------------------ objects

    def _draw_sides(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """``count`` integer sides, largest first (see *Sizes* in the module docstring)."""
        lo, hi = self.min_side, self.max_side
        if self.size_sampling == "log-uniform":
            ranges = [(lo, hi)]
        else:
            edges = [lo, *(e for e in _BUCKET_EDGES if lo < e < hi), hi]
            ranges = list(pairwise(edges))
        bucket = rng.integers(len(ranges), size=count)
        bounds = np.log(np.array(ranges, dtype=np.float64))[bucket]
        sides = np.exp(rng.uniform(bounds[:, 0], bounds[:, 1]))
        # floor keeps each side inside its bucket (a side of 31.7 is small, 31 px)
        sides = np.clip(np.floor(sides), lo, hi).astype(np.int64)
        return np.sort(sides)[::-1]

    def _draw_objects(self, rng, canvas, background_at):
        height, width = self.image_size
        count = int(rng.integers(self.min_objects, self.max_objects + 1))
        sides = self._draw_sides(rng, count)
        classes = rng.integers(1, len(CLASSES) + 1, size=count)
        instance_map = np.zeros((height, width), dtype=np.int32)
        windows, labels, colours = [], [], []   # per placed object
        area, visible = [], []                  # its pixel count, drawn and still visible
        for side, label in zip(sides.tolist(), classes.tolist()):
            mask = _shape_mask(rng, label, side)
            corners = rng.integers(0, [width - side + 1, height - side + 1],
                                   size=(self.max_tries, 2))
            candidates = np.concatenate([corners, corners + side], axis=1).astype(np.float64)
            allowed = np.ones(self.max_tries, dtype=bool)
            if windows:
                allowed = box_iou(candidates, np.array(windows)).max(axis=1) <= self.max_iou
            for t in np.flatnonzero(allowed):
                x0, y0 = corners[t].tolist()
                owner = instance_map[y0:y0 + side, x0:x0 + side]
                covered = np.bincount(owner[mask], minlength=len(windows) + 1)[1:]
                left = np.asarray(visible, dtype=np.int64) - covered
                needed = np.maximum((1.0 - self.max_hidden) * np.asarray(area), 1.0)
                if np.any(left < needed):      # would hide too much of an earlier object
                    continue
                colour = self._colour(rng, candidates[t], background_at, windows, colours)
                canvas[:, y0:y0 + side, x0:x0 + side][:, mask] = colour[:, None]
                owner[mask] = len(windows) + 1
                visible = left.tolist() + [int(mask.sum())]
                area.append(visible[-1])
                windows.append(candidates[t].tolist())
                labels.append(label)
                colours.append(colour)
                break
        boxes = np.array([_extent(instance_map, k + 1, window)
                          for k, window in enumerate(windows)], dtype=np.float32).reshape(-1, 4)
        visible = np.asarray(visible, dtype=np.float64) / np.asarray(area, dtype=np.float64)
        return instance_map, boxes, np.array(labels, dtype=np.int64), visible

    def _colour(self, rng, window, background_at, windows, colours) -> np.ndarray:
        """The first random colour far enough (``min_contrast``) from the background at the
        window's centre and from every object whose window touches this one."""
        x1, y1, x2, y2 = window
        references = [background_at((x1 + x2) / 2, (y1 + y2) / 2)]
        references += [c for (a1, b1, a2, b2), c in zip(windows, colours)
                       if a1 <= x2 and x1 <= a2 and b1 <= y2 and y1 <= b2]
        candidates = rng.random((_COLOUR_CANDIDATES, 3), dtype=np.float32)
        distance = np.linalg.norm(candidates[:, None, :] - np.array(references)[None], axis=2)
        nearest = distance.min(axis=1)
        good = np.flatnonzero(nearest >= self.min_contrast)
        return candidates[good[0] if len(good) else int(np.argmax(nearest))]


def _ordered(name_lo: str, lo, name_hi: str, hi) -> None:
    if lo > hi:
        raise ValueError(f"{name_lo} must be <= {name_hi}, got {lo} and {hi}")


# ---------------------------------------------------------------------- drawing helpers


def _background(rng, height: int, width: int):
    """A linear gradient between two nearby random colours, and a function giving its colour
    at a point ``(x, y)``."""
    start = rng.uniform(0.1, 0.9, size=3)
    end = np.clip(start + rng.uniform(-0.25, 0.25, size=3), 0.0, 1.0)
    angle = rng.uniform(0, 2 * np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)]) / max(height, width)

    def position(x, y):   # 0 at one end of the gradient, 1 at the other
        return np.clip(0.5 + direction[0] * (x - width / 2) + direction[1] * (y - height / 2),
                       0.0, 1.0)

    def background_at(x: float, y: float) -> np.ndarray:
        return start + position(x, y) * (end - start)

    xs = np.arange(width, dtype=np.float32) + np.float32(0.5)
    ys = np.arange(height, dtype=np.float32)[:, None] + np.float32(0.5)
    t = position(xs, ys).astype(np.float32)                       # (H, W)
    canvas = (start.astype(np.float32)[:, None, None]
              + t * (end - start).astype(np.float32)[:, None, None])  # (3, H, W)
    return canvas, background_at


def _draw_clutter(rng, canvas: np.ndarray, count: int) -> None:
    """``count`` distractors, in place: half 1-pixel lines (10-60 px long), half blobs
    (discs of diameter 2-5 px, smaller than any object)."""
    _, height, width = canvas.shape
    for _ in range(count):
        colour = rng.random(3, dtype=np.float32)
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        if rng.random() < 0.5:
            length, angle = rng.uniform(10, 60), rng.uniform(0, 2 * np.pi)
            t = np.linspace(0.0, length, int(2 * length))
            xs = np.floor(x + t * np.cos(angle)).astype(np.int64)
            ys = np.floor(y + t * np.sin(angle)).astype(np.int64)
        else:
            radius = rng.uniform(1.0, 2.5)
            offsets = np.arange(-3, 4)
            dy, dx = np.meshgrid(offsets, offsets, indexing="ij")
            inside = dy ** 2 + dx ** 2 <= radius ** 2
            xs, ys = int(x) + dx[inside], int(y) + dy[inside]
        keep = (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
        canvas[:, ys[keep], xs[keep]] = colour[:, None]


def _shape_mask(rng, label: int, side: int) -> np.ndarray:
    """(side, side) bool mask of a shape filling its window; pixel centres decide."""
    centres = np.arange(side, dtype=np.float64) + 0.5
    if CLASSES[label - 1] == "square":
        return np.ones((side, side), dtype=bool)
    if CLASSES[label - 1] == "disc":
        c = centres - side / 2
        return c[:, None] ** 2 + c[None, :] ** 2 <= (side / 2) ** 2
    # triangle: base along the bottom edge, apex at (apex * side, 0) on the top edge; at
    # height y it spans [apex * side * (1 - y/side), apex * side + (1 - apex) * y]; then
    # turned by a random multiple of 90 degrees so the apex can point any of four ways
    apex, turns = rng.random(), int(rng.integers(4))
    y, x = centres[:, None], centres[None, :]
    left = apex * (side - y)
    right = apex * side + (1.0 - apex) * y
    return np.ascontiguousarray(np.rot90((x >= left) & (x <= right), turns))


def _extent(instance_map: np.ndarray, value: int, window) -> list[float]:
    """Tight xyxy box of the pixels ``instance_map == value`` inside ``window`` (which holds
    all of them: an object only ever loses pixels to later ones)."""
    x1, y1, x2, y2 = (int(v) for v in window)
    mine = instance_map[y1:y2, x1:x2] == value
    rows, cols = np.flatnonzero(mine.any(axis=1)), np.flatnonzero(mine.any(axis=0))
    return [x1 + cols[0], y1 + rows[0], x1 + cols[-1] + 1, y1 + rows[-1] + 1]
