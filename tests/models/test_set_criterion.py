"""Deformable DETR's set prediction (scratchvision.models.set_criterion): the Hungarian matcher
and the set criterion, proved four ways.

(a) The matcher finds the assignment of minimum total cost: against a brute-force minimum
    over every one-to-one assignment, with the cost of every pair recomputed from scalar
    formulas; and against Deformable DETR's matcher re-implemented in torch in this file (cost
    matrix and indices).
(b) The gradient is exact for the matching found: central differences (float64) of the total
    loss w.r.t. the logits and boxes of every decoder layer, with the matching passed as
    ``indices`` (frozen) *and* checked unchanged at every perturbed point, so it is also the
    gradient of the unfrozen loss there. Boxes keep ``MARGIN`` away from the kinks of L1 and
    GIoU (a coordinate equal to its target's, touching edges).
(c) The values (and the gradients, by autograd) equal those of Deformable DETR's
    ``SetCriterion`` re-implemented in torch, with the same matching: focal loss with its
    ``mean(1).sum() / num_boxes * Q``, L1, GIoU, normalisation, auxiliary layers.
(d) Edge cases: an image without boxes, a batch without any, and bad input (each error names
    the argument).

Labels are 1-based (1..K, column l - 1 of the logits); the torch references take DETR's
0-based ids, so the tests pass them ``labels - 1``.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import assume, event, given
from hypothesis import strategies as st

from scratchvision import gradcheck
from scratchvision.detection import box_convert
from scratchvision.losses import sigmoid_focal_loss, sigmoid_focal_loss_backward
from scratchvision.models.set_criterion import (DEFAULT_WEIGHTS, LOSS_NAMES, HungarianMatcher,
                                                SetCriterion, SetLoss,
                                                box_cxcywh_to_xyxy_backward)

#: a hundred finite-difference steps (1e-6) away from every kink of L1 and GIoU: each central
#: difference then stays on one smooth piece. (tests/strategies.py keeps 1e-3 for points drawn
#: one coordinate at a time; here every matched pair has twelve distances to keep, so 1e-3
#: would reject a third of the random cases)
MARGIN = 1e-4


# ============================================================================ cases

@dataclass(frozen=True)
class SetCase:
    """A batch for the criterion: ``layers`` in decoder order (the last is the final layer),
    each ``(pred_logits (N, Q, K), pred_boxes (N, Q, 4))``; ``targets`` one dict per image."""

    layers: tuple
    targets: tuple
    num_classes: int

    def outputs(self, arrays=None) -> dict:
        arrays = self.arrays() if arrays is None else arrays
        pairs = [(arrays[2 * i], arrays[2 * i + 1]) for i in range(len(self.layers))]
        out = {"pred_logits": pairs[-1][0], "pred_boxes": pairs[-1][1]}
        if len(pairs) > 1:
            out["aux_outputs"] = [{"pred_logits": lg, "pred_boxes": bx} for lg, bx in pairs[:-1]]
        return out

    def arrays(self) -> list:
        return [a for pair in self.layers for a in pair]

    def names(self) -> list:
        return [f"{part}_{i}" for i in range(len(self.layers)) for part in ("logits", "boxes")]


def random_cxcywh(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    """Normalised boxes well inside the image: centres in [0.15, 0.85], sides in [0.05, 0.5]."""
    return np.concatenate([rng.uniform(0.15, 0.85, shape + (2,)),
                           rng.uniform(0.05, 0.5, shape + (2,))], axis=-1)


@st.composite
def set_cases(draw, max_layers: int = 3, max_images: int = 2, max_queries: int = 4,
              max_classes: int = 3, max_targets: int = 3, more_targets: bool = False):
    """A random batch: N images, Q queries, K classes, 1..max_layers decoder layers, K_n <= Q
    targets per image (0 included; K_n up to Q + 2 with ``more_targets``). The values come from
    a drawn seed (hypothesis shrinks the sizes, numpy makes generic floats: no accidental
    ties)."""
    seed = draw(st.integers(0, 2 ** 32 - 1), label="seed")
    n = draw(st.integers(1, max_images), label="N")
    q = draw(st.integers(1, max_queries), label="Q")
    k = draw(st.integers(1, max_classes), label="K")
    n_layers = draw(st.integers(1, max_layers), label="layers")
    most = q + 2 if more_targets else min(q, max_targets)
    counts = draw(st.lists(st.integers(0, most), min_size=n, max_size=n), label="K_n")
    rng = np.random.default_rng(seed)
    layers = tuple((rng.normal(0, 1.5, (n, q, k)), random_cxcywh(rng, (n, q)))
                   for _ in range(n_layers))
    targets = tuple({"boxes": random_cxcywh(rng, (c,)), "labels": rng.integers(1, k + 1, c)}
                    for c in counts)
    event("an image without targets" if 0 in counts else "every image has targets")
    event("more targets than queries" if max(counts) > q else "K_n <= Q")
    return SetCase(layers, targets, k)


# ============================================================================ references

def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def scalar_giou(a, b) -> float:
    """GIoU of two (x1, y1, x2, y2) boxes, from the definition."""
    inter = (max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
             * max(0.0, min(a[3], b[3]) - max(a[1], b[1])))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    enclose = ((max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1])))
    return inter / union - (enclose - union) / enclose


def xyxy(box) -> tuple:
    cx, cy, w, h = box
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def scalar_cost(logits, box, label, tgt_box, matcher: HungarianMatcher) -> float:
    """The matching cost of one (query, target) pair, one number at a time."""
    p = sigmoid(logits[label - 1])  # labels are 1-based
    a, g = matcher.alpha, matcher.gamma
    pos = a * (1 - p) ** g * -math.log(p + 1e-8)
    neg = (1 - a) * p ** g * -math.log(1 - p + 1e-8)
    l1 = sum(abs(u - v) for u, v in zip(box, tgt_box))
    return (matcher.cost_class * (pos - neg) + matcher.cost_bbox * l1
            - matcher.cost_giou * scalar_giou(xyxy(box), xyxy(tgt_box)))


def brute_force_minimum(cost: np.ndarray) -> float:
    """The least total cost of a one-to-one assignment of min(Q, K_n) pairs."""
    q, k = cost.shape
    if q >= k:
        return min((sum(cost[rows[j], j] for j in range(k))
                    for rows in itertools.permutations(range(q), k)), default=0.0)
    return min(sum(cost[i, cols[i]] for i in range(q))
               for cols in itertools.permutations(range(k), q))


def torch_reference():
    """Deformable DETR's matcher, box ops and set criterion (labels and boxes losses), as in
    its repository (models/matcher.py, util/box_ops.py, models/segmentation.py,
    models/deformable_detr.py), single process, 0-based labels."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    from scipy.optimize import linear_sum_assignment

    def box_cxcywh_to_xyxy(x):
        x_c, y_c, w, h = x.unbind(-1)
        return torch.stack([(x_c - 0.5 * w), (y_c - 0.5 * h),
                            (x_c + 0.5 * w), (y_c + 0.5 * h)], dim=-1)

    def box_area(boxes):
        return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])

    def box_iou(boxes1, boxes2):
        area1, area2 = box_area(boxes1), box_area(boxes2)
        lt = torch.max(boxes1[:, None, :2], boxes2[:, :2])
        rb = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
        wh = (rb - lt).clamp(min=0)
        inter = wh[:, :, 0] * wh[:, :, 1]
        union = area1[:, None] + area2 - inter
        return inter / union, union

    def generalized_box_iou(boxes1, boxes2):
        assert (boxes1[:, 2:] >= boxes1[:, :2]).all()
        assert (boxes2[:, 2:] >= boxes2[:, :2]).all()
        iou, union = box_iou(boxes1, boxes2)
        lt = torch.min(boxes1[:, None, :2], boxes2[:, :2])
        rb = torch.max(boxes1[:, None, 2:], boxes2[:, 2:])
        wh = (rb - lt).clamp(min=0)
        area = wh[:, :, 0] * wh[:, :, 1]
        return iou - (area - union) / area

    def matcher_costs(outputs, targets, cost_class=2, cost_bbox=5, cost_giou=2):
        with torch.no_grad():
            bs, num_queries = outputs["pred_logits"].shape[:2]
            out_prob = outputs["pred_logits"].flatten(0, 1).sigmoid()
            out_bbox = outputs["pred_boxes"].flatten(0, 1)
            tgt_ids = torch.cat([v["labels"] for v in targets])
            tgt_bbox = torch.cat([v["boxes"] for v in targets])
            alpha, gamma = 0.25, 2.0
            neg_cost_class = (1 - alpha) * (out_prob ** gamma) * (-(1 - out_prob + 1e-8).log())
            pos_cost_class = alpha * ((1 - out_prob) ** gamma) * (-(out_prob + 1e-8).log())
            cost_class_ = pos_cost_class[:, tgt_ids] - neg_cost_class[:, tgt_ids]
            cost_bbox_ = torch.cdist(out_bbox, tgt_bbox, p=1)
            cost_giou_ = -generalized_box_iou(box_cxcywh_to_xyxy(out_bbox),
                                              box_cxcywh_to_xyxy(tgt_bbox))
            C = cost_bbox * cost_bbox_ + cost_class * cost_class_ + cost_giou * cost_giou_
            C = C.view(bs, num_queries, -1).cpu()
            sizes = [len(v["boxes"]) for v in targets]
            return [c[i] for i, c in enumerate(C.split(sizes, -1))]

    def matcher(outputs, targets):
        return [tuple(torch.as_tensor(x, dtype=torch.int64) for x in linear_sum_assignment(c))
                for c in matcher_costs(outputs, targets)]

    def sigmoid_focal_loss(inputs, targets, num_boxes, alpha=0.25, gamma=2):
        prob = inputs.sigmoid()
        ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
        p_t = prob * targets + (1 - prob) * (1 - targets)
        loss = ce_loss * ((1 - p_t) ** gamma)
        if alpha >= 0:
            alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
            loss = alpha_t * loss
        return loss.mean(1).sum() / num_boxes

    def src_permutation_idx(indices):
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        src_idx = torch.cat([src for (src, _) in indices])
        return batch_idx, src_idx

    def loss_labels(outputs, targets, indices, num_boxes, num_classes, focal_alpha):
        src_logits = outputs["pred_logits"]
        idx = src_permutation_idx(indices)
        target_classes_o = torch.cat([t["labels"][J] for t, (_, J) in zip(targets, indices)])
        target_classes = torch.full(src_logits.shape[:2], num_classes, dtype=torch.int64)
        target_classes[idx] = target_classes_o
        target_classes_onehot = torch.zeros(
            [src_logits.shape[0], src_logits.shape[1], src_logits.shape[2] + 1],
            dtype=src_logits.dtype, layout=src_logits.layout, device=src_logits.device)
        target_classes_onehot.scatter_(2, target_classes.unsqueeze(-1), 1)
        target_classes_onehot = target_classes_onehot[:, :, :-1]
        loss_ce = sigmoid_focal_loss(src_logits, target_classes_onehot, num_boxes,
                                     alpha=focal_alpha, gamma=2) * src_logits.shape[1]
        return {"loss_ce": loss_ce}

    def loss_boxes(outputs, targets, indices, num_boxes):
        idx = src_permutation_idx(indices)
        src_boxes = outputs["pred_boxes"][idx]
        target_boxes = torch.cat([t["boxes"][i] for t, (_, i) in zip(targets, indices)], dim=0)
        loss_bbox = F.l1_loss(src_boxes, target_boxes, reduction="none")
        loss_giou = 1 - torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(src_boxes),
                                                       box_cxcywh_to_xyxy(target_boxes)))
        return {"loss_bbox": loss_bbox.sum() / num_boxes,
                "loss_giou": loss_giou.sum() / num_boxes}

    def criterion(outputs, targets, num_classes, focal_alpha=0.25, indices_per_layer=None):
        """Deformable DETR's SetCriterion.forward; ``indices_per_layer`` in decoder order
        (aux layers, then the last) replaces the matcher's when given."""
        layers = list(outputs.get("aux_outputs", [])) + [outputs]
        if indices_per_layer is None:
            indices_per_layer = [matcher(layer, targets) for layer in layers]
        num_boxes = sum(len(t["labels"]) for t in targets)
        num_boxes = torch.clamp(torch.as_tensor([num_boxes], dtype=torch.float), min=1).item()
        losses = {}
        for i, (layer, indices) in enumerate(zip(layers, indices_per_layer)):
            suffix = "" if i == len(layers) - 1 else f"_{i}"
            parts = {**loss_labels(layer, targets, indices, num_boxes, num_classes,
                                   focal_alpha),
                     **loss_boxes(layer, targets, indices, num_boxes)}
            losses.update({k + suffix: v for k, v in parts.items()})
        return losses

    return torch, matcher_costs, matcher, criterion


