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
# # Tutorial 1: bilinear sampling, its gradients, and checking them
#
# Deformable convolution and deformable attention read feature maps at *fractional* positions
# that a network predicts, and they learn those positions by gradient descent. The operation
# underneath is bilinear sampling. In this tutorial you will
#
# 1. sample a small image at sub-pixel points and recompute one sample by hand,
# 2. see the four taps of a point and their weights,
# 3. follow the samples along a line: piecewise linear, with kinks at the pixel centres,
# 4. look at the gradient with respect to a point, and check it with a finite difference,
# 5. see what happens at the border (per-tap zero padding),
# 6. run the same computation on every tier and compare,
# 7. verify a backward pass of your own with `scratchvision.gradcheck`.
#
# The maths is derived step by step on the
# [bilinear derivation page](../docs/derivations/bilinear.md) (`docs/derivations/bilinear.md`); equation numbers below,
# like "eq. (2)", refer to that page and to the comments of
# `scratchvision/ops/bilinear/loop.py`.
#
# Run this file as a script (`python tutorials/01_bilinear_sampling.py`) or open it as a
# notebook (`jupytext --to ipynb tutorials/01_bilinear_sampling.py`).

# %%
import math
import time

import matplotlib

matplotlib.use("Agg")  # no window: figures are saved as PNG files (and shown in a notebook)
import matplotlib.pyplot as plt
import numpy as np

import scratchvision
from scratchvision import gradcheck
from scratchvision.ops import bilinear
from scratchvision.tutorial_figures import figure_saver

show = figure_saver("tutorial01")  # show(fig, name): save as PNG, display in a notebook


# %% [markdown]
# ## 1. An image and some sub-pixel points
#
# Images are arrays of shape `(N, C, H, W)`: batch, channels, height, width. Points are
# `(x, y)` pairs **in pixel units**, shape `(N, P, 2)`: integer `(x, y)` is the centre of pixel
# `image[n, c, y, x]` (note the order: `x` is the column, `y` the row). The result has shape
# `(N, C, P)`: one value per channel and point.
#
# We make a smooth 16 x 16 test pattern with one channel, so that values are easy to plot.

# %%
H = W = 16
rows, cols = np.mgrid[0:H, 0:W]  # (H, W) each: row index y, column index x
pattern = np.sin(cols / 2.5) + np.cos(rows / 3.5) + 0.05 * cols
image = pattern[None, None].astype(np.float64)  # (H, W) -> (N=1, C=1, H, W)

points = np.array([[[5.3, 7.6], [0.0, 0.0], [12.5, 3.25], [7.0, 9.8]]])  # (1, P=4, 2)
values = bilinear.sample(image, points)  # (1, 1, 4)
print("samples:", values[0, 0])
print("pixel (x=0, y=0):", image[0, 0, 0, 0], "-- at an integer point, sampling is indexing")

# %% [markdown]
# Let us recompute the first sample, at `(x, y) = (5.3, 7.6)`, by hand. The point lies in the
# cell whose top-left pixel centre is `(x0, y0) = (floor(x), floor(y))`, at fractional offsets
# `ax = x - x0`, `ay = y - y0` (eq. 1). Each of the cell's four corners (the *taps*) gets a
# weight that grows as the point approaches it (eq. 2), and the sample is the weighted sum of
# the four pixels (eq. 4). The derivation: [the cell and the fractional offsets](../docs/derivations/bilinear.md#the-cell-and-the-fractional-offsets),
# [the four weights](../docs/derivations/bilinear.md#the-four-weights), [the sample](../docs/derivations/bilinear.md#the-sample).

# %%
x, y = points[0, 0]
x0, y0 = math.floor(x), math.floor(y)
ax, ay = x - x0, y - y0
taps = {  # (row, col): weight
    (y0, x0): (1 - ax) * (1 - ay),
    (y0, x0 + 1): ax * (1 - ay),
    (y0 + 1, x0): (1 - ax) * ay,
    (y0 + 1, x0 + 1): ax * ay,
}
by_hand = sum(w * image[0, 0, r, c] for (r, c), w in taps.items())
print(f"x0={x0}, y0={y0}, ax={ax:.2f}, ay={ay:.2f}")
for (r, c), w in taps.items():
    print(f"  tap (row {r}, col {c}): weight {w:.2f}, pixel {image[0, 0, r, c]:+.4f}")
