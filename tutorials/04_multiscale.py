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
# # Tutorial 4: four ways to handle scale
#
# Objects come in all sizes, and a convolution looks at a fixed neighbourhood. Vision models
# answer this in four ways, and this tutorial puts the same synthetic image through each:
#
# 1. **multi-scale input**: an `ImagePyramid` runs a fixed, size-tuned detector on resized
#    copies of the image and fuses what it finds;
# 2. **a feature pyramid**: a small backbone and a `FeaturePyramidNetwork`; we draw the
#    theoretical receptive field of each level as a square, and measure its *effective*
#    receptive field with the layers' backward passes;
# 3. **multi-kernel layers**: an `InceptionBlock`, its four branches and their receptive
#    fields; and `ASPP`, whose dilated 3x3 taps we draw at several rates, with the holes
#    ("gridding") that stacked dilations leave;
# 4. **multi-scale anchors**: an `AnchorGenerator` with one anchor size per pyramid level,
#    drawn on the image, and how well the anchors cover the objects (`box_iou`).
#
# It ends with `scratchvision.gradcheck` on the new layers' backward passes, and with you
# checking a backward of your own: the nearest upsampling of the FPN's top-down path.
#
# The strategy pages of the docs (`docs/strategies/*.md`) derive what is computed here: the
# receptive field formula, the gradients of concatenation and nearest upsampling, the anchor
# count and the IoU coverage argument; max pooling, an op of its own, is derived on the
# [max pooling page](../docs/derivations/max_pool2d.md).
#
# Run this file as a script (`python tutorials/04_multiscale.py`) or open it as a notebook
# (`jupytext --to ipynb tutorials/04_multiscale.py`).

# %%

import matplotlib

matplotlib.use("Agg")  # no window: figures are saved as PNG files (and shown in a notebook)
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Ellipse, Rectangle

from scratchvision import gradcheck
from scratchvision.detection import AnchorGenerator, ImagePyramid, box_iou
from scratchvision.nn import (ASPP, Conv2d, FeaturePyramidNetwork, InceptionBlock,
                              LastLevelMaxPool, MaxPool2d, ReLU, Sequential)
from scratchvision.ops import bilinear, conv2d
from scratchvision.tutorial_figures import figure_saver

# The arrays here are small, and NumPy's tier needs no compilation: the whole tutorial runs in
# seconds. Every layer and op accepts backend="numba" (or "auto") as well.
BACKEND = "numpy"
show = figure_saver("tutorial04")  # show(fig, name): save as PNG, display in a notebook


# %% [markdown]
# ## 0. The image
#
# A 128x128 RGB image: bright ellipses of very different sizes and shapes on a dim, smoothly
# varying background. Each object is `(name, cx, cy, w, h)` in pixels; its bounding box is
# the ground truth for the anchors of section 4.
#
# Two coordinate frames meet here. Boxes and anchors (torchvision's convention) use
# continuous coordinates in which the image spans [0, 128] and pixel [r, c] covers the square
# [c, c + 1] x [r, r + 1]. `imshow`, and the receptive field centres of eq. (3), put the
# *centre* of pixel [r, c] at (c, r). So boxes are drawn shifted by -0.5.

# %%
SIZE = 128
OBJECTS = [  # (name, centre x, centre y, width, height, colour)
    ("disc 32", 40, 40, 32, 32, (1.0, 0.3, 0.2)),
    ("disc 16", 100, 30, 16, 16, (0.2, 0.9, 0.3)),
    ("disc 8", 26, 102, 8, 8, (0.3, 0.5, 1.0)),
    ("wide 48x24", 84, 96, 48, 24, (1.0, 0.9, 0.2)),
    ("tall 12x24", 108, 62, 12, 24, (0.9, 0.3, 1.0)),
]
rng = np.random.default_rng(0)
rows, cols = np.mgrid[0:SIZE, 0:SIZE] + 0.5  # pixel centres
background = 0.15 + 0.05 * np.sin(cols / 9.0) * np.cos(rows / 13.0)
image = np.repeat(background[None], 3, axis=0)  # (3, H, W)
for _, cx, cy, w, h, colour in OBJECTS:
    inside = ((cols - cx) / (w / 2)) ** 2 + ((rows - cy) / (h / 2)) ** 2 <= 1.0
    image[:, inside] = np.asarray(colour)[:, None]
