"""Set-prediction detectors: Deformable DETR and, beside it, a dense DETR of the same size.

Both read the shared tiny backbone and predict a fixed set of Q boxes per image, each with K
class scores (sigmoid, focal loss) and a box ``(cx, cy, w, h)`` normalised to [0, 1]. There are
no anchors and no NMS: training matches predictions to objects one to one
(:class:`~scratchvision.models.HungarianMatcher`) and :class:`SetCriterion` scores the
matching; at test time the Q predictions *are* the detections.

* :class:`DeformableDETR` -- four levels (C3, C4, C5 projected by ``input_proj.l`` = 1x1 conv +
  GroupNorm, plus a stride-2 3x3 conv of C5), a sine position encoding per level, and a
  :class:`~scratchvision.nn.DeformableTransformer`: each query attends to a few points around
  its reference point on every level. The box head predicts an offset from the reference
  point: ``box = sigmoid(bbox_embed(h) + [inverse_sigmoid(ref), 0, 0])``.
* :class:`DETR` -- one level (C5, stride 32, projected), dense
  :class:`~scratchvision.nn.TransformerEncoderLayer` / ``TransformerDecoderLayer`` attention
  over every position; the box head predicts the box outright, ``sigmoid(bbox_embed(h))``.

The heads (``class_embed``, ``bbox_embed``) are shared by every decoder layer, whose outputs all
get a loss (auxiliary losses): each layer's activations are kept with ``saved_state`` and handed
back for that layer's backward. The losses' gradients reach the queries, the transformer, the
projections and the backbone through the hand-written backward of every layer.

Parameter names follow Deformable-DETR's module tree (``transformer.level_embed``,
``transformer.encoder.layers.0.self_attn.sampling_offsets.weight``,
``transformer.decoder.layers.0.cross_attn...``, ``transformer.reference_points``,
``input_proj.0.0.weight``, ``input_proj.0.1.weight``, ``query_embed.weight``,
``class_embed.weight``, ``bbox_embed.layers.i``), except that the reference keeps one entry
per decoder layer for the shared heads (``class_embed.0`` ... all the same tensor): a converted
state_dict keeps one of them. The backbone is this package's, not a ResNet.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .. import _checks
from ..detection import box_convert
from ..nn import (MLP, Conv2d, DeformableTransformer, GroupNorm, Linear, Module, ModuleList,
                  Parameter, PositionEmbeddingSine, Sequential, TransformerDecoderLayer,
                  TransformerEncoderLayer, wrapped_methods)
from .backbone import DEFAULT_WIDTHS, TinyBackbone
from .set_criterion import HungarianMatcher, SetCriterion

__all__ = ["DeformableDETR", "DETR", "DETR_MODELS", "SetLossParts"]

DETR_MODELS = ("deformable_detr", "detr")
PRIOR_PROBABILITY = 0.01
PIXEL_MEAN, PIXEL_STD = 0.5, 0.25  # as the anchor detectors
INVERSE_SIGMOID_EPS = 1e-5  # the reference's inverse_sigmoid clamp


class SetLossParts(NamedTuple):
    """The loss of one batch (all decoder layers, weighted): ``classification`` (focal),
    ``box_regression`` (L1 + GIoU), their sum ``total``, and the number of target boxes."""

    classification: float
    box_regression: float
    total: float
    num_foreground: int


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _inverse_sigmoid(x: np.ndarray):
    """The reference's ``inverse_sigmoid``: ``log(x1 / x2)`` with x1 = max(x, eps) and
    x2 = max(1 - x, eps); returns it and its derivative ``1 / x1 + 1 / x2`` where the clamps
    are not active (0 where they are: the clamp is flat there)."""
    x1 = np.maximum(x, INVERSE_SIGMOID_EPS)
    x2 = np.maximum(1.0 - x, INVERSE_SIGMOID_EPS)
    # NOTE: at a clamp the function is flat in x; its one-sided derivative there is taken as 0
    slope = (np.where(x > INVERSE_SIGMOID_EPS, 1.0 / x1, 0.0)
             + np.where(1.0 - x > INVERSE_SIGMOID_EPS, 1.0 / x2, 0.0))
    return np.log(x1 / x2), slope


class _Embedding(Module):
    """``torch.nn.Embedding``'s parameter: ``weight`` (num, dim), standard normal."""

    def __init__(self, num: int, dim: int, rng, dtype):
        super().__init__()
        self.weight = Parameter(rng.standard_normal((num, dim)).astype(dtype))


