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

**With and without the frozen-feature store** (``--feature-store-compare``): the first backbone
× every strategy × ``--folds`` folds as a real ``covidxr grid`` (:func:`covidxr.grid.run_grid`),
twice in one process: ``--no-feature-store`` (every run computes its phase-1 features), then with
the store (the first run computes them for every cached image, the others read them). Both use a
fresh cache folder whose image cache is built before the clock starts; ``--subset K`` keeps every
K-th patient of a metadata-layout dataset (copied to a temporary folder). Prints each grid's wall
time and its runs' phase-1 feature seconds, and the ratios (without / with) of process CPU-seconds and, last, ``ratio: N.NN`` of wall time::

    python benchmarks/grid_time.py --feature-store-compare --data-dir DATA --backbones resnet50 \
        --folds 3 --image-size 224 --epochs 3 --fine-tune-epochs 0 --subset 3
"""

from __future__ import annotations

import argparse
import dataclasses
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
    parser.add_argument("--feature-store-compare", action="store_true",
                        help="time a grid of the first backbone without and with the frozen-feature store")
    parser.add_argument("--subset", type=int, default=1, help="--feature-store-compare: every K-th patient")
    args = parser.parse_args(argv)
    if args.feature_store_compare:
        return compare_store(args)

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


def _subset(data_dir, every) -> str:
    """A copy of every ``every``-th patient of a metadata-layout dataset (rows and images)."""
    import shutil

    import pandas as pd

    if every <= 1:
        return data_dir
    meta = pd.read_csv(os.path.join(data_dir, "metadata.csv"))
    patients = sorted(meta["patientid"].astype(str).unique())
    meta = meta[meta["patientid"].astype(str).isin(patients[::every])]
    out = tempfile.mkdtemp(prefix="grid-time-data-")
    os.makedirs(os.path.join(out, "images"))
    for name in meta["filename"]:
        source = os.path.join(data_dir, "images", str(name))
        if os.path.isfile(source):
            shutil.copy(source, os.path.join(out, "images", str(name)))
    meta.to_csv(os.path.join(out, "metadata.csv"), index=False)
    return out


def compare_store(args) -> int:
    """One backbone × every strategy × ``--folds`` folds, without and with the feature store."""
    from covidxr.config import load_frame
    from covidxr.grid import run_grid
    from covidxr.images import build_cache

    data_dir = _subset(args.data_dir, args.subset)
    cache_dir = tempfile.mkdtemp(prefix="grid-time-cache-")
    root = args.runs_dir or tempfile.mkdtemp(prefix="grid-time-")
    backbone, strategies = args.backbones.split(",")[0], args.strategies.split(",")
    base = TrainConfig(data_dir=data_dir, cache_dir=cache_dir, image_size=args.image_size, batch_size=args.batch_size,
                       epochs=args.epochs, fine_tune_epochs=args.fine_tune_epochs,
                       patience=args.epochs + args.fine_tune_epochs + 1, weights=args.weights,
                       mixed_precision=args.mixed_precision, verbose=0)
    frame = load_frame(base)
    build_cache(frame, image_size=args.image_size, resize=base.resize, contrast=base.contrast,
                cache_dir=cache_dir, progress=False)  # the image cache, before the clock starts
    print(f"{len(frame)} images, {frame['patient'].nunique()} patients; {backbone} x {len(strategies)} strategies x "
          f"{args.folds} folds at {args.image_size} px, epochs {args.epochs} + {args.fine_tune_epochs}", flush=True)
    results = {}
    for store in (False, True):
        config = dataclasses.replace(base, feature_store=store)
        start, cpu = time.perf_counter(), time.process_time()
        out = run_grid(config, out=os.path.join(root, f"store-{'on' if store else 'off'}"), backbones=[backbone],
                       strategies=strategies, folds=args.folds, n_bootstrap=100, progress=True)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        runs = [json.loads((out / "runs" / name / "config.json").read_text())
                for name in json.loads((out / "grid.json").read_text())["runs"]]
        features = sum(r["timing"].get("phase1_feature_seconds", 0.0) for r in runs)
        results[store] = {"wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
                          "feature_seconds": round(features, 1),
                          "run_seconds": [r["timing"]["wall_seconds"] for r in runs]}
        print(f"feature store {'on ' if store else 'off'}: grid {wall:.0f} s ({cpu:.0f} process CPU-s), phase-1 "
              f"features {features:.0f} s ({features / wall:.0%}) over {len(runs)} runs", flush=True)
    import shutil

    shutil.rmtree(cache_dir, ignore_errors=True)  # temporary: the image cache and the store
    if data_dir != args.data_dir:
        shutil.rmtree(data_dir, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"results": {str(k): v for k, v in results.items()}, "args": vars(args)}, handle, indent=2)
    print(f"CPU-seconds ratio: {results[False]['cpu_seconds'] / results[True]['cpu_seconds']:.2f}")
    print(f"ratio: {results[False]['wall_seconds'] / results[True]['wall_seconds']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