image = image[None] + 0.02 * rng.standard_normal((1, 3, SIZE, SIZE))  # (N=1, C=3, H, W)
gt_boxes = np.array([[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
                     for _, cx, cy, w, h, _ in OBJECTS])  # (5, 4) as (x1, y1, x2, y2)


def show_image(axis, title=None):
    """The image on an imshow axis (pixel [r, c] at plot coordinates (c, r))."""
    axis.imshow(np.clip(image[0].transpose(1, 2, 0), 0, 1))  # (C, H, W) -> (H, W, C)
    axis.set_xlim(-0.5, SIZE - 0.5)
    axis.set_ylim(SIZE - 0.5, -0.5)
    if title:
        axis.set_title(title, fontsize=10)


def show_map(axis, feature_map, title):
    """Show the channel of ``feature_map`` (C, h, w) that varies most away from the border
    (the zero padding makes the border pixels stand out), with robust colour limits."""
    border = 2 if min(feature_map.shape[1:]) > 8 else 1
    inner = feature_map[:, border:-border, border:-border]
    channel = np.argmax(inner.var(axis=(1, 2)))
    low, high = np.percentile(inner[channel], [2, 98])
    axis.imshow(feature_map[channel], cmap="viridis", vmin=low, vmax=high)
    axis.set_title(title, fontsize=9)
    axis.set_axis_off()


def draw_objects(axis, colour="white"):
    for _, cx, cy, w, h, _ in OBJECTS:
        axis.add_patch(Ellipse((cx - 0.5, cy - 0.5), w, h, fill=False, color=colour, lw=0.8))


fig, axis = plt.subplots(figsize=(4, 4))
show_image(axis, "the image: objects from 8 to 48 pixels")
show(fig, "image")

# %% [markdown]
# ## 1. Multi-scale input: an image pyramid
#
# Our "model" is a fixed blob detector: a difference of Gaussians (blur at `sigma`, minus blur
# at `1.6 sigma`) of the grey image. It responds most to bright blobs about 16 pixels wide,
# less to smaller and larger ones. The Gaussian blur is separable: a 1xk then a kx1
# convolution with `conv2d`. What the pyramid costs and buys, and its gradients:
# [multi-scale input](../docs/strategies/multiscale_input.md).

# %%
def gaussian_kernel(sigma):
    radius = int(np.ceil(3 * sigma))
    t = np.arange(-radius, radius + 1)
    kernel = np.exp(-t**2 / (2 * sigma**2))
    return kernel / kernel.sum()


def blur(x, sigma):
    """Gaussian blur of x (N, 1, H, W), zero padding: two 1-D convolutions."""
    k = gaussian_kernel(sigma)
    r = len(k) // 2
    x = conv2d.forward(x, k.reshape(1, 1, 1, -1), padding=(0, r), backend=BACKEND)
    return conv2d.forward(x, k.reshape(1, 1, -1, 1), padding=(r, 0), backend=BACKEND)


def blob_detector(x, sigma=4.5):
    """(N, 3, H, W) -> (N, 1, H, W): difference of Gaussians of the grey image."""
    grey = x.mean(axis=1, keepdims=True)  # (N, 3, H, W) -> (N, 1, H, W)
    return blur(grey, sigma) - blur(grey, 1.6 * sigma)


# %% [markdown]
# `ImagePyramid(scales)` resizes the image bilinearly to each scale, runs the model on every
# copy, resizes each response back to 128x128 and fuses them (here by the maximum). With
# scales 0.5, 1 and 2 the 32-pixel disc is 16 pixels wide in the half-size copy and the
# 8-pixel disc is 16 pixels wide in the double-size one: each is seen at the detector's size
# in one of the copies. The price is the number of pixels, `sum s^2` passes of the model.

# %%
pyramid = ImagePyramid(scales=(0.5, 1.0, 2.0), backend=BACKEND)
copies = pyramid.resize_inputs(image)  # [(1, 3, h_s, w_s)]
responses = [blob_detector(c) for c in copies]  # [(1, 1, h_s, w_s)]
fused = pyramid.predict_dense(blob_detector, image, fusion="max")  # (1, 1, 128, 128)
print("copy sizes:", pyramid.sizes((SIZE, SIZE)))
print(f"cost: {pyramid.relative_cost((SIZE, SIZE)):.2f} passes of the model at scale 1")

fig, axes = plt.subplots(1, 3, figsize=(10, 3.6), gridspec_kw={"width_ratios": [1, 2, 4]})
for axis, copy, scale in zip(axes, copies, pyramid.scales):
    axis.imshow(np.clip(copy[0].transpose(1, 2, 0), 0, 1))  # (C, h, w) -> (h, w, C)
    axis.set_title(f"scale {scale}: {copy.shape[3]}x{copy.shape[2]}", fontsize=9)
fig.suptitle("the pyramid's copies, drawn at the same pixel size")
show(fig, "pyramid_copies")

# %% [markdown]
# Each response, brought back to the original frame, and their fusion. The table reads the
# response at each object's centre: the winning scale is the one at which the object is
# about 16 pixels wide.

# %%
back = [bilinear.resize(r, (SIZE, SIZE), backend=BACKEND) for r in responses]
fig, axes = plt.subplots(1, 4, figsize=(13, 3.4))
vmax = max(b.max() for b in back)
for axis, b, scale in zip(axes, back, pyramid.scales):
    axis.imshow(b[0, 0], cmap="magma", vmin=0, vmax=vmax)
    axis.set_title(f"response at scale {scale}", fontsize=10)
axes[3].imshow(fused[0, 0], cmap="magma", vmin=0, vmax=vmax)
axes[3].set_title("fused (max over scales)", fontsize=10)
for axis in axes:
    draw_objects(axis, "cyan")
    axis.set_axis_off()
show(fig, "pyramid_responses")

print(f"{'object':<12}" + "".join(f"{'scale ' + str(s):>11}" for s in pyramid.scales)
      + "   best")
for name, cx, cy, *_ in OBJECTS:
    at_centre = [b[0, 0, cy, cx] for b in back]
    print(f"{name:<12}" + "".join(f"{v:>11.3f}" for v in at_centre)
          + f"   {pyramid.scales[int(np.argmax(at_centre))]}")

# %% [markdown]
# ## 2. A feature pyramid
#
# A backbone computes a pyramid of its own: each stage halves the resolution. Ours is tiny
# and untrained (random weights are enough to look at geometry): a stride-2 stem and three
# stages of two 3x3 convolutions, the first with stride 2. Its maps C2, C3, C4 have strides
# 4, 8 and 16. The FPN's cost, benefit and backward: [feature pyramid networks](../docs/strategies/fpn.md).

# %%
def stage(c_in, c_out):
    return Sequential(Conv2d(c_in, c_out, 3, stride=2, padding=1, rng=rng, backend=BACKEND),
                      ReLU(),
                      Conv2d(c_out, c_out, 3, padding=1, rng=rng, backend=BACKEND), ReLU())


stem = Sequential(Conv2d(3, 8, 3, stride=2, padding=1, rng=rng, backend=BACKEND), ReLU())
stages = [Sequential(stem, stage(8, 16)), stage(16, 32), stage(32, 64)]  # -> C2, C3, C4


def run_backbone(x):
    features = []
    for s in stages:
        x = s(x)
        features.append(x)
    return features


features = run_backbone(image)
fpn = FeaturePyramidNetwork([16, 32, 64], 16, extra_blocks=LastLevelMaxPool(backend=BACKEND),
                            rng=rng, backend=BACKEND)
outputs = fpn(features)  # P2, P3, P4 and the subsampled P5
names = ["P2", "P3", "P4", "P5 (pool)"]
for name, c, p in zip(names, features + [None], outputs):
    print(f"{name:<10} {str(p.shape):<18} from {c.shape if c is not None else 'P4, subsampled'}")

# %% [markdown]
# ### Theoretical receptive fields
#
# For a chain of layers with kernel `k`, stride `s`, padding `p` and dilation `d`, the
# receptive field size `R`, the jump `j` (input pixels between neighbouring units) and the
# centre `c` of unit 0 follow the recursion of the dilation page, eqs. (2)-(3)
# ([receptive field](../docs/strategies/dilation.md#receptive-field)):
#
# $$R \mathrel{+}= (k - 1)\, d\, j, \qquad c \mathrel{+}= \Big(\frac{(k - 1)\, d}{2} - p\Big)\, j, \qquad j \mathrel{*}= s$$
#
# (`R += (k - 1) d j;   c += ((k - 1) d / 2 - p) j;   j *= s`)
#
# We read `(k, s, p, d)` off the layers themselves. The FPN adds two rules: the top-down sum
# `t_i = lateral(C_i) + up(t_{i+1})` sees the union of both fields (the coarser one is
# larger), and the 3x3 output convolution adds `2 j` at the level's jump.

# %%
def geometry(module):
    """(k, s, p, d) along one axis of every convolution and max pool in ``module``, in order."""
    return [(m.kernel_size[0], m.stride[0], m.padding[0], m.dilation[0])
            for m in module.modules() if isinstance(m, (Conv2d, MaxPool2d))]


def receptive_field(layers, start=(1, 1, 0.0)):
    """(R, j, c) after ``layers``, from ``start`` = (R, j, c) of their input."""
    size, jump, centre = start
    for k, s, p, d in layers:
        size += (k - 1) * d * jump
        centre += ((k - 1) * d / 2 - p) * jump
        jump *= s
    return size, jump, centre


backbone_rf = []
state = (1, 1, 0.0)
for s in stages:
    state = receptive_field(geometry(s), state)
    backbone_rf.append(state)
top_down = [backbone_rf[-1][0]]  # R of t_i, coarsest first
for size, *_ in reversed(backbone_rf[:-1]):
    top_down.insert(0, max(size, top_down[0]))
fpn_rf = [(r_t + 2 * jump, jump, centre)
          for r_t, (_, jump, centre) in zip(top_down, backbone_rf)]
fpn_rf.append((fpn_rf[-1][0], 2 * fpn_rf[-1][1], fpn_rf[-1][2]))  # P5: a 1x1 pool, stride 2
for name, (size, jump, _), (c_size, *_) in zip(["2", "3", "4"], fpn_rf, backbone_rf):
    print(f"C{name}: R = {c_size:3d} px    P{name}: R = {size:3d} px    stride {jump}")
print(f"P5: R = {fpn_rf[-1][0]} px    stride {fpn_rf[-1][1]}")

# %% [markdown]
# Every FPN level's field is about as large as C4's, the coarsest: the top-down path gives
# the fine levels the coarse level's context. That is the theory. How much does each pixel
# really matter? The **effective receptive field** is the gradient of one output unit with
# respect to the image. We have every layer's backward: put a 1 on the unit nearest to the
# image centre on one level, run `fpn.backward` (the other levels get `None`: they did not
# reach this "loss"), then the backbone's stages backward, coarsest first, adding the
# gradient that arrives at each stage's output from the FPN.

# %%
def effective_rf(level):
    """|d (sum of P_level's channels at its centre unit) / d image|, summed over the image's
    channels: (H, W)."""
    features = run_backbone(image)  # the layers remember this forward
    outputs = fpn(features)
    grads = [None] * len(outputs)
    one_hot = np.zeros_like(outputs[level])
    h, w = one_hot.shape[2:]
    one_hot[0, :, h // 2, w // 2] = 1.0
    grads[level] = one_hot
    grad_features = fpn.backward(grads)  # one gradient per backbone map, finest first
    grad = np.zeros_like(features[-1])
    for s, g in zip(reversed(stages), reversed(grad_features)):
        grad = s.backward(grad + g)  # the stage's output fed the FPN and the next stage
    return np.abs(grad[0]).sum(axis=0)


fig, axes = plt.subplots(1, 4, figsize=(13, 3.6))
for level, (axis, name, (size, jump, centre)) in enumerate(zip(axes, names, fpn_rf)):
    erf = effective_rf(level)
    h = outputs[level].shape[2] // 2
    c = centre + h * jump  # eq. (3): the unit's centre in image pixels
    axis.imshow(np.sqrt(erf / erf.max()), cmap="inferno")  # sqrt: show the faint tails too
    draw_objects(axis, "grey")
    axis.add_patch(Rectangle((c - size / 2, c - size / 2), size, size, fill=False,
                             color="cyan", lw=1.5))
    axis.set_xlim(-0.5, SIZE - 0.5)
    axis.set_ylim(SIZE - 0.5, -0.5)
    axis.set_title(f"{name}: theoretical R = {size} (cyan)\n"
                   f"effective: sqrt |gradient| (colours)", fontsize=9)
show(fig, "fpn_receptive_fields")

# %% [markdown]
# The squares are the theory; the gradient's mass sits in a smaller blob around the centre,
# and it is most concentrated on the finest level, whose short lateral path dominates: the
# paths through the coarse levels are long and spread thin. Now the outputs themselves: for
# each level, the channel that varies most.

# %%
fig, axes = plt.subplots(1, 5, figsize=(15, 3.2))
show_image(axes[0], "input")
axes[0].set_axis_off()
for axis, name, p in zip(axes[1:], names, outputs):
    show_map(axis, p[0], f"{name}: {p.shape[3]}x{p.shape[2]}")
show(fig, "fpn_levels")

# %% [markdown]
# ## 3. Multi-kernel layers: Inception and ASPP
#
# ([Multi-kernel layers](../docs/strategies/multi_kernel.md) and [dilation and ASPP](../docs/strategies/dilation.md) derive
# what they cost and their gradients.)
#
# An `InceptionBlock` runs four branches on the same map and concatenates them: a 1x1
# convolution; 1x1 then 3x3; 1x1 then 5x5; and a 3x3 max pool then 1x1. We put it on C2
# (stride 4), so each branch's receptive field on the image is C2's plus `(k - 1) * 4`.

# %%
inception = InceptionBlock(16, ch1x1=8, ch3x3red=8, ch3x3=8, ch5x5red=4, ch5x5=8,
                           pool_proj=8, rng=rng, backend=BACKEND)
c2 = features[0]
mixed = inception(c2)  # (1, 32, 32, 32): the four branches' 8 channels each, in order
branches = np.split(mixed, np.cumsum(inception.branch_channels)[:-1], axis=1)
branch_names = ["1x1", "1x1 -> 3x3", "1x1 -> 5x5", "3x3 max pool -> 1x1"]
branch_modules = [inception.branch1, inception.branch2, inception.branch3, inception.branch4]
branch_rf = [receptive_field(geometry(b), backbone_rf[0]) for b in branch_modules]

fig, axes = plt.subplots(1, 5, figsize=(15, 3.3))
show_image(axes[0], "receptive fields of one unit")
colours = ["white", "cyan", "orange", "lime"]
centre = backbone_rf[0][2] + 16 * backbone_rf[0][1]  # C2 unit (16, 16) in image pixels
for (size, _, _), colour, name, style in zip(branch_rf, colours, branch_names,
                                             ["-", "-", "-", "--"]):
    axes[0].add_patch(Rectangle((centre - size / 2, centre - size / 2), size, size,
                                fill=False, color=colour, lw=1.2, ls=style,
                                label=f"{name}: R = {size}"))
axes[0].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), facecolor="0.35",
               labelcolor="white")
