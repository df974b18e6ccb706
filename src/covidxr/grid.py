"""A grid of runs: backbones × imbalance strategies × patient-grouped folds, and one comparison.

:func:`run_grid` trains every combination in one process (``covidxr.train.train`` per run,
``keras.backend.clear_session()`` between runs), all run folders under ``OUT/runs/``, then
writes the comparison::

    OUT/grid.json          the grid's options (checked when the grid is started again)
    OUT/runs/...           one run folder per backbone × strategy × fold
    OUT/comparison.csv     folds pooled: one row per backbone × strategy × level (image, patient)
    OUT/comparison.md      the pooled table, then the per-run table
    OUT/comparison.png     the pooled metrics with their intervals
    OUT/runs.csv           the per-run table (each run's own test part)

**Resuming.** Started again with the same ``out``, a grid continues where it stopped: a
combination counts as done when ``OUT/runs/`` holds a finished run folder (``config.json``
marked finished, ``model.keras``, ``predictions.csv``, ``metrics.json``) whose options match
that combination. The run that was interrupted is continued from its last finished epoch
(:func:`covidxr.train.resume`); a folder killed before it wrote its ``config.json`` is left
where it is and a new run is made. Starting again with different training options is
refused, naming the options that differ; the comparison settings (``n_bootstrap``,
threshold method) may change, since they do not touch the runs.

**Pooling folds.** The test parts of the ``k`` folds are disjoint and together hold every
patient once, so the test predictions of all folds of one backbone × strategy are pooled
into one frame and scored once, rather than averaging k small-sample figures:

* Decisions (sensitivity, specificity, PPV, NPV, F1, balanced accuracy, MCC, accuracy) use
  **each fold's own threshold**, chosen on that fold's validation part (Youden's J by
  default) — exactly the decision each fold's model would make; nothing is tuned on test data.
* Threshold-free figures (ROC AUC, PR AUC, Brier) rank or score the pooled probabilities of
  models from different folds together; models whose output scales differ lower the pooled
  AUC a little compared with the per-fold mean (the per-run table shows the per-fold values).
* Confidence intervals: percentile bootstrap over **patients** of the pooled frame (as
  :mod:`covidxr.metrics`); per-patient figures use the mean probability over a patient's
  images and the threshold of the fold that patient was tested in.

Three-class tasks decide by arg-max, so no threshold is involved there.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from . import RESEARCH_ONLY, __version__
from . import metrics as M
from .atomic import write_json, write_text
from .train import TrainConfig, resume, train

__all__ = [
    "GRID_FILE",
    "IGNORED_OPTIONS",
    "combinations",
    "find_runs",
    "grid_comparison",
    "pooled_metrics",
    "run_grid",
    "write_grid_comparison",
]

logger = logging.getLogger("covidxr.grid")

#: The grid's options, written when the grid starts.
GRID_FILE = "grid.json"
#: Files a run folder must hold to count as finished.
RUN_ARTIFACTS = ("config.json", "model.keras", "predictions.csv", "metrics.json")
#: Options set per combination by the grid (not part of the base configuration).
VARIED_OPTIONS = ("backbone", "strategy", "fold", "folds")
#: Options that change neither the data nor the model: may differ when a grid is resumed.
IGNORED_OPTIONS = ("runs_dir", "run_name", "verbose", "cache_dir", "memory_check")


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


def combinations(backbones, strategies, folds) -> list[dict]:
    """Every ``{"backbone", "strategy", "fold"}`` of the grid, backbone outermost, fold innermost."""
    return [{"backbone": b, "strategy": s, "fold": f} for b in backbones for s in strategies for f in range(folds)]


def _training_options(config: TrainConfig) -> dict:
    """The options that define a run's data and model, minus those the grid varies."""
    return {k: v for k, v in config.to_dict().items() if k not in (*VARIED_OPTIONS, *IGNORED_OPTIONS)}


def _grid_record(config, backbones, strategies, folds) -> dict:
    return {"backbones": list(backbones), "strategies": list(strategies), "folds": int(folds),
            "options": _training_options(config)}


