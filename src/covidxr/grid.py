"""``covidxr grid``: backbones [× feature layers] × imbalance strategies × group-wise folds, and one comparison.
Must not score or draw by itself: runs come from :mod:`covidxr.train`, figures from
:mod:`covidxr.evaluation.pooling`, :mod:`covidxr.reports` and :mod:`covidxr.figures`.

:func:`run_grid` trains every combination by :func:`run_combination` (``covidxr.train.train`` per
run, ``keras.backend.clear_session()`` after each), in one process or one Ray task per run
(:mod:`covidxr.executors`), all run folders under ``OUT/runs/``, then writes the comparison::

    OUT/grid.json          the grid's options (checked when the grid is started again) and its
                           ``selection``: the configuration chosen on mean validation ROC AUC
    OUT/runs/...           one run folder per backbone × feature layer × strategy × fold
    OUT/comparison.csv     folds pooled: one row per backbone × feature layer × strategy × level
                           (image, patient)
    OUT/comparison.md      the configuration chosen on validation with its pooled test figures,
                           then the descriptive pooled and per-run tables
    OUT/comparison.png     the pooled metrics with their intervals
    OUT/runs.csv           the per-run table (each run's own test part)

**Resuming.** Started again with the same ``out``, a grid continues where it stopped: a
combination counts as done when ``OUT/runs/`` holds a finished run folder (``config.json``
marked finished, ``model.keras``, ``predictions.csv``, ``metrics.json``) whose options match
that combination. The run that was interrupted is continued from its last finished epoch
(:func:`covidxr.train.resume`); a folder killed before it wrote its ``config.json`` is left
where it is and a new run is made. Starting again with different training options is
refused, naming the options that differ; the comparison settings (``n_bootstrap``,
threshold method) may change, since they do not touch the runs. ``views`` is compared in one
canonical form (``frontal`` and the explicit list of frontal views are the same value), so a
grid started from the command line can be resumed from the notebook and the reverse.

**Two grids on one folder** (two terminals, two nodes sharing ``out``) never train a combination twice:
each combination is held by one process (``OUT/.locks/``, :mod:`covidxr.locks`); a grid skips those another
process holds and comes back to them after the others, waiting, then keeps the run that process made.

**Feature layers** (``feature_layers``, ``--feature-layers a,b``) are an axis like backbones: each
is a layer of every backbone of the grid (``"none"``: the whole backbone); without the axis every
run uses the base configuration's ``feature_layer`` (default: the whole backbone).

**Pooling folds** and scoring: :mod:`covidxr.evaluation.pooling`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from . import __version__
from .atomic import write_json
from .config import TrainConfig, check_config, grid_folds, load_frame
from .data import SPLIT_VERSION, resolve_data_dir, views_key
from .data.groups import group_column
from .data.splits import describe_groups
from .evaluate import write_grid_comparison
from .evaluation import grid_comparison, grid_selection
from .executors import check_executor, limit_threads, run_jobs, run_threads
from .images import resolve_cache_dir
from .locks import LockHeld, acquire
from .models import BACKBONES, check_feature_layer, get_backbone, normalize_feature_layer
from .sampling import STRATEGIES
from .tracking import child_tracking, log_grid_end, open_grid_tracking
from .train import resume, train
from .weights import SOURCES

__all__ = [
    "GRID_FILE",
    "IGNORED_OPTIONS",
    "GridRunsFailed",
    "combinations",
    "find_runs",
    "run_combination",
    "run_grid",
    "write_grid_comparison",
]

#: The grid's options, written when the grid starts.
GRID_FILE = "grid.json"
#: Files a run folder must hold to count as finished.
RUN_ARTIFACTS = ("config.json", "model.keras", "predictions.csv", "metrics.json")
#: Options set per combination by the grid (not part of the base configuration).
VARIED_OPTIONS = ("backbone", "feature_layer", "strategy", "fold", "folds")
#: Options that change neither the data nor the model: may differ when a grid is resumed.
IGNORED_OPTIONS = ("runs_dir", "run_name", "verbose", "cache_dir", "memory_check", "checkpoint_every",
                   "tensorboard", "feature_store", "workers")


class GridRunsFailed(RuntimeError):
    """Some runs of a grid failed; the comparison covers the others. ``failures``: one dict per failed
    combination (``backbone``, ``feature_layer``, ``strategy``, ``fold``, ``error``)."""

    def __init__(self, out, failures, finished):
        self.out, self.failures = Path(out), list(failures)
        listed = "; ".join(f"{f['backbone']}{':' + f['feature_layer'] if f['feature_layer'] else ''} / "
                           f"{f['strategy']} / fold {f['fold']}: {f['error']}" for f in self.failures)
        tables = (f"the comparison covers the {finished} finished run(s): {self.out / 'comparison.md'}" if finished
                  else "no run finished, no comparison written")
        super().__init__(f"{len(self.failures)} run(s) of the grid failed ({listed}); {tables}; run the same "
                         f"command again to retry them (finished runs are kept)")


def _split_names(value, *, name, valid) -> list[str]:
    if isinstance(value, str):
        value = [v for v in (s.strip() for s in value.split(",")) if v]
    items = [str(v) for v in (value or [])]
    if not items:
        raise ValueError(f"Expected at least one of {list(valid)}. Received: {name}={value!r}")
    bad = [v for v in items if v not in valid]
    if bad:
        raise ValueError(f"Unknown {name}. Expected a comma-separated list of {list(valid)}. Received: {name}={bad}")
    if len(set(items)) != len(items):
        raise ValueError(f"Expected each of {name} once. Received: {name}={items}")
    return items


def combinations(backbones, strategies, folds, feature_layers=(None,)) -> list[dict]:
    """Every ``{"backbone", "feature_layer", "strategy", "fold"}`` of the grid: backbone outermost, then
    feature layer and strategy, fold innermost."""
    return [{"backbone": b, "feature_layer": layer, "strategy": s, "fold": f}
            for b in backbones for layer in feature_layers for s in strategies for f in range(folds)]


def _feature_layers(value, *, backbones, default=None) -> list[str | None]:
    """The grid's feature-layer axis: ``value`` (a list or a comma-separated string; ``"none"`` = the
    whole backbone), or ``[default]`` when None; each one checked against every backbone."""
    if value is None:
        layers = [normalize_feature_layer(default)]
    else:
        items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
        layers = [normalize_feature_layer(v) for v in items]
        if not layers or (isinstance(value, str) and not value.strip()):
            raise ValueError(f"Expected at least one feature layer (or 'none'). Received: feature_layers={value!r}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"Expected each of feature_layers once. Received: feature_layers={layers}")
    bad = []
    for backbone in backbones:
        for layer in layers:
            try:
                check_feature_layer(backbone, layer)
            except ValueError:
                bad.append(f"{layer!r} is not a layer of {backbone!r} (its candidates: "
                           f"{list(get_backbone(backbone).feature_layers)})")
    if bad:
        raise ValueError(f"Expected every feature layer to be a layer of every backbone of the grid; "
                         f"{'; '.join(bad)}. Received: feature_layers={layers}, backbones={list(backbones)}")
    return layers


def _comparable(options: dict) -> dict:
    """Options as the grid compares them: ``views`` in one canonical form, so that "frontal" and
    the explicit list of frontal views (the notebook's and the command line's defaults) agree; the
    data folder and a weights file as absolute paths (a grid from before keeps its relative ones)."""
    options = dict(options)
    if options.get("views") is not None:
        options["views"] = views_key(options["views"])
    if "data_dir" in options:
        options["data_dir"] = os.path.abspath(resolve_data_dir(options["data_dir"]))
    weights = options.get("weights")
    if weights is not None and str(weights).strip().lower() not in SOURCES:
        options["weights"] = os.path.abspath(os.path.expanduser(str(weights)))
    return options


def _training_options(config: TrainConfig) -> dict:
    """The options that define a run's data and model, minus those the grid varies."""
    return _comparable({k: v for k, v in config.to_dict().items() if k not in (*VARIED_OPTIONS, *IGNORED_OPTIONS)})


