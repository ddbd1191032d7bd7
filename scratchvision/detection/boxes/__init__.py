"""Box operations: area, pairwise intersection-over-union and format conversion.

Public functions validate and normalise their arguments, then dispatch to one of two tiers
that compute the same function (a GPU or numba kernel would not pay for arithmetic this light):

* ``loop``  -- :mod:`scratchvision.detection.boxes.loop`, one box (pair) at a time, the
  executable specification;
* ``numpy`` -- :mod:`scratchvision.detection.boxes.vectorized`, whole columns and a broadcast
  (K, J) grid; what ``backend="auto"`` picks.

``backend="numba"`` or ``"cuda"`` raises ``BackendUnavailableError``: these ops have no such tier.

The maths (the equation numbers are used in the comments of both tiers). A box in ``"xyxy"``
format is ``(x1, y1, x2, y2)``, top-left and bottom-right corner:

* (1) area: ``A = (x2 - x1) * (y2 - y1)``.
* (2) the intersection rectangle of boxes ``a`` and ``b``:
  ``left = max(a.x1, b.x1)``, ``top = max(a.y1, b.y1)``,
  ``right = min(a.x2, b.x2)``, ``bottom = min(a.y2, b.y2)``.
* (3) its area, with the sides clamped at zero (boxes that do not overlap):
  ``I = max(right - left, 0) * max(bottom - top, 0)``.
* (4) ``U = A_a + A_b - I`` (inclusion-exclusion), and (5) ``IoU = I / U``.
* (6) formats: ``"xywh"`` is ``(x1, y1, w, h)`` and ``"cxcywh"`` is ``(cx, cy, w, h)`` with
  ``w = x2 - x1``, ``h = y2 - y1``, ``cx = (x1 + x2) / 2``, ``cy = (y1 + y2) / 2``; the way
  back is ``x1 = cx - 0.5 * w``, ``x2 = cx + 0.5 * w`` (and ``x2 = x1 + w`` from ``"xywh"``).

Semantics are torchvision's (``torchvision.ops.box_area``, ``box_iou``, ``box_convert``), the
odd cases included, because nothing is checked about the coordinates themselves:

* A *degenerate* box (``x2 == x1`` or ``y2 == y1``) has area 0 and intersects nothing. Its IoU
  with a proper box is 0; with another box of area 0 it is ``0 / 0 = nan``.
* An *inverted* box (``x2 < x1`` or ``y2 < y1``) has a signed area: negative when one side is
  inverted, positive when both are. Its intersection with anything is 0 (the clamp in eq. 3),
  so its IoU is ``0 / U``: 0 (or -0.0 when ``U < 0``), and nan when ``U == 0``.
* NaN coordinates are allowed and propagate: every IoU of a box with a NaN coordinate is nan
  (its area is nan, so is every union it takes part in). Nothing warns about the 0 / 0.

Conversions compose through ``"xyxy"`` exactly as torchvision does (``"xywh"`` to ``"cxcywh"``
goes xywh -> xyxy -> cxcywh), so the results agree to the last bit, not just to rounding.

Dtypes: float32 stays float32 (every step runs in float32, as in torch); float64 stays
float64; two sets of boxes of different float types meet in the wider one. Integer box arrays
are accepted and upcast to float64 first (exact for coordinates below 2**53). This differs from
torchvision, which computes the area of integer boxes in integers and returns their IoU as
float32; the values agree wherever float32 is exact. Booleans, complex numbers and float16
raise ``TypeError``. Inputs are never modified; any layout or view is accepted.
"""

from __future__ import annotations

import numpy as np

from ... import _checks
from ..._dispatch import TierModules

__all__ = ["box_area", "box_iou", "box_convert", "box_array", "BOX_FORMATS"]

_tiers = TierModules(__name__, tiers=("loop", "numpy"))

#: the box formats :func:`box_convert` understands (torchvision's axis-aligned ones)
BOX_FORMATS = ("xyxy", "xywh", "cxcywh")


