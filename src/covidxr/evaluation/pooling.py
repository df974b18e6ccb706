"""Pool the test predictions of a grid's folds and score them: each row decided at its own fold's
validation threshold (per image, and per patient on patient means), group-bootstrap intervals,
and the one configuration chosen on validation ROC AUC.
Must not train, write files or draw: it reads finished run folders and returns tables.

The test parts of the ``k`` folds are disjoint and together hold every patient once, so the
test predictions of all folds of one configuration (backbone × feature layer × strategy) are
pooled into one frame and scored once, rather than averaging k small-sample figures:

* Decisions (sensitivity, specificity, PPV, NPV, F1, balanced accuracy, MCC, accuracy) use
  **each fold's own thresholds**, chosen on that fold's validation part (Youden's J by
  default): images at the fold's image threshold, patients (mean probability) at the fold's
  patient threshold — exactly the decisions each fold's model would make; nothing is tuned on
  test data.
* Threshold-free figures (ROC AUC, PR AUC, Brier, ECE) rank or score the pooled probabilities
  of models from different folds together; models whose output scales differ lower the pooled
  AUC a little compared with the per-fold mean (the per-run table shows the per-fold values).
* Confidence intervals: as :func:`covidxr.evaluation.bootstrap_metrics` (groups resampled
  within class strata; Wilson intervals on the effective sample size for proportions),
  conditional on each configuration and its thresholds.

**Choosing a configuration** (:func:`grid_selection`) uses validation data only: each run's
validation ROC AUC (image level, its ``val`` rows), averaged over the folds of a configuration
(backbone × feature layer × strategy); the best mean wins, ties broken by :data:`SELECTION_RULE`.
The pooled test figures of every configuration are descriptive: choosing on them would tune on
test data.

Three-class tasks decide by arg-max, so no threshold is involved there (validation AUC: the
one-vs-rest macro mean).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..data.groups import group_column
from . import bootstrap as B
from . import metrics as M
from .runs import read_run
from .scoring import compare_runs, run_thresholds

__all__ = ["SELECTION_RULE", "configuration_label", "fold_mean_auc", "grid_comparison", "grid_selection",
           "pooled_metrics"]

#: How :func:`grid_selection` orders configurations (the first is chosen).
SELECTION_RULE = ("highest mean of the per-fold validation ROC AUCs (image level); ties: the higher minimum "
                  "per-fold validation ROC AUC, then backbone, feature layer and strategy names in alphabetical order; "
                  "configurations without a validation AUC come last")


def configuration_label(backbone, feature_layer, strategy) -> str:
    """A grid configuration's name in the tables: ``"<backbone> / <strategy>"``, or
    ``"<backbone>:<feature layer> / <strategy>"`` for a backbone cut at a feature layer."""
    layer = _layer_or_none(feature_layer)
    return f"{backbone}{':' + layer if layer else ''} / {strategy}"


def _layer_or_none(value) -> str | None:
    """A feature layer as the tables hold it: None for the whole backbone (None, NaN, "", "none")."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip().lower() in ("", "none"):
        return None
    return str(value)


def _check_thresholds(frame: pd.DataFrame) -> pd.DataFrame:
    """Two classes: finite ``threshold`` (and ``patient_threshold``, defaulting to it), one fold
    per patient."""
    if "threshold" not in frame.columns or not np.isfinite(frame["threshold"].to_numpy(float)).all():
        raise ValueError("Expected a finite 'threshold' column (each fold's validation threshold). "
                         f"Received: columns={list(frame.columns)}")
    if "patient_threshold" not in frame.columns:
        frame = frame.assign(patient_threshold=frame["threshold"])
    if not np.isfinite(frame["patient_threshold"].to_numpy(float)).all():
        raise ValueError("Expected a finite 'patient_threshold' column (each fold's validation patient threshold). "
                         f"Received: non_finite={int((~np.isfinite(frame['patient_threshold'].to_numpy(float))).sum())}")
    per_patient_thr = frame.groupby("patient")["threshold"].nunique()
    if (per_patient_thr > 1).any():
        raise ValueError("Expected each patient in one fold's test part only (patient-grouped folds). "
                         f"Received: patients={list(per_patient_thr[per_patient_thr > 1].index[:5])}")
    return frame