for axis, out, name in zip(axes[1:], branches, branch_names):
    show_map(axis, out[0], f"branch {name}")
show(fig, "inception")

# %% [markdown]
# Each branch is shown by its channel that varies most. The pool branch's field is as large
# as the 3x3 branch's, but it keeps only the strongest response of each 3x3 neighbourhood:
# objects shifted by a pixel give the same value. Its backward sends each output's gradient to
# the winning pixel of its window.
#
# **ASPP** is the same idea with dilated 3x3 kernels: the taps of rate `r` are `r` pixels
# apart, so the kernel covers `2r + 1` pixels with nine weights. Which input pixels does a
# branch read for one output unit? Its backward tells us: the gradient of the unit with
# respect to the branch's input is non-zero exactly at the taps (conv2d's input gradient is
# the transpose of its tap map). We place an ASPP on C2 and draw the taps of each branch in
# image pixels.

# %%
rates = (1, 2, 4, 6)
aspp = ASPP(16, 8, rates=rates, rng=rng, backend=BACKEND)
print(aspp)
aspp_out = aspp(c2)  # (1, 8, 32, 32)

fig, axis = plt.subplots(figsize=(5.5, 5.5))
show_image(axis, "ASPP on C2: the 3x3 taps of each rate, in image pixels")
markers = ["o", "s", "D", "^"]
unit = (16, 16)
for rate, marker, colour, branch in zip(rates, markers, colours, list(aspp.convs)[1:]):
    conv = branch[0]  # the branch is Sequential(Conv2d, ReLU)
    conv.forward(c2)  # the conv remembers this input
    one_hot = np.zeros((1, 8) + c2.shape[2:])
    one_hot[0, :, unit[0], unit[1]] = 1.0
    taps = np.abs(conv.backward(one_hot)[0]).sum(axis=0) > 0  # (32, 32) C2 units read
    conv.zero_grad()
    r, q = np.nonzero(taps)
    jump, offset = backbone_rf[0][1], backbone_rf[0][2]
    axis.scatter(offset + q * jump, offset + r * jump, marker=marker, s=40, facecolors="none",
                 edgecolors=colour, linewidths=1.5,
                 label=f"rate {rate}: {taps.sum()} taps, {rate * jump} image px apart")
