"""Split conformal prediction sets, class-conditional (Mondrian by the true class) by default,
through the ``crepes`` library: fit on labelled calibration rows, a set per new image, and the
coverage, set size and referral share of the sets on scored rows.
Must not read or write files, nor choose anything on the rows it scores: arrays in, dicts out.

* **Score** (non-conformity): the hinge score ``1 - p(class)`` (:func:`crepes.extras.hinge`).
* **Fit** (:func:`fit_conformal`): the calibration rows' scores of their true class. Class-conditional
  (``class_conditional=True``, the default) keeps one list per class, so that each class, the rare
  one too, keeps its own coverage of at least ``1 - alpha``; otherwise one list for all rows
  (coverage ``>= 1 - alpha`` only on average over the classes).
* **Set** (:func:`prediction_sets`): class ``c`` is in an image's set when its conformal p-value
  (:meth:`crepes.ConformalClassifier.predict_p`, not smoothed:
  ``(#{calibration scores of c >= the image's score for c} + 1) / (n_c + 1)``) is ``> alpha``.
  Unsmoothed p-values are conservative: with ``n_c`` calibration rows of class ``c`` the coverage of
  ``c`` lies in ``[1 - alpha, 1 - alpha + 1 / (n_c + 1)]`` when calibration and new rows are
  exchangeable (same sources, same prevalence); with fewer than ``1 / alpha - 1`` rows of ``c``
  (9 at ``alpha = 0.1``) every set holds ``c``.
* An image whose set holds two (or more) classes is **referred** ("uncertain: refer"); an empty set
  (possible class-conditionally) is counted too and also referred.

For two classes, strictly monotone recalibrations (temperature, Platt) leave the class-conditional
sets unchanged: they keep the order of ``p(c)`` within each class's calibration rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from crepes import ConformalClassifier
from crepes.extras import hinge

from . import metrics as M
from ..data.groups import group_column
from .intervals import design_effect, wilson_interval
from .runs import held_out_test, read_run

__all__ = ["CONFORMAL_RULE", "check_alpha", "conformal_frame", "conformal_summary", "fit_conformal",
           "pooled_conformal", "prediction_sets", "run_conformal", "set_labels"]

#: How sets are formed, for reports.
CONFORMAL_RULE = ("split conformal (crepes), hinge score 1 - p(class), unsmoothed p-values; class c is in the set "
                  "when its p-value > alpha")


def check_alpha(alpha) -> float:
    """``alpha`` as a float in (0, 1), or a ValueError."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0 < value < 1:
        raise ValueError(f"Expected the conformal miscoverage alpha in (0, 1), e.g. 0.1 for 90% sets. "
                         f"Received: alpha={alpha!r}")
    return value


def fit_conformal(y, probs, *, classes, alpha, class_conditional=True) -> dict:
    """Fit split conformal sets on labelled calibration rows.

    Args:
        y: Class indices of the calibration rows, shape (n,).
        probs: Their probabilities, shape (n, C).
        classes: The C class names.
        alpha: Target miscoverage in (0, 1): sets cover the true class with probability ``>= 1 - alpha``.
        class_conditional: Mondrian by the true class (each class keeps its coverage).

    Returns:
        A JSON-ready dict: ``alpha``, ``class_conditional``, ``classes``, ``scores`` (the calibration
        rows' hinge scores of their true class, shape (n,)), ``labels`` (their class indices),
        ``n_calibration`` ({class: rows}), ``rule``.

    Raises:
        ValueError: alpha outside (0, 1), shapes that disagree, no rows, or (class-conditional) a
            class without calibration rows.
    """
    alpha = check_alpha(alpha)
    classes = [str(c) for c in classes]
    y = np.asarray(y, dtype=int)
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2 or probs.shape != (len(y), len(classes)) or len(y) == 0:
        raise ValueError(f"Expected calibration probabilities of shape (n, {len(classes)}) with n >= 1 matching "
                         f"{len(y)} labels. Received: shape={probs.shape}")
    counts = {c: int((y == i).sum()) for i, c in enumerate(classes)}
    if class_conditional and min(counts.values()) == 0:
        raise ValueError(f"Expected calibration rows of every class for class-conditional sets. "
                         f"Received: n_calibration={counts}")
    scores = hinge(probs, np.arange(len(classes)), y)
    return {"alpha": alpha, "class_conditional": bool(class_conditional), "classes": classes,
            "scores": [float(s) for s in scores], "labels": [int(v) for v in y], "n_calibration": counts,
            "rule": CONFORMAL_RULE}


