"""The anchor detectors: the whole backward (loss -> head -> neck -> backbone -> image) against
central differences on a tiny float64 configuration, the head's shared weights, the anchors'
layout, the losses' assembly, predictions, and float32 training.

The matching (anchors against ground truth) does not depend on the network's outputs, so a
small change of the parameters never changes it: the loss is differentiable for the matching
found, and the finite-difference check proves the gradient of exactly that loss.
"""

from __future__ import annotations

import numpy as np
import pytest

from scratchvision import gradcheck
from scratchvision.models import ANCHOR_MODELS, AnchorDetector, RetinaHead, build_model
from scratchvision.models.anchor_detector import _flatten, _unflatten

TINY = dict(channels=3, num_convs=1, widths=(2, 3, 3, 4, 4), dtype=np.float64)


def _tiny_batch(rng: np.random.Generator, size: int = 32):
    """Two images with a few boxes of every size the tiny image allows."""
    images = rng.uniform(0, 1, (2, 3, size, size))
    targets = [
        {"boxes": np.array([[2.0, 3.0, 12.0, 11.0], [14.0, 14.0, 30.0, 31.0]]),
         "labels": np.array([1, 3])},
        {"boxes": np.array([[5.0, 5.0, 20.0, 24.0]]), "labels": np.array([2])},
    ]
    return images, targets


def _loss_functions(model: AnchorDetector, names: list[str], targets):
    """(forward, backward) of the total loss as a function of (images, *parameters)."""
    params = dict(model.named_parameters())

    def load(arrays):
        for name, array in zip(names, arrays):
            params[name].data[...] = array

    def forward(images, *arrays):
        load(arrays)
        parts, _ = model.loss(model(images), targets)
        return np.asarray(parts.total)

    def backward(g, images, *arrays):
        load(arrays)
        _, grads = model.loss(model(images), targets)
        model.zero_grad()
        grad_images = model.backward(grads)
        return (float(g) * grad_images,) + tuple(float(g) * params[n].grad for n in names)

    return forward, backward


@pytest.mark.parametrize("kind, box_loss, backend", [("single", "smooth_l1", "numpy"),
                                                     ("fpn", "smooth_l1", "numba"),
                                                     ("fpn", "giou", "numpy"),
                                                     ("fpn_dcn", "smooth_l1", "numpy")])
def test_whole_backward_matches_finite_differences(kind, box_loss, backend):
    rng = np.random.default_rng(0)
    model = AnchorDetector(kind, box_loss=box_loss, rng=1, backend=backend, **TINY)
    # give the regression and the DCN offsets non-trivial values (they start at 0 / tiny)
    for name, param in model.named_parameters():
        param.data[...] = rng.normal(0, 0.3 if "conv_offset" not in name else 0.05,
                                     param.shape)
    images, targets = _tiny_batch(rng)
    all_names = [n for n, _ in model.named_parameters()]
    # a sample of parameters from every part of the model: backbone, neck, head, outputs
    picked = [n for n in all_names if n.startswith(("backbone.stem", "backbone.stage5"))]
    picked += [n for n in all_names if "neck" in n or "fpn.layer_blocks.0" in n]
    picked += [n for n in all_names if "cls_logits" in n or "bbox_reg" in n]
    picked += [n for n in all_names if "conv_offset" in n][:1]
    params = dict(model.named_parameters())
    inputs = {"images": images, **{n: params[n].data.copy() for n in picked}}
    forward, backward = _loss_functions(model, picked, targets)
    report = gradcheck(forward, backward, inputs, seed=3)
    report.raise_if_failed()


def test_shared_head_sums_the_levels_gradients():
    """The head's weights get the sum of what each level would give on its own."""
    rng = np.random.default_rng(2)
    head = RetinaHead(3, 2, 2, num_convs=1, rng=0, dtype=np.float64, backend="numpy")
    maps = [rng.standard_normal((1, 3, 5, 5)), rng.standard_normal((1, 3, 3, 2))]
    cls, box = head(maps)
    grads = ([rng.standard_normal(c.shape) for c in cls], [rng.standard_normal(b.shape)
                                                           for b in box])
    head.zero_grad()
    grad_maps = head.backward(grads)
    together = {n: p.grad.copy() for n, p in head.named_parameters()}
    separately = {n: np.zeros_like(g) for n, g in together.items()}
    for level in range(2):
        head([maps[level]])
        head.zero_grad()
        grad_level = head.backward(([grads[0][level]], [grads[1][level]]))[0]
        np.testing.assert_allclose(grad_level, grad_maps[level], rtol=1e-12, atol=1e-14)
        for n, p in head.named_parameters():
            separately[n] += p.grad
    for n in together:
        np.testing.assert_allclose(together[n], separately[n], rtol=1e-12, atol=1e-14)