def pooled_metrics(predictions: pd.DataFrame, *, classes, n_bootstrap=1000, seed=0, level=0.95) -> dict:
    """Score the pooled test predictions of several folds, each row at its fold's thresholds.

    Args:
        predictions: Test rows of all folds, shape (n, ...): ``patient``, ``label``,
            ``prob_<class>`` per class, ``threshold`` (the row's fold's image threshold) and
            optionally ``patient_threshold`` (its patient threshold; default ``threshold``)
            and ``group`` (the split group; default ``patient``). Thresholds are ignored for
            three classes. Each patient must be in one fold only.
        classes: Class names in model output order (two classes: positive = ``classes[1]``).
        n_bootstrap, seed, level: Group bootstrap settings.

    Returns:
        ``{"image": block, "patient": block, "n_images", "n_patients"}``; each block as
        :func:`covidxr.evaluation.bootstrap_metrics` returns it. Per patient: the mean
        probability over the patient's images, at the patient's fold's patient threshold.
    """
    classes = [str(c) for c in classes]
    if predictions.empty:
        raise ValueError("Expected pooled test predictions to score. Received: n_images=0")
    frame = predictions.assign(patient=predictions["patient"].astype(str), label=predictions["label"].astype(str))
    frame = frame.assign(group=frame[group_column(frame)].astype(str))
    two = len(classes) == 2
    frame = _check_thresholds(frame) if two else frame.assign(threshold=np.nan, patient_threshold=np.nan)
    cols = M.prob_columns(classes)
    per_patient = frame.groupby(["patient", "label"], sort=True).agg(
        {**{c: "mean" for c in cols}, "patient_threshold": "first", "group": "first"}).reset_index()
    out = {"n_images": int(len(frame)), "n_patients": int(frame["patient"].nunique())}
    for level_name, table, column in (("image", frame, "threshold"), ("patient", per_patient, "patient_threshold")):
        y, probs = M.class_probabilities(table, classes)
        out[level_name] = B.bootstrap_metrics(y, probs, table["group"].to_numpy(), classes=classes,
                                              threshold=table[column].to_numpy(float) if two else None,
                                              n_bootstrap=n_bootstrap, seed=seed, level=level)
    return out


def fold_mean_auc(y_true, scores, folds, groups, *, n_bootstrap=1000, seed=0, level=0.95) -> dict:
    """The mean of the per-fold ROC AUCs of pooled test scores, with a group-bootstrap interval.

    Where folds differ in prevalence (sources held out above all) the pooled ROC AUC also ranks
    images of one fold against those of another, so it mixes the folds' differences into the figure;
    the mean of the per-fold AUCs does not. Report both; a conclusion about the model rests on this one.

    Args:
        y_true: 0/1 labels (n,) (1: the positive class). scores: Its scores (n,).
        folds: Fold of each row (n,) (its test part). groups: Split group of each row (n,): a group
            lies in one fold, so resampling groups within (fold, class) strata keeps every fold.
        n_bootstrap, seed, level: The bootstrap's settings.

    Returns:
        ``{"value", "ci_low", "ci_high", "n_used", "per_fold": {fold: AUC}}``; a fold whose test
        part lacks a class has AUC NaN and is left out of the mean.

    Raises:
        ValueError: Arrays of different lengths.
    """
    from sklearn.metrics import roc_auc_score

    y, s = np.asarray(y_true, dtype=int), np.asarray(scores, dtype=float)
    folds, groups = np.asarray(folds).astype(str), np.asarray(groups).astype(str)
    if not len(y) == len(s) == len(folds) == len(groups):
        raise ValueError(f"Expected labels, scores, folds and groups of one length. Received: lengths="
                         f"{[len(y), len(s), len(folds), len(groups)]}")
    names = sorted(set(folds))

    def score(rows):
        aucs = []
        for name in names:
            picked = rows[folds[rows] == name]
            aucs.append(roc_auc_score(y[picked], s[picked]) if len(set(y[picked])) == 2 else np.nan)
        defined = [a for a in aucs if np.isfinite(a)]
        return {"mean": float(np.mean(defined)) if defined else float("nan"),
                **{f"fold {n}": float(a) for n, a in zip(names, aucs)}}

    strata = np.char.add(np.char.add(folds, ":"), y.astype(str))
    result = B.patient_bootstrap(score, groups, labels=strata, n_bootstrap=n_bootstrap, seed=seed, level=level)
    mean = result["metrics"]["mean"]
    return {"value": mean["value"], "ci_low": mean["ci_low"], "ci_high": mean["ci_high"], "n_used": mean["n_used"],
            "per_fold": {n: result["metrics"][f"fold {n}"]["value"] for n in names}}


def _fold_mean(pooled: pd.DataFrame, classes, **bootstrap) -> dict | None:
    """:func:`fold_mean_auc` of a configuration's pooled test rows (two classes and two folds or
    more; else None)."""
    if len(classes) != 2 or pooled["fold"].nunique() < 2:
        return None
    y, probs = M.class_probabilities(pooled, classes)
    return fold_mean_auc(np.asarray(y) == 1, probs[:, 1], pooled["fold"].to_numpy(),
                         pooled[group_column(pooled)].to_numpy(), **bootstrap)


