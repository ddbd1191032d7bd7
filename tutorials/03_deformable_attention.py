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
# # Tutorial 3: deformable attention reads a few points instead of the whole map
#
# In dense attention every query compares itself with every position of the feature map and
# mixes all of them. On the high-resolution maps a detector needs, that is too expensive: the
# cost and the memory grow with the *square* of the number of pixels. Deformable DETR (Zhu et
# al., 2021) lets each query read only a few points per head and pyramid level, at learned
# fractional positions around a *reference point*, sampled bilinearly (tutorial 1):
#
# $$\operatorname{MSDeformAttn}(z_q, \hat p_q, \{x^l\}) = \sum_{m} W_m \Big[\sum_{l} \sum_{k}
# A_{mlqk}\, W'_m\, x^l\big(\phi_l(\hat p_q) + \Delta p_{mlqk}\big)\Big]$$
#
# (`MSDeformAttn(z_q, p_q, {x^l}) = sum_m W_m [sum_l sum_k A_mlqk * W'_m x^l(phi_l(p_q) +
# dp_mlqk)]` in the code's names)
#
# for query content `z_q`, reference point `p_q`, levels `x^l`, heads `m`, points `k`,
# attention weights `A` and sampling offsets `dp`, both predicted from `z_q` by linear layers.
# In this tutorial you will
#
# 1. build a 3-level feature pyramid from a synthetic image and flatten it the way the
#    operator wants it;
# 2. place reference points, run the `MSDeformAttn` layer, and check that the operator
#    `ms_deform_attn` is exactly the bracket of the formula;
# 3. draw where a few queries sample on every level, and with what weight;
# 4. measure time and memory of dense against deformable attention as a map grows from
#    25x25 to 100x100 pixels;
# 5. write a deformable attention of your own with `bilinear.sample` and verify its
#    backward pass with `scratchvision.gradcheck`, which catches a classic bug.
#
# The maths is derived on the [multi-scale deformable attention page](../docs/derivations/ms_deform_attn.md)
# (`docs/derivations/ms_deform_attn.md`); equation numbers like "eq. (2)" refer to that page
# and to the comments of `scratchvision/ops/ms_deform_attn/loop.py`.
#
# Run this file as a script (`python tutorials/03_deformable_attention.py`) or open it as a
# notebook (`jupytext --to ipynb tutorials/03_deformable_attention.py`).

# %%
import os

# On a machine with few cores, numba's worker threads and NumPy's BLAS threads each keep
# spinning for a while after their work, and a layer that alternates between them (matrix
# products, then the op) waits for the other pool's spinning threads: at 25x25 deformable
# attention took 16 ms instead of 1 ms that way on the 2-core machine. Letting the OpenMP
# threads sleep fixes it. It must be set before numba starts its threads; it has no effect if
# they are already running (e.g. in a notebook kernel that has imported scratchvision).
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import gc  # noqa: E402  (after the environment is set)
import time
import tracemalloc

import matplotlib

matplotlib.use("Agg")  # no window: figures are saved as PNG files (and shown in a notebook)
import matplotlib.pyplot as plt
import numpy as np

from scratchvision import gradcheck
from scratchvision.nn.attention import MultiheadAttention, softmax
from scratchvision.nn.deformable_attention import MSDeformAttn
from scratchvision.ops import bilinear, ms_deform_attn
from scratchvision.tutorial_figures import figure_saver

show = figure_saver("tutorial03")  # show(fig, name): save as PNG, display in a notebook


# %% [markdown]
# ## 1. A feature pyramid, flattened
#
# A detector's backbone produces feature maps at several strides. We imitate one with a
# synthetic RGB image of 128 x 160 pixels (a sky-to-ground gradient, a sun, a house and a
# striped field), shrunk to strides 4, 8 and 16, and a fixed random 1x1 projection of its
# three colours to `C = 32` channels on every level.
#
# To shrink we halve, again and again, with `bilinear.resize`. Halving with
# `align_corners=False` is exactly 2x2 average pooling: output pixel `d` reads the input at
# `(d + 0.5) * 2 - 0.5 = 2d + 0.5`, halfway between pixels `2d` and `2d + 1` (the bilinear
# page, eq. 8). Resizing by 16 in one step would instead read 4 of every 16 x 16 pixels and
# alias the thin stripes.

