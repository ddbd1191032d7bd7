"""DETR's dense transformer layers: the baseline that deformable attention is measured against.

Both are post-norm layers of DETR's ``transformer.py`` with the ReLU activation, and the
position is added to the queries and keys of every attention, never to the values:

``TransformerEncoderLayer`` (every position attends to every position)::

    q = k = src + pos
    x   = norm1(src + dropout1(self_attn(q, k, src)))
    out = norm2(x + ffn(x))

``TransformerDecoderLayer`` (the object queries attend to each other, then to the memory)::

    q = k = tgt + query_pos
    x   = norm1(tgt + dropout1(self_attn(q, k, tgt)))
    y   = norm2(x + dropout2(multihead_attn(x + query_pos, memory + pos, memory)))
    out = norm3(y + ffn(y))

Attention over S positions costs S^2 weights per head: at a 100 x 100 map that is 10^8 per
head and image, which is what Deformable DETR's few sampled points per query replace. The
sublayer patterns (add & norm, the FFN) and their backward are those of
:mod:`scratchvision.nn.post_norm`, derived on the docs page "DETR's layers and their
gradients".
"""

from __future__ import annotations

import numpy as np

from .. import _checks
from .activation import ReLU
from .attention import MultiheadAttention
from .dropout import Dropout
from .init import as_generator, float_dtype, xavier_uniform
from .linear import Linear
from .module import Module
from .norm import LayerNorm
from .post_norm import add_and_norm, add_and_norm_backward, feed_forward, feed_forward_backward

__all__ = ["TransformerEncoderLayer", "TransformerDecoderLayer"]


def _with_pos(x: np.ndarray, pos) -> np.ndarray:
    return x if pos is None else x + pos


class _PostNormLayer(Module):
    """The FFN part every layer here ends with (``linear1``, ``linear2``, the last norm)."""

    def _build_ffn(self, d_model, d_ffn, dropout, norm_name, rng, dtype, masks):
        self.linear1 = Linear(d_model, d_ffn, rng=rng, dtype=dtype)
        self.activation = ReLU()
        self.dropout_ffn = Dropout(dropout, rng=masks)
        self.linear2 = Linear(d_ffn, d_model, rng=rng, dtype=dtype)
        self.dropout_out = Dropout(dropout, rng=masks)
        setattr(self, norm_name, LayerNorm(d_model, dtype=dtype))
        object.__setattr__(self, "_ffn_norm", norm_name)
        for linear in (self.linear1, self.linear2):
            linear.weight.data[...] = xavier_uniform(linear.weight.shape, rng, dtype)

    def _ffn(self) -> dict:
        return dict(linear1=self.linear1, activation=self.activation, linear2=self.linear2,
                    norm=getattr(self, self._ffn_norm),
                    dropouts=(self.dropout_ffn, self.dropout_out))


