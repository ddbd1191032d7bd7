"""Anchor-based one-stage detectors (RetinaNet-style), in three flavours that differ only in
where their anchors live:

* ``single``: one stride-16 map (C4 of the backbone, projected to ``channels``) carries
  anchors of *every* size, 12 to 136 pixels. A small object is one cell of a coarse map.
* ``fpn``: a feature pyramid (P3-P5 from C3-C5, P6 by max pooling P5) with one octave of anchor
  sizes per level: 12-17 px on the stride-8 map, 96-136 px on the stride-64 one. A small
  object is seen on a fine map, a large one on a coarse map with a wide view.
* ``fpn_dcn``: ``fpn`` whose head towers end in a deformable convolution (DCNv2).

Training (``loss``), for each image separately, then summed over the batch:

1. **Match** (:class:`~scratchvision.detection.Matcher`): the IoU of every anchor with every
   ground-truth box; IoU >= 0.5 is a positive (foreground) anchor of that box, < 0.4 a negative
   (background), in between ignored. ``allow_low_quality_matches``: every box also keeps the
   anchors it overlaps most, so even a box smaller than every anchor gets a positive.
2. **Classify**: sigmoid focal loss (:func:`~scratchvision.losses.sigmoid_focal_loss`) of every
   non-ignored anchor's K logits against its one-hot class (all zeros for background).
3. **Regress**: smooth L1 (beta = 1/9) of the positive anchors' deltas against
   ``BoxCoder.encode(box, anchor)``, or, with ``box_loss="giou"``, the GIoU loss of the decoded
   boxes.
4. Both sums are divided by the number of positive anchors in the batch (at least 1).

Everything here is NumPy; the gradient of each loss part w.r.t. the head's outputs is the
losses' hand-written backward, scattered back into the head's (N, A * K, H, W) layout, and
:meth:`AnchorDetector.backward` sends it through the head, the neck and the backbone.

The matching is piecewise constant in the parameters (moving an output a little never changes
which anchors are positive), so the loss is differentiated for the matching found, as every
detector does.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import _checks
from ..detection import AnchorGenerator, BoxCoder, Matcher, batched_nms, box_iou
from ..losses import (generalized_box_iou_loss, generalized_box_iou_loss_backward,
                      sigmoid_focal_loss, sigmoid_focal_loss_backward, smooth_l1_loss,
                      smooth_l1_loss_backward)
from ..nn import (Conv2d, FeaturePyramidNetwork, LastLevelMaxPool, Module, ReLU, Sequential)
from .backbone import DEFAULT_WIDTHS, TinyBackbone
from .retina_head import RetinaHead

__all__ = ["AnchorDetector", "ANCHOR_MODELS", "LossParts"]

ANCHOR_MODELS = ("single", "fpn", "fpn_dcn")
#: two sizes per octave, one octave per pyramid level (P3..P6): 12 px at stride 8 up to 136
FPN_ANCHOR_SIZES = ((12, 17), (24, 34), (48, 68), (96, 136))
ASPECT_RATIOS = (0.5, 1.0, 2.0)
BOX_LOSSES = ("smooth_l1", "giou")
SMOOTH_L1_BETA = 1.0 / 9.0
# images in [0, 1] are mapped to about [-2, 2] (mean 0.5, standard deviation 0.25)
PIXEL_MEAN, PIXEL_STD = 0.5, 0.25


class LossParts(NamedTuple):
    """The loss of one batch: ``classification`` + ``box_regression`` = ``total``, and the
    number of positive anchors the two were divided by."""

    classification: float
    box_regression: float
    total: float
    num_foreground: int


class _Flat(NamedTuple):
    """The head's outputs over all levels, anchor by anchor: cls (N, T, K), box (N, T, 4),
    with T = sum of H_l * W_l * A over the levels, and where each level starts."""

    cls: np.ndarray
    box: np.ndarray
    level_shapes: list


def _flatten(maps: list[np.ndarray], per_anchor: int) -> np.ndarray:
    """L maps (N, A * c, H, W) -> (N, T, c) in the anchors' order (location-major: for each
    pixel in row-major order, its A anchors), as torchvision's RetinaNet head."""
    flat = []
    for m in maps:
        n, _, h, w = m.shape
        # (N, A*c, H, W) -> (N, A, c, H, W) -> (N, H, W, A, c) -> (N, H*W*A, c)
        flat.append(m.reshape(n, -1, per_anchor, h, w).transpose(0, 3, 4, 1, 2)
                    .reshape(n, -1, per_anchor))
    return np.concatenate(flat, axis=1)