def _grid_record(config, backbones, strategies, folds, feature_layers=(None,)) -> dict:
    return {"backbones": list(backbones), "feature_layers": list(feature_layers), "strategies": list(strategies),
            "folds": int(folds), "split_version": SPLIT_VERSION, "options": _training_options(config)}


def _differences(old: dict, new: dict) -> list[str]:
    diffs = []
    for key in ("backbones", "feature_layers", "strategies", "folds"):
        stored = old.get(key, [None] if key == "feature_layers" else None)  # grids from before the axis
        if stored != new[key]:
            diffs.append(f"{key}: {stored!r} -> {new[key]!r}")
    old_opts, new_opts = _comparable(old.get("options", {})), new["options"]
    for key in sorted(set(old_opts) | set(new_opts)):
        if old_opts.get(key, "<unset>") != new_opts.get(key, "<unset>"):
            diffs.append(f"{key}: {old_opts.get(key, '<unset>')!r} -> {new_opts.get(key, '<unset>')!r}")
    return diffs

def _check_folds(frame: pd.DataFrame, folds: int, task: str) -> None:
    """Every class needs at least ``folds`` split groups (patients merged by shared images, or sources)."""
    column = group_column(frame)
    groups = frame.groupby("label")[column].nunique()
    fewest = groups.idxmin()
    if int(groups.min()) < int(folds):
        hint = (" Task 'covid-vs-normal' has few normal patients: use fewer folds or task 'covid-vs-rest'."
                if task == "covid-vs-normal" else "")
        raise ValueError(
            f"Too few patients for {folds} group-wise folds: class {fewest!r} has "
            f"{int(groups.min())} split groups (patients merged by shared images, or sources) and every class "
            f"needs at least one per fold.{hint} Received: folds={folds}, {describe_groups(frame, column)}"
        )


