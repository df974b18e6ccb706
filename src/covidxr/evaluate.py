"""Evaluate run folders: on their own test part, or on another dataset (external validation),
and compare several runs.

* :func:`evaluate_predictions` scores a predictions frame (no model needed): per-image and
  per-patient figures side by side, each with a patient-bootstrap confidence interval
  (:mod:`covidxr.metrics`).
* :func:`evaluate_run` reads a run folder, takes the decision threshold from the run's
  **validation** predictions (never from the data being scored), scores the test part or an
  external dataset, and writes ``RUN_DIR/evaluations/<name>-<timestamp>/`` with
  ``metrics.json``, ``predictions.csv``, ``figures/`` and ``report.md``. Nothing is ever
  overwritten.
* :func:`compare_runs` / :func:`write_comparison` build one table (CSV + Markdown) and one
  chart over several runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from . import RESEARCH_ONLY, __version__
from . import metrics as M

__all__ = [
    "RUN_KEYS",
    "compare_runs",
    "comparison_markdown",
    "evaluate_predictions",
    "evaluate_run",
    "evaluation_report",
    "metrics_markdown",
    "read_run",
    "score_run",
    "validation_threshold",
    "write_comparison",
]

#: Config keys shown in every comparison row.
RUN_KEYS = ("backbone", "strategy", "fold", "weights")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


# --------------------------------------------------------------------------- run folders

def read_run(run_dir, *, need_model=False) -> tuple[dict, pd.DataFrame]:
    """Read a run folder's ``config.json`` and ``predictions.csv``.

    Args:
        run_dir: The run folder.
        need_model: Also require ``model.keras`` (to score new images).

    Returns:
        ``(config, predictions)``; ``config["classes"]`` is a list of class names and
        ``config["task"]`` the task name.

    Raises:
        FileNotFoundError: The folder, its config, its predictions or (``need_model``) its
            model is missing.
        ValueError: The config has no classes, or predictions lack columns.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"Expected a run folder (made by `covidxr train`). Received: run_dir={str(run)!r}")
    config_path = run / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"Expected a run folder with config.json (made by `covidxr train`). Received: run_dir={str(run)!r}"
        )
    config = json.loads(config_path.read_text())
    classes = config.get("classes")
    if not classes or len(classes) < 2:
        raise ValueError(f"Expected config.json to list the model's classes. Received: classes={classes!r}")
    if need_model and not (run / "model.keras").is_file():
        raise FileNotFoundError(
            "Expected a trained model (model.keras) in the run folder to score new images; "
            f"was training interrupted? Received: run_dir={str(run)!r}"
        )
    pred_path = run / "predictions.csv"
    if not pred_path.is_file():
        raise FileNotFoundError(
            "Expected predictions.csv in the run folder (training writes it after the last "
            f"epoch; was training interrupted?). Received: run_dir={str(run)!r}"
        )
    preds = pd.read_csv(pred_path, dtype={"image": str, "patient": str, "label": str, "part": str})
    required = ["image", "patient", "label", "part", *M.prob_columns(classes)]
    missing = [c for c in required if c not in preds.columns]
    if missing:
        raise ValueError(
            f"Expected {str(pred_path)!r} with columns {required}. Received: missing={missing}"
        )
    return config, preds


def validation_threshold(predictions: pd.DataFrame, *, classes, method="youden", target_sensitivity=None,
                         threshold=None) -> dict | None:
    """The decision threshold chosen on the ``part == "val"`` rows only.

    Args:
        predictions: A run's predictions (all parts); only validation rows are looked at.
        classes: Class names (two classes: positive = ``classes[1]``).
        method, target_sensitivity, threshold: See :func:`covidxr.metrics.choose_threshold`.

    Returns:
        :func:`covidxr.metrics.choose_threshold`'s dict, or None for three classes (arg-max).
    """
    classes = list(classes)
    if len(classes) != 2:
        return None
    val = predictions[predictions["part"].astype(str) == "val"]
    if val.empty and method != "fixed":
        raise ValueError(
            "Expected validation rows (part == 'val') in the run's predictions to choose the "
            f"threshold. Received: parts={sorted(predictions['part'].astype(str).unique())}"
        )
    y, probs = M.class_probabilities(val, classes) if len(val) else (np.zeros(0, int), np.zeros((0, 2)))
    return M.choose_threshold(y, probs[:, 1], method=method, target_sensitivity=target_sensitivity,
                              threshold=threshold)


