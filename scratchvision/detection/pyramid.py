"""``ImagePyramid``: run a model on several resized copies of the image and fuse what it says.

The oldest way to make a fixed model see objects of every size is to change the size of the
*image*: at scale ``s`` an object of ``d`` pixels covers ``s * d`` pixels, so a detector tuned
to objects of about 64 pixels finds 32-pixel ones in the 2x copy and 128-pixel ones in the
0.5x copy. The pyramid

1. resizes the (N, C, H, W) images to ``(round(H * s), round(W * s))`` for each scale ``s``
   (at least 1 pixel; Python's ``round``, halves to even) with
   :func:`scratchvision.ops.bilinear.resize`,
2. runs the model (any callable) on each copy,
3. maps each scale's predictions back to the original ``(H, W)`` frame, and
4. fuses them: dense maps (N, K, h, w) are resized to (H, W) and averaged (``"mean"``) or
   maximised (``"max"``); boxes are scaled by ``(W / w_s, H / h_s)`` per axis (as
   torchvision's ``transform.resize_boxes``), concatenated, and either filtered by
   per-class NMS (``"nms"``) or merged by score-weighted box fusion (``"weighted"``).

**What it costs.** A convolutional model's cost is proportional to the number of pixels it
sees, so the pyramid costs ``sum_s s^2`` times the model at scale 1: ``0.25 + 1 + 2.25 = 3.5``
times for scales (0.5, 1, 1.5), and the largest scale dominates (2.25 of the 3.5). Memory
peaks with the largest copy (``s_max^2`` times that of scale 1). The resizes and the fusion are
cheap by comparison (a few operations per pixel). :meth:`ImagePyramid.relative_cost` gives the
number for given scales and image size.

**What it buys.** Scale coverage without retraining or changing the model: any detector or
segmenter, even one trained at a single scale, sees every object near the size it was trained
on in some copy; averaging several views also smooths a dense prediction (test-time
augmentation). It does not make the model share work between scales: a feature pyramid (FPN)
gets multi-scale features from *one* pass of the backbone plus its own layers (about 1.2x
to 1.7x the backbone's cost, without or with the finest level P2; docs/strategies/fpn.md),
which is why modern detectors train with FPNs and keep image pyramids for test-time boosts.

**Training through it.** Dense fusion is differentiable: :func:`fuse_dense_backward` gives the
gradient of the fused map with respect to every scale's prediction (the transposed resize of
the fused gradient, divided by the number of scales for ``"mean"``, routed to the winning scale
for ``"max"``), and :meth:`ImagePyramid.backward_dense` carries it through a ``Module`` model
and the input resizes back to the image. Box fusion is not: NMS and clustering are discrete
choices (train the detector per scale instead).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from .. import _checks
from .._dispatch import BACKENDS
from ..ops import bilinear
from .boxes import box_array, box_iou
from .nms import batched_nms

__all__ = ["ImagePyramid", "Detections", "scaled_size", "fuse_dense", "fuse_dense_backward",
           "rescale_boxes", "fuse_boxes", "box_clusters", "weighted_box_fusion",
           "DENSE_FUSIONS", "BOX_FUSIONS"]

DENSE_FUSIONS = ("mean", "max")
BOX_FUSIONS = ("nms", "weighted")


class Detections(NamedTuple):
    """The detections of one image: ``boxes`` (k, 4) as ``(x1, y1, x2, y2)`` pixels,
    ``scores`` (k,) and ``labels`` (k,) int64 class ids."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


# ----------------------------------------------------------------------------- sizes