class _SetDetector(Module):
    """What both detectors share: the backbone, the heads run on every decoder layer, the
    criterion, the losses' assembly and the post-processing. Subclasses implement
    ``_decode(x) -> (hs, reference or None)`` and ``_decode_backward(grad_hs, grad_reference)``
    (which returns the gradient of the normalised images)."""

    def _build_heads(self, d_model, num_classes, num_queries, rng, dtype):
        self.num_classes, self.num_queries = num_classes, num_queries
        self.class_embed = Linear(d_model, num_classes, rng=rng, dtype=dtype)
        self.class_embed.bias.data[...] = -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY)
        self.bbox_embed = MLP(d_model, d_model, 4, 3, rng=rng, dtype=dtype)
        self.bbox_embed.layers[-1].weight.data[...] = 0  # the reference's initialisation
        self.bbox_embed.layers[-1].bias.data[...] = 0
        self.criterion = SetCriterion(num_classes, HungarianMatcher())

    def forward(self, images) -> dict:
        """images (N, 3, H, W) in [0, 1] -> DETR's outputs: ``pred_logits`` (N, Q, K),
        ``pred_boxes`` (N, Q, 4) normalised cxcywh, ``aux_outputs`` (the earlier decoder
        layers' two arrays), ``image_size``."""
        images = _checks.float_array(images, "images", ndim=4)
        if images.shape[1] != 3:
            raise ValueError(f"images must have 3 channels (RGB), got shape {images.shape}")
        x = (images.astype(self.class_embed.weight.dtype, copy=False) - PIXEL_MEAN) / PIXEL_STD
        hs, reference = self._decode(x)
        states, layers = [], []
        for h in hs:
            logits = self.class_embed(h)
            delta = self.bbox_embed(h)  # (N, Q, 4)
            if reference is not None:  # an offset from the reference point, in logit space
                ref_logit, _ = _inverse_sigmoid(reference)
                delta = delta + np.concatenate([ref_logit, np.zeros_like(ref_logit)], axis=-1)
            boxes = _sigmoid(delta)
            layers.append({"pred_logits": logits, "pred_boxes": boxes})
            states.append(self.class_embed.saved_state() + self.bbox_embed.saved_state())
        self._save_for_backward(states=states, boxes=[d["pred_boxes"] for d in layers],
                                reference=reference)
        return dict(layers[-1], aux_outputs=layers[:-1], image_size=tuple(images.shape[2:]))

    def backward(self, grads) -> np.ndarray:
        """The criterion's gradient (the structure of the outputs) -> the gradient of the
        images; accumulates every parameter's gradient."""
        saved = self._saved_for_backward()
        per_layer = list(grads.get("aux_outputs", [])) + [grads]
        grad_hs, grad_reference = [], None
        for state, boxes, g in zip(saved["states"], saved["boxes"], per_layer):
            self.restore_saved_state(state)
            g_delta = g["pred_boxes"] * boxes * (1.0 - boxes)  # through the sigmoid
            grad_h = self.class_embed.backward(g["pred_logits"]) + self.bbox_embed.backward(
                g_delta)
            grad_hs.append(grad_h)
            if saved["reference"] is not None:
                _, slope = _inverse_sigmoid(saved["reference"])
                g_ref = g_delta[..., :2] * slope
                grad_reference = g_ref if grad_reference is None else grad_reference + g_ref
        grad_x = self._decode_backward(grad_hs, grad_reference)
        return grad_x / PIXEL_STD

    # ------------------------------------------------------------------ loss and inference

    def targets_for_criterion(self, targets, image_size) -> list[dict]:
        """torchvision-style targets (xyxy pixels) -> normalised cxcywh, as DETR trains."""
        height, width = image_size
        scale = np.array([width, height, width, height], dtype=np.float64)
        converted = []
        for target in targets:
            boxes = np.asarray(target["boxes"], dtype=np.float64).reshape(-1, 4)
            converted.append({"boxes": box_convert(boxes / scale, "xyxy", "cxcywh"),
                              "labels": np.asarray(target["labels"], dtype=np.int64)})
        return converted

    def loss(self, outputs: dict, targets: list[dict], indices=None):
        """The set-prediction loss of a batch (:class:`SetCriterion`, every decoder layer) ->
        ``(SetLossParts, grads)``, grads for :meth:`backward`. ``indices``: a matching to hold
        fixed (``self.criterion.match``'s form), else the Hungarian matching of ``outputs``."""
        batch = {k: outputs[k] for k in ("pred_logits", "pred_boxes", "aux_outputs")}
        result = self.criterion(batch, self.targets_for_criterion(targets,
                                                                   outputs["image_size"]),
                                indices)
        weights = self.criterion.weight_dict
        classification = sum(weights["loss_ce"] * v for k, v in result.parts.items()
                              if k.startswith("loss_ce"))
        box = sum(weights[k.rsplit("_", 1)[0] if k[-1].isdigit() else k] * v
                  for k, v in result.parts.items() if not k.startswith("loss_ce"))
        n_boxes = sum(len(t["labels"]) for t in targets)
        return SetLossParts(float(classification), float(box), float(result.total),
                            n_boxes), result.grads

    def predict(self, images, detections_per_image: int = 100) -> list[dict]:
        """The top ``detections_per_image`` (query, class) scores of each image (sigmoid of the
        logits), their boxes in pixels: torchvision's ``[{"boxes", "scores", "labels"}]``
        (labels 1..K), as Deformable DETR's ``PostProcess``."""
        outputs = self.forward(images)
        height, width = outputs["image_size"]
        scale = np.array([width, height, width, height])
        results = []
        for logits, boxes in zip(outputs["pred_logits"], outputs["pred_boxes"]):
            scores = _sigmoid(logits.astype(np.float64)).ravel()  # (Q * K,)
            top = np.argsort(-scores, kind="stable")[:detections_per_image]
            query, label = np.divmod(top, self.num_classes)
            xyxy = box_convert(boxes[query].astype(np.float64), "cxcywh", "xyxy") * scale
            results.append({"boxes": xyxy, "scores": scores[top],
                            "labels": (label + 1).astype(np.int64)})
        return results


