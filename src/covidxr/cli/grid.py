"""The ``grid`` command: every backbone x strategy x fold (locally or as Ray tasks), then one
comparison. Parses options and calls :func:`covidxr.grid.run_grid`, nothing else."""

from __future__ import annotations

import sys

from .options import add_train_options, config_values, mlflow_uri

__all__ = ["add_grid", "run_grid"]


def add_grid(sub):
    p = sub.add_parser(
        "grid", help="train backbones x strategies x patient-grouped folds, then one comparison",
        description="Trains every backbone [x feature layer] x imbalance strategy x fold (patient-grouped, stratified "
                    "k-fold) in one process (--executor ray: one Ray task per run) into OUT/runs/, then writes "
                    "OUT/comparison.csv/.md/.png "
                    "(test predictions of all folds pooled per backbone x strategy, each fold deciding "
                    "at its own validation threshold, patient-bootstrap CIs) and OUT/runs.csv. Started "
                    "again with the same --out and options, it continues where it stopped. Every class "
                    "needs at least --folds patients: task covid-vs-normal has few normal patients "
                    "(16 in the 2020 snapshot), so use covid-vs-rest (default) or few folds.")
    g = p.add_argument_group("grid")
    g.add_argument("--backbones", default="resnet50,vgg16,vgg19",
                   help="comma-separated backbones (default: resnet50,vgg16,vgg19)")
    g.add_argument("--feature-layers", default=None, metavar="A,B",
                   help="comma-separated feature layers as a grid axis (see train --feature-layer; 'none' = the "
                        "whole backbone); each must be a layer of every backbone (default: no axis, whole backbones)")
    g.add_argument("--strategies", default="none,class-weight,oversample,undersample",
                   help="comma-separated imbalance strategies (default: all four)")
    g.add_argument("--folds", type=int, default=None,
                   help="patient-grouped folds (default: 5; none with --official-split: one run per combination)")
    g.add_argument("--out", required=True, help="grid folder (runs/, grid.json, comparison files)")
    g.add_argument("--n-bootstrap", type=int, default=1000, help="patient bootstrap resamples")
    g.add_argument("--threshold-method", default="youden", choices=["youden", "sensitivity"],
                   help="how each fold's threshold is chosen on its validation part (default: youden)")
    g.add_argument("--target-sensitivity", type=float, default=None,
                   help="with --threshold-method sensitivity: the validation sensitivity to reach (default: none)")
    x = p.add_argument_group("executor (where the runs go; may change when a grid is resumed)")
    x.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="local: every run in this process, one after the other; ray: one Ray task per run on a "
                        "local Ray instance or a cluster (default: local)")
    x.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="'auto' or HOST:PORT of a running Ray cluster (default: start a local Ray instance)")
    x.add_argument("--cpus-per-run", type=float, default=None,
                   help="CPUs (and threads) per run (default: 1 on Ray; locally the libraries' defaults)")
    x.add_argument("--gpus-per-run", type=float, default=None,
                   help="Ray: GPUs per run, e.g. 1 for one run per GPU, 0.5 for two (default: 0)")
    x.add_argument("--max-retries", type=int, default=3,
                   help="Ray: restarts of a run whose worker died (killed, node lost); the restart continues "
                        "from the run's checkpoint; a run's own errors are not retried (default: 3)")
    add_train_options(p, grid=True)


def run_grid(args):
    from .. import grid
    from ..config import TrainConfig

    values = config_values(args, leave_out={"backbone", "strategy", "folds", "fold", "split_file", "runs_dir",
                                             "run_name", "feature_layer"})
    cpus = None if args.cpus_per_run is None else _whole(args.cpus_per_run)
    try:
        out = grid.run_grid(TrainConfig(**values), out=args.out, backbones=args.backbones,
                            strategies=args.strategies, feature_layers=args.feature_layers, folds=args.folds,
                            n_bootstrap=args.n_bootstrap, threshold_method=args.threshold_method,
                            target_sensitivity=args.target_sensitivity, mlflow=mlflow_uri(args),
                            executor=args.executor, ray_address=args.ray_address, cpus_per_run=cpus,
                            gpus_per_run=None if args.gpus_per_run is None else _whole(args.gpus_per_run),
                            max_retries=args.max_retries)
    except grid.GridRunsFailed as err:
        print(f"covidxr grid: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


def _whole(value: float):
    """``1.0`` as 1 (Ray and the grid record show whole numbers as such), fractions as they are."""
    return int(value) if float(value).is_integer() else value