axis.legend(fontsize=7, loc="lower left")
show(fig, "aspp_taps")

# %% [markdown]
# The image-pooling branch (the fifth) reads every pixel with the same weight `1 / (H W)`,
# so its gradient is constant over the map: it contributes the image as a whole.
#
# ### Gridding
#
# Stack two 3x3 convolutions of rate 2 and the taps never touch the odd offsets. The field is
# 9 x 9 (offsets -4 to 4 per axis), and the output sees only the offsets -4, -2, 0, 2 and 4:
# 5 of 9 per axis, 25 of the 81 pixels, 31 % (the figure's title). That is more than one in
# four, `1 / g^2` for the rates' common factor `g = 2`, which only deep stacks approach: with
# rates summing to `T`, a stack sees at most `(2T / g + 1)^2` of its `(2T + 1)^2` pixels (the
# dilation page, section [Gridding](../docs/strategies/dilation.md#gridding-holes-in-a-stack-of-dilated-layers)).
# Rates (1, 2, 3) leave no hole (the rule on the
# dilation page: each rate at most `2 S + 1`, where `S` is the sum of the rates before it);
# rates (1, 2, 9) break it (9 > 2 * 3 + 1) and miss the offsets 4 and 5 in each direction.
# The pattern is again a backward pass: one-hot gradient at the output, then each layer's
# `conv2d.backward`, last layer first. We use all-ones kernels so that no tap cancels.