def _validation_auc(preds: pd.DataFrame, classes) -> float:
    """A run's validation ROC AUC (image level; three classes: one-vs-rest macro), NaN when its
    validation part lacks a class."""
    val = preds[preds["part"].astype(str) == "val"]
    if val.empty:
        return float("nan")
    y, probs = M.class_probabilities(val, classes)
    auc = M.part_metrics(y, probs)["roc_auc"]
    return float("nan") if auc is None else float(auc)


def _read_members(run_dirs, *, threshold_method, target_sensitivity) -> dict:
    """``(backbone, feature layer, strategy) -> [(run, config, classes, test rows, image info, patient info,
    val AUC)]``."""
    groups: dict[tuple, list] = {}
    for run in run_dirs:
        config, preds = read_run(run)
        classes = [str(c) for c in config["classes"]]
        info, pinfo = run_thresholds(preds, classes=classes, threshold_method=threshold_method,
                                     target_sensitivity=target_sensitivity)
        test = preds[preds["part"].astype(str) == "test"].copy()
        test["threshold"] = np.nan if info is None else float(info["threshold"])
        test["patient_threshold"] = np.nan if pinfo is None else float(pinfo["threshold"])
        test["fold"] = config.get("fold")
        key = (config.get("backbone"), _layer_or_none(config.get("feature_layer")), config.get("strategy"))
        groups.setdefault(key, []).append((run, config, classes, test, info, pinfo, _validation_auc(preds, classes)))
    for members in groups.values():
        members.sort(key=lambda m: (m[1].get("fold") or 0, m[0].name))
    return groups


def _listed(infos) -> str:
    return ", ".join("argmax" if i is None else f"{float(i['threshold']):.4f}" for i in infos)


