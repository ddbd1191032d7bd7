"""Deformable DETR's set prediction: the Hungarian matcher and the set criterion (focal, L1 and
GIoU losses on every decoder layer), with the gradient of the total loss written by hand.

A DETR-style detector predicts a fixed *set* of Q boxes per image, one per object query, and
is trained against a set of K_n ground-truth boxes that has no order. Training therefore
starts with a **matching**: each ground-truth box is assigned to exactly one query, by the
assignment of minimum total cost (the Hungarian algorithm, here
``scipy.optimize.linear_sum_assignment``); the other Q - K_n queries must predict "no object".
The losses then compare each matched query with its box, and push every unmatched query's
class scores to zero.

* :class:`HungarianMatcher` -- Deformable DETR's matcher: the cost of assigning query ``i``
  to target ``j`` is ``cost_class * (focal-style class cost) + cost_bbox * L1 +
  cost_giou * (-GIoU)``, eqs. (1)-(7) of the derivation page;
* :class:`SetCriterion` -- Deformable DETR's ``SetCriterion`` with the ``labels`` and
  ``boxes`` losses: sigmoid focal loss over every query and class, L1 and GIoU on the matched
  boxes, each normalised by the number of target boxes, eqs. (9)-(13), on the last decoder
  layer and (``aux_loss``) on every earlier one, eq. (17); it returns the loss parts, the
  weighted total and the gradient of the total w.r.t. every prediction array, eqs. (14)-(18);
* :func:`box_cxcywh_to_xyxy_backward` -- the gradient through DETR's box conversion,
  eq. (16).

The maths is on the derivation page ``docs/derivations/set_prediction.md`` ("Set prediction:
Hungarian matching and the DETR losses"); the comments ``# eq. (k)`` point to its numbered
equations, and ``# NOTE:`` marks the points where the loss is not differentiable. The losses'
own derivatives are those of :mod:`scratchvision.losses` (``docs/derivations/losses.md``).

**The matching is piecewise constant.** It is a discrete choice: a small change of the
predictions leaves it unchanged, until two assignments tie and it jumps. No gradient flows
through it (Deformable DETR computes it under ``torch.no_grad()``); the loss is differentiated
*for the matching found*, which is held fixed. At a jump the loss itself is discontinuous.

**Conventions** (those of this repository, which differ from Deformable DETR's code in one
place, the labels):

* Boxes are normalised ``(cx, cy, w, h)``, in [0, 1] relative to the image size, for both the
  predictions (``pred_boxes``, a sigmoid output in the model) and the targets, as in DETR.
* **Labels are 1-based**: a target's ``labels`` hold class ids 1..K (the datasets of this
  repository never use 0). The classifier has K sigmoid outputs, one per class and no
  "no object" output; **label l is column l - 1** of ``pred_logits``. (Deformable DETR's code
  takes 0-based ids and builds its one-hot with one extra column that it drops.)
* float32 predictions give float32 gradients; targets are cast to the predictions' dtype.
  Inputs are never modified.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.special import expit

from .. import _checks
from ..detection import box_convert, generalized_box_iou
from ..losses import (generalized_box_iou_loss, generalized_box_iou_loss_backward, l1_loss,
                      l1_loss_backward, sigmoid_focal_loss, sigmoid_focal_loss_backward)

__all__ = ["HungarianMatcher", "SetCriterion", "SetLoss", "box_cxcywh_to_xyxy_backward",
           "LOSS_NAMES", "DEFAULT_WEIGHTS"]

#: the loss parts of one decoder layer; an earlier layer ``i`` reports them as ``loss_ce_i``...
LOSS_NAMES = ("loss_ce", "loss_bbox", "loss_giou")
#: Deformable DETR's loss weights (``cls_loss_coef``, ``bbox_loss_coef``, ``giou_loss_coef``)
DEFAULT_WEIGHTS = {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}
#: the focusing exponent of the classification loss; Deformable DETR fixes it at 2
FOCAL_GAMMA = 2.0
#: the ``1e-8`` Deformable DETR's matcher adds inside its logarithms
LOG_EPS = 1e-8

#: one image's matching: (query indices, target indices), int64, pair k is
#: (query ``pred_indices[k]``, target ``tgt_indices[k]``)
ImageMatching = tuple[np.ndarray, np.ndarray]


class SetLoss(NamedTuple):
    """What :class:`SetCriterion` returns; unpacks as ``parts, total, grads``.

    * ``parts``: dict name -> float: ``loss_ce``, ``loss_bbox``, ``loss_giou`` of the last
      decoder layer and ``loss_ce_i``, ``loss_bbox_i``, ``loss_giou_i`` of ``aux_outputs[i]``
      (unweighted, as Deformable DETR's loss dict);
    * ``total``: float, ``sum over the parts of weight_dict[base name] * part``;
    * ``grads``: the gradient of ``total``, with the structure of the outputs:
      ``{"pred_logits", "pred_boxes", "aux_outputs": [{"pred_logits", "pred_boxes"}, ...]}``
      (``aux_outputs`` only when the outputs have it), each of its array's shape and dtype.
    """

    parts: dict
    total: float
    grads: dict


# ----------------------------------------------------------------------------- validation

def _cost_weight(value, name: str) -> float:
    """A matching cost's weight: a finite real number >= 0."""
    value = _checks.number_in_range(value, name, 0.0, math.inf)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def _layer_arrays(layer, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(pred_logits (N, Q, K), pred_boxes (N, Q, 4))`` of one layer's outputs dict, validated
    and brought to their common float type; error messages name ``name``."""
    if not isinstance(layer, Mapping):
        raise TypeError(f"{name} must be a dict with 'pred_logits' and 'pred_boxes', got "
                        f"{type(layer).__name__}")
    for key in ("pred_logits", "pred_boxes"):
        if key not in layer:
            raise ValueError(f"{name} must have the key {key!r}; it has {sorted(layer)}")
    logits_name, boxes_name = f"{name}['pred_logits']", f"{name}['pred_boxes']"
    logits = _checks.float_array(layer["pred_logits"], logits_name, ndim=3)
    boxes = _checks.float_array(layer["pred_boxes"], boxes_name, ndim=3)
    _checks.last_dim(boxes, boxes_name, 4, "(cx, cy, w, h)")
    _checks.shape_equals(boxes, boxes_name, logits.shape[:2] + (4,),
                         f"one box per query of {logits_name}, (N, Q, 4)")
    if logits.shape[2] == 0:
        raise ValueError(f"{logits_name} must have at least one class (dimension 2), got "
                         f"shape {logits.shape}")
    if not np.isfinite(logits).all():
        raise ValueError(f"{logits_name} must be finite")
    if not np.isfinite(boxes).all():
        raise ValueError(f"{boxes_name} must be finite")
    if (boxes[..., 2:] < 0).any():
        raise ValueError(f"{boxes_name} must have non-negative widths and heights "
                         f"(cx, cy, w, h), got a negative one")
    return _checks.common_float((logits_name, logits), (boxes_name, boxes))


def _targets(targets, num_images: int, num_classes: int, dtype) -> list[tuple]:
    """``[(boxes (K_n, 4) cxcywh of ``dtype``, labels (K_n,) int64 in 1..K)]``, validated."""
    if not isinstance(targets, Sequence) or isinstance(targets, (str, bytes)):
        raise TypeError(f"targets must be a list of dicts, one per image, got "
                        f"{type(targets).__name__}")
    if len(targets) != num_images:
        raise ValueError(f"targets must hold one dict per image ({num_images}, the first "
                         f"dimension of pred_logits), got {len(targets)}")
    checked = []
    for n, target in enumerate(targets):
        where = f"targets[{n}]"
        if not isinstance(target, Mapping) or "boxes" not in target or "labels" not in target:
            raise ValueError(f"{where} must be a dict with 'boxes' and 'labels'")
        boxes, labels = np.asarray(target["boxes"]), np.asarray(target["labels"])
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)  # [] or np.zeros((0, 4)): an image without objects
        boxes = _checks.float_array(boxes, f"{where}['boxes']", ndim=2)
        _checks.last_dim(boxes, f"{where}['boxes']", 4, "(cx, cy, w, h)")
        if labels.size == 0:
            labels = np.zeros(0, dtype=np.int64)
        if labels.dtype.kind not in "iu":
            raise TypeError(f"{where}['labels'] must be an integer array of class ids 1..K, "
                            f"got dtype {labels.dtype}")
        _checks.shape_equals(labels, f"{where}['labels']", (len(boxes),),
                             f"one label per box of {where}['boxes']")
        if not np.isfinite(boxes).all():
            raise ValueError(f"{where}['boxes'] must be finite")
        if (boxes[:, 2:] <= 0).any():
            raise ValueError(f"{where}['boxes'] must have positive widths and heights "
                             f"(cx, cy, w, h), got {boxes[(boxes[:, 2:] <= 0).any(1)][0]}")
        if ((labels < 1) | (labels > num_classes)).any():
            bad = labels[(labels < 1) | (labels > num_classes)][0]
            raise ValueError(f"{where}['labels'] must hold class ids 1..{num_classes} "
                             f"(1-based: label l is column l - 1 of the {num_classes} "
                             f"logits), got {bad}")
        checked.append((boxes.astype(dtype), labels.astype(np.int64)))
    return checked


# ----------------------------------------------------------------------------- the matcher

class HungarianMatcher:
    """Deformable DETR's ``HungarianMatcher``: one-to-one assignment of targets to queries by
    minimum total cost, per image, eqs. (1)-(7).

    The cost of query ``i`` for target ``j`` (a label ``l_j``, a box ``b_j``) is

        cost_class * [pos(p_ic) - neg(p_ic)] + cost_bbox * ||b_i - b_j||_1
        + cost_giou * (-GIoU(xyxy(b_i), xyxy(b_j)))

    with ``p = sigmoid(pred_logits)``, ``c = l_j - 1`` (labels are 1-based),
    ``pos(p) = alpha (1 - p)^gamma (-log(p + 1e-8))`` and
    ``neg(p) = (1 - alpha) p^gamma (-log(1 - p + 1e-8))``: the focal loss the query would pay
    as a positive of class c, minus what it pays now as a negative. Boxes are normalised
    ``(cx, cy, w, h)``; the GIoU is the pairwise
    :func:`~scratchvision.detection.generalized_box_iou` of the boxes converted to
    ``(x1, y1, x2, y2)``.

    The matching is a discrete choice, piecewise constant in the predictions: no gradient
    flows through it (module docstring).

    Args:
        cost_class, cost_bbox, cost_giou: the weights of the three costs, finite and >= 0, not
            all 0 (Deformable DETR's ``set_cost_class``, ``set_cost_bbox``, ``set_cost_giou``).
        alpha, gamma: the focal parameters of the class cost (Deformable DETR fixes them at
            0.25 and 2), alpha in [0, 1], gamma >= 0.

    ``matcher(outputs, targets)`` returns, per image, ``(pred_indices, tgt_indices)``; see
    :meth:`__call__`.
    """

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0,
                 cost_giou: float = 2.0, alpha: float = 0.25, gamma: float = 2.0):
        self.cost_class = _cost_weight(cost_class, "cost_class")
        self.cost_bbox = _cost_weight(cost_bbox, "cost_bbox")
        self.cost_giou = _cost_weight(cost_giou, "cost_giou")
        if self.cost_class == self.cost_bbox == self.cost_giou == 0:
            raise ValueError("cost_class, cost_bbox and cost_giou can't all be 0")
        self.alpha = _checks.number_in_range(alpha, "alpha", 0.0, 1.0)
        self.gamma = _checks.number_in_range(gamma, "gamma", 0.0, math.inf)

    def __repr__(self) -> str:
        return (f"HungarianMatcher(cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, "
                f"cost_giou={self.cost_giou}, alpha={self.alpha}, gamma={self.gamma})")

    def cost_matrix(self, logits: np.ndarray, boxes: np.ndarray, tgt_boxes: np.ndarray,
                    tgt_labels: np.ndarray) -> np.ndarray:
        """The (Q, K_n) cost matrix of one image, eqs. (1)-(6), from validated arrays:
        ``logits`` (Q, K), ``boxes`` (Q, 4) and ``tgt_boxes`` (K_n, 4) cxcywh, ``tgt_labels``
        (K_n,) in 1..K."""
        alpha, gamma = self.alpha, self.gamma
        # --8<-- [start:matching_cost]
        prob = expit(logits)  # eq. (2): sigmoid, (Q, K)
        neg_cost = (1 - alpha) * prob ** gamma * -np.log(1 - prob + LOG_EPS)  # eq. (2)
        pos_cost = alpha * (1 - prob) ** gamma * -np.log(prob + LOG_EPS)  # eq. (2)
        columns = tgt_labels - 1  # eq. (1): labels 1..K are columns 0..K-1
        cost_class = pos_cost[:, columns] - neg_cost[:, columns]  # eq. (2), (Q, K_n)
        # eq. (3): L1 distance of every query's box to every target's box, (Q, K_n)
        cost_bbox = np.abs(boxes[:, None, :] - tgt_boxes[None, :, :]).sum(axis=-1)
        cost_giou = -generalized_box_iou(box_convert(boxes, "cxcywh", "xyxy"),
                                         box_convert(tgt_boxes, "cxcywh", "xyxy"))  # eqs. (4)-(5)
        cost = (self.cost_bbox * cost_bbox + self.cost_class * cost_class
                + self.cost_giou * cost_giou)  # eq. (6)
        # --8<-- [end:matching_cost]
        return cost

    def cost_matrices(self, outputs, targets) -> list[np.ndarray]:
        """Per image the (Q, K_n) matrix whose entry (i, j) is the cost of matching query i
        with target j, eq. (6); ``outputs`` and ``targets`` as for :meth:`__call__`."""
        logits, boxes = _layer_arrays(outputs, "outputs")
        checked = _targets(targets, logits.shape[0], logits.shape[2], logits.dtype)
        costs = []
        for n, (tgt_boxes, tgt_labels) in enumerate(checked):
            cost = self.cost_matrix(logits[n], boxes[n], tgt_boxes, tgt_labels)
            if not np.isfinite(cost).all():
                raise ValueError(f"the matching cost of image {n} is not finite: "
                                 f"outputs['pred_boxes'] are too large for their areas")
            costs.append(cost)
        return costs

    def __call__(self, outputs, targets) -> list[ImageMatching]:
        """Match each image's targets to its queries, eq. (7).

        Args:
            outputs: ``{"pred_logits": (N, Q, K), "pred_boxes": (N, Q, 4)}`` float arrays,
                boxes normalised ``(cx, cy, w, h)``; other keys (``aux_outputs``) are ignored.
            targets: one dict per image, ``{"boxes": (K_n, 4) normalised cxcywh, "labels":
                (K_n,) int class ids 1..K}``; K_n may be 0.

        Returns:
            Per image ``(pred_indices, tgt_indices)``, two int64 arrays of length
            ``min(Q, K_n)``: query ``pred_indices[k]`` is matched with target
            ``tgt_indices[k]``. ``pred_indices`` is increasing, as
            ``scipy.optimize.linear_sum_assignment`` returns it. Ties between assignments of
            equal cost are broken by scipy's algorithm.
        """
        matching = []
        for cost in self.cost_matrices(outputs, targets):
            # --8<-- [start:assignment]
            # eq. (7): the one-to-one assignment of minimum total cost (Hungarian algorithm).
            # NOTE: piecewise constant in the predictions (a discrete argmin): no gradient
            # flows through it; at a tie between two assignments it jumps.
            pred_indices, tgt_indices = linear_sum_assignment(cost)
            # --8<-- [end:assignment]
            matching.append((pred_indices.astype(np.int64), tgt_indices.astype(np.int64)))
        return matching


# ----------------------------------------------------------------------------- box conversion

def box_cxcywh_to_xyxy_backward(grad_xyxy) -> np.ndarray:
    """Gradient of DETR's ``box_cxcywh_to_xyxy`` (``x1 = cx - w / 2``, ``y1 = cy - h / 2``,
    ``x2 = cx + w / 2``, ``y2 = cy + h / 2``) w.r.t. ``(cx, cy, w, h)``, eq. (16).

    The conversion is linear, so its backward needs only the upstream gradient.

    Args:
        grad_xyxy: (..., 4) float gradient w.r.t. ``(x1, y1, x2, y2)``.

    Returns:
        (..., 4) gradient w.r.t. ``(cx, cy, w, h)``, of the same dtype.
    """
    grad_xyxy = _checks.float_array(grad_xyxy, "grad_xyxy", min_ndim=1)
    _checks.last_dim(grad_xyxy, "grad_xyxy", 4, "(x1, y1, x2, y2)")
    # --8<-- [start:cxcywh_backward]
    g_x1, g_y1, g_x2, g_y2 = (grad_xyxy[..., k] for k in range(4))
    grad_cxcywh = np.stack([g_x1 + g_x2,  # eq. (16): both corners move with the centre
                            g_y1 + g_y2,
                            (g_x2 - g_x1) / 2,  # eq. (16): x2 moves out by w / 2, x1 back
                            (g_y2 - g_y1) / 2], axis=-1)
    # --8<-- [end:cxcywh_backward]
    return grad_cxcywh


# ----------------------------------------------------------------------------- the criterion

class SetCriterion:
    """Deformable DETR's ``SetCriterion`` (losses ``labels`` and ``boxes``), with the gradient
    of the total loss, eqs. (8)-(18).

    For each decoder layer (the last one, and with ``aux_loss`` every ``aux_outputs[i]``):

    1. match the targets to the queries with ``matcher``, eq. (7), separately per layer;
    2. ``loss_ce``: the sigmoid focal loss (alpha ``focal_alpha``, gamma 2) of all N * Q * K
       logits against one-hot targets -- the matched query of a target of label l has a 1 in
       column l - 1, every other entry (all of an unmatched query) is 0 -- computed as
       Deformable DETR does, ``focal.mean(1).sum() / num_boxes * Q``, i.e. the sum of the
       focal losses divided by ``num_boxes``, eqs. (10)-(11);
    3. ``loss_bbox``: the L1 distance of each matched query's ``(cx, cy, w, h)`` to its
       target's, summed, divided by ``num_boxes``, eq. (12);
    4. ``loss_giou``: ``1 - GIoU`` of each matched pair, boxes converted to
       ``(x1, y1, x2, y2)``, summed, divided by ``num_boxes``, eq. (13) (DETR's GIoU: no eps);

    where ``num_boxes`` is the number of target boxes in the batch, at least 1, eq. (9). The
    total is the sum over layers and parts of ``weight_dict[part] * part``, eq. (17); the same
    weights apply to every layer.

    **The matching is held fixed.** It is piecewise constant in the predictions, so no gradient
    flows through it: the gradient returned is that of the loss *for the matching found*
    (module docstring), exactly what autograd gives Deformable DETR, whose matcher runs under
    ``torch.no_grad()``. Pass ``indices`` to impose a matching of your own.

    Args:
        num_classes: K, the number of object classes (labels 1..K, columns 0..K-1 of the
            logits; no "no object" column).
        matcher: a :class:`HungarianMatcher` (any callable ``matcher(outputs, targets)`` that
            returns its per-image ``(pred_indices, tgt_indices)`` will do).
        weight_dict: the weight of each part, keys among ``loss_ce``, ``loss_bbox``,
            ``loss_giou``; default ``{"loss_ce": 2, "loss_bbox": 5, "loss_giou": 2}``
            (Deformable DETR's). A part without a weight is reported but not in the total.
        focal_alpha: the focal loss's alpha, in [0, 1] (-1 switches the weighting off).
        aux_loss: also compute the losses of ``outputs["aux_outputs"]`` (the earlier decoder
            layers); when False they are ignored and their gradients are 0.

    ``criterion(outputs, targets)`` returns a :class:`SetLoss` ``(parts, total, grads)``; see
    :meth:`__call__`.
    """

    def __init__(self, num_classes: int, matcher, weight_dict: Mapping | None = None,
                 focal_alpha: float = 0.25, aux_loss: bool = True):
        self.num_classes = _checks.positive_int(num_classes, "num_classes")
        if not callable(matcher):
            raise TypeError(f"matcher must be callable (a HungarianMatcher), got "
                            f"{type(matcher).__name__}")
        self.matcher = matcher
        weight_dict = DEFAULT_WEIGHTS if weight_dict is None else weight_dict
        if not isinstance(weight_dict, Mapping):
            raise TypeError(f"weight_dict must be a dict name -> weight, got "
                            f"{type(weight_dict).__name__}")
        for name in weight_dict:
            if name not in LOSS_NAMES:
                raise ValueError(f"weight_dict must have keys among {LOSS_NAMES} (the same "
                                 f"weights apply to every decoder layer), got {name!r}")
        self.weight_dict = {name: _checks.real_number(weight, f"weight_dict[{name!r}]",
                                                      finite=True)
                            for name, weight in weight_dict.items()}
        self.focal_alpha = _checks.real_number(focal_alpha, "focal_alpha", allow_nan=False)
        if not (0.0 <= self.focal_alpha <= 1.0 or self.focal_alpha == -1.0):
            raise ValueError(f"focal_alpha must be in [0, 1], or -1 to switch the weighting "
                             f"off, got {focal_alpha!r}")
        self.aux_loss = _checks.boolean(aux_loss, "aux_loss")

    def __repr__(self) -> str:
        return (f"SetCriterion(num_classes={self.num_classes}, matcher={self.matcher!r}, "
                f"weight_dict={self.weight_dict}, focal_alpha={self.focal_alpha}, "
                f"aux_loss={self.aux_loss})")

    # ------------------------------------------------------------------ layers and matching

    def _layers(self, outputs) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
        """The decoder layers the loss covers, in decoder order (``aux_outputs[0]``, ...,
        the last layer): ``(part suffix, name, pred_logits, pred_boxes)``."""
        if not isinstance(outputs, Mapping):
            raise TypeError(f"outputs must be a dict with 'pred_logits' and 'pred_boxes', got "
                            f"{type(outputs).__name__}")
        if "enc_outputs" in outputs:
            raise ValueError("outputs has 'enc_outputs': the two-stage encoder loss is not "
                             "supported")
        aux = outputs.get("aux_outputs", []) if self.aux_loss else []
        if not isinstance(aux, Sequence):
            raise TypeError(f"outputs['aux_outputs'] must be a list of dicts, got "
                            f"{type(aux).__name__}")
        layers = [(f"_{i}", f"outputs['aux_outputs'][{i}]", layer) for i, layer in
                  enumerate(aux)] + [("", "outputs", outputs)]
        checked = []
        for suffix, name, layer in layers:
            logits, boxes = _layer_arrays(layer, name)
            if logits.shape[2] != self.num_classes:
                raise ValueError(f"{name}['pred_logits'] must have num_classes = "
                                 f"{self.num_classes} columns, got shape {logits.shape}")
            checked.append((suffix, name, logits, boxes))
        batch = checked[-1][2].shape[0]
        for _, name, logits, _ in checked:
            if logits.shape[0] != batch:
                raise ValueError(f"{name}['pred_logits'] must have the batch size of "
                                 f"outputs['pred_logits'] ({batch}), got shape {logits.shape}")
        return checked

    def match(self, outputs, targets) -> list[list[ImageMatching]]:
        """The matching of every decoder layer the loss covers, eq. (7): a list in decoder
        order -- ``aux_outputs[0]``, ..., ``aux_outputs[L - 2]`` (with ``aux_loss``), then the
        last layer -- of per-image ``(pred_indices, tgt_indices)``. Pass it back as
        ``indices`` to compute the loss for this matching, whatever the outputs."""
        return [self.matcher({"pred_logits": logits, "pred_boxes": boxes}, targets)
                for _, _, logits, boxes in self._layers(outputs)]

    # ------------------------------------------------------------------ one layer

    def _layer_loss(self, logits: np.ndarray, boxes: np.ndarray, targets: list[tuple],
                    matching: list[ImageMatching], num_boxes: float):
        """The three parts of one layer and the gradient of their weighted sum w.r.t.
        ``logits`` (N, Q, K) and ``boxes`` (N, Q, 4)."""
        n_queries = logits.shape[1]
        weight = {name: self.weight_dict.get(name, 0.0) for name in LOSS_NAMES}
        # Deformable DETR's _get_src_permutation_idx: the (image, query) of every matched pair
        # (the empty arrays in front make an empty batch work too)
        batch_idx = np.concatenate([np.zeros(0, np.int64)] + [
            np.full(len(src), n, dtype=np.int64) for n, (src, _) in enumerate(matching)])
        src_idx = np.concatenate([np.zeros(0, np.int64)] + [src for src, _ in matching])
        # --8<-- [start:onehot]
        # eq. (10): the classification target of every (image, query, class): 1 where the
        # query is matched with a target of that class (label l -> column l - 1), else 0
        target_classes_onehot = np.zeros_like(logits)
        matched_labels = np.concatenate([np.zeros(0, np.int64)] + [
            labels[tgt] for (_, labels), (_, tgt) in zip(targets, matching)])
        target_classes_onehot[batch_idx, src_idx, matched_labels - 1] = 1
        # --8<-- [end:onehot]
        # --8<-- [start:focal_loss]
        focal = sigmoid_focal_loss(logits, target_classes_onehot, self.focal_alpha,
                                   FOCAL_GAMMA)  # (N, Q, K), losses eqs. (3)-(7)
        # eq. (11): Deformable DETR's form, the mean over the queries times Q = the sum / B
        # (NOTE: with no queries at all, Q = 0, it would be 0 / 0: we return the sum, 0)
        loss_ce = focal.mean(axis=1).sum() / num_boxes * n_queries if n_queries else 0.0
        # eq. (14): d loss_ce / d focal = (1 / Q) * Q / B = 1 / B for every element
        grad_logits = sigmoid_focal_loss_backward(
            weight["loss_ce"] / num_boxes, logits, target_classes_onehot, self.focal_alpha,
            FOCAL_GAMMA, reduction="sum").grad_inputs
        # --8<-- [end:focal_loss]
        # --8<-- [start:box_losses]
        src_boxes = boxes[batch_idx, src_idx]  # (M, 4) matched queries' cxcywh
        target_boxes = np.concatenate([np.zeros((0, 4), boxes.dtype)] + [
            tgt_boxes[tgt] for (tgt_boxes, _), (_, tgt) in zip(targets, matching)])  # (M, 4)
        loss_bbox = l1_loss(src_boxes, target_boxes, reduction="sum") / num_boxes  # eq. (12)
        src_xyxy = box_convert(src_boxes, "cxcywh", "xyxy")  # eq. (4)
        target_xyxy = box_convert(target_boxes, "cxcywh", "xyxy")
        # eq. (13): 1 - GIoU with DETR's formula, which has no eps (eps=0)
        loss_giou = generalized_box_iou_loss(src_xyxy, target_xyxy, "sum", eps=0.0) / num_boxes
        # --8<-- [end:box_losses]
        # --8<-- [start:box_gradients]
        # eq. (15), NOTE: |d| has a kink where a predicted coordinate equals its target's;
        # the gradient there is sign(0) = 0, torch's choice (losses eq. 18)
        grad_src = l1_loss_backward(weight["loss_bbox"] / num_boxes, src_boxes, target_boxes,
                                    reduction="sum").grad_input
        # NOTE: the GIoU kinks (touching boxes, shared edges) take the one-sided gradients of
        # losses eqs. (28)-(33), those torch's autograd returns
        grad_src_xyxy = generalized_box_iou_loss_backward(
            weight["loss_giou"] / num_boxes, src_xyxy, target_xyxy, "sum",
            eps=0.0).grad_boxes1
        grad_src = grad_src + box_cxcywh_to_xyxy_backward(grad_src_xyxy)  # eq. (16)
        grad_boxes = np.zeros_like(boxes)  # unmatched queries: no box loss, no gradient
        np.add.at(grad_boxes, (batch_idx, src_idx), grad_src)  # eq. (15): scatter back
        # --8<-- [end:box_gradients]
        parts = {"loss_ce": float(loss_ce), "loss_bbox": float(loss_bbox),
                 "loss_giou": float(loss_giou)}
        return parts, grad_logits, grad_boxes

    # ------------------------------------------------------------------ the whole loss

    def __call__(self, outputs, targets, indices=None) -> SetLoss:
        """The losses of every decoder layer, their weighted total and its gradient.

        Args:
            outputs: ``{"pred_logits": (N, Q, K), "pred_boxes": (N, Q, 4), "aux_outputs":
                [dicts of the same two arrays, one per earlier decoder layer]}``; boxes are
                normalised ``(cx, cy, w, h)`` (a sigmoid's output: in (0, 1)). ``aux_outputs``
                is optional; other keys are ignored, except ``enc_outputs`` (two-stage), which
                is not supported and raises ``ValueError``.
            targets: one dict per image: ``{"boxes": (K_n, 4) normalised cxcywh with
                positive w and h, "labels": (K_n,) int class ids 1..K}``; K_n may be 0.
            indices: optional fixed matching, in the form :meth:`match` returns (one entry per
                layer the loss covers, in decoder order, each a per-image list of
                ``(pred_indices, tgt_indices)``); default: the matcher's, computed here.

        Returns:
            :class:`SetLoss` ``(parts, total, grads)``: the unweighted parts (``loss_ce``,
            ``loss_bbox``, ``loss_giou`` for the last layer, ``loss_ce_i``, ... for
            ``aux_outputs[i]``), the weighted total (a float) and the gradient of the total
            with the structure of ``outputs``.
        """
        layers = self._layers(outputs)
        n_images = layers[0][2].shape[0]
        checked = _targets(targets, n_images, self.num_classes, np.float64)
        if indices is None:  # eq. (8): matched once per layer, then held fixed
            indices = [self.matcher({"pred_logits": logits, "pred_boxes": boxes}, targets)
                       for _, _, logits, boxes in layers]
        indices = self._check_indices(indices, layers, checked)
        # --8<-- [start:num_boxes]
        # eq. (9): B, the number of target boxes in the batch, at least 1 (no division by 0)
        num_boxes = max(1.0, float(sum(len(labels) for _, labels in checked)))
        # --8<-- [end:num_boxes]
        parts, layer_grads = {}, []
        for (suffix, _, logits, boxes), matching in zip(layers, indices):
            layer_targets = [(b.astype(logits.dtype), labels) for b, labels in checked]
            layer_parts, grad_logits, grad_boxes = self._layer_loss(
                logits, boxes, layer_targets, matching, num_boxes)
            parts.update({name + suffix: value for name, value in layer_parts.items()})
            layer_grads.append({"pred_logits": grad_logits, "pred_boxes": grad_boxes})
        # --8<-- [start:total]
        # eq. (17): every part of every layer, weighted by its base name's weight
        total = sum(self.weight_dict.get(name, 0.0) * parts[name + suffix]
                    for suffix, *_ in layers for name in LOSS_NAMES)
        # --8<-- [end:total]
        grads = dict(layer_grads[-1])  # eq. (18): each layer's gradient is its own parts'
        if "aux_outputs" in outputs:
            if self.aux_loss:
                grads["aux_outputs"] = layer_grads[:-1]
            else:  # ignored layers: zero gradients of their arrays' shapes
                grads["aux_outputs"] = [
                    dict(zip(("pred_logits", "pred_boxes"),
                             (np.zeros_like(a) for a in _layer_arrays(
                                 layer, f"outputs['aux_outputs'][{i}]"))))
                    for i, layer in enumerate(outputs["aux_outputs"])]
        return SetLoss(parts, float(total), grads)

    @staticmethod
    def _check_indices(indices, layers, targets) -> list[list[ImageMatching]]:
        """Validate a matching given as ``indices``: one per layer, per image a pair of
        equally long integer arrays of distinct queries and distinct targets, in range."""
        if not isinstance(indices, Sequence) or len(indices) != len(layers):
            raise ValueError(f"indices must hold one matching per decoder layer the loss "
                             f"covers ({len(layers)}: the aux_outputs, then the last layer)")
        checked = []
        for layer, ((_, name, logits, _), matching) in enumerate(zip(layers, indices)):
            if not isinstance(matching, Sequence) or len(matching) != len(targets):
                raise ValueError(f"indices[{layer}] must hold one (pred_indices, "
                                 f"tgt_indices) pair per image ({len(targets)})")
            pairs = []
            for n, pair in enumerate(matching):
                where = f"indices[{layer}][{n}]"
                if not isinstance(pair, Sequence) or len(pair) != 2:
                    raise ValueError(f"{where} must be a pair (pred_indices, tgt_indices)")
                src = _checks.index_array(pair[0], f"{where}[0]", ndim=1)
                tgt = _checks.index_array(pair[1], f"{where}[1]", ndim=1)
                _checks.same_size(f"{where}[0]", len(src), f"{where}[1]", len(tgt),
                                  "length (one query per matched target)")
                for arr, size, what in ((src, logits.shape[1], "queries"),
                                        (tgt, len(targets[n][1]), "targets")):
                    if ((arr < 0) | (arr >= size)).any() or len(np.unique(arr)) != len(arr):
                        raise ValueError(f"{where} must hold distinct {what} in "
                                         f"[0, {size}) ({name}), got {arr.tolist()}")
                pairs.append((src, tgt))
            checked.append(pairs)
        return checked