# %%
def tap_pattern(rates):
    """How often each input pixel is reached from the centre output of stacked 3x3 convs:
    (2R + 1, 2R + 1) for the field R = sum(rates) on either side of the centre."""
    size = 2 * sum(rates) + 1
    x = np.zeros((1, 1, size, size))
    ones = np.ones((1, 1, 3, 3))
    grad = np.zeros_like(x)
    grad[0, 0, size // 2, size // 2] = 1.0
    for rate in reversed(rates):
        grad = conv2d.backward(grad, x, ones, padding=rate, dilation=rate,
                               backend=BACKEND).grad_input
    return grad[0, 0]


fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
for axis, stack in zip(axes, [(2, 2), (1, 2, 3), (1, 2, 9)]):
    pattern = tap_pattern(stack)
    axis.imshow(pattern > 0, cmap="gray", vmin=0, vmax=1)  # white: reached
    seen = (pattern > 0).mean()
    axis.set_title(f"rates {stack}: sees {100 * seen:.0f} % of its field", fontsize=10)
    axis.set_axis_off()
show(fig, "gridding")

# %% [markdown]
# ## 4. Multi-scale anchors
#
# An anchor-based detector scores fixed reference boxes at every location of every level.
# With an FPN, each level gets one size, here 4 times its stride (detectors on real images
# use 8), with three aspect ratios `h / w` in (0.5, 1, 2): `A = 3` anchors per location,
# torchvision's order and rounding ([multi-scale anchors](../docs/strategies/anchors.md); IoU, matching and
# NMS: [detection basics](../docs/detection_basics.md)).

# %%
level_sizes = [tuple(p.shape[2:]) for p in outputs]
anchor_generator = AnchorGenerator(sizes=((16,), (32,), (64,), (128,)),
                                   aspect_ratios=(0.5, 1.0, 2.0), backend=BACKEND)
per_level = anchor_generator.grid_anchors((SIZE, SIZE), level_sizes)
strides = anchor_generator.strides((SIZE, SIZE), level_sizes)
for name, size, stride, anchors in zip(names, level_sizes, strides, per_level):
    print(f"{name:<10} map {size}, stride {stride}: {size[0]} * {size[1]} * 3 = "
          f"{len(anchors)} anchors")
print("base anchors of P2 (x1, y1, x2, y2):\n", anchor_generator.cell_anchors()[0])

fig, axes = plt.subplots(1, 4, figsize=(15, 4))
for axis, name, size, stride, anchors in zip(axes, names, level_sizes, strides, per_level):
    show_image(axis, f"{name}: stride {stride[0]}, anchor size "
                     f"{anchor_generator.sizes[names.index(name)][0]}")
    centres = anchors.reshape(-1, 3, 4)[:, 0]  # (h * w, 4): the first anchor of each location
    cx, cy = (centres[:, 0] + centres[:, 2]) / 2, (centres[:, 1] + centres[:, 3]) / 2
    axis.plot(cx - 0.5, cy - 0.5, ".", color="white", ms=1.5)
    h, w = size
    for i, j in [(h // 4, w // 4), (h // 2, w // 2), ((3 * h) // 4, (3 * w) // 4)]:
        for k, colour in enumerate(["orange", "cyan", "lime"]):  # ratios 0.5, 1, 2
            x1, y1, x2, y2 = anchors[(i * w + j) * 3 + k]
            axis.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False,
                                     color=colour, lw=1))
show(fig, "anchors")

# %% [markdown]
# The anchors sit on the top-left corner of each stride cell (torchvision's convention), and
# the grid of centres (white dots) thins out as the anchors grow. Which anchor overlaps each
# object best, and how well? `box_iou` gives the (objects x anchors) IoU matrix in one call.

# %%
all_anchors = np.concatenate(per_level)  # levels, finest first
level_of = np.repeat(np.arange(len(per_level)), [len(a) for a in per_level])
iou = box_iou(gt_boxes, all_anchors)  # (5, total)
best = iou.argmax(axis=1)
fig, axis = plt.subplots(figsize=(5, 5))
show_image(axis, "each object's best anchor (dashed)")
for o, ((name, *_), b) in enumerate(zip(OBJECTS, best)):
    x1, y1, x2, y2 = all_anchors[b]
    axis.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, color="cyan",
                             ls="--", lw=1.2))
    print(f"{name:<12} best anchor on {names[level_of[b]]:<10} {all_anchors[b]}  "
          f"IoU {iou[o, b]:.2f}")
