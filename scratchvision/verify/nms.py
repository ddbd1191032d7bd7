"""The case ``scratchvision bench nms`` times: greedy NMS on 10k boxes.

* ``nms``: 10,000 float32 boxes with centres uniform in a 1000 x 1000 image and sides uniform
  in [10, 200] px (independently for width and height), uniform random scores,
  ``iou_threshold=0.5`` -- about half the boxes survive -- against ``torchvision.ops.nms``.
  NMS has no backward, so the case times the forward only.
"""

from __future__ import annotations

import numpy as np

from ..cases import BenchCase
from ..detection.nms import TIERS, nms

N_BOXES, QUICK_N_BOXES = 10_000, 1_000
IMAGE_SIZE = 1000.0  # px, square
SIDE_RANGE = (10.0, 200.0)  # px
IOU_THRESHOLD = 0.5


def _shape_text(n_boxes: int) -> str:
    return (f"{n_boxes:,} boxes in {IMAGE_SIZE:.0f}x{IMAGE_SIZE:.0f}, sides "
            f"{SIDE_RANGE[0]:.0f}-{SIDE_RANGE[1]:.0f} px, IoU > {IOU_THRESHOLD}")


def random_boxes(rng: np.random.Generator, n_boxes: int) -> np.ndarray:
    """(n_boxes, 4) float32 boxes (x1, y1, x2, y2) like a detector's raw output."""
    centres = rng.uniform(0.0, IMAGE_SIZE, (n_boxes, 2))  # (K, 2) as (cx, cy)
    sides = rng.uniform(*SIDE_RANGE, (n_boxes, 2))  # (K, 2) as (w, h)
    # (K, 2) and (K, 2) -> (K, 4)
    return np.concatenate([centres - sides / 2, centres + sides / 2], axis=1).astype(np.float32)


def _inputs(rng: np.random.Generator, quick: bool) -> dict:
    n_boxes = QUICK_N_BOXES if quick else N_BOXES
    return {"boxes": random_boxes(rng, n_boxes),
            "scores": rng.random(n_boxes, dtype=np.float32)}


def _forward(backend, boxes, scores):
    return nms(boxes, scores, IOU_THRESHOLD, backend=backend)


def _torchvision_reference(inputs: dict, device: str):
    import torch
    from torchvision.ops import nms as torchvision_nms

    boxes = torch.from_numpy(inputs["boxes"]).to(device)
    scores = torch.from_numpy(inputs["scores"]).to(device)

    def forward():
        return torchvision_nms(boxes, scores, IOU_THRESHOLD)

    return forward, None  # no backward: nms is not differentiable


BENCH_CASES = [
    BenchCase(
        name="nms",
        shape=_shape_text(N_BOXES),
        quick_shape=_shape_text(QUICK_N_BOXES),
        make_inputs=_inputs,
        forward=_forward,
        reference=_torchvision_reference,
        reference_name="torchvision.ops.nms",
        tiers=TIERS,
    ),
]

#: nms has no gradient: nothing for ``scratchvision check`` (its tiers are tested for equality)
CHECK_CASES: list = []