def _differences(old: dict, new: dict) -> list[str]:
    diffs = []
    for key in ("backbones", "strategies", "folds"):
        if old.get(key) != new[key]:
            diffs.append(f"{key}: {old.get(key)!r} -> {new[key]!r}")
    old_opts, new_opts = old.get("options", {}), new["options"]
    for key in sorted(set(old_opts) | set(new_opts)):
        if old_opts.get(key, "<unset>") != new_opts.get(key, "<unset>"):
            diffs.append(f"{key}: {old_opts.get(key, '<unset>')!r} -> {new_opts.get(key, '<unset>')!r}")
    return diffs


def _load_frame(config: TrainConfig) -> pd.DataFrame:
    """The dataset as :func:`covidxr.train.train` reads it (to check fold counts up front)."""
    from .data import load_dataset

    def none_if_blank(value):
        return None if value is None or str(value).lower() in ("", "all", "none") else value

    return load_dataset(
        config.data_dir, task=config.task, layout=config.layout, modality=none_if_blank(config.modality),
        views=config.views, image_col=config.image_col, label_col=config.label_col,
        patient_col=none_if_blank(config.patient_col),
    )


def _check_folds(frame: pd.DataFrame, folds: int, task: str) -> None:
    patients = frame.groupby("label")["patient"].nunique()
    fewest = patients.idxmin()
    if int(patients.min()) < int(folds):
        hint = (" Task 'covid-vs-normal' has few normal patients: use fewer folds or task 'covid-vs-rest'."
                if task == "covid-vs-normal" else "")
        raise ValueError(
            f"Too few patients for {folds} patient-grouped folds: class {fewest!r} has "
            f"{int(patients.min())} patients and every class needs at least one per fold.{hint} "
            f"Received: folds={folds}, patients_per_class={patients.to_dict()}"
        )


def _matches(run_config: dict, expected: TrainConfig) -> bool:
    try:
        found = TrainConfig.from_dict(run_config)
    except TypeError:
        return False
    want = expected.to_dict()
    have = found.to_dict()
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


# --------------------------------------------------------------------------- pooled metrics

def _figures(y, probs, thresholds, classes) -> dict:
    """Point figures of pooled predictions: decisions at each row's threshold, threshold-free
    figures on the pooled probabilities."""
    if len(classes) != 2:
        return M.multiclass_metrics(y, probs, classes=classes)
    decided = (probs[:, 1] >= thresholds).astype(float)
    figs = M.binary_metrics(y, decided, threshold=0.5)
    free = M.binary_metrics(y, probs[:, 1], threshold=0.5)
    for name in ("roc_auc", "pr_auc", "brier"):
        figs[name] = free[name]
    return figs


def _bootstrap(y, probs, thresholds, groups, *, classes, n_bootstrap, seed, level) -> dict:
    """As :func:`covidxr.metrics.bootstrap_metrics` (patients resampled with replacement), with
    one decision threshold per row."""
    return M.patient_bootstrap(lambda idx: _figures(y[idx], probs[idx], thresholds[idx], classes), groups,
                               n_bootstrap=n_bootstrap, seed=seed, level=level)


def pooled_metrics(predictions: pd.DataFrame, *, classes, n_bootstrap=1000, seed=0, level=0.95) -> dict:
    """Score the pooled test predictions of several folds, each row at its fold's threshold.

    Args:
        predictions: Test rows of all folds, shape (n, ...): ``patient``, ``label``,
            ``prob_<class>`` per class and ``threshold`` (the row's fold's validation
            threshold; ignored for three classes). Each patient must be in one fold only.
        classes: Class names in model output order (two classes: positive = ``classes[1]``).
        n_bootstrap, seed, level: Patient bootstrap settings.

    Returns:
        ``{"image": block, "patient": block, "n_images", "n_patients"}``; each block as
        :func:`covidxr.metrics.bootstrap_metrics` returns it. Per patient: the mean
        probability over the patient's images, at the patient's fold's threshold.
    """
    classes = [str(c) for c in classes]
    if predictions.empty:
        raise ValueError("Expected pooled test predictions to score. Received: n_images=0")
    frame = predictions.assign(patient=predictions["patient"].astype(str), label=predictions["label"].astype(str))
    if len(classes) == 2:
        if "threshold" not in frame.columns or not np.isfinite(frame["threshold"].to_numpy(float)).all():
            raise ValueError("Expected a finite 'threshold' column (each fold's validation threshold). "
                             f"Received: columns={list(frame.columns)}")
        per_patient_thr = frame.groupby("patient")["threshold"].nunique()
        if (per_patient_thr > 1).any():
            raise ValueError("Expected each patient in one fold's test part only (patient-grouped folds). "
                             f"Received: patients={list(per_patient_thr[per_patient_thr > 1].index[:5])}")
    else:
        frame = frame.assign(threshold=np.nan)
    cols = M.prob_columns(classes)
    per_patient = frame.groupby(["patient", "label"], sort=True).agg(
        {**{c: "mean" for c in cols}, "threshold": "first"}).reset_index()
    out = {"n_images": int(len(frame)), "n_patients": int(frame["patient"].nunique())}
    for level_name, table in (("image", frame), ("patient", per_patient)):
        y, probs = M.class_probabilities(table, classes)
        out[level_name] = _bootstrap(y, probs, table["threshold"].to_numpy(float), table["patient"].to_numpy(),
                                     classes=classes, n_bootstrap=n_bootstrap, seed=seed, level=level)
    return out