# --------------------------------------------------------------------------- scoring

def evaluate_predictions(predictions_df: pd.DataFrame, *, classes, threshold=None, n_bootstrap=1000, seed=0,
                         level=0.95, threshold_info=None) -> dict:
    """Score a predictions frame, per image and per patient, with patient-bootstrap CIs.

    Args:
        predictions_df: Rows to score (e.g. a run's test part): columns ``patient``,
            ``label`` and ``prob_<class>`` per class, shape (n, ...).
        classes: Class names in model output order.
        threshold: Two classes: the decision threshold on ``prob_<classes[1]>`` (chosen on
            validation data; 0.5 when None). Three classes: must be None (arg-max).
        n_bootstrap: Bootstrap resamples (patients drawn with replacement).
        seed: Seed of the bootstrap.
        level: Interval coverage (0.95 gives 95% intervals).
        threshold_info: How the threshold was chosen (stored in the result as is).

    Returns:
        A JSON-ready dict: ``classes``, ``positive_class``, ``decision`` (``"threshold"`` or
        ``"argmax"``), ``threshold``, ``threshold_selection``, ``n_images``, ``n_patients``,
        ``class_counts`` ({class: {"images", "patients"}}), ``prevalence`` (image share per
        class), ``bootstrap`` ({n_bootstrap, seed, level, unit}) and two blocks ``image``
        and ``patient`` from :func:`covidxr.metrics.bootstrap_metrics` (``metrics`` with
        value / ci_low / ci_high / n_used, ``confusion_matrix``).
    """
    classes = [str(c) for c in classes]
    if len(classes) == 2 and threshold is None:
        threshold = 0.5
        threshold_info = threshold_info or {"threshold": 0.5, "method": "default",
                                            "description": "default 0.5 (no validation threshold given)"}
    y, probs = M.class_probabilities(predictions_df, classes)
    if len(y) == 0:
        raise ValueError("Expected at least one prediction to score. Received: n_images=0")
    patients = predictions_df["patient"].astype(str).to_numpy()
    image = M.bootstrap_metrics(y, probs, patients, classes=classes, threshold=threshold,
                                n_bootstrap=n_bootstrap, seed=seed, level=level)
    per_patient = M.patient_frame(predictions_df, classes)
    py, pprobs = M.class_probabilities(per_patient, classes)
    patient = M.bootstrap_metrics(py, pprobs, per_patient["patient"].to_numpy(), classes=classes,
                                  threshold=threshold, n_bootstrap=n_bootstrap, seed=seed, level=level)
    labels = predictions_df["label"].astype(str)
    counts = {c: {"images": int((labels == c).sum()),
                  "patients": int(predictions_df.loc[labels == c, "patient"].nunique())} for c in classes}
    missing = [c for c, n in counts.items() if n["images"] == 0]
    if missing:
        warnings.warn(f"No images of class(es) {missing} in the scored data: figures that need them "
                      "are undefined (NaN).", stacklevel=2)
    return {
        "classes": classes,
        "positive_class": classes[1] if len(classes) == 2 else None,
        "decision": "threshold" if len(classes) == 2 else "argmax",
        "threshold": None if len(classes) != 2 else float(threshold),
        "threshold_selection": threshold_info if len(classes) == 2 else {
            "method": "argmax",
            "description": "three classes: the predicted class is the one with the highest probability"},
        "n_images": int(len(y)),
        "n_patients": int(len(np.unique(patients))),
        "class_counts": counts,
        "prevalence": {c: counts[c]["images"] / len(y) for c in classes},
        "bootstrap": {"n_bootstrap": int(n_bootstrap), "seed": int(seed), "level": float(level),
                      "unit": "patient"},
        "image": image,
        "patient": patient,
    }


