"""The tiny backbone every detector here shares: strided 3x3 convolutions and ReLUs.

A real detector starts from a ResNet trained on ImageNet; here the backbone learns from
scratch on the shapes data in minutes, so it is small. Five stages halve the resolution one
after the other and hand out three maps, the classic C3-C5 of a feature pyramid:

==========  ========  ===========================  ===================
stage       stride    layers                       out (256x256 input)
==========  ========  ===========================  ===================
stem        2         conv 3x3 s2                  16 x 128 x 128
stage2      4         conv 3x3 s2                  32 x 64 x 64
stage3 (C3) 8         conv 3x3 s2, conv 3x3        64 x 32 x 32
stage4 (C4) 16        conv 3x3 s2, conv 3x3        96 x 16 x 16
stage5 (C5) 32        conv 3x3 s2                  128 x 8 x 8
==========  ========  ===========================  ===================

(channels are the defaults; ``widths`` changes them). Every convolution is followed by a ReLU.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import _checks
from ..nn import Conv2d, Module, ReLU, Sequential

__all__ = ["TinyBackbone", "DEFAULT_WIDTHS"]

#: output channels of the stem, stage2, C3, C4 and C5
DEFAULT_WIDTHS = (16, 32, 64, 96, 128)


def _conv_relu(c_in: int, c_out: int, stride: int, *, rng, dtype, backend) -> list[Module]:
    return [Conv2d(c_in, c_out, 3, stride=stride, padding=1, rng=rng, dtype=dtype,
                   backend=backend), ReLU()]


class TinyBackbone(Module):
    """Images (N, 3, H, W) -> ``[C3, C4, C5]`` at strides 8, 16 and 32 (finest first).

    Args:
        widths: the output channels of the stem, stage2, C3, C4 and C5.
        rng, dtype, backend: as for :class:`~scratchvision.nn.Conv2d`.

    Parameters: ``stem.0.weight``, ``stage2.0.weight``, ``stage3.{0,2}.weight``,
    ``stage4.{0,2}.weight``, ``stage5.0.weight`` and their biases. ``out_channels`` lists the
    channels of C3, C4 and C5.
    """

    def __init__(self, widths: Sequence[int] = DEFAULT_WIDTHS, *, rng=None,
                 dtype=np.float32, backend: str = "auto"):
        super().__init__()
        if len(widths) != 5:
            raise ValueError(f"widths must hold 5 channel counts (stem, stage2, C3, C4, C5), "
                             f"got {widths!r}")
        w = [_checks.positive_int(c, "widths") for c in widths]
        layers = dict(rng=np.random.default_rng(rng), dtype=dtype, backend=backend)
        self.stem = Sequential(*_conv_relu(3, w[0], 2, **layers))
        self.stage2 = Sequential(*_conv_relu(w[0], w[1], 2, **layers))
        self.stage3 = Sequential(*_conv_relu(w[1], w[2], 2, **layers),
                                 *_conv_relu(w[2], w[2], 1, **layers))
        self.stage4 = Sequential(*_conv_relu(w[2], w[3], 2, **layers),
                                 *_conv_relu(w[3], w[3], 1, **layers))
        self.stage5 = Sequential(*_conv_relu(w[3], w[4], 2, **layers))
        self.out_channels = (w[2], w[3], w[4])
        self.backend = backend

    def forward(self, images) -> list[np.ndarray]:
        """images (N, 3, H, W) -> [C3 (N, w2, H/8, W/8), C4 (N, w3, H/16, W/16),
        C5 (N, w4, H/32, W/32)] (sizes rounded up, as strided convolutions with padding 1)."""
        x = self.stage2(self.stem(images))
        c3 = self.stage3(x)
        c4 = self.stage4(c3)
        c5 = self.stage5(c4)
        return [c3, c4, c5]

    def backward(self, grads) -> np.ndarray:
        """One gradient per output map (None where an output did not reach the loss) -> the
        gradient with respect to the images."""
        g3, g4, g5 = grads
        g4 = _add(g4, None if g5 is None else self.stage5.backward(g5))
        g3 = _add(g3, None if g4 is None else self.stage4.backward(g4))
        return self.stem.backward(self.stage2.backward(self.stage3.backward(g3)))


def _add(a, b):
    """``a + b`` where either may be None (no gradient reached that map)."""
    if a is None:
        return b
    return a if b is None else a + b