def _p_values(model: dict, probs: np.ndarray) -> np.ndarray:
    """Conformal p-values of every class, shape (n, C)."""
    scores = np.asarray(model["scores"], dtype=float)
    labels = np.asarray(model["labels"], dtype=int)
    alphas = hinge(probs)
    cc = ConformalClassifier()
    if not model["class_conditional"]:
        cc.fit(scores)
        return cc.predict_p(alphas, smoothing=False)
    cc.fit(scores, bins=labels)
    n = len(probs)
    return np.stack([cc.predict_p(alphas, bins=np.full(n, c), smoothing=False)[:, c]
                     for c in range(probs.shape[1])], axis=1)


def prediction_sets(model: dict, probs) -> np.ndarray:
    """The conformal sets of new rows.

    Args:
        model: :func:`fit_conformal`'s dict (as read back from JSON too).
        probs: Probabilities of shape (n, C) (C = ``len(model["classes"])``).

    Returns:
        Bool array of shape (n, C): ``True`` where the class is in the row's set.
    """
    probs = np.asarray(probs, dtype=float)
    classes = model["classes"]
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise ValueError(f"Expected probabilities of shape (n, {len(classes)}) for classes {classes}. "
                         f"Received: shape={probs.shape}")
    if len(probs) == 0:
        return np.zeros((0, len(classes)), dtype=bool)
    return _p_values(model, probs) > float(model["alpha"])


def set_labels(sets: np.ndarray, classes) -> list[str]:
    """Each set as text: ``"{covid}"``, ``"{non-covid, covid}"``, ``"{}"``."""
    names = np.asarray([str(c) for c in classes])
    return ["{" + ", ".join(names[row]) + "}" for row in np.asarray(sets, dtype=bool)]


def _proportion(success, groups, level) -> dict:
    d = design_effect(success, groups)
    low, high = wilson_interval(d["p"], d["n_eff"], level=level)
    return {"value": d["p"], "ci_low": low, "ci_high": high, "n": d["n"], "n_eff": d["n_eff"]}


def conformal_summary(y, sets, groups, *, classes, level=0.95) -> dict:
    """Coverage, set size and referrals of conformal sets on labelled rows.

    Intervals are Wilson intervals on the effective sample size of the rows' groups
    (:func:`covidxr.evaluation.design_effect`): rows of one patient are not independent.

    Args:
        y: Class indices, shape (n,).
        sets: :func:`prediction_sets`' bool array, shape (n, C).
        groups: Each row's group (patient), shape (n,).
        classes: The C class names.
        level: Interval coverage.

    Returns:
        ``coverage`` ({"overall": figure, <class>: figure}), ``mean_set_size``, ``refer`` (share of
        sets with two or more classes), ``empty`` (share of empty sets), ``singleton_accuracy`` (right
        among one-class sets), ``n`` and ``n_per_class``; a figure is ``{value, ci_low, ci_high, n,
        n_eff}``.
    """
    y = np.asarray(y, dtype=int)
    sets = np.asarray(sets, dtype=bool)
    groups = np.asarray(groups).astype(str)
    covered = sets[np.arange(len(y)), y] if len(y) else np.zeros(0, bool)
    size = sets.sum(axis=1)
    coverage = {"overall": _proportion(covered, groups, level)}
    for i, c in enumerate(classes):
        rows = y == i
        coverage[str(c)] = _proportion(covered[rows], groups[rows], level)
    single = size == 1
    return {"coverage": coverage, "mean_set_size": float(size.mean()) if len(y) else float("nan"),
            "refer": _proportion(size >= 2, groups, level), "empty": _proportion(size == 0, groups, level),
            "singleton_accuracy": _proportion(covered[single], groups[single], level), "n": int(len(y)),
            "n_per_class": {str(c): int((y == i).sum()) for i, c in enumerate(classes)}, "level": float(level)}


def conformal_frame(frame: pd.DataFrame, sets: np.ndarray, classes) -> pd.DataFrame:
    """``frame`` with ``in_set_<class>`` per class, ``set`` (text), ``set_size`` and ``refer`` (two or more
    classes) columns."""
    sets = np.asarray(sets, dtype=bool)
    columns = {f"in_set_{c}": sets[:, i] for i, c in enumerate(classes)}
    return frame.assign(**columns, set=set_labels(sets, classes), set_size=sets.sum(axis=1),
                        refer=sets.sum(axis=1) >= 2)


