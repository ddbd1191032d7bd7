"""``DeformableDecoderLayer``: one layer of Deformable DETR's decoder
(``DeformableTransformerDecoderLayer``, ReLU activation).

The decoder refines a set of object queries. Each query has content ``tgt`` (what it has found
so far), a positional part ``query_pos`` (learned; who it is) and reference points (where it
looks). One layer runs three sublayers, each closed by a residual connection and a LayerNorm
(post-norm), in the reference implementation's order::

    q = k = tgt + query_pos                                                       (17)
    x = norm2(tgt + dropout2(self_attn(q, k, tgt)))     # queries talk to each other (18)
    y = norm1(x + dropout1(cross_attn(x + query_pos, reference_points,
                                      src, spatial_shapes, level_start_index, padding_mask)))
                                                        # queries look at the image  (19)
    out = norm3(y + dropout4(linear2(dropout3(relu(linear1(y))))))    # FFN          (20)

``self_attn`` is dense :class:`~scratchvision.nn.MultiheadAttention` among the Lq queries (the
position is added to queries and keys, not to the values); ``cross_attn`` is
:class:`~scratchvision.nn.MSDeformAttn` from the queries into the encoder's memory ``src``. The
add & norm and FFN steps are :mod:`scratchvision.nn.post_norm`'s, shared with the encoder layer.

Gradients. x reaches the output directly (the residual of (19)) and as the cross-attention's
queries; ``query_pos`` along three paths (the self-attention's queries and keys, and the
cross-attention's queries); ``tgt`` along four (the self-attention's queries, keys and values,
and the residual of (18)). Each gradient is the sum of its paths::

    grad_x         = grad_residual(19) + grad_cross_query                        (21)
    grad_tgt       = grad_residual(18) + grad_q + grad_k + grad_v                 (22)
    grad_query_pos = grad_q + grad_k + grad_cross_query                           (23)

Equation numbers are those of the docs page "DETR's layers and their gradients"
(``docs/derivations/detr_layers.md``), which derives them.
"""

from __future__ import annotations

import numpy as np

from .. import _checks
from .._dispatch import BACKENDS
from .activation import ReLU
from .attention import MultiheadAttention
from .deformable_attention import MSDeformAttn
from .dropout import Dropout
from .init import as_generator, float_dtype, xavier_uniform
from .linear import Linear
from .module import Module
from .norm import LayerNorm
from .post_norm import add_and_norm, add_and_norm_backward, feed_forward, feed_forward_backward

__all__ = ["DeformableDecoderLayer"]