def torch_inputs(torch, case: SetCase):
    """The case as leaf float64 tensors (requires_grad) and DETR's 0-based targets."""
    tensors = [torch.tensor(a, requires_grad=True) for a in case.arrays()]
    targets = [{"boxes": torch.tensor(t["boxes"]), "labels": torch.tensor(t["labels"] - 1)}
               for t in case.targets]
    return tensors, case.outputs(tensors), targets


def torch_indices(torch, indices):
    return [[(torch.as_tensor(src), torch.as_tensor(tgt)) for src, tgt in layer]
            for layer in indices]


# ============================================================================ (a) the matcher

def assert_valid_matching(matching, cost: np.ndarray) -> None:
    src, tgt = matching
    q, k = cost.shape
    assert src.dtype == np.int64 and tgt.dtype == np.int64
    assert len(src) == len(tgt) == min(q, k)
    assert len(set(src.tolist())) == len(src) and len(set(tgt.tolist())) == len(tgt)
    assert np.all(np.diff(src) > 0)  # sorted, as scipy returns the rows


@given(case=set_cases(max_layers=1, max_queries=5, max_classes=3, max_targets=4,
                      more_targets=True))
def test_matcher_finds_the_brute_force_minimum(case):
    matcher = HungarianMatcher()
    outputs, targets = case.outputs(), list(case.targets)
    costs = matcher.cost_matrices(outputs, targets)
    matching = matcher(outputs, targets)
    for n, (cost, (src, tgt), target) in enumerate(zip(costs, matching, targets)):
        logits, boxes = outputs["pred_logits"][n], outputs["pred_boxes"][n]
        # every entry of the cost matrix, from the scalar definition
        expected = np.array([[scalar_cost(logits[i], boxes[i], label, tgt_box, matcher)
                              for tgt_box, label in zip(target["boxes"], target["labels"])]
                             for i in range(len(boxes))]).reshape(cost.shape)
        np.testing.assert_allclose(cost, expected, rtol=1e-12, atol=1e-12)
        assert_valid_matching((src, tgt), cost)
        assert cost[src, tgt].sum() == pytest.approx(brute_force_minimum(expected),
                                                     rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("weights", [dict(cost_class=1.0, cost_bbox=0.0, cost_giou=0.0),
                                     dict(cost_class=0.0, cost_bbox=1.0, cost_giou=0.0),
                                     dict(cost_class=0.0, cost_bbox=0.0, cost_giou=1.0),
                                     dict(cost_class=3.0, cost_bbox=0.5, cost_giou=1.5,
                                          alpha=0.5, gamma=1.0)])
@given(case=set_cases(max_layers=1, max_queries=4, max_targets=4))
def test_matcher_with_other_weights_finds_the_brute_force_minimum(weights, case):
    matcher = HungarianMatcher(**weights)
    outputs, targets = case.outputs(), list(case.targets)
    for cost, matching in zip(matcher.cost_matrices(outputs, targets),
                              matcher(outputs, targets)):
        assert_valid_matching(matching, cost)
        assert cost[matching].sum() == pytest.approx(brute_force_minimum(cost), rel=1e-12,
                                                     abs=1e-12)


@given(case=set_cases(max_layers=1, max_images=3, max_queries=6, max_classes=4,
                      max_targets=5))
def test_matcher_matches_deformable_detr_in_torch(case):
    torch, matcher_costs, detr_matcher, _ = torch_reference()
    _, outputs_t, targets_t = torch_inputs(torch, case)
    outputs, targets = case.outputs(), list(case.targets)
    matcher = HungarianMatcher()
    for ours, theirs in zip(matcher.cost_matrices(outputs, targets),
                            matcher_costs(outputs_t, targets_t)):
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-12, atol=1e-12)
    for (src, tgt), (src_t, tgt_t) in zip(matcher(outputs, targets),
                                          detr_matcher(outputs_t, targets_t)):
        np.testing.assert_array_equal(src, src_t.numpy())
        np.testing.assert_array_equal(tgt, tgt_t.numpy())