def scaled_size(image_size, scale: float) -> tuple[int, int]:
    """``(max(1, round(H * s)), max(1, round(W * s)))``: the size of the copy at ``scale``."""
    height, width = _checks.int_pair(image_size, "image_size", minimum=1)
    (scale,) = _checks.positive_numbers((scale,), "scale")
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resize_to(x: np.ndarray, size: tuple[int, int], align_corners: bool,
               backend: str) -> np.ndarray:
    """``bilinear.resize``, skipped when ``x`` already has ``size`` (resizing to the same size
    is the identity, exactly)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return bilinear.resize(x, size, align_corners=align_corners, backend=backend)


def _resize_to_backward(gy: np.ndarray, x: np.ndarray, size: tuple[int, int],
                        align_corners: bool, backend: str) -> np.ndarray:
    """The vector-Jacobian product of :func:`_resize_to` (the identity when skipped)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return gy.astype(np.result_type(x, gy), copy=False)
    return bilinear.resize_backward(gy, x, size, align_corners=align_corners,
                                    backend=backend).grad_input


# ----------------------------------------------------------------------------- dense fusion

def _dense_maps(maps) -> list[np.ndarray]:
    """Validate the per-scale predictions: a non-empty list of (N, K, h_s, w_s) float arrays
    with the same N and K."""
    if not isinstance(maps, Sequence) or not maps:
        raise ValueError(f"maps must be a non-empty list of (N, K, h, w) arrays, one per "
                         f"scale, got {type(maps).__name__}")
    maps = [_checks.float_array(m, f"maps[{i}]", ndim=4) for i, m in enumerate(maps)]
    for i, m in enumerate(maps):
        if m.shape[:2] != maps[0].shape[:2]:
            raise ValueError(f"maps[{i}] must have the batch size and channels (N, K) = "
                             f"{maps[0].shape[:2]} of maps[0], got shape {m.shape}")
        _checks.nonempty_spatial(m, f"maps[{i}]")
    return maps


def _fusion_args(maps, size, fusion, align_corners, backend):
    """Validate the arguments shared by :func:`fuse_dense` and its backward (all of them, even
    when no map needs resizing)."""
    maps = _dense_maps(maps)
    size = _checks.int_pair(size, "size", minimum=1)
    _checks.choice(fusion, "fusion", DENSE_FUSIONS)
    _checks.choice(backend, "backend", BACKENDS)
    return maps, size, _checks.boolean(align_corners, "align_corners")


def fuse_dense(maps, size, fusion: str = "mean", align_corners: bool = False,
               backend: str = "auto") -> np.ndarray:
    """Fuse dense predictions made at several scales into one map at ``size``.

    Args:
        maps: list of S arrays (N, K, h_s, w_s), one per scale (any sizes; the same N and K).
        size: ``(H, W)`` of the common frame, usually the original image's.
        fusion: ``"mean"`` (average of the resized maps) or ``"max"`` (elementwise maximum).
        align_corners: passed to :func:`scratchvision.ops.bilinear.resize`.
        backend: the resize's tier.

    Returns:
        (N, K, H, W) array in the maps' common float dtype:
        ``mean_s resize(maps[s], size)`` or ``max_s resize(maps[s], size)``.
    """
    maps, size, align_corners = _fusion_args(maps, size, fusion, align_corners, backend)
    dtype = np.result_type(*maps)
    resized = [_resize_to(m, size, align_corners, backend).astype(dtype, copy=False)
               for m in maps]  # S x (N, K, h_s, w_s) -> S x (N, K, H, W)
    if fusion == "max":
        return np.max(np.stack(resized), axis=0)  # (S, N, K, H, W) -> (N, K, H, W)
    total = resized[0].copy()
    for r in resized[1:]:
        total += r
    return total / dtype.type(len(resized))


