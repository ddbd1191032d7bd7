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
# # Tutorial 2: deformable convolution learns where to look
#
# A 3x3 convolution computes each output pixel from the 3x3 block of input pixels around it:
# the **sampling grid** is fixed. Deformable convolution (DCN, Dai et al. 2017; DCNv2, Zhu et
# al. 2019) moves each of the nine taps by an *offset* that a small convolution predicts from
# the input, reads the input there with bilinear sampling
# ([tutorial 1](01_bilinear_sampling.py)), and, in DCNv2, scales each tap by a learned *mask*:
#
# $$y(p_0) = \sum_k w_k\, m_k(p_0)\, x\big(p_0 + p_k + \Delta p_k(p_0)\big)$$
#
# (`y(p0) = sum_k w_k * m_k(p0) * x(p0 + p_k + dp_k(p0))` in the code's names)
#
# where `p_k` runs over the regular grid `(-1, -1), (-1, 0), ..., (1, 1)` and `dp_k(p0)` is the
# learned offset of tap `k` at output pixel `p0`. In this tutorial you will
#
# 1. draw the regular grid and a deformed grid on an image, and check that
#    `deform_conv2d` really samples where the offsets say;
# 2. set up a task a 3x3 convolution cannot solve (undo a shift of 4 pixels) and compute,
#    exactly, the best loss *any* 3x3 convolution can reach;
# 3. train a `Conv2d` and a `DeformConv2d` on it with Adam;
# 4. plot where the deformable layer moved its taps;
# 5. verify the layer's hand-written backward pass with `scratchvision.gradcheck`, and watch
#    it catch a classic bug.
#
# The maths is derived on the [deformable convolution page](../docs/derivations/deform_conv2d.md) (the operator) and in
# [the mask path through the sigmoid](../docs/derivations/module_gradients.md#deformconv2d-the-mask-path-through-the-sigmoid)
# (the layer around it).
#
# Run this file as a script (`python tutorials/02_deformable_convolution.py`) or open it as a
# notebook (`jupytext --to ipynb tutorials/02_deformable_convolution.py`).

# %%
import time

import matplotlib

matplotlib.use("Agg")  # no window: figures are saved as PNG files (and shown in a notebook)
import matplotlib.pyplot as plt
import numpy as np

from scratchvision import gradcheck, nn, optim
from scratchvision.ops import bilinear, deform_conv2d
from scratchvision.tutorial_figures import figure_saver

show = figure_saver("tutorial02")  # show(fig, name): save as PNG, display in a notebook


# %% [markdown]
# ## 1. The regular grid and a deformed grid
#
# We need images that are *smooth* (we will see why in section 2): white noise, low-pass
# filtered with a Gaussian of `sigma` pixels. Filtering in the Fourier domain is one
# multiplication per frequency.

# %%
def smooth_images(rng, n, size, sigma):
    """(n, size, size) Gaussian-filtered white noise with unit standard deviation."""
    frequencies = np.fft.fftfreq(size)  # cycles per pixel
    fy, fx = np.meshgrid(frequencies, frequencies, indexing="ij")
    transfer = np.exp(-2 * (np.pi * sigma) ** 2 * (fx**2 + fy**2))  # the Gaussian's transform
    noise = rng.standard_normal((n, size, size))
    images = np.real(np.fft.ifft2(np.fft.fft2(noise) * transfer))
    return images / images.std()


rng = np.random.default_rng(0)
picture = smooth_images(rng, 1, 20, sigma=2.0)[:, None]  # (N=1, C=1, H=20, W=20)

# %% [markdown]
# The offsets of a 3x3 deformable convolution have shape `(N, 2 * 9, Ho, Wo)`: for output
# pixel `(ho, wo)`, channel `2k` is the **row** offset `dy` of tap `k = 3 i + j` and channel
# `2k + 1` its **column** offset `dx` (torchvision's layout). Note the order: offsets are
# `(dy, dx)`, while the points of `bilinear.sample` are `(x, y)`. Mixing the two up is a classic
# bug.
#
# As an example we rotate the grid by 30 degrees and stretch it by a factor 2, the same at
# every output pixel: tap `k` at grid position `p_k` moves to `2 R p_k`, so its offset is
# `dp_k = 2 R p_k - p_k`. (The layout and the sampling point:
# [conventions and layout](../docs/derivations/deform_conv2d.md#conventions-and-layout), [the sampling point](../docs/derivations/deform_conv2d.md#the-sampling-point).)

