"""``DeformableEncoderLayer``: one layer of Deformable DETR's encoder, and the two inputs a
learner builds for it, :func:`encoder_reference_points` and :func:`sine_position_encoding`.

The encoder reads the multi-scale feature maps of a backbone, flattened and concatenated into
``src`` (N, S, C), S = sum_l H_l W_l, and refines them with deformable self-attention: every
position is a query whose reference point is its own pixel centre, and it attends to a few
points around that centre on every level. A position knows where it is from ``pos`` (a sine
encoding of its (x, y)) and on which level it lies from a learned level embedding.

Building the encoder input from maps ``x_l`` (N, C, H_l, W_l) and masks ``m_l`` (N, H_l, W_l)::

    src = concatenate([x_l.reshape(N, C, -1).transpose(0, 2, 1) for x_l in maps], axis=1)
    pos = concatenate([sine_position_encoding(m_l, C) for m_l in masks], axis=1)
    shapes = [[H_l, W_l] for ...];  starts = ms_deform_attn.level_start_index_of(shapes)
    ref = encoder_reference_points(shapes)                      # (1, S, L, 2)
    ref = np.broadcast_to(ref, (N,) + ref.shape[1:])
    out = layer(src, pos, ref, shapes, starts)                  # (N, S, C)
"""

from __future__ import annotations

import math

import numpy as np

from .. import _checks
from .._dispatch import BACKENDS
from .activation import ReLU
from .deformable_attention import MSDeformAttn
from .init import as_generator, float_dtype, xavier_uniform
from .linear import Linear
from .module import Module, Parameter
from .norm import LayerNorm
from .position_encoding import PositionEmbeddingSine
from .post_norm import add_and_norm, add_and_norm_backward, feed_forward, feed_forward_backward

__all__ = ["DeformableEncoderLayer", "encoder_reference_points", "sine_position_encoding",
           "level_embed_gradient"]


def encoder_reference_points(spatial_shapes, valid_ratios=None) -> np.ndarray:
    """The reference point of every encoder position on every level (Deformable DETR's
    ``get_reference_points``).

    Position (i, j) of level l is the centre of its pixel, ``((j + 0.5) / W_l, (i + 0.5) /
    H_l)`` in normalised coordinates. When images in a batch are padded to a common size, only
    the top-left ``valid_ratios`` fraction of each level holds the image; the centre is then
    measured in units of the valid area, ``(j + 0.5) / (r_w W_l)``, and mapped to level l' by
    multiplying with that level's ratios ``(r_w', r_h')``, so it lands on the same image point.

    Args:
        spatial_shapes: (L, 2) integers, ``(H_l, W_l)``.
        valid_ratios: None (no padding: all ones) or (N, L, 2) floats ``(r_w, r_h)`` in (0, 1],
            the fraction of each level's width and height that is not padding.

    Returns:
        (N, S, L, 2) normalised ``(x, y)``, or (1, S, L, 2) when ``valid_ratios`` is None; the
        dtype of ``valid_ratios`` (float64 when None).
    """
    shapes = _checks.index_array(spatial_shapes, "spatial_shapes", ndim=2)
    _checks.last_dim(shapes, "spatial_shapes", 2, "(H, W) per level")
    n_levels = shapes.shape[0]
    if valid_ratios is None:
        ratios = np.ones((1, n_levels, 2))
    else:
        ratios = _checks.float_array(valid_ratios, "valid_ratios", ndim=3)
        _checks.shape_equals(ratios, "valid_ratios", (ratios.shape[0], n_levels, 2),
                             f"(N, L, 2) with L = {n_levels} levels of spatial_shapes")
    centres = []
    for level, (height, width) in enumerate(shapes):
        # pixel centres of level l, row-major: (H, W) grids -> (H*W,)
        y, x = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
        r_w, r_h = ratios[:, None, level, 0], ratios[:, None, level, 1]  # (N, 1) each
        # (H*W,) / (N, 1) -> (N, H*W); stacked as (x, y) -> (N, H*W, 2)
        centres.append(np.stack([x.reshape(-1) / (r_w * width),
                                 y.reshape(-1) / (r_h * height)], axis=-1))
    reference = np.concatenate(centres, axis=1)  # (N, S, 2)
    # (N, S, 1, 2) * (N, 1, L, 2) -> (N, S, L, 2)
    return (reference[:, :, None, :] * ratios[:, None, :, :]).astype(ratios.dtype)