def fuse_dense_backward(grad, maps, size, fusion: str = "mean", align_corners: bool = False,
                        backend: str = "auto") -> list[np.ndarray]:
    """Vector-Jacobian product of :func:`fuse_dense` with respect to every scale's map.

    Args:
        grad: (N, K, H, W) gradient of the loss with respect to the fused map.
        maps, size, fusion, align_corners, backend: as for :func:`fuse_dense` (``maps`` only
            matter for ``"max"``, which recomputes which scale won each output).

    Returns:
        list of S arrays (N, K, h_s, w_s): ``resize_backward(grad / S)`` for ``"mean"``;
        for ``"max"``, ``resize_backward(grad where scale s won, else 0)``.
    """
    maps, size, align_corners = _fusion_args(maps, size, fusion, align_corners, backend)
    grad = _checks.float_array(grad, "grad", ndim=4)
    _checks.shape_equals(grad, "grad", maps[0].shape[:2] + size, "the shape of the fused map")
    dtype = np.result_type(grad, *maps)
    grad = grad.astype(dtype, copy=False)
    if fusion == "mean":
        per_scale = [grad / dtype.type(len(maps)) for _ in maps]  # separate arrays
    else:
        resized = np.stack([_resize_to(m, size, align_corners, backend) for m in maps])
        # NOTE: max is not differentiable where two scales tie; the whole gradient goes to the
        # first of them in the order of `maps` (np.argmax's choice), as torch.max(dim) does.
        winner = np.argmax(resized, axis=0)  # (S, N, K, H, W) -> (N, K, H, W)
        per_scale = [np.where(winner == s, grad, dtype.type(0)) for s in range(len(maps))]
    return [_resize_to_backward(g, m, size, align_corners, backend).astype(dtype, copy=False)
            for g, m in zip(per_scale, maps)]


# ----------------------------------------------------------------------------- box fusion

def _detections(value, where: str = "") -> Detections:
    """Validate one image's detections: a (boxes, scores, labels) triple or a mapping with
    those keys (torchvision's detection output); integer boxes become float64. ``where``
    (e.g. ``" (scale 1)"``) is appended to the argument names in messages."""
    if isinstance(value, Mapping):
        missing = [k for k in Detections._fields if k not in value]
        if missing:
            raise ValueError(f"detections{where} must have the keys {Detections._fields}, "
                             f"missing {missing}")
        value = tuple(value[k] for k in Detections._fields)
    if not isinstance(value, Sequence) or len(value) != 3:
        raise ValueError(f"detections{where} must be (boxes, scores, labels), got "
                         f"{type(value).__name__}")
    boxes = box_array(value[0], f"boxes{where}")
    scores = _checks.float_array(value[1], f"scores{where}", ndim=1)
    labels = _checks.index_array(value[2], f"labels{where}", ndim=1)
    for name, other in (("scores", scores), ("labels", labels)):
        _checks.same_size(f"boxes{where}", boxes.shape[0], f"{name}{where}", other.shape[0],
                          "number of boxes (dim 0)")
    if np.isnan(scores).any():
        raise ValueError(f"scores{where} must not contain NaN (a NaN score has no rank)")
    return Detections(boxes, scores, labels)


def rescale_boxes(boxes, from_size, to_size) -> np.ndarray:
    """Boxes predicted in a ``from_size = (h, w)`` image, in the ``to_size = (H, W)`` frame.

    Args:
        boxes: (k, 4) as ``(x1, y1, x2, y2)``; integer boxes are upcast to float64.
        from_size, to_size: ``(height, width)`` of the two frames.

    Returns:
        (k, 4) new array ``boxes * (W / w, H / h, W / w, H / h)``: torchvision's
        ``resize_boxes``, which treats coordinates as continuous (the image spans [0, W]).
    """
    boxes = box_array(boxes, "boxes")
    from_h, from_w = _checks.int_pair(from_size, "from_size", minimum=1)
    to_h, to_w = _checks.int_pair(to_size, "to_size", minimum=1)
    ratio_x, ratio_y = to_w / from_w, to_h / from_h
    factors = np.array([ratio_x, ratio_y, ratio_x, ratio_y], dtype=boxes.dtype)
    return boxes * factors  # (k, 4) * (4,) -> (k, 4)