def score_run(run_dir, *, threshold_method="youden", target_sensitivity=None, threshold=None, n_bootstrap=1000,
              seed=0, level=0.95) -> tuple[dict, pd.DataFrame]:
    """Score a run's own test part in memory (nothing is written).

    The threshold comes from the run's validation part (:func:`validation_threshold`).

    Returns:
        ``(result, scored)``: :func:`evaluate_predictions`'s dict (plus ``run``, ``task``,
        ``config``) and the test rows with ``predicted`` and ``correct`` columns.
    """
    run = Path(run_dir)
    config, preds = read_run(run)
    classes = [str(c) for c in config["classes"]]
    info = validation_threshold(preds, classes=classes, method=threshold_method,
                                target_sensitivity=target_sensitivity, threshold=threshold)
    scored = preds[preds["part"].astype(str) == "test"].reset_index(drop=True)
    if scored.empty:
        raise ValueError("Expected test rows (part == 'test') in the run's predictions.csv. "
                         f"Received: parts={sorted(preds['part'].astype(str).unique())}")
    result = evaluate_predictions(scored, classes=classes, threshold=None if info is None else info["threshold"],
                                  n_bootstrap=n_bootstrap, seed=seed, level=level, threshold_info=info)
    result.update({"run": run.name, "task": config.get("task"),
                   "config": {k: config.get(k) for k in RUN_KEYS if k in config}})
    return result, _with_decisions(scored, result)


def _with_decisions(scored: pd.DataFrame, result: dict) -> pd.DataFrame:
    classes = result["classes"]
    _, probs = M.class_probabilities(scored, classes)
    table = scored.copy()
    table["predicted"] = [classes[i] for i in M.decide(probs, threshold=result["threshold"])]
    table["correct"] = table["predicted"] == table["label"].astype(str)
    return table


def _check_name(name) -> str:
    if not _NAME.match(str(name)):
        raise ValueError(
            "Expected an evaluation name of letters, digits, '.', '_' or '-' (up to 80, no "
            f"slashes). Received: name={name!r}"
        )
    return str(name)


def _default_name(data_dir) -> str:
    if data_dir is None:
        return "test"
    stem = Path(str(data_dir)).expanduser().resolve().name
    stem = Path(stem).stem if Path(stem).suffix.lower() == ".csv" else stem
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "external"


def _unreadable(frame: pd.DataFrame) -> list[dict]:
    """Images that cannot be decoded: ``[{"image", "error"}]``."""
    try:
        from .images import load_image
    except ImportError:  # pragma: no cover - images module ships with the package
        load_image = None
    bad = []
    for image, path in zip(frame["image"], frame["path"]):
        try:
            if load_image is not None:
                load_image(path)
            else:  # pragma: no cover
                from PIL import Image

                with Image.open(path) as im:
                    im.load()
        except Exception as err:  # noqa: BLE001 - any decoding failure leaves the image out
            bad.append({"image": str(image), "error": f"{type(err).__name__}: {err}"[:300]})
    return bad


def _external_predictions(run_dir, config, *, data_dir, batch_size, data_options) -> tuple[pd.DataFrame, list]:
    from .data import get_task, load_dataset

    task_name = config.get("task")
    classes = list(config["classes"])
    task = get_task(task_name) if task_name else None
    frame = load_dataset(data_dir, task=None, **data_options)
    if task is not None:
        mapping = task.mapping
    else:  # no task in the config: categories must be the class names themselves
        mapping = {c: c for c in classes}
    known = frame["category"].isin(list(mapping))
    if not known.all():
        names = sorted(set(frame.loc[~known, "finding"].astype(str)))
        cats = sorted(set(frame.loc[~known, "category"].astype(str)))
        raise ValueError(
            f"The dataset has labels the model was not trained on (task {task_name!r}, classes "
            f"{classes}; category {cats} is not in the task); remove those images or evaluate a model "
            f"of another task. Received: unknown_labels={names[:10]}"
        )
    frame = frame.assign(label=frame["category"].map(mapping)).reset_index(drop=True)
    unknown = sorted(set(frame["label"]) - set(classes))
    if unknown:
        raise ValueError(f"Expected labels among the model's classes {classes}. Received: labels={unknown}")
    bad = _unreadable(frame)
    if bad:
        warnings.warn(f"{len(bad)} of {len(frame)} images cannot be read and are left out: "
                      + ", ".join(b["image"] for b in bad[:5]) + (" ..." if len(bad) > 5 else ""),
                      stacklevel=3)
        frame = frame[~frame["image"].isin({b["image"] for b in bad})].reset_index(drop=True)
    if frame.empty:
        raise ValueError(f"Expected readable images in the dataset. Received: data_dir={str(data_dir)!r}")
    import importlib

    train = importlib.import_module("covidxr.train")
    probs = np.asarray(train.predict_frame(run_dir, frame, batch_size=batch_size), dtype=float)
    if probs.shape != (len(frame), len(classes)):
        raise ValueError(
            f"Expected predict_frame to return shape ({len(frame)}, {len(classes)}). "
            f"Received: shape={probs.shape}"
        )
    ok = np.isfinite(probs).all(axis=1)
    if not ok.all():
        bad += [{"image": str(i), "error": "no prediction (image could not be read)"}
                for i in frame.loc[~ok, "image"]]
        frame, probs = frame[ok].reset_index(drop=True), probs[ok]
    preds = pd.DataFrame({"image": frame["image"].astype(str), "patient": frame["patient"].astype(str),
                          "label": frame["label"].astype(str), "part": "external"})
    for i, col in enumerate(M.prob_columns(classes)):
        preds[col] = probs[:, i]
    return preds, bad


