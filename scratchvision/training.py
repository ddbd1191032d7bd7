"""The engine of ``scratchvision train``, ``evaluate`` and ``detect``.

A training run writes, in its output folder:

* ``config.json`` -- the model's name and constructor arguments and the training settings
  (written once, when the run starts; ``--resume`` checks that they match);
* ``checkpoint.npz`` -- the model's ``state_dict`` (``model.<name>``), the optimizer's state
  (``optimizer.<name>``), the step reached and the loss history, all in one file written
  atomically (:func:`scratchvision._files.atomic_write`): a kill during a save leaves the
  previous checkpoint, never a broken one;
* at the end, ``metrics.json`` (COCO's twelve numbers on the held-out images, the training
  time, the parameter count) and ``loss.png`` (the loss curves).

Determinism: image ``i`` of the training stream is a pure function of ``(seed, i)``, the
weights start from ``seed``, and every kernel of the numba and NumPy tiers sums in a fixed
order, so two runs with the same seed and backend write identical checkpoints, and a run
resumed from a checkpoint continues exactly as if it had never stopped.

The held-out set is the same for every model and seed: ``ShapesDataset(n, seed=HELD_OUT_SEED)``,
generated from a seed no training run uses.
"""

from __future__ import annotations

import dataclasses
import json
import time
import zipfile
from pathlib import Path

import numpy as np

from . import _checks
from ._files import atomic_write
from .data import ShapesDataset, coco_ground_truth
from .detection import ImagePyramid, coco_evaluate
from .models import MODELS, build_model
from .optim import Adam

__all__ = ["TrainConfig", "RunError", "CheckpointError", "train", "load_run", "evaluate_model",
           "held_out_set", "shapes_dataset", "load_backbone", "detections_to_coco",
           "plot_losses", "plot_ap_curves", "read_image", "draw_detections", "profile_step",
           "HELD_OUT_SEED", "PYRAMID_SCALES"]