def box_clusters(boxes, scores, labels, iou_threshold: float) -> list[np.ndarray]:
    """Greedy clustering: the clusters that NMS would form, without throwing boxes away.

    Walk the boxes by decreasing score (ties: lower index first). A box not yet in a cluster
    starts one (it is the cluster's *seed*) and takes every box of its class not yet in a
    cluster whose IoU with the seed is > ``iou_threshold`` (strictly, as NMS). The seeds are
    therefore exactly the boxes ``batched_nms(boxes, scores, labels, iou_threshold)`` keeps, in
    the same order, and each cluster holds the boxes its seed suppresses.

    Args:
        boxes: (k, 4) ``(x1, y1, x2, y2)``; scores: (k,), no NaN; labels: (k,) integers.
        iou_threshold: a real number.

    Returns:
        list of int64 index arrays, one per cluster, seed first, the rest by decreasing score;
        the clusters in the order of their seeds.
    """
    boxes, scores, labels = _detections((boxes, scores, labels))
    threshold = _checks.real_number(iou_threshold, "iou_threshold")
    order = np.argsort(-scores, kind="stable")  # decreasing score, ties: lower index first
    free = np.ones(order.size, dtype=bool)  # per position in `order`: not yet in a cluster
    clusters = []
    for position, seed in enumerate(order):
        if not free[position]:
            continue
        candidates = np.flatnonzero(free & (labels[order] == labels[seed]))
        iou = box_iou(boxes[seed][None, :], boxes[order[candidates]])[0]  # (1, c) -> (c,)
        # NOTE: strictly greater, as NMS: a box at exactly the threshold starts its own
        # cluster; a NaN IoU (two degenerate boxes) never joins. The seed always joins its own
        # cluster, even when its IoU with itself is NaN (zero area).
        members = candidates[(iou > threshold) | (candidates == position)]
        free[members] = False
        clusters.append(order[members])
    return clusters


def weighted_box_fusion(boxes, scores, labels, iou_threshold: float = 0.5) -> Detections:
    """Score-weighted box fusion: one box per :func:`box_clusters` cluster.

    For a cluster ``c`` with boxes ``b_i`` and scores ``p_i >= 0``:

        box = sum_i p_i b_i / sum_i p_i,    score = mean_i p_i,    label = the cluster's.

    Where NMS keeps the seed box and discards the rest, this averages the cluster's boxes, each
    counting by its confidence: several scales that roughly agree give a box better placed than
    any one of them. The score is the plain mean (a choice: Solovyev et al.'s WBF multiplies it
    by ``min(n, S) / S`` to penalise boxes that only some of S models found; without that
    factor a single-scale "pyramid" returns its detections unchanged). Clustering against the
    seed rather than the running average (as WBF does) makes the clusters NMS's, independent of
    the merge order. A cluster whose scores are all 0 gets the plain mean box.

    Args:
        boxes: (k, 4) ``(x1, y1, x2, y2)``; scores: (k,) non-negative, no NaN; labels: (k,).
        iou_threshold: boxes with IoU > iou_threshold with a seed join its cluster.

    Returns:
        :class:`Detections` with one box per cluster, by decreasing fused score (ties: in seed
        order); boxes and scores keep their dtypes (float64 for integer boxes).
    """
    boxes, scores, labels = _detections((boxes, scores, labels))
    if (scores < 0).any():
        raise ValueError("scores must be non-negative for score-weighted fusion (they are the "
                         f"weights), got a minimum of {scores.min()}")
    clusters = box_clusters(boxes, scores, labels, iou_threshold)
    fused_boxes = np.empty((len(clusters), 4), dtype=boxes.dtype)
    fused_scores = np.empty(len(clusters), dtype=scores.dtype)
    for k, members in enumerate(clusters):
        weights = scores[members].astype(np.float64)
        total = weights.sum()
        # normalise first: a one-box cluster then gets weight p / p = 1 and its box exactly
        weights = weights / total if total > 0 else np.full(members.size, 1.0 / members.size)
        fused_boxes[k] = (weights[:, None] * boxes[members]).sum(axis=0)  # (m, 4) -> (4,)
        fused_scores[k] = scores[members].mean()
    fused_labels = labels[[members[0] for members in clusters]].astype(np.int64)
    order = np.argsort(-fused_scores, kind="stable")
    return Detections(fused_boxes[order], fused_scores[order], fused_labels[order])