print(f"weights sum to {sum(taps.values()):.2f}")
print(f"by hand: {by_hand:.12f}   bilinear.sample: {values[0, 0, 0]:.12f}")
assert np.isclose(by_hand, values[0, 0, 0], rtol=1e-12)

# %% [markdown]
# ## 2. The four taps and their weights
#
# `imshow` puts the centre of pixel `[r, c]` at plot coordinates `(c, r)`: exactly our
# convention, so points can be drawn on top of the image as they are. The dashed square is the
# cell; each tap is circled with an area proportional to its weight.

# %%
fig, ax_img = plt.subplots(figsize=(5.5, 5.5))
ax_img.imshow(image[0, 0], cmap="viridis")
ax_img.add_patch(plt.Rectangle((x0, y0), 1, 1, fill=False, ls="--", color="white"))
for (r, c), w in taps.items():
    ax_img.scatter([c], [r], s=1500 * w, facecolors="none", edgecolors="red", linewidths=2)
    ax_img.annotate(f"w={w:.2f}", (c, r), xytext=(c + 0.15, r - 0.2), color="white", fontsize=9)
ax_img.plot([x], [y], "r+", ms=14, mew=2)
ax_img.set_xlim(x0 - 2.5, x0 + 3.5)
ax_img.set_ylim(y0 + 3.5, y0 - 2.5)  # rows grow downwards, as in the image
ax_img.set_title(f"the taps of (x, y) = ({x}, {y})")
ax_img.set_xlabel("x (column)")
ax_img.set_ylabel("y (row)")
show(fig, "taps")

# %% [markdown]
# ## 3. Along a line: piecewise linear, kinks at pixel centres
#
# Sample along the horizontal line `y = 7.3`, from `x = -2.5` (outside the image) to
# `x = 17.5` (outside on the other side). `sample` accepts any number of middle dimensions,
# `(N, *, 2)`; here `*` is the number of points on the line.
#
# `sample_backward(gy, image, points)` returns the gradients of `sum(gy * sample(image,
# points))`; with `gy` all ones, `grad_points[..., 0]` is the slope `d sample / dx` at each
# point (eq. 6).

# %%
line_x = np.linspace(-2.5, 17.5, 801)
line = np.stack([line_x, np.full_like(line_x, 7.3)], axis=-1)[None]  # (1, 801, 2)
line_values = bilinear.sample(image, line)[0, 0]  # (801,)
_, grad_line = bilinear.sample_backward(np.ones((1, 1, line_x.size)), image, line)
slope = grad_line[0, :, 0]  # d sample / dx along the line

fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
top.plot(line_x, line_values)
integers = np.arange(-2, 18)
top.plot(integers, bilinear.sample(image, np.stack(
    [integers, np.full(integers.shape, 7.3)], -1)[None])[0, 0], "k.", label="integer x")
top.set_ylabel("sample")
top.legend()
bottom.step(line_x, slope, where="post")
bottom.set_ylabel("d sample / dx")
bottom.set_xlabel("x  (y = 7.3)")
for axis in (top, bottom):
    for border in (-1, W - 1, W):
        axis.axvline(border, color="grey", lw=0.8, ls=":")
top.set_title("straight between pixel centres; kinks at integers; zero one pixel outside")
show(fig, "line")

# %% [markdown]
# The slope is constant on each interval `[k, k + 1)` and jumps at every integer. At a kink the
# derivative does not exist; `scratchvision` (like `grid_sample`) returns the **right-hand**
# one, because `floor` puts a point with integer `x = k` at the left edge of the cell
# `[k, k + 1)` ([kinks and borders](../docs/derivations/bilinear.md#kinks-and-borders)). Compare with the slopes measured
# just left and right of `x = 6`:

# %%
def sample_at(px, py):
    """The sample of our one-channel image at the single point (px, py)."""
    return bilinear.sample(image, np.array([[[px, py]]]))[0, 0, 0]


def slope_at(px, py):
    """d sample / dx at (px, py), from the hand-written backward pass."""
    _, g = bilinear.sample_backward(np.ones((1, 1, 1)), image, np.array([[[px, py]]]))
    return g[0, 0, 0]


