"""Losses with hand-written gradients: sigmoid focal loss, cross-entropy, L1, smooth L1 and the
generalized-IoU box loss.

Each loss is a function and a ``<name>_backward(grad, ...same arguments...)`` that returns a
NamedTuple of gradients, one per differentiable argument. The maths -- every forward formula
and every gradient, step by step -- is on the derivation page ``docs/derivations/losses.md``;
the comments ``# eq. (k)`` point to its numbered equations, and ``# NOTE:`` marks every point
where the loss is not differentiable and says which one-sided gradient is returned there.

Semantics are torch's and torchvision's, argument for argument:

* :func:`sigmoid_focal_loss` -- ``torchvision.ops.sigmoid_focal_loss`` (soft targets too);
* :func:`cross_entropy` -- ``torch.nn.functional.cross_entropy`` with class-index targets
  (class weights, ``ignore_index``, label smoothing);
* :func:`l1_loss`, :func:`smooth_l1_loss` -- ``torch.nn.functional``'s;
* :func:`generalized_box_iou_loss` -- ``torchvision.ops.generalized_box_iou_loss``.

Reductions (eqs. 1-2) are ``"none"`` (one loss per element), ``"sum"`` and ``"mean"``, with
torch's edge cases: the mean of an empty loss is ``nan`` (0 / 0), except for the GIoU loss,
whose torchvision code returns 0 for it; a weighted cross-entropy's mean divides by the sum of
the weights of the targets that are not ignored. ``"mean"`` and ``"sum"`` return a 0-d array;
their backward takes ``grad`` as a 0-d array or as a plain number.

Dtypes follow the design page (docs/design.md): float32 in gives float32 out (arrays that meet
are brought to their common float type), an integer array where a float one is needed is a
``TypeError``, inputs are never modified and any view or layout is accepted. Unlike torch, the
shapes of ``input`` and ``target`` must be equal (torch broadcasts them with a warning).
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np

from . import _checks

__all__ = ["sigmoid_focal_loss", "sigmoid_focal_loss_backward", "FocalLossGrads",
           "cross_entropy", "cross_entropy_backward", "CrossEntropyGrads",
           "l1_loss", "l1_loss_backward", "smooth_l1_loss", "smooth_l1_loss_backward",
           "RegressionLossGrads",
           "generalized_box_iou_loss", "generalized_box_iou_loss_backward", "GIoULossGrads",
           "REDUCTIONS"]

#: the reductions every loss accepts, as in torch
REDUCTIONS = ("none", "mean", "sum")


class FocalLossGrads(NamedTuple):
    """Gradients of :func:`sigmoid_focal_loss`: ``grad_inputs`` and ``grad_targets``, both of
    the shape of ``inputs``."""

    grad_inputs: np.ndarray
    grad_targets: np.ndarray


class CrossEntropyGrads(NamedTuple):
    """Gradient of :func:`cross_entropy`: ``grad_input``, shape of ``input`` ((N, C, ...) or
    (C,)). The target holds indices and the weights are constants: neither has a gradient."""

    grad_input: np.ndarray


class RegressionLossGrads(NamedTuple):
    """Gradients of :func:`l1_loss` and :func:`smooth_l1_loss`: ``grad_input`` and
    ``grad_target``, both of the shape of ``input`` (and ``grad_target = -grad_input``)."""

    grad_input: np.ndarray
    grad_target: np.ndarray


class GIoULossGrads(NamedTuple):
    """Gradients of :func:`generalized_box_iou_loss`: ``grad_boxes1`` and ``grad_boxes2``,
    both (..., 4) like the boxes."""

    grad_boxes1: np.ndarray
    grad_boxes2: np.ndarray


# ----------------------------------------------------------------------------- reductions

def _reduce(loss: np.ndarray, reduction: str, denominator=None) -> np.ndarray:
    """Apply ``reduction`` to the per-element ``loss``; ``"mean"`` divides by ``denominator``
    (default: the number of elements)."""
    # --8<-- [start:reduce]
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return np.asarray(total)  # eq. (1), a 0-d array of the loss's dtype
    count = loss.size if denominator is None else denominator
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(total / count)  # eq. (1); empty: 0 / 0 = nan, as torch
    # --8<-- [end:reduce]


def _grad_array(grad, shape: tuple, dtype) -> np.ndarray:
    """Validate the upstream gradient: a float array of the loss output's ``shape``, or a plain
    number when that shape is () (it then takes the inputs' float type)."""
    if isinstance(grad, numbers.Number) and not isinstance(grad, np.ndarray):
        grad = _checks.real_number(grad, "grad")  # a bool or a complex number: TypeError
    else:
        grad = _checks.float_array(grad, "grad")
        dtype = np.result_type(dtype, grad.dtype)
    grad = np.asarray(grad, dtype=dtype)
    _checks.shape_equals(grad, "grad", shape, "the shape of the loss output")
    return grad


def _upstream(grad, reduction: str, loss_shape: tuple, dtype, denominator=None) -> np.ndarray:
    """The gradient reaching each element of the unreduced loss (shape ``loss_shape``)."""
    grad = _grad_array(grad, loss_shape if reduction == "none" else (), dtype)
    # --8<-- [start:reduce_backward]
    if reduction == "none":
        return grad  # eq. (2): each element has its own upstream gradient
    if reduction == "mean":
        count = math.prod(loss_shape) if denominator is None else denominator
        with np.errstate(invalid="ignore", divide="ignore"):
            grad = grad / count  # eq. (2): every element gets g / n
    return np.broadcast_to(grad, loss_shape)  # eq. (2): "sum" gives every element g
    # --8<-- [end:reduce_backward]


# ----------------------------------------------------------------------------- focal loss

def _focal_args(inputs, targets, alpha, gamma, reduction):
    inputs = _checks.float_array(inputs, "inputs")
    targets = _checks.float_array(targets, "targets")
    _checks.shape_equals(targets, "targets", inputs.shape, "the shape of inputs")
    alpha = _checks.real_number(alpha, "alpha", allow_nan=False)
    if not (0.0 <= alpha <= 1.0 or alpha == -1.0):
        raise ValueError(f"alpha must be in [0, 1], or -1 to switch the weighting off "
                         f"(torchvision's rule), got {alpha!r}")
    gamma = _checks.number_in_range(gamma, "gamma", 0.0, math.inf)
    _checks.choice(reduction, "reduction", REDUCTIONS)
    inputs, targets = _checks.common_float(("inputs", inputs), ("targets", targets))
    return inputs, targets, alpha, gamma


def _sigmoid_pair(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``p = sigmoid(x)`` and ``q = 1 - p = sigmoid(-x)``, eq. (3): ``exp`` only ever sees
    ``-|x|``, so nothing overflows, and ``q`` is not computed as ``1 - p`` (which rounds to 0
    for x > 37 in float64, x > 17 in float32)."""
    # --8<-- [start:sigmoid]
    e = np.exp(-np.abs(x))  # in (0, 1]
    sigmoid_abs = 1 / (1 + e)  # sigmoid(|x|), in [1/2, 1]
    sigmoid_neg_abs = e / (1 + e)  # sigmoid(-|x|) = 1 - sigmoid(|x|), in (0, 1/2]
    positive = x >= 0
    p = np.where(positive, sigmoid_abs, sigmoid_neg_abs)  # eq. (3)
    q = np.where(positive, sigmoid_neg_abs, sigmoid_abs)  # eq. (3): 1 - p
    # --8<-- [end:sigmoid]
    return p, q


class _FocalTerms(NamedTuple):
    p: np.ndarray  # sigmoid(x)
    q: np.ndarray  # 1 - sigmoid(x)
    ce: np.ndarray  # binary cross-entropy with logits
    m: np.ndarray  # 1 - p_t, the modulating base
    m_gamma: np.ndarray  # (1 - p_t) ** gamma
    a_t: np.ndarray | float  # the alpha weight (1 when alpha = -1)
    loss: np.ndarray  # per element


def _focal_terms(x: np.ndarray, t: np.ndarray, alpha: float, gamma: float) -> _FocalTerms:
    # --8<-- [start:focal_forward]
    p, q = _sigmoid_pair(x)  # eq. (3)
    # eq. (4): -[t log p + (1 - t) log(1 - p)] with -log p = softplus(-x) and
    # -log(1 - p) = softplus(x); logaddexp(0, x) = log(1 + e^x) never overflows
    ce = t * np.logaddexp(0, -x) + (1 - t) * np.logaddexp(0, x)
    m = p * (1 - t) + q * t  # eq. (5): 1 - p_t, with p_t = p t + (1 - p)(1 - t)
    m_gamma = m ** gamma  # 0 ** 0 = 1, as torch
    a_t = alpha * t + (1 - alpha) * (1 - t) if alpha >= 0 else 1.0  # eq. (6)
    loss = a_t * (ce * m_gamma)  # eq. (7)
    # --8<-- [end:focal_forward]
    return _FocalTerms(p, q, ce, m, m_gamma, a_t, loss)


def sigmoid_focal_loss(inputs, targets, alpha: float = 0.25, gamma: float = 2.0,
                       reduction: str = "none") -> np.ndarray:
    """The sigmoid focal loss of RetinaNet, eqs. (3)-(7), as ``torchvision.ops.sigmoid_focal_loss``.

    ``loss = a_t * BCE(inputs, targets) * (1 - p_t) ** gamma`` elementwise, with
    ``p = sigmoid(inputs)``, ``p_t = p * targets + (1 - p) * (1 - targets)`` and
    ``a_t = alpha * targets + (1 - alpha) * (1 - targets)``. Computed without overflow or
    cancellation for any finite logit (``|inputs|`` of 1e4 included).

    Args:
        inputs: float array of any shape: the logits.
        targets: float array of the same shape: 0 / 1 labels, or soft labels in [0, 1] (values
            outside are not rejected, as in torchvision).
        alpha: weight of the positives, in [0, 1]; -1 switches the weighting off
            (torchvision rejects every other value, and so do we).
        gamma: focusing exponent, >= 0 (0 gives the alpha-weighted binary cross-entropy).
        reduction: ``"none"`` (default, as torchvision), ``"mean"`` or ``"sum"``.

    Returns:
        The shape of ``inputs`` for ``"none"``, else a 0-d array (``nan`` for the mean of an
        empty input, as torch).
    """
    inputs, targets, alpha, gamma = _focal_args(inputs, targets, alpha, gamma, reduction)
    return _reduce(_focal_terms(inputs, targets, alpha, gamma).loss, reduction)


def sigmoid_focal_loss_backward(grad, inputs, targets, alpha: float = 0.25, gamma: float = 2.0,
                                reduction: str = "none") -> FocalLossGrads:
    """Gradients of :func:`sigmoid_focal_loss` w.r.t. ``inputs`` and ``targets``, eqs. (8)-(11).

    Args:
        grad: the upstream gradient: the shape of ``inputs`` for ``"none"``, else a 0-d array
            or a number.
        inputs, targets, alpha, gamma, reduction: as for :func:`sigmoid_focal_loss`.

    Returns:
        :class:`FocalLossGrads` ``(grad_inputs, grad_targets)``, both of the shape of ``inputs``.
    """
    x, t, alpha, gamma = _focal_args(inputs, targets, alpha, gamma, reduction)
    g = _upstream(grad, reduction, x.shape, x.dtype)
    p, q, ce, m, m_gamma, a_t, _ = _focal_terms(x, t, alpha, gamma)
    # --8<-- [start:focal_backward]
    # eq. (9): k = gamma * ce * m ** (gamma - 1), written as gamma * (ce / m) * m ** gamma so
    # that a tiny m (a saturated sigmoid) cannot overflow m ** (gamma - 1).
    # NOTE: m = 0 only where the sigmoid saturates (p or 1 - p rounds to 0, |x| > ~745 in
    # float64, ~104 in float32) on a hard target; there ce = 0 too, and we return k = 0, the
    # limit of gamma * ce * m ** (gamma - 1) as m -> 0. Torch returns the same 0 for
    # gamma = 0 and gamma >= 1, but nan for 0 < gamma < 1 (0 * inf).
    # (m < 0 only for targets outside [0, 1], which torchvision accepts too)
    nonzero_m = m != 0
    k = np.where(nonzero_m, gamma * (ce / np.where(nonzero_m, m, 1)) * m_gamma, 0)
    dce_dx = p * (1 - t) - q * t  # eq. (8): p - t, exact for hard targets when p ~ 1
    dm_dx = p * q * (1 - 2 * t)  # eq. (8)
    dm_dt = q - p  # eq. (8): 1 - 2p
    da_dt = 2 * alpha - 1 if alpha >= 0 else 0.0  # eq. (8)
    grad_inputs = g * (a_t * (dce_dx * m_gamma + k * dm_dx))  # eq. (10)
    grad_targets = g * (a_t * (-x * m_gamma + k * dm_dt) + da_dt * (ce * m_gamma))  # eq. (11)
    # --8<-- [end:focal_backward]
    return FocalLossGrads(grad_inputs, grad_targets)


# ----------------------------------------------------------------------------- cross-entropy

class _CrossEntropyArgs(NamedTuple):
    z: np.ndarray  # (M, C) logits, one row per target position
    y: np.ndarray  # (M,) class indices, ignored ones replaced by 0 (a safe index)
    valid: np.ndarray  # (M,) True where the target is not ignore_index
    w: np.ndarray  # (C,) class weights (ones when weight is None)
    w_y: np.ndarray  # (M,) the weight of each target's class, 0 where ignored
    smoothing: float  # label_smoothing, epsilon
    loss_shape: tuple  # the shape of the unreduced loss: target's
    moved_shape: tuple  # input's shape with the class axis last


def _cross_entropy_args(input, target, weight, ignore_index, reduction,
                        label_smoothing) -> _CrossEntropyArgs:
    input = _checks.float_array(input, "input", min_ndim=1)
    target = np.asarray(target)
    if target.dtype.kind == "f":
        raise TypeError(f"target must be an integer array of class indices, got dtype "
                        f"{target.dtype} (class-probability targets are not supported)")
    if target.dtype.kind not in "iu":
        raise TypeError(f"target must be an integer array of class indices, got dtype "
                        f"{target.dtype}")
    class_axis = 0 if input.ndim == 1 else 1  # (C,) unbatched, else (N, C, d1, ...)
    n_classes = input.shape[class_axis]
    if n_classes == 0:
        raise ValueError(f"input must have at least one class (dimension {class_axis}), "
                         f"got shape {input.shape}")
    loss_shape = input.shape[:class_axis] + input.shape[class_axis + 1:]
    _checks.shape_equals(target, "target", loss_shape,
                         f"input's shape {input.shape} without the class dimension")
    if weight is not None:
        weight = _checks.float_array(weight, "weight", ndim=1)
        _checks.shape_equals(weight, "weight", (n_classes,), "one weight per class")
    ignore_index = _checks.integer(ignore_index, "ignore_index")
    _checks.choice(reduction, "reduction", REDUCTIONS)
    smoothing = _checks.number_in_range(label_smoothing, "label_smoothing", 0.0, 1.0)

    y = target.reshape(-1).astype(np.int64)
    valid = y != ignore_index
    out_of_range = valid & ((y < 0) | (y >= n_classes))
    if out_of_range.any():
        raise ValueError(f"target must hold class indices in [0, {n_classes}) or "
                         f"ignore_index ({ignore_index}), got {y[out_of_range][0]}")
    input, weight = _checks.common_float(("input", input), ("weight", weight))
    w = np.ones(n_classes, dtype=input.dtype) if weight is None else weight
    y = np.where(valid, y, 0)
    w_y = np.where(valid, w[y], 0)
    moved = np.moveaxis(input, class_axis, -1)  # (N, d1, ..., C): classes last
    return _CrossEntropyArgs(moved.reshape(-1, n_classes), y, valid, w, w_y, smoothing,
                             loss_shape, moved.shape)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of (M, C) logits, eq. (12): shifted by the row maximum so that
    ``exp`` never overflows."""
    # --8<-- [start:log_softmax]
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))  # eq. (12)
    # --8<-- [end:log_softmax]


