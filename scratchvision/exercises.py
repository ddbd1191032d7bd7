"""Exercises that check themselves: the engine of ``scratchvision exercise``.

Each exercise is a file in the repository's ``tutorials/exercises/`` folder (not in the
installed package): a loop-tier backward pass with the gradient lines left out, each hole a
``raise NotImplementedError("eq. (k): ...")`` under a comment giving the equation to implement
and the page that derives it. ``tutorials/exercises/solutions/`` holds the same files
completed. ``scratchvision exercise check NAME [--file PATH]`` runs the learner's function
against the library:

1. **agreement**: on ``N_CASES`` random inputs (kept off the kinks of the bilinear
   interpolant, with the helpers of :mod:`scratchvision.verify`) and a random upstream
   gradient, every gradient the learner returns is compared with the library's; the table
   gives the largest error, where it is (the worst index) and both values there;
2. **gradcheck**: :func:`scratchvision.gradcheck` of the learner's backward against central
   differences of the library's forward, on the first case: a proof that does not trust the
   library's backward either.

For every wrong gradient it prints the worst index and a hint naming the equation (and the
page's section) to re-read, plus a diagnosis when the error has a recognisable shape (the
sign flipped everywhere, x and y swapped, a constant factor, zeros where a contribution is
missing). A hole the learner has not filled yet is reported as ``not written yet: <the hole's
message>``, with the list of holes left in the file, and an exception in the learner's code as
one line naming the line of the file that raised, never as a traceback.

Exit status: 0 when every gradient passes both checks, 1 when any does not (a hole, an
exception, a wrong gradient), 2 when the check cannot start (no such file).

Where the file is: ``--file PATH`` if given, else ``tutorials/exercises/NAME.py`` under the
current directory, i.e. run the command from the root of a scratchvision checkout. A ``pip
install``-ed scratchvision has no exercises: they are part of the repository, like the
tutorials.

Adding an exercise: the file and its solution (the same lines but for the holes, which the
test suite checks), and an :class:`Exercise` in ``EXERCISES``: the function's name, the page,
``make_case`` (the library's forward and backward on random inputs, and the call with the
exercise's signature) and ``hint``. The tests then run the checker on both files.
"""

from __future__ import annotations

import ast
import sys
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .gradcheck import gradcheck

__all__ = ["EXERCISES", "Exercise", "Case", "ExerciseError", "CheckResult", "check",
           "exercise_file", "holes", "list_text", "main"]

#: where the exercises live, relative to the root of a checkout
EXERCISE_FOLDER = Path("tutorials") / "exercises"
#: random cases compared with the library; gradcheck runs on the first
N_CASES = 3
#: a gradient agrees with the library's where
#: |yours - library| <= AGREE_ATOL * (1 + max |library|) + AGREE_RTOL * |library|
#: (both are float64 sums of the same terms, in another order: they agree to rounding)
AGREE_RTOL = 1e-7
AGREE_ATOL = 1e-9


class ExerciseError(Exception):
    """The check cannot start: an unknown exercise, or no file to check (exit status 2)."""


@dataclass
class Case:
    """One random instance of an exercise.

    ``inputs`` are the differentiable inputs (float64, named so that ``"grad_" + name`` is the
    gradient's name), in the order of the gradients the learner's function returns.
    ``forward(*inputs)`` and ``reference(gy, *inputs)`` are the library's (``reference``
    returns one gradient per input); ``learner(function, gy, *inputs)`` calls the learner's
    function with the exercise's signature and returns what it returns. ``context`` holds
    what the hints need (sizes, hyper-parameters).
    """

    label: str
    inputs: dict[str, np.ndarray]
    forward: Callable
    reference: Callable
    learner: Callable
    context: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Exercise:
    """An exercise: the function the learner writes, the page that derives it, its random
    cases (``make_case(rng, index)``), and ``hint(case, gradient name, index, failed names,
    wrong)``, the equation to re-read for a wrong entry (``wrong``: where that gradient
    disagrees with the library in that case, None when only gradcheck saw it)."""

    name: str
    summary: str
    function: str
    page: str
    make_case: Callable[[np.random.Generator, int], Case]
    hint: Callable[..., str]
    diagnose: Callable | None = None  # (case, gradient name, yours, library) -> str | None


@dataclass
class CheckResult:
    """What ``check`` found: ``status`` is ``"passed"``, ``"failed"`` (a wrong gradient),
    ``"not written"`` (a hole) or ``"error"`` (the learner's code raised); ``failed`` names the
    wrong gradients; ``text`` is the report."""

    status: str
    failed: list[str]
    text: str

    @property
    def ok(self) -> bool:
        return self.status == "passed"


# ----------------------------------------------------------------------------- helpers

def _index_text(name: str, index: tuple) -> str:
    return f"{name}[{', '.join(str(int(i)) for i in index)}]"


def _on_border(row: int, col: int, height: int, width: int) -> bool:
    return row in (0, height - 1) or col in (0, width - 1)


def _border_points(rng: np.random.Generator, n_batch: int, height: int, width: int,
                   margin: float) -> np.ndarray:
    """Four points per batch element whose cells straddle the four borders, e.g.
    ``x`` in (W - 1, W): one tap in the last column, one outside. Fractional parts stay in
    [margin, 1 - margin], off the kinks."""
    def frac(size):
        return rng.uniform(margin, 1 - margin, size)

    def inside(size, extent):
        return rng.integers(0, max(extent - 1, 1), size) + frac(size)

    n = n_batch
    xs = np.stack([-1 + frac(n), width - 1 + frac(n), inside(n, width), inside(n, width)], 1)
    ys = np.stack([inside(n, height), inside(n, height), -1 + frac(n), height - 1 + frac(n)], 1)
    return np.stack([xs, ys], axis=-1)


