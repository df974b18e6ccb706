"""Paired comparison of two runs scored on the same images: the difference of a threshold-free
figure (ROC AUC by default), per image and per patient, with a paired group-bootstrap interval.
Must not write files or train: it reads run folders (predictions, evaluations) and returns dicts.

Two runs' intervals that overlap say little about their difference, because both were measured
on the same images: an image that is hard for one model is often hard for the other. The paired
bootstrap keeps that pairing: each resample draws split groups (stratified by class, as
:func:`covidxr.evaluation.patient_bootstrap` does) and the **same** drawn rows score both runs,
so the interval is that of the difference itself. The resamples are scored all at once
(:func:`covidxr.evaluation.resampled_bootstrap`).

The p-value is the bootstrap's two-sided one: twice the smaller of the shares of resamples with
a difference <= 0 and >= 0, capped at 1. It is coarse (no finer than 2 / resamples) and, like
the interval, conditional on the two models as trained.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from ..data.groups import UnionFind, group_column
from . import metrics as M
from .bootstrap import resampled_bootstrap
from .resampled import resampled_metrics
from .runs import held_out_test, read_run
from .scoring import latest_evaluation

__all__ = ["PAIRED_METRICS", "P_VALUE_RULE", "paired_bootstrap", "paired_difference", "paired_predictions"]

#: Threshold-free figures a paired comparison can take: (two-class name, three-class name).
PAIRED_METRICS = {"roc_auc": ("roc_auc", "roc_auc[macro]"), "pr_auc": ("pr_auc", "pr_auc[macro]"),
                  "brier": ("brier", "brier")}

#: How :func:`paired_bootstrap` computes its p-value (stored with every result).
P_VALUE_RULE = ("two-sided bootstrap p-value: 2 x the smaller share of resamples with difference <= 0 or >= 0, "
                "capped at 1")


def _metric_name(metric: str, classes) -> str:
    if metric not in PAIRED_METRICS:
        raise ValueError(f"Unknown paired metric. Expected one of {list(PAIRED_METRICS)}. Received: metric={metric!r}")
    return PAIRED_METRICS[metric][0 if len(classes) == 2 else 1]


def _figure(name: str, y, probs, classes) -> float:
    """One figure of :data:`PAIRED_METRICS`, as :func:`covidxr.evaluation.compute_metrics` gives it
    (two classes: scikit-learn directly, which is what it calls, without the other figures)."""
    if len(classes) != 2:
        return M.compute_metrics(y, probs, classes=classes)[name]
    if name == "brier":
        return float(np.mean((probs[:, 1] - y) ** 2)) if len(y) else float("nan")
    if np.unique(y).size < 2:
        return float("nan")
    return float((skm.roc_auc_score if name == "roc_auc" else skm.average_precision_score)(y, probs[:, 1]))


def paired_bootstrap(y_true, probs_a, probs_b, groups, *, classes, metric="roc_auc", n_bootstrap=1000, seed=0,
                     level=0.95) -> dict:
    """The difference ``a - b`` of one figure of two sets of predictions of the same rows, with a
    paired, class-stratified group-bootstrap interval.

    Args:
        y_true: Class indices of shape (n,).
        probs_a: Run A's probabilities of shape (n, C).
        probs_b: Run B's probabilities of the same rows, shape (n, C).
        groups: Split group per row, shape (n,): resampled as a whole.
        classes: C class names.
        metric: One of :data:`PAIRED_METRICS` (three classes: the macro one-vs-rest figure).
        n_bootstrap, seed, level: Resamples (>= 1), their seed, the interval's coverage.

    Returns:
        ``{"metric", "a", "b", "difference", "p_value", "p_value_rule", "n_images", "n_groups",
        "n_bootstrap", "seed", "level"}``; ``a``, ``b`` and ``difference`` are
        ``{"value", "ci_low", "ci_high", "n_used"}``.
    """
    if int(n_bootstrap) < 1:
        raise ValueError(f"Expected n_bootstrap >= 1 for a paired interval. Received: n_bootstrap={n_bootstrap!r}")
    classes = list(classes)
    name = _metric_name(metric, classes)
    y_true = np.asarray(y_true, dtype=int)
    probs_a, probs_b = np.asarray(probs_a, dtype=float), np.asarray(probs_b, dtype=float)
    if not (probs_a.shape == probs_b.shape == (len(y_true), len(classes)) and len(groups) == len(y_true)):
        raise ValueError(f"Expected y_true (n,), groups (n,) and probabilities (n, {len(classes)}) of both runs. "
                         f"Received: shapes={(y_true.shape, np.shape(groups), probs_a.shape, probs_b.shape)}")
    fa, fb = _figure(name, y_true, probs_a, classes), _figure(name, y_true, probs_b, classes)
    drawn = []

    def score(counts):
        ra = resampled_metrics(counts, y_true, probs_a, classes=classes)[name]
        rb = resampled_metrics(counts, y_true, probs_b, classes=classes)[name]
        drawn.append(ra - rb)
        return {"a": ra, "b": rb, "difference": ra - rb}

    boot = resampled_bootstrap(score, groups, point={"a": fa, "b": fb, "difference": fa - fb}, labels=y_true,
                               n_bootstrap=n_bootstrap, seed=seed, level=level)
    drawn = np.concatenate(drawn)
    drawn = drawn[~np.isnan(drawn)]
    p_value = float("nan")
    if drawn.size:
        p_value = float(min(1.0, 2.0 * min(np.mean(drawn <= 0), np.mean(drawn >= 0))))
    keep = ("value", "ci_low", "ci_high", "n_used")
    out = {key: {k: boot["metrics"][key][k] for k in keep} for key in ("a", "b", "difference")}
    return {"metric": name, **out, "p_value": p_value, "p_value_rule": P_VALUE_RULE, "n_images": int(len(y_true)),
            "n_groups": boot["n_groups"], "n_bootstrap": int(n_bootstrap), "seed": int(seed), "level": float(level)}


def _scored_rows(run: Path, evaluation) -> tuple[dict, pd.DataFrame]:
    """A run's config and the rows to compare: its test part, or its latest named evaluation's."""
    config, preds = read_run(run)
    if evaluation is None:
        return config, held_out_test(preds)
    table = latest_evaluation(run, evaluation) / "predictions.csv"
    if not table.is_file():
        raise FileNotFoundError(f"Expected predictions.csv in the evaluation folder. Received: path={str(table)!r}")
    return config, pd.read_csv(table, dtype={"image": str, "patient": str, "label": str, "part": str,
                                             "group": str})


def _first(items, n=5) -> str:
    items = sorted(items)
    return ", ".join(items[:n]) + (f" ... ({len(items)} in all)" if len(items) > n else "")


def _check_same_images(a: pd.DataFrame, b: pd.DataFrame, names) -> None:
    for frame, name in zip((a, b), names):
        twice = frame["image"][frame["image"].duplicated()].unique()
        if len(twice):
            raise ValueError(f"Expected each image once in the predictions of run {name!r}. "
                             f"Received: repeated={_first(twice)}")
    only_a, only_b = set(a["image"]) - set(b["image"]), set(b["image"]) - set(a["image"])
    if only_a or only_b:
        raise ValueError(
            "Expected two runs scored on the same images (a paired comparison needs every image in both); "
            f"{len(only_a)} are only in {names[0]!r}, {len(only_b)} only in {names[1]!r}. "
            f"Received: only_a=[{_first(only_a)}], only_b=[{_first(only_b)}]")


def _joint_groups(a: pd.DataFrame, b: pd.DataFrame) -> np.ndarray:
    """One split group per row that holds both runs' groups together (their union-find), so a
    resample never splits a group of either run."""
    ga = a[group_column(a)].astype(str).to_numpy()
    gb = b[group_column(b)].astype(str).to_numpy()
    sets = UnionFind()
    for x, y in zip(ga, gb):
        sets.union(("a", x), ("b", y))
    name = {}  # each joint group is named after its smallest group of run A
    for x in sorted(set(ga)):
        name.setdefault(sets.find(("a", x)), x)
    return np.array([name[sets.find(("a", x))] for x in ga], dtype=str)


def paired_predictions(run_a, run_b, *, evaluation=None) -> tuple[pd.DataFrame, list[str], dict]:
    """Both runs' predictions of the same images, one row per image.

    Args:
        run_a, run_b: Run folders.
        evaluation: None: each run's test part (``predictions.csv``, ``part == "test"``); a name:
            each run's latest ``evaluations/<name>-*/predictions.csv``.

    Returns:
        ``(table, classes, configs)``: columns ``image, patient, group, label``, ``a_prob_<class>``
        and ``b_prob_<class>`` per class (rows in run A's order; ``group`` joins both runs' split
        groups); the class names; ``{"a": config, "b": config}``.

    Raises:
        ValueError: The runs differ in classes, in the images they scored (names some of
            those in only one) or in an image's label.
    """
    run_a, run_b = Path(run_a), Path(run_b)
    names = (run_a.name, run_b.name)
    (config_a, a), (config_b, b) = _scored_rows(run_a, evaluation), _scored_rows(run_b, evaluation)
    classes = [str(c) for c in config_a["classes"]]
    if [str(c) for c in config_b["classes"]] != classes:
        raise ValueError(f"Expected two runs with the same classes. Received: classes={classes} and "
                         f"{config_b['classes']}")
    _check_same_images(a, b, names)
    b = b.set_index("image").loc[a["image"]].reset_index()
    differ = a["label"].astype(str).to_numpy() != b["label"].astype(str).to_numpy()
    if differ.any():
        raise ValueError(f"Expected each image to carry the same label in both runs. "
                         f"Received: images={_first(a.loc[differ, 'image'])}")
    cols = M.prob_columns(classes)
    table = pd.DataFrame({"image": a["image"].astype(str), "patient": a["patient"].astype(str),
                          "group": _joint_groups(a, b), "label": a["label"].astype(str)})
    for col in cols:
        table[f"a_{col}"] = a[col].to_numpy(float)
        table[f"b_{col}"] = b[col].to_numpy(float)
    return table, classes, {"a": config_a, "b": config_b}


def _run_block(table: pd.DataFrame, side: str, classes) -> pd.DataFrame:
    """One run's rows of a paired table as a predictions frame (``patient, group, label, prob_*``)."""
    frame = table[["image", "patient", "group", "label"]].copy()
    for col in M.prob_columns(classes):
        frame[col] = table[f"{side}_{col}"].to_numpy()
    return frame