def cross_entropy(input, target, weight=None, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0) -> np.ndarray:
    """Softmax cross-entropy with class-index targets, eqs. (12)-(14), as
    ``torch.nn.functional.cross_entropy``.

    Args:
        input: (N, C) or (N, C, d1, d2, ...) float logits, or (C,) for one unbatched sample.
        target: integer class indices, (N,) or (N, d1, d2, ...) (() for a (C,) input), each in
            [0, C) or equal to ``ignore_index``. Float (probability) targets are not supported
            and raise ``TypeError``.
        weight: optional (C,) float per-class weights (a rescaling, as torch's ``weight``).
        ignore_index: targets equal to it contribute 0 and are left out of the mean.
        reduction: ``"mean"`` (default): the sum divided by the summed weight of the targets
            that are not ignored (their count without ``weight``); ``"sum"`` or ``"none"``.
        label_smoothing: epsilon in [0, 1]: the target distribution is
            ``(1 - epsilon) * onehot + epsilon / C``.

    Returns:
        The target's shape for ``"none"`` (0 where ignored), else a 0-d array; the mean is
        ``nan`` when there is nothing to average (empty input, or every target ignored), as
        in torch.
    """
    args = _cross_entropy_args(input, target, weight, ignore_index, reduction, label_smoothing)
    z, y, valid, w, w_y, eps, loss_shape, _ = args
    n_classes = z.shape[1]
    log_p = _log_softmax(z)  # eq. (12)
    # --8<-- [start:cross_entropy_forward]
    nll = -log_p[np.arange(len(y)), y]  # -log p_y
    smooth = -(log_p * w).sum(axis=1)  # sum_c w_c (-log p_c)
    loss = np.where(valid, (1 - eps) * w_y * nll + (eps / n_classes) * smooth, 0)  # eq. (13)
    total_weight = w_y.sum()  # eq. (14): W, the mean's denominator
    # --8<-- [end:cross_entropy_forward]
    return _reduce(loss.reshape(loss_shape), reduction, denominator=total_weight)