def test_flatten_orders_anchors_location_major_and_unflatten_inverts_it():
    rng = np.random.default_rng(4)
    maps = [rng.standard_normal((2, 3 * 4, 2, 3)), rng.standard_normal((2, 3 * 4, 1, 2))]
    flat = _flatten(maps, 4)  # A = 3 anchors, 4 values each
    assert flat.shape == (2, (6 + 2) * 3, 4)
    # anchor a of pixel (y, x) of level 0 is flat row (y * W + x) * A + a, its value k is
    # channel a * 4 + k of the map
    n, y, x, a, k = 1, 1, 2, 2, 3
    assert flat[n, (y * 3 + x) * 3 + a, k] == maps[0][n, a * 4 + k, y, x]
    back = _unflatten(flat, [m.shape for m in maps], 4)
    for m, b in zip(maps, back):
        np.testing.assert_array_equal(m, b)


def test_loss_counts_positives_and_ignores_the_between_band():
    model = AnchorDetector("fpn", rng=0, **TINY)
    images, targets = _tiny_batch(np.random.default_rng(5))
    outputs = model(images)
    parts, grads = model.loss(outputs, targets)
    assert parts.num_foreground >= 3  # every box keeps at least its best anchor
    assert np.isclose(parts.total, parts.classification + parts.box_regression)
    anchors = model.anchors(outputs)
    matches = model.match(anchors, targets[0]["boxes"])
    ignored = matches == model.matcher.BETWEEN_THRESHOLDS
    assert ignored.any()
    # an ignored anchor gets no classification gradient at all
    grad_cls = _flatten(grads[0], model.num_classes)[0]
    assert np.all(grad_cls[ignored] == 0)
    assert np.any(grad_cls[~ignored] != 0)


def test_image_without_objects_is_all_background():
    model = AnchorDetector("single", rng=0, **TINY)
    images, _ = _tiny_batch(np.random.default_rng(6))
    empty = [{"boxes": np.zeros((0, 4)), "labels": np.zeros(0, dtype=np.int64)}] * 2
    parts, grads = model.loss(model(images), empty)
    assert parts.num_foreground == 0 and parts.box_regression == 0
    assert parts.classification > 0
    assert all(np.all(g == 0) for g in grads[1])


def test_predict_returns_torchvision_style_detections_inside_the_image():
    model = build_model("fpn", rng=0, **TINY)
    # a confident classifier: every anchor fires for class 2
    model.head.classification_head.cls_logits.bias.data[...] = -5.0
    model.head.classification_head.cls_logits.bias.data[1::model.num_classes] = 5.0
    images, _ = _tiny_batch(np.random.default_rng(7))
    predictions = model.predict(images, detections_per_image=7)
    assert len(predictions) == 2
    for p in predictions:
        assert p["boxes"].shape == (7, 4) and p["scores"].shape == (7,)
        assert p["labels"].dtype == np.int64 and np.all(p["labels"] == 2)
        assert np.all(np.diff(p["scores"]) <= 0)
        assert np.all(p["boxes"] >= 0) and np.all(p["boxes"] <= 32)


@pytest.mark.parametrize("name", ANCHOR_MODELS)
def test_float32_training_step_reduces_the_loss(name):
    """A few Adam steps on one batch bring its loss down (the float32 path end to end)."""
    from scratchvision.optim import Adam

    model = build_model(name, channels=8, num_convs=1, widths=(4, 4, 8, 8, 8), rng=0)
    images, targets = _tiny_batch(np.random.default_rng(8), size=64)
    optimizer = Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        parts, grads = model.loss(model(images.astype(np.float32)), targets)
        losses.append(parts.total)
        model.zero_grad()
        model.backward(grads)
        optimizer.step()
    assert model.head.classification_head.cls_logits.weight.dtype == np.float32
    assert losses[-1] < 0.8 * losses[0]


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="kind must be one of"):
        AnchorDetector("retina")
    with pytest.raises(ValueError, match="box_loss must be one of"):
        AnchorDetector("fpn", box_loss="l2")
    with pytest.raises(ValueError, match="model must be one of"):
        build_model("detr_v9")
    model = AnchorDetector("fpn", rng=0, **TINY)
    with pytest.raises(ValueError, match="images must have 3 channels"):
        model(np.zeros((1, 1, 32, 32)))
    outputs = model(np.zeros((2, 3, 32, 32)))
    with pytest.raises(ValueError, match="targets must hold one entry per image"):
        model.loss(outputs, [])