#: the seed of the held-out images (no training stream uses it)
HELD_OUT_SEED = 1_000_003
#: the test-time pyramid for ``--tta``: the small objects a stride-16 map misses, seen bigger
PYRAMID_SCALES = (1.0, 1.5, 2.0)
CONFIG_FILE, CHECKPOINT_FILE = "config.json", "checkpoint.npz"
METRICS_FILE, LOSS_PLOT = "metrics.json", "loss.png"
#: the loss parts recorded per step, in the history's columns
HISTORY_COLUMNS = ("total", "classification", "box_regression")


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (and goes into ``config.json``).

    ``warmup_steps``: the learning rate rises linearly from 0 over these first steps;
    ``decay_at``: at this fraction of the run it drops tenfold (a step schedule);
    ``clip_norm``: when positive, the gradient of all parameters together is scaled down to
    this norm when it is longer (DETR trains with 0.1); ``eval_every``: when positive, the
    model is evaluated on the held-out images every that many steps (the AP-against-step
    curve of ``metrics.json``); ``backbone_from``: a run folder whose trained backbone
    (``backbone.*``) the model starts from -- a pretrained backbone, as every DETR has.
    """

    model: str
    steps: int
    batch_size: int = 8
    lr: float = 1e-3
    seed: int = 0
    backend: str = "auto"
    image_size: int = 256
    eval_images: int = 200
    checkpoint_every: int = 250
    warmup_steps: int = 100
    decay_at: float = 0.8
    clip_norm: float = 0.0
    eval_every: int = 0
    backbone_from: str = ""
    model_config: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        _checks.choice(self.model, "model", MODELS)
        for name in ("steps", "batch_size", "image_size", "eval_images", "checkpoint_every"):
            _checks.positive_int(getattr(self, name), name)
        _checks.nonnegative_int(self.seed, "seed")
        _checks.nonnegative_int(self.warmup_steps, "warmup_steps")
        _checks.nonnegative_int(self.eval_every, "eval_every")
        _checks.real_number(self.clip_norm, "clip_norm", finite=True)
        if self.clip_norm < 0:
            raise ValueError(f"clip_norm must be >= 0 (0 = no clipping), got {self.clip_norm}")
        _checks.real_number(self.lr, "lr", finite=True, positive=True)
        _checks.number_in_range(self.decay_at, "decay_at", 0.0, 1.0)

    def learning_rate(self, step: int) -> float:
        """The learning rate of step ``step`` (0-based): warm-up, then a tenfold drop."""
        lr = self.lr * min(1.0, (step + 1) / max(1, self.warmup_steps))
        return lr * (0.1 if step >= self.decay_at * self.steps else 1.0)


class RunError(Exception):
    """Bad input to a command: the message says what was given and what was expected."""


class CheckpointError(RunError):
    """A run folder that cannot be read: the message names the file and the key."""


# ----------------------------------------------------------------------------- checkpoints

def _as_json(config: TrainConfig) -> dict:
    """The settings as ``config.json`` holds them (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _model_kwargs(config: TrainConfig) -> dict:
    return dict(config.model_config, rng=config.seed, backend=config.backend)


def _save(directory: Path, model, optimizer, step: int, history: np.ndarray,
          ap_history: np.ndarray) -> None:
    """Write ``checkpoint.npz`` atomically."""
    arrays = {f"model.{k}": v for k, v in model.state_dict().items()}
    arrays.update({f"optimizer.{k}": v for k, v in optimizer.state_dict().items()})
    arrays["step"] = np.asarray(step, dtype=np.int64)
    arrays["history"] = history
    arrays["ap_history"] = ap_history
    atomic_write(directory / CHECKPOINT_FILE, lambda f: np.savez(f, **arrays), binary=True)


def _read_config(directory: Path) -> TrainConfig:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (is {directory} a training run folder?)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise CheckpointError(f"{path}: unknown key(s) {unknown}")
    for key in ("model", "steps"):
        if key not in raw:
            raise CheckpointError(f"{path}: missing key {key!r}")
    try:
        return TrainConfig(**raw)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def _read_npz(path: Path, absent: str) -> dict:
    """Every array of the ``.npz`` file ``path``; :class:`CheckpointError` naming the file
    when it is absent (``absent``: why it should be there) or unreadable."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file ({absent})")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"{path}: not a readable .npz checkpoint ({exc})") from None


def _with_prefix(arrays: dict, prefix: str) -> dict:
    """The entries of ``arrays`` whose key starts with ``prefix``, without it."""
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def _read_checkpoint(directory: Path, model, optimizer=None):
    """Load ``checkpoint.npz`` into ``model`` (and ``optimizer``); return (step, history,
    ap_history)."""
    path = directory / CHECKPOINT_FILE
    arrays = _read_npz(path, "the run has not saved a checkpoint")
    for key in ("step", "history", "ap_history"):
        if key not in arrays:
            raise CheckpointError(f"{path}: missing key {key!r}")
    try:
        model.load_state_dict(_with_prefix(arrays, "model."))
        if optimizer is not None:
            optimizer.load_state_dict(_with_prefix(arrays, "optimizer."))
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return int(arrays["step"]), arrays["history"], arrays["ap_history"]


def load_backbone(model, directory) -> None:
    """Copy the ``backbone.*`` parameters of the run in ``directory`` into ``model``'s
    (``model.backbone.load_state_dict``: all or nothing); :class:`CheckpointError` names the
    file and the key that is missing or of another shape."""
    path = Path(directory) / CHECKPOINT_FILE
    arrays = _read_npz(path, "backbone_from must be a run folder")
    try:
        model.backbone.load_state_dict(_with_prefix(arrays, "model.backbone."))
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: in 'model.backbone.*': {exc}") from None


def load_run(directory):
    """The trained model of a run folder and its :class:`TrainConfig`; raises
    :class:`CheckpointError` naming the file and the key when something is missing or
    broken."""
    directory = Path(directory)
    config = _read_config(directory)
    model = build_model(config.model, **_model_kwargs(config))
    _read_checkpoint(directory, model)
    return model.eval(), config


# ----------------------------------------------------------------------------- training

def _batch(dataset, start: int, size: int):
    items = [dataset[i] for i in range(start, start + size)]
    return np.stack([image for image, _ in items]), [target for _, target in items]


def train(config: TrainConfig, directory, resume: bool = False, progress: bool = True) -> dict:
    """Train ``config.model`` into the run folder ``directory`` and evaluate it; returns the
    metrics dict that ``metrics.json`` holds.

    ``resume=True`` continues the run saved in ``directory`` (its ``config.json`` must equal
    ``config``); otherwise ``directory`` must not already hold a run.
    """
    from tqdm import tqdm

    directory = Path(directory)
    model = build_model(config.model, **_model_kwargs(config))
    if config.backbone_from:
        load_backbone(model, config.backbone_from)
    optimizer = Adam(model.parameters(), lr=config.lr)
    history = np.zeros((config.steps, len(HISTORY_COLUMNS)))
    ap_history = np.zeros((0, 3))  # rows (step, AP, AP50)
    start = 0
    if resume:
        saved, wanted = _as_json(_read_config(directory)), _as_json(config)
        if saved != wanted:
            changed = sorted(k for k in wanted if saved.get(k) != wanted[k])
            raise CheckpointError(f"{directory / CONFIG_FILE}: the saved settings differ from "
                                  f"this command's in {changed}: "
                                  f"{ {k: saved.get(k) for k in changed} } vs "
                                  f"{ {k: wanted[k] for k in changed} }")
        start, saved_history, ap_history = _read_checkpoint(directory, model, optimizer)
        history[:min(len(saved_history), config.steps)] = saved_history[:config.steps]
    else:
        if (directory / CHECKPOINT_FILE).exists():
            raise CheckpointError(f"{directory / CHECKPOINT_FILE}: a run already lives here; "
                                  f"pass --resume to continue it or choose another --out")
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / CONFIG_FILE, lambda f: json.dump(_as_json(config), f, indent=1),
                     binary=False)
    stream = shapes_dataset(config, config.steps * config.batch_size, config.seed)
    began = time.perf_counter()
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps,
               disable=not progress, desc=f"train {config.model}", unit="step")
    for step in bar:
        images, targets = _batch(stream, step * config.batch_size, config.batch_size)
        outputs = model(images)
        parts, grads = model.loss(outputs, targets)
        model.zero_grad()
        model.backward(grads)
        if config.clip_norm > 0:
            clip_gradient_norm(model.parameters(), config.clip_norm)
        optimizer.lr = config.learning_rate(step)
        optimizer.step()
        history[step] = (parts.total, parts.classification, parts.box_regression)
        bar.set_postfix(loss=f"{parts.total:.3f}", cls=f"{parts.classification:.3f}",
                        box=f"{parts.box_regression:.3f}", refresh=False)
        if config.eval_every and (step + 1) % config.eval_every == 0:
            stats = evaluate_model(model.eval(), config, count=min(100, config.eval_images))
            model.train()
            ap_history = np.concatenate([ap_history, [[step + 1, stats.stats[0],
                                                       stats.stats[1]]]])
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
            _save(directory, model, optimizer, step + 1, history, ap_history)
    bar.close()
    seconds = time.perf_counter() - began
    evaluation = evaluate_model(model.eval(), config)
    metrics = {
        "model": config.model, "seed": config.seed, "steps": config.steps,
        "batch_size": config.batch_size, "backend": config.backend,
        "parameters": int(sum(p.size for p in model.parameters())),
        "train_seconds_this_session": round(seconds, 1), "steps_this_session":
            config.steps - start, "held_out_images": config.eval_images,
        "stats": dict(zip(evaluation.names, (float(s) for s in evaluation.stats))),
        "ap_against_step": [{"step": int(s), "AP": float(ap), "AP50": float(ap50)}
                            for s, ap, ap50 in ap_history],
    }
    atomic_write(directory / METRICS_FILE, lambda f: json.dump(metrics, f, indent=1),
                 binary=False)
    plot_losses(history, directory / LOSS_PLOT, config.model)
    return metrics


def clip_gradient_norm(params, max_norm: float) -> float:
    """Scale every parameter's ``.grad`` by ``min(1, max_norm / norm)``, ``norm`` the length
    of all of them together (``torch.nn.utils.clip_grad_norm_``); returns that norm."""
    norm = float(np.sqrt(sum(float(np.sum(p.grad.astype(np.float64) ** 2)) for p in params)))
    if norm > max_norm:
        for p in params:
            p.grad *= max_norm / (norm + 1e-6)
    return norm


# ----------------------------------------------------------------------------- evaluation

def shapes_dataset(config: TrainConfig, count: int, seed: int) -> ShapesDataset:
    """The shapes images of a run: ``config.image_size`` square, objects up to 128 px (or the
    image's size, for smaller images)."""
    return ShapesDataset(count, config.image_size, seed,
                         max_side=min(128, config.image_size))


def held_out_set(config: TrainConfig, count: int | None = None) -> ShapesDataset:
    """The held-out images every model is evaluated on."""
    return shapes_dataset(config, count or config.eval_images, HELD_OUT_SEED)


def detections_to_coco(predictions: list[dict], first_image_id: int = 0) -> list[dict]:
    """torchvision-style predictions, one per image (image ids from ``first_image_id`` on) ->
    COCO result dicts with ``bbox = [x, y, w, h]``."""
    results = []
    for offset, prediction in enumerate(predictions):
        boxes = np.asarray(prediction["boxes"], dtype=np.float64).reshape(-1, 4)
        for box, score, label in zip(boxes, prediction["scores"], prediction["labels"]):
            x1, y1, x2, y2 = (float(v) for v in box)
            results.append({"image_id": first_image_id + offset, "category_id": int(label),
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    return results


def evaluate_model(model, config: TrainConfig, tta: bool = False, count: int | None = None,
                   batch_size: int = 8):
    """COCO evaluation (:func:`~scratchvision.detection.coco_evaluate`) of ``model`` on the
    held-out set; ``tta`` fuses the predictions of an image pyramid (:data:`PYRAMID_SCALES`,
    per-class NMS across scales)."""
    dataset = held_out_set(config, count)
    pyramid = ImagePyramid(PYRAMID_SCALES)
    predictions = []
    for start in range(0, len(dataset), batch_size):
        images, _ = _batch(dataset, start, min(batch_size, len(dataset) - start))
        if tta:
            fused = pyramid.predict_boxes(model.predict, images, fusion="nms")
            predictions += [{"boxes": d.boxes, "scores": d.scores, "labels": d.labels}
                            for d in fused]
        else:
            predictions += model.predict(images)
    return coco_evaluate(coco_ground_truth(dataset), detections_to_coco(predictions))


# ----------------------------------------------------------------------------- figures

def plot_ap_curves(curves: dict):
    """A figure of held-out AP (dashed) and AP50 (solid) against training minutes, one colour
    per run. ``curves``: ``{name: (seconds_per_step, rows)}``, rows ``(step, AP, AP50)`` as in
    the ``ap_against_step`` of ``metrics.json``. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name, (seconds_per_step, rows) in curves.items():
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
        minutes = rows[:, 0] * seconds_per_step / 60
        line, = ax.plot(minutes, rows[:, 2], "o-", label=f"{name} AP50")
        ax.plot(minutes, rows[:, 1], "o--", color=line.get_color(), label=f"{name} AP")
    ax.set_xlabel("minutes of the run (wall clock, its periodic evaluations included)")
    ax.set_ylabel("held-out AP")
    ax.legend(fontsize=8)
    return fig


def plot_losses(history: np.ndarray, path, title: str) -> None:
    """The loss parts against the step (a running mean over 20 steps), saved atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = np.arange(1, len(history) + 1)
    window = min(20, len(history))
    kernel = np.ones(window) / window
    for column, name in enumerate(HISTORY_COLUMNS):
        smooth = np.convolve(history[:, column], kernel, mode="valid")
        ax.plot(steps[window - 1:], smooth, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(f"loss (running mean of {window})")
    ax.set_title(f"scratchvision train --model {title}")
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110), binary=True)
    plt.close(fig)


# ----------------------------------------------------------------------------- detect

def read_image(path) -> np.ndarray:
    """An image file as (3, H, W) float32 in [0, 1] (Pillow; any mode converted to RGB);
    :class:`RunError` names the file when it cannot be read as an image."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise RunError(f"{path}: no such image file") from None
    except (OSError, UnidentifiedImageError) as exc:
        raise RunError(f"{path}: not a readable image ({exc})") from None
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))  # (H, W, 3) -> (3, H, W)


def draw_detections(image: np.ndarray, detections: dict, path, class_names,
                    score_threshold: float = 0.3) -> int:
    """Draw the boxes scoring above ``score_threshold`` on ``image`` (3, H, W), with their
    class name and score, and save the figure to ``path`` (PNG, atomically). Returns how many
    boxes were drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height, width = image.shape[1:]
    fig, ax = plt.subplots(figsize=(width / 80, height / 80), dpi=100)
    ax.imshow(image.transpose(1, 2, 0).clip(0, 1))
    drawn = 0
    for box, score, label in zip(detections["boxes"], detections["scores"],
                                 detections["labels"]):
        if score < score_threshold:
            continue
        x1, y1, x2, y2 = box
        ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.5,
                                   edgecolor="yellow"))
        name = class_names[int(label) - 1] if 0 < label <= len(class_names) else str(label)
        ax.text(x1, y1 - 1, f"{name} {score:.2f}", color="black", fontsize=7,
                bbox=dict(facecolor="yellow", alpha=0.8, pad=1, lw=0))
        drawn += 1
    ax.set_axis_off()
    fig.tight_layout(pad=0)
    atomic_write(path, lambda f: fig.savefig(f, format="png"), binary=True)
    plt.close(fig)
    return drawn


# ----------------------------------------------------------------------------- profiling

def profile_step(model, images, targets, optimizer=None, repeats: int = 3) -> list[dict]:
    """Where one training step's time goes: the median over ``repeats`` steps of the time
    spent in each layer's forward and backward (the model's modules that call an op or a
    product: convolutions, linear layers, attention, norms), in the loss, and in the
    optimizer. Returns rows ``{"part", "forward_ms", "backward_ms"}``, the layers largest
    first, then the rest of the step, the loss (in the forward column: it is computed with
    its gradient), Adam (in the backward column: the update after it) and the whole step;
    each column of the rows above the last adds up to the last.

    It times every module of those kinds by wrapping its ``forward`` and ``backward`` on the
    instance for the duration of the call (nothing is left patched); a module used several
    times per step (a head shared across levels) adds up.
    """
    from .nn import (MLP, Conv2d, DeformConv2d, GroupNorm, LayerNorm, Linear, MSDeformAttn,
                     MultiheadAttention, ReLU, wrapped_methods)

    kinds = (Conv2d, DeformConv2d, Linear, MultiheadAttention, MSDeformAttn, LayerNorm,
             GroupNorm, ReLU, MLP)
    # the outermost module of each kind: time a DeformConv2d, not also its offset conv
    timed, inside = {}, set()
    for name, module in model.named_modules():
        if isinstance(module, kinds) and not any(name.startswith(p + ".") for p in inside):
            timed[name] = module
            inside.add(name)
    totals = {name: [0.0, 0.0] for name in timed}

    def timing(name, slot):
        def wrap(original):
            def timed_call(*args, **kwargs):
                start = time.perf_counter()
                result = original(*args, **kwargs)
                totals[name][slot] += time.perf_counter() - start
                return result
            return timed_call
        return wrap

    wraps = [(module, attr, timing(name, slot)) for name, module in timed.items()
             for slot, attr in enumerate(("forward", "backward"))]
    optimizer = optimizer or Adam(model.parameters(), lr=0.0)
    samples = []
    with wrapped_methods(wraps):
        for _ in range(repeats + 1):  # the first step compiles and allocates: not counted
            for value in totals.values():
                value[0] = value[1] = 0.0
            t0 = time.perf_counter()
            outputs = model(images)
            t1 = time.perf_counter()
            _, grads = model.loss(outputs, targets)
            t2 = time.perf_counter()
            model.zero_grad()
            model.backward(grads)
            t3 = time.perf_counter()
            optimizer.step()
            t4 = time.perf_counter()
            samples.append(({n: tuple(v) for n, v in totals.items()},
                            (t1 - t0, t2 - t1, t3 - t2, t4 - t3)))
    samples = samples[1:]
    rows = []
    for name in timed:
        rows.append({"part": name, "forward_ms": 1e3 * np.median([s[0][name][0]
                                                                   for s in samples]),
                     "backward_ms": 1e3 * np.median([s[0][name][1] for s in samples])})
    rows.sort(key=lambda r: -(r["forward_ms"] + r["backward_ms"]))
    step = np.median([s[1] for s in samples], axis=0) * 1e3
    layer_forward = sum(r["forward_ms"] for r in rows)
    layer_backward = sum(r["backward_ms"] for r in rows)
    rows += [{"part": "everything else (reshapes, heads' glue, Python)",
              "forward_ms": step[0] - layer_forward, "backward_ms": step[2] - layer_backward},
             {"part": "loss (matching and the losses' backward)", "forward_ms": step[1],
              "backward_ms": 0.0},
             {"part": "optimizer (Adam)", "forward_ms": 0.0, "backward_ms": step[3]},
             {"part": "whole step", "forward_ms": step[0] + step[1],
              "backward_ms": step[2] + step[3]}]
    return rows