h = 1e-3
left = (sample_at(6.0, 7.3) - sample_at(6.0 - h, 7.3)) / h
right = (sample_at(6.0 + h, 7.3) - sample_at(6.0, 7.3)) / h
print(f"slope from the left {left:+.6f}, from the right {right:+.6f}, "
      f"returned at x=6: {slope_at(6.0, 7.3):+.6f}")

# %% [markdown]
# ## 4. The gradient with respect to a point
#
# A network that predicts where to sample learns from `grad_points`: which way to move each
# point to change the loss. With `gy` all ones the loss is the sum of the samples, and the
# gradient points uphill on the (interpolated) image. Inside a cell it is the
# *difference-of-taps* form of eqs. (6) and (7)
# ([with respect to the point](../docs/derivations/bilinear.md#with-respect-to-the-point-derivatives-of-the-weights)):
#
# $$\frac{\partial L}{\partial x} = (1 - a_y)\,(I_{01} - I_{00}) + a_y\,(I_{11} - I_{10})$$
#
# the horizontal slopes of the top and bottom rows of the cell, blended by how far down the
# point is, and the same for `y`. In the code's names:
# `dL/dx = (1 - ay) * (I01 - I00) + ay * (I11 - I10)`.

# %%
rng = np.random.default_rng(0)
arrow_points = rng.uniform(0.5, W - 1.5, size=(1, 40, 2))  # (1, 40, 2)
_, grad_arrows = bilinear.sample_backward(np.ones((1, 1, 40)), image, arrow_points)

fig, ax_img = plt.subplots(figsize=(5.5, 5.5))
ax_img.imshow(image[0, 0], cmap="viridis")
ax_img.quiver(arrow_points[0, :, 0], arrow_points[0, :, 1],
              grad_arrows[0, :, 0], grad_arrows[0, :, 1],
              angles="xy", color="white")  # angles="xy": arrows in data coordinates (y down)
ax_img.set_title("dL/d(x, y) of L = sum of the samples")
show(fig, "gradient_arrows")

# %% [markdown]
# Never trust a gradient you have not checked. Here is the check done by hand for one point:
# nudge `x` by `±eps` and take the central difference of the loss. Because sampling is linear
# inside a cell, the central difference is exact up to rounding, as long as `x ± eps` stays in
# the same cell.

# %%
px, py = arrow_points[0, 0]
eps = 1e-6
numeric_dx = (sample_at(px + eps, py) - sample_at(px - eps, py)) / (2 * eps)
numeric_dy = (sample_at(px, py + eps) - sample_at(px, py - eps)) / (2 * eps)
print(f"point ({px:.4f}, {py:.4f})")
analytic_dx, analytic_dy = grad_arrows[0, 0]
print(f"  backward:          dL/dx = {analytic_dx:+.9f}   dL/dy = {analytic_dy:+.9f}")
print(f"  finite difference: dL/dx = {numeric_dx:+.9f}   dL/dy = {numeric_dy:+.9f}")
assert np.allclose(grad_arrows[0, 0], [numeric_dx, numeric_dy], rtol=1e-6, atol=1e-8)

# %% [markdown]
# ## 5. At the border: per-tap zero padding
#
# A tap outside the image reads zero, *independently of the other taps* (eq. 3,
# [per-tap zero padding](../docs/derivations/bilinear.md#per-tap-zero-padding)). So the
# sample fades linearly to zero over the one pixel outside the image, and is exactly zero
# beyond. Sample a grid that extends two pixels past every edge:

# %%
grid_x, grid_y = np.meshgrid(np.linspace(-2.5, W + 1.5, 161), np.linspace(-2.5, H + 1.5, 161))
grid = np.stack([grid_x, grid_y], axis=-1)[None]  # (1, 161, 161, 2): points with * = (161, 161)
padded = bilinear.sample(image, grid)[0, 0]  # (1, 1, 161, 161) -> (161, 161)

fig, ax_img = plt.subplots(figsize=(5.5, 5.5))
limit = np.abs(padded).max()
ax_img.imshow(padded, cmap="coolwarm", vmin=-limit, vmax=limit,  # zero is white
              extent=(-2.5, W + 1.5, H + 1.5, -2.5))
