"""How long the full grid takes: train one fold of every backbone × strategy, extrapolate.

Runs ``covidxr.train.train`` for each backbone × strategy on fold 0 of ``--folds``
patient-grouped folds (fixed epochs: ``--patience`` larger than the epochs, so early stopping
never shortens a run), in one process as ``covidxr grid`` does, and prints each run's wall-time
breakdown from its ``config.json["timing"]``: compilation (first step of each fit), steady
steps, validation, checkpoints, prediction, the rest. The full grid's time is extrapolated as
``folds ×`` the measured one-fold time, with the compile time of the later folds taken from the
runs that reused an architecture (on JAX the persistent compilation cache serves them).

Usage (the GPU machine: JAX)::

    KERAS_BACKEND=jax python benchmarks/grid_time.py --data-dir DATA --cache-dir CACHE \\
        --image-size 224 --epochs 3 --fine-tune-epochs 3 --budget 540

``--budget`` (seconds) stops starting new runs when the next one would likely not finish in
time; the extrapolation then uses the backbones measured. The last line is
``full grid estimate: N s``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from covidxr.train import TrainConfig, train  # noqa: E402

PARTS = ("first_step_seconds", "steady_step_seconds", "validation_seconds", "checkpoint_seconds",
         "predict_seconds", "cache_seconds", "phase1_feature_seconds", "other_seconds")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--runs-dir", default=None, help="default: a temporary folder")
    parser.add_argument("--backbones", default="resnet50,vgg16,vgg19")
    parser.add_argument("--strategies", default="none,class-weight,oversample,undersample")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--fine-tune-epochs", type=int, default=3)
    parser.add_argument("--weights", default="none")
    parser.add_argument("--mixed-precision", default=None)
    parser.add_argument("--budget", type=float, default=None, help="seconds; stop starting runs after it")
    parser.add_argument("--json", default=None, help="write every figure to this file")
    args = parser.parse_args(argv)

    print(f"backend {keras.backend.backend()}, keras {keras.__version__}", flush=True)
    try:
        import jax

        print("devices:", ", ".join(str(d) for d in jax.devices()), flush=True)
    except ImportError:
        pass
    runs_dir = args.runs_dir or tempfile.mkdtemp(prefix="grid-time-")
    start_all = time.perf_counter()
    rows = []
    backbones = args.backbones.split(",")
    strategies = args.strategies.split(",")
    for backbone in backbones:
        for strategy in strategies:
            elapsed = time.perf_counter() - start_all
            if args.budget and rows and elapsed + 1.5 * max(r["wall_seconds"] for r in rows) > args.budget:
                print(f"budget: stopping after {len(rows)} runs ({elapsed:.0f} s)", flush=True)
                break
            config = TrainConfig(data_dir=args.data_dir, cache_dir=args.cache_dir, runs_dir=runs_dir,
                                 backbone=backbone, strategy=strategy, folds=args.folds, fold=0,
                                 image_size=args.image_size, batch_size=args.batch_size, epochs=args.epochs,
                                 fine_tune_epochs=args.fine_tune_epochs, patience=args.epochs + args.fine_tune_epochs + 1,
                                 weights=args.weights, mixed_precision=args.mixed_precision, verbose=0)
            start = time.perf_counter()
            run = train(config)
            outside = time.perf_counter() - start
            record = json.loads((run / "config.json").read_text())
            timing = record["timing"]
            metrics = json.loads((run / "metrics.json").read_text())
            row = {"backbone": backbone, "strategy": strategy, "call_seconds": round(outside, 2),
                   **{k: timing.get(k, 0.0) for k in (*PARTS, "wall_seconds", "train_steps")},
                   "test_roc_auc": metrics["test"]["roc_auc"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
        else:
            continue
        break

    print("\nper-run breakdown (seconds):")
    header = ["backbone", "strategy", "wall", "compile", "steady", "steps", "val", "ckpt", "predict", "other"]
    print(" | ".join(f"{h:>11}" for h in header))
    for r in rows:
        print(" | ".join(f"{v:>11}" for v in (r["backbone"], r["strategy"], r["wall_seconds"], r["first_step_seconds"],
                                              r["steady_step_seconds"], r["train_steps"], r["validation_seconds"],
                                              r["checkpoint_seconds"], r["predict_seconds"], r["other_seconds"])))
    total = sum(r["wall_seconds"] for r in rows)
    shares = {k: sum(r[k] for r in rows) / total for k in PARTS} if total else {}
    print("\nshare of the measured wall time: " + ", ".join(f"{k.replace('_seconds', '')} {v:.0%}"
                                                          for k, v in shares.items()))
    # Extrapolation: every backbone x strategy x fold; a backbone not measured counts as the mean.
    per_backbone = {}
    for r in rows:
        per_backbone.setdefault(r["backbone"], []).append(r)
    estimate = 0.0
    mean_run = total / len(rows) if rows else 0.0
    for backbone in backbones:
        measured = per_backbone.get(backbone)
        if not measured:
            estimate += mean_run * len(strategies) * args.folds
            continue
        later = measured[1:] or measured  # runs after the first of an architecture: compiled before
        later_run = sum(r["wall_seconds"] for r in later) / len(later)
        estimate += measured[0]["wall_seconds"] + later_run * (len(strategies) * args.folds - 1)
    print(f"\nmeasured {len(rows)} runs in {time.perf_counter() - start_all:.0f} s "
          f"({len(backbones)} backbones x {len(strategies)} strategies, fold 0 of {args.folds})")
    print(f"full grid estimate: {estimate:.0f} s ({estimate / 60:.1f} min) for "
          f"{len(backbones) * len(strategies) * args.folds} runs")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"rows": rows, "estimate_seconds": estimate, "args": vars(args)}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
