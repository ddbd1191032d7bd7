"""``AnchorGenerator``: the reference boxes of an anchor-based detector, one set per level.

An anchor-based detector (Faster R-CNN's RPN, RetinaNet) predicts, at every location of every
feature map, a score and a box *correction* for each of ``A`` fixed reference boxes, the
anchors. Multi-scale anchors are the fourth way this library handles scale: instead of resizing
the image (``ImagePyramid``) or the features (``FeaturePyramidNetwork``), the *hypotheses* come
in several sizes. With an FPN, each level gets the sizes that match its stride (32 px anchors
on the stride-4 map, ..., 512 px on the stride-64 map), so every object is matched by an anchor
on the level whose features suit its size.

This is ``torchvision.models.detection.anchor_utils.AnchorGenerator``, the same numbers in the
same order. For a level with sizes ``s_1..s_S`` and aspect ratios ``a_1..a_R`` (a = h / w):

    (1)  h_r = sqrt(a_r),  w_r = 1 / h_r                      (h / w = a_r, area kept)
    (2)  w_{r,k} = w_r * s_k,  h_{r,k} = h_r * s_k
    (3)  base[r * S + k] = round((-w_{r,k}, -h_{r,k}, w_{r,k}, h_{r,k}) / 2)
                                                     (ratio-major: for each ratio, each size)
    (4)  stride = (H // h, W // w)      image (H, W), feature map (h, w); integer division
    (5)  anchor[(i * w + j) * A + a] = base[a] + (j * stride_x, i * stride_y,
                                                  j * stride_x, i * stride_y)
                                                     (location-major: each location, all A)

so ``A = R * S`` anchors per location, centred on the top-left corner of each stride cell
(torchvision does not add half a stride), as boxes ``(x1, y1, x2, y2)``. The levels are
concatenated, finest first, into one ``(sum_l h_l * w_l * A_l, 4)`` array per image.

Two details make the numbers torchvision's rather than merely close:

* ``round`` is round-half-to-even (``torch.round`` and ``np.round`` agree), and
* the base anchors (1)-(3) are computed in **float32**, whatever the output dtype, because
  torchvision builds them with ``generate_anchors``' default ``dtype=torch.float32`` and only
  casts them to the feature maps' dtype afterwards.

Where a half-width is *exactly* ``k + 0.5`` in real arithmetic but irrational steps lead to it
(size 7 with ratio ``(7/3)**2`` has ``w = 3``), the float32 result lands within one unit of
roundoff of the half and may round either way. Here every step is correctly rounded IEEE
float32 (``w / 2 = 1.4999999``, rounded to 1). torch's vectorised float32 ``sqrt`` need not be
correctly rounded (on an AVX-512 CPU it returned 2.3333333 for the correctly rounded
2.3333335, giving exactly 1.5 and so 2), so on such knife edges torchvision's answer depends
on the machine, and ours can differ from it by one pixel; everywhere else the numbers are
identical.

One deliberate difference: a feature map larger than the image (``h > H``) would get stride 0
from (4) and every anchor of the level at the origin; torchvision allows it, here it raises,
since it means the sizes were passed in the wrong order. An empty feature map (``h = 0``), on
which torchvision raises ``ZeroDivisionError``, just contributes no anchors.

Tiers (``backend=``): ``"loop"`` follows (1)-(5) one anchor at a time; ``"numpy"`` builds the
same arrays by broadcasting. ``"auto"`` picks numpy. Both are exact (integers in float), so
they agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import _checks
from .._dispatch import BACKENDS, resolve_backend
from ..nn.init import float_dtype

__all__ = ["AnchorGenerator", "DEFAULT_SIZES", "DEFAULT_ASPECT_RATIOS"]

#: one size per FPN level P2..P6, as torchvision's ``fasterrcnn_resnet50_fpn``
DEFAULT_SIZES = ((32,), (64,), (128,), (256,), (512,))
#: the aspect ratios (h / w) used on every level unless given
DEFAULT_ASPECT_RATIOS = (0.5, 1.0, 2.0)

OFFERED_TIERS = ("loop", "numpy")


# ----------------------------------------------------------------------------- loop tier

def _base_anchors_loop(sizes: tuple[float, ...], ratios: tuple[float, ...]) -> np.ndarray:
    """(1)-(3) one anchor at a time: (R * S, 4) float32 base anchors, ratio-major."""
    one, two = np.float32(1.0), np.float32(2.0)
    rows = []
    for ratio in ratios:
        h_ratio = np.sqrt(np.float32(ratio))                    # (1)
        w_ratio = one / h_ratio
        for size in sizes:
            w = w_ratio * np.float32(size)                      # (2)
            h = h_ratio * np.float32(size)
            # NOTE: round is a step function (no gradient flows through anchors anyway);
            # halves go to the even neighbour, as torch.round does.
            rows.append([np.round(-w / two), np.round(-h / two),
                         np.round(w / two), np.round(h / two)])  # (3)
    return np.array(rows, dtype=np.float32).reshape(len(rows), 4)


def _grid_anchors_loop(base: np.ndarray, grid_size: tuple[int, int],
                       stride: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    """(5) one anchor at a time: (h * w * A, 4) anchors of one level, location-major."""
    grid_h, grid_w = grid_size
    stride_y, stride_x = stride
    base = base.astype(dtype)
    num_base = base.shape[0]
    anchors = np.empty((grid_h * grid_w * num_base, 4), dtype=dtype)
    for i in range(grid_h):
        for j in range(grid_w):
            shift_x, shift_y = dtype.type(j * stride_x), dtype.type(i * stride_y)
            for a in range(num_base):
                x1, y1, x2, y2 = base[a]
                anchors[(i * grid_w + j) * num_base + a] = (
                    x1 + shift_x, y1 + shift_y, x2 + shift_x, y2 + shift_y)    # (5)
    return anchors


# ----------------------------------------------------------------------------- numpy tier

def _base_anchors_numpy(sizes: tuple[float, ...], ratios: tuple[float, ...]) -> np.ndarray:
    """(1)-(3) by broadcasting a (R, 1) column of ratios against a (1, S) row of sizes."""
    sizes_f = np.asarray(sizes, dtype=np.float32)
    h_ratios = np.sqrt(np.asarray(ratios, dtype=np.float32))
    w_ratios = np.float32(1.0) / h_ratios
    ws = (w_ratios[:, None] * sizes_f[None, :]).reshape(-1)  # (R, S) -> (R * S,) ratio-major
    hs = (h_ratios[:, None] * sizes_f[None, :]).reshape(-1)
    return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2.0))


def _grid_anchors_numpy(base: np.ndarray, grid_size: tuple[int, int],
                        stride: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    """(5) for all locations at once: a (h * w, 1, 4) grid of shifts plus (1, A, 4) bases."""
    grid_h, grid_w = grid_size
    stride_y, stride_x = stride
    shift_y, shift_x = np.meshgrid(np.arange(grid_h, dtype=np.int64) * stride_y,
                                   np.arange(grid_w, dtype=np.int64) * stride_x,
                                   indexing="ij")  # (h, w) each
    shifts = np.stack([shift_x, shift_y, shift_x, shift_y], axis=-1)  # (h, w, 4)
    shifts = shifts.reshape(-1, 1, 4).astype(dtype)  # (h, w, 4) -> (h * w, 1, 4)
    # (h * w, 1, 4) + (1, A, 4) -> (h * w, A, 4) -> (h * w * A, 4)
    return (shifts + base.astype(dtype)[None, :, :]).reshape(-1, 4)


_TIERS = {
    "loop": (_base_anchors_loop, _grid_anchors_loop),
    "numpy": (_base_anchors_numpy, _grid_anchors_numpy),
}


# ----------------------------------------------------------------------------- arguments

def _per_level(value, name: str) -> tuple:
    """``value`` as a non-empty tuple: nested (one entry per level) or flat (torchvision's
    shorthand, which the caller expands)."""
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or not value:
        raise ValueError(f"{name} must be a non-empty tuple (one entry per level), "
                         f"got {value!r}")
    return tuple(value)


def _is_nested(value: tuple) -> bool:
    return isinstance(value[0], Sequence) and not isinstance(value[0], (str, bytes))


class AnchorGenerator:
    """Anchors for a list of feature maps, as ``torchvision``'s ``AnchorGenerator``.

    Args:
        sizes: one tuple of anchor sizes (square-root areas, in image pixels) per level, e.g.
            ``((32,), (64,), (128,), (256,), (512,))``. A flat tuple ``(32, 64)`` means one
            size per level, as in torchvision.
        aspect_ratios: one tuple of ratios ``h / w`` per level; a flat tuple (default
            ``(0.5, 1.0, 2.0)``) is used on every level.
        backend: ``"auto"``, ``"loop"`` or ``"numpy"`` (the tiers this utility offers).

    Attributes:
        sizes, aspect_ratios: the normalised per-level tuples.
    """

    def __init__(self, sizes=DEFAULT_SIZES, aspect_ratios=DEFAULT_ASPECT_RATIOS,
                 backend: str = "auto"):
        sizes = _per_level(sizes, "sizes")
        if not _is_nested(sizes):
            sizes = tuple((s,) for s in sizes)
        aspect_ratios = _per_level(aspect_ratios, "aspect_ratios")
        if not _is_nested(aspect_ratios):
            aspect_ratios = (aspect_ratios,) * len(sizes)
        if len(sizes) != len(aspect_ratios):
            raise ValueError(f"sizes and aspect_ratios must have one entry per level, got "
                             f"{len(sizes)} and {len(aspect_ratios)} levels")
        self.sizes = tuple(_checks.positive_numbers(s, f"sizes[{level}]")
                           for level, s in enumerate(sizes))
        self.aspect_ratios = tuple(_checks.positive_numbers(r, f"aspect_ratios[{level}]")
                                   for level, r in enumerate(aspect_ratios))
        _checks.choice(backend, "backend", BACKENDS)
        self.backend = backend

    def __repr__(self) -> str:
        return (f"AnchorGenerator(sizes={self.sizes}, aspect_ratios={self.aspect_ratios}, "
                f"backend={self.backend!r})")

    @property
    def num_levels(self) -> int:
        return len(self.sizes)

    def num_anchors_per_location(self) -> list[int]:
        """``A_l = len(sizes[l]) * len(aspect_ratios[l])`` for each level ``l``."""
        return [len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios)]

    def _tier(self):
        return _TIERS[resolve_backend(self.backend, OFFERED_TIERS, what="AnchorGenerator")]

    def cell_anchors(self, dtype=np.float64) -> list[np.ndarray]:
        """The base anchors (3) of every level: a list of (A_l, 4) arrays ``(x1, y1, x2, y2)``
        centred on the origin, ratio-major (for each ratio, for each size)."""
        dtype = float_dtype(dtype)
        base_anchors, _ = self._tier()
        return [base_anchors(s, r).astype(dtype)
                for s, r in zip(self.sizes, self.aspect_ratios)]

    def _grid_args(self, image_size, feature_sizes):
        """Validate the sizes; return the feature sizes and the strides (4), per level."""
        image_h, image_w = _checks.int_pair(image_size, "image_size", minimum=1)
        if (not isinstance(feature_sizes, Sequence) or isinstance(feature_sizes, (str, bytes))
                or len(feature_sizes) != self.num_levels):
            raise ValueError(f"feature_sizes must hold one (h, w) per level ({self.num_levels} "
                             f"levels), got {feature_sizes!r}")
        grid_sizes, strides = [], []
        for level, size in enumerate(feature_sizes):
            grid_h, grid_w = _checks.int_pair(size, f"feature_sizes[{level}]", minimum=0)
            if grid_h > image_h or grid_w > image_w:
                raise ValueError(
                    f"feature_sizes[{level}] = {(grid_h, grid_w)} is larger than image_size "
                    f"{(image_h, image_w)}: the stride image_size // feature_size would be 0 "
                    f"(are the sizes (height, width)?)")
            grid_sizes.append((grid_h, grid_w))
            # (4); an empty axis has no anchors, so its stride is never used
            strides.append((image_h // grid_h if grid_h else 0,
                            image_w // grid_w if grid_w else 0))
        return grid_sizes, strides

    def strides(self, image_size, feature_sizes) -> list[tuple[int, int]]:
        """(4): ``(H // h_l, W // w_l)`` per level (0 along an empty feature map's empty axis).
        Arguments as for :meth:`grid_anchors`."""
        return self._grid_args(image_size, feature_sizes)[1]

    def grid_anchors(self, image_size, feature_sizes, dtype=np.float64) -> list[np.ndarray]:
        """The anchors of each level separately: a list of (h_l * w_l * A_l, 4) arrays.

        Args:
            image_size: ``(H, W)`` of the (padded) input batch.
            feature_sizes: one ``(h_l, w_l)`` per level, finest first.
            dtype: float32 or float64, the output's dtype (torchvision uses the feature maps').
        """
        dtype = float_dtype(dtype)
        grid_sizes, strides = self._grid_args(image_size, feature_sizes)
        base_anchors, grid_anchors = self._tier()
        return [grid_anchors(base_anchors(s, r), grid, stride, dtype)
                for s, r, grid, stride in zip(self.sizes, self.aspect_ratios, grid_sizes,
                                              strides)]

    def generate(self, image_size, feature_sizes, batch_size: int = 1,
                 dtype=np.float64) -> list[np.ndarray]:
        """The anchors of every image, as torchvision's ``forward`` returns them.

        Args:
            image_size: ``(H, W)`` of the (padded) input batch.
            feature_sizes: one ``(h_l, w_l)`` per level, finest first.
            batch_size: the number of images ``N``; every image gets the same anchors.
            dtype: float32 or float64 (default float64).

        Returns:
            A list of ``N`` arrays (each its own copy) of shape ``(sum_l h_l * w_l * A_l, 4)``,
            ``(x1, y1, x2, y2)`` in image pixels: level by level (finest first), within a level
            location by location (row-major over the feature map), within a location the
            ``A_l`` base anchors ratio-major.
        """
        batch_size = _checks._as_int(batch_size, "batch_size")
        if batch_size < 0:
            raise ValueError(f"batch_size must be >= 0, got {batch_size}")
        per_level = self.grid_anchors(image_size, feature_sizes, dtype)
        anchors = np.concatenate(per_level, axis=0)  # L x (h_l * w_l * A_l, 4) -> (total, 4)
        return [anchors.copy() for _ in range(batch_size)]

    def __call__(self, images, feature_maps) -> list[np.ndarray]:
        """torchvision's ``forward``: sizes from arrays. ``images`` (N, C, H, W) (only its
        shape is read); ``feature_maps`` a list of (N, C_l, h_l, w_l) float arrays, whose first
        one's dtype the anchors take."""
        images = np.asarray(images)
        if images.ndim != 4:
            raise ValueError(f"images must have 4 dimensions (N, C, H, W), got shape "
                             f"{images.shape}")
        if not isinstance(feature_maps, Sequence) or not feature_maps:
            raise ValueError(f"feature_maps must be a non-empty list of (N, C, h, w) arrays, "
                             f"got {type(feature_maps).__name__}")
        maps = [_checks.float_array(f, f"feature_maps[{level}]", ndim=4)
                for level, f in enumerate(feature_maps)]
        return self.generate(images.shape[-2:], [f.shape[-2:] for f in maps],
                             batch_size=images.shape[0], dtype=maps[0].dtype)