draw_objects(axis)
show(fig, "best_anchors")

# %% [markdown]
# The [coverage argument of the anchors page](../docs/strategies/anchors.md#what-it-buys-iou-coverage) in action: an object between two anchor sizes,
# or off the anchors' shapes, gets a best IoU well below 1 (the 8-pixel disc is half the
# smallest anchor: IoU about 1/4), whatever detector is trained on top. A matcher that
# demands IoU >= 0.7 would give such objects no positive anchor at all.
#
# ## 5. Check the backward passes with `gradcheck`
#
# `scratchvision.gradcheck(forward, backward, inputs)` compares a backward pass with central
# differences of the forward. A layer keeps its parameters inside, so we wrap it as functions
# of arrays (as in tutorial 2): `forward(*inputs, *params)` and `backward(gy, *inputs,
# *params)`. The FPN takes and returns *lists* of maps, so its wrapper flattens the outputs
# into one vector.
#
# The FPN below has levels of 7, 3 and 2 pixels, which do not halve: the top-down path's
# nearest upsampling copies row 0 of the 3-pixel level three times into the 7-pixel level
# (`sigma = 0, 0, 0, 1, 1, 2, 2`) and the other rows twice, so its backward must count the
# copies. Inputs are random: no ties in the max pools, and ReLU kinks are hit with
# probability ~0.

