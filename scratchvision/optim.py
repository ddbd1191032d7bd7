"""Optimizers over :class:`scratchvision.nn.Parameter`: ``SGD`` (momentum, Nesterov, weight
decay) and ``Adam``, with PyTorch's update rules exactly.

An optimizer holds a list of Parameters. ``step()`` reads every ``param.grad`` and updates
``param.data`` in place; ``zero_grad()`` fills every ``.grad`` with zeros (the same as the
model's ``zero_grad()`` when the optimizer holds all of the model's parameters)::

    optimizer = optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        optimizer.zero_grad()
        y = model(x)
        model.backward(loss_gradient(y))
        optimizer.step()

Differences from torch: there are no parameter groups, and since a ``.grad`` here is never
None (see :class:`~scratchvision.nn.Parameter`), every parameter is updated at every step.
The state (momentum buffers, Adam's moments) is kept in the parameter's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from . import _checks
from .nn.module import Parameter

__all__ = ["Optimizer", "SGD", "Adam"]


def _non_negative(value, name: str) -> float:
    value = _checks.real_number(value, name)
    if not value >= 0.0:  # also rejects NaN
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


class Optimizer:
    """Holds the parameters; subclasses implement :meth:`step`."""

    def __init__(self, params: Iterable[Parameter]):
        self.params = list(params)
        if not self.params:
            raise ValueError("the optimizer got an empty list of parameters")
        for index, param in enumerate(self.params):
            if not isinstance(param, Parameter):
                raise TypeError(f"params[{index}] must be a scratchvision.nn.Parameter, got "
                                f"{type(param).__name__}")
        if len({id(param) for param in self.params}) != len(self.params):
            raise ValueError("a parameter appears more than once in params")

    def zero_grad(self) -> None:
        """Fill every parameter's ``.grad`` with zeros."""
        for param in self.params:
            param.zero_grad()

    def step(self) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """The optimizer's state as ``{name: array}`` (what a checkpoint stores to resume
        training exactly where it stopped); the hyper-parameters are not included."""
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s arrays; ``KeyError`` / ``ValueError`` name the key that
        is missing or of the wrong shape, and nothing changes unless everything matches."""
        expected = self.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        if missing or unexpected:
            raise KeyError(f"{type(self).__name__}.load_state_dict: missing keys {missing}, "
                           f"unexpected keys {unexpected}")
        for key, value in expected.items():
            if np.shape(state[key]) != np.shape(value):
                raise ValueError(f"state[{key!r}] has shape {np.shape(state[key])}, expected "
                                 f"{np.shape(value)}")
        self._load(state)

    def _load(self, state: dict) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent, ``torch.optim.SGD``.

    For every parameter ``p`` with gradient ``g``, at step t = 1, 2, ...::

        g = g + weight_decay * p                    (L2 penalty, when weight_decay != 0)
        b = g                          at t = 1     (momentum buffer, when momentum != 0)
        b = momentum * b + (1 - dampening) * g      at t > 1
        g = g + momentum * b   if nesterov   else   g = b
        p = p - lr * g

    Args:
        params: the Parameters to update (e.g. ``model.parameters()``).
        lr: the learning rate, >= 0.
        momentum: >= 0; 0 is plain gradient descent.
        dampening: scales the new gradient entering the buffer (from step 2 on).
        weight_decay: >= 0, the L2 penalty's coefficient.
        nesterov: Nesterov momentum; needs momentum > 0 and dampening = 0.
    """

    def __init__(self, params: Iterable[Parameter], lr: float, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params)
        self.lr = _non_negative(lr, "lr")
        self.momentum = _non_negative(momentum, "momentum")
        self.dampening = float(dampening)
        self.weight_decay = _non_negative(weight_decay, "weight_decay")
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening = 0")
        #: one momentum buffer per parameter; None until the first step
        self.momentum_buffers: list[np.ndarray | None] = [None] * len(self.params)

    def state_dict(self) -> dict:
        # a buffer not yet created (before the first step) is stored as an empty array
        return {f"momentum_buffer.{i}": (np.empty(0) if b is None else b.copy())
                for i, b in enumerate(self.momentum_buffers)}

    def load_state_dict(self, state: dict) -> None:
        # buffers may be absent (empty) or of the parameter's shape: checked one by one
        for i, param in enumerate(self.params):
            key = f"momentum_buffer.{i}"
            if key not in state:
                raise KeyError(f"SGD.load_state_dict: missing key {key!r}")
            if np.size(state[key]) and np.shape(state[key]) != param.shape:
                raise ValueError(f"state[{key!r}] has shape {np.shape(state[key])}, expected "
                                 f"{param.shape}")
        self.momentum_buffers = [np.array(state[f"momentum_buffer.{i}"], dtype=p.dtype)
                                 if np.size(state[f"momentum_buffer.{i}"]) else None
                                 for i, p in enumerate(self.params)]

    def step(self) -> None:
        """Update every parameter's ``.data`` from its ``.grad``."""
        for index, param in enumerate(self.params):
            grad = param.grad
            if self.weight_decay != 0:
                grad = grad + self.weight_decay * param.data
            if self.momentum != 0:
                buffer = self.momentum_buffers[index]
                if buffer is None:
                    buffer = grad.copy()
                else:
                    buffer *= self.momentum
                    buffer += (1 - self.dampening) * grad
                self.momentum_buffers[index] = buffer
                grad = grad + self.momentum * buffer if self.nesterov else buffer
            param.data -= self.lr * grad