# %%
grid = np.array([(i - 1, j - 1) for i in range(3) for j in range(3)], dtype=float)  # (9, 2) (y, x)
angle = np.deg2rad(30)
rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
deformed = 2.0 * grid @ rotation.T  # (9, 2): where each tap should sample, relative to p0
tap_offsets = deformed - grid  # (9, 2) as (dy, dx)

height, width = picture.shape[2:]
# (9, 2) -> (18,) in the order dy0, dx0, dy1, dx1, ... -> (1, 18, H, W), the same at every pixel
offset = np.broadcast_to(tap_offsets.reshape(18)[None, :, None, None], (1, 18, height, width))

p0 = np.array([9.0, 10.0])  # the output pixel we draw: row 9, column 10


def draw_grid(axis, centre, taps, style, label, sizes=None):
    """Scatter the taps (9, 2) = (row, col) relative to ``centre`` on an imshow axis (which
    puts pixel [r, c] at plot coordinates (c, r))."""
    points = centre + taps
    axis.scatter(points[:, 1], points[:, 0], s=60 if sizes is None else sizes, label=label,
                 **style)


fig, axis = plt.subplots(figsize=(5.5, 5.5))
axis.imshow(picture[0, 0], cmap="gray")
draw_grid(axis, p0, grid, dict(marker="s", facecolors="none", edgecolors="cyan"),
          "regular grid p0 + p_k")
draw_grid(axis, p0, deformed, dict(marker="o", color="red"), "deformed p0 + p_k + dp_k")
for start, end in zip(p0 + grid, p0 + deformed):
    axis.annotate("", xy=end[::-1], xytext=start[::-1],
                  arrowprops=dict(arrowstyle="->", color="yellow"))
axis.legend(loc="lower left", fontsize=8)
axis.set_title("one output pixel's taps, before and after the offsets")
show(fig, "grids")

# %% [markdown]
# Does `deform_conv2d` sample where we think? Give it a weight that is 1 on tap `k` and 0
# elsewhere: the output at `p0` is then the image at `p0 + p_k + dp_k`, which
# `bilinear.sample` computes directly (taking `(x, y)` points, hence the `[::-1]`).

# %%
for k in (0, 4, 8):
    one_tap = np.zeros((1, 1, 3, 3))
    one_tap.reshape(9)[k] = 1.0  # a view: sets the weight of tap k
    y = deform_conv2d.forward(picture, offset, one_tap, padding=1)  # (1, 1, H, W)
    point = (p0 + deformed[k])[::-1]  # (row, col) -> (x, y)
    direct = bilinear.sample(picture, point[None, None])[0, 0, 0]
    print(f"tap {k}: deform_conv2d {y[0, 0, 9, 10]:+.12f}   bilinear.sample at "
          f"(x, y) = ({point[0]:.3f}, {point[1]:.3f}): {direct:+.12f}")
    assert np.isclose(y[0, 0, 9, 10], direct, rtol=1e-12, atol=1e-14)

# %% [markdown]
# ## 2. A task a 3x3 convolution cannot solve
#
# The target is the input moved by `SHIFT = (2, 4)` pixels: `target[p] = x[p + SHIFT]`. To
# produce it, output pixel `p` must read input pixel `p + (2, 4)`, four columns further than a
# 3x3 kernel reaches. We cut both from larger images so that the target really is the input's
# surroundings, and score only the output pixels whose source `p + SHIFT` lies inside the
# input (the *window*); outside it no layer can know the answer.

# %%
SHIFT = (2, 4)
SIZE, BATCH, MARGIN = 20, 8, 8

canvas = smooth_images(rng, BATCH, SIZE + 2 * MARGIN, sigma=2.0)
dy, dx = SHIFT
x = np.ascontiguousarray(canvas[:, None, MARGIN:MARGIN + SIZE, MARGIN:MARGIN + SIZE])
target = np.ascontiguousarray(
    canvas[:, None, MARGIN + dy:MARGIN + dy + SIZE, MARGIN + dx:MARGIN + dx + SIZE])
window = np.zeros((SIZE, SIZE), dtype=bool)
window[:SIZE - dy, :SIZE - dx] = True


