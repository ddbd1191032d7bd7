"""Multi-kernel layers: several branches look at the same input with different receptive
fields, and their outputs are stacked along the channels.

* :class:`InceptionBlock` -- GoogLeNet's block: 1x1, 3x3 and 5x5 convolutions and a pooled
  branch side by side (receptive fields 1, 3, 5 and 3 pixels);
* :class:`ASPP` -- DeepLabv3's atrous spatial pyramid pooling: 3x3 convolutions dilated at
  several rates (receptive fields ``2 * rate + 1``) plus the whole image, average-pooled.

Both are compositions of earlier layers (:class:`~scratchvision.nn.Conv2d`,
:class:`~scratchvision.nn.ReLU`, :class:`~scratchvision.nn.MaxPool2d`) joined by the one new
operation, channel concatenation. Its backward is the inverse bookkeeping::

    y = concat_c(b_1(x), ..., b_K(x))        (N, C_1 + ... + C_K, H, W)                (1)
    grad_b_k = grad_y[:, C_1 + ... + C_{k-1} : C_1 + ... + C_k]   (split, eq. 2)
    grad_x = sum_k b_k.backward(grad_b_k)    every branch read x                        (3)

(concatenation is a permutation of its inputs' entries, so its Jacobian just routes each
gradient entry back to where the value came from; the sum in (3) is the multivariate chain rule
for an input used by several branches). Equations (1) to (3) carry the same numbers on the docs
page ``strategies/multi_kernel.md``, which derives them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import _checks
from .._dispatch import BACKENDS
from .activation import ReLU
from .conv import Conv2d
from .init import as_generator, float_dtype
from .module import Module, ModuleList, Sequential
from .pooling import GlobalAvgPool2d, MaxPool2d

__all__ = ["InceptionBlock", "ASPP", "ASPPPooling", "concat_channels",
           "split_channels", "check_feature_map"]


def check_feature_map(x, name: str, channels: int, owner: str) -> np.ndarray:
    """Validate a feature map (N, C, H, W) with ``channels`` channels for layer ``owner``."""
    x = _checks.float_array(x, name, ndim=4)
    if x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels (dim 1) for {owner}, got shape "
                         f"{x.shape}")
    return x


def concat_channels(maps: Sequence[np.ndarray]) -> np.ndarray:
    """eq. (1): [(N, C_k, H, W)] -> (N, C_1 + ... + C_K, H, W), in the order given."""
    return np.concatenate(maps, axis=1)


def split_channels(grad: np.ndarray, channels: Sequence[int]) -> list[np.ndarray]:
    """eq. (2), the backward of :func:`concat_channels`: (N, sum C_k, H, W) -> [(N, C_k, H, W)]
    (views of ``grad``)."""
    bounds = np.cumsum(channels)[:-1]
    return np.split(grad, bounds, axis=1)


def _branches_forward(branches: Sequence[Module], x: np.ndarray) -> np.ndarray:
    """eq. (1): every branch on x, concatenated along the channels."""
    return concat_channels([branch(x) for branch in branches])


def _branches_backward(branches: Sequence[Module], grad, channels: Sequence[int]):
    """eqs. (2)-(3): split grad by the branches' output channels, run each branch's backward,
    and sum the gradients that reach x."""
    grad = _checks.float_array(grad, "grad", ndim=4)
    if grad.shape[1] != sum(channels):
        raise ValueError(f"grad must have {sum(channels)} channels (dim 1), the shape of "
                         f"forward's output, got shape {grad.shape}")
    grads = [branch.backward(g) for branch, g in zip(branches, split_channels(grad, channels))]
    return sum(grads[1:], grads[0])


class InceptionBlock(Module):
    """GoogLeNet's Inception block (Szegedy et al. 2015, "Going deeper with convolutions"):
    four parallel branches on the same input, concatenated along the channels in this order::

        branch1: 1x1 conv (ch1x1)                                 -> ReLU
        branch2: 1x1 conv (ch3x3red) -> ReLU -> 3x3 conv, pad 1 (ch3x3) -> ReLU
        branch3: 1x1 conv (ch5x5red) -> ReLU -> 5x5 conv, pad 2 (ch5x5) -> ReLU
        branch4: 3x3 max pool, stride 1, pad 1 -> 1x1 conv (pool_proj) -> ReLU

    The 1x1 "reduction" convolutions shrink the channels before the expensive 3x3 and 5x5
    kernels. Every convolution is followed by a ReLU, as in the paper; there is no batch norm
    (torchvision's GoogLeNet adds one after each conv, drops the conv biases, and uses a 3x3
    kernel where the paper has 5x5). Padding keeps H and W, so the branches line up.

    Args:
        in_channels: C_in.
        ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj: the channels of each convolution.
        rng, dtype, backend: as for :class:`~scratchvision.nn.Conv2d` (the backend is passed
            to every convolution and to the max pool).

    Parameters: ``branch1.0.{weight,bias}``, ``branch2.0.*`` and ``branch2.2.*``,
    ``branch3.0.*`` and ``branch3.2.*``, ``branch4.1.*`` (Sequential indices).
    Shapes: x (N, C_in, H, W) -> y (N, ch1x1 + ch3x3 + ch5x5 + pool_proj, H, W).
    Backward: eqs. (2)-(3) of the module docstring.
    """

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int,
                 ch5x5: int, pool_proj: int, *, rng=None, dtype=np.float64,
                 backend: str = "auto"):
        super().__init__()
        self.in_channels = _checks.positive_int(in_channels, "in_channels")
        widths = dict(ch1x1=ch1x1, ch3x3red=ch3x3red, ch3x3=ch3x3, ch5x5red=ch5x5red,
                      ch5x5=ch5x5, pool_proj=pool_proj)
        for name, value in widths.items():
            widths[name] = _checks.positive_int(value, name)
        _checks.choice(backend, "backend", BACKENDS)
        rng, dtype = as_generator(rng), float_dtype(dtype)

        def conv(c_in, c_out, kernel, padding=0):
            return Conv2d(c_in, c_out, kernel, padding=padding, rng=rng, dtype=dtype,
                          backend=backend)

        c_in = self.in_channels
        self.branch1 = Sequential(conv(c_in, widths["ch1x1"], 1), ReLU())
        self.branch2 = Sequential(conv(c_in, widths["ch3x3red"], 1), ReLU(),
                                  conv(widths["ch3x3red"], widths["ch3x3"], 3, padding=1), ReLU())
        self.branch3 = Sequential(conv(c_in, widths["ch5x5red"], 1), ReLU(),
                                  conv(widths["ch5x5red"], widths["ch5x5"], 5, padding=2), ReLU())
        self.branch4 = Sequential(MaxPool2d(3, stride=1, padding=1, backend=backend),
                                  conv(c_in, widths["pool_proj"], 1), ReLU())
        #: the output channels of the four branches, in concatenation order
        self.branch_channels = (widths["ch1x1"], widths["ch3x3"], widths["ch5x5"],
                                widths["pool_proj"])

    @property
    def out_channels(self) -> int:
        return sum(self.branch_channels)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, branch_channels={self.branch_channels}"

    @property
    def _branches(self) -> tuple[Module, ...]:
        return (self.branch1, self.branch2, self.branch3, self.branch4)

    def forward(self, x) -> np.ndarray:
        """x (N, C_in, H, W) -> y (N, out_channels, H, W), the branches' outputs in order."""
        x = check_feature_map(x, "x", self.in_channels, "InceptionBlock")
        return _branches_forward(self._branches, x)

    def backward(self, grad) -> np.ndarray:
        """grad (N, out_channels, H, W) -> grad_x (N, C_in, H, W), the sum over the branches;
        accumulates every convolution's weight and bias gradients."""
        return _branches_backward(self._branches, grad, self.branch_channels)