def test_matcher_maps_label_l_to_column_l_minus_1():
    """With only the class cost, the query confident in column l - 1 takes the target of
    label l, wherever the boxes are."""
    logits = np.full((1, 3, 3), -6.0)
    logits[0, 0, 2] = logits[0, 1, 0] = logits[0, 2, 1] = 6.0  # queries 0, 1, 2: columns 2, 0, 1
    boxes = random_cxcywh(np.random.default_rng(0), (1, 3))
    targets = [{"boxes": boxes[0, ::-1].copy(), "labels": np.array([1, 2, 3])}]
    (src, tgt), = HungarianMatcher(1.0, 0.0, 0.0)({"pred_logits": logits,
                                                     "pred_boxes": boxes}, targets)
    assert dict(zip(src.tolist(), tgt.tolist())) == {1: 0, 2: 1, 0: 2}


def test_matcher_on_an_image_without_targets_returns_empty_int64_arrays():
    case = SetCase(((np.zeros((2, 3, 2)), random_cxcywh(np.random.default_rng(1), (2, 3))),),
                   ({"boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64)},
                    {"boxes": [], "labels": []}), 2)
    for src, tgt in HungarianMatcher()(case.outputs(), list(case.targets)):
        assert src.shape == tgt.shape == (0,) and src.dtype == tgt.dtype == np.int64


# ============================================================================ (b) gradients

def kink_distance(case: SetCase, indices) -> float:
    """How close any matched (query, target) pair comes to a kink of the L1 or GIoU loss: a
    coordinate equal to its target's (cxcywh for L1; xyxy for GIoU's min / max ties), or an
    edge touching the target's opposite edge (the intersection's mask)."""
    closest = np.inf
    for (_, boxes), matching in zip(case.layers, indices):
        for n, (src, tgt) in enumerate(matching):
            pred = boxes[n][src]
            true = np.asarray(case.targets[n]["boxes"])[tgt]
            pred_xyxy, true_xyxy = xyxy(pred.T), xyxy(true.T)
            gaps = [pred - true]
            for axis in range(2):
                lo, hi = pred_xyxy[axis], pred_xyxy[axis + 2]
                lo_g, hi_g = true_xyxy[axis], true_xyxy[axis + 2]
                gaps += [lo - lo_g, hi - hi_g, hi - lo_g, lo - hi_g]
            closest = min(closest, min(np.abs(g).min(initial=np.inf) for g in gaps))
    return closest


def same_matching(a, b) -> bool:
    return all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1])
               for la, lb in zip(a, b) for x, y in zip(la, lb))