def cross_entropy_backward(grad, input, target, weight=None, ignore_index: int = -100,
                           reduction: str = "mean",
                           label_smoothing: float = 0.0) -> CrossEntropyGrads:
    """Gradient of :func:`cross_entropy` w.r.t. ``input``, eqs. (15)-(17).

    Args:
        grad: the upstream gradient: the target's shape for ``"none"``, else a 0-d array or a
            number.
        input, target, weight, ignore_index, reduction, label_smoothing: as for
            :func:`cross_entropy`.

    Returns:
        :class:`CrossEntropyGrads` ``(grad_input,)``, the shape of ``input``; rows of ignored
        targets are 0.
    """
    args = _cross_entropy_args(input, target, weight, ignore_index, reduction, label_smoothing)
    z, y, valid, w, w_y, eps, loss_shape, moved_shape = args
    n_rows, n_classes = z.shape
    g = _upstream(grad, reduction, loss_shape, z.dtype, denominator=w_y.sum())
    p = np.exp(_log_softmax(z))  # eq. (12): softmax probabilities
    # --8<-- [start:cross_entropy_backward]
    # eq. (15): d log p_k / d z_c = [k = c] - p_c, with [k = c] as a one-hot row per target
    onehot = np.zeros_like(p)
    onehot[np.arange(n_rows), y] = 1
    # eq. (16): d loss_i / d z_c = (1 - eps) w_y (p_c - [c = y]) + eps / C (p_c sum_k w_k - w_c)
    dloss_dz = ((1 - eps) * w_y[:, None] * (p - onehot)
                + (eps / n_classes) * (p * w.sum() - w))
    # eq. (17): times the upstream gradient (g / W for the mean); ignored rows get none
    with np.errstate(invalid="ignore"):  # W = 0 (all ignored): inf * 0 in rows masked here
        grad_z = np.where(valid[:, None], g.reshape(-1, 1) * dloss_dz, 0)
    # --8<-- [end:cross_entropy_backward]
    class_axis = 0 if len(moved_shape) == 1 else 1
    grad_input = np.moveaxis(grad_z.reshape(moved_shape), -1, class_axis)
    return CrossEntropyGrads(np.ascontiguousarray(grad_input))


