"""``DeformableTransformer``: Deformable DETR's encoder and decoder over a multi-scale pyramid.

Forward (the reference implementation's ``DeformableTransformer.forward``, single stage):

1. **Flatten the levels.** Each projected map ``src_l`` (N, C, H_l, W_l) becomes (N, H_l W_l,
   C); its position ``pos_l`` likewise, plus the level's embedding ``level_embed[l]``; the
   levels are concatenated into ``memory`` (N, S, C) and ``lvl_pos`` (N, S, C).
2. **Encode.** Every position is a query whose reference point is its own pixel centre on
   every level (:func:`~scratchvision.nn.encoder_reference_points`); each encoder layer
   refines ``memory`` with deformable self-attention.
3. **Decode.** The learned ``query_embed`` (Q, 2C) splits into ``query_pos`` and the initial
   content ``tgt``; each query's reference point is ``sigmoid(reference_points(query_pos))``
   (N, Q, 2), the same normalised point on every level; each decoder layer updates the queries
   by self-attention and deformable cross-attention into ``memory`` around the reference point.

It returns every decoder layer's output (the detection heads read all of them: auxiliary
losses) and the reference points (the box head predicts offsets from them).

Backward runs the same steps in reverse. The parameters' names are the reference's
(``level_embed``, ``encoder.layers.i.*``, ``decoder.layers.i.*``, ``reference_points.*``), so
a converted state_dict of its (single-stage, no box refinement) transformer loads 1:1.
"""

from __future__ import annotations

import numpy as np

from .. import _checks
from .._dispatch import BACKENDS
from ..ops.ms_deform_attn import level_start_index_of
from .deformable_decoder import DeformableDecoderLayer
from .deformable_encoder import (DeformableEncoderLayer, encoder_reference_points,
                                 level_embed_gradient)
from .init import as_generator, float_dtype, xavier_uniform
from .linear import Linear
from .module import Module, ModuleList, Parameter

__all__ = ["DeformableTransformer"]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for any x


class _Stack(Module):
    """A stack of layers under ``layers.i`` (the reference's encoder / decoder containers)."""

    def __init__(self, layers):
        super().__init__()
        self.layers = ModuleList(layers)