def evaluate_run(run_dir, *, data_dir=None, name=None, layout="auto", modality="X-ray", views="frontal",
                 image_col="path", label_col="label", patient_col="patient", threshold_method="youden",
                 target_sensitivity=None, threshold=None, n_bootstrap=1000, seed=0, level=0.95,
                 batch_size=32, figures=True, now=None) -> Path:
    """Evaluate a run folder on its test part or on another dataset; write an evaluation folder.

    The decision threshold (two classes) always comes from the run's validation predictions.

    Args:
        run_dir: A run folder (``config.json``, ``predictions.csv``; ``model.keras`` for
            external data).
        data_dir: None: score the run's test part (from ``predictions.csv``). Otherwise a
            dataset in any layout :func:`covidxr.data.load_dataset` reads; its labels are
            mapped with the run's task and scored with the run's model
            (:func:`covidxr.train.predict_frame`).
        name: Evaluation name (default ``test``, or the dataset folder's name).
        layout, modality, views, image_col, label_col, patient_col: How to read ``data_dir``.
        threshold_method: ``youden``, ``sensitivity`` or ``fixed`` (see
            :func:`covidxr.metrics.choose_threshold`).
        target_sensitivity: For ``threshold_method="sensitivity"``.
        threshold: For ``threshold_method="fixed"``.
        n_bootstrap, seed, level: Patient bootstrap settings.
        batch_size: Prediction batch size (external data).
        figures: Also draw the figures.
        now: Timestamp for the folder name (``time.struct_time``; default: now, UTC).

    Returns:
        The evaluation folder ``RUN_DIR/evaluations/<name>-<timestamp>/``.

    Raises:
        FileNotFoundError: Missing run files or dataset.
        FileExistsError: The evaluation folder exists already (nothing is overwritten).
        ValueError: Bad options, labels the model was not trained on, no test rows.
    """
    run = Path(run_dir)
    config, preds = read_run(run, need_model=data_dir is not None)
    classes = [str(c) for c in config["classes"]]
    name = _check_name(name if name is not None else _default_name(data_dir))
    stamp = time.strftime("%Y-%m-%dT%H-%M-%S", now or time.gmtime())
    out = run / "evaluations" / f"{name}-{stamp}"
    if out.exists():
        raise FileExistsError(
            f"Expected a new evaluation folder, but {str(out)!r} exists and is left as it is. Choose "
            f"another --name or wait a second. Received: name={name!r}"
        )
    info = validation_threshold(preds, classes=classes, method=threshold_method,
                                target_sensitivity=target_sensitivity, threshold=threshold)
    unreadable = []
    if data_dir is None:
        scored = preds[preds["part"].astype(str) == "test"].reset_index(drop=True)
        if scored.empty:
            raise ValueError("Expected test rows (part == 'test') in the run's predictions.csv. "
                             f"Received: parts={sorted(preds['part'].astype(str).unique())}")
        source = "the run's test part (predictions.csv)"
    else:
        options = {"layout": layout, "modality": modality, "views": views, "image_col": image_col,
                   "label_col": label_col, "patient_col": patient_col}
        scored, unreadable = _external_predictions(run, config, data_dir=data_dir, batch_size=batch_size,
                                                   data_options=options)
        source = str(data_dir)
    result = evaluate_predictions(scored, classes=classes, threshold=None if info is None else info["threshold"],
                                  n_bootstrap=n_bootstrap, seed=seed, level=level, threshold_info=info)
    result.update({
        "name": name,
        "run": run.name,
        "run_dir": str(run.resolve()),
        "task": config.get("task"),
        "data": source,
        "unreadable": unreadable,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", now or time.gmtime()),
        "covidxr_version": __version__,
        "config": {k: config.get(k) for k in RUN_KEYS if k in config},
    })
    table = _with_decisions(scored, result)

    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=False)
    try:
        (tmp / "metrics.json").write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
        table.to_csv(tmp / "predictions.csv", index=False)
        written = []
        if figures:
            from .plots import write_evaluation_figures

            written = write_evaluation_figures(table, result, tmp / "figures")
        (tmp / "report.md").write_text(evaluation_report(result, figures=[p.name for p in written]))
        if out.exists():
            raise FileExistsError(f"Expected a new evaluation folder, but {str(out)!r} appeared meanwhile. "
                                  f"Received: name={name!r}")
        os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --------------------------------------------------------------------------- reports