def sine_position_encoding(mask, d_model: int, temperature: float = 10000.0,
                           scale: float = 2 * math.pi) -> np.ndarray:
    """The sine positional encoding of DETR in Deformable DETR's variant (which measures from
    pixel centres), flattened for the encoder: :class:`~scratchvision.nn.PositionEmbeddingSine`
    with ``num_pos_feats = d_model / 2`` and ``normalize=True``, reshaped from (N, C, H, W) to
    the (N, H*W, C) layout of the flattened features.

    Each unpadded pixel gets its row and column number counted from 1 within the valid area,
    ``y_embed`` and ``x_embed`` (cumulative sums of the non-padding mask), shifted by -0.5 to
    the pixel centre (DETR itself does not shift) and normalised to ``(0, scale)`` by the valid
    height and width. With F = d_model / 2 features per coordinate and wavelengths
    ``T^(2k / F)``, k < F / 2::

        channel 2k, 2k + 1       of the y half:  sin(y_embed / T^(2k/F)), cos(y_embed / T^(2k/F))
        F + 2k, F + 2k + 1       of the x half:  the same with x_embed

    Args:
        mask: (N, H, W) bool, True at padded pixels (all False for unpadded images).
        d_model: C, the number of channels; a multiple of 4 (sin and cos of each coordinate).
        temperature: T, the base of the geometric sequence of wavelengths.
        scale: the largest normalised coordinate (2 pi, one full turn of the fastest sine).

    Returns:
        (N, H*W, C) float64, row-major positions like the flattened features.
    """
    d_model = _checks.positive_int(d_model, "d_model")
    if d_model % 4:
        raise ValueError(f"d_model must be a multiple of 4 (sin and cos of x and y), got "
                         f"{d_model}")
    pos = PositionEmbeddingSine(d_model // 2, temperature, normalize=True, scale=scale)(mask)
    n_batch = pos.shape[0]
    # (N, C, H, W) -> (N, C, H*W) -> (N, H*W, C)
    return np.ascontiguousarray(pos.reshape(n_batch, d_model, -1).transpose(0, 2, 1))


def level_embed_gradient(grad_pos: np.ndarray, levels: np.ndarray, n_levels: int):
    """The gradient of ``level_embed`` (L, C), whose row l was added to every position of level
    l in every image: ``grad_pos`` (N, S, C) summed over the images and over each level's
    positions (``levels`` (S,) the level of each position)."""
    grad = np.zeros((n_levels, grad_pos.shape[-1]), dtype=grad_pos.dtype)
    np.add.at(grad, levels, grad_pos.sum(axis=0))  # (N, S, C) -> (S, C) -> (L, C)
    return grad


class DeformableEncoderLayer(Module):
    """One Deformable DETR encoder layer (``DeformableTransformerEncoderLayer`` with the ReLU
    activation and no dropout) that also adds the level embedding, which Deformable DETR keeps
    in the enclosing transformer::

        lvl_pos = pos + level_embed[level of each position]
        src2 = self_attn(src + lvl_pos, reference_points, src, ...)   # queries carry position
        x    = norm1(src + src2)                                      # residual, post-norm
        out  = norm2(x + linear2(relu(linear1(x))))                   # FFN, residual, post-norm

    Args:
        d_model: C, the channels of every position.
        d_ffn: the hidden width of the feed-forward network.
        n_levels, n_heads, n_points: L, M and P of :class:`MSDeformAttn`.
        rng: None, an int seed or a ``numpy.random.Generator`` for the initial values.
        dtype: float64 (default) or float32, the dtype of the parameters.
        backend: the tier of :mod:`scratchvision.ops.ms_deform_attn` the attention runs on.

    Parameters and their initialisation (Deformable DETR's ``DeformableTransformer``):
    ``level_embed`` (L, C) standard normal; ``self_attn.*`` as :class:`MSDeformAttn`;
    ``norm1.*``, ``norm2.*`` (C,) ones and zeros; ``linear1.weight`` (d_ffn, C) and
    ``linear2.weight`` (C, d_ffn) Xavier-uniform; ``linear1.bias``, ``linear2.bias`` torch's
    Linear default ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.
    """

    def __init__(self, d_model: int = 256, d_ffn: int = 1024, n_levels: int = 4,
                 n_heads: int = 8, n_points: int = 4, *, level_embed: bool = True, rng=None,
                 dtype=np.float64, backend: str = "auto"):
        super().__init__()
        d_model = _checks.positive_int(d_model, "d_model")
        d_ffn = _checks.positive_int(d_ffn, "d_ffn")
        n_levels = _checks.positive_int(n_levels, "n_levels")
        rng, dtype = as_generator(rng), float_dtype(dtype)
        _checks.choice(backend, "backend", BACKENDS)
        self.backend = backend
        # a transformer that adds the level embedding itself (``DeformableTransformer``, as
        # in the reference) builds its layers with level_embed=False: no parameter here then
        self.level_embed = (Parameter(rng.standard_normal((n_levels, d_model)).astype(dtype))
                            if _checks.boolean(level_embed, "level_embed") else None)
        self.n_levels = n_levels
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, rng=rng,
                                      dtype=dtype, backend=backend)
        self.norm1 = LayerNorm(d_model, dtype=dtype)
        self.linear1 = Linear(d_model, d_ffn, rng=rng, dtype=dtype)
        self.activation = ReLU()  # no parameters: adds nothing to the state_dict
        self.linear2 = Linear(d_ffn, d_model, rng=rng, dtype=dtype)
        self.norm2 = LayerNorm(d_model, dtype=dtype)
        for linear in (self.linear1, self.linear2):
            linear.weight.data[...] = xavier_uniform(linear.weight.shape, rng, dtype)

    @property
    def d_model(self) -> int:
        return self.self_attn.d_model

    def extra_repr(self) -> str:
        attn = self.self_attn
        return (f"d_model={attn.d_model}, d_ffn={self.linear1.out_features}, "
                f"n_levels={attn.n_levels}, n_heads={attn.n_heads}, n_points={attn.n_points}, "
                f"backend={self.backend!r}")

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index,
                padding_mask=None) -> np.ndarray:
        """One encoder layer over the flattened multi-scale features.

        Args:
            src: (N, S, C) features of all L levels, flattened and concatenated.
            pos: (N, S, C) positional encoding of every position
                (e.g. :func:`sine_position_encoding` per level, concatenated).
            reference_points: (N, S, L, 2) each position's reference point on every level
                (:func:`encoder_reference_points`).
            spatial_shapes: (L, 2) integers ``(H_l, W_l)``.
            level_start_index: (L,) integers, where each level starts in S.
            padding_mask: None or (N, S) bool, True at padded positions.

        Returns:
            (N, S, C), the refined features. Remembers what :meth:`backward` needs.
        """
        src = _checks.float_array(src, "src", ndim=3)
        pos = _checks.float_array(pos, "pos", ndim=3)
        _checks.shape_equals(pos, "pos", src.shape, "the shape of src (N, S, C)")
        levels = self._level_of_each_position(spatial_shapes, src.shape[1])
        lvl_pos = pos if self.level_embed is None else pos + self.level_embed.data[levels]
        src2 = self.self_attn(src + lvl_pos, reference_points, src, spatial_shapes,
                              level_start_index, padding_mask)
        x = add_and_norm(src, src2, self.norm1)
        self._save_for_backward(levels=levels)
        # NOTE: relu's derivative at exactly 0 is taken as 0 (ReLU's convention)
        return feed_forward(x, **self._ffn())

    def _ffn(self) -> dict:
        """The submodules of the feed-forward sublayer, as :mod:`.post_norm` takes them."""
        return dict(linear1=self.linear1, activation=self.activation, linear2=self.linear2,
                    norm=self.norm2)

    def _level_of_each_position(self, spatial_shapes, n_positions: int) -> np.ndarray:
        """(S,) int64: the level of every flattened position, ``l`` repeated ``H_l W_l``
        times."""
        shapes = _checks.index_array(spatial_shapes, "spatial_shapes", ndim=2)
        _checks.last_dim(shapes, "spatial_shapes", 2, "(H, W) per level")
        n_levels = self.n_levels
        if shapes.shape[0] != n_levels:
            raise ValueError(f"spatial_shapes must have n_levels = {n_levels} rows, one (H, W) "
                             f"per level, got shape {shapes.shape}")
        sizes = shapes[:, 0] * shapes[:, 1]
        if (shapes < 1).any() or sizes.sum() != n_positions:
            raise ValueError(f"spatial_shapes must hold positive (H, W) sizes whose H * W sum "
                             f"to src's S = {n_positions} positions, got {shapes.tolist()}")
        return np.repeat(np.arange(n_levels), sizes)

    def backward(self, grad):
        """grad (N, S, C), the gradient with respect to the most recent forward's output ->
        ``(grad_src (N, S, C), grad_pos (N, S, C), grad_reference_points (N, S, L, 2))``.
        Adds every parameter's gradient into its ``.grad``.

        src reaches the output along three paths inside the attention block -- the residual,
        the attention's features (``input_flatten``) and its queries (``src + lvl_pos``) -- so
        its gradient is their sum; pos and level_embed reach the output only through the
        queries. Likewise x, the output of norm1, reaches norm2 directly and through the FFN.
        """
        levels = self._saved_for_backward()["levels"]
        g_x = feed_forward_backward(grad, **self._ffn())  # the residual path plus the FFN path
        g_residual, g_src2 = add_and_norm_backward(g_x, self.norm1)  # both: that of src + src2
        g_query, grad_ref, g_flat = self.self_attn.backward(g_src2)
        if self.level_embed is not None:
            self.level_embed.accumulate(level_embed_gradient(g_query, levels, self.n_levels))
        return g_residual + g_flat + g_query, g_query, grad_ref
