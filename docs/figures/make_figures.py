"""Draw the figures of the pages "Training a multi-scale detector" and "Deformable DETR
against DETR" from the run folders of ``scratchvision train`` and a saved attention-cost
measurement.

    python docs/figures/make_figures.py RUNS [COST_JSON]

``RUNS`` holds the run folders ``single``, ``fpn``, ``fpn_dcn``, ``deformable_detr`` and
``detr`` (the commands are on those pages); ``COST_JSON`` is the list of
``dataclasses.asdict`` rows of ``scratchvision.verify.attention_cost.attention_cost()``. The
PNGs are written next to this file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from scratchvision.data import CLASSES  # noqa: E402
from scratchvision.training import held_out_set, load_run, plot_ap_curves  # noqa: E402
from scratchvision.verify.attention_cost import AttentionCost, plot_attention_cost  # noqa: E402

HERE = Path(__file__).resolve().parent
ANCHOR_RUNS = ("single", "fpn", "fpn_dcn")


def _save(fig, name: str) -> None:
    fig.savefig(HERE / f"{name}.png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {HERE / name}.png")


def _history(run: Path) -> np.ndarray:
    with np.load(run / "checkpoint.npz") as checkpoint:
        return checkpoint["history"]


def training_losses(runs: Path) -> None:
    """The total loss of the three anchor detectors against the step (running mean of 20)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    kernel = np.ones(20) / 20
    for name in ANCHOR_RUNS:
        total = _history(runs / name)[:, 0]
        ax.plot(np.arange(20, len(total) + 1), np.convolve(total, kernel, mode="valid"),
                label=name)
    ax.set_xlabel("step (batch of 8)")
    ax.set_ylabel("total loss (running mean of 20)")
    ax.legend()
    _save(fig, "training_losses")


def small_objects(runs: Path, count: int = 3, score_threshold: float = 0.3) -> None:
    """``single`` against ``fpn`` on the held-out images with the most small objects: every
    detection scoring at least ``score_threshold``, and the ground truth dashed."""
    models = {name: load_run(runs / name) for name in ("single", "fpn")}
    data = held_out_set(models["fpn"][1], 40)
    small = [int(np.sum(np.prod(t["boxes"][:, 2:] - t["boxes"][:, :2], axis=1) < 32 ** 2))
             for _, t in data]
    chosen = np.argsort(small, kind="stable")[::-1][:count]
    fig, axes = plt.subplots(len(models), count, figsize=(4 * count, 8.4), squeeze=False)
    for row, (name, (model, _)) in enumerate(models.items()):
        images = np.stack([data[int(i)][0] for i in chosen])
        for ax, image, i, found in zip(axes[row], images, chosen, model.predict(images)):
            ax.imshow(image.transpose(1, 2, 0))
            for x1, y1, x2, y2 in data[int(i)][1]["boxes"]:
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="white",
                                       ls="--", lw=0.8))
            keep = found["scores"] >= score_threshold
            for (x1, y1, x2, y2), label in zip(found["boxes"][keep], found["labels"][keep]):
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False,
                                       color="yellow", lw=1.2))
                ax.text(x1, y1 - 2, CLASSES[label - 1], color="yellow", fontsize=6)
            ax.set_title(f"{name}: {int(keep.sum())} detections >= {score_threshold}")
            ax.set_axis_off()
    _save(fig, "small_objects")


def convergence(runs: Path) -> None:
    """Held-out AP and AP50 against training minutes for the two DETR runs."""
    curves = {}
    for name in ("deformable_detr", "detr"):
        metrics = json.loads((runs / name / "metrics.json").read_text())
        per_step = metrics["train_seconds_this_session"] / metrics["steps_this_session"]
        curves[name] = (per_step, [(p["step"], p["AP"], p["AP50"])
                                   for p in metrics["ap_against_step"]])
    _save(plot_ap_curves(curves), "detr_convergence")


def attention_cost(rows: list[dict]) -> None:
    """Forward time and peak memory of one dense and one deformable layer against map size."""
    _save(plot_attention_cost([AttentionCost(**row) for row in rows], 24 * 2 ** 30),
          "attention_cost")


def main(argv: list[str]) -> None:
    if not argv or len(argv) > 2:
        raise SystemExit(__doc__)
    runs = Path(argv[0])
    training_losses(runs)
    small_objects(runs)
    convergence(runs)
    if len(argv) == 2:
        attention_cost(json.loads(Path(argv[1]).read_text()))


if __name__ == "__main__":
    main(sys.argv[1:])