def run_conformal(preds: pd.DataFrame, scored: pd.DataFrame, *, classes, alpha, class_conditional=True,
                  level=0.95, model=None) -> tuple[dict, dict, pd.DataFrame]:
    """Fit sets on a run's validation rows (or use ``model``, e.g. fitted on a site's labelled images)
    and summarise them on ``scored``.

    Args:
        preds: The run's predictions (all parts; ``part == "val"`` rows calibrate).
        scored: The rows to score (``label``, ``prob_<class>``, ``patient``, optional ``group``).
        classes: Class names. alpha, class_conditional: See :func:`fit_conformal`.
        level: Interval coverage.
        model: A fitted :func:`fit_conformal` dict to use instead of the validation rows.

    Returns:
        ``(model, summary, table)``: the fitted sets (with ``calibrated_on``), :func:`conformal_summary`
        of ``scored`` and ``scored`` with :func:`conformal_frame`'s columns.
    """
    if model is None:
        val = preds[preds["part"].astype(str) == "val"]
        if val.empty:
            raise ValueError("Expected validation rows (part == 'val') to calibrate conformal sets. "
                             f"Received: parts={sorted(preds['part'].astype(str).unique())}")
        y_val, p_val = M.class_probabilities(val, classes)
        model = fit_conformal(y_val, p_val, classes=classes, alpha=alpha, class_conditional=class_conditional)
        model["calibrated_on"] = "the run's validation part"
    y, probs = M.class_probabilities(scored, classes)
    sets = prediction_sets(model, probs)
    summary = conformal_summary(y, sets, scored[group_column(scored)].to_numpy(), classes=classes, level=level)
    summary.update(alpha=model["alpha"], class_conditional=model["class_conditional"],
                   n_calibration=model["n_calibration"], calibrated_on=model.get("calibrated_on", ""),
                   rule=model["rule"])
    return model, summary, conformal_frame(scored, sets, classes)


def pooled_conformal(run_dirs, *, alpha, class_conditional=True, level=0.95) -> tuple[pd.DataFrame, dict]:
    """Sets of several runs (e.g. a grid's folds), each calibrated on its own validation part and
    applied to its own test part; the test rows pooled.

    Returns:
        ``(per_run, pooled)``: one row per run (``run``, ``fold``, ``n_val``, ``n_test``, coverage overall
        and per class, ``mean_set_size``, ``refer``, ``empty``) and :func:`conformal_summary` of the pooled
        test rows (groups prefixed by the run, so no two runs share one).
    """
    alpha = check_alpha(alpha)
    rows, tables, classes, n_cal = [], [], None, {}
    for run in run_dirs:
        config, preds = read_run(run)
        run_classes = [str(c) for c in config["classes"]]
        if classes is not None and run_classes != classes:
            raise ValueError(f"Expected runs of one task (classes {classes}). Received: classes={run_classes} "
                             f"in run_dir={str(run)!r}")
        classes = run_classes
        scored = held_out_test(preds)
        model, summary, table = run_conformal(preds, scored, classes=classes, alpha=alpha,
                                              class_conditional=class_conditional, level=level)
        row = {"run": Path(run).name, "fold": config.get("fold"),
               "n_val": sum(model["n_calibration"].values()), "n_test": summary["n"]}
        row.update({f"coverage[{k}]": v["value"] for k, v in summary["coverage"].items()})
        row.update(mean_set_size=summary["mean_set_size"], refer=summary["refer"]["value"],
                   empty=summary["empty"]["value"])
        rows.append(row)
        n_cal = {c: n_cal.get(c, 0) + n for c, n in model["n_calibration"].items()}
        unit = group_column(table)
        tables.append(table.assign(pool_group=f"{len(tables)}:" + table[unit].astype(str)))
    if not tables:
        raise ValueError("Expected at least one run folder. Received: run_dirs=[]")
    pool = pd.concat(tables, ignore_index=True)
    y, _ = M.class_probabilities(pool, classes)
    sets = pool[[f"in_set_{c}" for c in classes]].to_numpy(dtype=bool)
    pooled = conformal_summary(y, sets, pool["pool_group"].to_numpy(), classes=classes, level=level)
    pooled.update(alpha=alpha, class_conditional=bool(class_conditional), n_runs=len(rows), rule=CONFORMAL_RULE,
                  n_calibration=n_cal, calibrated_on="each run's validation part, applied to its own test part")
    return pd.DataFrame(rows), pooled