# ----------------------------------------------------------------------------- L1, smooth L1

def _pair_args(input, target, reduction):
    input = _checks.float_array(input, "input")
    target = _checks.float_array(target, "target")
    _checks.shape_equals(target, "target", input.shape, "the shape of input")
    _checks.choice(reduction, "reduction", REDUCTIONS)
    return _checks.common_float(("input", input), ("target", target))


def l1_loss(input, target, reduction: str = "mean") -> np.ndarray:
    """Mean (or summed) absolute error, eq. (18), as ``torch.nn.functional.l1_loss``.

    Args:
        input: float array of any shape.
        target: float array of the same shape.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Returns:
        ``|input - target|`` (shape of ``input``) for ``"none"``, else a 0-d array (``nan`` for
        the mean of an empty input, as torch).
    """
    input, target = _pair_args(input, target, reduction)
    return _reduce(np.abs(input - target), reduction)  # eq. (18)


def l1_loss_backward(grad, input, target, reduction: str = "mean") -> RegressionLossGrads:
    """Gradients of :func:`l1_loss` w.r.t. ``input`` and ``target``, eq. (18).

    Args:
        grad: the upstream gradient: the shape of ``input`` for ``"none"``, else a 0-d array
            or a number.
        input, target, reduction: as for :func:`l1_loss`.

    Returns:
        :class:`RegressionLossGrads` ``(grad_input, grad_target)``, both of the shape of
        ``input``.
    """
    input, target = _pair_args(input, target, reduction)
    g = _upstream(grad, reduction, input.shape, input.dtype)
    # --8<-- [start:l1_backward]
    # NOTE: |d| has a kink at d = input - target = 0; we return sign(0) = 0 there, torch's
    # choice (the gradient of abs), which is the average of the one-sided slopes -1 and +1.
    slope = np.sign(input - target)  # eq. (18)
    grad_input = g * slope
    return RegressionLossGrads(grad_input, -grad_input)  # eq. (18): d/d target = -d/d input
    # --8<-- [end:l1_backward]