class DeformableDecoderLayer(Module):
    """One Deformable DETR decoder layer: self-attention, deformable cross-attention, FFN, each
    with dropout, a residual connection and a LayerNorm (see the module docstring).

    Args:
        d_model: C, the channels of the queries and of the memory.
        d_ffn: the hidden width of the feed-forward network.
        dropout: the probability of every dropout (``dropout1`` .. ``dropout4``), Deformable
            DETR's 0.1 by default. The dropouts are real (:class:`~scratchvision.nn.Dropout`):
            active in training mode (the default of every Module) with masks from a generator
            seeded from ``rng``, the identity after ``eval()``. Not reproduced: the dropout torch's
            ``nn.MultiheadAttention(dropout=...)`` applies to the self-attention's weights in
            training (:class:`~scratchvision.nn.MultiheadAttention` has none). In evaluation
            mode, or with ``dropout=0``, the layer is exactly the reference's function.
        n_levels, n_heads, n_points: L, M and P of the cross-attention
            (:class:`~scratchvision.nn.MSDeformAttn`); n_heads is also the self-attention's.
        rng: None, an int seed or a ``numpy.random.Generator`` for the initial values and the
            dropout masks.
        dtype: float64 (default) or float32, the dtype of the parameters.
        backend: the tier of :mod:`scratchvision.ops.ms_deform_attn` the cross-attention runs
            on; ``set_backend`` changes it later.

    Parameters, in the reference's registration (``state_dict``) order, with its names, so a
    Deformable DETR decoder layer's state_dict loads 1:1:

    * ``cross_attn.sampling_offsets``, ``.attention_weights``, ``.value_proj``,
      ``.output_proj`` (``.weight``, ``.bias``): :class:`MSDeformAttn`'s, the paper's init;
    * ``norm1.weight``, ``norm1.bias``: ones, zeros;
    * ``self_attn.in_proj_weight`` (3C, C), ``self_attn.in_proj_bias`` (3C,),
      ``self_attn.out_proj.weight`` (C, C), ``self_attn.out_proj.bias`` (C,): Xavier-uniform
      weights, zero biases;
    * ``norm2.*``; ``linear1.weight`` (d_ffn, C), ``linear1.bias``, ``linear2.weight``
      (C, d_ffn), ``linear2.bias``: Xavier-uniform weights, torch's Linear default biases;
      ``norm3.*``.

    (Deformable DETR's ``_reset_parameters`` applies Xavier-uniform to every parameter with
    more than one dimension, then MSDeformAttn's own initialisation.)
    """

    def __init__(self, d_model: int = 256, d_ffn: int = 1024, dropout: float = 0.1,
                 n_levels: int = 4, n_heads: int = 8, n_points: int = 4, *, rng=None,
                 dtype=np.float64, backend: str = "auto"):
        super().__init__()
        d_model = _checks.positive_int(d_model, "d_model")
        d_ffn = _checks.positive_int(d_ffn, "d_ffn")
        dropout = _checks.number_in_range(dropout, "dropout", 0.0, 1.0)
        rng, dtype = as_generator(rng), float_dtype(dtype)
        _checks.choice(backend, "backend", BACKENDS)
        self.backend = backend
        # the dropout masks come from their own generator, seeded from rng: training draws
        # nothing from a Generator the caller may go on using to build other layers
        masks = np.random.default_rng(rng.integers(2**63))
        # registration order = the reference's, which is the state_dict order
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, rng=rng,
                                       dtype=dtype, backend=backend)
        self.dropout1 = Dropout(dropout, rng=masks)
        self.norm1 = LayerNorm(d_model, dtype=dtype)
        self.self_attn = MultiheadAttention(d_model, n_heads, rng=rng, dtype=dtype)
        self.dropout2 = Dropout(dropout, rng=masks)
        self.norm2 = LayerNorm(d_model, dtype=dtype)
        self.linear1 = Linear(d_model, d_ffn, rng=rng, dtype=dtype)
        self.activation = ReLU()
        self.dropout3 = Dropout(dropout, rng=masks)
        self.linear2 = Linear(d_ffn, d_model, rng=rng, dtype=dtype)
        self.dropout4 = Dropout(dropout, rng=masks)
        self.norm3 = LayerNorm(d_model, dtype=dtype)
        for linear in (self.self_attn.out_proj, self.linear1, self.linear2):
            linear.weight.data[...] = xavier_uniform(linear.weight.shape, rng, dtype)

    @property
    def d_model(self) -> int:
        return self.cross_attn.d_model

    def extra_repr(self) -> str:
        attn = self.cross_attn
        return (f"d_model={attn.d_model}, d_ffn={self.linear1.out_features}, "
                f"dropout={self.dropout1.p}, n_levels={attn.n_levels}, "
                f"n_heads={attn.n_heads}, n_points={attn.n_points}, backend={self.backend!r}")

    def _ffn(self) -> dict:
        """The submodules of the feed-forward sublayer, as :mod:`.post_norm` takes them."""
        return dict(linear1=self.linear1, activation=self.activation, linear2=self.linear2,
                    norm=self.norm3, dropouts=(self.dropout3, self.dropout4))

    def forward(self, tgt, query_pos, reference_points, src, src_spatial_shapes,
                level_start_index, src_padding_mask=None) -> np.ndarray:
        """One decoder layer (the reference's signature).

        Args:
            tgt: (N, Lq, C) the queries' content.
            query_pos: (N, Lq, C) the queries' positional embedding, or None (no position;
                its gradient is then None).
            reference_points: (N, Lq, L, 2) normalised ``(x, y)`` per level, or (N, Lq, L, 4)
                boxes ``(cx, cy, w, h)`` (see :meth:`MSDeformAttn.forward`).
            src: (N, S, C) the encoder's memory, all levels flattened and concatenated.
            src_spatial_shapes: (L, 2) integers ``(H_l, W_l)``.
            level_start_index: (L,) integers, where each level starts in S.
            src_padding_mask: None or (N, S) bool, True at padded positions of the memory.

        Returns:
            (N, Lq, C), the refined queries. Remembers what :meth:`backward` needs.
        """
        tgt = _checks.float_array(tgt, "tgt", ndim=3)
        _checks.last_dim(tgt, "tgt", self.d_model, "(d_model)")
        if query_pos is not None:
            query_pos = _checks.float_array(query_pos, "query_pos", ndim=3)
            _checks.shape_equals(query_pos, "query_pos", tgt.shape,
                                 "the shape of tgt (N, Lq, C)")
        # --8<-- [start:forward]
        q = _with_pos(tgt, query_pos)  # (17): queries and keys carry the position, values not
        x = add_and_norm(tgt, self.self_attn(q, q, tgt), self.norm2, self.dropout2)  # (18)
        attended = self.cross_attn(_with_pos(x, query_pos), reference_points, src,
                                   src_spatial_shapes, level_start_index, src_padding_mask)
        y = add_and_norm(x, attended, self.norm1, self.dropout1)  # (19)
        self._save_for_backward(has_pos=query_pos is not None)
        return feed_forward(y, **self._ffn())  # (20)
        # --8<-- [end:forward]

    def backward(self, grad):
        """grad (N, Lq, C), the gradient with respect to the most recent forward's output ->
        ``(grad_tgt (N, Lq, C), grad_query_pos (N, Lq, C) or None, grad_reference_points
        (N, Lq, L, 2 or 4), grad_src (N, S, C))``. Adds every parameter's gradient into its
        ``.grad``.
        """
        has_pos = self._saved_for_backward()["has_pos"]
        # --8<-- [start:backward]
        g_y = feed_forward_backward(grad, **self._ffn())  # (12)
        g_x, g_attended = add_and_norm_backward(g_y, self.norm1, self.dropout1)  # (10)
        g_cross_query, grad_ref, grad_src = self.cross_attn.backward(g_attended)
        g_x = g_x + g_cross_query  # (21): directly and as the cross-attention's queries
        g_tgt, g_self = add_and_norm_backward(g_x, self.norm2, self.dropout2)  # (10)
        g_q, g_k, g_v = self.self_attn.backward(g_self)  # q and k were the same array
        grad_tgt = g_tgt + g_q + g_k + g_v  # (22): residual, queries, keys, values
        grad_pos = g_q + g_k + g_cross_query if has_pos else None  # (23)
        # --8<-- [end:backward]
        return grad_tgt, grad_pos, grad_ref, grad_src


def _with_pos(x: np.ndarray, pos) -> np.ndarray:
    """``x + pos``, or x when there is no position (the reference's ``with_pos_embed``)."""
    return x if pos is None else x + pos
