"""Pool the test predictions of a grid's folds and score them: each row decided at its own fold's
validation threshold, patient-bootstrap intervals over the pooled patients.
Must not train, write files or draw: it reads finished run folders and returns tables.

The test parts of the ``k`` folds are disjoint and together hold every patient once, so the
test predictions of all folds of one backbone × strategy are pooled into one frame and scored
once, rather than averaging k small-sample figures:

* Decisions (sensitivity, specificity, PPV, NPV, F1, balanced accuracy, MCC, accuracy) use
  **each fold's own threshold**, chosen on that fold's validation part (Youden's J by
  default) — exactly the decision each fold's model would make; nothing is tuned on test data.
* Threshold-free figures (ROC AUC, PR AUC, Brier) rank or score the pooled probabilities of
  models from different folds together; models whose output scales differ lower the pooled
  AUC a little compared with the per-fold mean (the per-run table shows the per-fold values).
* Confidence intervals: percentile bootstrap over **patients** of the pooled frame (as
  :mod:`covidxr.evaluation.metrics`); per-patient figures use the mean probability over a
  patient's images and the threshold of the fold that patient was tested in.

Three-class tasks decide by arg-max, so no threshold is involved there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import bootstrap as B
from . import metrics as M
from .runs import read_run, validation_threshold
from .scoring import compare_runs

__all__ = ["grid_comparison", "pooled_metrics"]


def _figures(y, probs, thresholds, classes) -> dict:
    """Point figures of pooled predictions: decisions at each row's threshold, threshold-free
    figures on the pooled probabilities."""
    if len(classes) != 2:
        return M.multiclass_metrics(y, probs, classes=classes)
    return M.binary_metrics(y, probs[:, 1], threshold=thresholds)


def _bootstrap(y, probs, thresholds, groups, *, classes, n_bootstrap, seed, level) -> dict:
    """As :func:`covidxr.evaluation.bootstrap_metrics` (patients resampled with replacement), with
    one decision threshold per row."""
    return B.patient_bootstrap(lambda idx: _figures(y[idx], probs[idx], thresholds[idx], classes), groups,
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
        :func:`covidxr.evaluation.bootstrap_metrics` returns it. Per patient: the mean
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


def grid_comparison(run_dirs, *, n_bootstrap=1000, seed=0, level=0.95, threshold_method="youden",
                    target_sensitivity=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The pooled (per backbone × strategy) and per-run tables of a grid's runs.

    Args:
        run_dirs: Finished run folders (k-fold runs: ``config.json`` has ``folds``/``fold``).
        n_bootstrap, seed, level: Patient bootstrap settings.
        threshold_method, target_sensitivity: How each run's threshold is chosen on its own
            validation part (:func:`covidxr.evaluation.validation_threshold`).

    Returns:
        ``(pooled, per_run)``. ``pooled`` has one row per backbone × strategy × level with
        ``run`` (``"<backbone> / <strategy>"``), ``task, backbone, strategy, fold`` (``"k
        pooled"``), ``weights, data, level, n_images, n_patients, threshold`` (NaN: one per
        fold, listed in ``thresholds``), ``folds``, ``thresholds``, ``runs`` and for every
        metric ``<m>, <m>_ci_low, <m>_ci_high``. ``per_run`` is
        :func:`covidxr.evaluation.compare_runs` over the same folders.
    """
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