def _unflatten(flat: np.ndarray, shapes: list[tuple], per_anchor: int) -> list[np.ndarray]:
    """The inverse of :func:`_flatten`: (N, T, c) -> maps of ``shapes`` (N, A * c, H, W)."""
    maps, start = [], 0
    for n, channels, h, w in shapes:
        a = channels // per_anchor
        part = flat[:, start:start + h * w * a]
        start += h * w * a
        # (N, H*W*A, c) -> (N, H, W, A, c) -> (N, A, c, H, W) -> (N, A*c, H, W)
        maps.append(np.ascontiguousarray(
            part.reshape(n, h, w, a, per_anchor).transpose(0, 3, 4, 1, 2)).reshape(
                n, channels, h, w))
    return maps


class AnchorDetector(Module):
    """A small RetinaNet: :class:`~scratchvision.models.TinyBackbone`, a neck (``single``: a
    1x1 projection of C4; ``fpn``/``fpn_dcn``: a FeaturePyramidNetwork with LastLevelMaxPool),
    a :class:`~scratchvision.models.RetinaHead`, anchors, matching and the losses.

    Args:
        kind: ``"single"``, ``"fpn"`` or ``"fpn_dcn"`` (module docstring).
        num_classes: K, the object classes (labels 1..K; 0 is never a label).
        channels: the neck's and the head's channels.
        num_convs: convolutions per head tower.
        box_loss: ``"smooth_l1"`` on the encoded deltas or ``"giou"`` on the decoded boxes.
        widths: the backbone's channels (see :class:`~scratchvision.models.TinyBackbone`).
        rng, dtype, backend: as for :class:`~scratchvision.nn.Conv2d`.

    ``forward(images (N, 3, H, W) in [0, 1])`` returns the head's outputs, ``loss(outputs,
    targets)`` the :class:`LossParts` and the gradient to feed ``backward``, ``predict(images)``
    torchvision's ``[{"boxes", "scores", "labels"}]``.
    """

    def __init__(self, kind: str = "fpn", num_classes: int = 3, channels: int = 64,
                 num_convs: int = 2, box_loss: str = "smooth_l1",
                 widths=DEFAULT_WIDTHS, *, rng=0, dtype=np.float32, backend: str = "auto"):
        super().__init__()
        _checks.choice(kind, "kind", ANCHOR_MODELS)
        _checks.choice(box_loss, "box_loss", BOX_LOSSES)
        self.kind, self.box_loss = kind, box_loss
        self.num_classes = _checks.positive_int(num_classes, "num_classes")
        rng = np.random.default_rng(rng)
        layers = dict(rng=rng, dtype=dtype, backend=backend)
        self.backbone = TinyBackbone(widths, **layers)
        c3, c4, c5 = self.backbone.out_channels
        if kind == "single":
            self.neck = Sequential(Conv2d(c4, channels, 1, **layers), ReLU())
            sizes = (tuple(s for level in FPN_ANCHOR_SIZES for s in level),)
        else:
            self.fpn = FeaturePyramidNetwork([c3, c4, c5], channels,
                                             LastLevelMaxPool(backend=backend), **layers)
            sizes = FPN_ANCHOR_SIZES
        self.anchor_generator = AnchorGenerator(sizes, ASPECT_RATIOS)
        num_anchors = self.anchor_generator.num_anchors_per_location()[0]
        self.head = RetinaHead(channels, num_anchors, num_classes, num_convs,
                               deformable=kind == "fpn_dcn", **layers)
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(0.5, 0.4, allow_low_quality_matches=True)
        self.backend = backend

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, num_classes={self.num_classes}, box_loss={self.box_loss!r}"

    # ------------------------------------------------------------------ forward / backward

    def _features(self, x) -> list[np.ndarray]:
        c3, c4, c5 = self.backbone(x)
        if self.kind == "single":
            return [self.neck(c4)]
        return self.fpn([c3, c4, c5])

    def forward(self, images) -> dict:
        """images (N, 3, H, W) in [0, 1] -> ``{"cls_logits": [per level (N, A*K, h, w)],
        "bbox_deltas": [per level (N, A*4, h, w)], "image_size": (H, W)}``."""
        images = _checks.float_array(images, "images", ndim=4)
        if images.shape[1] != 3:
            raise ValueError(f"images must have 3 channels (RGB), got shape {images.shape}")
        x = (images.astype(self.head.classification_head.output.weight.dtype, copy=False)
             - PIXEL_MEAN) / PIXEL_STD
        cls_logits, bbox_deltas = self.head(self._features(x))
        return {"cls_logits": cls_logits, "bbox_deltas": bbox_deltas,
                "image_size": tuple(images.shape[2:])}

    def backward(self, grads) -> np.ndarray:
        """``(grad_cls_logits, grad_bbox_deltas)`` from :meth:`loss` -> the gradient with
        respect to the images; accumulates every parameter's gradient."""
        grad_maps = self.head.backward(grads)
        if self.kind == "single":
            grad_c3, grad_c4, grad_c5 = None, self.neck.backward(grad_maps[0]), None
        else:
            grad_c3, grad_c4, grad_c5 = self.fpn.backward(grad_maps)
        grad_x = self.backbone.backward([grad_c3, grad_c4, grad_c5])
        return grad_x / PIXEL_STD

    # ------------------------------------------------------------------ anchors and losses

    def anchors(self, outputs: dict) -> np.ndarray:
        """(T, 4) anchors ``(x1, y1, x2, y2)`` of ``outputs``, in the flattened order."""
        sizes = [m.shape[2:] for m in outputs["cls_logits"]]
        levels = self.anchor_generator.grid_anchors(outputs["image_size"], sizes)
        return np.concatenate(levels, axis=0)

    def _flat(self, outputs: dict) -> _Flat:
        cls, box = outputs["cls_logits"], outputs["bbox_deltas"]
        return _Flat(_flatten(cls, self.num_classes), _flatten(box, 4),
                     [m.shape for m in cls])

    def match(self, anchors: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """(T,) matches of the anchors to one image's ground truth: the box index, or
        ``Matcher.BELOW_LOW_THRESHOLD`` (background) or ``BETWEEN_THRESHOLDS`` (ignored)."""
        if boxes.shape[0] == 0:
            return np.full(anchors.shape[0], Matcher.BELOW_LOW_THRESHOLD, dtype=np.int64)
        return self.matcher(box_iou(boxes, anchors))  # (G, T) quality matrix

    def loss(self, outputs: dict, targets: list[dict]):
        """The loss of a batch and its gradient with respect to the head's outputs.

        Args:
            outputs: what :meth:`forward` returned for the batch.
            targets: one ``{"boxes": (G, 4) xyxy, "labels": (G,) int in 1..K}`` per image.

        Returns:
            ``(LossParts, grads)``; ``grads`` is ``(grad_cls_logits, grad_bbox_deltas)``, in
            the layout of ``outputs``, ready for :meth:`backward`.
        """
        flat = self._flat(outputs)
        n_images = flat.cls.shape[0]
        if len(targets) != n_images:
            raise ValueError(f"targets must hold one entry per image ({n_images}), got "
                             f"{len(targets)}")
        anchors = self.anchors(outputs).astype(flat.cls.dtype)
        dtype = flat.cls.dtype
        cls_target = np.zeros_like(flat.cls)
        valid = np.ones(flat.cls.shape[:2], dtype=bool)  # (N, T): not ignored
        foreground = np.zeros(flat.cls.shape[:2], dtype=bool)  # (N, T)
        matched_boxes = np.zeros_like(flat.box)  # (N, T, 4): each positive's ground truth
        for n, target in enumerate(targets):
            boxes = np.asarray(target["boxes"], dtype=dtype).reshape(-1, 4)
            labels = np.asarray(target["labels"], dtype=np.int64).reshape(-1)
            matches = self.match(anchors, boxes)  # step 1
            fg = matches >= 0
            foreground[n], valid[n] = fg, matches != Matcher.BETWEEN_THRESHOLDS
            cls_target[n, fg, labels[matches[fg]] - 1] = 1  # labels 1..K -> columns 0..K-1
            matched_boxes[n, fg] = boxes[matches[fg]]
        num_fg = max(1, int(foreground.sum()))
        scale = np.asarray(1.0 / num_fg, dtype=dtype)  # step 4
        # step 2: focal loss over the anchors that are not ignored
        logits, cls_t = flat.cls[valid], cls_target[valid]  # (V, K) each
        cls_loss = float(sigmoid_focal_loss(logits, cls_t, reduction="sum")) / num_fg
        grad_cls = np.zeros_like(flat.cls)
        grad_cls[valid] = sigmoid_focal_loss_backward(scale, logits, cls_t,
                                                      reduction="sum").grad_inputs
        # step 3: box regression of the positive anchors
        deltas, fg_anchors = flat.box[foreground], np.broadcast_to(
            anchors, flat.box.shape)[foreground]
        grad_box = np.zeros_like(flat.box)
        if self.box_loss == "smooth_l1":
            box_target = self.box_coder.encode(matched_boxes[foreground], fg_anchors)
            box_loss = float(smooth_l1_loss(deltas, box_target, "sum", SMOOTH_L1_BETA)) / num_fg
            grad_box[foreground] = smooth_l1_loss_backward(scale, deltas, box_target, "sum",
                                                           SMOOTH_L1_BETA).grad_input
        else:
            decoded = self.box_coder.decode(deltas, fg_anchors)
            box_loss = float(generalized_box_iou_loss(decoded, matched_boxes[foreground],
                                                      "sum")) / num_fg
            grad_decoded = generalized_box_iou_loss_backward(
                scale, decoded, matched_boxes[foreground], "sum").grad_boxes1
            grad_box[foreground] = self._decode_backward(grad_decoded, deltas, fg_anchors)
        parts = LossParts(cls_loss, box_loss, cls_loss + box_loss, int(foreground.sum()))
        grads = (_unflatten(grad_cls, flat.level_shapes, self.num_classes),
                 _unflatten(grad_box, [(n, c // self.num_classes * 4, h, w)
                                       for n, c, h, w in flat.level_shapes], 4))
        return parts, grads

    def _decode_backward(self, grad_boxes, deltas, anchors) -> np.ndarray:
        """Gradient of ``BoxCoder.decode(deltas, anchors)`` (weights 1, clip not reached)
        w.r.t. the deltas: ``x1 = cx - w/2`` with ``cx = dx * wa + cxa`` and
        ``w = exp(dw) * wa``, so ``d x1 / d dx = wa`` and ``d x1 / d dw = -w / 2`` (and the
        same for y and the other corner, with ``+w / 2``)."""
        wa = anchors[:, 2] - anchors[:, 0]
        ha = anchors[:, 3] - anchors[:, 1]
        clip = self.box_coder.bbox_xform_clip
        # NOTE: where the size delta is clipped, decode is flat in it: gradient 0
        w = np.exp(np.minimum(deltas[:, 2], clip)) * wa
        h = np.exp(np.minimum(deltas[:, 3], clip)) * ha
        g_x1, g_y1, g_x2, g_y2 = grad_boxes.T
        grad = np.empty_like(deltas)
        grad[:, 0] = (g_x1 + g_x2) * wa
        grad[:, 1] = (g_y1 + g_y2) * ha
        grad[:, 2] = np.where(deltas[:, 2] < clip, (g_x2 - g_x1) * w / 2, 0)
        grad[:, 3] = np.where(deltas[:, 3] < clip, (g_y2 - g_y1) * h / 2, 0)
        return grad

    # ------------------------------------------------------------------ inference

    def predict(self, images, score_threshold: float = 0.05, nms_threshold: float = 0.5,
                detections_per_image: int = 100, candidates_per_level: int = 1000
                ) -> list[dict]:
        """Detections for each image, torchvision's RetinaNet post-processing: per level the
        ``candidates_per_level`` best (anchor, class) scores above ``score_threshold``, their
        boxes decoded and clipped to the image, per-class NMS at ``nms_threshold``, the
        ``detections_per_image`` best kept. Returns ``[{"boxes" (k, 4), "scores" (k,),
        "labels" (k,) int64}]``."""
        outputs = self.forward(images)
        height, width = outputs["image_size"]
        level_anchors = self.anchor_generator.grid_anchors(
            outputs["image_size"], [m.shape[2:] for m in outputs["cls_logits"]])
        results = []
        for n in range(len(outputs["cls_logits"][0])):
            boxes_all, scores_all, labels_all = [], [], []
            for cls_map, box_map, anchors in zip(outputs["cls_logits"], outputs["bbox_deltas"],
                                                 level_anchors):
                logits = _flatten([cls_map[n:n + 1]], self.num_classes)[0]  # (T_l, K)
                deltas = _flatten([box_map[n:n + 1]], 4)[0]  # (T_l, 4)
                scores = (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).ravel()
                keep = np.flatnonzero(scores > score_threshold)
                keep = keep[np.argsort(-scores[keep], kind="stable")[:candidates_per_level]]
                anchor_index, label = np.divmod(keep, self.num_classes)
                boxes = self.box_coder.decode(deltas[anchor_index].astype(np.float64),
                                              anchors[anchor_index])
                boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
                boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
                boxes_all.append(boxes)
                scores_all.append(scores[keep])
                labels_all.append(label + 1)
            boxes, scores = np.concatenate(boxes_all), np.concatenate(scores_all)
            labels = np.concatenate(labels_all).astype(np.int64)
            keep = batched_nms(boxes, scores, labels, nms_threshold)[:detections_per_image]
            results.append({"boxes": boxes[keep], "scores": scores[keep],
                            "labels": labels[keep]})
        return results