def fuse_boxes(detections, from_sizes, to_size, fusion: str = "nms",
               iou_threshold: float = 0.5, backend: str = "auto") -> Detections:
    """Map one image's detections from every scale to ``to_size`` and fuse them.

    Args:
        detections: list of S per-scale detections, each ``(boxes (k_s, 4), scores (k_s,),
            labels (k_s,))`` (or a mapping with those keys), boxes in that scale's pixels.
        from_sizes: list of S ``(h_s, w_s)``, the size of the image each scale saw.
        to_size: ``(H, W)`` of the original image.
        fusion: ``"nms"`` (per-class NMS, ``batched_nms``) or ``"weighted"``
            (:func:`weighted_box_fusion`).
        iou_threshold: the IoU above which boxes of one class are duplicates.
        backend: the NMS tier (``"auto"``, ``"loop"``, ``"numpy"``, ``"numba"``).

    Returns:
        :class:`Detections` in the ``to_size`` frame, by decreasing score.
    """
    _checks.choice(fusion, "fusion", BOX_FUSIONS)
    if not isinstance(detections, Sequence) or not detections:
        raise ValueError("detections must be a non-empty list, one entry per scale")
    if not isinstance(from_sizes, Sequence) or len(from_sizes) != len(detections):
        raise ValueError(f"from_sizes must hold one (h, w) per scale ({len(detections)}), got "
                         f"{from_sizes!r}")
    per_scale = [_detections(d, f" (scale {s})") for s, d in enumerate(detections)]
    boxes = np.concatenate([rescale_boxes(d.boxes, size, to_size)
                            for d, size in zip(per_scale, from_sizes)])  # (sum_s k_s, 4)
    scores = np.concatenate([d.scores for d in per_scale])
    labels = np.concatenate([d.labels for d in per_scale])
    if fusion == "weighted":
        return weighted_box_fusion(boxes, scores, labels, iou_threshold)
    keep = batched_nms(boxes, scores, labels, iou_threshold, backend=backend)
    return Detections(boxes[keep], scores[keep], labels[keep])


# ----------------------------------------------------------------------------- the pyramid

