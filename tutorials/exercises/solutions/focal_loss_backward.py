"""Exercise: the gradient of RetinaNet's sigmoid focal loss.

Per element, with logit x, target t in [0, 1] (soft targets allowed), p = sigmoid(x) and
q = 1 - p, docs/derivations/losses.md defines (eqs. 3-7)

    CE  = t * softplus(-x) + (1 - t) * softplus(x)       binary cross-entropy         (4)
    m   = p * (1 - t) + q * t                            1 - p_t                       (5)
    a_t = alpha * t + (1 - alpha) * (1 - t)              (1 when alpha = -1)           (6)
    loss = a_t * CE * m ** gamma                                                       (7)

Write its gradient with respect to the logits and to the targets: replace every
``raise NotImplementedError`` below by the lines the comment above it describes, then run

    scratchvision exercise check focal_loss_backward

from the repository root. The checker compares your ``sigmoid_focal_loss_backward`` with the
library's on random inputs (hard and soft targets, every reduction, alpha = -1), then runs
``scratchvision.gradcheck`` of it against central differences of the library's forward
(``scratchvision.losses.sigmoid_focal_loss``), and says which gradient is wrong, at which
index, and which equation to re-read. A worked answer is in
``tutorials/exercises/solutions/``; look there last.

The forward pieces are computed for you, stably (eq. 3: ``exp`` only ever sees ``-|x|``), and
so is the upstream gradient of each element after the reduction (eq. 2).

Shapes: ``inputs`` and ``targets`` of one shape; ``grad`` that shape for ``reduction="none"``,
else a 0-d array.
"""

from __future__ import annotations

import numpy as np


def focal_terms(x: np.ndarray, t: np.ndarray, alpha: float, gamma: float):
    """The forward's pieces, eqs. (3)-(7): ``(p, q, ce, m, m_gamma, a_t)``."""
    e = np.exp(-np.abs(x))
    p = np.where(x >= 0, 1 / (1 + e), e / (1 + e))  # eq. (3): sigmoid(x)
    q = np.where(x >= 0, e / (1 + e), 1 / (1 + e))  # eq. (3): 1 - sigmoid(x)
    ce = t * np.logaddexp(0, -x) + (1 - t) * np.logaddexp(0, x)  # eq. (4)
    m = p * (1 - t) + q * t  # eq. (5)
    m_gamma = m ** gamma
    a_t = alpha * t + (1 - alpha) * (1 - t) if alpha >= 0 else 1.0  # eq. (6)
    return p, q, ce, m, m_gamma, a_t


def upstream(grad, reduction: str, shape) -> np.ndarray:
    """eq. (2): the gradient reaching each element of the unreduced loss."""
    grad = np.asarray(grad, dtype=np.float64)
    if reduction == "mean":
        grad = grad / np.prod(shape)
    return np.broadcast_to(grad, shape)


def sigmoid_focal_loss_backward(grad, inputs, targets, alpha: float = 0.25, gamma: float = 2.0,
                                reduction: str = "none"):
    """``(grad_inputs, grad_targets)``, both of the shape of ``inputs``: eqs. (8)-(11) of
    docs/derivations/losses.md#the-gradient."""
    x = np.asarray(inputs, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    g = upstream(grad, reduction, x.shape)
    p, q, ce, m, m_gamma, a_t = focal_terms(x, t, alpha, gamma)
    # eq. (8): the partial derivatives of the pieces, from (3)-(6), using dp/dx = p q:
    #   d CE / dx = p (1 - t) - q t     (= p - t, written with q for accuracy)
    #   d CE / dt = -x                 (used in eq. (11))
    #   d m / dx  = p q (1 - 2t)        d m / dt = q - p
    #   d a_t / dt = 2 alpha - 1        (0 when alpha = -1: no weighting)
    dce_dx = p * (1 - t) - q * t
    dm_dx = p * q * (1 - 2 * t)
    dm_dt = q - p
    da_dt = 2 * alpha - 1 if alpha >= 0 else 0.0
    # eq. (9): k = gamma * CE * m ** (gamma - 1), the factor of d(m ** gamma) = k / CE * dm,
    # written as gamma * (CE / m) * m ** gamma so that a tiny m cannot overflow; k = 0 where
    # m = 0 (a saturated sigmoid on a hard target, where CE = 0 too).
    nonzero_m = m != 0
    k = np.where(nonzero_m, gamma * (ce / np.where(nonzero_m, m, 1)) * m_gamma, 0)
    # eq. (10), the product rule on (7): d loss / dx = a_t * (dCE/dx * m**gamma + k * dm/dx),
    # times the upstream gradient g.
    grad_inputs = g * (a_t * (dce_dx * m_gamma + k * dm_dx))
    # eq. (11): d loss / dt = a_t * (dCE/dt * m**gamma + k * dm/dt) + da_t/dt * CE * m**gamma,
    # with dCE/dt = -x; times g.
    grad_targets = g * (a_t * (-x * m_gamma + k * dm_dt) + da_dt * (ce * m_gamma))
    return grad_inputs, grad_targets