def masked_mse(y, target):
    """The mean squared error over the window and its gradient with respect to y."""
    difference = np.where(window, y - target, 0.0)
    count = y.shape[0] * window.sum()
    return float(np.sum(difference**2) / count), 2.0 * difference / count


# %% [markdown]
# How good can a plain 3x3 convolution (padding 1, with a bias) possibly get? Its output is
# *linear* in its ten numbers, so the best loss is a least-squares problem: one row per output
# pixel in the window, one column per kernel tap (the input pixel that tap reads) and a column
# of ones for the bias. `np.linalg.lstsq` solves it exactly: no training can beat this number.

# %%
padded = np.pad(x[:, 0], ((0, 0), (1, 1), (1, 1)))  # (N, SIZE + 2, SIZE + 2), zero padding
columns = [padded[:, i:i + SIZE, j:j + SIZE][:, window].ravel()
           for i in range(3) for j in range(3)]
design = np.stack(columns + [np.ones(columns[0].size)], axis=1)  # (pixels, 10)
values = target[:, 0][:, window].ravel()
coefficients, *_ = np.linalg.lstsq(design, values, rcond=None)
best_conv_loss = float(np.mean((design @ coefficients - values) ** 2))
variance = float(np.mean(values**2))
print(f"target variance {variance:.3f}; best loss of any 3x3 convolution {best_conv_loss:.3f} "
      f"({100 * best_conv_loss / variance:.0f} % of the variance left unexplained)")
print("best 3x3 kernel:\n", coefficients[:9].reshape(3, 3).round(2))

# %% [markdown]
# The best kernel leans to the right and down, towards the shifted content, but it cannot
# reach it: the images vary on a scale of a few pixels, so the pixels one step away carry only
# part of what is four steps away.
#
# Why smooth images? The offsets are learned by gradient descent, and the gradient with
# respect to an offset is the image's slope at the sampled point (tutorial 1). Right after
# initialisation the taps sample near `p`, three or more pixels from `p + SHIFT`; for the slope
# there to point towards the shifted content, the image must be correlated over that distance.
# On white noise the offsets would get no useful signal.

# %% [markdown]
# ## 3. Training both layers
#
# `nn.DeformConv2d(1, 1, 3, padding=1)` is the DCNv2 "pack" layer: besides its 3x3 `weight` and
# `bias` it owns `conv_offset`, a plain 3x3 convolution from the input to `3 * 9` channels,
# 18 offsets and 9 mask logits (mask = sigmoid(logits)). `conv_offset` starts at zero, so the
# fresh layer is a plain convolution with every tap weighted by sigmoid(0) = 1/2. Its backward
# chains the operator's offset and mask gradients ([offset](../docs/derivations/deform_conv2d.md#offset-the-slopes-of-the-interpolant),
# [mask](../docs/derivations/deform_conv2d.md#mask)) through the sigmoid into `conv_offset`:
# [the mask path](../docs/derivations/module_gradients.md#deformconv2d-the-mask-path-through-the-sigmoid).
#
# Training is the loop from `scratchvision.nn.module`: zero the gradients, forward, loss,
# backward (which accumulates into every `.grad`), optimizer step.

# %%
STEPS, LEARNING_RATE = 200, 0.05


def train(layer):
    optimizer = optim.Adam(layer.parameters(), lr=LEARNING_RATE)
    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss, grad = masked_mse(layer(x), target)
        layer.backward(grad)
        optimizer.step()
        losses.append(loss)
    losses.append(masked_mse(layer(x), target)[0])
    return losses


conv = nn.Conv2d(1, 1, 3, padding=1, rng=rng)
deform = nn.DeformConv2d(1, 1, 3, padding=1, rng=rng)
print(deform)
for layer in (conv, deform):  # the first call of a compiled tier compiles its kernels
    layer.backward(np.zeros_like(layer(x)))
    layer.zero_grad()

start = time.perf_counter()
conv_losses = train(conv)
deform_losses = train(deform)
print(f"trained both in {time.perf_counter() - start:.1f} s")
print(f"final loss: Conv2d {conv_losses[-1]:.4f} (best possible {best_conv_loss:.4f}), "
      f"DeformConv2d {deform_losses[-1]:.2e}")

