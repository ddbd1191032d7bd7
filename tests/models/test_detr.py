"""Deformable DETR and the dense DETR: the whole loss's gradient (fixed matching) against
central differences on a tiny float64 configuration, on the numpy and numba tiers, the
transformer's parameter names, the heads shared by the decoder layers, and predictions.

The Hungarian matching is piecewise constant in the parameters: it is computed once and held
fixed, and the test checks that the loss's gradient is exact for that matching.
"""

from __future__ import annotations

import numpy as np
import pytest

from scratchvision import gradcheck
from scratchvision.models import DETR, DeformableDETR

TINY = dict(num_queries=4, d_model=8, nhead=2, enc_layers=1, dec_layers=2, dim_feedforward=12,
            widths=(2, 2, 3, 3, 4), dtype=np.float64)


def _batch(rng):
    images = rng.uniform(0, 1, (2, 3, 32, 32))
    targets = [{"boxes": np.array([[3.0, 4.0, 14.0, 12.0], [16.0, 15.0, 30.0, 29.0]]),
                "labels": np.array([1, 3])},
               {"boxes": np.array([[5.0, 6.0, 21.0, 25.0]]), "labels": np.array([2])}]
    return images, targets


def _check_whole_loss(model, picked_prefixes, seed=0):
    rng = np.random.default_rng(seed)
    for name, param in model.named_parameters():  # away from the initial zeros and ones
        param.data[...] += rng.normal(0, 0.2, param.shape)
    images, targets = _batch(rng)
    indices = model.criterion.match(
        {k: v for k, v in model(images).items() if k != "image_size"},
        model.targets_for_criterion(targets, (32, 32)))
    params = dict(model.named_parameters())
    names = [n for n in params if n.startswith(picked_prefixes)]
    assert names, picked_prefixes

    def load(arrays):
        for name, array in zip(names, arrays):
            params[name].data[...] = array

    def forward(images, *arrays):
        load(arrays)
        parts, _ = model.loss(model(images), targets, indices)
        return np.asarray(parts.total)

    def backward(g, images, *arrays):
        load(arrays)
        _, grads = model.loss(model(images), targets, indices)
        model.zero_grad()
        grad_images = model.backward(grads)
        return (float(g) * grad_images,) + tuple(float(g) * params[n].grad for n in names)

    inputs = {"images": images, **{n: params[n].data.copy() for n in names}}
    gradcheck(forward, backward, inputs, seed=seed).raise_if_failed()


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_deformable_detr_whole_loss_gradient(backend):
    model = DeformableDETR(**TINY, gn_groups=2, rng=1, backend=backend)
    _check_whole_loss(model, ("backbone.stem", "input_proj.3", "transformer.level_embed",
                              "transformer.reference_points",
                              "transformer.encoder.layers.0.self_attn.sampling_offsets",
                              "transformer.decoder.layers.1.cross_attn.attention_weights",
                              "query_embed", "class_embed", "bbox_embed.layers.2"))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_dense_detr_whole_loss_gradient(backend):
    model = DETR(**TINY, rng=2, backend=backend)
    _check_whole_loss(model, ("backbone.stage5", "input_proj", "encoder.0.self_attn.in_proj",
                              "decoder.1.multihead_attn.out_proj", "query_embed",
                              "class_embed", "bbox_embed.layers.0"))


def test_parameter_names_follow_deformable_detr():
    names = {n for n, _ in DeformableDETR(**TINY, gn_groups=2).named_parameters()}
    for expected in ("transformer.level_embed",
                     "transformer.encoder.layers.0.self_attn.sampling_offsets.weight",
                     "transformer.decoder.layers.0.cross_attn.value_proj.weight",
                     "transformer.decoder.layers.1.self_attn.in_proj_weight",
                     "transformer.reference_points.weight", "input_proj.0.0.weight",
                     "input_proj.0.1.weight", "input_proj.3.0.weight", "query_embed.weight",
                     "class_embed.weight", "bbox_embed.layers.2.bias"):
        assert expected in names, expected
    # the transformer adds the level embedding: its encoder layers hold none of their own
    assert not any(n.endswith("level_embed") and "layers" in n for n in names)


def test_outputs_of_every_decoder_layer_and_predictions():
    model = DeformableDETR(**TINY, gn_groups=2, rng=0)
    images, _ = _batch(np.random.default_rng(3))
    outputs = model(images)
    assert outputs["pred_logits"].shape == (2, 4, 3) and outputs["pred_boxes"].shape == (2, 4, 4)
    assert len(outputs["aux_outputs"]) == 1
    assert np.all((outputs["pred_boxes"] > 0) & (outputs["pred_boxes"] < 1))
    predictions = model.predict(images, detections_per_image=5)
    for p in predictions:
        assert p["boxes"].shape == (5, 4) and p["labels"].min() >= 1 and p["labels"].max() <= 3
        assert np.all(np.diff(p["scores"]) <= 0)


def test_a_training_step_in_float32_lowers_the_loss():
    from scratchvision.optim import Adam

    for cls in (DeformableDETR, DETR):
        model = cls(num_queries=6, d_model=16, nhead=2, enc_layers=1, dec_layers=2,
                    dim_feedforward=32, widths=(4, 4, 8, 8, 8), rng=0)
        images, targets = _batch(np.random.default_rng(4))
        optimizer = Adam(model.parameters(), lr=3e-3)
        losses = []
        for _ in range(10):
            parts, grads = model.loss(model(images.astype(np.float32)), targets)
            losses.append(parts.total)
            model.zero_grad()
            model.backward(grads)
            optimizer.step()
        # a smoke test of float32 training (the gradients are proved above): 10% in 10 steps
        assert losses[-1] < 0.9 * losses[0], (cls.__name__, losses)


def test_sampling_points_of_every_decoder_layer_and_nothing_left_wrapped():
    model = DeformableDETR(**TINY, rng=3)
    images = np.random.default_rng(0).random((2, 3, 64, 64)).astype(np.float32)
    layers = model.sampling_points(images)
    assert len(layers) == len(model.transformer.decoder.layers)
    attn = model.transformer.decoder.layers[0].cross_attn
    n_q, m, lv, p = model.num_queries, attn.n_heads, attn.n_levels, attn.n_points
    for layer in layers:
        assert layer["reference"].shape == (2, n_q, 2)
        assert layer["locations"].shape == (2, n_q, m, lv, p, 2)
        np.testing.assert_allclose(layer["weights"].sum(axis=(3, 4)), 1.0, rtol=1e-5)
    # the decoder's reference points are sigmoid(Linear(query_pos)), the same for every layer
    np.testing.assert_array_equal(layers[0]["reference"], layers[-1]["reference"])
    assert not any("forward" in vars(a) for a in model.modules())
    np.testing.assert_array_equal(layers[0]["outputs"]["pred_boxes"],
                                  model(images)["pred_boxes"])
