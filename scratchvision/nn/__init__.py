"""Layers with hand-written backward passes, composed from :mod:`scratchvision.ops`.

* :class:`Parameter`, :class:`Module`, :class:`Sequential` -- the machinery
  (:mod:`scratchvision.nn.module` explains the forward / backward / accumulate contract);
* :class:`Linear`, :class:`ReLU`;
* :class:`Conv2d`, :class:`DeformConv2d` (DCNv1 and DCNv2, with their own offset predictor);
* :class:`LayerNorm`, dense :class:`MultiheadAttention` and the :func:`softmax` it uses;
* :class:`MSDeformAttn` (Deformable DETR's multi-scale deformable attention, with
  :func:`grid_offsets_bias`) and :class:`DeformableEncoderLayer` (with
  :func:`encoder_reference_points` and :func:`sine_position_encoding`);
* DETR's other layers: :class:`DeformableDecoderLayer`, :class:`GroupNorm`, :class:`MLP`,
  :class:`PositionEmbeddingSine` and :class:`Dropout`;
* the multi-scale layers: :class:`MaxPool2d` (loop, NumPy and numba tiers) and
  :class:`GlobalAvgPool2d`, :class:`InceptionBlock`, :class:`ASPP` (dilated convolutions
  through :class:`Conv2d`'s ``dilation``), :class:`FeaturePyramidNetwork` with
  :class:`LastLevelMaxPool`; :class:`ModuleList` holds submodules by index.

Train them with :mod:`scratchvision.optim`. Parameter names and shapes are torch's, so
``layer.load_state_dict({k: v.numpy() for k, v in torch_layer.state_dict().items()})`` gives
the same function as the torch layer.
"""

from .activation import ReLU
from .attention import MultiheadAttention, softmax, softmax_backward
from .conv import Conv2d, DeformConv2d
from .deformable_attention import MSDeformAttn, grid_offsets_bias
from .deformable_decoder import DeformableDecoderLayer
from .deformable_encoder import (DeformableEncoderLayer, encoder_reference_points,
                                 sine_position_encoding)
from .deformable_transformer import DeformableTransformer
from .dropout import Dropout
from .fpn import FeaturePyramidNetwork, LastLevelMaxPool
from .group_norm import GroupNorm
from .linear import Linear
from .mlp import MLP
from .module import Module, ModuleList, Parameter, Sequential, wrapped_methods
from .multiscale import ASPP, InceptionBlock
from .norm import LayerNorm
from .pooling import GlobalAvgPool2d, MaxPool2d
from .position_encoding import PositionEmbeddingSine
from .transformer import TransformerDecoderLayer, TransformerEncoderLayer

__all__ = ["Parameter", "Module", "Sequential", "Linear", "ReLU", "Conv2d", "DeformConv2d",
           "LayerNorm", "MultiheadAttention", "softmax", "softmax_backward", "MSDeformAttn",
           "grid_offsets_bias", "DeformableEncoderLayer", "encoder_reference_points",
           "sine_position_encoding", "ModuleList", "MaxPool2d", "GlobalAvgPool2d",
           "InceptionBlock", "ASPP", "FeaturePyramidNetwork", "LastLevelMaxPool",
           "DeformableDecoderLayer", "GroupNorm", "MLP", "PositionEmbeddingSine", "Dropout",
           "DeformableTransformer", "TransformerEncoderLayer", "TransformerDecoderLayer"]