fig, axis = plt.subplots(figsize=(7, 4))
axis.semilogy(conv_losses, label="Conv2d 3x3")
axis.semilogy(deform_losses, label="DeformConv2d 3x3")
axis.axhline(best_conv_loss, color="black", ls="--", label="best any 3x3 conv can do")
axis.set_xlabel("Adam step")
axis.set_ylabel("masked MSE")
axis.legend()
show(fig, "losses")

# %% [markdown]
# The Conv2d creeps towards the least-squares bound and stops there: the bound is the global
# minimum of its (convex) problem. The deformable layer goes far below it. The test suite
# (`tests/nn/test_deform_training.py`) asserts exactly this: the DeformConv2d must end 10
# times below the bound, the Conv2d above it.

# %%
assert conv_losses[-1] >= best_conv_loss * (1 - 1e-9)
assert deform_losses[-1] < best_conv_loss / 10

fig, axes = plt.subplots(1, 4, figsize=(12, 3.4))
for axis, (title, image) in zip(axes, [("input x", x), ("target = x moved by (2, 4)", target),
                                       ("Conv2d output", conv(x)),
                                       ("DeformConv2d output", deform(x))]):
    axis.imshow(np.where(window, image[0, 0], np.nan), cmap="gray", vmin=-2.5, vmax=2.5)
    axis.set_title(title, fontsize=10)
    axis.set_axis_off()
fig.suptitle("first image of the batch, on the scored window")
show(fig, "outputs")

# %% [markdown]
# ## 4. Where did the taps go?
#
# `deform.offset_and_mask(x)` returns the offsets and mask the layer predicts (without
# disturbing what `forward` saved for `backward`). For a few output pixels we draw the regular
# grid and the learned sampling points, each sized by how much the tap counts, `|w_k * m_k|`.
# The star marks `p + SHIFT`, where the answer is.

# %%
offset, mask = deform.offset_and_mask(x)  # (N, 18, H, W), (N, 9, H, W)
weights = deform.weight.data.reshape(9)
print("learned weights:\n", weights.reshape(3, 3).round(2))

fig, axis = plt.subplots(figsize=(6, 6))
axis.imshow(x[0, 0], cmap="gray")
for row, col in [(3, 3), (9, 8), (14, 12)]:
    centre = np.array([row, col], dtype=float)
    taps = offset[0, :, row, col].reshape(9, 2) + grid  # (9, 2) (y, x) relative to p
    importance = np.abs(weights * mask[0, :, row, col])
    axis.scatter([col + SHIFT[1]], [row + SHIFT[0]], marker="*", s=400, color="yellow",
                 edgecolors="black", zorder=1)
    draw_grid(axis, centre, grid, dict(marker="s", facecolors="none", edgecolors="cyan"),
              None)
    draw_grid(axis, centre, taps, dict(marker="o", color="red", edgecolors="black",
                                       zorder=3), None,
              sizes=10 + 150 * importance / importance.max())
    for k in np.flatnonzero(importance > 0.2 * importance.max()):  # arrows for the taps
        axis.annotate("", xy=(centre + taps[k])[::-1], xytext=(centre + grid[k])[::-1],
                      arrowprops=dict(arrowstyle="->", color="orange"), zorder=2)
axis.set_title("regular grid (cyan), learned taps (red, size ~ |w m|),\n"
               "arrows for the taps that count, p + SHIFT (star)")
show(fig, "learned_grid")

# the taps that count sample at p + SHIFT: average their positions over the window
moved = offset.reshape(BATCH, 9, 2, SIZE, SIZE) + grid[None, :, :, None, None]
importance = np.abs(weights)[None, :, None, None] * mask * window  # (N, 9, H, W)
mean_move = np.einsum("nkhw,nkchw->c", importance, moved) / importance.sum()
print(f"importance-weighted mean displacement of the taps: (dy, dx) = "
      f"({mean_move[0]:.2f}, {mean_move[1]:.2f}); the shift is {SHIFT}")

# %% [markdown]
# Nothing told the layer about the shift: gradient descent on the loss moved the taps (through
# `conv_offset`'s bias, mostly) until they sample the shifted content, and set the weights of
# the taps that landed there.