# %%
def as_functions(layer, n_inputs, flatten_output=False):
    """(forward, backward) of ``layer`` as functions of (*inputs, *parameters)."""
    params = layer.parameters()

    def load(arrays):
        for param, array in zip(params, arrays):
            param.data[...] = array

    def call(inputs):
        return layer.forward(list(inputs) if n_inputs > 1 else inputs[0])

    def forward(*arrays):
        load(arrays[n_inputs:])
        y = call(arrays[:n_inputs])
        return np.concatenate([p.ravel() for p in y]) if flatten_output else y

    def backward(gy, *arrays):
        load(arrays[n_inputs:])
        layer.zero_grad()
        y = call(arrays[:n_inputs])
        if flatten_output:  # the flat gy back into one array per output
            gy = np.split(gy, np.cumsum([p.size for p in y])[:-1])
            gy = [g.reshape(p.shape) for g, p in zip(gy, y)]
        grads = layer.backward(gy)
        grads = list(grads) if n_inputs > 1 else [grads]
        return tuple(grads) + tuple(param.grad.copy() for param in params)

    return forward, backward


check_rng = np.random.default_rng(1)
small_fpn = FeaturePyramidNetwork([2, 3, 4], 3, extra_blocks=LastLevelMaxPool(backend=BACKEND),
                                  rng=check_rng, backend=BACKEND)
inputs = {f"features[{i}]": check_rng.standard_normal((1, c, s, s))
          for i, (c, s) in enumerate([(2, 7), (3, 3), (4, 2)])}
inputs.update((name, p.data.copy()) for name, p in small_fpn.named_parameters())
forward, backward = as_functions(small_fpn, n_inputs=3, flatten_output=True)
report = gradcheck(forward, backward, inputs)
print(report)
report.raise_if_failed()