# --------------------------------------------------------------------------- comparison

def grid_comparison(run_dirs, *, n_bootstrap=1000, seed=0, level=0.95, threshold_method="youden",
                    target_sensitivity=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The pooled (per backbone × strategy) and per-run tables of a grid's runs.

    Args:
        run_dirs: Finished run folders (k-fold runs: ``config.json`` has ``folds``/``fold``).
        n_bootstrap, seed, level: Patient bootstrap settings.
        threshold_method, target_sensitivity: How each run's threshold is chosen on its own
            validation part (:func:`covidxr.evaluate.validation_threshold`).

    Returns:
        ``(pooled, per_run)``. ``pooled`` has one row per backbone × strategy × level with
        ``run`` (``"<backbone> / <strategy>"``), ``task, backbone, strategy, fold`` (``"k
        pooled"``), ``weights, data, level, n_images, n_patients, threshold`` (NaN: one per
        fold, listed in ``thresholds``), ``folds``, ``thresholds``, ``runs`` and for every
        metric ``<m>, <m>_ci_low, <m>_ci_high``. ``per_run`` is
        :func:`covidxr.evaluate.compare_runs` over the same folders.
    """
    from .evaluate import compare_runs, read_run, validation_threshold

    run_dirs = [Path(r) for r in run_dirs]
    if not run_dirs:
        raise ValueError("Expected at least one finished run folder. Received: run_dirs=[]")
    groups: dict[tuple, list] = {}
    for run in run_dirs:
        config, preds = read_run(run)
        classes = [str(c) for c in config["classes"]]
        info = validation_threshold(preds, classes=classes, method=threshold_method,
                                    target_sensitivity=target_sensitivity)
        test = preds[preds["part"].astype(str) == "test"].copy()
        test["threshold"] = np.nan if info is None else float(info["threshold"])
        test["fold"] = config.get("fold")
        key = (config.get("backbone"), config.get("strategy"))
        groups.setdefault(key, []).append((run, config, classes, test, info))
    rows = []
    for (backbone, strategy), members in groups.items():
        members.sort(key=lambda m: (m[1].get("fold") or 0, m[0].name))
        config, classes = members[0][1], members[0][2]
        pooled = pd.concat([m[3] for m in members], ignore_index=True)
        result = pooled_metrics(pooled, classes=classes, n_bootstrap=n_bootstrap, seed=seed, level=level)
        thresholds = [None if m[4] is None else round(float(m[4]["threshold"]), 4) for m in members]
        for level_name in ("image", "patient"):
            row = {"run": f"{backbone} / {strategy}", "task": config.get("task"), "backbone": backbone,
                   "strategy": strategy, "fold": f"{len(members)} pooled", "weights": config.get("weights"),
                   "data": "test (folds pooled)", "level": level_name, "n_images": result["n_images"],
                   "n_patients": result["n_patients"], "threshold": np.nan, "folds": len(members),
                   "thresholds": ", ".join("argmax" if t is None else f"{t:.4f}" for t in thresholds),
                   "runs": ", ".join(m[0].name for m in members)}
            for metric, fig in result[level_name]["metrics"].items():
                row[metric] = fig["value"]
                row[f"{metric}_ci_low"] = fig["ci_low"]
                row[f"{metric}_ci_high"] = fig["ci_high"]
            rows.append(row)
    per_run = compare_runs(run_dirs, n_bootstrap=n_bootstrap, seed=seed, level=level,
                           threshold_method=threshold_method, target_sensitivity=target_sensitivity)
    return pd.DataFrame(rows), per_run


def write_grid_comparison(pooled: pd.DataFrame, per_run: pd.DataFrame, out_dir, *, record=None) -> list[Path]:
    """Write (replacing earlier versions) ``comparison.csv``, ``comparison.md``,
    ``comparison.png`` and ``runs.csv`` into ``out_dir``.

    Args:
        pooled, per_run: :func:`grid_comparison`'s tables.
        out_dir: The grid folder.
        record: The grid's ``grid.json`` content (shown in the Markdown header).

    Returns:
        The four paths.
    """
    from .evaluate import comparison_markdown
    from .plots import plot_comparison, save_figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path, png_path, runs_path = (out / "comparison.csv", out / "comparison.md",
                                              out / "comparison.png", out / "runs.csv")
    write_text(csv_path, pooled.to_csv(index=False))
    write_text(runs_path, per_run.to_csv(index=False))
    record = record or {}
    opts = record.get("options", {})
    comp = record.get("comparison", {})
    settings = ", ".join(f"{k}={opts[k]}" for k in ("task", "weights", "image_size", "epochs", "fine_tune_epochs",
                                                     "batch_size", "seed") if k in opts)
    lines = [
        "# Grid comparison", "", f"*{RESEARCH_ONLY}*", "",
        f"- Backbones: {', '.join(record.get('backbones', sorted(set(pooled['backbone']))))}; strategies: "
        f"{', '.join(record.get('strategies', sorted(set(pooled['strategy']))))}; "
        f"{record.get('folds', '?')} patient-grouped folds.",
        f"- Settings: {settings}." if settings else "- Settings: see grid.json.",
        "- Folds pooled: the test predictions of all folds of one backbone × strategy are scored together; "
        "each image is decided at the threshold its own fold chose on its validation part "
        f"({comp.get('threshold_method', 'youden')}); ROC AUC, PR AUC and Brier use the pooled probabilities.",
        f"- Intervals: {comp.get('level', 0.95):.0%} percentile bootstrap over patients "
        f"({comp.get('n_bootstrap', '?')} resamples, seed {comp.get('seed', '?')}); per patient: mean "
        "probability over the patient's images.",
        "", "## Folds pooled (per backbone × strategy)", "", comparison_markdown(pooled), "",
        "Thresholds per fold:", "",
    ]
    for _, row in pooled[pooled["level"] == "image"].iterrows():
        lines.append(f"- {row['run']}: {row['thresholds']}")
    lines += ["", "## Per run (each fold's own test part)", "", comparison_markdown(per_run), "",
              "![comparison](comparison.png)", ""]
    write_text(md_path, "\n".join(lines))
    fig = plot_comparison(pooled)
    fig.suptitle("Grid, folds pooled (95% CI; red = per image, blue = per patient)", fontsize=10)
    save_figure(fig, png_path)
    return [csv_path, md_path, png_path, runs_path]


# --------------------------------------------------------------------------- the grid

def run_grid(base_config: TrainConfig, *, out, backbones=("resnet50", "vgg16", "vgg19"),
             strategies=("none", "class-weight", "oversample", "undersample"), folds=5, n_bootstrap=1000,
             threshold_method="youden", target_sensitivity=None, clear_session=True, progress=True) -> Path:
    """Train every backbone × strategy × fold into ``out/runs`` and write the comparison.

    One process trains every run (:func:`covidxr.train.train`). Runs that a previous,
    interrupted call with the same ``out`` finished are kept and not trained again, and the
    run it was in the middle of is continued (see the module docstring).

    Args:
        base_config: Every other training option (data, image size, epochs, weights ...);
            its ``backbone``, ``strategy``, ``folds``, ``fold``, ``runs_dir`` and
            ``run_name`` are set by the grid. ``split_file`` must be None.
        out: The grid folder (made if missing).
        backbones: Backbone names, a list or a comma-separated string.
        strategies: Imbalance strategies (:data:`covidxr.sampling.STRATEGIES`).
        folds: Patient-grouped folds (>= 2); every class needs at least ``folds`` patients
            (task ``covid-vs-normal`` has few normal patients).
        n_bootstrap: Patient bootstrap resamples of the comparison.
        threshold_method, target_sensitivity: How each run's threshold is chosen on its
            validation part.
        clear_session: Call ``keras.backend.clear_session()`` after each run (frees the
            previous models' graphs and memory).
        progress: Print one line per combination.

    Returns:
        The grid folder ``out``.

    Raises:
        ValueError: Bad options, too few patients for the folds, or ``out`` holds a grid
            with other options (the message names them).
        FileNotFoundError: Missing dataset or weights file.
    """
    from .models import BACKBONES
    from .sampling import STRATEGIES

    if isinstance(base_config, dict):
        base_config = TrainConfig.from_dict(base_config)
    if not isinstance(base_config, TrainConfig):
        raise ValueError(f"Expected a TrainConfig. Received: base_config={type(base_config).__name__}")
    backbones = _split_names(backbones, name="backbones", valid=sorted(BACKBONES))
    strategies = _split_names(strategies, name="strategies", valid=list(STRATEGIES))
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ValueError(f"Expected folds to be an integer >= 2. Received: folds={folds!r}")
    if base_config.split_file:
        raise ValueError("Expected no split_file: a grid makes its own patient-grouped folds. "
                         f"Received: split_file={base_config.split_file!r}")
    if int(n_bootstrap) < 0:
        raise ValueError(f"Expected n_bootstrap >= 0. Received: n_bootstrap={n_bootstrap!r}")
    out = Path(out).expanduser()
    runs_dir = out / "runs"
    base = dataclasses.replace(base_config, runs_dir=str(runs_dir), run_name=None, folds=int(folds), fold=0,
                               backbone=backbones[0], strategy=strategies[0])
    configs = [dataclasses.replace(base, **combo) for combo in combinations(backbones, strategies, int(folds))]
    from .train import check_config

    for config in configs:  # every option checked before anything is trained
        check_config(config)

    record = _grid_record(base, backbones, strategies, int(folds))
    grid_file = out / GRID_FILE
    if grid_file.is_file():
        try:
            old = json.loads(grid_file.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"Expected a readable {GRID_FILE} in the grid folder ({err}). "
                             f"Received: out={str(out)!r}") from err
        diffs = _differences(old, record)
        if diffs:
            raise ValueError(
                f"The grid folder holds a grid with other options; resume it with the same options or "
                f"choose a new --out. Differences (stored -> given): {'; '.join(diffs)}. Received: out={str(out)!r}"
            )
        record["created"] = old.get("created")
        record["timings"] = old.get("timings") or []
    else:
        record["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    frame = _load_frame(base)
    _check_folds(frame, int(folds), base.task)
    del frame

    record["covidxr_version"] = __version__
    record["comparison"] = {"n_bootstrap": int(n_bootstrap), "seed": int(base.seed), "level": 0.95,
                            "threshold_method": threshold_method, "target_sensitivity": target_sensitivity}
    out.mkdir(parents=True, exist_ok=True)
    write_json(grid_file, record)

    finished = []
    total = len(configs)
    for k, config in enumerate(configs, start=1):
        label = f"[{k}/{total}] {config.backbone} / {config.strategy} / fold {config.fold}"
        done = find_runs(runs_dir, config)
        if done:
            finished.append(done[0])
            if progress:
                print(f"{label}: done before, kept {done[0].name}", flush=True)
            continue
        start = time.perf_counter()
        interrupted = find_runs(runs_dir, config, finished=False)
        if interrupted:
            if progress:
                print(f"{label}: continuing the interrupted run {interrupted[-1].name}", flush=True)
            run = resume(interrupted[-1])
        else:
            run = train(config)
        seconds = time.perf_counter() - start
        record.setdefault("timings", []).append({"backbone": config.backbone, "strategy": config.strategy,
                                                 "fold": config.fold, "run": Path(run).name,
                                                 "seconds": round(seconds, 1)})
        write_json(grid_file, record)
        finished.append(Path(run))
        if progress:
            print(f"{label}: trained in {seconds:.1f} s -> {run.name}", flush=True)
        if clear_session:
            keras.backend.clear_session()

    record["runs"] = [p.name for p in finished]
    pooled, per_run = grid_comparison(finished, n_bootstrap=n_bootstrap, seed=base.seed,
                                      threshold_method=threshold_method, target_sensitivity=target_sensitivity)
    write_grid_comparison(pooled, per_run, out, record=record)
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_json(grid_file, record)
    if progress:
        print(f"wrote {out / 'comparison.md'}", flush=True)
    return out