def grid_comparison(run_dirs, *, n_bootstrap=1000, seed=0, level=0.95, threshold_method="youden",
                    target_sensitivity=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The pooled (per backbone × feature layer × strategy) and per-run tables of a grid's runs.

    Args:
        run_dirs: Finished run folders (k-fold runs: ``config.json`` has ``folds``/``fold``).
        n_bootstrap, seed, level: Group bootstrap settings.
        threshold_method, target_sensitivity: How each run's thresholds are chosen on its own
            validation part (:func:`covidxr.evaluation.run_thresholds`).

    Returns:
        ``(pooled, per_run)``. ``pooled`` has one row per backbone × feature layer × strategy ×
        level with ``run`` (:func:`configuration_label`), ``task, backbone, feature_layer`` (None:
        the whole backbone), ``strategy, fold`` (``"k pooled"``), ``weights, data, level,
        n_images, n_patients, threshold`` (NaN: one per
        fold, listed in ``thresholds``: the level's own), ``folds``, ``thresholds``, ``runs``,
        ``val_roc_auc_mean``, ``val_roc_auc_min``, ``val_roc_aucs`` (per fold) and for every
        metric ``<m>, <m>_ci_low, <m>_ci_high``, among them (two classes, image level)
        ``roc_auc_fold_mean``: the mean of the per-fold test ROC AUCs (:func:`fold_mean_auc`), beside the
        pooled ``roc_auc`` (per patient: NaN). ``per_run`` is
        :func:`covidxr.evaluation.compare_runs` over the same folders plus ``val_roc_auc``.
    """
    run_dirs = [Path(r) for r in run_dirs]
    if not run_dirs:
        raise ValueError("Expected at least one finished run folder. Received: run_dirs=[]")
    groups = _read_members(run_dirs, threshold_method=threshold_method, target_sensitivity=target_sensitivity)
    rows, val_aucs = [], {}
    for (backbone, feature_layer, strategy), members in groups.items():
        config, classes = members[0][1], members[0][2]
        pooled = pd.concat([m[3] for m in members], ignore_index=True)
        result = pooled_metrics(pooled, classes=classes, n_bootstrap=n_bootstrap, seed=seed, level=level)
        fold_mean = _fold_mean(pooled, classes, n_bootstrap=n_bootstrap, seed=seed, level=level)
        aucs = np.array([m[6] for m in members], dtype=float)
        val_aucs.update({m[0].name: m[6] for m in members})
        for level_name, infos in (("image", [m[4] for m in members]), ("patient", [m[5] for m in members])):
            row = {"run": configuration_label(backbone, feature_layer, strategy), "task": config.get("task"),
                   "backbone": backbone, "feature_layer": feature_layer, "strategy": strategy,
                   "fold": f"{len(members)} pooled", "weights": config.get("weights"), "image_size": config.get("image_size"),
                   "data": "test (folds pooled)", "level": level_name, "n_images": result["n_images"],
                   "n_patients": result["n_patients"], "threshold": np.nan, "folds": len(members),
                   "thresholds": _listed(infos), "runs": ", ".join(m[0].name for m in members),
                   "val_roc_auc_mean": float(aucs.mean()), "val_roc_auc_min": float(aucs.min()),
                   "val_roc_aucs": ", ".join(f"{a:.4f}" for a in aucs)}
            figures = dict(result[level_name]["metrics"])
            if fold_mean is not None:  # beside the pooled ROC AUC (image level; NaN per patient)
                figures["roc_auc_fold_mean"] = fold_mean if level_name == "image" else dict.fromkeys(fold_mean, np.nan)
            for metric, fig in figures.items():
                row[metric] = fig["value"]
                row[f"{metric}_ci_low"] = fig["ci_low"]
                row[f"{metric}_ci_high"] = fig["ci_high"]
            rows.append(row)
    per_run = compare_runs(run_dirs, n_bootstrap=n_bootstrap, seed=seed, level=level,
                           threshold_method=threshold_method, target_sensitivity=target_sensitivity)
    per_run["val_roc_auc"] = per_run["run"].map(val_aucs)
    return pd.DataFrame(rows), per_run


def _ranked(pooled: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration, in :data:`SELECTION_RULE` order."""
    if "feature_layer" not in pooled.columns:  # a table from before feature layers
        pooled = pooled.assign(feature_layer=None)
    configs = pooled.drop_duplicates(["run"])[
        ["run", "backbone", "feature_layer", "strategy", "folds", "val_roc_auc_mean", "val_roc_auc_min",
         "val_roc_aucs"]]
    key = configs.assign(_l=configs["feature_layer"].map(lambda v: _layer_or_none(v) or ""),
        _missing=configs["val_roc_auc_mean"].isna(), _mean=-configs["val_roc_auc_mean"].fillna(0.0).round(12),
        _min=-configs["val_roc_auc_min"].fillna(0.0).round(12), _b=configs["backbone"].astype(str),
        _s=configs["strategy"].astype(str))
    order = key.sort_values(["_missing", "_mean", "_min", "_b", "_l", "_s"], kind="stable").index
    return configs.loc[order].reset_index(drop=True)


def grid_selection(pooled: pd.DataFrame) -> dict:
    """The configuration chosen on validation (:data:`SELECTION_RULE`) and its pooled test figures.

    Args:
        pooled: :func:`grid_comparison`'s pooled table (with ``val_roc_auc_mean``/``_min``).

    Returns:
        A JSON-ready dict: ``backbone``, ``feature_layer`` (None: the whole backbone), ``strategy``,
        ``run`` (:func:`configuration_label`),
        ``val_roc_auc_mean``, ``val_roc_auc_min``, ``val_roc_aucs``, ``folds``, ``rule``,
        ``ranking`` (every configuration in rule order: run, mean, min) and ``test``
        ({level: {metric: {value, ci_low, ci_high}}}: the chosen one's pooled test figures).

    Raises:
        ValueError: The table is empty or lacks the validation AUC columns.
    """
    needed = ["backbone", "strategy", "level", "val_roc_auc_mean", "val_roc_auc_min"]
    missing = [c for c in needed if c not in pooled.columns]
    if pooled.empty or missing:
        raise ValueError("Expected grid_comparison's pooled table with validation AUCs. "
                         f"Received: rows={len(pooled)}, missing={missing}")
    ranked = _ranked(pooled)
    best = ranked.iloc[0]
    chosen = pooled[pooled["run"] == best["run"]]
    metrics = [c for c in pooled.columns if f"{c}_ci_low" in pooled.columns]
    nan_none = lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)  # noqa: E731
    return {
        "backbone": best["backbone"], "feature_layer": _layer_or_none(best["feature_layer"]),
        "strategy": best["strategy"], "run": best["run"],
        "val_roc_auc_mean": nan_none(best["val_roc_auc_mean"]), "val_roc_auc_min": nan_none(best["val_roc_auc_min"]),
        "val_roc_aucs": best["val_roc_aucs"], "folds": int(best["folds"]), "rule": SELECTION_RULE,
        "ranking": [{"run": r.run, "val_roc_auc_mean": nan_none(r.val_roc_auc_mean),
                     "val_roc_auc_min": nan_none(r.val_roc_auc_min)} for r in ranked.itertuples()],
        "test": {row["level"]: {m: {"value": nan_none(row[m]), "ci_low": nan_none(row[f"{m}_ci_low"]),
                                    "ci_high": nan_none(row[f"{m}_ci_high"])} for m in metrics}
                 for _, row in chosen.iterrows()},
    }
