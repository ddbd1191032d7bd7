"""Small detectors built only from this package's layers and ops, trained with hand-written
backward passes.

* :class:`AnchorDetector` -- one-stage, RetinaNet-style: ``single`` (one stride-16 map with
  anchors of every size), ``fpn`` (a feature pyramid, one octave of anchors per level) and
  ``fpn_dcn`` (``fpn`` with deformable convolutions in the head);
* :class:`TinyBackbone` and :class:`RetinaHead`, their parts;
* :class:`DeformableDETR` and the dense :class:`DETR` beside it -- set prediction with a
  Hungarian matching (:class:`HungarianMatcher`, :class:`SetCriterion`);
* :func:`build_model` and :data:`MODELS`: a model from its name and a config dict, the form a
  checkpoint stores.
"""

from __future__ import annotations

from .anchor_detector import ANCHOR_MODELS, AnchorDetector, LossParts
from .backbone import TinyBackbone
from .detr import DETR, DETR_MODELS, DeformableDETR, SetLossParts
from .retina_head import RetinaHead
from .set_criterion import HungarianMatcher, SetCriterion, SetLoss, box_cxcywh_to_xyxy_backward

#: the models ``scratchvision train --model`` knows
MODELS = ANCHOR_MODELS + DETR_MODELS


def build_model(name: str, **config):
    """The model ``name`` (one of :data:`MODELS`) built with ``config`` (keyword arguments of
    its class, e.g. ``channels=64``)."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {name!r}")
    if name == "deformable_detr":
        return DeformableDETR(**config)
    if name == "detr":
        return DETR(**config)
    return AnchorDetector(name, **config)


__all__ = ["AnchorDetector", "TinyBackbone", "RetinaHead", "LossParts", "DeformableDETR",
           "DETR", "SetLossParts", "HungarianMatcher", "SetCriterion", "SetLoss",
           "box_cxcywh_to_xyxy_backward", "ANCHOR_MODELS", "MODELS", "build_model"]