def box_array(value, name: str) -> np.ndarray:
    """Validate ``value`` as a (K, 4) array of boxes and return it as a float array.

    float32 and float64 arrays are returned as they are (no copy); integer arrays are upcast to
    float64. Raises ``TypeError`` for any other dtype and ``ValueError`` for a shape that is
    not (K, 4); both messages name the argument ``name``.
    """
    arr = np.asarray(value)
    if arr.dtype.kind in "iu":
        # integer pixel coordinates are common (annotations); products of them overflow int32
        # easily, and IoU is a ratio anyway, so they become float64 (exact below 2**53)
        arr = arr.astype(np.float64)
    elif arr.dtype not in _checks.FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float32, float64 or integer array, "
                        f"got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must have 2 dimensions (K, 4), got shape {arr.shape}")
    _checks.last_dim(arr, name, 4, "(four coordinates per box)")
    return arr


def box_area(boxes, backend: str = "auto") -> np.ndarray:
    """The area of each box, eq. (1).

    Args:
        boxes: (K, 4) boxes as ``(x1, y1, x2, y2)``; float32, float64 or integer (-> float64).
        backend: ``"auto"`` (= ``"numpy"``), ``"loop"`` or ``"numpy"``.

    Returns:
        (K,) array ``(x2 - x1) * (y2 - y1)``; negative for a box with one inverted side (as in
        torchvision), 0 for a degenerate box.
    """
    boxes = box_array(boxes, "boxes")
    tier = _tiers.get(backend)
    return tier.box_area(boxes)


def box_iou(boxes1, boxes2, backend: str = "auto") -> np.ndarray:
    """Pairwise intersection-over-union of two sets of boxes, eqs. (1)-(5).

    Args:
        boxes1: (K, 4) boxes as ``(x1, y1, x2, y2)``.
        boxes2: (J, 4) boxes as ``(x1, y1, x2, y2)``.
        backend: ``"auto"`` (= ``"numpy"``), ``"loop"`` or ``"numpy"``.

    Returns:
        (K, J) array, ``iou[k, j] = I / (A_k + A_j - I)``: in [0, 1] for proper boxes, 1 on
        the diagonal of ``box_iou(b, b)``; degenerate, inverted and NaN boxes as described in
        the module docstring (nan for 0 / 0, never a warning).
    """
    boxes1 = box_array(boxes1, "boxes1")
    boxes2 = box_array(boxes2, "boxes2")
    tier = _tiers.get(backend)
    boxes1, boxes2 = _checks.common_float(("boxes1", boxes1), ("boxes2", boxes2))
    return tier.box_iou(boxes1, boxes2)


def box_convert(boxes, in_fmt: str, out_fmt: str, backend: str = "auto") -> np.ndarray:
    """Convert boxes between ``"xyxy"``, ``"xywh"`` and ``"cxcywh"``, eq. (6).

    Args:
        boxes: (K, 4) boxes in ``in_fmt``.
        in_fmt, out_fmt: one of :data:`BOX_FORMATS`.
        backend: ``"auto"`` (= ``"numpy"``), ``"loop"`` or ``"numpy"``.

    Returns:
        (K, 4) new array in ``out_fmt`` (a copy when ``in_fmt == out_fmt``, as torchvision's
        ``clone()``), of the input's float dtype (float64 for integer input).
    """
    boxes = box_array(boxes, "boxes")
    _checks.choice(in_fmt, "in_fmt", BOX_FORMATS)
    _checks.choice(out_fmt, "out_fmt", BOX_FORMATS)
    tier = _tiers.get(backend)
    if in_fmt == out_fmt:
        return boxes.copy()
    # every conversion goes through "xyxy", the hub of eq. (6), as in torchvision
    xyxy = boxes if in_fmt == "xyxy" else tier.to_xyxy(boxes, in_fmt)
    return xyxy if out_fmt == "xyxy" else tier.from_xyxy(xyxy, out_fmt)