def paired_difference(run_a, run_b, *, evaluation=None, metric="roc_auc", n_bootstrap=1000, seed=0,
                      level=0.95) -> dict:
    """Compare two runs on the same images: ``A - B`` of ``metric`` per image and per patient, with
    paired, class-stratified group-bootstrap intervals (:func:`paired_bootstrap`).

    Per patient, a patient's probability is the mean over their images (as in
    :func:`covidxr.evaluation.patient_frame`); both runs have the same patients.

    Args:
        run_a, run_b: Run folders (A is the one expected to be better; the sign is A - B).
        evaluation: None: the runs' test parts; a name: their latest evaluations of that name.
        metric: One of :data:`PAIRED_METRICS`.
        n_bootstrap, seed, level: Resamples, their seed, the intervals' coverage.

    Returns:
        ``{"runs": {"a", "b"}, "config": {"a", "b"}, "data", "metric", "classes", "n_images",
        "n_patients", "n_groups", "image": {...}, "patient": {...}}``, each level block as
        :func:`paired_bootstrap` returns it (``a``, ``b``, ``difference`` with ``value``,
        ``ci_low``, ``ci_high``, ``n_used``; ``p_value``; ``n_images`` counts that level's rows).
    """
    table, classes, configs = paired_predictions(run_a, run_b, evaluation=evaluation)
    _metric_name(metric, classes)
    options = {"classes": classes, "metric": metric, "n_bootstrap": n_bootstrap, "seed": seed, "level": level}
    y, pa = M.class_probabilities(_run_block(table, "a", classes), classes)
    _, pb = M.class_probabilities(_run_block(table, "b", classes), classes)
    image = paired_bootstrap(y, pa, pb, table["group"].to_numpy(), **options)
    per_a = M.patient_frame(_run_block(table, "a", classes), classes)
    per_b = M.patient_frame(_run_block(table, "b", classes), classes)
    py, ppa = M.class_probabilities(per_a, classes)
    _, ppb = M.class_probabilities(per_b, classes)
    patient = paired_bootstrap(py, ppa, ppb, per_a["group"].to_numpy(), **options)
    keys = ("backbone", "weights", "strategy", "fold", "feature_layer", "image_size")
    return {
        "runs": {"a": Path(run_a).name, "b": Path(run_b).name},
        "config": {side: {k: cfg.get(k) for k in keys if k in cfg} for side, cfg in configs.items()},
        "data": "test" if evaluation is None else f"evaluation {evaluation!r}",
        "metric": metric,
        "classes": classes,
        "n_images": int(len(table)),
        "n_patients": int(table["patient"].nunique()),
        "n_groups": int(table["group"].nunique()),
        "image": image,
        "patient": patient,
    }

