"""``PositionEmbeddingSine``: the sine positional encoding of DETR, in Deformable DETR's version
(``models/position_encoding.py``), computed from an image batch's padding mask.

A transformer sees a set of positions, not a grid; the encoding tells each pixel where it is.
For image n, pixel (i, j) counts the **unpadded** pixels up to and including itself in its
column and in its row (padding sits at the bottom and right of a batch padded to a common
size, so these are 1-based row and column numbers within the image)::

    y_embed[n, i, j] = sum_{i' <= i} not_mask[n, i', j]                         (24)
    x_embed[n, i, j] = sum_{j' <= j} not_mask[n, i, j']

With ``normalize=True`` (what Deformable DETR builds) they move to the pixel centre and are
divided by the image's height (width), so every image spans ``(0, scale)`` whatever its size::

    y_embed <- (y_embed - 0.5) / (y_embed[n, H - 1, j] + 1e-6) * scale         (25)
    x_embed <- (x_embed - 0.5) / (x_embed[n, i, W - 1] + 1e-6) * scale

(DETR itself does not subtract 0.5; the 1e-6 keeps a fully padded column finite.) With
F = num_pos_feats and ``dim_t[f] = temperature ** (2 * (f // 2) / F)`` -- each wavelength used
twice -- the F channels of a coordinate e are::

    channel 2k:      sin(e / dim_t[2k])        channel 2k + 1:  cos(e / dim_t[2k + 1])    (26)

sin and cos of one frequency side by side (interleaved); the output stacks the F channels of
y_embed, then the F of x_embed: (N, 2F, H, W).

There is no backward: the encoding is a function of the boolean mask alone, has no parameters,
and nothing upstream of it can receive a gradient (a learned encoding would; this one is
fixed). :func:`scratchvision.nn.sine_position_encoding` is this module with ``normalize=True``
and F = d_model / 2, flattened to the encoder's (N, H*W, C) layout. Equation numbers are those
of the docs page "DETR's layers and their gradients".
"""

from __future__ import annotations

import math

import numpy as np

from .. import _checks
from .init import float_dtype
from .module import Module

__all__ = ["PositionEmbeddingSine"]


class PositionEmbeddingSine(Module):
    """Equations (24)-(26) of the module docstring: padding mask (N, H, W) -> (N, 2F, H, W).

    Args:
        num_pos_feats: F, the channels per coordinate; even (sin and cos of F / 2 wavelengths).
            Deformable DETR uses d_model / 2, so that the encoding has d_model channels.
        temperature: the base of the geometric sequence of wavelengths: they run from
            ``2 pi`` to ``2 pi temperature^((F - 2) / F)`` in units of the embedded coordinate.
        normalize: whether to apply (25). Without it the coordinates are the raw counts of (24).
        scale: the largest normalised coordinate (2 pi: one full turn of the fastest sine
            across the image). Used only with ``normalize=True``.
        dtype: float64 (default) or float32, the dtype of the output; the arithmetic is float64.

    No parameters, no backward (see the module docstring). Deformable DETR computes in float32;
    here the arithmetic is float64, so float32 outputs may differ from torch's in the last bit.
    """

    def __init__(self, num_pos_feats: int = 64, temperature: float = 10000,
                 normalize: bool = True, scale: float = 2 * math.pi, *, dtype=np.float64):
        super().__init__()
        self.num_pos_feats = _checks.positive_int(num_pos_feats, "num_pos_feats")
        if self.num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be even (sin and cos of each wavelength), "
                             f"got {self.num_pos_feats}")
        self.temperature = _checks.real_number(temperature, "temperature", finite=True,
                                               positive=True)
        self.normalize = _checks.boolean(normalize, "normalize")
        self.scale = _checks.real_number(scale, "scale", finite=True)
        self.dtype = float_dtype(dtype)

    def extra_repr(self) -> str:
        return (f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, "
                f"normalize={self.normalize}, scale={self.scale}")

    def forward(self, mask) -> np.ndarray:
        """mask (N, H, W) bool, True at padded pixels (all False for an unpadded batch) ->
        the encoding (N, 2 * num_pos_feats, H, W): y channels first, then x channels.

        Padded pixels get an encoding too (their counts repeat the last unpadded value); it is
        never used, because the attention masks padded positions out.
        """
        mask = np.asarray(mask)
        if mask.dtype != np.bool_:
            raise TypeError(f"mask must be a boolean array (True marks padding), got dtype "
                            f"{mask.dtype}")
        if mask.ndim != 3:
            raise ValueError(f"mask must have 3 dimensions (N, H, W), got shape {mask.shape}")
        # --8<-- [start:embed]
        not_mask = ~mask
        y_embed = np.cumsum(not_mask, axis=1, dtype=np.float64)  # (24): (N, H, W)
        x_embed = np.cumsum(not_mask, axis=2, dtype=np.float64)  # (24): (N, H, W)
        if self.normalize:
            eps = 1e-6  # the valid size is 0 in a fully padded column or row
            y_embed = (y_embed - 0.5) / (y_embed[:, -1:, :] + eps) * self.scale  # (25)
            x_embed = (x_embed - 0.5) / (x_embed[:, :, -1:] + eps) * self.scale  # (25)
        f = np.arange(self.num_pos_feats)
        dim_t = self.temperature ** (2 * (f // 2) / self.num_pos_feats)  # (F,), pairs equal
        # (N, H, W, 1) / (F,) -> (N, H, W, F), then (26): sin of the even channels and cos of
        # the odd ones, stacked (N, H, W, F/2, 2) and flattened: sin, cos, sin, cos, ...
        phase_y = y_embed[..., None] / dim_t
        phase_x = x_embed[..., None] / dim_t
        pos_y = np.stack([np.sin(phase_y[..., 0::2]), np.cos(phase_y[..., 1::2])], axis=-1)
        pos_x = np.stack([np.sin(phase_x[..., 0::2]), np.cos(phase_x[..., 1::2])], axis=-1)
        pos = np.concatenate([pos_y.reshape(phase_y.shape), pos_x.reshape(phase_x.shape)],
                             axis=-1)  # (N, H, W, 2F): y channels, then x channels
        return np.ascontiguousarray(pos.transpose(0, 3, 1, 2), dtype=self.dtype)  # (N, 2F, H, W)
        # --8<-- [end:embed]

    def backward(self, grad):
        """Not available: the encoding depends only on the boolean mask and has no
        parameters, so there is no gradient to return or to accumulate."""
        raise RuntimeError("PositionEmbeddingSine has no backward: its output depends only "
                           "on the boolean padding mask and it has no parameters, so no "
                           "gradient flows through it")