def smooth_l1_loss(input, target, reduction: str = "mean", beta: float = 1.0) -> np.ndarray:
    """Smooth L1 (Huber divided by ``beta``), eq. (19), as
    ``torch.nn.functional.smooth_l1_loss``.

    With ``d = input - target``: ``0.5 d**2 / beta`` where ``|d| < beta``, ``|d| - 0.5 beta``
    elsewhere; ``beta = 0`` is exactly :func:`l1_loss` (torch calls ``l1_loss`` then).

    Args:
        input: float array of any shape.
        target: float array of the same shape.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        beta: the threshold between the quadratic and the linear piece, >= 0.

    Returns:
        The shape of ``input`` for ``"none"``, else a 0-d array (``nan`` for the mean of an
        empty input, as torch).
    """
    input, target = _pair_args(input, target, reduction)
    beta = _checks.number_in_range(beta, "beta", 0.0, math.inf)
    # --8<-- [start:smooth_l1_forward]
    distance = np.abs(input - target)
    if beta == 0:
        loss = distance  # torch's beta = 0: l1_loss
    else:
        loss = np.where(distance < beta, 0.5 * distance * distance / beta,
                        distance - 0.5 * beta)  # eq. (19)
    # --8<-- [end:smooth_l1_forward]
    return _reduce(loss, reduction)