def _split(flat: np.ndarray, shapes) -> list[np.ndarray]:
    """Cut a flat array into consecutive pieces of the given shapes."""
    pieces, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        pieces.append(flat[start:start + size].reshape(shape))
        start += size
    return pieces


def _conv_text(config: dict) -> str:
    return (f"stride {config['stride']}, padding {config['padding']}, "
            f"dilation {config['dilation']}")


# ----------------------------------------------------------------------------- bilinear

BILINEAR_PAGE = "docs/derivations/bilinear.md"


def _bilinear_case(rng: np.random.Generator, index: int) -> Case:
    from .ops import bilinear
    from .verify.bilinear import KINK_MARGIN, points_off_kinks

    n, c, h, w, p = [(1, 2, 4, 5, 6), (2, 2, 5, 4, 4), (1, 3, 3, 6, 5)][index % 3]
    image = rng.standard_normal((n, c, h, w))
    points = np.concatenate([points_off_kinks(rng, (n, p), h, w),
                             _border_points(rng, n, h, w, KINK_MARGIN)], axis=1)
    return Case(
        label=f"{n}x{c}x{h}x{w} image, {points.shape[1]} points",
        inputs={"image": image, "points": points},
        forward=lambda image, points: bilinear.sample(image, points, backend="numpy"),
        reference=lambda gy, image, points: tuple(
            bilinear.sample_backward(gy, image, points, backend="loop")),
        learner=lambda fn, gy, image, points: fn(gy, image, points),
        context={"height": h, "width": w})


def _bilinear_hint(case: Case, grad: str, index: tuple, failed: set, wrong=None) -> str:
    height, width = case.context["height"], case.context["width"]
    padding = (f"eq. (3) of {BILINEAR_PAGE}#per-tap-zero-padding keeps every tap inside "
               f"[0, H) x [0, W) = [0, {height}) x [0, {width}), the last row and column "
               f"included, and leaves out the others")
    if grad == "grad_image":
        _, _, row, col = index
        text = (f"check eq. (5) of {BILINEAR_PAGE}"
                f"#with-respect-to-the-image-a-scatter-of-the-weights: every in-bounds tap of "
                f"every point adds w * gy[n, c, p] into its pixel (+=: points share pixels)")
        rows, cols = np.nonzero(wrong.any(axis=(0, 1)))[-2:] if wrong is not None else (
            [row], [col])
        if all(_on_border(r, c, height, width) for r, c in zip(rows, cols)):
            text += (f"; pixel ({row}, {col}), like every wrong one, lies on the image's "
                     f"border: {padding}")
        return text
    n, p, axis = index
    x, y = case.inputs["points"][n, p]
    coordinate, equation = ("x", "(6)") if axis == 0 else ("y", "(7)")
    text = (f"check eq. {equation} of {BILINEAR_PAGE}"
            f"#with-respect-to-the-point-derivatives-of-the-weights: grad_points[..., {axis}] "
            f"is dL/d{coordinate} = sum_c sum_t gy * dw_d{coordinate} * pixel, d{coordinate} "
            f"uses the slopes dw_d{coordinate} of eq. (2) (#the-four-weights)")
    points = case.inputs["points"]
    wrong_points = points[wrong.any(axis=-1)] if wrong is not None else points[n, p][None]
    cells = np.floor(wrong_points)
    straddle = ~((cells[:, 0] >= 0) & (cells[:, 0] < width - 1) & (cells[:, 1] >= 0)
                 & (cells[:, 1] < height - 1))
    if straddle.all():
        text += (f"; point ({x:.3f}, {y:.3f}), like every wrong one, has taps on the image's "
                 f"last row or column or outside it: {padding}")
    return text


# ----------------------------------------------------------------------------- conv2d

CONV2D_PAGE = "docs/derivations/conv2d.md"
_CONV2D_CONFIGS = [
    dict(shape=(1, 2, 5, 5), out=2, kernel=(3, 3), stride=(1, 1), padding=(1, 1),
         dilation=(1, 1), groups=1),
    dict(shape=(1, 4, 6, 5), out=2, kernel=(3, 2), stride=(2, 1), padding=(1, 0),
         dilation=(1, 2), groups=2),
    dict(shape=(2, 2, 4, 4), out=4, kernel=(2, 2), stride=(1, 2), padding=(0, 1),
         dilation=(1, 1), groups=2),
]


