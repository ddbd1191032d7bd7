"""The ``scratchvision`` command (also ``python -m scratchvision``).

``scratchvision check [op ...] [--backend TIER ...] [--json]``
    verify every operator, and the multi-scale layers (`layers`), on every available tier
    (see :mod:`scratchvision.selfcheck`);
    exits non-zero when anything fails.
``scratchvision bench [op] [--json] [--quick] [--runs K] [--device-resident] [--limits]``
    time the fast tiers against the torch / torchvision references
    (see :mod:`scratchvision.benchmark`); ``--device-resident`` times the cuda tier on arrays
    already on the GPU with CUDA events, beside torch on the same GPU (needs a real GPU);
    ``--limits`` measures the machine's memory bandwidth and matrix-product rate instead.
``scratchvision train --model NAME --steps N --out DIR [--seed S] [--backend B] [--resume]``
    train a detector on the shapes data, checkpointing atomically, then evaluate it
    (see :mod:`scratchvision.training`).
``scratchvision evaluate DIR [--tta]``
    print the COCO table of a trained run on the held-out images.
``scratchvision detect DIR IMAGE --out OUT.png``
    draw a trained run's detections on an image.
``scratchvision exercise list | check NAME [--file PATH] [--seed S]``
    the self-checking exercises of ``tutorials/exercises/`` (see
    :mod:`scratchvision.exercises`); ``check`` exits 1 when the exercise is not right yet.

A run folder that cannot be read (missing or broken checkpoint, a bad image) is reported in
one line naming the file and the key, with exit status 2 -- never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from ._dispatch import BACKENDS, TIERS
from .benchmark import BENCH_SUITES
from .selfcheck import CHECK_SUITES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scratchvision",
        description="Check, benchmark and train scratchvision's operators and detectors.")
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="verify forward and backward on every tier")
    check.add_argument("ops", nargs="*", metavar="op",
                       help=f"what to check (default: all of {', '.join(CHECK_SUITES)})")
    check.add_argument("--backend", action="append", choices=TIERS, dest="backends",
                       help="tier to check; repeat for several (default: all)")
    check.add_argument("--cases", type=int, default=3,
                       help="random cases per operator and tier (default: 3)")
    check.add_argument("--json", action="store_true", help="print JSON rows instead of a table")

    bench = sub.add_parser("bench", help="time the tiers against torch / torchvision")
    bench.add_argument("op", nargs="?", choices=tuple(BENCH_SUITES),
                       help="operator (default: all)")
    bench.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    bench.add_argument("--quick", action="store_true",
                       help="small shapes and few repeats: a smoke test, not a measurement")
    bench.add_argument("--runs", type=int, default=1,
                       help="time everything this many times and report the median and range "
                            "over the runs (default: 1)")
    bench.add_argument("--limits", action="store_true",
                       help="measure this machine's memory bandwidth and float32 matrix-product "
                            "rate (the bounds each benchmark is read against) and time nothing "
                            "else")
    bench.add_argument("--device-resident", action="store_true",
                       help="time the cuda tier on arrays already on the GPU (CUDA events), "
                            "beside torch on the same GPU and the NumPy path with its copies; "
                            "needs a real GPU (says so and times nothing otherwise)")
    from .models import MODELS

    train = sub.add_parser("train", help="train a detector on the shapes data")
    train.add_argument("--model", required=True, choices=MODELS)
    train.add_argument("--steps", required=True, type=int, help="optimizer steps")
    train.add_argument("--out", required=True, help="the run folder to write")
    train.add_argument("--seed", type=int, default=0, help="weights and data (default: 0)")
    train.add_argument("--backend", default="auto", choices=BACKENDS)
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--lr", type=float, default=None,
                       help="Adam's learning rate (default: 2e-4 for the DETR models, 1e-3 "
                            "for the anchor detectors)")
    train.add_argument("--eval-images", type=int, default=200,
                       help="held-out images evaluated at the end (default: 200)")
    train.add_argument("--checkpoint-every", type=int, default=250)
    train.add_argument("--clip-norm", type=float, default=None,
                       help="clip the gradient's norm (default: 0.1 for the DETR models, "
                            "off for the anchor detectors)")
    train.add_argument("--backbone-from", default="",
                       help="a run folder whose trained backbone to start from")
    train.add_argument("--eval-every", type=int, default=0,
                       help="evaluate on 100 held-out images every N steps (AP curve)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run saved in --out")
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    evaluate = sub.add_parser("evaluate", help="COCO table of a trained run")
    evaluate.add_argument("run", help="a run folder written by scratchvision train")
    evaluate.add_argument("--tta", action="store_true",
                          help="fuse the predictions of an image pyramid (scales 1, 1.5, 2)")
    evaluate.add_argument("--images", type=int, default=None,
                          help="held-out images (default: the run's --eval-images)")

    detect = sub.add_parser("detect", help="draw a trained run's detections on an image")
    detect.add_argument("run", help="a run folder written by scratchvision train")
    detect.add_argument("image", help="an image file (PNG, JPEG, ...)")
    detect.add_argument("--out", required=True, help="the PNG to write")
    detect.add_argument("--threshold", type=float, default=0.3,
                        help="draw boxes scoring above this (default: 0.3)")

    from .exercises import EXERCISES

    exercise = sub.add_parser("exercise",
                              help="self-checking exercises: write a backward pass, check it")
    exercise_sub = exercise.add_subparsers(dest="exercise_command", required=True)
    exercise_sub.add_parser("list", help="the exercises, and the holes left in ./tutorials/")
    exercise_check = exercise_sub.add_parser(
        "check", help="run your exercise against the library and gradcheck")
    exercise_check.add_argument("name", choices=tuple(EXERCISES))
    exercise_check.add_argument("--file", default=None,
                                help="the file to check (default: "
                                     "./tutorials/exercises/NAME.py)")
    exercise_check.add_argument("--seed", type=int, default=0,
                                help="the random cases (default: 0)")
    return parser


def _train(args) -> int:
    from .models import DETR_MODELS
    from .training import RunError, TrainConfig, train

    set_prediction = args.model in DETR_MODELS
    lr = args.lr if args.lr is not None else (2e-4 if set_prediction else 1e-3)
    clip = args.clip_norm if args.clip_norm is not None else (0.1 if set_prediction else 0.0)
    try:
        config = TrainConfig(model=args.model, steps=args.steps, batch_size=args.batch_size,
                             lr=lr, seed=args.seed, backend=args.backend,
                             eval_images=args.eval_images,
                             checkpoint_every=args.checkpoint_every, clip_norm=clip,
                             eval_every=args.eval_every, backbone_from=args.backbone_from)
    except (ValueError, TypeError) as exc:
        raise RunError(str(exc)) from None
    metrics = train(config, args.out, resume=args.resume, progress=not args.quiet)
    print(json.dumps(metrics, indent=1))
    return 0


def _evaluate(args) -> int:
    from .training import evaluate_model, load_run

    model, config = load_run(args.run)
    print(evaluate_model(model, config, tta=args.tta, count=args.images).table())
    return 0


def _detect(args) -> int:
    from .data import CLASSES
    from .training import draw_detections, load_run, read_image

    model, _ = load_run(args.run)
    image = read_image(args.image)
    detections = model.predict(image[None])[0]
    drawn = draw_detections(image, detections, args.out, CLASSES, args.threshold)
    print(f"{drawn} detections above {args.threshold} drawn to {args.out}")
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check":
        from . import selfcheck

        unknown = sorted(set(args.ops) - set(CHECK_SUITES))
        if unknown:
            raise SystemExit(f"scratchvision check: unknown op {unknown[0]!r}; "
                             f"choose from {', '.join(CHECK_SUITES)}")
        if args.cases < 1:
            raise SystemExit(f"--cases must be positive, got {args.cases}")
        return selfcheck.main(args.ops or list(CHECK_SUITES), args.backends or list(TIERS),
                              args.json, args.cases)
    if args.command == "exercise":
        from . import exercises

        return exercises.main(args.exercise_command, getattr(args, "name", None),
                              getattr(args, "file", None), getattr(args, "seed", 0))
    if args.command in ("train", "evaluate", "detect"):
        from .training import RunError

        try:
            return {"train": _train, "evaluate": _evaluate, "detect": _detect}[
                args.command](args)
        except RunError as exc:
            print(f"scratchvision {args.command}: {exc}", file=sys.stderr)
            return 2
    from . import benchmark

    if args.runs < 1:
        raise SystemExit(f"--runs must be positive, got {args.runs}")
    if args.limits:
        from .verify.machine import machine_limits

        limits = machine_limits()
        print(json.dumps(limits) if args.json else
              f"memory bandwidth (triad): {limits['bandwidth_gb_s']:.1f} GB/s; float32 matrix "
              f"products (2048³, NumPy's BLAS): {limits['sgemm_gflop_s']:.0f} GFLOP/s")
        return 0
    return benchmark.main(args.op, args.json, args.quick, args.runs, args.device_resident)
