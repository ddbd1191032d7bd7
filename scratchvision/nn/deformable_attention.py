"""``MSDeformAttn``: the multi-scale deformable attention module of Deformable DETR, around
:mod:`scratchvision.ops.ms_deform_attn`.

The paper writes the attention of query q (content ``z_q``, reference point ``p_q``) over the
feature maps ``{x^l}`` of L levels as::

    MSDeformAttn(z_q, p_q, {x^l}) = sum_m W_m [sum_l sum_k A_mlqk * W'_m x^l(phi_l(p_q) + dp_mlqk)]

and the module computes each symbol with a learned linear map of its inputs:

=================  ===========================================================================
symbol             here
=================  ===========================================================================
``W'_m x^l``       ``value_proj(input_flatten)``, split into M heads of D = d_model / M channels
``dp_mlqk``        ``sampling_offsets(query)``: an (x, y) offset per head, level and point k,
                   in pixels of level l (2-d reference points) or in box units (4-d)
``A_mlqk``         ``softmax(attention_weights(query))`` over the L * P points of each head
``phi_l(p_q)``     ``reference_points[:, q, l]``, normalised to [0, 1]^2 on every level
``[...]``          :func:`scratchvision.ops.ms_deform_attn.forward`
``W_m``            ``output_proj``, applied to the M heads' outputs side by side
=================  ===========================================================================

There is no autograd: :meth:`MSDeformAttn.backward` runs these steps in reverse, each with its
own hand-written backward (the op's, ``Linear.backward``, ``softmax_backward``) and the two
small maps written out here (the reference-point mapping and the padding mask). Equation
numbers (8) to (11) in the comments refer to ``docs/derivations/ms_deform_attn.md``, which
derives the module's backward: the softmax (8), the locations from the reference points and
offsets (9), and the gradients of the offsets (10) and of the reference points (11).
"""

from __future__ import annotations

import math

import numpy as np

from .. import _checks
from .._dispatch import BACKENDS
from ..ops import ms_deform_attn
from .attention import softmax, softmax_backward
from .init import as_generator, float_dtype, xavier_uniform
from .linear import Linear
from .module import Module

__all__ = ["MSDeformAttn", "grid_offsets_bias"]


def grid_offsets_bias(n_heads: int, n_levels: int, n_points: int, dtype=np.float64
                      ) -> np.ndarray:
    """The paper's initial ``sampling_offsets.bias``, (n_heads * n_levels * n_points * 2,).

    Head m looks in direction ``theta_m = 2 pi m / M``: ``(cos theta_m, sin theta_m)`` divided
    by its largest absolute component, so the direction reaches the border of the unit square
    (head 1 of 8 gets (1, 1), not (0.71, 0.71)). Every level gets the same directions, and
    point k (0-based) goes k + 1 steps along it. With zero weights every query then starts by
    sampling M rays of P points around its reference point, a grid that covers all sides.
    Layout (M, L, P, 2) flattened, the order of ``sampling_offsets``' outputs.
    """
    theta = np.arange(n_heads) * (2.0 * math.pi / n_heads)  # (M,)
    direction = np.stack([np.cos(theta), np.sin(theta)], axis=-1)  # (M, 2) as (x, y)
    direction /= np.abs(direction).max(axis=-1, keepdims=True)
    steps = np.arange(1, n_points + 1, dtype=np.float64)  # point k goes k + 1 steps
    # (M, 1, 1, 2) * (1, 1, P, 1) -> (M, 1, P, 2) -> (M, L, P, 2)
    grid = direction[:, None, None, :] * steps[None, None, :, None]
    grid = np.broadcast_to(grid, (n_heads, n_levels, n_points, 2))
    return grid.reshape(-1).astype(dtype)