small_inception = InceptionBlock(3, 2, 2, 2, 2, 2, 2, rng=check_rng, backend=BACKEND)
inputs = {"x": check_rng.standard_normal((1, 3, 6, 6))}
inputs.update((name, p.data.copy()) for name, p in small_inception.named_parameters())
forward, backward = as_functions(small_inception, n_inputs=1)
report = gradcheck(forward, backward, inputs)
print(report)
report.raise_if_failed()

# %% [markdown]
# ### Your turn: the backward of nearest upsampling
#
# Nearest upsampling copies input pixel `sigma(h) = floor(h * H / H')` to output row `h`. Its
# backward must send every output's gradient back to the pixel it copied, **summing** over
# the copies: `grad[sigma(h)] += gy[h]` (the FPN page, eq. (7):
# [nearest upsampling](../docs/strategies/fpn.md#nearest-upsampling-the-backward-sums-over-the-copies)). A tempting shortcut for
# "upsampling by 2" is to add up 2x2 blocks of `gy` (the reshape trick), padding `gy` with
# zeros to an even size. It is right when the copies form 2x2 blocks: 4 -> 8, and also
# 5 -> 9 (`sigma = 0, 0, 1, 1, 2, 2, 3, 3, 4`, the last block cut in half). It is wrong for
# 3 -> 7. gradcheck tells them apart.

# %%
def nearest_index(out_size, in_size):
    """sigma for every output index, as torch computes it (float32 scale)."""
    scale = np.float32(in_size) / np.float32(out_size)
    return np.minimum(np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(int),
                      in_size - 1)


def make_upsample(out_size):
    def forward(t):
        return bilinear.resize(t, out_size, mode="nearest", backend=BACKEND)

    def backward_sum_over_copies(gy, t):
        rows = nearest_index(out_size[0], t.shape[2])
        cols = nearest_index(out_size[1], t.shape[3])
        grad = np.zeros_like(t)
        # grad[..., rows[h], cols[w]] += gy[..., h, w], repeated indices accumulating
        np.add.at(grad, (slice(None), slice(None), rows[:, None], cols[None, :]), gy)
        return grad

    def backward_2x2_blocks(gy, t):
        h, w = t.shape[2:]
        gy = gy[:, :, :2 * h, :2 * w]  # crop or zero-pad gy to (2h, 2w)
        gy = np.pad(gy, ((0, 0), (0, 0), (0, 2 * h - gy.shape[2]), (0, 2 * w - gy.shape[3])))
        # (N, C, 2h, 2w) -> (N, C, h, 2, w, 2), summed over the 2x2 blocks
        return gy.reshape(gy.shape[0], gy.shape[1], h, 2, w, 2).sum(axis=(3, 5))

    return forward, backward_sum_over_copies, backward_2x2_blocks


for in_size, out_size in [((4, 4), (8, 8)), ((5, 5), (9, 9)), ((3, 3), (7, 7))]:
    forward, good, shortcut = make_upsample(out_size)
    t = {"t": check_rng.standard_normal((1, 2) + in_size)}
    ok = gradcheck(forward, good, t)
    bad = gradcheck(forward, shortcut, t)
    print(f"{in_size} -> {out_size}: sum over copies {'ok' if ok else 'FAIL'}, "
          f"2x2 blocks {'ok' if bad else 'FAIL'}")
    ok.raise_if_failed()
    assert bool(bad) == (in_size != (3, 3))  # the blocks are right except for 3 -> 7

# %% [markdown]
# The block sum fails for 3 -> 7, where the copies are not 2x2 blocks. Use the same
# pattern for any layer you write: wrap it as functions of its inputs and parameters, run
# `gradcheck` in float64 with inputs off the kinks (ties of a max, zeros of a ReLU), and read
# the table.
#
# Next: the docs have a page per strategy (cost, benefit, gradients):
# [multi-scale input](../docs/strategies/multiscale_input.md), [feature pyramids](../docs/strategies/fpn.md),
# [multi-kernel layers](../docs/strategies/multi_kernel.md), [anchors](../docs/strategies/anchors.md) and
# [dilation](../docs/strategies/dilation.md); `scratchvision/nn/fpn.py`, `multiscale.py` and `pooling.py`
# implement the layers used here. Then write the FPN's top-down backward yourself: the
# exercise `fpn_top_down_backward` ([the exercises](exercises/README.md)).