class Adam(Optimizer):
    """Adam, ``torch.optim.Adam`` (without amsgrad).

    For every parameter ``p`` with gradient ``g``, at step t = 1, 2, ... (``m`` and ``v``
    start at zero)::

        g = g + weight_decay * p                    (L2 penalty, when weight_decay != 0)
        m = beta1 * m + (1 - beta1) * g             first moment, exp_avg
        v = beta2 * v + (1 - beta2) * g * g         second moment, exp_avg_sq
        p = p - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    The last line is ``p - lr * m_hat / (sqrt(v_hat) + eps)`` with the bias-corrected moments
    ``m_hat = m / (1 - beta1**t)`` and ``v_hat = v / (1 - beta2**t)``, arranged as torch
    arranges it (so the results agree to rounding).

    Args:
        params: the Parameters to update.
        lr: the learning rate, >= 0.
        betas: ``(beta1, beta2)``, each in [0, 1).
        eps: >= 0, keeps the division finite.
        weight_decay: >= 0, the L2 penalty's coefficient (added to the gradient, as in torch's
            Adam; AdamW would decay the weights directly).
    """

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params)
        self.lr = _non_negative(lr, "lr")
        beta1, beta2 = (float(b) for b in betas)
        for name, beta in (("betas[0]", beta1), ("betas[1]", beta2)):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {beta}")
        self.betas = (beta1, beta2)
        self.eps = _non_negative(eps, "eps")
        self.weight_decay = _non_negative(weight_decay, "weight_decay")
        self.step_count = 0
        self.exp_avg = [np.zeros_like(param.data) for param in self.params]
        self.exp_avg_sq = [np.zeros_like(param.data) for param in self.params]

    def state_dict(self) -> dict:
        state = {"step_count": np.asarray(self.step_count, dtype=np.int64)}
        for i, (m, v) in enumerate(zip(self.exp_avg, self.exp_avg_sq)):
            state[f"exp_avg.{i}"] = m.copy()
            state[f"exp_avg_sq.{i}"] = v.copy()
        return state

    def _load(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        for i, (m, v) in enumerate(zip(self.exp_avg, self.exp_avg_sq)):
            np.copyto(m, state[f"exp_avg.{i}"])
            np.copyto(v, state[f"exp_avg_sq.{i}"])

    def step(self) -> None:
        """Update every parameter's ``.data`` from its ``.grad``."""
        self.step_count += 1
        beta1, beta2 = self.betas
        bias_correction1 = 1 - beta1 ** self.step_count
        bias_correction2 = 1 - beta2 ** self.step_count
        step_size = self.lr / bias_correction1
        for param, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            grad = param.grad
            if self.weight_decay != 0:
                grad = grad + self.weight_decay * param.data
            m *= beta1
            m += (1 - beta1) * grad
            v *= beta2
            v += (1 - beta2) * grad * grad
            denominator = np.sqrt(v) / math.sqrt(bias_correction2) + self.eps
            param.data -= step_size * m / denominator