class ASPPPooling(Sequential):
    """ASPP's image-level branch: global average pool -> 1x1 conv -> ReLU, then the (N, C, 1, 1)
    result is spread back over the input's H x W.

    torchvision upsamples it with ``interpolate(mode="bilinear", align_corners=False)``; from a
    1x1 map every output pixel's taps all land on the one input pixel (weights summing to 1),
    so the upsampled map is that value everywhere: a broadcast. Its backward sums the gradient
    over H and W. Submodules ``0`` (pool), ``1`` (conv) and ``2`` (ReLU), as torchvision's
    indices for the pool and the conv.
    """

    def __init__(self, in_channels: int, out_channels: int, *, rng, dtype, backend: str):
        super().__init__(GlobalAvgPool2d(),
                         Conv2d(in_channels, out_channels, 1, rng=rng, dtype=dtype,
                                backend=backend),
                         ReLU())

    def forward(self, x) -> np.ndarray:
        """x (N, C_in, H, W) -> (N, C_out, H, W), constant over each plane."""
        pooled = super().forward(x)  # (N, C_out, 1, 1)
        self._save_for_backward(size=x.shape[2:])
        return np.broadcast_to(pooled, pooled.shape[:2] + x.shape[2:]).copy()

    def backward(self, grad) -> np.ndarray:
        """grad (N, C_out, H, W) -> grad_x (N, C_in, H, W)."""
        size = self._saved_for_backward()["size"]
        grad = _checks.float_array(grad, "grad", ndim=4)
        if grad.shape[2:] != size:
            raise ValueError(f"grad must have the spatial size {tuple(size)} of forward's "
                             f"input, got shape {grad.shape}")
        # the broadcast's backward: (N, C_out, H, W) -> (N, C_out, 1, 1)
        return super().backward(grad.sum(axis=(2, 3), keepdims=True))


