"""``scratchvision train / evaluate / detect`` and the training engine: identical checkpoints
for the same seed, a resumed run identical to an uninterrupted one, atomic and checked run
folders (errors name the file and the key, never a traceback), the metrics and figures a run
writes, and gradient clipping."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scratchvision import cli
from scratchvision.training import (CheckpointError, TrainConfig, clip_gradient_norm,
                                    load_run, train)
from scratchvision.nn import Parameter

TINY_MODEL = dict(channels=4, num_convs=1, widths=(2, 3, 4, 4, 4))


def _config(**changes) -> TrainConfig:
    settings = dict(model="fpn", steps=4, batch_size=2, image_size=64, eval_images=3,
                    checkpoint_every=2, warmup_steps=1, model_config=TINY_MODEL)
    settings.update(changes)
    return TrainConfig(**settings)


def _checkpoint(directory) -> dict:
    with np.load(directory / "checkpoint.npz") as data:
        return {k: data[k] for k in data.files}


def test_same_seed_same_checkpoint_and_resume_continues_exactly(tmp_path):
    config = _config()
    train(config, tmp_path / "a", progress=False)
    train(config, tmp_path / "b", progress=False)
    first, second = _checkpoint(tmp_path / "a"), _checkpoint(tmp_path / "b")
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    # killed after the step-2 checkpoint, then resumed to step 4: the same final checkpoint
    resumed_dir = tmp_path / "e"
    _train_then_cut(config, resumed_dir, stop_after=2)
    train(config, resumed_dir, resume=True, progress=False)
    resumed = _checkpoint(resumed_dir)
    for key in first:
        np.testing.assert_array_equal(resumed[key], first[key], err_msg=key)


def _train_then_cut(config: TrainConfig, directory, stop_after: int) -> None:
    """Run ``stop_after`` steps of ``config`` into ``directory`` as if killed there: the run
    folder holds the step-``stop_after`` checkpoint of the full-length run."""
    from scratchvision import training

    original = training.shapes_dataset

    class Killed(Exception):
        pass

    def dataset_that_dies(cfg, count, seed):
        data = original(cfg, count, seed)
        if seed != cfg.seed:  # the held-out set
            return data

        class Dying:
            def __len__(self):
                return len(data)

            def __getitem__(self, i):
                if i >= stop_after * cfg.batch_size:
                    raise Killed
                return data[i]
        return Dying()

    training.shapes_dataset = dataset_that_dies
    try:
        with pytest.raises(Killed):
            train(config, directory, progress=False)
    finally:
        training.shapes_dataset = original
    assert int(_checkpoint(directory)["step"]) == stop_after


def test_a_run_writes_metrics_loss_plot_and_loads_back(tmp_path):
    metrics = train(_config(eval_every=2), tmp_path, progress=False)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == metrics
    assert len(saved["stats"]) == 12 and "AP50" in saved["stats"]
    assert [row["step"] for row in saved["ap_against_step"]] == [2, 4]
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model, config = load_run(tmp_path)
    assert config.model_config["widths"] == list(TINY_MODEL["widths"])  # as JSON stores it
    assert config.eval_every == 2 and config.steps == 4
    assert not model.training


def test_an_existing_run_is_not_overwritten_and_resume_must_match(tmp_path):
    train(_config(), tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="a run already lives here"):
        train(_config(), tmp_path, progress=False)
    with pytest.raises(CheckpointError, match=r"config.json: the saved settings differ from "
                                              r"this command's in \['seed'\]"):
        train(_config(seed=1), tmp_path, resume=True, progress=False)


def test_broken_run_folders_are_one_line_errors(tmp_path, capsys):
    missing = tmp_path / "nothing"
    assert cli.main(["evaluate", str(missing)]) == 2
    assert "nothing/config.json: no such file" in capsys.readouterr().err
    run = tmp_path / "run"
    train(_config(), run, progress=False)
    (run / "checkpoint.npz").write_bytes(b"not a zip file")
    assert cli.main(["evaluate", str(run)]) == 2
    assert "checkpoint.npz: not a readable .npz checkpoint" in capsys.readouterr().err
    train(_config(), tmp_path / "other", progress=False)
    arrays = _checkpoint(tmp_path / "other")
    del arrays["model.head.classification_head.cls_logits.weight"]
    np.savez(tmp_path / "other" / "checkpoint.npz", **arrays)
    assert cli.main(["evaluate", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.npz" in err and "head.classification_head.cls_logits.weight" in err
    (run / "config.json").write_text('{"model": "fpn"}')
    assert cli.main(["evaluate", str(run)]) == 2
    assert "config.json: missing key 'steps'" in capsys.readouterr().err


def test_detect_draws_boxes_and_names_a_bad_image(tmp_path, capsys):
    from PIL import Image

    run = tmp_path / "run"
    train(_config(), run, progress=False)
    image = (np.random.default_rng(0).uniform(0, 255, (64, 64, 3))).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "in.png")
    assert cli.main(["detect", str(run), str(tmp_path / "in.png"), "--out",
                     str(tmp_path / "out.png"), "--threshold", "0"]) == 0
    assert "detections above 0.0 drawn" in capsys.readouterr().out
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "bad.png").write_text("no image")
    assert cli.main(["detect", str(run), str(tmp_path / "bad.png"), "--out",
                     str(tmp_path / "x.png")]) == 2
    assert "bad.png: not a readable image" in capsys.readouterr().err


def test_bad_settings_are_one_line_errors(tmp_path, capsys):
    assert cli.main(["train", "--model", "fpn", "--steps", "0", "--out",
                     str(tmp_path / "r")]) == 2
    assert "steps must be a positive integer" in capsys.readouterr().err


def test_clip_gradient_norm_scales_all_gradients_together():
    a, b = Parameter(np.zeros(2)), Parameter(np.zeros(1))
    a.grad[...] = [3.0, 0.0]
    b.grad[...] = [4.0]
    assert clip_gradient_norm([a, b], 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(np.concatenate([a.grad, b.grad]), [0.6, 0.0, 0.8], rtol=1e-6)
    assert clip_gradient_norm([a, b], 10.0) == pytest.approx(1.0, rel=1e-6)  # no change
    np.testing.assert_allclose(np.concatenate([a.grad, b.grad]), [0.6, 0.0, 0.8], rtol=1e-6)


def test_backbone_from_copies_only_the_backbone_and_names_a_bad_key(tmp_path):
    from scratchvision.models import build_model
    from scratchvision.training import load_backbone

    train(_config(steps=2), tmp_path / "a", progress=False)
    trained = _checkpoint(tmp_path / "a")
    model = build_model("fpn", rng=7, **TINY_MODEL)
    untouched = {n: p.data.copy() for n, p in model.named_parameters()}
    load_backbone(model, tmp_path / "a")
    for name, param in model.named_parameters():
        if name.startswith("backbone."):
            np.testing.assert_array_equal(param.data, trained["model." + name], err_msg=name)
        else:
            np.testing.assert_array_equal(param.data, untouched[name], err_msg=name)
    # a run whose backbone has other widths: the file and the key are named
    wider = build_model("fpn", rng=0, **dict(TINY_MODEL, widths=(2, 3, 4, 4, 8)))
    bad_shape = r"checkpoint\.npz: in 'model\.backbone\.\*': state_dict\['.+' has shape"
    with pytest.raises(CheckpointError, match=bad_shape):
        load_backbone(wider, tmp_path / "a")
    with pytest.raises(CheckpointError, match="no such file"):
        load_backbone(model, tmp_path / "missing")


def test_profile_step_accounts_for_the_whole_step_and_leaves_nothing_patched():
    from scratchvision.models import build_model
    from scratchvision.training import profile_step, shapes_dataset

    dataset = shapes_dataset(_config(), 2, seed=0)
    images = np.stack([dataset[i][0] for i in range(2)])
    targets = [dataset[i][1] for i in range(2)]
    model = build_model("fpn", rng=0, **TINY_MODEL)
    rows = profile_step(model, images, targets, repeats=2)
    parts = {row["part"]: row for row in rows}
    assert any(p.startswith("backbone.") for p in parts)
    layers = [r for r in rows if r["part"] not in ("whole step",)]
    whole = parts["whole step"]
    # the layer rows, the remainder row, the loss and Adam add up to the whole step
    assert np.isclose(sum(r["forward_ms"] for r in layers), whole["forward_ms"])
    assert np.isclose(sum(r["backward_ms"] for r in layers), whole["backward_ms"])
    assert all(r["forward_ms"] >= 0 and r["backward_ms"] >= 0
               for r in rows if not r["part"].startswith("everything else"))
    assert not any("forward" in vars(m) or "backward" in vars(m) for m in model.modules())