class ImagePyramid:
    """Run a model at several scales of the input and fuse its predictions (module docstring).

    Args:
        scales: the scale factors, e.g. ``(0.5, 1.0, 1.5)``; finite and positive.
        align_corners: used by every resize (images down/up, dense maps back).
        backend: the tier of the bilinear resizes (``"auto"``, ``"loop"``, ``"numpy"``,
            ``"numba"``, ``"cuda"``).
    """

    def __init__(self, scales=(0.5, 1.0, 1.5), align_corners: bool = False,
                 backend: str = "auto"):
        self.scales = _checks.positive_numbers(scales, "scales")
        self.align_corners = _checks.boolean(align_corners, "align_corners")
        _checks.choice(backend, "backend", BACKENDS)
        self.backend = backend

    def __repr__(self) -> str:
        return (f"ImagePyramid(scales={self.scales}, align_corners={self.align_corners}, "
                f"backend={self.backend!r})")

    def sizes(self, image_size) -> list[tuple[int, int]]:
        """The ``(h_s, w_s)`` of every copy (:func:`scaled_size`), in the order of scales."""
        return [scaled_size(image_size, s) for s in self.scales]

    def relative_cost(self, image_size=None) -> float:
        """The pyramid's pixels over the image's: ``sum_s s^2``, or with ``image_size`` the
        exact ``sum_s h_s w_s / (H W)`` of the rounded sizes. For a convolutional model this is
        the cost of the pyramid in units of one pass at scale 1."""
        if image_size is None:
            return sum(s * s for s in self.scales)
        height, width = _checks.int_pair(image_size, "image_size", minimum=1)
        return sum(h * w for h, w in self.sizes(image_size)) / (height * width)

    def _images(self, images) -> np.ndarray:
        images = _checks.float_array(images, "images", ndim=4)
        _checks.nonempty_spatial(images, "images")
        return images

    def resize_inputs(self, images) -> list[np.ndarray]:
        """(N, C, H, W) -> one (N, C, h_s, w_s) copy per scale (the images themselves at a
        scale that keeps the size)."""
        images = self._images(images)
        return [_resize_to(images, size, self.align_corners, self.backend)
                for size in self.sizes(images.shape[2:])]

    def resize_inputs_backward(self, grads, images) -> np.ndarray:
        """Vector-Jacobian product of :meth:`resize_inputs`: the per-scale gradients
        (N, C, h_s, w_s) -> the gradient (N, C, H, W) with respect to ``images``, their sum
        through the transposed resizes."""
        images = self._images(images)
        sizes = self.sizes(images.shape[2:])
        if not isinstance(grads, Sequence) or len(grads) != len(sizes):
            raise ValueError(f"grads must hold one array per scale ({len(sizes)}), got "
                             f"{type(grads).__name__}")
        total = np.zeros(images.shape, dtype=images.dtype)
        for s, (g, size) in enumerate(zip(grads, sizes)):
            g = _checks.float_array(g, f"grads[{s}]", ndim=4)
            _checks.shape_equals(g, f"grads[{s}]", images.shape[:2] + size,
                                 f"the shape of the copy at scale {self.scales[s]}")
            total = total + _resize_to_backward(g, images, size, self.align_corners,
                                                self.backend)
        return total

    def predict_dense(self, model: Callable, images, fusion: str = "mean") -> np.ndarray:
        """``model`` maps (N, C, h, w) to dense predictions (N, K, h', w') (any h', w');
        returns their fusion (N, K, H, W) in the frame of ``images`` (:func:`fuse_dense`)."""
        images = self._images(images)
        _checks.choice(fusion, "fusion", DENSE_FUSIONS)
        maps = [model(x) for x in self.resize_inputs(images)]
        return fuse_dense(maps, images.shape[2:], fusion, self.align_corners, self.backend)

    def backward_dense(self, model, grad, images, fusion: str = "mean") -> np.ndarray:
        """Backward of :meth:`predict_dense` for a ``scratchvision.nn.Module`` ``model``.

        ``grad`` (N, K, H, W) is the gradient with respect to the fused map. The model's
        parameter gradients are **accumulated** (``+=``) over the scales, as for any weight
        shared between several uses; returns the gradient (N, C, H, W) with respect to
        ``images``. A Module remembers only its latest forward, so each scale is run forward
        again just before its backward: this costs one more forward pass per scale.
        """
        images = self._images(images)
        inputs = self.resize_inputs(images)
        maps = [model(x) for x in inputs]
        grad_maps = fuse_dense_backward(grad, maps, images.shape[2:], fusion,
                                        self.align_corners, self.backend)
        grad_inputs = []
        for x, g in zip(inputs, grad_maps):
            model.forward(x)  # make the model remember this scale
            grad_inputs.append(model.backward(g))
        return self.resize_inputs_backward(grad_inputs, images)

    def predict_boxes(self, model: Callable, images, fusion: str = "nms",
                      iou_threshold: float = 0.5, nms_backend: str = "auto"
                      ) -> list[Detections]:
        """``model`` maps (N, C, h, w) to a list of N detections ``(boxes, scores, labels)``
        (or torchvision-style dicts) in that copy's pixels; returns one :class:`Detections`
        per image in the frame of ``images``, fused by :func:`fuse_boxes` (``nms_backend`` is
        the NMS tier)."""
        images = self._images(images)
        _checks.choice(fusion, "fusion", BOX_FUSIONS)
        sizes = self.sizes(images.shape[2:])
        outputs = [model(x) for x in self.resize_inputs(images)]
        for scale, output in zip(self.scales, outputs):
            if not isinstance(output, Sequence) or len(output) != images.shape[0]:
                raise ValueError(f"the model must return one detections entry per image "
                                 f"({images.shape[0]}) at scale {scale}, got "
                                 f"{type(output).__name__}")
        return [fuse_boxes([output[n] for output in outputs], sizes, images.shape[2:], fusion,
                           iou_threshold, nms_backend)
                for n in range(images.shape[0])]
