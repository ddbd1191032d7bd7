# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Tutorial 6: Deformable DETR, and the dense DETR beside it
#
# DETR detects without anchors and without NMS: a fixed set of learned *queries* each predict
# one box, and training matches predictions to objects one to one (the Hungarian matching).
# Its attention is dense: every query, and in the encoder every position of the feature map,
# compares itself with every position. Deformable DETR makes two claims against it, and this
# tutorial measures both on this machine:
#
# 1. **cost**: a deformable attention layer looks at a few sampled points per level instead
#    of every position, so its time and memory grow with the number of positions, not with
#    its square -- which is what lets it read a multi-scale pyramid at all;
# 2. **convergence**: because each query starts looking near a reference point, it learns in
#    far fewer steps.
#
# The parts: the architecture level by level; a short training run of the same code
# `scratchvision train --model deformable_detr` runs; where each decoder layer's queries look
# as training proceeds; the cost and the convergence measurements. The layers' gradients are
# derived on `docs/derivations/detr_layers.md` and `docs/derivations/ms_deform_attn.md`, the
# set loss on `docs/derivations/set_prediction.md`.

# %%
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from scratchvision.data import ShapesDataset
from scratchvision.models import DeformableDETR
from scratchvision.models.detr import PIXEL_MEAN, PIXEL_STD
from scratchvision.optim import Adam
from scratchvision.training import clip_gradient_norm, plot_ap_curves
from scratchvision.tutorial_figures import figure_saver
from scratchvision.verify.attention_cost import AttentionCost, attention_cost, plot_attention_cost

show = figure_saver("tutorial06")

# %% [markdown]
# ## 1. The architecture, level by level
#
# The model `scratchvision train --model deformable_detr` trains: the tiny backbone's C3, C4
# and C5 (strides 8, 16, 32), each projected to `d_model` = 64 channels by a 1x1 convolution
# and a GroupNorm (`input_proj.l`), and a fourth level made by a stride-2 3x3 convolution of
# C5. The encoder's tokens are all positions of all four levels.

# %%
model = DeformableDETR(rng=0)
data = ShapesDataset(1, image_size=256, seed=0)
image, target = data[0]
x = (image[None] - PIXEL_MEAN) / PIXEL_STD
c3, c4, c5 = model.backbone(x)
levels = [proj(c) for proj, c in zip(model.input_proj, (c3, c4, c5, c5))]

fig, axes = plt.subplots(1, 5, figsize=(15, 3.2))
axes[0].imshow(image.transpose(1, 2, 0))
axes[0].set_title("input 256 x 256")
tokens = 0
for level, (ax, feature) in enumerate(zip(axes[1:], levels)):
    height, width = feature.shape[2:]
    tokens += height * width
    ax.imshow(np.abs(feature[0]).mean(axis=0), cmap="magma")
    ax.set_title(f"level {level}: stride {8 * 2 ** level}, {height} x {width}")
for ax in axes:
    ax.set_axis_off()
show(fig, "levels")

attn = model.transformer.encoder.layers[0].self_attn
per_query = attn.n_levels * attn.n_points
print(f"{tokens} encoder tokens over {len(levels)} levels, {attn.n_heads} heads")
print(f"dense self-attention weights per head:      {tokens} x {tokens} = {tokens ** 2:,}")
print(f"deformable self-attention weights per head: {tokens} x {per_query} = "
      f"{tokens * per_query:,} (L = {attn.n_levels} levels x K = {attn.n_points} points)")

# %% [markdown]
# Each level's mean absolute activation (untrained weights): the finer the level, the more
# of the image's detail it keeps. The decoder's `num_queries` = 50 queries each have a
# reference point `sigmoid(Linear(query_pos))` and, in every decoder layer, sample
# `M x L x K` points around it: `M` heads, `K` points on each of the `L` levels.

# %% [markdown]
# ## 2. A short training run
#
# The same loop `scratchvision train` runs -- forward, the set loss with its matching, the
# hand-written backward, the gradient clipped to norm 0.1 as DETR does, Adam -- on a smaller
# model and 128-pixel images, for a few dozen steps: enough to see the loss fall and the
# queries move, far too little to detect much (the full runs are in section 5).

