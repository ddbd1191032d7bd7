"""``scratchvision.optim``: SGD and Adam follow torch.optim's update rules step for step (given
identical gradients), converge on a quadratic without torch, hand-computed first steps, and
reject bad hyper-parameters."""

from __future__ import annotations

import numpy as np
import pytest

from scratchvision import nn, optim

SGD_SETTINGS = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01),
    dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1),
]
ADAM_SETTINGS = [
    dict(),
    dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6),
    dict(lr=0.02, weight_decay=0.1),
]


def _params(rng):
    return [nn.Parameter(rng.standard_normal((3, 4))), nn.Parameter(rng.standard_normal(5))]


@pytest.mark.parametrize("name, settings",
                         [("SGD", s) for s in SGD_SETTINGS] + [("Adam", s) for s in ADAM_SETTINGS])
def test_matches_torch_step_for_step(name, settings):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    ours = _params(rng)
    theirs = [torch.nn.Parameter(torch.tensor(p.data.copy())) for p in ours]
    opt = getattr(optim, name)(ours, **settings)
    torch_opt = getattr(torch.optim, name)(theirs, **settings)
    for _ in range(6):
        for mine, reference in zip(ours, theirs):
            grad = rng.standard_normal(mine.shape)
            mine.grad[...] = grad
            reference.grad = torch.tensor(grad.copy())
        opt.step()
        torch_opt.step()
        for mine, reference in zip(ours, theirs):
            np.testing.assert_allclose(mine.data, reference.detach().numpy(), rtol=1e-12,
                                       atol=1e-14)


def test_first_steps_by_hand():
    """SGD with momentum: step 1 moves by lr * g, step 2 by lr * (m * g + g). Adam's first step
    moves every coordinate by lr * sign(g) (m_hat / sqrt(v_hat) = g / |g|, up to eps)."""
    p = nn.Parameter(np.array([1.0, -2.0]))
    sgd = optim.SGD([p], lr=0.1, momentum=0.5)
    p.grad[...] = [1.0, 2.0]
    sgd.step()
    np.testing.assert_allclose(p.data, [0.9, -2.2])
    sgd.step()
    np.testing.assert_allclose(p.data, [0.9 - 0.1 * 1.5, -2.2 - 0.1 * 3.0])

    q = nn.Parameter(np.array([1.0, -2.0, 0.5]))
    adam = optim.Adam([q], lr=0.01)
    q.grad[...] = [3.0, -1e-3, 0.0]
    adam.step()
    np.testing.assert_allclose(q.data, [0.99, -2.0 + 0.01, 0.5], rtol=0, atol=1e-7)


@pytest.mark.parametrize("make", [
    lambda params: optim.SGD(params, lr=0.1),
    lambda params: optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True),
    lambda params: optim.Adam(params, lr=0.1),
], ids=["SGD", "SGD-nesterov", "Adam"])
def test_converges_on_a_quadratic(make):
    """Minimise 0.5 (w - t)^T A (w - t) with A symmetric positive definite (condition number
    10): the gradient is A (w - t) and the minimum is at t."""
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    a = q @ np.diag([1.0, 2.0, 5.0, 10.0]) @ q.T
    target = rng.standard_normal(4)
    w = nn.Parameter(np.zeros(4))
    opt = make([w])
    for _ in range(500):
        opt.zero_grad()
        w.grad += a @ (w.data - target)
        opt.step()
    np.testing.assert_allclose(w.data, target, atol=1e-3)


def test_zero_grad_and_in_place_updates():
    layer = nn.Linear(3, 2, rng=0)
    weight_array = layer.weight.data
    opt = optim.SGD(layer.parameters(), lr=0.1)
    layer(np.ones((1, 3)))
    layer.backward(np.ones((1, 2)))
    opt.step()
    assert layer.weight.data is weight_array, "step must update .data in place"
    opt.zero_grad()
    assert not any(p.grad.any() for p in layer.parameters())


def test_float32_parameters_stay_float32():
    p = nn.Parameter(np.ones(3, dtype=np.float32))
    p.grad[...] = 1.0
    for opt in (optim.SGD([p], lr=0.1, momentum=0.9), optim.Adam([p])):
        opt.step()
        opt.step()
        assert p.data.dtype == np.float32 and p.grad.dtype == np.float32


def test_bad_arguments_are_clear_errors():
    p = nn.Parameter(np.zeros(2))
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match=r"params\[1\] must be a scratchvision.nn.Parameter"):
        optim.Adam([p, np.zeros(2)])
    with pytest.raises(ValueError, match="more than once"):
        optim.SGD([p, p], lr=0.1)
    with pytest.raises(ValueError, match="lr must be >= 0"):
        optim.SGD([p], lr=-1.0)
    with pytest.raises(ValueError, match="momentum must be >= 0"):
        optim.SGD([p], lr=0.1, momentum=-0.5)
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match=r"betas\[1\] must be in \[0, 1\)"):
        optim.Adam([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="eps must be >= 0"):
        optim.Adam([p], eps=-1e-8)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        optim.Adam([p], weight_decay=float("nan"))