def smooth_l1_loss_backward(grad, input, target, reduction: str = "mean",
                            beta: float = 1.0) -> RegressionLossGrads:
    """Gradients of :func:`smooth_l1_loss` w.r.t. ``input`` and ``target``, eq. (20).

    Args:
        grad: the upstream gradient: the shape of ``input`` for ``"none"``, else a 0-d array
            or a number.
        input, target, reduction, beta: as for :func:`smooth_l1_loss`.

    Returns:
        :class:`RegressionLossGrads` ``(grad_input, grad_target)``, both of the shape of
        ``input``.
    """
    input, target = _pair_args(input, target, reduction)
    beta = _checks.number_in_range(beta, "beta", 0.0, math.inf)
    g = _upstream(grad, reduction, input.shape, input.dtype)
    # --8<-- [start:smooth_l1_backward]
    d = input - target
    if beta == 0:
        # NOTE: beta = 0 is l1_loss, with its kink at d = 0: sign(0) = 0 there (torch's)
        slope = np.sign(d)
    else:
        # NOTE: the pieces meet at |d| = beta, where torch takes the linear one (the quadratic
        # is |d| < beta); both slopes are d / beta = sign(d) = +-1 there, so the loss is
        # continuously differentiable and the choice changes nothing. d = 0: slope 0.
        slope = np.where(np.abs(d) < beta, d / beta, np.sign(d))  # eq. (20)
    grad_input = g * slope
    return RegressionLossGrads(grad_input, -grad_input)  # d/d target = -d/d input
    # --8<-- [end:smooth_l1_backward]


# ----------------------------------------------------------------------------- GIoU loss

def _giou_args(boxes1, boxes2, reduction, eps):
    boxes1 = _checks.float_array(boxes1, "boxes1", min_ndim=1)
    boxes2 = _checks.float_array(boxes2, "boxes2", min_ndim=1)
    _checks.last_dim(boxes1, "boxes1", 4, "(x1, y1, x2, y2)")
    _checks.shape_equals(boxes2, "boxes2", boxes1.shape,
                         "one box of boxes2 per box of boxes1: the pairs are matched")
    _checks.choice(reduction, "reduction", REDUCTIONS)
    eps = _checks.number_in_range(eps, "eps", 0.0, math.inf)
    boxes1, boxes2 = _checks.common_float(("boxes1", boxes1), ("boxes2", boxes2))
    return boxes1, boxes2, eps