def _fmt(fig: dict, digits=3) -> str:
    value, low, high = fig["value"], fig["ci_low"], fig["ci_high"]
    if value is None or np.isnan(value):
        return "n/a"
    if np.isnan(low):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def metrics_markdown(result: dict) -> str:
    """Per-image and per-patient figures side by side, as a Markdown table."""
    lines = ["| metric | per image | per patient | resamples used (image / patient) |",
             "|---|---|---|---|"]
    for name, fig in result["image"]["metrics"].items():
        pat = result["patient"]["metrics"].get(name, {"value": float("nan"), "ci_low": float("nan"),
                                                      "ci_high": float("nan"), "n_used": 0})
        lines.append(f"| {name} | {_fmt(fig)} | {_fmt(pat)} | {fig['n_used']} / {pat['n_used']} |")
    return "\n".join(lines)


def _cm_markdown(cm, classes) -> str:
    lines = ["| true \\ predicted | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    for cls, row in zip(classes, cm):
        lines.append(f"| {cls} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def evaluation_report(result: dict, *, figures=()) -> str:
    """The ``report.md`` of an evaluation folder."""
    classes = result["classes"]
    sel = result["threshold_selection"] or {}
    boot = result["bootstrap"]
    counts = ", ".join(f"{c}: {n['images']} images / {n['patients']} patients"
                       for c, n in result["class_counts"].items())
    if result["decision"] == "threshold":
        decision = (f"An image (or patient) is called **{result['positive_class']}** when its probability is "
                    f">= **{result['threshold']:.4f}**. The threshold was chosen by {sel.get('description', '?')} "
                    f"(validation sensitivity {sel.get('sensitivity', float('nan')):.3f}, specificity "
                    f"{sel.get('specificity', float('nan')):.3f}, {sel.get('n_images', '?')} images) and applied "
                    "unchanged here; the scored data tuned nothing.")
    else:
        decision = ("Three classes: the predicted class is the one with the highest probability (arg-max); "
                    "per-class figures are one-vs-rest, `[macro]` their unweighted mean.")
    lines = [
        f"# Evaluation `{result['name']}` of run `{result['run']}`",
        "",
        f"*{RESEARCH_ONLY}*",
        "",
        f"- Data: {result['data']} (task `{result['task']}`, classes {classes})",
        f"- {result['n_images']} images of {result['n_patients']} patients ({counts}); figures at the data's "
        "own prevalence, no re-balancing.",
        f"- Decision: {decision}",
        f"- Intervals: {boot['level']:.0%} percentile bootstrap over **patients** ({boot['n_bootstrap']} "
        f"resamples, seed {boot['seed']}); a resample in which a figure is undefined (a class not drawn) is "
        "skipped for that figure, the last column says how many were used.",
        "- Per patient: a patient's probability is the mean over their images.",
    ]
    if result.get("unreadable"):
        lines.append(f"- {len(result['unreadable'])} images could not be read and were left out: "
                     + ", ".join(f"`{b['image']}`" for b in result["unreadable"][:20]))
    lines += ["", "## Figures with 95% confidence intervals" if boot["level"] == 0.95 else "## Figures", "",
              metrics_markdown(result), "",
              "## Confusion matrix (images)", "", _cm_markdown(result["image"]["confusion_matrix"], classes), "",
              "## Confusion matrix (patients)", "", _cm_markdown(result["patient"]["confusion_matrix"], classes),
              ""]
    if figures:
        lines += ["## Figures", ""] + [f"![{f}](figures/{f})" for f in figures] + [""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- comparison

def _latest_evaluation(run: Path, name: str) -> Path:
    found = sorted(p for p in (run / "evaluations").glob(f"{name}-*") if (p / "metrics.json").is_file())
    if not found:
        raise FileNotFoundError(
            f"Expected an evaluation named {name!r} in {str(run / 'evaluations')!r} (run `covidxr evaluate "
            f"--name {name}` first). Received: evaluation={name!r}"
        )
    return found[-1]


def compare_runs(run_dirs, *, evaluation=None, n_bootstrap=1000, seed=0, level=0.95, threshold_method="youden",
                 target_sensitivity=None) -> pd.DataFrame:
    """One row per run and level (image, patient) with every figure and its interval.

    Args:
        run_dirs: Run folders.
        evaluation: None: score each run's test part afresh (threshold from its validation
            part). A name: read each run's latest ``evaluations/<name>-*/metrics.json``.
        n_bootstrap, seed, level, threshold_method, target_sensitivity: As for
            :func:`evaluate_run` (when ``evaluation`` is None).

    Returns:
        Columns ``run, task, backbone, strategy, fold, weights, data, level, n_images,
        n_patients, threshold``, then for every metric ``<metric>``, ``<metric>_ci_low``,
        ``<metric>_ci_high``.
    """
    run_dirs = [Path(r) for r in run_dirs]
    if not run_dirs:
        raise ValueError("Expected at least one run folder. Received: run_dirs=[]")
    rows = []
    for run in run_dirs:
        config, _ = read_run(run)
        if evaluation is None:
            result, _ = score_run(run, threshold_method=threshold_method, target_sensitivity=target_sensitivity,
                                  n_bootstrap=n_bootstrap, seed=seed, level=level)
            data = "test"
        else:
            folder = _latest_evaluation(run, evaluation)
            result = json.loads((folder / "metrics.json").read_text())
            data = folder.name
        for level_name in ("image", "patient"):
            row = {"run": run.name, "task": config.get("task")}
            row.update({k: config.get(k) for k in RUN_KEYS})
            row.update({"data": data, "level": level_name, "n_images": result["n_images"],
                        "n_patients": result["n_patients"], "threshold": result["threshold"]})
            for metric, fig in result[level_name]["metrics"].items():
                row[metric] = fig["value"]
                row[f"{metric}_ci_low"] = fig["ci_low"]
                row[f"{metric}_ci_high"] = fig["ci_high"]
            rows.append(row)
    return pd.DataFrame(rows)


def _metric_names(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if f"{c}_ci_low" in table.columns]


def comparison_markdown(table: pd.DataFrame, *, digits=3) -> str:
    """The comparison table as Markdown: one cell ``value [low, high]`` per metric."""
    keys = ["run", "task", *RUN_KEYS, "data", "level", "n_images", "n_patients", "threshold"]
    keys = [k for k in keys if k in table.columns]
    names = _metric_names(table)
    lines = ["| " + " | ".join(keys + names) + " |", "|---" * (len(keys) + len(names)) + "|"]
    for _, row in table.iterrows():
        cells = []
        for k in keys:
            v = row[k]
            cells.append(f"{v:.4f}" if k == "threshold" and isinstance(v, float) and not np.isnan(v) else
                         ("" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)))
        for m in names:
            cells.append(_fmt({"value": row[m], "ci_low": row[f"{m}_ci_low"], "ci_high": row[f"{m}_ci_high"]},
                              digits))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_comparison(table: pd.DataFrame, out_dir, *, metrics=None) -> list[Path]:
    """Write ``comparison.csv``, ``comparison.md`` and ``comparison.png`` into ``out_dir``.

    Raises:
        FileExistsError: One of them exists (nothing is overwritten).
    """
    out = Path(out_dir)
    targets = [out / "comparison.csv", out / "comparison.md", out / "comparison.png"]
    existing = [str(p) for p in targets if p.exists()]
    if existing:
        raise FileExistsError(f"Expected a folder without a comparison, but {existing} exist and are kept. "
                              f"Received: out={str(out)!r}")
    from .atomic import write_text
    from .plots import plot_comparison, save_figure

    write_text(targets[0], table.to_csv(index=False))
    write_text(targets[1], "# Comparison of runs\n\n" + comparison_markdown(table) + "\n")

    fig = plot_comparison(table, metrics=metrics)
    save_figure(fig, targets[2])
    return targets