def check_total_loss_gradient(case: SetCase, criterion: SetCriterion) -> None:
    """Central differences of the total loss w.r.t. every array of every layer."""
    targets = list(case.targets)
    frozen = criterion.match(case.outputs(), targets)

    def forward(*arrays):
        outputs = case.outputs(arrays)
        # the matching must not move under the perturbation: then the frozen loss *is* the
        # loss, and the gradient below is that of the loss itself
        assert same_matching(criterion.match(outputs, targets), frozen), "the matching moved"
        return np.asarray(criterion(outputs, targets, indices=frozen).total)

    def backward(g, *arrays):
        grads = criterion(case.outputs(arrays), targets, indices=frozen).grads
        layers = grads.get("aux_outputs", []) + [grads]
        return tuple(float(g) * layer[key] for layer in layers
                     for key in ("pred_logits", "pred_boxes"))

    inputs = dict(zip(case.names(), case.arrays()))
    gradcheck(forward, backward, inputs, seed=1).raise_if_failed()


@given(case=set_cases(max_layers=3, max_images=2, max_queries=4, max_classes=3,
                      max_targets=3))
def test_total_loss_gradient_matches_finite_differences(case):
    criterion = SetCriterion(case.num_classes, HungarianMatcher())
    assume(kink_distance(case, criterion.match(case.outputs(), list(case.targets))) > MARGIN)
    check_total_loss_gradient(case, criterion)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("weight_dict, focal_alpha", [(None, 0.25),
                                                      ({"loss_ce": 1.5, "loss_giou": 0.5}, -1.0)])