ax_img.add_patch(plt.Rectangle((0, 0), W - 1, H - 1, fill=False, color="black", ls="--"))
ax_img.add_patch(plt.Rectangle((-1, -1), W + 1, H + 1, fill=False, color="green", ls=":"))
ax_img.set_title("dashed: first and last pixel centres\ndotted: where the samples reach zero")
show(fig, "zero_padding")

# %% [markdown]
# The border has the same right-hand convention as the kinks. At `x = -1` the value is zero,
# yet the gradient is **not**: a step to the right brings the point into the image. At
# `x = W` the value is zero and so is the gradient, since everything to its right is zero too.

# %%
print(f"{'x':>6} {'sample':>10} {'d/dx':>10}")
for bx in (-1.5, -1.0, -0.5, 0.0, W - 1.0, W - 0.5, float(W), W + 0.5):
    print(f"{bx:6.1f} {sample_at(bx, 7.3):10.5f} {slope_at(bx, 7.3):10.5f}")

# %% [markdown]
# Points with a non-finite coordinate (`nan`, `inf`) contribute zero and get zero gradient;
# they never turn into an array index ([non-finite points](../docs/derivations/bilinear.md#non-finite-points)).

# %%
print("sample at (nan, 3):", sample_at(np.nan, 3.0), "  d/dx:", slope_at(np.nan, 3.0))

# %% [markdown]
# ## 6. One computation, four tiers
#
# The same function is implemented four times: `loop` (Python loops that read like the
# derivation), `numpy` (whole-array operations, here sparse matrix products), `numba`
# (compiled parallel loops) and `cuda` (GPU kernels, or numba's CUDA simulator on a machine
# without a GPU). `scratchvision.tier_status(tier)` says whether a tier can run here and as
# what. Every tier must agree with the loop tier to about 1e-10 relative in float64.
#
# The first call of the numba tier compiles its kernels (cached on disk for later runs), so we
# time a second call of forward and backward. On a case this small the timings say little;
# `scratchvision bench` compares the tiers on realistic sizes.

# %%
case_image = rng.standard_normal((2, 3, 12, 12))  # (N, C, H, W)
case_points = rng.uniform(-1.5, 12.5, size=(2, 50, 2))  # (N, P, 2), some near or past the border
case_gy = rng.standard_normal((2, 3, 50))  # (N, C, P)

reference = bilinear.sample(case_image, case_points, backend="loop")
ref_grad_image, ref_grad_points = bilinear.sample_backward(case_gy, case_image, case_points,
                                                           backend="loop")
print(f"{'tier':<6} {'runs as':<10} {'forward err':>12} {'grad err':>10} {'ms (fwd+bwd)':>13}")
for tier in scratchvision.TIERS:
    status = scratchvision.tier_status(tier)
    if not status.available:
        print(f"{tier:<6} skipped: {status.detail}")
        continue
    # warm-up: the first call of a compiled tier compiles (or loads) its kernels
    bilinear.sample_backward(case_gy, case_image, case_points, backend=tier)
    bilinear.sample(case_image, case_points, backend=tier)
    start = time.perf_counter()
    out = bilinear.sample(case_image, case_points, backend=tier)
    grad_image, grad_points = bilinear.sample_backward(case_gy, case_image, case_points,
                                                       backend=tier)
    ms = 1e3 * (time.perf_counter() - start)
    forward_err = np.max(np.abs(out - reference))
    grad_err = max(np.max(np.abs(grad_image - ref_grad_image)),
                   np.max(np.abs(grad_points - ref_grad_points)))
    print(f"{tier:<6} {status.kind:<10} {forward_err:12.1e} {grad_err:10.1e} {ms:13.2f}")
    assert forward_err < 1e-10 and grad_err < 1e-10