class TransformerEncoderLayer(_PostNormLayer):
    """DETR's encoder layer: dense self-attention over all S positions, then the FFN.

    Args:
        d_model, nhead, dim_feedforward, dropout: as torch / DETR.
        rng, dtype: initial values (Xavier-uniform for the matrices, as DETR) and their dtype.

    Parameters: ``self_attn.*`` (a :class:`MultiheadAttention`), ``norm1``, ``linear1``,
    ``linear2``, ``norm2``.
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048,
                 dropout: float = 0.1, *, rng=None, dtype=np.float64):
        super().__init__()
        rng, dtype = as_generator(rng), float_dtype(dtype)
        dropout = _checks.number_in_range(dropout, "dropout", 0.0, 1.0)
        masks = np.random.default_rng(rng.integers(2**63))
        self.self_attn = MultiheadAttention(d_model, nhead, rng=rng, dtype=dtype)
        self.dropout1 = Dropout(dropout, rng=masks)
        self.norm1 = LayerNorm(d_model, dtype=dtype)
        self._build_ffn(d_model, dim_feedforward, dropout, "norm2", rng, dtype, masks)
        self.self_attn.out_proj.weight.data[...] = xavier_uniform(
            self.self_attn.out_proj.weight.shape, rng, dtype)

    def forward(self, src, pos=None) -> np.ndarray:
        """src (N, S, C), pos (N, S, C) or None -> (N, S, C)."""
        src = _checks.float_array(src, "src", ndim=3)
        q = _with_pos(src, pos)
        x = add_and_norm(src, self.self_attn(q, q, src), self.norm1, self.dropout1)
        self._save_for_backward(has_pos=pos is not None)
        return feed_forward(x, **self._ffn())

    def backward(self, grad):
        """grad (N, S, C) -> ``(grad_src, grad_pos or None)``."""
        has_pos = self._saved_for_backward()["has_pos"]
        g_x = feed_forward_backward(grad, **self._ffn())
        g_src, g_attn = add_and_norm_backward(g_x, self.norm1, self.dropout1)
        g_q, g_k, g_v = self.self_attn.backward(g_attn)
        return g_src + g_q + g_k + g_v, (g_q + g_k if has_pos else None)


class TransformerDecoderLayer(_PostNormLayer):
    """DETR's decoder layer: self-attention among the queries, dense cross-attention from the
    queries to every position of the memory, then the FFN.

    Parameters: ``self_attn.*``, ``multihead_attn.*`` (both :class:`MultiheadAttention`),
    ``norm1``, ``norm2``, ``linear1``, ``linear2``, ``norm3``.
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048,
                 dropout: float = 0.1, *, rng=None, dtype=np.float64):
        super().__init__()
        rng, dtype = as_generator(rng), float_dtype(dtype)
        dropout = _checks.number_in_range(dropout, "dropout", 0.0, 1.0)
        masks = np.random.default_rng(rng.integers(2**63))
        self.self_attn = MultiheadAttention(d_model, nhead, rng=rng, dtype=dtype)
        self.multihead_attn = MultiheadAttention(d_model, nhead, rng=rng, dtype=dtype)
        self.dropout1 = Dropout(dropout, rng=masks)
        self.dropout2 = Dropout(dropout, rng=masks)
        self.norm1 = LayerNorm(d_model, dtype=dtype)
        self.norm2 = LayerNorm(d_model, dtype=dtype)
        self._build_ffn(d_model, dim_feedforward, dropout, "norm3", rng, dtype, masks)
        for attn in (self.self_attn, self.multihead_attn):
            attn.out_proj.weight.data[...] = xavier_uniform(attn.out_proj.weight.shape, rng,
                                                            dtype)

    def forward(self, tgt, memory, pos=None, query_pos=None) -> np.ndarray:
        """tgt (N, Q, C), memory (N, S, C), pos (N, S, C) or None, query_pos (N, Q, C) or
        None -> (N, Q, C)."""
        tgt = _checks.float_array(tgt, "tgt", ndim=3)
        memory = _checks.float_array(memory, "memory", ndim=3)
        q = _with_pos(tgt, query_pos)
        x = add_and_norm(tgt, self.self_attn(q, q, tgt), self.norm1, self.dropout1)
        attended = self.multihead_attn(_with_pos(x, query_pos), _with_pos(memory, pos), memory)
        y = add_and_norm(x, attended, self.norm2, self.dropout2)
        self._save_for_backward(has_pos=pos is not None, has_query_pos=query_pos is not None)
        return feed_forward(y, **self._ffn())

    def backward(self, grad):
        """grad (N, Q, C) -> ``(grad_tgt, grad_memory, grad_pos or None, grad_query_pos or
        None)``."""
        saved = self._saved_for_backward()
        g_y = feed_forward_backward(grad, **self._ffn())
        g_x, g_attended = add_and_norm_backward(g_y, self.norm2, self.dropout2)
        g_cq, g_ck, g_cv = self.multihead_attn.backward(g_attended)
        g_x = g_x + g_cq  # x is the residual and (with query_pos) the cross-attention's query
        g_tgt, g_self = add_and_norm_backward(g_x, self.norm1, self.dropout1)
        g_q, g_k, g_v = self.self_attn.backward(g_self)
        grad_tgt = g_tgt + g_q + g_k + g_v
        grad_memory = g_ck + g_cv
        grad_pos = g_ck if saved["has_pos"] else None
        grad_query_pos = g_q + g_k + g_cq if saved["has_query_pos"] else None
        return grad_tgt, grad_memory, grad_pos, grad_query_pos