def test_total_loss_gradient_of_a_full_batch_matches_finite_differences(seed, weight_dict,
                                                                        focal_alpha):
    """Three layers, two images of 3 and 2 targets, 5 queries: every part of the loss."""
    case = _fixed_case(seed=seed)
    criterion = SetCriterion(3, HungarianMatcher(), weight_dict, focal_alpha)
    assert kink_distance(case, criterion.match(case.outputs(), list(case.targets))) > MARGIN
    check_total_loss_gradient(case, criterion)


def test_box_conversion_backward_matches_finite_differences():
    boxes = random_cxcywh(np.random.default_rng(2), (5,))
    gradcheck(lambda b: box_convert(b, "cxcywh", "xyxy"),
              lambda g, b: (box_cxcywh_to_xyxy_backward(g),), {"boxes": boxes}
              ).raise_if_failed()


def test_gradcheck_would_catch_a_gradient_that_forgets_num_boxes():
    """The check has teeth: a classification gradient not divided by num_boxes fails it."""
    case = _fixed_case(n_layers=1)
    criterion = SetCriterion(case.num_classes, HungarianMatcher())
    targets = list(case.targets)
    frozen = criterion.match(case.outputs(), targets)
    num_boxes = sum(len(t["labels"]) for t in targets)

    def forward(*arrays):
        return np.asarray(criterion(case.outputs(arrays), targets, indices=frozen).total)

    def wrong_backward(g, *arrays):
        grads = criterion(case.outputs(arrays), targets, indices=frozen).grads
        return (float(g) * grads["pred_logits"] * num_boxes, float(g) * grads["pred_boxes"])

    report = gradcheck(forward, wrong_backward, dict(zip(case.names(), case.arrays())))
    assert not report.results["logits_0"].ok and report.results["boxes_0"].ok


def _fixed_case(seed: int = 3, n_layers: int = 3) -> SetCase:
    """Two images, 5 queries, 3 classes: one image with 3 targets, one with 2."""
    rng = np.random.default_rng(seed)
    layers = tuple((rng.normal(0, 1.5, (2, 5, 3)), random_cxcywh(rng, (2, 5)))
                   for _ in range(n_layers))
    targets = ({"boxes": random_cxcywh(rng, (3,)), "labels": np.array([1, 3, 3])},
               {"boxes": random_cxcywh(rng, (2,)), "labels": np.array([2, 1])})
    return SetCase(layers, targets, 3)


# ============================================================================ (c) torch oracle

def assert_matches_torch(case: SetCase, criterion: SetCriterion, result: SetLoss, indices):
    torch, _, _, detr_criterion = torch_reference()
    tensors, outputs_t, targets_t = torch_inputs(torch, case)
    losses = detr_criterion(outputs_t, targets_t, case.num_classes, criterion.focal_alpha,
                            torch_indices(torch, indices))
    assert set(losses) == set(result.parts)
    for name, value in losses.items():
        assert result.parts[name] == pytest.approx(value.item(), rel=1e-12, abs=1e-12), name
    weights = criterion.weight_dict
    total = sum(weights.get(name.rsplit("_", 1)[0] if name[-1].isdigit() else name, 0.0) * v
                for name, v in losses.items())
    assert result.total == pytest.approx(total.item(), rel=1e-12, abs=1e-12)
    total.backward()
    grads = result.grads.get("aux_outputs", []) + [result.grads]
    ours = [layer[key] for layer in grads for key in ("pred_logits", "pred_boxes")]
    for name, tensor, grad in zip(case.names(), tensors, ours):
        np.testing.assert_allclose(grad, tensor.grad.numpy(), rtol=1e-10, atol=1e-12,
                                   err_msg=name)


@given(case=set_cases(max_layers=3, max_images=3, max_queries=6, max_classes=4,
                      max_targets=5))
def test_losses_and_gradients_match_deformable_detr_in_torch(case):
    torch, _, detr_matcher, _ = torch_reference()
    criterion = SetCriterion(case.num_classes, HungarianMatcher())
    targets = list(case.targets)
    indices = criterion.match(case.outputs(), targets)
    # the same matching as Deformable DETR's own matcher
    _, outputs_t, targets_t = torch_inputs(torch, case)
    layers_t = list(outputs_t.get("aux_outputs", [])) + [outputs_t]
    for ours, layer_t in zip(indices, layers_t):
        theirs = detr_matcher(layer_t, targets_t)
        assert same_matching([ours], [[(s.numpy(), t.numpy()) for s, t in theirs]])
    assert_matches_torch(case, criterion, criterion(case.outputs(), targets), indices)