class _GIoUTerms(NamedTuple):
    width1: np.ndarray  # x2 - x1 of boxes1
    height1: np.ndarray
    width2: np.ndarray
    height2: np.ndarray
    overlap: np.ndarray  # bool: the intersection has positive width and height
    inter_width: np.ndarray  # ix2 - ix1, may be <= 0
    inter_height: np.ndarray
    inter: np.ndarray  # I
    union: np.ndarray  # U
    enclose_width: np.ndarray  # cx2 - cx1
    enclose_height: np.ndarray
    enclose: np.ndarray  # C
    loss: np.ndarray  # 1 - GIoU, per pair


def _giou_terms(boxes1: np.ndarray, boxes2: np.ndarray, eps: float) -> _GIoUTerms:
    # --8<-- [start:giou_forward]
    x1, y1, x2, y2 = (boxes1[..., k] for k in range(4))
    x1g, y1g, x2g, y2g = (boxes2[..., k] for k in range(4))
    width1, height1 = x2 - x1, y2 - y1
    width2, height2 = x2g - x1g, y2g - y1g
    area1 = width1 * height1  # eq. (21)
    area2 = width2 * height2  # eq. (21)
    ix1, iy1 = np.maximum(x1, x1g), np.maximum(y1, y1g)  # eq. (22)
    ix2, iy2 = np.minimum(x2, x2g), np.minimum(y2, y2g)  # eq. (22)
    inter_width, inter_height = ix2 - ix1, iy2 - iy1
    overlap = (iy2 > iy1) & (ix2 > ix1)  # eq. (23): torchvision's mask, strict
    inter = np.where(overlap, inter_width * inter_height, 0)  # eq. (23)
    union = area1 + area2 - inter  # eq. (24)
    iou = inter / (union + eps)  # eq. (25)
    cx1, cy1 = np.minimum(x1, x1g), np.minimum(y1, y1g)  # eq. (26)
    cx2, cy2 = np.maximum(x2, x2g), np.maximum(y2, y2g)  # eq. (26)
    enclose_width, enclose_height = cx2 - cx1, cy2 - cy1
    enclose = enclose_width * enclose_height  # eq. (26): no clamp, as torchvision
    giou = iou - (enclose - union) / (enclose + eps)  # eq. (27)
    loss = 1 - giou  # eq. (27)
    # --8<-- [end:giou_forward]
    return _GIoUTerms(width1, height1, width2, height2, overlap, inter_width, inter_height,
                      inter, union, enclose_width, enclose_height, enclose, loss)


def generalized_box_iou_loss(boxes1, boxes2, reduction: str = "none",
                             eps: float = 1e-7) -> np.ndarray:
    """``1 - GIoU`` of matched box pairs, eqs. (21)-(27), as
    ``torchvision.ops.generalized_box_iou_loss`` (its ``eps`` placement included).

    Args:
        boxes1: (..., 4) float boxes ``(x1, y1, x2, y2)``, e.g. (N, 4) or (4,).
        boxes2: float boxes of the same shape; pair ``i`` is ``(boxes1[i], boxes2[i])``.
        reduction: ``"none"`` (default, as torchvision), ``"mean"`` or ``"sum"``.
        eps: >= 0, added to the union and to the enclosing area before dividing by them.

    Returns:
        (...) losses for ``"none"`` (in [0, 2] for proper boxes), else a 0-d array; the mean
        of no pairs is 0 (torchvision returns ``0 * sum`` there, not nan).
    """
    boxes1, boxes2, eps = _giou_args(boxes1, boxes2, reduction, eps)
    loss = _giou_terms(boxes1, boxes2, eps).loss
    if reduction == "mean" and loss.size == 0:
        return np.zeros((), dtype=loss.dtype)  # torchvision: 0.0 * loss.sum()
    return _reduce(loss, reduction)


def _tie_shares(a: np.ndarray, b: np.ndarray, larger: bool) -> tuple[np.ndarray, np.ndarray]:
    """How the gradient of ``max(a, b)`` (``larger``) or ``min(a, b)`` splits between ``a`` and
    ``b``: all to the one that is taken, eq. (31).

    NOTE: at a tie ``a == b`` the max (min) is not differentiable; like torch.maximum and
    torch.minimum we give each side half (identical boxes: every corner is a tie).
    """
    a_wins = a > b if larger else a < b
    b_wins = b > a if larger else b < a
    tie = a == b
    share_a = np.where(a_wins, 1.0, np.where(tie, 0.5, 0.0)).astype(a.dtype)
    share_b = np.where(b_wins, 1.0, np.where(tie, 0.5, 0.0)).astype(a.dtype)
    return share_a, share_b