# %% [markdown]
# ## 7. Verify a backward pass with `gradcheck`
#
# Checking one point by hand, as in section 4, does not scale. `scratchvision.gradcheck`
# does it for every element of every input: it calls your `forward` at `x ± eps` along each
# input element (or, for large inputs, along random directions), contracts the result with a
# random upstream gradient `gy`, and compares with what your `backward(gy, ...)` returns.
#
# * `forward(*inputs) -> y`
# * `backward(gy, *inputs) -> (grad for each input)` (a tuple or NamedTuple)
# * `inputs`: a dict `name -> float64 array`; the names label the report.
#
# First the library's own pair. Bilinear sampling is piecewise linear, so we keep the points
# well away from integer coordinates (the kinks): a central difference that straddles a kink
# measures the average of two slopes and matches neither.

# %%
check_image = rng.standard_normal((1, 2, 6, 7))  # (N, C, H, W)
cells = rng.integers(-1, 7, size=(1, 5, 2))  # top-left taps, some outside the image
check_points = cells + rng.uniform(0.1, 0.9, size=(1, 5, 2))  # (N, P, 2), off the kinks

report = gradcheck(bilinear.sample, bilinear.sample_backward,
                   {"image": check_image, "points": check_points})
print(report)
report.raise_if_failed()

# %% [markdown]
# The same works for resizing (`resize` is linear in `x`; its backward is the transpose):

# %%
size = (7, 9)
report = gradcheck(lambda x: bilinear.resize(x, size),
                   lambda gy, x: bilinear.resize_backward(gy, x, size),
                   {"x": rng.standard_normal((1, 2, 4, 5))})
print(report)
report.raise_if_failed()

# %% [markdown]
# ### Your turn: a function of your own
#
# Suppose a layer compares two places of a feature map: for each batch and channel it samples
# at two points `a` and `b` and outputs the **product** of the two samples,
# `y[n, c] = sample(a) * sample(b)`. Its backward needs the product rule and then the
# backward of `sample`:
#
# * `dL/dsample(a) = gy * sample(b)` and `dL/dsample(b) = gy * sample(a)`,
# * then `bilinear.sample_backward` turns those into gradients for the image and the points.
#
# Below is a first attempt with a classic bug: it forgets the product rule and passes `gy` to
# both samples. `gradcheck` catches it and says where.

# %%
def two_point_product(image, pair):
    """image (N, C, H, W), pair (N, 2, 2) = the points a and b -> y (N, C)."""
    s = bilinear.sample(image, pair)  # (N, C, 2)
    return s[..., 0] * s[..., 1]


def two_point_product_backward_buggy(gy, image, pair):
    g_s = np.stack([gy, gy], axis=-1)  # wrong: the product rule is missing
    return bilinear.sample_backward(g_s, image, pair)


def two_point_product_backward(gy, image, pair):
    """gy (N, C) -> (grad_image (N, C, H, W), grad_pair (N, 2, 2))."""
    s = bilinear.sample(image, pair)  # (N, C, 2), recomputed from the forward's inputs
    g_s = np.stack([gy * s[..., 1], gy * s[..., 0]], axis=-1)  # product rule, (N, C, 2)
    return bilinear.sample_backward(g_s, image, pair)


my_inputs = {"image": rng.standard_normal((2, 3, 5, 5)),
             "pair": rng.integers(0, 4, size=(2, 2, 2)) + rng.uniform(0.1, 0.9, size=(2, 2, 2))}

buggy = gradcheck(two_point_product, two_point_product_backward_buggy, my_inputs)
print("buggy backward:")
print(buggy)
assert not buggy.ok

fixed = gradcheck(two_point_product, two_point_product_backward, my_inputs)
print("\nwith the product rule:")
print(fixed)
fixed.raise_if_failed()

# %% [markdown]
# `worst at` is the index of the worst element in that input, a good place to start looking
# when a check fails. Use the same three lines on any forward/backward pair you write:
#
# ```python
# report = gradcheck(my_forward, my_backward, {"name": float64_array, ...})
# print(report)
# report.raise_if_failed()
# ```
#
# Next: the [bilinear derivation page](../docs/derivations/bilinear.md) derives every formula used here, and the loop
# tier `scratchvision/ops/bilinear/loop.py` implements them line by line. Then write the
# backward pass yourself: the exercise `bilinear_backward`
# ([the exercises](exercises/README.md)) leaves its gradient lines out and checks yours. The
# [next tutorial](02_deformable_convolution.py) puts bilinear sampling to work in a layer that
# learns where to look.