def _matches(run_config: dict, expected: TrainConfig) -> bool:
    try:
        found = TrainConfig.from_dict(run_config)
    except TypeError:
        return False
    want = _comparable(expected.to_dict())
    have = _comparable(found.to_dict())
    return all(have[k] == want[k] for k in want if k not in IGNORED_OPTIONS)


def find_runs(runs_dir, config: TrainConfig, *, finished=True) -> list[Path]:
    """Run folders in ``runs_dir`` made with exactly ``config``'s options.

    A folder counts when its ``config.json`` matches ``config`` on every option except
    :data:`IGNORED_OPTIONS` and, with ``finished=True``, it holds :data:`RUN_ARTIFACTS` and is
    marked finished; ``finished=False`` gives the interrupted ones instead (for
    :func:`covidxr.train.resume`). Sorted by name (oldest first).
    """
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    found = []
    for run in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            run_config = json.loads((run / "config.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(run_config, dict) or not _matches(run_config, config):
            continue
        complete = bool(run_config.get("finished")) and all((run / name).is_file() for name in RUN_ARTIFACTS)
        if complete == finished:
            found.append(run)
    return found


def run_grid(base_config: TrainConfig, *, out, backbones=("resnet50", "vgg16", "vgg19"),
             strategies=("none", "class-weight", "oversample", "undersample"), folds=None, n_bootstrap=1000,
             threshold_method="youden", target_sensitivity=None, clear_session=True, progress=True,
             feature_layers=None, executor="local", ray_address=None, cpus_per_run=None, gpus_per_run=None,
             max_retries=3, mlflow=None) -> Path:
    """Train every backbone × feature layer × strategy × fold into ``out/runs`` and write the comparison.

    Every combination is one call of :func:`run_combination`: one after the other in this process
    (``executor="local"``) or one Ray task each (``"ray"``, :mod:`covidxr.executors`). Runs that a
    previous, interrupted call with the same ``out`` finished are kept and not trained again, and
    interrupted ones are continued (see the module docstring). A run that fails is reported and
    the others go on; the comparison covers the finished runs, then :class:`GridRunsFailed` is raised.

    Args:
        base_config: Every other training option (data, image size, epochs, weights ...);
            its ``backbone``, ``strategy``, ``folds``, ``fold``, ``runs_dir`` and
            ``run_name`` (and ``feature_layer`` with ``feature_layers``) are set by the grid.
            ``split_file`` must be None.
        out: The grid folder (made if missing).
        backbones: Backbone names, a list or a comma-separated string.
        strategies: Imbalance strategies (:data:`covidxr.sampling.STRATEGIES`).
        folds: Patient-grouped folds (>= 2; None: 5; with ``official_split`` None, one run each:
            :func:`covidxr.config.grid_folds`); every class needs at least ``folds`` patients.
        n_bootstrap: Patient bootstrap resamples of the comparison.
        threshold_method, target_sensitivity: How each run's threshold is chosen on its
            validation part.
        clear_session: Call ``keras.backend.clear_session()`` after each run (frees the
            previous models' graphs and memory).
        progress: Print one line per finished run and the count of done, running and failed runs.
        feature_layers: Feature layers as a grid axis (a list or a comma-separated string;
            ``"none"``/None in it: the whole backbone), each a layer of every backbone; None: no
            axis, every run uses ``base_config.feature_layer``.
        executor, ray_address, cpus_per_run, gpus_per_run, max_retries: Where the runs go
            (:func:`covidxr.executors.check_executor`); not part of the options a resumed grid
            must match.
        mlflow: A tracking URI: the grid is an MLflow parent run (``grid.json["mlflow"]``) with one
            child run per combination, each started inside its combination's training call
            (:mod:`covidxr.tracking`). A grid tracked before is continued in its parent run.

    Returns:
        The grid folder ``out``.

    Raises:
        ValueError: Bad options, a feature layer that is not a layer of some backbone (named),
            too few patients for the folds, ``out`` holds a grid with other options (the
            message names them), or Ray missing, unreachable, too small or not sharing ``out``.
        FileNotFoundError: Missing dataset or weights file.
        GridRunsFailed: Some runs failed (after the comparison of the others was written).
    """
    options = check_executor(executor, ray_address=ray_address, cpus_per_run=cpus_per_run,
                             gpus_per_run=gpus_per_run, max_retries=max_retries)
    folds = grid_folds(base_config, folds)
    base, configs, backbones, strategies, layers = _grid_configs(
        base_config, out=out, backbones=backbones, strategies=strategies, folds=folds, n_bootstrap=n_bootstrap,
        feature_layers=feature_layers)
    out = Path(base.runs_dir).parent
    record = _open_record(out / GRID_FILE, _grid_record(base, backbones, strategies, int(folds), layers), out=out)
    _check_folds(load_frame(base), int(folds), base.task)
    record["covidxr_version"] = __version__
    record["comparison"] = {"n_bootstrap": int(n_bootstrap), "seed": int(base.seed), "level": 0.95,
                            "threshold_method": threshold_method, "target_sensitivity": target_sensitivity}
    record["executor"] = options
    out.mkdir(parents=True, exist_ok=True)
    parent = open_grid_tracking(mlflow, record=record, out=out)
    if parent is not None:
        record["mlflow"] = parent.record
    write_json(out / GRID_FILE, record)

    finished, failures = _run_all(configs, record=record, out=out, options=options, progress=progress,
                                  clear_session=clear_session, tracking=child_tracking(parent))
    _finish(record, finished, failures, out=out, parent=parent, n_bootstrap=n_bootstrap, seed=base.seed,
            threshold_method=threshold_method, target_sensitivity=target_sensitivity)
    if progress:
        print(f"wrote {out / 'comparison.md'}", flush=True)
    return out


def _finish(record, finished, failures, *, out, parent, n_bootstrap, seed, threshold_method, target_sensitivity):
    """The comparison of the finished runs, the grid record, the MLflow parent's end; raises
    :class:`GridRunsFailed` when some runs failed (after writing what the others give)."""
    record["runs"] = [p.name for p in finished]
    record["failures"] = failures
    written = []
    if finished:
        pooled, per_run = grid_comparison(finished, n_bootstrap=n_bootstrap, seed=seed,
                                          threshold_method=threshold_method, target_sensitivity=target_sensitivity)
        record["selection"] = grid_selection(pooled)
        written = write_grid_comparison(pooled, per_run, out, record=record)
    if not failures:
        record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_json(out / GRID_FILE, record)
    if failures:
        if parent is not None:
            parent.set_status("FAILED")  # a rerun continues it
        raise GridRunsFailed(out, failures, len(finished))
    log_grid_end(parent, record=record, files=[*written, out / GRID_FILE])


def _run_all(configs, *, record, out, options, progress, clear_session, tracking=None) -> tuple[list[Path], list[dict]]:
    """Every combination through the executor; the finished run folders (in grid order) and the failures.
    The driver alone writes ``grid.json`` (a timing per run trained or continued); ``tracking`` (the
    grid's MLflow parent, picklable) goes to every combination."""
    labels = []
    for k, config in enumerate(configs, start=1):
        layer = f":{config.feature_layer}" if config.feature_layer else ""
        labels.append(f"[{k}/{len(configs)}] {config.backbone}{layer} / {config.strategy} / fold {config.fold}")
    jobs = [{"config": config.to_dict(), "threads": run_threads(options), "label": label, "progress": progress,
             "clear_session": clear_session, "tracking": tracking, "wait": False}
            for config, label in zip(configs, labels)]

    def on_result(index, outcome):
        result, config = outcome.result, configs[index]
        if result is None or result["how"] in ("kept", "held"):
            return
        record.setdefault("timings", []).append({
            "backbone": config.backbone, "feature_layer": config.feature_layer, "strategy": config.strategy,
            "fold": config.fold, "run": Path(result["run"]).name, "seconds": result["seconds"]})
        write_json(out / GRID_FILE, record)

    base = configs[0]
    outcomes = run_jobs(run_combination, jobs, labels=labels, options=options, out=out, progress=progress,
                        on_result=on_result, writable=[base.runs_dir, base.cache_dir], readable=[base.data_dir])
    finished = [Path(o.result["run"]) for o in outcomes if o.result is not None]
    failures = [{"backbone": c.backbone, "feature_layer": c.feature_layer, "strategy": c.strategy, "fold": c.fold,
                 "error": o.error} for c, o in zip(configs, outcomes) if o.error is not None]
    return finished, failures


def _grid_configs(base_config, *, out, backbones, strategies, folds, n_bootstrap, feature_layers=None):
    """Check the grid's options and every combination's; return the base, one
    :class:`~covidxr.config.TrainConfig` per combination (backbone outermost, fold innermost), and
    the checked backbone, strategy and feature layer lists."""
    if isinstance(base_config, dict):
        base_config = TrainConfig.from_dict(base_config)
    if not isinstance(base_config, TrainConfig):
        raise ValueError(f"Expected a TrainConfig. Received: base_config={type(base_config).__name__}")
    backbones = _split_names(backbones, name="backbones", valid=sorted(BACKBONES))
    strategies = _split_names(strategies, name="strategies", valid=list(STRATEGIES))
    layers = _feature_layers(feature_layers, backbones=backbones, default=base_config.feature_layer)
    official = bool(base_config.official_split)
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < (1 if official else 2):
        raise ValueError(f"Expected folds to be an integer >= 2. Received: folds={folds!r}")
    if base_config.split_file:
        raise ValueError("Expected no split_file: a grid makes its own patient-grouped folds. "
                         f"Received: split_file={base_config.split_file!r}")
    if int(n_bootstrap) < 0:
        raise ValueError(f"Expected n_bootstrap >= 0. Received: n_bootstrap={n_bootstrap!r}")
    runs_dir = Path(os.path.abspath(Path(out).expanduser())) / "runs"  # every path absolute: runs may go to workers
    paths = {k: v for k, v in _comparable(base_config.to_dict()).items() if k in ("data_dir", "weights")}
    base = dataclasses.replace(base_config, runs_dir=str(runs_dir), run_name=None,
                               folds=None if official else int(folds), fold=0,
                               backbone=backbones[0], strategy=strategies[0], feature_layer=layers[0],
                               cache_dir=os.path.abspath(resolve_cache_dir(base_config.cache_dir)), **paths)
    configs = [dataclasses.replace(base, **combo) for combo in combinations(backbones, strategies, int(folds), layers)]
    for config in configs:  # every option checked before anything is trained
        check_config(config)
    return base, configs, backbones, strategies, layers


def _open_record(grid_file: Path, record: dict, *, out: Path) -> dict:
    """The grid's record: ``record`` for a new grid; for a grid started before, ``record`` with the
    stored creation time and timings, after checking that its options are the stored ones."""
    if not grid_file.is_file():
        record["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return record
    try:
        old = json.loads(grid_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"Expected a readable {GRID_FILE} in the grid folder ({err}). "
                         f"Received: out={str(out)!r}") from err
    if old.get("split_version") != record["split_version"]:
        raise ValueError(
            f"The grid folder holds a grid whose folds were made by other rules (split version "
            f"{old.get('split_version', 1)}; this covidxr makes version {record['split_version']}: groups of "
            f"patients that share an image, sampled per class); its runs cannot be continued with these folds. "
            f"Start a new --out. Received: out={str(out)!r}"
        )
    diffs = _differences(old, record)
    if diffs:
        raise ValueError(
            f"The grid folder holds a grid with other options; resume it with the same options or "
            f"choose a new --out. Differences (stored -> given): {'; '.join(diffs)}. Received: out={str(out)!r}"
        )
    record["created"] = old.get("created")
    record["timings"] = old.get("timings") or []
    if old.get("mlflow"):
        record["mlflow"] = old["mlflow"]
    return record


def run_combination(config, *, threads=None, label="", progress=True, clear_session=True, tracking=None,
                    wait=True) -> dict:
    """One combination of a grid: keep its finished run, continue its interrupted one, or train it.

    The one code path of both executors (a Ray task calls it in a worker): plain, picklable
    arguments, and it writes only into its own run folder (``config["runs_dir"]``).

    Args:
        config: The combination's :class:`~covidxr.config.TrainConfig` (or its dict), every path absolute.
        threads: CPU threads of the run (:func:`covidxr.executors.limit_threads`; None: the defaults).
        label: The combination's name in progress lines.
        progress: Print a line when an interrupted run is continued.
        clear_session: Call ``keras.backend.clear_session()`` after training.
        tracking: A picklable :class:`covidxr.tracking.Tracking` with the grid's parent run id: the
            combination's MLflow child run is made here, in the process that trains it (None: untracked).
        wait: When another process holds the combination (``OUT/.locks/``: a second grid on the same
            folder), wait for it; False: return at once with ``"how": "held"``.

    Returns:
        ``{"run": absolute run folder, "how": "kept" | "continued" | "trained", "seconds",
        "val_auc": the run's validation ROC AUC or None}``; held by another process (``wait=False``):
        ``{"run": None, "how": "held", "holder"}``.
    """
    config = TrainConfig.from_dict(config) if isinstance(config, dict) else config
    name = f"{config.backbone}-{config.feature_layer or 'whole'}-{config.strategy}-f{config.fold}"
    try:
        lock = acquire(Path(config.runs_dir).parent / ".locks" / f"{name}.lock", what=f"grid combination {name}",
                       wait=wait)
    except LockHeld as err:  # another grid process trains it: the executor comes back to it later
        holder = f"PID {err.holder.get('pid')} on {err.holder.get('host')}"
        return {"run": None, "how": "held", "seconds": 0.0, "val_auc": None, "holder": holder}
    with lock:
        return _run_held(config, threads=threads, label=label, progress=progress, clear_session=clear_session,
                         tracking=tracking)


def _run_held(config, *, threads, label, progress, clear_session, tracking) -> dict:
    """:func:`run_combination` once the combination is held by this process."""
    runs_dir = Path(config.runs_dir)
    done = find_runs(runs_dir, config)
    if done:
        return {"run": str(done[0]), "how": "kept", "seconds": 0.0, "val_auc": _val_auc(done[0])}
    limit_threads(threads)
    start = time.perf_counter()
    tracked = {} if tracking is None else {"mlflow": tracking}
    interrupted = find_runs(runs_dir, config, finished=False)
    try:
        if interrupted:
            if progress:
                print(f"{label}: continuing the interrupted run {interrupted[-1].name}", flush=True)
            run, how = resume(interrupted[-1], **tracked), "continued"
        else:
            run, how = train(config, **tracked), "trained"
    finally:
        if clear_session:
            keras.backend.clear_session()
    return {"run": str(Path(run).absolute()), "how": how, "seconds": round(time.perf_counter() - start, 1),
            "val_auc": _val_auc(Path(run))}


def _val_auc(run: Path) -> float | None:
    try:
        auc = json.loads((run / "metrics.json").read_text())["val"]["roc_auc"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(auc) if auc is not None and np.isfinite(auc) else None