def _conv2d_case(rng: np.random.Generator, index: int) -> Case:
    from .ops import conv2d
    from .ops.conv_geometry import conv_geometry

    config = _CONV2D_CONFIGS[index % len(_CONV2D_CONFIGS)]
    n, c, h, w = config["shape"]
    groups = config["groups"]
    weight_shape = (config["out"], c // groups) + config["kernel"]
    options = dict(stride=config["stride"], padding=config["padding"],
                   dilation=config["dilation"], groups=groups)
    geom = conv_geometry((h, w), config["kernel"], config["stride"], config["padding"],
                         config["dilation"])
    return Case(
        label=f"{n}x{c}x{h}x{w} -> {config['out']} ch, {config['kernel'][0]}x"
              f"{config['kernel'][1]}, groups {groups}",
        inputs={"input": rng.standard_normal((n, c, h, w)),
                "weight": rng.standard_normal(weight_shape),
                "bias": rng.standard_normal(config["out"])},
        forward=lambda x, weight, bias: conv2d.forward(x, weight, bias, backend="numpy",
                                                       **options),
        reference=lambda gy, x, weight, bias: tuple(
            conv2d.backward(gy, x, weight, bias, backend="loop", **options)),
        learner=lambda fn, gy, x, weight, bias: fn(gy, x, weight, True, geom, groups),
        context=config)


def _conv2d_hint(case: Case, grad: str, index: tuple, failed: set, wrong=None) -> str:
    config = case.context
    setting = f"(this case: {_conv_text(config)}, groups {config['groups']})"
    if grad == "grad_bias":
        return (f"check eq. (6) of {CONV2D_PAGE}#with-respect-to-the-bias: grad_bias[o] sums "
                f"gy[n, o, ho, wo] over n, ho and wo")
    if grad == "grad_weight":
        return (f"check eq. (7) of {CONV2D_PAGE}#the-backward-pass: grad_weight[o, cg, i, j] "
                f"sums gy[n, o, ho, wo] * x[n, c, r, q] over n, ho, wo, with (r, q) the tap's "
                f"position of eq. (2) and c = group(o) * C_in / groups + cg; taps in the "
                f"padding add nothing (eq. (3)) {setting}")
    return (f"check eq. (8) of {CONV2D_PAGE}"
            f"#with-respect-to-the-input-the-scatter-and-the-transposed-convolution: every "
            f"term weight[o, cg, i, j] * x[n, c, r, q] of the forward adds "
            f"gy[n, o, ho, wo] * weight[o, cg, i, j] into grad_input[n, c, r, q], the same "
            f"weight index the forward used (no flip in the scatter form) {setting}")


# ----------------------------------------------------------------------------- deform_conv2d

DEFORM_PAGE = "docs/derivations/deform_conv2d.md"
_DEFORM_CONFIGS = [
    dict(shape=(1, 2, 4, 4), out=2, kernel=(3, 3), stride=(1, 1), padding=(1, 1),
         dilation=(1, 1), offset_groups=1, weight_groups=1),
    dict(shape=(1, 4, 5, 4), out=2, kernel=(2, 2), stride=(2, 1), padding=(0, 1),
         dilation=(1, 1), offset_groups=2, weight_groups=2),
    dict(shape=(1, 2, 5, 5), out=2, kernel=(2, 3), stride=(1, 1), padding=(1, 0),
         dilation=(2, 1), offset_groups=2, weight_groups=1),
]


def _deform_case(rng: np.random.Generator, index: int) -> Case:
    from .ops import deform_conv2d
    from .ops.conv_geometry import conv_geometry
    from .verify.deform_conv2d import offsets_off_kinks

    config = _DEFORM_CONFIGS[index % len(_DEFORM_CONFIGS)]
    n, c, h, w = config["shape"]
    kh, kw = config["kernel"]
    groups, weight_groups = config["offset_groups"], config["weight_groups"]
    geom = conv_geometry((h, w), config["kernel"], config["stride"], config["padding"],
                         config["dilation"])
    out = geom.out
    options = dict(stride=config["stride"], padding=config["padding"],
                   dilation=config["dilation"])
    inputs = {
        "input": rng.standard_normal((n, c, h, w)),
        "offset": offsets_off_kinks(rng, (n, 2 * groups * kh * kw) + out),
        "weight": rng.standard_normal((config["out"], c // weight_groups, kh, kw)),
        "bias": rng.standard_normal(config["out"]),
        # DCNv2's mask is usually a sigmoid, but the op does not clamp it
        "mask": rng.uniform(-0.5, 1.5, (n, groups * kh * kw) + out),
    }

    def forward(x, offset, weight, bias, mask):
        return deform_conv2d.forward(x, offset, weight, bias, mask=mask, backend="numpy",
                                     **options)

    def reference(gy, x, offset, weight, bias, mask):
        return tuple(deform_conv2d.backward(gy, x, offset, weight, bias, mask=mask,
                                            backend="loop", **options))

    def learner(fn, gy, x, offset, weight, bias, mask):
        return fn(gy, x, offset, weight, True, mask, geom, groups, weight_groups)

    return Case(label=f"{n}x{c}x{h}x{w} -> {config['out']} ch, {kh}x{kw}, G={groups}, "
                      f"weight groups {weight_groups}",
                inputs=inputs, forward=forward, reference=reference, learner=learner,
                context=dict(config, taps=kh * kw))


def _deform_hint(case: Case, grad: str, index: tuple, failed: set, wrong=None) -> str:
    config = case.context
    n_taps = config["taps"]
    g_value = (f"g_value = gy * weight * mask, eq. (7) of {DEFORM_PAGE}"
               f"#the-gradient-of-a-sampled-value")
    if grad == "grad_offset":
        channel = index[1]
        group, within = divmod(channel, 2 * n_taps)
        tap, component = divmod(within, 2)
        name, slope = ("row offset dy", "dw_dy") if component == 0 else ("column offset dx",
                                                                          "dw_dx")
        return (f"check eq. (10) of {DEFORM_PAGE}#offset-the-slopes-of-the-interpolant: "
                f"channel {channel} is the {name} of tap k = {tap} in offset group {group} "
                f"(dy in channel g * 2K + 2k, dx in g * 2K + 2k + 1, K = {n_taps}); it sums "
                f"g_value * {slope} * pixel over the point's taps, the channels of its group "
                f"and the output channels, with {g_value}")
    if grad == "grad_mask":
        channel = index[1]
        group, tap = divmod(channel, n_taps)
        return (f"check eq. (8) of {DEFORM_PAGE}#mask: channel {channel} is the mask of tap "
                f"k = {tap} in offset group {group}; it sums gy * weight * X_c(p_k) -- the "
                f"sample, without the mask -- over the channels of the group and the output "
                f"channels")
    if grad == "grad_input":
        return (f"grad_input is given code (eq. (9), "
                f"{DEFORM_PAGE}#input-a-scatter-through-the-bilinear-taps) but it scatters "
                f"w * g_value: check {g_value}, the mask factor included")
    equation = "(6)" if grad == "grad_weight" else "(5)"
    return (f"{grad} is given code (eq. {equation} of {DEFORM_PAGE}#bias-and-weight): did an "
            f"edit change it? Compare with the solution's lines")


# ----------------------------------------------------------------------------- ms_deform_attn

MSDA_PAGE = "docs/derivations/ms_deform_attn.md"
_MSDA_CONFIGS = [
    dict(levels=[(3, 4), (2, 3), (1, 2)], batch=1, queries=2, heads=2, head_dim=2, points=2),
    dict(levels=[(4, 4), (2, 2)], batch=2, queries=1, heads=1, head_dim=3, points=3),
    dict(levels=[(2, 5)], batch=1, queries=3, heads=2, head_dim=1, points=2),
]


def _msda_case(rng: np.random.Generator, index: int) -> Case:
    from .ops import ms_deform_attn
    from .verify.ms_deform_attn import locations_off_kinks

    config = _MSDA_CONFIGS[index % len(_MSDA_CONFIGS)]
    shapes = np.array(config["levels"], dtype=np.int64)
    starts = ms_deform_attn.level_start_index_of(shapes)
    n, lq, m, d, p = (config[k] for k in ("batch", "queries", "heads", "head_dim", "points"))
    n_positions = int(shapes.prod(axis=1).sum())
    shape = (n, lq, m, len(shapes), p)
    inputs = {"value": rng.standard_normal((n, n_positions, m, d)),
              "sampling_locations": locations_off_kinks(rng, shape, shapes),
              "attention_weights": rng.standard_normal(shape)}
    levels = ", ".join(f"{h}x{w}" for h, w in config["levels"])
    return Case(
        label=f"levels {levels}, Lq={lq}, M={m}, D={d}, P={p}",
        inputs=inputs,
        forward=lambda value, loc, attn: ms_deform_attn.forward(value, shapes, starts, loc, attn,
                                                                backend="numpy"),
        reference=lambda gy, value, loc, attn: tuple(ms_deform_attn.backward(
            gy, value, shapes, starts, loc, attn, backend="loop")),
        learner=lambda fn, gy, value, loc, attn: fn(gy, value, shapes, starts, loc, attn),
        context={"shapes": shapes, "starts": starts})


def _on_level_border(row: int, shapes: np.ndarray, starts: np.ndarray) -> bool:
    """Whether row ``row`` of value is a pixel on the border of its level."""
    level = int(np.searchsorted(starts, row, side="right") - 1)
    height, width = (int(s) for s in shapes[level])
    r, c = divmod(row - int(starts[level]), width)
    return _on_border(r, c, height, width)


def _msda_hint(case: Case, grad: str, index: tuple, failed: set, wrong=None) -> str:
    shapes, starts = case.context["shapes"], case.context["starts"]
    if grad == "grad_attention_weights":
        return (f"check eq. (4) of {MSDA_PAGE}#attention-weights: dL/dA sums "
                f"gy[n, q, m*D + d] * w_t * value[n, s_t, m, d] over the point's in-bounds "
                f"taps t and the head's channels d")
    if grad == "grad_value":
        row = index[1]
        level = int(np.searchsorted(starts, row, side="right") - 1)
        height, width = (int(s) for s in shapes[level])
        r, c = divmod(row - int(starts[level]), width)
        text = (f"check eq. (5) of {MSDA_PAGE}#value-a-scatter: row {row} of value is pixel "
                f"({r}, {c}) of level {level} ({height}x{width}); it collects "
                f"gy * A * w_t from every sample with a tap there (+=)")
        rows = np.nonzero(wrong.any(axis=(0, 2, 3)))[0] if wrong is not None else [row]
        if all(_on_level_border(int(s), shapes, starts) for s in rows):
            text += (f"; that pixel, like every wrong one, is on its level's border: are the "
                     f"taps there kept (eq. (3) of {BILINEAR_PAGE}#per-tap-zero-padding)?")
        return text
    level, axis = index[3], index[5]
    height, width = (int(s) for s in shapes[level])
    normalised, pixel, size = ("u", "x", "W_l") if axis == 0 else ("v", "y", "H_l")
    return (f"check eqs. (6)-(7) of {MSDA_PAGE}#locations-the-slopes-of-the-interpolant: "
            f"component {axis} is {normalised}, on level {level} ({height}x{width}): "
            f"dL/d{normalised} = {size} * dL/d{pixel} (eq. (7), the chain rule through "
            f"eq. (2); here {size} = {width if axis == 0 else height}), with dL/d{pixel} = A * sum_d gy * sum_t dw_d{pixel} * value[s_t] "
            f"(eq. (6))")


def _msda_diagnose(case: Case, grad: str, yours: np.ndarray, library: np.ndarray):
    """Recognise a missing (or doubled) chain-rule factor W_l, H_l of eq. (7)."""
    if grad != "grad_sampling_locations":
        return None
    shapes = case.context["shapes"]
    atol = 1e-9 * (1 + float(np.abs(library).max(initial=0.0)))
    found = []
    for axis, (normalised, size) in enumerate((("u", "W_l"), ("v", "H_l"))):
        factor = shapes[:, 1 - axis].astype(np.float64)[None, None, None, :, None]
        mine, theirs = yours[..., axis], library[..., axis]
        if np.allclose(mine, theirs, rtol=1e-6, atol=atol):
            continue
        if np.allclose(mine * factor, theirs, rtol=1e-6, atol=atol):
            found.append(f"dL/d{normalised} is the library's divided by {size} on every "
                         f"level: the factor {size} is missing")
        elif np.allclose(mine, theirs * factor, rtol=1e-6, atol=atol):
            found.append(f"dL/d{normalised} is the library's times {size} on every level: "
                         f"the factor {size} is applied twice")
    if not found:
        return None
    return "; ".join(found) + " (eq. (7): dx/du = W_l, dy/dv = H_l)"


# ----------------------------------------------------------------------------- FPN

FPN_PAGE = "docs/strategies/fpn.md"
_FPN_CONFIGS = [
    dict(channels=(2, 3, 4), out=2, sizes=[(5, 6), (3, 3), (2, 2)], batch=1),
    dict(channels=(1, 2, 2), out=3, sizes=[(4, 4), (2, 2), (1, 1)], batch=2),
    dict(channels=(2, 2, 3), out=2, sizes=[(6, 5), (3, 3), (1, 2)], batch=1),
]


def _fpn_case(rng: np.random.Generator, index: int) -> Case:
    from .nn import FeaturePyramidNetwork

    config = _FPN_CONFIGS[index % len(_FPN_CONFIGS)]
    n, out = config["batch"], config["out"]
    fpn = FeaturePyramidNetwork(list(config["channels"]), out,
                                rng=int(rng.integers(2**31)), backend="numpy")
    lateral = [block[0].weight.data for block in fpn.inner_blocks]
    output = [block[0].weight.data for block in fpn.layer_blocks]
    out_shapes = [(n, out) + size for size in config["sizes"]]
    inputs = {f"features[{i}]": rng.standard_normal((n, c) + size)
              for i, (c, size) in enumerate(zip(config["channels"], config["sizes"]))}

    def forward(*maps):
        return np.concatenate([p.ravel() for p in fpn(list(maps))])

    def reference(gy, *maps):
        fpn(list(maps))  # the backward uses the most recent forward
        return tuple(fpn.backward(_split(gy, out_shapes)))

    def learner(fn, gy, *maps):
        return fn(_split(gy, out_shapes), list(maps), lateral, output)

    sizes = ", ".join(f"{h}x{w}" for h, w in config["sizes"])
    return Case(label=f"levels {sizes}, channels {config['channels']} -> {out}",
                inputs=inputs, forward=forward, reference=reference, learner=learner,
                context=config)


def _fpn_hint(case: Case, grad: str, index: tuple, failed: set, wrong=None) -> str:
    level = int(grad[len("grad_features["):-1])
    sizes = case.context["sizes"]
    top_down = (f"eq. (4) of {FPN_PAGE}#the-backward-of-the-top-down-path: g_t_i = "
                f"output_i^T(g_P_i) + up_(i-1)^T(g_t_(i-1)), then g_C_i = lateral_i^T(g_t_i) "
                f"(eq. (5))")
    if level == 0:
        return (f"level 0 is the finest: g_t_0 = output_0^T(g_P_0) alone, then "
                f"g_C_0 = lateral_0^T(g_t_0); check {top_down}")
    text = (f"check {top_down}: level {level} ({sizes[level][0]}x{sizes[level][1]}) also gets "
            f"what came back from level {level - 1} "
            f"({sizes[level - 1][0]}x{sizes[level - 1][1]}) through the transpose of the "
            f"nearest upsampling, eq. (7) of "
            f"{FPN_PAGE}#nearest-upsampling-the-backward-sums-over-the-copies (every pixel "
            f"collects the gradients of all its copies)")
    if "grad_features[0]" not in failed:
        text += ("; level 0 is right and a coarser one is not: look at what flows from a "
                 "finer level to the next coarser one")
    return text


# ----------------------------------------------------------------------------- focal loss

LOSSES_PAGE = "docs/derivations/losses.md"
_FOCAL_CONFIGS = [
    dict(shape=(3, 4), targets="soft", alpha=0.25, gamma=2.0, reduction="mean"),
    dict(shape=(2, 5), targets="hard", alpha=0.5, gamma=1.5, reduction="none"),
    dict(shape=(6,), targets="soft", alpha=-1.0, gamma=0.5, reduction="sum"),
]


def _focal_case(rng: np.random.Generator, index: int) -> Case:
    from . import losses

    config = _FOCAL_CONFIGS[index % len(_FOCAL_CONFIGS)]
    shape = config["shape"]
    options = dict(alpha=config["alpha"], gamma=config["gamma"],
                   reduction=config["reduction"])
    targets = (rng.uniform(0, 1, shape) if config["targets"] == "soft"
               else rng.integers(0, 2, shape).astype(np.float64))
    return Case(
        label=f"{shape} logits, {config['targets']} targets, alpha {config['alpha']}, "
              f"gamma {config['gamma']}, {config['reduction']}",
        inputs={"inputs": 2 * rng.standard_normal(shape), "targets": targets},
        forward=lambda x, t: losses.sigmoid_focal_loss(x, t, **options),
        reference=lambda gy, x, t: tuple(losses.sigmoid_focal_loss_backward(gy, x, t,
                                                                            **options)),
        learner=lambda fn, gy, x, t: fn(gy, x, t, **options),
        context=config)


def _focal_hint(case: Case, grad: str, index: tuple, failed: set, wrong=None) -> str:
    config = case.context
    x = case.inputs["inputs"][index]
    t = case.inputs["targets"][index]
    where = (f"(there x = {x:.4g}, t = {t:.4g}; this case: alpha {config['alpha']}, gamma "
             f"{config['gamma']}, reduction {config['reduction']!r})")
    if grad == "grad_inputs":
        return (f"check eq. (10) of {LOSSES_PAGE}#the-gradient: a_t * (dCE/dx * m^gamma + "
                f"k * dm/dx) * g, with eq. (8)'s dCE/dx = p (1 - t) - q t and "
                f"dm/dx = p q (1 - 2t), and eq. (9)'s k {where}")
    return (f"check eq. (11) of {LOSSES_PAGE}#the-gradient: a_t * (-x * m^gamma + "
            f"k * (q - p)) + (2 alpha - 1) * CE * m^gamma, times g, with "
            f"d a_t / dt = 0 when alpha = -1 (eq. (8)) {where}")


# ----------------------------------------------------------------------------- the registry

EXERCISES: dict[str, Exercise] = {exercise.name: exercise for exercise in [
    Exercise("bilinear_backward", "bilinear sampling: grad_image, grad_points (eqs. 2-7)",
             "sample_backward", BILINEAR_PAGE, _bilinear_case, _bilinear_hint),
    Exercise("conv2d_backward", "conv2d: grad_input, grad_weight, grad_bias (eqs. 6-8)",
             "backward", CONV2D_PAGE, _conv2d_case, _conv2d_hint),
    Exercise("deform_conv2d_offset_mask",
             "DCNv2: the sample's, mask and offset gradients (eqs. 7-10)",
             "backward", DEFORM_PAGE, _deform_case, _deform_hint),
    Exercise("ms_deform_attn_backward",
             "MS deformable attention: value, locations, weights (eqs. 4-7)",
             "backward", MSDA_PAGE, _msda_case, _msda_hint, _msda_diagnose),
    Exercise("fpn_top_down_backward",
             "FPN: the top-down path and the nearest upsampling (eqs. 4-7)",
             "top_down_backward", FPN_PAGE, _fpn_case, _fpn_hint),
    Exercise("focal_loss_backward",
             "focal loss: grad_inputs, grad_targets (eqs. 8-11)",
             "sigmoid_focal_loss_backward", LOSSES_PAGE, _focal_case, _focal_hint),
]}


# ----------------------------------------------------------------------------- files

def exercise_file(name: str, file=None) -> Path:
    """The file to check: ``file`` if given, else ``tutorials/exercises/NAME.py`` under the
    current directory. Raises :class:`ExerciseError` saying what to do when it is absent."""
    if name not in EXERCISES:
        raise ExerciseError(f"unknown exercise {name!r}; choose from {', '.join(EXERCISES)}")
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise ExerciseError(f"--file {file}: no such file")
        return path
    path = EXERCISE_FOLDER / f"{name}.py"
    if path.is_file():
        return path
    message = (f"no {path} in the current directory ({Path.cwd()}). The exercises live in "
               f"the tutorials/exercises/ folder of the scratchvision repository, not in the "
               f"installed package: run this command from the root of a checkout, or pass "
               f"--file PATH (your copy of {name}.py)")
    checkout = Path(__file__).resolve().parents[1] / path
    if checkout.is_file():
        message += f"; this scratchvision was imported from a checkout that has {checkout}"
    raise ExerciseError(message)


def holes(path) -> list[tuple[int, str]]:
    """``(line, message)`` of every ``raise NotImplementedError(...)`` left in the file."""
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except SyntaxError:
        return []
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Raise) or node.exc is None:
            continue
        exc = node.exc
        call = exc if isinstance(exc, ast.Call) else None
        target = call.func if call else exc
        if not (isinstance(target, ast.Name) and target.id == "NotImplementedError"):
            continue
        message = ""
        if call and call.args and isinstance(call.args[0], ast.Constant):
            message = str(call.args[0].value)
        found.append((node.lineno, message))
    return sorted(found)


def _shown(path: Path) -> str:
    """``path`` relative to the current directory when it is under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _load(exercise: Exercise, path: Path):
    """Import the learner's file and return its function; ``(None, report line)`` when the
    file does not import or lacks the function."""
    # compiled from the source every time, never from a bytecode cache: a quick edit that
    # keeps the file's size and modification second must still be seen
    module = types.ModuleType(f"_scratchvision_exercise_{exercise.name}")
    module.__file__ = str(path)
    sys.modules[module.__name__] = module  # dataclasses and the like look their module up
    try:
        code = compile(path.read_text(encoding="utf-8"), str(path), "exec")
        exec(code, module.__dict__)  # noqa: S102 -- running the learner's file is the point
    except SyntaxError as exc:
        return None, f"your file does not compile: line {exc.lineno}: {exc.msg}"
    except Exception as exc:  # noqa: BLE001 -- the learner's code: report, never crash
        return None, "importing your file raised " + _where(exc, path)
    function = getattr(module, exercise.function, None)
    if not callable(function):
        return None, f"{_shown(path)} defines no function {exercise.function}()"
    return function, None


def _where(exc: BaseException, path: Path) -> str:
    """``Type: message (line N of FILE: source)``, the deepest frame in the learner's file."""
    text = f"{type(exc).__name__}: {exc}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if Path(f.filename).resolve() == path.resolve()]
    if frames:
        frame = frames[-1]
        text += f" (line {frame.lineno} of {_shown(path)}"
        text += f": {frame.line.strip()})" if frame.line else ")"
    return text


# ----------------------------------------------------------------------------- the check

@dataclass
class _Comparison:
    """One gradient of one case against the library's."""

    case: int
    name: str
    ok: bool
    max_error: float = np.inf
    index: tuple = ()
    yours: np.ndarray | None = None
    library: np.ndarray | None = None
    problem: str = ""  # a wrong shape, a missing gradient
    wrong: np.ndarray | None = None  # where yours disagrees

    @property
    def worst_values(self) -> tuple[float, float]:
        if self.yours is None or not self.index and self.yours.ndim:
            return np.nan, np.nan
        return float(self.yours[self.index]), float(self.library[self.index])


def _diagnose(yours: np.ndarray, library: np.ndarray) -> str | None:
    """A recognisable shape of the error, if it has one."""
    scale = float(np.abs(library).max(initial=0.0))

    def close(a, b):
        return np.allclose(a, b, rtol=1e-6, atol=1e-9 * (1 + scale))

    if not np.all(np.isfinite(yours)):
        return "yours has nan or inf entries"
    if not np.any(yours) and np.any(library):
        return "yours is zero everywhere: is anything ever added to it?"
    if close(yours, -library):
        return "yours has the opposite sign of the library's everywhere: check the signs"
    if yours.ndim and yours.shape[-1] == 2 and close(yours[..., ::-1], library):
        return ("yours has its two last-axis components swapped: [..., 0] holds what "
                "belongs in [..., 1] and the other way round (x and y?)")
    large = np.abs(library) > 1e-6 * scale
    if np.any(large):
        ratio = yours[large] / library[large]
        if close(ratio, np.full_like(ratio, ratio[0])) and not close(ratio[0], 1.0):
            return f"yours is the library's times {ratio[0]:.6g} everywhere: a constant factor"
    wrong = ~np.isclose(yours, library, rtol=AGREE_RTOL, atol=AGREE_ATOL * (1 + scale))
    if np.any(wrong) and np.all(yours[wrong] == 0):
        return (f"yours is 0 at all {int(wrong.sum())} wrong entries: a contribution is "
                f"missing there (a tap, a term, a level?)")
    return None


def _compare(case_number: int, name: str, yours, library: np.ndarray) -> _Comparison:
    if yours is None:
        return _Comparison(case_number, name, False, problem="you returned None")
    yours = np.asarray(yours, dtype=np.float64)
    if yours.shape != library.shape:
        return _Comparison(case_number, name, False,
                           problem=f"shape {yours.shape}, expected {library.shape}")
    if yours.size == 0:
        return _Comparison(case_number, name, True, 0.0, (), yours, library)
    error = np.where(np.isfinite(yours), np.abs(yours - library), np.inf)
    scale = float(np.abs(library).max(initial=0.0))
    allowed = AGREE_ATOL * (1 + scale) + AGREE_RTOL * np.abs(library)
    wrong = error > allowed
    # the worst entry: the largest error among the wrong ones (or overall when none is)
    worst = np.unravel_index(int(np.argmax(np.where(wrong, error, -1.0) if wrong.any()
                                           else error)), error.shape)
    return _Comparison(case_number, name, not bool(wrong.any()), float(error[worst]),
                       tuple(int(i) for i in worst), yours, library, wrong=wrong)


def _as_gradients(result, names: list[str]):
    """The learner's return value as one entry per gradient name, or a problem."""
    if isinstance(result, np.ndarray):
        result = (result,)
    if not isinstance(result, (tuple, list)):
        return None, (f"your function returned a {type(result).__name__}; expected "
                      f"{len(names)} gradients ({', '.join(names)})")
    if len(result) != len(names):
        return None, (f"your function returned {len(result)} gradients; expected "
                      f"{len(names)} ({', '.join(names)}), in that order")
    return list(result), None


def _run_gradcheck(case: Case, function, names: list[str], path: Path, lines: list[str]):
    """gradcheck of the learner's backward against central differences of the library's
    forward on ``case``; appends its table to ``lines`` and returns the failing checks by
    gradient name."""
    def backward(gy, *arrays):
        # copies: the learner's code must not be able to change what gradcheck perturbs
        result = case.learner(function, gy.copy(), *[a.copy() for a in arrays])
        gradients, problem = _as_gradients(result, names)
        if gradients is None:
            raise ValueError(problem)
        return tuple(gradients)

    lines += ["", "2. gradcheck: your backward against central differences of the library's "
                  "forward (case 1)"]
    try:
        report = gradcheck(case.forward, backward, case.inputs, mode="jacobian")
    except Exception as exc:  # noqa: BLE001 -- the learner's code: report, never crash
        lines.append(f"  not run: {_where(exc, path)}")
        return {}
    lines.append(f"  {'gradient':<26} {'max abs err':>11} {'max rel err':>11} "
                 f"{'worst at':<20} {'yours':>12} {'central diff':>12}  status")
    failing = {}
    for input_name, result in report.results.items():
        name = f"grad_{input_name}"
        index = result.worst_index
        yours = float(result.analytic[index]) if result.analytic.size else 0.0
        numeric = float(result.numeric[index]) if result.numeric.size else 0.0
        lines.append(f"  {name:<26} {result.max_abs_error:>11.3e} {result.max_rel_error:>11.3e} "
                     f"{str(index):<20} {yours:>12.5g} {numeric:>12.5g}  "
                     f"{'ok' if result.ok else 'FAIL'}")
        if not result.ok:
            failing[name] = result
    return failing


def check(name: str, file=None, seed: int = 0) -> CheckResult:
    """Check the learner's file for exercise ``name``; see the module docstring.

    Raises :class:`ExerciseError` when the check cannot start (unknown exercise, no file).
    """
    path = exercise_file(name, file)
    exercise = EXERCISES[name]
    lines = [f"exercise {name}: {exercise.summary}",
             f"  your file: {_shown(path)} (function {exercise.function})",
             f"  the maths: {exercise.page}", ""]

    def finish(status, failed=()):
        return CheckResult(status, list(failed), "\n".join(lines))

    function, problem = _load(exercise, path)
    if function is None:
        lines.append(f"FAILED: {problem}")
        return finish("error")

    rng = np.random.default_rng(seed)
    cases = [exercise.make_case(rng, i) for i in range(N_CASES)]
    names = [f"grad_{k}" for k in cases[0].inputs]
    comparisons: list[_Comparison] = []
    for number, case in enumerate(cases, start=1):
        arrays = list(case.inputs.values())
        y = np.asarray(case.forward(*arrays), dtype=np.float64)
        gy = rng.standard_normal(y.shape)
        library = case.reference(gy, *arrays)
        try:
            result = case.learner(function, gy.copy(), *[a.copy() for a in arrays])
        except NotImplementedError as exc:
            left = holes(path)
            lines.append(f"not written yet: {exc}" + _line_of(exc, path))
            lines.append(f"  {len(left)} hole{'s' if len(left) != 1 else ''} left in "
                         f"{_shown(path)}:")
            lines += [f"    line {line}: {message}" for line, message in left]
            lines.append(f"  the equations are on {exercise.page}")
            return finish("not written")
        except Exception as exc:  # noqa: BLE001 -- the learner's code: report, never crash
            lines.append(f"FAILED: your code raised {_where(exc, path)}, in case {number} "
                         f"({case.label})")
            return finish("error")
        gradients, problem = _as_gradients(result, names)
        if gradients is None:
            lines.append(f"FAILED: {problem}")
            return finish("error")
        for grad_name, yours, reference in zip(names, gradients, library):
            comparisons.append(_compare(number, grad_name, yours,
                                        np.asarray(reference, dtype=np.float64)))

    lines.append(f"1. agreement with the library on {N_CASES} random cases (random upstream "
                 f"gradient)")
    for number, case in enumerate(cases, start=1):
        lines.append(f"  case {number}: {case.label}")
    lines.append(f"  {'case':<5} {'gradient':<26} {'max abs err':>11} {'worst at':<20} "
                 f"{'yours':>12} {'library':>12}  status")
    for c in comparisons:
        if c.problem:
            lines.append(f"  {c.case:<5} {c.name:<26} {'-':>11} {'-':<20} {'-':>12} "
                         f"{'-':>12}  FAIL: {c.problem}")
            continue
        yours, library = c.worst_values
        lines.append(f"  {c.case:<5} {c.name:<26} {c.max_error:>11.3e} {str(c.index):<20} "
                     f"{yours:>12.5g} {library:>12.5g}  {'ok' if c.ok else 'FAIL'}")

    gradcheck_failing = _run_gradcheck(cases[0], function, names, path, lines)
    failed = [n for n in names
              if n in gradcheck_failing or any(c.name == n and not c.ok for c in comparisons)]
    lines.append("")
    if not failed:
        lines.append("PASSED: every gradient agrees with the library and with central "
                     "differences of its forward")
        return finish("passed")
    lines.append(f"FAILED: {', '.join(failed)} {'is' if len(failed) == 1 else 'are'} wrong")
    for grad_name in failed:
        lines += _explain(exercise, cases, comparisons, gradcheck_failing, grad_name,
                          set(failed))
    return finish("failed", failed)


def _explain(exercise: Exercise, cases: list[Case], comparisons: list[_Comparison],
             gradcheck_failing: dict, grad_name: str, failed: set) -> list[str]:
    """What is wrong with one gradient: its worst entry, the hint and a diagnosis."""
    bad = [c for c in comparisons if c.name == grad_name and not c.ok]
    if not bad:  # only gradcheck saw it
        result = gradcheck_failing[grad_name]
        index = result.worst_index
        return [f"  {_index_text(grad_name, index)} is off by {result.max_abs_error:.3g} from "
                f"central differences (yours {result.analytic[index]:.6g}, central "
                f"differences {result.numeric[index]:.6g}) in case 1",
                f"    hint: {exercise.hint(cases[0], grad_name, index, failed, None)}"]
    c = max(bad, key=lambda c: (not c.problem, c.max_error))
    case = cases[c.case - 1]
    if c.problem:
        return [f"  {grad_name}: {c.problem} (case {c.case})"]
    yours, library = c.worst_values
    lines = [f"  {_index_text(grad_name, c.index)} is off by {c.max_error:.3g} (yours "
             f"{yours:.6g}, library {library:.6g}) in case {c.case}"]
    if c.index:
        lines.append(f"    hint: {exercise.hint(case, grad_name, c.index, failed, c.wrong)}")
    diagnosis = exercise.diagnose(case, grad_name, c.yours, c.library) if exercise.diagnose \
        else None
    diagnosis = diagnosis or _diagnose(c.yours, c.library)
    if diagnosis:
        lines.append(f"    diagnosis: {diagnosis}")
    return lines


def _line_of(exc: BaseException, path: Path) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if Path(f.filename).resolve() == path.resolve()]
    return f" (line {frames[-1].lineno} of {_shown(path)})" if frames else ""


# ----------------------------------------------------------------------------- the command

def list_text() -> str:
    """The exercises, what each asks for, and how far the file under the current directory
    is (holes left)."""
    lines = [f"{'exercise':<27} {'you write':<62} status of ./{EXERCISE_FOLDER}/NAME.py"]
    for name, exercise in EXERCISES.items():
        path = EXERCISE_FOLDER / f"{name}.py"
        if not path.is_file():
            status = "no file here (run from a checkout's root, or use --file)"
        else:
            left = len(holes(path))
            status = (f"{left} hole{'s' if left != 1 else ''} left" if left
                      else "no holes left: run the check")
        lines.append(f"{name:<27} {exercise.summary:<62} {status}")
    lines += ["", f"check one with: scratchvision exercise check NAME [--file PATH]; "
                  f"reference solutions: {EXERCISE_FOLDER}/solutions/"]
    return "\n".join(lines)


def main(command: str, name: str | None = None, file=None, seed: int = 0) -> int:
    """``scratchvision exercise list`` and ``scratchvision exercise check NAME``: the exit
    status (0 passed, 1 failed, 2 could not start)."""
    if command == "list":
        print(list_text())
        return 0
    try:
        result = check(name, file, seed)
    except ExerciseError as exc:
        print(f"scratchvision exercise check: {exc}", file=sys.stderr)
        return 2
    print(result.text)
    return 0 if result.ok else 1