# %% [markdown]
# ## 5. Verify the layer's backward with `gradcheck`
#
# `scratchvision.gradcheck(forward, backward, inputs)` compares a backward pass with central
# differences of the forward. A layer keeps its parameters inside, so we wrap it as functions
# of arrays: `forward(x, *params)` loads the parameter values and runs the layer;
# `backward(gy, x, *params)` zeroes the gradients, runs forward and backward, and returns the
# input gradient followed by every parameter's `.grad`.
#
# One caution from tutorial 1: bilinear sampling has kinks at integer coordinates, and a
# fresh DeformConv2d samples *exactly* at integers (all offsets are 0). We therefore give
# `conv_offset` small random weights and offset biases of `integer + 0.5`, which keeps every
# sampled coordinate at least 0.25 pixel from a kink (for inputs in [-1, 1]).

# %%
def as_functions(layer):
    """(forward, backward) of ``layer`` as functions of (x, *parameters)."""
    params = layer.parameters()

    def load(arrays):
        for param, array in zip(params, arrays):
            param.data[...] = array

    def forward(x, *arrays):
        load(arrays)
        return layer.forward(x)

    def backward(gy, x, *arrays):
        load(arrays)
        layer.zero_grad()
        layer.forward(x)
        grad_x = layer.backward(gy)
        return (grad_x,) + tuple(param.grad.copy() for param in params)

    return forward, backward


check_rng = np.random.default_rng(1)
layer = nn.DeformConv2d(2, 2, 3, padding=1, rng=check_rng)
fan_in = layer.conv_offset.weight.data[0].size
layer.conv_offset.weight.data[...] = check_rng.uniform(-0.25, 0.25, (27, 2, 3, 3)) / fan_in
layer.conv_offset.bias.data[:18] = check_rng.integers(-2, 3, 18) + 0.5  # offsets: k + 0.5
layer.conv_offset.bias.data[18:] = check_rng.uniform(-2, 2, 9)  # mask logits: anything

inputs = {"x": check_rng.uniform(-1, 1, (1, 2, 5, 5))}
inputs.update((name, param.data.copy()) for name, param in layer.named_parameters())
forward, backward = as_functions(layer)
report = gradcheck(forward, backward, inputs, mode="directional")
print(report)
report.raise_if_failed()

# %% [markdown]
# `mode="directional"` compares derivatives along 8 random directions per input (the full
# Jacobian of `conv_offset.weight`, 486 numbers, would take about a thousand forward passes).
#
# ### Your turn: a bug gradcheck catches
#
# The input reaches the output along **two** paths: it is sampled by the deformable
# convolution, and it also produces the offsets and mask through `conv_offset`. A backward that
# forgets the second path is wrong, yet looks plausible, and training with it would even
# sort-of work (the two paths are eq. (12) of [module-level gradients](../docs/derivations/module_gradients.md#the-inputs-two-paths)).
# Below, a subclass with that bug: gradcheck flags `x` and nothing else.

# %%
class ForgetfulDeformConv2d(nn.DeformConv2d):
    """Returns only the direct path's input gradient (the parameters' are still right)."""

    def backward(self, grad):
        saved = self._saved_for_backward()
        grads = deform_conv2d.backward(grad, saved["x"], saved["offset"], self.weight.data,
                                       self.bias.data, padding=self.padding,
                                       mask=saved["mask"], backend=self.backend)
        super().backward(grad)  # accumulates every parameter gradient correctly
        return grads.grad_input  # bug: the path through conv_offset is missing


buggy_layer = ForgetfulDeformConv2d(2, 2, 3, padding=1)
buggy_layer.load_state_dict(layer.state_dict())
forward, backward = as_functions(buggy_layer)
buggy = gradcheck(forward, backward, inputs, mode="directional")
print(buggy)
assert not buggy.results["x"].ok
assert all(result.ok for name, result in buggy.results.items() if name != "x")

# %% [markdown]
# Use the same pattern for any layer you write: wrap it as functions of its input and
# parameters, run `gradcheck` in float64 with inputs kept off the kinks, and read the table.
#
# Next: the [deformable convolution page](../docs/derivations/deform_conv2d.md) derives every gradient of the operator, and
# `scratchvision/ops/deform_conv2d/loop.py` implements them line by line. Then write them
# yourself: the exercise `deform_conv2d_offset_mask` ([the exercises](exercises/README.md)).
# The [next tutorial](03_deformable_attention.py) lets a query read a few learned points of a
# whole feature pyramid.