class ASPP(Module):
    """DeepLabv3's atrous spatial pyramid pooling (Chen et al. 2017, "Rethinking atrous
    convolution for semantic image segmentation"): parallel branches on the same input,
    concatenated along the channels in this order, then projected::

        convs.0:     1x1 conv                                         -> ReLU
        convs.k:     3x3 conv, dilation = padding = rates[k - 1]      -> ReLU   (k = 1..R)
        convs.(R+1): global average pool -> 1x1 conv -> ReLU -> broadcast to H x W
        project:     1x1 conv from (R + 2) * out_channels to out_channels -> ReLU

    A 3x3 kernel dilated by r has taps r pixels apart and sees a (2r + 1) x (2r + 1) window for
    9 weights: large receptive fields at the cost of a small one. Padding r keeps H and W.
    Unlike torchvision's ``ASPP``, there is no batch norm after the convolutions (so they have
    biases) and no dropout after the projection.

    Args:
        in_channels: C_in.
        out_channels: the channels of every branch and of the output.
        rates: the dilation rates, positive ints (the paper uses (6, 12, 18) at output
            stride 16).
        rng, dtype, backend: as for :class:`~scratchvision.nn.Conv2d`.

    Parameters: ``convs.0.0.*``, ``convs.k.0.*``, ``convs.(R+1).1.*`` and ``project.0.*``
    (``weight`` and ``bias``): torchvision's positions for the convolutions.
    Shapes: x (N, C_in, H, W) -> y (N, out_channels, H, W).
    Backward: ``project``, then eqs. (2)-(3) of the module docstring.
    """

    def __init__(self, in_channels: int, out_channels: int, rates: Sequence[int] = (6, 12, 18),
                 *, rng=None, dtype=np.float64, backend: str = "auto"):
        super().__init__()
        self.in_channels = _checks.positive_int(in_channels, "in_channels")
        self.out_channels = _checks.positive_int(out_channels, "out_channels")
        if isinstance(rates, (str, bytes)) or not isinstance(rates, Sequence) or not rates:
            raise ValueError(f"rates must be a non-empty sequence of positive ints, got "
                             f"{rates!r}")
        self.rates = tuple(_checks.positive_int(rate, "rates") for rate in rates)
        _checks.choice(backend, "backend", BACKENDS)
        rng, dtype = as_generator(rng), float_dtype(dtype)
        layers = dict(rng=rng, dtype=dtype, backend=backend)
        c_in, c_out = self.in_channels, self.out_channels
        branches = [Sequential(Conv2d(c_in, c_out, 1, **layers), ReLU())]
        branches += [Sequential(Conv2d(c_in, c_out, 3, padding=rate, dilation=rate, **layers),
                                ReLU())
                     for rate in self.rates]
        branches.append(ASPPPooling(c_in, c_out, **layers))
        self.convs = ModuleList(branches)
        self.project = Sequential(Conv2d(len(branches) * c_out, c_out, 1, **layers), ReLU())

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, rates={self.rates}"

    def forward(self, x) -> np.ndarray:
        """x (N, C_in, H, W) -> y (N, out_channels, H, W)."""
        x = check_feature_map(x, "x", self.in_channels, "ASPP")
        return self.project(_branches_forward(list(self.convs), x))

    def backward(self, grad) -> np.ndarray:
        """grad (N, out_channels, H, W) -> grad_x (N, C_in, H, W); accumulates every
        convolution's weight and bias gradients."""
        grad_branches = self.project.backward(grad)
        return _branches_backward(list(self.convs), grad_branches,
                                  [self.out_channels] * len(self.convs))