# %%
rng = np.random.default_rng(0)
HEIGHT, WIDTH, CHANNELS = 128, 160, 32
row, col = np.mgrid[0:HEIGHT, 0:WIDTH] / np.array([HEIGHT, WIDTH])[:, None, None]

image = np.empty((1, 3, HEIGHT, WIDTH))  # (N, 3, H, W), colours in [0, 1]
image[0] = np.stack([0.3 + 0.3 * row, 0.5 + 0.2 * row, 0.9 - 0.6 * row])  # sky to ground
sun = (row - 0.2) ** 2 + ((col - 0.8) * WIDTH / HEIGHT) ** 2 < 0.1**2
image[0, :, sun] = [1.0, 0.85, 0.2]
house = (row > 0.35) & (row < 0.75) & (col > 0.15) & (col < 0.45)
image[0, :, house] = [0.7, 0.2, 0.15]
field = (row > 0.75) & (np.sin(col * 60) > 0)
image[0, :, field] = [0.2, 0.6, 0.2]

STRIDES = (4, 8, 16)
levels_rgb, shrunk = [], image
for stride in (2, 4, 8, 16):
    shrunk = bilinear.resize(shrunk, (HEIGHT // stride, WIDTH // stride))  # 2x2 averages
    if stride in STRIDES:
        levels_rgb.append(shrunk)
projection = rng.standard_normal((CHANNELS, 3))  # colour -> feature, the same on every level
# (C, 3) x (N, 3, H, W) -> (N, C, H, W)
features = [np.einsum("oc,nchw->nohw", projection, level) for level in levels_rgb]

fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
for axis, level, stride in zip(axes, levels_rgb, STRIDES):
    axis.imshow(np.clip(level[0].transpose(1, 2, 0), 0, 1))  # (3, H, W) -> (H, W, 3)
    axis.set_title(f"stride {stride}: {level.shape[2]} x {level.shape[3]}")
show(fig, "pyramid")

# %% [markdown]
# The operator does not take a list of maps. It takes all levels **flattened and
# concatenated** into one array of `S = sum_l H_l W_l` positions, plus two small integer
# arrays that say where each level is: `spatial_shapes` (L, 2) holds `(H_l, W_l)` and
# `level_start_index` (L,) the first position of each level. Pixel `(r, c)` of level `l` is
# position `level_start_index[l] + r * W_l + c` ([conventions and layout](../docs/derivations/ms_deform_attn.md#conventions-and-layout)).

# %%
# per level (N, C, H, W) -> (N, C, H*W) -> (N, H*W, C); concatenated: (N, S, C)
flat = np.concatenate([f.reshape(1, CHANNELS, -1).transpose(0, 2, 1) for f in features],
                      axis=1)
spatial_shapes = np.array([f.shape[2:] for f in features])  # (L, 2) = (H_l, W_l)
level_start_index = ms_deform_attn.level_start_index_of(spatial_shapes)  # (L,)
print("spatial_shapes", spatial_shapes.tolist())
print("level_start_index", level_start_index.tolist(), " S =", flat.shape[1])

# %% [markdown]
# ## 2. Reference points, the layer, and the operator inside it
#
# In Deformable DETR's encoder every pixel of every level is a query, and its reference point
# is the centre of its own pixel, **normalised** to the map: `(u, v) = ((c + 0.5) / W_l,
# (r + 0.5) / H_l)`, where `(0, 0)` is the top-left corner and `(1, 1)` the bottom-right corner
# of the image. The same normalised point is used on every level (the paper's `phi_l`), since
# every level covers the same image. We pick three queries on the finest level: on the house,
# on the sun and on the striped field. Their content `z_q` is their own feature vector. (How
# reference points and offsets make the locations, and their gradients:
# [from reference points and offsets to locations](../docs/derivations/ms_deform_attn.md#from-reference-points-and-offsets-to-locations);
# where reference points come from in a whole model:
# [module-level gradients](../docs/derivations/module_gradients.md#msdeformattn-the-gradients-of-the-reference-points).)

# %%
query_pixels = [(14, 12), (6, 31), (29, 16)]  # (row, col) on level 0, 32 x 40
height0, width0 = spatial_shapes[0]
rows = np.array([r for r, _ in query_pixels])
cols = np.array([c for _, c in query_pixels])
query = flat[:, rows * width0 + cols]  # (N, Lq, C): level 0 starts at position 0
centres = np.stack([(cols + 0.5) / width0, (rows + 0.5) / height0], axis=-1)  # (Lq, 2) (u, v)
n_levels = len(spatial_shapes)
reference_points = np.repeat(centres[None, :, None, :], n_levels, axis=2)  # (N, Lq, L, 2)

layer = MSDeformAttn(d_model=CHANNELS, n_levels=n_levels, n_heads=8, n_points=4, rng=0)
print(layer)
out = layer(query, reference_points, flat, spatial_shapes, level_start_index)
print("output", out.shape)

# %% [markdown]
# The layer is four linear maps around one operator. `value_proj` computes `W'_m x^l` for all
# heads at once; `sampling_offsets` and `attention_weights` predict `dp` and the logits of `A`
# from the query; `ms_deform_attn.forward` is the bracket, the sampling and the weighted sum;
# `output_proj` applies the `W_m`. We redo the layer's forward by hand to see every shape, and
# check that it gives the same output. The softmax over each head's points and its backward:
# [the attention weights](../docs/derivations/ms_deform_attn.md#the-attention-weights-one-softmax-per-head),
# [softmax](../docs/derivations/module_gradients.md#softmax).

# %%
n_batch, n_queries = query.shape[:2]
heads, points = layer.n_heads, layer.n_points
# W'_m x^l: (N, S, C) -> (N, S, M, D), D = C / M channels per head
value = layer.value_proj(flat).reshape(n_batch, -1, heads, layer.head_dim)
# dp_mlqk, in pixels of level l: (N, Lq, M*L*P*2) -> (N, Lq, M, L, P, 2)
offsets = layer.sampling_offsets(query).reshape(n_batch, n_queries, heads, n_levels, points, 2)
# A_mlqk: (N, Lq, M*L*P) -> (N, Lq, M, L*P), softmax over a head's points -> (N, Lq, M, L, P)
logits = layer.attention_weights(query).reshape(n_batch, n_queries, heads, n_levels * points)
attention = softmax(logits, axis=-1).reshape(n_batch, n_queries, heads, n_levels, points)
# phi_l(p_q) + dp_mlqk: the offsets in normalised units, dp / (W_l, H_l)
level_wh = spatial_shapes[:, ::-1][None, None, None, :, None, :]  # (L, 2) -> (1, 1, 1, L, 1, 2)
# (N, Lq, L, 2) -> (N, Lq, 1, L, 1, 2), the same for every head and point
locations = reference_points[:, :, None, :, None, :] + offsets / level_wh
bracket = ms_deform_attn.forward(value, spatial_shapes, level_start_index, locations,
                                 attention)  # (N, Lq, M*D)
by_hand = layer.output_proj(bracket)  # (N, Lq, C)
print("locations", locations.shape, " attention", attention.shape, " bracket", bracket.shape)
print("max |by hand - layer| =", np.max(np.abs(by_hand - out)))
assert np.allclose(by_hand, out, rtol=1e-12, atol=1e-12)

# %% [markdown]
# The layer gives the same locations and weights without the bookkeeping:
# `layer.sampling_locations_and_weights(query, reference_points, spatial_shapes)`. We use it
# for the plots.

# %%
plan = layer.sampling_locations_and_weights(query, reference_points, spatial_shapes)
assert np.allclose(plan[0], locations) and np.allclose(plan[1], attention)

# %% [markdown]
# ## 3. Where the queries look
#
# A normalised location `(u, v)` is pixel `(x, y) = (u W_l - 0.5, v H_l - 0.5)` of level `l`
# (eq. 2, [from normalised to pixel coordinates](../docs/derivations/ms_deform_attn.md#from-normalised-to-pixel-coordinates)):
# integer `(x, y)` is the centre of pixel `[y, x]`, which is also where `imshow`
# draws that pixel, so we can scatter the points straight onto each level's map.
#
# A freshly built layer has zero `sampling_offsets.weight` and a bias that the paper
# initialises as a grid: head `m` looks in direction `2 pi m / M` and its points `k = 1..4`
# sit `k` steps along it, in pixels of each level. Its `attention_weights` are zero, so every
# point gets the same weight `1 / (L P) = 1/12`. After training, offsets and weights depend on
# the query's content. We imitate that with random weights for the two linear maps (row 2
# below); each point's size is its attention weight.

# %%
trained_like = MSDeformAttn(d_model=CHANNELS, n_levels=n_levels, n_heads=8, n_points=4, rng=0)
trained_like.sampling_offsets.weight.data[...] = rng.normal(0, 0.15, (8 * 3 * 4 * 2, CHANNELS))
trained_like.attention_weights.weight.data[...] = rng.normal(0, 0.3, (8 * 3 * 4, CHANNELS))
COLOURS = ["cyan", "yellow", "magenta"]


def draw_sampling(axes_row, locations, attention, title):
    """Scatter every query's points (all heads) on every level, sized by attention weight."""
    for level, axis in enumerate(axes_row):
        h, w = spatial_shapes[level]
        axis.imshow(np.clip(levels_rgb[level][0].transpose(1, 2, 0), 0, 1))
        for q, colour in enumerate(COLOURS):
            u, v = locations[0, q, :, level, :, 0], locations[0, q, :, level, :, 1]  # (M, P)
            x, y = u * w - 0.5, v * h - 0.5  # eq. (2)
            axis.scatter(x.ravel(), y.ravel(), s=600 * attention[0, q, :, level].ravel(),
                         color=colour, edgecolors="black", linewidths=0.5)
            ref_x, ref_y = centres[q, 0] * w - 0.5, centres[q, 1] * h - 0.5
            axis.scatter([ref_x], [ref_y], marker="*", s=150, color=colour, edgecolors="black")
        axis.set_xlim(-0.5, w - 0.5)
        axis.set_ylim(h - 0.5, -0.5)
        axis.set_title(f"{title}, level {level} ({h} x {w})", fontsize=9)


fig, axes = plt.subplots(2, 3, figsize=(13, 7))
draw_sampling(axes[0], *plan, "at initialisation")
trained_plan = trained_like.sampling_locations_and_weights(query, reference_points,
                                                           spatial_shapes)
draw_sampling(axes[1], *trained_plan, "content-dependent")
fig.suptitle("sampling points of 3 queries (stars: reference points), size ~ attention weight")
show(fig, "sampling_points")

# (Lq, M, L, P) -> (Lq, L): the attention weight each query puts on each level, all heads
weights_per_level = trained_plan[1][0].sum(axis=(1, 3))
print("attention mass per level (rows: queries; each row sums to M = 8):")
print(weights_per_level.round(2))

# %% [markdown]
# Each query reads `M L P = 96` points in all, however large the maps. At initialisation the
# eight rays of four points are the same number of *pixels* long on every level, so on the
# coarse levels they reach further across the image: one layer sees both the neighbourhood
# and the context. The points are bilinear samples, so they can sit anywhere, between pixels
# or (partly) outside the map, where they read zeros; learning moves them with the gradient
# of eqs. (6)-(7) of the derivation.

# %% [markdown]
# ## 4. Dense against deformable attention as the map grows
#
# Now a single level of `side x side` pixels, and **every pixel is a query** (self-attention,
# as in an encoder): `S = side**2` queries and keys. Dense attention (`MultiheadAttention`)
# forms an `S x S` matrix of attention weights per head; deformable attention (`MSDeformAttn`
# with one level) reads `M P` points per query. Both layers get the same width (`C = 32`,
# 2 heads), float32, one forward pass each. We measure
#
# * time: `time.perf_counter`, the median of 3 runs (for deformable attention after one
#   warm-up run, which compiles the numba kernels or loads them from the disk cache);
# * peak memory: `tracemalloc`, which sees NumPy's array allocations, during one forward pass.
#
# Each run gets a fresh layer, so that nothing the previous run kept for its backward pass
# (dense attention keeps its attention matrix) is still alive. Expect the 100 x 100 case of
# dense attention to take a second or two and about 3 GB of memory.

# %%
SIDES = (25, 50, 75, 100)
WIDTH_C, HEADS, POINTS = 32, 2, 4
bench_rng = np.random.default_rng(1)


def median_seconds(run, repeats=3, warm_up=True):
    """Median wall time of ``run()`` over ``repeats`` calls, after one warm-up call."""
    if warm_up:
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def peak_bytes(run):
    """The most memory NumPy (and Python) held at once during ``run()``, above the start."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    run()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak - before


def dense_run(x):
    def run():
        mha = MultiheadAttention(WIDTH_C, HEADS, rng=0, dtype=np.float32)
        mha(x, x, x)  # (N, S, C) -> (N, S, C), self-attention
    return run


def deformable_run(x, side):
    shapes = np.array([[side, side]])
    starts = ms_deform_attn.level_start_index_of(shapes)
    centre = (np.arange(side) + 0.5) / side
    # every pixel centre (u, v), row-major like the flattened map: (side, side, 2) -> (N, S, 1, 2)
    ref = np.stack(np.meshgrid(centre, centre), axis=-1).reshape(1, side * side, 1, 2)
    ref = ref.astype(np.float32)

    def run():
        layer = MSDeformAttn(WIDTH_C, n_levels=1, n_heads=HEADS, n_points=POINTS, rng=0,
                             dtype=np.float32)
        layer(x, ref, x, shapes, starts)
    return run


maps = {side: bench_rng.standard_normal((1, side * side, WIDTH_C)).astype(np.float32)
        for side in SIDES}
results = {"dense": {}, "deformable": {}}
# All dense runs first, then all deformable ones: the two use different thread pools (BLAS
# and numba's), whose idle threads keep spinning for a while after their work, so running
# them alternately can slow both down.
# Dense attention has nothing to compile, and each of its large runs costs a second or more,
# so it skips the warm-up run.
for side in SIDES:
    run = dense_run(maps[side])
    results["dense"][side] = (median_seconds(run, warm_up=False), peak_bytes(run))
for side in SIDES:
    run = deformable_run(maps[side], side)
    results["deformable"][side] = (median_seconds(run), peak_bytes(run))

print(f"{'side':>5} {'S':>6} | {'dense ms':>9} {'dense MB':>9} | {'deform ms':>9} "
      f"{'deform MB':>9}")
for side in SIDES:
    (t_dense, m_dense), (t_def, m_def) = results["dense"][side], results["deformable"][side]
    print(f"{side:>5} {side * side:>6} | {1e3 * t_dense:9.1f} {m_dense / 1e6:9.1f} | "
          f"{1e3 * t_def:9.1f} {m_def / 1e6:9.2f}")

# %%
s_values = np.array([side * side for side in SIDES])
fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4))
for name, marker in (("dense", "o"), ("deformable", "s")):
    seconds = np.array([results[name][side][0] for side in SIDES])
    megabytes = np.array([results[name][side][1] for side in SIDES]) / 1e6
    ax_time.loglog(s_values, 1e3 * seconds, marker=marker, label=name)
    ax_mem.loglog(s_values, megabytes, marker=marker, label=name)
# the attention matrices alone: HEADS * S^2 float32 numbers
ax_mem.loglog(s_values, HEADS * s_values**2 * 4 / 1e6, "k--", label="HEADS x S x S x 4 bytes")
ax_time.set_title("forward time (median of 3)")
ax_time.set_ylabel("ms")
ax_mem.set_title("peak memory during the forward pass (tracemalloc)")
ax_mem.set_ylabel("MB")
for axis in (ax_time, ax_mem):
    axis.set_xlabel("S = side x side positions (= queries)")
    axis.set_xticks(s_values, [f"{s}\n({side}x{side})" for s, side in zip(s_values, SIDES)])
    axis.legend()
show(fig, "dense_vs_deformable")

t_dense, m_dense = results["dense"][100]
t_def, m_def = results["deformable"][100]
attention_matrix = HEADS * 10_000**2 * 4
print(f"100 x 100: dense {1e3 * t_dense:.0f} ms and {m_dense / 1e9:.2f} GB peak "
      f"(its attention matrix alone: {attention_matrix / 1e9:.2f} GB); "
      f"deformable {1e3 * t_def:.0f} ms and {m_def / 1e6:.1f} MB peak: "
      f"{t_dense / t_def:.0f} times faster, {m_dense / m_def:.0f} times less memory")

# %% [markdown]
# On the machine this tutorial was written on (2 cores, quiet) the 100 x 100 case printed
# above came out at **about 0.7 s and 3.2 GB for dense attention, against about 10 ms and
# 7 MB for deformable attention**: some 70 times faster and 470 times less memory. Your times will differ; the memory will not, because it is counting, not
# timing:
#
# * Dense attention builds the score matrix `q k^T`, `HEADS x S x S = 2 x 10^8` numbers, 0.8 GB
#   in float32, and the softmax makes temporaries of the same size (the scores minus their
#   maximum, their exponentials, the normalised weights): four such matrices, 3.2 GB, at the
#   peak. Its cost is `O(S^2)` in time and memory: each doubling of the side multiplies both
#   by 16, the slope 2 of the dashed line in the plot.
# * Deformable attention samples `M L P = 8` points per query (2 heads, 1 level, 4 points):
#   `O(S M L P)` work and memory, linear in `S`, the slope 1. At these sizes its time is mostly
#   fixed overhead that does not grow with `S` (checking the arguments, four small matrix
#   products, starting the threads), so the curve is flatter still.
#
# At the full scale of the Deformable-DETR encoder (four levels, `S = 22 323`, 8 heads) the
# dense attention matrix would be 16 GB per image and layer (the derivation page has the
# numbers: [what it costs against dense attention](../docs/derivations/ms_deform_attn.md#what-it-costs-against-dense-attention)):
# that is why the paper's multi-scale encoder needs deformable attention.

# %% [markdown]
# ## 5. Your own deformable attention, checked with `gradcheck`
#
# The operator's backward pass returns three gradients (value, sampling locations, attention
# weights). `scratchvision.gradcheck(forward, backward, inputs)` compares a backward pass
# with central differences of the forward; first on the library's own pair, in float64. The
# operator is piecewise linear in the locations, with kinks where a pixel coordinate
# `u W - 0.5` is an integer (a pixel centre), so we build the locations in pixel space with
# fractional parts in [0.1, 0.9] and map them back with `u = (x + 0.5) / W` (eq. 2): a
# central difference across a kink would measure the average of two slopes.

# %%
check_rng = np.random.default_rng(2)
check_shapes = np.array([[4, 5], [2, 3]])  # two levels, (H_l, W_l)
check_starts = ms_deform_attn.level_start_index_of(check_shapes)
n, lq, m, d, p = 1, 3, 2, 3, 2
n_positions = int((check_shapes[:, 0] * check_shapes[:, 1]).sum())


def off_kink_locations(rng, leading, sizes_hw, n_points):
    """Normalised (u, v), shape ``leading + (L, P, 2)``, whose pixel coordinates (eq. 2) have
    fractional parts in [0.1, 0.9]; the cells go from -1 to W - 1, so some points sit partly
    outside their level."""
    per_level = []
    for h, w in sizes_hw:
        cell = rng.integers(-1, [w, h], size=leading + (n_points, 2))  # (x0, y0) of each point
        pixel = cell + rng.uniform(0.1, 0.9, size=cell.shape)  # (x, y), off the kinks
        per_level.append((pixel + 0.5) / [w, h])  # eq. (2) solved for (u, v)
    return np.stack(per_level, axis=-3)  # L x (*leading, P, 2) -> (*leading, L, P, 2)


check_inputs = {
    "value": check_rng.standard_normal((n, n_positions, m, d)),
    "sampling_locations": off_kink_locations(check_rng, (n, lq, m), check_shapes, p),
    "attention_weights": check_rng.uniform(0, 1, (n, lq, m, len(check_shapes), p)),
}
report = gradcheck(
    lambda *arrays: ms_deform_attn.forward(arrays[0], check_shapes, check_starts, *arrays[1:]),
    lambda gy, *arrays: ms_deform_attn.backward(gy, arrays[0], check_shapes, check_starts,
                                                *arrays[1:]),
    check_inputs)
print(report)
report.raise_if_failed()

# %% [markdown]
# ### Your turn: a single-level deformable attention from `bilinear.sample`
#
# With one level, deformable attention is bilinear sampling plus a weighted sum, and you can
# write it with what tutorial 1 gave you. Head `m` of batch element `n` is an image of `D`
# channels; its queries' points are points on that image, at the pixel coordinates of eq. (2).
# The backward pass runs the same steps in reverse:
#
# * the attention weights' gradient is the dot product of `gy` with the samples (eq. 4);
# * the samples' gradient is `gy * attention`, and `bilinear.sample_backward` turns it into the
#   value gradient (eq. 5, the scatter) and the gradient of the pixel coordinates (eq. 6);
# * the **chain rule through eq. (2)**: `x = u W - 0.5`, so `dL/du = W dL/dx` and
#   `dL/dv = H dL/dy` (eq. 7).
#
# The first version below forgets the last step, an easy slip: the sampler works in pixels,
# the caller in normalised units. `gradcheck` catches it, and names the input.

# %%
def my_attention(value, locations, weights, height, width):
    """value (N, H*W, M, D), locations (N, Lq, M, P, 2) normalised (u, v), weights
    (N, Lq, M, P) -> (N, Lq, M*D): ms_deform_attn with a single level."""
    return _my_attention_parts(value, locations, weights, height, width)[0]


def _my_attention_parts(value, locations, weights, height, width):
    """The output and what the backward pass needs: the images, the points, the samples."""
    n, lq, m, p, _ = locations.shape
    d = value.shape[-1]
    # (N, H*W, M, D) -> (N, H, W, M, D) -> (N, M, D, H, W) -> (N*M, D, H, W)
    images = value.reshape(n, height, width, m, d).transpose(0, 3, 4, 1, 2).reshape(
        n * m, d, height, width)
    pixels = locations * [width, height] - 0.5  # eq. (2)
    # (N, Lq, M, P, 2) -> (N, M, Lq, P, 2) -> (N*M, Lq*P, 2)
    points = pixels.transpose(0, 2, 1, 3, 4).reshape(n * m, lq * p, 2)
    samples = bilinear.sample(images, points).reshape(n, m, d, lq, p)  # (N*M, D, Lq*P) ->
    out = np.einsum("nmdqp,nqmp->nqmd", samples, weights)  # eq. (3), one level
    return out.reshape(n, lq, m * d), images, points, samples  # (N, Lq, M, D) -> (N, Lq, M*D)


def my_attention_backward(gy, value, locations, weights, height, width, chain_rule=True):
    """gy (N, Lq, M*D) -> (grad_value, grad_locations, grad_weights), the inputs' shapes."""
    n, lq, m, p, _ = locations.shape
    d = value.shape[-1]
    _, images, points, samples = _my_attention_parts(value, locations, weights, height, width)
    g = gy.reshape(n, lq, m, d)  # (N, Lq, M*D) -> (N, Lq, M, D)
    grad_weights = np.einsum("nmdqp,nqmd->nqmp", samples, g)  # eq. (4)
    # the samples' gradient: (N, Lq, M, D) x (N, Lq, M, P) -> (N, M, D, Lq, P) -> (N*M, D, Lq*P)
    g_samples = np.einsum("nqmd,nqmp->nmdqp", g, weights).reshape(n * m, d, lq * p)
    grad_images, grad_points = bilinear.sample_backward(g_samples, images, points)  # (5), (6)
    # (N*M, D, H, W) -> (N, M, D, H, W) -> (N, H, W, M, D) -> (N, H*W, M, D)
    grad_value = grad_images.reshape(n, m, d, height, width).transpose(0, 3, 4, 1, 2).reshape(
        value.shape)
    # (N*M, Lq*P, 2) -> (N, M, Lq, P, 2) -> (N, Lq, M, P, 2)
    grad_pixels = grad_points.reshape(n, m, lq, p, 2).transpose(0, 2, 1, 3, 4)
    grad_locations = grad_pixels * [width, height] if chain_rule else grad_pixels  # eq. (7)
    return grad_value, grad_locations, grad_weights


my_h, my_w = 4, 5
my_inputs = {
    "value": check_rng.standard_normal((n, my_h * my_w, m, d)),
    "locations": off_kink_locations(check_rng, (n, lq, m), np.array([[my_h, my_w]]), p)[
        :, :, :, 0],  # (N, Lq, M, L=1, P, 2) -> (N, Lq, M, P, 2)
    "weights": check_rng.uniform(0, 1, (n, lq, m, p)),
}


def my_forward(value, locations, weights):
    return my_attention(value, locations, weights, my_h, my_w)


# the operator with one level computes the same function
one_level = np.array([[my_h, my_w]])
library = ms_deform_attn.forward(my_inputs["value"], one_level,
                                 ms_deform_attn.level_start_index_of(one_level),
                                 my_inputs["locations"][:, :, :, None],
                                 my_inputs["weights"][:, :, :, None])
assert np.allclose(my_forward(*my_inputs.values()), library, rtol=1e-12, atol=1e-12)

buggy = gradcheck(my_forward,
                  lambda gy, *arrays: my_attention_backward(gy, *arrays, my_h, my_w,
                                                            chain_rule=False),
                  my_inputs)
print("without the chain rule through eq. (2):")
print(buggy)
assert not buggy.results["locations"].ok
assert buggy.results["value"].ok and buggy.results["weights"].ok

fixed = gradcheck(my_forward,
                  lambda gy, *arrays: my_attention_backward(gy, *arrays, my_h, my_w),
                  my_inputs)
print("\nwith it:")
print(fixed)
fixed.raise_if_failed()

# %% [markdown]
# Only `locations` fails, and by a factor of about `W` or `H` per coordinate: the value and
# weight gradients never pass through eq. (2). Use the same three lines on any forward and
# backward pair you write:
#
# ```python
# report = gradcheck(my_forward, my_backward, {"name": float64_array, ...})
# print(report)
# report.raise_if_failed()
# ```
#
# Next: the [multi-scale deformable attention page](../docs/derivations/ms_deform_attn.md) derives every gradient of the
# operator and compares its cost with dense attention at the full scale of Deformable DETR,
# and `scratchvision/ops/ms_deform_attn/loop.py` implements the equations line by line. Then
# write them yourself: the exercise `ms_deform_attn_backward`
# ([the exercises](exercises/README.md)). The [next tutorial](04_multiscale.py) puts one image
# through four ways of handling scale.