def _padding_mask(mask, n_batch: int, n_positions: int):
    """``input_padding_mask`` as an (N, S) bool array, or None."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise TypeError(f"input_padding_mask must be a boolean array (True marks padding), got "
                        f"dtype {mask.dtype}")
    _checks.shape_equals(mask, "input_padding_mask", (n_batch, n_positions),
                         "(N, S) of input_flatten")
    return mask


class MSDeformAttn(Module):
    """Multi-scale deformable attention (Deformable DETR's ``MSDeformAttn``).

    Args:
        d_model: C, the channels of the queries, of the input features and of the output.
        n_levels: L, the number of feature levels.
        n_heads: M; must divide d_model (each head gets D = d_model / M channels).
        n_points: P, the points each head samples on each level.
        rng: None, an int seed or a ``numpy.random.Generator`` for the initial values.
        dtype: float64 (default) or float32, the dtype of the parameters.
        backend: the tier of :mod:`scratchvision.ops.ms_deform_attn` (``"auto"``, ``"loop"``,
            ``"numpy"``, ``"numba"`` or ``"cuda"``); ``set_backend`` changes it later.

    Parameters (torch's names and shapes, so Deformable DETR's ``state_dict`` loads 1:1), with
    the paper's initialisation (``_reset_parameters``):

    * ``sampling_offsets.weight`` (M*L*P*2, C): zeros; ``sampling_offsets.bias``
      (M*L*P*2,): the grid-like pattern of :func:`grid_offsets_bias`;
    * ``attention_weights.weight`` (M*L*P, C) and ``.bias`` (M*L*P,): zeros, so every query
      starts with uniform attention ``1 / (L * P)`` over its points;
    * ``value_proj`` and ``output_proj``: weight (C, C) Xavier-uniform, bias (C,) zeros.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8,
                 n_points: int = 4, *, rng=None, dtype=np.float64, backend: str = "auto"):
        super().__init__()
        self.d_model = _checks.positive_int(d_model, "d_model")
        self.n_levels = _checks.positive_int(n_levels, "n_levels")
        self.n_heads = _checks.positive_int(n_heads, "n_heads")
        self.n_points = _checks.positive_int(n_points, "n_points")
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads must divide d_model: d_model is {self.d_model}, n_heads "
                             f"is {self.n_heads}")
        _checks.choice(backend, "backend", BACKENDS)
        self.backend = backend
        rng, dtype = as_generator(rng), float_dtype(dtype)
        n_samples = self.n_heads * self.n_levels * self.n_points  # M * L * P
        # rng=0: every initial value is replaced just below, so the Linears need not draw from
        # (and shift) the caller's stream. Registration order is torch's (state_dict order).
        self.sampling_offsets = Linear(d_model, 2 * n_samples, rng=0, dtype=dtype)
        self.attention_weights = Linear(d_model, n_samples, rng=0, dtype=dtype)
        self.value_proj = Linear(d_model, d_model, rng=0, dtype=dtype)
        self.output_proj = Linear(d_model, d_model, rng=0, dtype=dtype)
        self.sampling_offsets.weight.data.fill(0)
        self.sampling_offsets.bias.data[...] = grid_offsets_bias(n_heads, n_levels, n_points)
        self.attention_weights.weight.data.fill(0)
        self.attention_weights.bias.data.fill(0)
        for proj in (self.value_proj, self.output_proj):
            proj.weight.data[...] = xavier_uniform(proj.weight.shape, rng, dtype)
            proj.bias.data.fill(0)

    @property
    def head_dim(self) -> int:
        """D = d_model / n_heads, the channels of one head."""
        return self.d_model // self.n_heads

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_levels={self.n_levels}, n_heads={self.n_heads}, "
                f"n_points={self.n_points}, backend={self.backend!r}")

    def _check_queries(self, query, reference_points, input_spatial_shapes):
        """Validate query (N, Lq, C), reference_points (N, Lq, L, 2 or 4) and
        input_spatial_shapes (L, 2) against the layer and each other."""
        query = _checks.float_array(query, "query", ndim=3)
        _checks.last_dim(query, "query", self.d_model, "(d_model)")
        n_batch, n_queries, _ = query.shape
        ref = _checks.float_array(reference_points, "reference_points", ndim=4)
        if ref.shape[-1] not in (2, 4):
            raise ValueError(f"reference_points must have a last dimension of size 2 (x, y) or "
                             f"4 (cx, cy, w, h), got shape {ref.shape}")
        _checks.shape_equals(ref, "reference_points",
                             (n_batch, n_queries, self.n_levels, ref.shape[-1]),
                             f"(N, Lq) of query, n_levels = {self.n_levels}, then 2 or 4")
        shapes = _checks.index_array(input_spatial_shapes, "input_spatial_shapes", ndim=2)
        _checks.last_dim(shapes, "input_spatial_shapes", 2, "(H, W) per level")
        if shapes.shape[0] != self.n_levels:
            raise ValueError(f"input_spatial_shapes must have n_levels = {self.n_levels} rows, "
                             f"one (H, W) per level, got shape {shapes.shape}")
        return query, ref, shapes

    def _check_features(self, input_flatten, input_padding_mask, n_batch: int):
        """Validate input_flatten (N, S, C) and input_padding_mask (N, S) or None (the op
        checks that the levels cover the S positions, and input_level_start_index)."""
        flat = _checks.float_array(input_flatten, "input_flatten", ndim=3)
        _checks.last_dim(flat, "input_flatten", self.d_model, "(d_model)")
        _checks.same_size("query", n_batch, "input_flatten", flat.shape[0], "batch size (dim 0)")
        return flat, _padding_mask(input_padding_mask, n_batch, flat.shape[1])

    def _where_and_how_much(self, raw_offsets, raw_logits, ref, shapes):
        """The outputs of ``sampling_offsets`` (N, Lq, M*L*P*2) and ``attention_weights``
        (N, Lq, M*L*P) -> ``(offsets (N, Lq, M, L, P, 2), attention (N, Lq, M, L*P) after the
        softmax, locations (N, Lq, M, L, P, 2))``."""
        n_batch, n_queries = ref.shape[:2]
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        # dp_mlqk: (N, Lq, M*L*P*2) -> (N, Lq, M, L, P, 2)
        offsets = raw_offsets.reshape(n_batch, n_queries, heads, levels, points, 2)
        # A_mlqk: (N, Lq, M*L*P) -> (N, Lq, M, L*P), softmax over each head's L*P points
        logits = raw_logits.reshape(n_batch, n_queries, heads, levels * points)
        attention = softmax(logits, axis=-1)
        return offsets, attention, self._locations(offsets, ref, shapes)

    def _locations(self, offsets: np.ndarray, ref: np.ndarray, spatial_shapes: np.ndarray
                   ) -> np.ndarray:
        """``phi_l(p_q) + dp_mlqk``: (N, Lq, M, L, P, 2) normalised ``(x, y)`` from the offsets
        (N, Lq, M, L, P, 2) and the reference points ``ref`` (N, Lq, L, 2) or (N, Lq, L, 4).

        * points ``(x, y)``: ``ref + offset / (W_l, H_l)``, the offset counts pixels of level l;
        * boxes ``(cx, cy, w, h)``: ``(cx, cy) + offset / P * (w, h) / 2``, so the offsets of
          the grid-like initialisation (up to P steps) reach the box's border.
        """
        # --8<-- [start:locations]
        # (N, Lq, L, 2 or 4) -> (N, Lq, 1, L, 1, 2 or 4): broadcast over heads and points
        ref = ref[:, :, None, :, None, :]
        if ref.shape[-1] == 2:
            # (L, 2) (H, W) -> (W, H) per level, as (1, 1, 1, L, 1, 2)
            size = spatial_shapes[:, ::-1].astype(offsets.dtype)[None, None, None, :, None, :]
            return ref + offsets / size  # eq. (9), points
        return ref[..., :2] + offsets / self.n_points * ref[..., 2:] * 0.5  # eq. (9), boxes
        # --8<-- [end:locations]

    def sampling_locations_and_weights(self, query, reference_points, input_spatial_shapes):
        """Where each query looks and how much each point counts, for plotting and probing.

        Args:
            query, reference_points, input_spatial_shapes: as for :meth:`forward`.

        Returns:
            ``(locations (N, Lq, M, L, P, 2), weights (N, Lq, M, L, P))``: the normalised
            ``(x, y)`` of every sampled point and its attention weight (each head's L * P
            weights sum to 1). Computed afresh from the current parameters; the values forward
            saved are left alone, so this is safe to call between forward and backward.
        """
        query, ref, shapes = self._check_queries(query, reference_points, input_spatial_shapes)

        def affine(linear: Linear) -> np.ndarray:  # linear(query), without remembering query
            return query @ linear.weight.data.T + linear.bias.data  # (N, Lq, C) -> (N, Lq, out)

        offsets, attention, locations = self._where_and_how_much(
            affine(self.sampling_offsets), affine(self.attention_weights), ref, shapes)
        return locations, attention.reshape(offsets.shape[:-1])

    def forward(self, query, reference_points, input_flatten, input_spatial_shapes,
                input_level_start_index, input_padding_mask=None) -> np.ndarray:
        """Deformable attention of the queries over the flattened multi-scale features.

        Args:
            query: (N, Lq, C) the queries' content ``z_q`` (with positional encoding added).
            reference_points: (N, Lq, L, 2) normalised ``(x, y)`` per level, (0, 0) the
                top-left and (1, 1) the bottom-right corner (including any padded area); or
                (N, Lq, L, 4) boxes ``(cx, cy, w, h)`` in the same units.
            input_flatten: (N, S, C) the features of all L levels, each flattened row-major
                and concatenated, S = sum_l H_l W_l.
            input_spatial_shapes: (L, 2) integers, ``(H_l, W_l)`` of each level.
            input_level_start_index: (L,) integers, where each level starts in S
                (:func:`scratchvision.ops.ms_deform_attn.level_start_index_of`).
            input_padding_mask: None, or (N, S) bool, True at padded positions: their values
                are set to zero, so a point sampling there reads zero.

        Returns:
            (N, Lq, C). Remembers what :meth:`backward` needs.
        """
        query, ref, shapes = self._check_queries(query, reference_points, input_spatial_shapes)
        flat, mask = self._check_features(input_flatten, input_padding_mask, query.shape[0])
        n_batch, n_positions, _ = flat.shape

        value = self.value_proj(flat)  # W'_m x^l for all heads: (N, S, C)
        if mask is not None:
            value = np.where(mask[..., None], value.dtype.type(0), value)
        # (N, S, C) -> (N, S, M, D)
        value = value.reshape(n_batch, n_positions, self.n_heads, self.head_dim)
        offsets, attention, locations = self._where_and_how_much(
            self.sampling_offsets(query), self.attention_weights(query), ref, shapes)
        attn = attention.reshape(offsets.shape[:-1])  # (N, Lq, M, L*P) -> (N, Lq, M, L, P)
        # NOTE: sampling is piecewise linear in the locations; where a sampled pixel coordinate
        # is an integer the op returns the right-hand derivative (ms_deform_attn.backward).
        out = ms_deform_attn.forward(value, shapes, input_level_start_index, locations, attn,
                                     backend=self.backend)  # the bracket: (N, Lq, M*D)
        self._save_for_backward(value=value, shapes=shapes, starts=input_level_start_index,
                                locations=locations, attention=attention, offsets=offsets,
                                ref=ref, mask=mask)
        return self.output_proj(out)  # W_m, all heads at once: (N, Lq, C)

    def backward(self, grad):
        """grad (N, Lq, C), the gradient with respect to the most recent forward's output ->
        ``(grad_query (N, Lq, C), grad_reference_points (N, Lq, L, 2 or 4),
        grad_input_flatten (N, S, C))``. Adds the gradients of all four Linears' weights and
        biases into their ``.grad``.

        The query reaches the output along two paths, through the offsets and through the
        attention weights, so ``grad_query`` is the sum of what ``sampling_offsets`` and
        ``attention_weights`` send back.
        """
        saved = self._saved_for_backward()
        value, offsets, attention = saved["value"], saved["offsets"], saved["attention"]
        n_batch, n_positions = value.shape[:2]
        n_queries = offsets.shape[1]
        n_samples = self.n_heads * self.n_levels * self.n_points  # M * L * P
        g_out = self.output_proj.backward(grad)  # (N, Lq, M*D)
        attn = attention.reshape(offsets.shape[:-1])  # (N, Lq, M, L*P) -> (N, Lq, M, L, P)
        g_value, g_locations, g_attn = ms_deform_attn.backward(
            g_out, value, saved["shapes"], saved["starts"], saved["locations"], attn,
            backend=self.backend)

        # value: (N, S, M, D) -> (N, S, C); masked positions were constants (zeros)
        g_value = g_value.reshape(n_batch, n_positions, self.d_model)
        if saved["mask"] is not None:
            g_value = np.where(saved["mask"][..., None], g_value.dtype.type(0), g_value)
        grad_input_flatten = self.value_proj.backward(g_value)

        # --8<-- [start:softmax_backward]
        # attention: (N, Lq, M, L, P) -> (N, Lq, M, L*P), through the softmax (eq. 8),
        # -> (N, Lq, M*L*P)
        g_logits = softmax_backward(g_attn.reshape(attention.shape), attention, axis=-1)
        grad_query = self.attention_weights.backward(g_logits.reshape(n_batch, n_queries,
                                                                      n_samples))
        # --8<-- [end:softmax_backward]

        g_offsets, grad_ref = self._locations_backward(g_locations, offsets, saved["ref"],
                                                       saved["shapes"])
        # (N, Lq, M, L, P, 2) -> (N, Lq, M*L*P*2)
        grad_query = grad_query + self.sampling_offsets.backward(
            g_offsets.reshape(n_batch, n_queries, 2 * n_samples))
        return grad_query, grad_ref, grad_input_flatten

    def _locations_backward(self, g_locations, offsets, ref, spatial_shapes):
        """Chain rule through :meth:`_locations`: the gradient of the locations
        (N, Lq, M, L, P, 2) -> (that of the offsets (N, Lq, M, L, P, 2), that of the reference
        points (N, Lq, L, 2 or 4)), given the reference points ``ref`` (N, Lq, L, 2 or 4)."""
        # --8<-- [start:locations_backward]
        if ref.shape[-1] == 2:
            size = spatial_shapes[:, ::-1].astype(offsets.dtype)[None, None, None, :, None, :]
            g_offsets = g_locations / size  # eq. (10), points
            g_ref = g_locations  # d location / d ref = 1 for every head and point
        else:
            # (N, Lq, L, 2) -> (N, Lq, 1, L, 1, 2): broadcast over heads and points
            half_wh = ref[:, :, None, :, None, 2:] * 0.5
            g_offsets = g_locations * half_wh / self.n_points  # eq. (10), boxes
            g_wh = g_locations * offsets / self.n_points * 0.5  # d location / d (w, h)
            # (N, Lq, M, L, P, 2) + (N, Lq, M, L, P, 2) -> (N, Lq, M, L, P, 4)
            g_ref = np.concatenate([g_locations, g_wh], axis=-1)
        # eq. (11): every head and point of a level read that level's reference point:
        # (N, Lq, M, L, P, k) -> (N, Lq, L, k), summed over heads and points, not levels
        return g_offsets, g_ref.sum(axis=(2, 4))
        # --8<-- [end:locations_backward]