def generalized_box_iou_loss_backward(grad, boxes1, boxes2, reduction: str = "none",
                                      eps: float = 1e-7) -> GIoULossGrads:
    """Gradients of :func:`generalized_box_iou_loss` w.r.t. both sets of boxes,
    eqs. (28)-(33).

    Args:
        grad: the upstream gradient: the shape ``boxes1.shape[:-1]`` for ``"none"``, else a
            0-d array or a number.
        boxes1, boxes2, reduction, eps: as for :func:`generalized_box_iou_loss`.

    Returns:
        :class:`GIoULossGrads` ``(grad_boxes1, grad_boxes2)``, each of the shape of the boxes.
        At the kinks (touching or disjoint boxes, shared corners, zero-area boxes) the
        one-sided gradient torch's autograd returns for torchvision's code; see the NOTEs.
    """
    boxes1, boxes2, eps = _giou_args(boxes1, boxes2, reduction, eps)
    (width1, height1, width2, height2, overlap, inter_width, inter_height, inter, union,
     enclose_width, enclose_height, enclose, loss) = _giou_terms(boxes1, boxes2, eps)
    g = _upstream(grad, reduction, loss.shape, loss.dtype)
    dtype = np.result_type(boxes1.dtype, g.dtype)  # float64 when grad is a float64 array
    grad_boxes1 = np.empty(boxes1.shape, dtype=dtype)
    grad_boxes2 = np.empty(boxes2.shape, dtype=dtype)
    # --8<-- [start:giou_backward]
    # eq. (28): loss = 1 - I / (U + eps) + (C - U) / (C + eps), the quotient rule
    d_inter = -g / (union + eps)  # holding U fixed
    d_union = g * (inter / (union + eps) ** 2 - 1 / (enclose + eps))
    d_enclose = g * (union + eps) / (enclose + eps) ** 2
    # eq. (29): U = A1 + A2 - I, so I also acts through U
    d_inter = d_inter - d_union
    d_area1 = d_area2 = d_union
    # eq. (30): I = iw * ih and C = cw * ch, the product rule.
    # NOTE: where the boxes do not overlap (iw <= 0 or ih <= 0, touching boxes and zero-area
    # boxes included) torchvision's mask leaves I at the constant 0, so no gradient reaches
    # the intersection's sides: at iw = 0 that is the one-sided slope from the disjoint side,
    # and it is what torch's autograd returns for that masked assignment.
    d_inter_width = np.where(overlap, d_inter * inter_height, 0)
    d_inter_height = np.where(overlap, d_inter * inter_width, 0)
    d_enclose_width = d_enclose * enclose_height
    d_enclose_height = d_enclose * enclose_width
    # eqs. (31)-(33), one coordinate at a time: (the partial of A1 and of A2 w.r.t. it, the
    # partials of the intersection side and of the enclosing side, whether the intersection
    # takes the max of the two boxes' coordinates)
    coordinates = (
        (-height1, -height2, -d_inter_width, -d_enclose_width, True),  # x1: ix1 = max, cx1 = min
        (-width1, -width2, -d_inter_height, -d_enclose_height, True),  # y1: iy1 = max, cy1 = min
        (height1, height2, d_inter_width, d_enclose_width, False),  # x2: ix2 = min, cx2 = max
        (width1, width2, d_inter_height, d_enclose_height, False),  # y2: iy2 = min, cy2 = max
    )
    for k, (darea1_dk, darea2_dk, d_inter_side, d_enclose_side, inter_is_max) in enumerate(
            coordinates):
        a, b = boxes1[..., k], boxes2[..., k]
        inter_share1, inter_share2 = _tie_shares(a, b, larger=inter_is_max)  # eq. (31)
        enclose_share1, enclose_share2 = _tie_shares(a, b, larger=not inter_is_max)  # eq. (31)
        grad_boxes1[..., k] = (d_area1 * darea1_dk + d_inter_side * inter_share1
                               + d_enclose_side * enclose_share1)  # eqs. (32)-(33)
        grad_boxes2[..., k] = (d_area2 * darea2_dk + d_inter_side * inter_share2
                               + d_enclose_side * enclose_share2)  # eqs. (32)-(33)
    # --8<-- [end:giou_backward]
    return GIoULossGrads(grad_boxes1, grad_boxes2)
