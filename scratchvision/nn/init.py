"""Random number generators, dtypes and PyTorch's default initialisation, for every layer.

Layers are built with ``rng=``: ``None`` (fresh, unpredictable entropy), an int seed, or a
``numpy.random.Generator``. Pass one Generator to every layer of a model to make the whole
model reproducible from one seed; each layer then draws the next numbers from it.

PyTorch's ``nn.Linear``, ``nn.Conv2d`` and ``torchvision.ops.DeformConv2d`` initialise their
weight with ``kaiming_uniform_(a=sqrt(5))`` and their bias with ``U(-1/sqrt(fan_in),
1/sqrt(fan_in))``. Kaiming-uniform's bound is ``gain * sqrt(3 / fan_in)`` with the leaky-ReLU
gain ``sqrt(2 / (1 + a**2)) = sqrt(1/3)``, so both come down to the same bound::

    bound = 1 / sqrt(fan_in),   fan_in = in_features              (Linear)
                                fan_in = in_channels / groups * kh * kw   (Conv2d)

We reproduce the *distribution*, not torch's random stream: the same seed gives different
numbers in torch and here (load a torch ``state_dict`` to get identical weights).
"""

from __future__ import annotations

import math

import numpy as np

from .. import _checks

__all__ = ["as_generator", "float_dtype", "torch_uniform", "xavier_uniform"]


def as_generator(rng) -> np.random.Generator:
    """``rng`` (None, an int seed or a ``numpy.random.Generator``) as a Generator.

    A Generator is returned as is (not copied), so successive layers built with it draw
    successive numbers.
    """
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, (int, np.integer)) and not isinstance(rng, bool)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be None, an int seed or a numpy.random.Generator, got {rng!r}")


def float_dtype(dtype) -> np.dtype:
    """``dtype`` as ``np.float32`` or ``np.float64`` (the dtypes every op supports)."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from exc
    if dt not in _checks.FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def torch_uniform(shape: tuple[int, ...], fan_in: int, rng: np.random.Generator,
                  dtype) -> np.ndarray:
    """An array of ``shape`` drawn from ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``: torch's default
    for a weight (kaiming_uniform with a = sqrt(5)) and for a bias alike (see the module
    docstring). ``fan_in = 0`` (no inputs) gives zeros, as torch does for a bias."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def xavier_uniform(shape: tuple[int, int], rng: np.random.Generator, dtype) -> np.ndarray:
    """A (fan_out, fan_in) matrix from ``U(-b, b)``, ``b = sqrt(6 / (fan_in + fan_out))``:
    torch's ``xavier_uniform_`` (gain 1), which keeps the variance of activations and of
    gradients alike through the layer (used by attention's projections)."""
    fan_out, fan_in = shape
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, size=shape).astype(dtype)