class DeformableDETR(_SetDetector):
    """Deformable DETR on the tiny backbone (module docstring).

    Args:
        num_classes: K. num_queries: Q. d_model: C (divisible by ``gn_groups``). nhead,
            enc_layers, dec_layers, dim_feedforward, n_points: the transformer's
            (:class:`~scratchvision.nn.DeformableTransformer`). dropout: the decoder's.
            gn_groups: the GroupNorms' groups (32 in the reference).
        widths, rng, dtype, backend: the backbone's channels, initial values, dtype, tier.
    """

    def __init__(self, num_classes: int = 3, num_queries: int = 50, d_model: int = 64,
                 nhead: int = 4, enc_layers: int = 2, dec_layers: int = 3,
                 dim_feedforward: int = 256, n_points: int = 4, dropout: float = 0.0,
                 gn_groups: int = 8, widths=DEFAULT_WIDTHS, *, rng=0, dtype=np.float32,
                 backend: str = "auto"):
        super().__init__()
        rng = np.random.default_rng(rng)
        layers = dict(rng=rng, dtype=dtype)
        self.backbone = TinyBackbone(widths, **layers, backend=backend)
        channels = self.backbone.out_channels
        proj = [Sequential(Conv2d(c, d_model, 1, **layers, backend=backend),
                           GroupNorm(gn_groups, d_model, dtype=dtype)) for c in channels]
        proj.append(Sequential(Conv2d(channels[-1], d_model, 3, stride=2, padding=1, **layers,
                                      backend=backend),
                               GroupNorm(gn_groups, d_model, dtype=dtype)))
        self.input_proj = ModuleList(proj)
        self.transformer = DeformableTransformer(
            d_model, nhead, enc_layers, dec_layers, dim_feedforward, dropout, len(proj),
            n_points, n_points, **layers, backend=backend)
        self.query_embed = _Embedding(num_queries, 2 * d_model, rng, dtype)
        self.position = PositionEmbeddingSine(d_model // 2, dtype=dtype)
        self._build_heads(d_model, num_classes, num_queries, rng, dtype)
        self.backend = backend

    def _decode(self, x):
        c3, c4, c5 = self.backbone(x)
        srcs = [proj(c) for proj, c in zip(self.input_proj, (c3, c4, c5, c5))]
        # no padding: every image fills its batch's size
        pos = [self.position(np.zeros((m.shape[0],) + m.shape[2:], dtype=bool))
               .astype(m.dtype) for m in srcs]
        return self.transformer(srcs, pos, self.query_embed.weight.data)

    def sampling_points(self, images) -> list[dict]:
        """Where each decoder layer's queries look, for drawing: runs the model on ``images``
        (N, 3, H, W) and returns one dict per decoder layer with ``reference`` (N, Q, 2), the
        queries' reference points, ``locations`` (N, Q, M, L, P, 2), the cross-attention's
        sampling points, and ``weights`` (N, Q, M, L, P), their attention weights, all
        normalised ``(x, y)`` in [0, 1] of the image; plus the model's ``outputs``.

        Each cross-attention is asked for its points with the query it receives
        (:meth:`~scratchvision.nn.MSDeformAttn.sampling_locations_and_weights`); its forward is
        wrapped on the instance for this call only. Nothing a backward needs is disturbed, but
        a backward after this call refers to this call's images.
        """
        found = []

        def looking(attention):
            def wrap(original):
                def forward(query, reference_points, input_flatten, spatial_shapes, *rest):
                    locations, weights = attention.sampling_locations_and_weights(
                        query, reference_points, spatial_shapes)
                    found.append({"reference": reference_points[:, :, 0].copy(),
                                  "locations": locations, "weights": weights})
                    return original(query, reference_points, input_flatten, spatial_shapes,
                                    *rest)
                return forward
            return wrap

        with wrapped_methods([(layer.cross_attn, "forward", looking(layer.cross_attn))
                              for layer in self.transformer.decoder.layers]):
            outputs = self.forward(images)
        for layer in found:
            layer["outputs"] = outputs
        return found

    def _decode_backward(self, grad_hs, grad_reference):
        grad_srcs, grad_query = self.transformer.backward(grad_hs, grad_reference)
        self.query_embed.weight.accumulate(grad_query)
        g = [proj.backward(g) for proj, g in zip(self.input_proj, grad_srcs)]
        return self.backbone.backward([g[0], g[1], g[2] + g[3]])  # C5 fed two levels


class DETR(_SetDetector):
    """A DETR of the same size: one level (C5, stride 32) and dense attention (module
    docstring). Arguments as :class:`DeformableDETR` (no ``n_points``, ``gn_groups``)."""

    def __init__(self, num_classes: int = 3, num_queries: int = 50, d_model: int = 64,
                 nhead: int = 4, enc_layers: int = 2, dec_layers: int = 3,
                 dim_feedforward: int = 256, dropout: float = 0.0, widths=DEFAULT_WIDTHS, *,
                 rng=0, dtype=np.float32, backend: str = "auto"):
        super().__init__()
        rng = np.random.default_rng(rng)
        layers = dict(rng=rng, dtype=dtype)
        self.backbone = TinyBackbone(widths, **layers, backend=backend)
        self.input_proj = Conv2d(self.backbone.out_channels[-1], d_model, 1, **layers,
                                 backend=backend)
        self.encoder = ModuleList(TransformerEncoderLayer(d_model, nhead, dim_feedforward,
                                                          dropout, **layers)
                                  for _ in range(enc_layers))
        self.decoder = ModuleList(TransformerDecoderLayer(d_model, nhead, dim_feedforward,
                                                          dropout, **layers)
                                  for _ in range(dec_layers))
        self.query_embed = _Embedding(num_queries, d_model, rng, dtype)
        self.position = PositionEmbeddingSine(d_model // 2, dtype=dtype)
        self.d_model = d_model
        self._build_heads(d_model, num_classes, num_queries, rng, dtype)
        self.backend = backend

    def _decode(self, x):
        c5 = self.backbone(x)[-1]
        src = self.input_proj(c5)  # (N, C, H, W)
        n, c, h, w = src.shape
        pos = self.position(np.zeros((n, h, w), dtype=bool)).astype(src.dtype)
        memory = src.reshape(n, c, h * w).transpose(0, 2, 1)  # (N, C, H, W) -> (N, HW, C)
        pos = pos.reshape(n, c, h * w).transpose(0, 2, 1)
        for layer in self.encoder:
            memory = layer(memory, pos)
        query_pos = np.broadcast_to(self.query_embed.weight.data, (n,) + (
            self.num_queries, c)).astype(memory.dtype)
        output, hs = np.zeros_like(query_pos), []  # DETR's decoder starts from zeros
        for layer in self.decoder:
            output = layer(output, memory, pos, query_pos)
            hs.append(output)
        # kept beside _saved, which forward() fills with the heads' states after this returns
        object.__setattr__(self, "_src_shape", src.shape)
        return hs, None

    def _decode_backward(self, grad_hs, grad_reference):
        n, c, h, w = self._src_shape
        g_output, g_memory, g_query_pos = None, 0.0, 0.0
        for layer, g_h in zip(reversed(self.decoder), reversed(grad_hs)):
            g_output = g_h if g_output is None else g_output + g_h
            g_output, g_mem, _, g_qpos = layer.backward(g_output)
            g_memory = g_memory + g_mem
            g_query_pos = g_query_pos + g_qpos
        self.query_embed.weight.accumulate(g_query_pos.sum(axis=0))
        for layer in reversed(self.encoder):
            g_memory, _ = layer.backward(g_memory)  # the position encoding is a constant
        g_src = np.ascontiguousarray(g_memory.transpose(0, 2, 1)).reshape(n, c, h, w)
        return self.backbone.backward([None, None, self.input_proj.backward(g_src)])
