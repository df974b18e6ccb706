"""The same small grid on ``--executor local`` and ``--executor ray``: wall times and their ratio.

Runs ``covidxr.grid.run_grid`` twice on one dataset with one image cache (built by a first, untimed
run of one combination, so neither executor decodes images): once locally, once on a local Ray
instance started here with ``--num-cpus`` CPUs, ``--cpus-per-run`` each (so ``num_cpus //
cpus_per_run`` runs at a time). Prints Ray's start-up (``ray.init``), the time to a first finished
trivial task on a fresh worker (worker start-up, no TensorFlow), each grid's wall time and the last
line ``ratio: N.N`` (local / Ray; above 1: Ray was faster).

Usage::

    python benchmarks/grid_ray.py --data-dir DATA --backbones vgg16 --strategies none,oversample --folds 2 \\
        --image-size 32 --num-cpus 2 --cpus-per-run 1
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from covidxr import grid  # noqa: E402
from covidxr.train import TrainConfig  # noqa: E402


def _pid() -> int:
    return os.getpid()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--backbones", default="vgg16")
    p.add_argument("--strategies", default="none,oversample")
    p.add_argument("--folds", type=int, default=2)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1)
    p.add_argument("--cpus-per-run", type=int, default=1)
    p.add_argument("--work-dir", default=None, help="folder for the grids and the cache (default: a temporary one)")
    args = p.parse_args(argv)
    import ray

    root = Path(args.work_dir or tempfile.mkdtemp(prefix="covidxr-grid-ray-"))
    base = TrainConfig(data_dir=args.data_dir, weights="none", image_size=args.image_size, batch_size=16,
                       epochs=args.epochs, fine_tune_epochs=0, cache_dir=str(root / "cache"), verbose=0,
                       val_size=0.3, allow_small_validation=True)
    options = dict(backbones=args.backbones, strategies=args.strategies, folds=args.folds, n_bootstrap=20,
                   cpus_per_run=args.cpus_per_run)
    first = args.backbones.split(",")[0]
    with contextlib.redirect_stdout(io.StringIO()):  # the cache, untimed
        grid.run_grid(base, out=root / "warm", backbones=first, strategies="none", folds=args.folds, n_bootstrap=0,
                      progress=False)
    start = time.perf_counter()
    grid.run_grid(base, out=root / "local", progress=False, **options)
    local = time.perf_counter() - start

    start = time.perf_counter()
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level="WARNING")
    init = time.perf_counter() - start
    start = time.perf_counter()
    ray.get(ray.remote(_pid).remote())
    worker = time.perf_counter() - start
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        grid.run_grid(base, out=root / "ray", executor="ray", **options)
    on_ray = time.perf_counter() - start
    ray.shutdown()
    runs = len(grid.combinations(args.backbones.split(","), args.strategies.split(","), args.folds))
    print(f"{runs} runs, {args.num_cpus} CPUs, {args.cpus_per_run} per run, {args.image_size} px")
    print(f"ray.init: {init:.1f} s; first trivial task (worker start-up): {worker:.1f} s")
    print(f"local: {local:.1f} s ({local / runs:.1f} s per run)")
    print(f"ray:   {on_ray:.1f} s ({on_ray / runs:.1f} s per run, workers import TensorFlow once each)")
    print(f"ratio: {local / on_ray:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