# %%
small = DeformableDETR(num_queries=20, d_model=32, nhead=4, enc_layers=1, dec_layers=2,
                       dim_feedforward=64, widths=(8, 16, 16, 32, 32), rng=0)
stream = ShapesDataset(240, image_size=128, seed=0, max_side=128)
probe = ShapesDataset(1, image_size=128, seed=1_000_003, max_side=128)[0][0][None]
optimizer = Adam(small.parameters(), lr=1e-3)
batch, steps = 4, 60
snapshots = {0: small.sampling_points(probe)}
losses = []
for step in range(1, steps + 1):
    picked = range((step - 1) * batch, step * batch)
    images = np.stack([stream[i][0] for i in picked])
    targets = [stream[i][1] for i in picked]
    parts, grads = small.loss(small(images), targets)
    small.zero_grad()
    small.backward(grads)
    clip_gradient_norm(small.parameters(), 0.1)
    optimizer.step()
    losses.append(parts.total)
    if step in (steps // 2, steps):
        snapshots[step] = small.sampling_points(probe)

fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(np.arange(1, steps + 1), losses)
ax.set_xlabel("step")
ax.set_ylabel("set loss (all decoder layers)")
show(fig, "loss")
print(f"loss {losses[0]:.2f} at step 1, {np.mean(losses[-10:]):.2f} over the last 10 steps")

# %% [markdown]
# ## 3. Where the queries look
#
# For the three queries the model is most confident about, each decoder layer's reference
# point (a cross) and its sampling points (dots, coloured by level, sized by their attention
# weight), at three moments of the run. At step 0 the sampling offsets are the
# initialisation's: each head looks in its own direction, further out on each level, the
# pattern Deformable DETR initialises. As training proceeds the points move.

# %%
colours = plt.cm.viridis(np.linspace(0, 0.9, small.transformer.num_feature_levels))
size = probe.shape[-1]
fig, axes = plt.subplots(len(snapshots), len(snapshots[0]), figsize=(8, 4 * len(snapshots)),
                         squeeze=False)
for row, (step, layers) in enumerate(snapshots.items()):
    scores = 1 / (1 + np.exp(-layers[-1]["outputs"]["pred_logits"][0]))  # (Q, K)
    top = np.argsort(-scores.max(axis=1))[:3]
    for column, layer in enumerate(layers):
        ax = axes[row, column]
        ax.imshow(probe[0].transpose(1, 2, 0))
        for q in top:
            locations = layer["locations"][0, q] * size  # (M, L, P, 2) pixels
            weights = layer["weights"][0, q]  # (M, L, P)
            for level in range(locations.shape[1]):
                ax.scatter(locations[:, level, :, 0].ravel(), locations[:, level, :, 1].ravel(),
                           s=400 * weights[:, level].ravel(), color=colours[level],
                           alpha=0.8, edgecolors="none")
            ref = layer["reference"][0, q] * size
            ax.plot(ref[0], ref[1], "x", color="red", markersize=9, mew=2)
        ax.set_xlim(0, size)
        ax.set_ylim(size, 0)
        ax.set_title(f"step {step}, decoder layer {column}")
        ax.set_axis_off()
show(fig, "sampling_points")

# %% [markdown]
# Points that leave the image sample zeros (the bilinear sampling's zero padding), so their
# weight teaches the model to bring them back. The reference points are the same for every
# decoder layer here: this model has no iterative box refinement (the paper's optional
# variant, in which each layer moves the next layer's reference to its predicted box).

# %% [markdown]
# ## 4. What attention costs
#
# One attention layer over every position of an `s x s` map: dense
# (`MultiheadAttention`, `s² x s²` weights per head) against deformable (`MSDeformAttn`,
# `s² x M·L·K`, sampling the map's 4-level pyramid), the paper's `d_model` = 256, `M` = 8,
# `L` = 4, `K` = 4, float32, forward only. Measured here at 25² and 50²:

# %%
rows = attention_cost((25, 50))
print(f"{'side':>5} {'kind':>11} {'weights MB':>11} {'peak MB':>9} {'forward ms':>11}")
for r in rows:
    print(f"{r.side:>5} {r.kind:>11} {r.weights_bytes / 1e6:>11.2f} {r.peak_bytes / 1e6:>9.1f} "
          f"{r.forward_ms:>11.1f}")

# %% [markdown]
# The same measurement at 25², 50², 100² and 200² on the 2-core development machine (24 GiB;
# `attention_cost()` with its defaults, numbers copied from that run). At 200² the dense
# layer's weights alone are 8 x 40 000² x 4 bytes = 51 GB: it was predicted not to fit (from
# the 100² run's peak per weight byte) and not run.

# %%
# AttentionCost(kind, side, queries, weights_bytes, peak_bytes, forward_ms, fits), one row per
# layer and size, as attention_cost() returned them on the development machine
MEASURED = [AttentionCost(*row) for row in [
    ('dense', 25, 625, 12500000, 52616450, 17.0, True),
    ('deformable', 25, 625, 320000, 4438133, 5.9, True),
    ('dense', 50, 2500, 200000000, 810355204, 302.9, True),
    ('deformable', 50, 2500, 1280000, 17540357, 28.4, True),
    ('dense', 100, 10000, 3200000000, 12841283436, 8829.5, True),
    ('deformable', 100, 10000, 5120000, 69969591, 86.4, True),
    ('dense', 200, 40000, 51200000000, 205460534976, None, False),
    ('deformable', 200, 40000, 20480000, 279716535, 390.2, True),
]]
show(plot_attention_cost(MEASURED, memory_line=24 * 2 ** 30), "attention_cost")

# %% [markdown]
# Dense memory grows 16-fold per doubling of the side (the square of the positions);
# deformable grows 4-fold, with the positions. That is what makes a 4-level pyramid
# affordable as the encoder's input.
#
# ## 5. Convergence, and the full runs
#
# Both models trained on the shapes data for about the same wall-clock time (24.6 and 29.3
# minutes) on the development machine, evaluated every few hundred steps on 100 held-out
# images (the `ap_against_step` of each run's `metrics.json`, copied here; commands, seeds and
# the final COCO tables on the docs page "Deformable DETR against DETR"):

# %%
# model: (seconds per step, [(step, AP, AP50), ...])
CURVES = {
    'deformable_detr': (0.6152, [
        (300, 0.096, 0.286), (600, 0.290, 0.549), (900, 0.354, 0.613), (1200, 0.404, 0.666),
        (1500, 0.422, 0.706), (1800, 0.420, 0.699), (2100, 0.542, 0.784), (2400, 0.557, 0.793),
    ]),
    'detr': (0.2341, [
        (750, 0.004, 0.021), (1500, 0.010, 0.034), (2250, 0.009, 0.034), (3000, 0.010, 0.040),
        (3750, 0.009, 0.036), (4500, 0.010, 0.037), (5250, 0.013, 0.047), (6000, 0.009, 0.034),
        (6750, 0.013, 0.047), (7500, 0.013, 0.047),
    ]),
}
show(plot_ap_curves(CURVES), "convergence")

# %% [markdown]
# Deformable DETR passes AP50 0.5 after about 6 minutes and ends at AP50 0.785 after 24.6; the
# dense DETR, given 29 minutes, stays at AP50 0.02-0.05. Both started from the backbone of
# tutorial 5's full `fpn` run (a pretrained backbone, as both papers use): the transformer, the
# queries and the heads learned from scratch. The dense model's queries begin with attention
# spread evenly over every position and must learn where to look from a weak, diffuse
# gradient; a deformable query begins with its samples around a reference point.
#
# ## Your turn
#
# The deformable attention's backward is where the training signal reaches the sampling
# offsets -- the part that decides where each query looks. Write it yourself:
# `tutorials/exercises/ms_deform_attn_backward.py`, then check it with
# `scratchvision exercise check ms_deform_attn_backward`.