@pytest.mark.parametrize("weight_dict, focal_alpha", [(None, 0.25),
                                                      ({"loss_ce": 1.0, "loss_giou": 3.0}, 0.5),
                                                      ({"loss_bbox": 1.0}, -1.0)])
def test_weights_and_alpha_match_deformable_detr_in_torch(weight_dict, focal_alpha):
    case = _fixed_case(seed=4)
    criterion = SetCriterion(case.num_classes, HungarianMatcher(), weight_dict, focal_alpha)
    targets = list(case.targets)
    indices = criterion.match(case.outputs(), targets)
    assert_matches_torch(case, criterion, criterion(case.outputs(), targets), indices)


def test_an_imposed_matching_matches_deformable_detr_in_torch():
    """Any one-to-one matching (here: not the optimal one) gives DETR's losses for it."""
    case = _fixed_case(seed=5, n_layers=2)
    criterion = SetCriterion(case.num_classes, HungarianMatcher())
    targets = list(case.targets)
    indices = [[(np.array([4, 0, 2]), np.array([0, 1, 2])), (np.array([1, 3]), np.array([1, 0]))],
               [(np.array([0, 1, 2]), np.array([2, 1, 0])), (np.array([0, 4]), np.array([0, 1]))]]
    assert not same_matching(indices, criterion.match(case.outputs(), targets))
    result = criterion(case.outputs(), targets, indices=indices)
    assert_matches_torch(case, criterion, result, indices)


# ============================================================================ (d) edge cases

def test_image_without_boxes_matches_torch_and_gets_no_box_gradient():
    case = _fixed_case(seed=6)
    case = SetCase(case.layers, (case.targets[0], {"boxes": np.zeros((0, 4)),
                                                   "labels": np.zeros(0, np.int64)}), 3)
    criterion = SetCriterion(3, HungarianMatcher())
    targets = list(case.targets)
    indices = criterion.match(case.outputs(), targets)
    result = criterion(case.outputs(), targets)
    assert_matches_torch(case, criterion, result, indices)
    for layer in result.grads["aux_outputs"] + [result.grads]:
        assert not layer["pred_boxes"][1].any()  # the empty image: no box loss
        assert layer["pred_logits"][1].any()  # but its queries learn "no object"


def test_batch_without_any_box():
    empty = {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64)}
    case = SetCase(_fixed_case(seed=7).layers, (empty, empty), 3)
    criterion = SetCriterion(3, HungarianMatcher())
    result = criterion(case.outputs(), [empty, empty])
    for i, (logits, _) in enumerate(case.layers):
        suffix = "" if i == len(case.layers) - 1 else f"_{i}"
        # num_boxes is clamped to 1: the focal loss of every logit against 0, summed
        focal = float(sigmoid_focal_loss(logits, np.zeros_like(logits), reduction="sum"))
        assert result.parts["loss_ce" + suffix] == pytest.approx(focal, rel=1e-12)
        assert result.parts["loss_bbox" + suffix] == result.parts["loss_giou" + suffix] == 0
    for layer, (logits, _) in zip(result.grads["aux_outputs"] + [result.grads], case.layers):
        assert not layer["pred_boxes"].any()
        expected = sigmoid_focal_loss_backward(DEFAULT_WEIGHTS["loss_ce"], logits,
                                               np.zeros_like(logits), reduction="sum")
        np.testing.assert_allclose(layer["pred_logits"], expected.grad_inputs, rtol=1e-12)
    assert_matches_torch(case, criterion, result, criterion.match(case.outputs(),
                                                                  [empty, empty]))


def test_empty_batch_and_zero_queries_give_zero_losses():
    criterion = SetCriterion(2, HungarianMatcher())
    result = criterion({"pred_logits": np.zeros((0, 4, 2)), "pred_boxes": np.zeros((0, 4, 4))},
                       [])
    assert result.total == 0 and result.grads["pred_logits"].shape == (0, 4, 2)
    target = {"boxes": np.array([[0.5, 0.5, 0.2, 0.2]]), "labels": np.array([1])}
    result = criterion({"pred_logits": np.zeros((1, 0, 2)), "pred_boxes": np.zeros((1, 0, 4))},
                       [target])
    assert result.total == 0 and result.grads["pred_boxes"].shape == (1, 0, 4)


def test_result_structure_and_names():
    case = _fixed_case(seed=8)
    result = SetCriterion(3, HungarianMatcher())(case.outputs(), list(case.targets))
    parts, total, grads = result
    assert set(parts) == {name + s for s in ("", "_0", "_1") for name in LOSS_NAMES}
    assert all(isinstance(v, float) for v in parts.values()) and isinstance(total, float)
    assert total == pytest.approx(sum(DEFAULT_WEIGHTS[name] * parts[name + s]
                                      for s in ("", "_0", "_1") for name in LOSS_NAMES))
    assert set(grads) == {"pred_logits", "pred_boxes", "aux_outputs"}
    assert len(grads["aux_outputs"]) == 2
    for layer, (logits, boxes) in zip(grads["aux_outputs"] + [grads], case.layers):
        assert layer["pred_logits"].shape == logits.shape
        assert layer["pred_boxes"].shape == boxes.shape