class DeformableTransformer(Module):
    """Args:
        d_model: C. nhead: M. num_encoder_layers, num_decoder_layers: the two stacks' depths.
        dim_feedforward: the FFNs' hidden width. dropout: the decoder's dropout (the encoder
            layer has none). num_feature_levels: L. dec_n_points, enc_n_points: P of the
            decoder's and the encoder's deformable attentions.
        rng, dtype, backend: initial values, their dtype, the ms_deform_attn tier.
    """

    def __init__(self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, dim_feedforward: int = 1024,
                 dropout: float = 0.1, num_feature_levels: int = 4, dec_n_points: int = 4,
                 enc_n_points: int = 4, *, rng=None, dtype=np.float64, backend: str = "auto"):
        super().__init__()
        rng, dtype = as_generator(rng), float_dtype(dtype)
        _checks.choice(backend, "backend", BACKENDS)
        self.backend = backend
        self.d_model = _checks.positive_int(d_model, "d_model")
        self.num_feature_levels = _checks.positive_int(num_feature_levels,
                                                       "num_feature_levels")
        self.encoder = _Stack(
            DeformableEncoderLayer(d_model, dim_feedforward, num_feature_levels, nhead,
                                   enc_n_points, level_embed=False, rng=rng, dtype=dtype,
                                   backend=backend)
            for _ in range(_checks.positive_int(num_encoder_layers, "num_encoder_layers")))
        self.decoder = _Stack(
            DeformableDecoderLayer(d_model, dim_feedforward, dropout, num_feature_levels,
                                   nhead, dec_n_points, rng=rng, dtype=dtype, backend=backend)
            for _ in range(_checks.positive_int(num_decoder_layers, "num_decoder_layers")))
        self.level_embed = Parameter(rng.standard_normal((num_feature_levels, d_model))
                                     .astype(dtype))
        self.reference_points = Linear(d_model, 2, rng=rng, dtype=dtype)
        # the reference's _reset_parameters: Xavier-uniform weight, zero bias
        self.reference_points.weight.data[...] = xavier_uniform((2, d_model), rng, dtype)
        self.reference_points.bias.data[...] = 0

    def forward(self, srcs, pos_embeds, query_embed):
        """Args:
            srcs: L maps (N, C, H_l, W_l), finest first (the projected backbone levels).
            pos_embeds: L position encodings (N, C, H_l, W_l) of those maps.
            query_embed: (Q, 2C) the learned queries, ``[query_pos | tgt]``.

        Returns:
            ``(hs, reference_points)``: hs, one (N, Q, C) array per decoder layer, and the
            queries' reference points (N, Q, 2) normalised ``(x, y)``.
        """
        if len(srcs) != self.num_feature_levels or len(pos_embeds) != len(srcs):
            raise ValueError(f"srcs and pos_embeds must hold num_feature_levels = "
                             f"{self.num_feature_levels} maps each, got {len(srcs)} and "
                             f"{len(pos_embeds)}")
        n_batch = srcs[0].shape[0]
        shapes = np.array([m.shape[2:] for m in srcs], dtype=np.int64)  # (L, 2) (H_l, W_l)
        starts = level_start_index_of(shapes)
        levels = np.repeat(np.arange(len(srcs)), shapes.prod(axis=1))  # (S,) level of each
        # step 1: (N, C, H, W) -> (N, H*W, C), levels concatenated -> (N, S, C)
        memory = np.concatenate([m.reshape(n_batch, self.d_model, -1).transpose(0, 2, 1)
                                 for m in srcs], axis=1)
        pos = np.concatenate([p.reshape(n_batch, self.d_model, -1).transpose(0, 2, 1)
                              for p in pos_embeds], axis=1)
        lvl_pos = pos + self.level_embed.data[levels]
        # step 2: the encoder, reference points at the pixel centres
        enc_ref = np.broadcast_to(encoder_reference_points(shapes).astype(memory.dtype),
                                  (n_batch, memory.shape[1], len(srcs), 2))
        for layer in self.encoder.layers:
            memory = layer(memory, lvl_pos, enc_ref, shapes, starts)
        # step 3: the decoder, (Q, 2C) -> query_pos (N, Q, C) and tgt (N, Q, C)
        query_embed = _checks.float_array(query_embed, "query_embed", ndim=2)
        query_pos = np.broadcast_to(query_embed[:, :self.d_model], (n_batch,) + (
            query_embed.shape[0], self.d_model)).astype(memory.dtype)
        tgt = np.broadcast_to(query_embed[:, self.d_model:], query_pos.shape).astype(
            memory.dtype)
        # --8<-- [start:decoder_reference]
        reference = _sigmoid(self.reference_points(query_pos))  # (N, Q, 2)
        ref_per_level = np.repeat(reference[:, :, None], len(srcs), axis=2)  # (N, Q, L, 2)
        # --8<-- [end:decoder_reference]
        hs, output = [], tgt
        for layer in self.decoder.layers:
            output = layer(output, query_pos, ref_per_level, memory, shapes, starts)
            hs.append(output)
        self._save_for_backward(shapes=shapes, levels=levels, reference=reference,
                                n_batch=n_batch)
        return hs, reference

    def backward(self, grad_hs, grad_reference):
        """``grad_hs`` (one (N, Q, C) per decoder layer, None where a layer's output reached no
        loss) and ``grad_reference`` (N, Q, 2) -> ``(grad_srcs, grad_query_embed)``: one
        (N, C, H_l, W_l) per level and (Q, 2C). The position encodings are constants (they
        depend only on the map sizes) and get no gradient."""
        saved = self._saved_for_backward()
        shapes, levels, reference = saved["shapes"], saved["levels"], saved["reference"]
        g_output = None
        g_query_pos = 0.0
        g_reference = np.array(grad_reference, dtype=reference.dtype, copy=True)
        g_memory = 0.0
        # --8<-- [start:reference_backward]
        for layer, g_h in zip(reversed(self.decoder.layers), reversed(grad_hs)):
            if g_h is not None:
                g_output = g_h if g_output is None else g_output + g_h
            g_output, g_pos, g_ref, g_mem = layer.backward(g_output)
            g_query_pos = g_query_pos + g_pos
            g_reference += g_ref.sum(axis=2)  # the same point was used on every level
            g_memory = g_memory + g_mem
        # reference = sigmoid(z), dz = dref * ref (1 - ref); z = reference_points(query_pos)
        g_query_pos = g_query_pos + self.reference_points.backward(
            g_reference * reference * (1.0 - reference))
        # --8<-- [end:reference_backward]
        grad_query_embed = np.concatenate([g_query_pos.sum(axis=0), g_output.sum(axis=0)],
                                          axis=1)  # (Q, C) and (Q, C) -> (Q, 2C)
        g_lvl_pos = 0.0
        for layer in reversed(self.encoder.layers):
            g_memory, g_pos, _ = layer.backward(g_memory)  # reference points: constants
            g_lvl_pos = g_lvl_pos + g_pos
        self.level_embed.accumulate(level_embed_gradient(g_lvl_pos, levels,
                                                         self.num_feature_levels))
        # (N, S, C) -> per level (N, H*W, C) -> (N, C, H, W)
        n_batch = saved["n_batch"]
        bounds = np.cumsum(shapes.prod(axis=1))[:-1]
        grad_srcs = [np.ascontiguousarray(part.transpose(0, 2, 1)).reshape(
                         n_batch, self.d_model, int(h), int(w))
                     for part, (h, w) in zip(np.split(g_memory, bounds, axis=1), shapes)]
        return grad_srcs, grad_query_embed