def test_unmatched_queries_get_no_box_gradient():
    case = _fixed_case(seed=9, n_layers=1)
    criterion = SetCriterion(3, HungarianMatcher())
    (matching,) = criterion.match(case.outputs(), list(case.targets))
    grads = criterion(case.outputs(), list(case.targets)).grads
    for n, (src, _) in enumerate(matching):
        unmatched = np.setdiff1d(np.arange(5), src)
        assert not grads["pred_boxes"][n, unmatched].any()
        assert grads["pred_boxes"][n, src].any(axis=1).all()


def test_aux_loss_false_ignores_the_earlier_layers():
    case = _fixed_case(seed=10)
    targets = list(case.targets)
    with_aux = SetCriterion(3, HungarianMatcher())(case.outputs(), targets)
    without = SetCriterion(3, HungarianMatcher(), aux_loss=False)(case.outputs(), targets)
    assert set(without.parts) == set(LOSS_NAMES)
    assert without.parts == {k: with_aux.parts[k] for k in LOSS_NAMES}
    np.testing.assert_array_equal(without.grads["pred_boxes"], with_aux.grads["pred_boxes"])
    for layer in without.grads["aux_outputs"]:
        assert not layer["pred_logits"].any() and not layer["pred_boxes"].any()


def test_a_part_without_weight_is_reported_but_not_in_the_total():
    case = _fixed_case(seed=11, n_layers=1)
    targets = list(case.targets)
    full = SetCriterion(3, HungarianMatcher())(case.outputs(), targets)
    no_giou = SetCriterion(3, HungarianMatcher(), {"loss_ce": 2, "loss_bbox": 5})(
        case.outputs(), targets)
    assert no_giou.parts == full.parts
    assert no_giou.total == pytest.approx(full.total - 2 * full.parts["loss_giou"])


def test_float32_gives_float32_gradients_close_to_float64():
    case = _fixed_case(seed=12)
    targets = list(case.targets)
    criterion = SetCriterion(3, HungarianMatcher())
    exact = criterion(case.outputs(), targets)
    single = criterion(case.outputs([a.astype(np.float32) for a in case.arrays()]), targets)
    assert single.total == pytest.approx(exact.total, rel=1e-5)
    for layer32, layer64 in zip(single.grads["aux_outputs"] + [single.grads],
                                exact.grads["aux_outputs"] + [exact.grads]):
        for key in ("pred_logits", "pred_boxes"):
            assert layer32[key].dtype == np.float32
            np.testing.assert_allclose(layer32[key], layer64[key], rtol=1e-4, atol=1e-6)


def test_inputs_are_not_modified():
    case = _fixed_case(seed=13)
    arrays = case.arrays()
    copies = [a.copy() for a in arrays]
    target_copies = [{k: np.array(v, copy=True) for k, v in t.items()} for t in case.targets]
    SetCriterion(3, HungarianMatcher())(case.outputs(arrays), list(case.targets))
    for a, c in zip(arrays, copies):
        np.testing.assert_array_equal(a, c)
    for t, c in zip(case.targets, target_copies):
        for k in t:
            np.testing.assert_array_equal(t[k], c[k])


def _bad(**changes):
    """Outputs and targets of a valid one-image batch, with ``changes`` applied."""
    outputs = {"pred_logits": np.zeros((1, 3, 2)),
               "pred_boxes": np.full((1, 3, 4), 0.3),
               "aux_outputs": [{"pred_logits": np.zeros((1, 3, 2)),
                                "pred_boxes": np.full((1, 3, 4), 0.3)}]}
    targets = [{"boxes": np.array([[0.5, 0.5, 0.2, 0.2]]), "labels": np.array([1])}]
    for key, value in changes.items():
        if key == "targets":
            targets = value
        elif key.startswith("target_"):
            targets[0][key[len("target_"):]] = value
        elif key.startswith("aux_pred_"):
            outputs["aux_outputs"][0][key[len("aux_"):]] = value
        else:
            outputs[key] = value
    return outputs, targets


@pytest.mark.parametrize("changes, error, names", [
    (dict(pred_logits=np.zeros((3, 2))), ValueError, "outputs['pred_logits']"),
    (dict(pred_logits=np.zeros((1, 3, 2), np.int64)), TypeError, "outputs['pred_logits']"),
    (dict(pred_logits=np.full((1, 3, 2), np.nan)), ValueError, "outputs['pred_logits']"),
    (dict(pred_logits=np.zeros((1, 3, 4))), ValueError, "num_classes"),
    (dict(pred_boxes=np.zeros((1, 3, 2))), ValueError, "outputs['pred_boxes']"),
    (dict(pred_boxes=np.zeros((1, 4, 4))), ValueError, "outputs['pred_boxes']"),
    (dict(pred_boxes=np.full((1, 3, 4), -0.1)), ValueError, "outputs['pred_boxes']"),
    (dict(pred_boxes=np.full((1, 3, 4), np.inf)), ValueError, "outputs['pred_boxes']"),
    (dict(aux_pred_logits=np.zeros((2, 3, 2))), ValueError, "outputs['aux_outputs'][0]"),
    (dict(aux_pred_boxes=np.zeros((1, 3, 5))), ValueError,
     "outputs['aux_outputs'][0]['pred_boxes']"),
    (dict(aux_outputs={"pred_logits": 1}), TypeError, "outputs['aux_outputs']"),
    (dict(enc_outputs={}), ValueError, "enc_outputs"),
    (dict(targets=[]), ValueError, "targets"),
    (dict(targets={"boxes": 1}), TypeError, "targets"),
    (dict(targets=[{"boxes": np.zeros((0, 4))}]), ValueError, "targets[0]"),
    (dict(target_labels=np.array([0])), ValueError, "targets[0]['labels']"),
    (dict(target_labels=np.array([3])), ValueError, "targets[0]['labels']"),
    (dict(target_labels=np.array([1.0])), TypeError, "targets[0]['labels']"),
    (dict(target_labels=np.array([1, 2])), ValueError, "targets[0]['labels']"),
    (dict(target_boxes=np.array([[0.5, 0.5, 0.2]])), ValueError, "targets[0]['boxes']"),
    (dict(target_boxes=np.array([[0.5, 0.5, 0.0, 0.2]])), ValueError, "targets[0]['boxes']"),
    (dict(target_boxes=np.array([[1, 1, 1, 1]])), TypeError, "targets[0]['boxes']"),
    (dict(target_boxes=np.array([[0.5, np.nan, 0.1, 0.2]])), ValueError,
     "targets[0]['boxes']"),
])
def test_bad_input_raises_an_error_naming_the_argument(changes, error, names):
    outputs, targets = _bad(**changes)
    with pytest.raises(error, match=re.escape(names)):
        SetCriterion(2, HungarianMatcher())(outputs, targets)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_matching_cost_overflow_is_reported():
    outputs, targets = _bad(pred_boxes=np.full((1, 3, 4), 1e200))
    with pytest.raises(ValueError, match="pred_boxes"):
        HungarianMatcher()(outputs, targets)


@pytest.mark.parametrize("indices, error, names", [
    ([[(np.array([0]), np.array([0]))]], ValueError,
     "indices must hold one matching per decoder layer"),
    ([[(np.array([0]), np.array([0]))], []], ValueError, "indices[1]"),
    ([[(np.array([0]), np.array([0]))], [(np.array([0]),)]], ValueError, "indices[1][0]"),
    ([[(np.array([0]), np.array([0]))], [(np.array([0.0]), np.array([0]))]], TypeError,
     "indices[1][0][0]"),
    ([[(np.array([0]), np.array([0]))], [(np.array([0, 1]), np.array([0]))]], ValueError,
     "indices[1][0][0]"),
    ([[(np.array([3]), np.array([0]))], [(np.array([0]), np.array([0]))]], ValueError,
     "indices[0][0]"),
    ([[(np.array([0]), np.array([1]))], [(np.array([0]), np.array([0]))]], ValueError,
     "indices[0][0]"),
    ([[(np.array([0, 0]), np.array([0, 0]))], [(np.array([0]), np.array([0]))]], ValueError,
     "indices[0][0]"),
])
def test_bad_indices_raise_an_error_naming_them(indices, error, names):
    outputs, targets = _bad()
    with pytest.raises(error, match=re.escape(names)):
        SetCriterion(2, HungarianMatcher())(outputs, targets, indices=indices)


@pytest.mark.parametrize("make, error, names", [
    (lambda: HungarianMatcher(cost_class=-1.0), ValueError, "cost_class"),
    (lambda: HungarianMatcher(cost_bbox=math.inf), ValueError, "cost_bbox"),
    (lambda: HungarianMatcher(cost_giou="2"), TypeError, "cost_giou"),
    (lambda: HungarianMatcher(0.0, 0.0, 0.0), ValueError, "can't all be 0"),
    (lambda: HungarianMatcher(alpha=1.5), ValueError, "alpha"),
    (lambda: HungarianMatcher(gamma=-1.0), ValueError, "gamma"),
    (lambda: SetCriterion(0, HungarianMatcher()), ValueError, "num_classes"),
    (lambda: SetCriterion(2, "hungarian"), TypeError, "matcher"),
    (lambda: SetCriterion(2, HungarianMatcher(), {"loss_mask": 1.0}), ValueError,
     "weight_dict"),
    (lambda: SetCriterion(2, HungarianMatcher(), {"loss_ce": math.nan}), ValueError,
     "weight_dict['loss_ce']"),
    (lambda: SetCriterion(2, HungarianMatcher(), [("loss_ce", 1.0)]), TypeError, "weight_dict"),
    (lambda: SetCriterion(2, HungarianMatcher(), focal_alpha=2.0), ValueError, "focal_alpha"),
    (lambda: SetCriterion(2, HungarianMatcher(), aux_loss=1), TypeError, "aux_loss"),
])
def test_bad_settings_raise_an_error_naming_the_argument(make, error, names):
    with pytest.raises(error, match=re.escape(names)):
        make()
