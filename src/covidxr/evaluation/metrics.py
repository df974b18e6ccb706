"""Classification metrics of two- and three-class models, the decision rule and the threshold.
Must not read or write files, nor choose a threshold on the data it scores: arrays in, figures out.

Everything here works on plain arrays or on a predictions frame with the columns a run folder's
``predictions.csv`` has: ``image, patient, label, part, prob_<class>`` (one ``prob_`` column
per class, in model output order).

Decisions:

* **Two classes** (positive class = ``classes[1]``): an image is called positive when its
  probability is ``>= threshold``. The threshold is chosen on the *validation* part only
  (:func:`choose_threshold`: Youden's J by default, or the highest threshold that reaches a
  target sensitivity) and then applied unchanged to the test part.
* **Three classes**: the decision is the arg-max of the probabilities (no threshold); the
  per-class figures are one-vs-rest, and ``[macro]`` is their unweighted mean.

The expected calibration error (``ece``, :func:`expected_calibration_error`) uses 10 equal-width
bins of the positive class's probability (two classes) or of the top label's (three classes).

Figures are computed at the data's own prevalence (the test set is never re-balanced).
Per-patient figures use one probability per patient: the mean over that patient's images
(a patient whose images carry different labels counts once per label). Intervals:
:mod:`covidxr.evaluation.bootstrap`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn import metrics as skm

__all__ = [
    "BINARY_METRICS",
    "MULTICLASS_METRICS",
    "PER_CLASS_METRICS",
    "THRESHOLD_METHODS",
    "binary_metrics",
    "choose_threshold",
    "class_probabilities",
    "classes_from_frame",
    "ECE_BINS",
    "compute_metrics",
    "decide",
    "expected_calibration_error",
    "multiclass_metrics",
    "part_metrics",
    "patient_frame",
    "positive",
    "prob_columns",
]

#: Threshold-selection rules for two-class models.
THRESHOLD_METHODS = ("youden", "sensitivity", "fixed")

#: Metrics of a two-class model (positive class = ``classes[1]``), in report order.
BINARY_METRICS = (
    "sensitivity", "specificity", "ppv", "npv", "f1", "balanced_accuracy", "mcc",
    "roc_auc", "pr_auc", "brier", "ece", "accuracy",
)
#: One-vs-rest metrics reported per class (and as ``[macro]``) for three classes.
PER_CLASS_METRICS = ("sensitivity", "specificity", "ppv", "npv", "f1", "roc_auc", "pr_auc", "brier")
#: Whole-model metrics for three classes.
MULTICLASS_METRICS = ("accuracy", "balanced_accuracy", "mcc", "brier", "ece")
#: Equal-width bins of the expected calibration error.
ECE_BINS = 10


# --------------------------------------------------------------------------- helpers

def prob_columns(classes) -> list[str]:
    """The probability columns of a predictions frame: ``prob_<class>`` per class."""
    return [f"prob_{c}" for c in classes]


def classes_from_frame(frame: pd.DataFrame) -> list[str]:
    """Class names from a predictions frame's ``prob_<class>`` columns, in column order."""
    return [c[len("prob_"):] for c in frame.columns if str(c).startswith("prob_")]


def _check_frame(frame: pd.DataFrame, classes) -> None:
    required = ["patient", "label", *prob_columns(classes)]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(
            f"Expected a predictions frame with columns {required}; it has {list(frame.columns)}. "
            f"Received: missing={missing}"
        )
    unknown = sorted(set(frame["label"].astype(str)) - set(classes))
    if unknown:
        raise ValueError(
            f"Expected labels among the model's classes {list(classes)}. Received: labels={unknown}"
        )


def class_probabilities(frame: pd.DataFrame, classes) -> tuple[np.ndarray, np.ndarray]:
    """Class indices and probabilities of a predictions frame.

    Returns:
        ``(y, probs)``: int array of shape (n,) (index into ``classes``) and float array of
        shape (n, len(classes)).
    """
    classes = list(classes)
    _check_frame(frame, classes)
    index = {c: i for i, c in enumerate(classes)}
    y = frame["label"].astype(str).map(index).to_numpy(dtype=int)
    probs = frame[prob_columns(classes)].to_numpy(dtype=float)
    if not np.isfinite(probs).all():
        raise ValueError(
            "Expected finite probabilities in every prob_ column. "
            f"Received: non_finite_rows={int((~np.isfinite(probs).all(axis=1)).sum())}"
        )
    return y, probs


def patient_frame(frame: pd.DataFrame, classes) -> pd.DataFrame:
    """One row per (patient, label): the mean probability over the patient's images.

    Args:
        frame: A predictions frame (``patient``, ``label``, ``prob_<class>``), shape (n, ...).
        classes: Class names in model output order.

    Returns:
        A frame with columns ``patient, label, images, prob_<class>...`` of shape
        (n_patients, 3 + len(classes)); when ``frame`` has a ``group`` column (the split group,
        :mod:`covidxr.data.groups`) also ``group`` after ``images`` (a patient's first group).
    """
    _check_frame(frame, classes)
    cols = prob_columns(classes)
    grouped = frame.assign(patient=frame["patient"].astype(str), label=frame["label"].astype(str))
    by = grouped.groupby(["patient", "label"], sort=True)
    out = by[cols].mean().reset_index()
    out.insert(2, "images", by.size().to_numpy())
    if "group" in frame.columns:
        out.insert(3, "group", by["group"].first().astype(str).to_numpy())
    return out


def positive(scores, threshold) -> np.ndarray:
    """The one decision rule of a two-class model: called positive when ``score >= threshold``.

    Args:
        scores: Probabilities of the positive class, shape (n,).
        threshold: One threshold, or one per row (shape (n,): pooled folds, each row at its
            own fold's threshold).

    Returns:
        bool (n,).
    """
    return np.asarray(scores, dtype=float) >= np.asarray(threshold, dtype=float)


def decide(probs: np.ndarray, *, threshold=None) -> np.ndarray:
    """Predicted class indices of shape (n,) from probabilities of shape (n, C).

    Two classes with a ``threshold`` (one, or one per row): :func:`positive` on
    ``probs[:, 1]``. Otherwise: arg-max.
    """
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2:
        raise ValueError(f"Expected probabilities of shape (n, C). Received: probs.shape={probs.shape}")
    if probs.shape[1] == 2 and threshold is not None:
        return positive(probs[:, 1], threshold).astype(int)
    return probs.argmax(axis=1)


def _ratio(num, den):
    return float(num) / float(den) if den else float("nan")


def _confusion_figures(tp, fp, fn, tn) -> dict:
    sens = _ratio(tp, tp + fn)
    spec = _ratio(tn, tn + fp)
    ppv = _ratio(tp, tp + fp)
    return {
        "sensitivity": sens,
        "specificity": spec,
        "ppv": ppv,
        "npv": _ratio(tn, tn + fn),
        # F1 = 2TP / (2TP + FP + FN), as sklearn.metrics.f1_score; undefined without positives.
        "f1": _ratio(2 * tp, 2 * tp + fp + fn) if (tp + fn) else float("nan"),
    }


def _score(fn, y, s):
    """An AUC-type score, NaN when ``y`` has one class only."""
    if np.unique(y).size < 2:
        return float("nan")
    return float(fn(y, s))


def _mcc(cm: np.ndarray) -> float:
    """Matthews correlation from a confusion matrix (the formula of sklearn's
    ``matthews_corrcoef``); NaN when a row or column total is all of the data."""
    t = cm.sum(axis=1).astype(float)
    p = cm.sum(axis=0).astype(float)
    c = float(np.trace(cm))
    s = float(cm.sum())
    cov_ytyp = c * s - t @ p
    cov_ypyp = s * s - p @ p
    cov_ytyt = s * s - t @ t
    if cov_ypyp * cov_ytyt == 0:
        return float("nan") if cov_ytyt == 0 else 0.0
    return float(cov_ytyp / np.sqrt(cov_ytyt * cov_ypyp))


# --------------------------------------------------------------------------- point figures

def expected_calibration_error(outcome, confidence, *, bins=ECE_BINS) -> float:
    """Expected calibration error: ``sum_b (n_b / n) |mean outcome_b - mean confidence_b|`` over
    ``bins`` equal-width bins of the confidence (bin ``floor(bins * c)``; 1.0 in the last).

    Args:
        outcome: 0/1 per row, shape (n,): two classes, the label (1 = positive class); three
            classes, whether the arg-max is right.
        confidence: Shape (n,): the positive class's probability (two classes) or the top
            label's probability (three classes).
        bins: Number of equal-width bins on [0, 1].

    Returns:
        The ECE in [0, 1]; NaN for no rows.
    """
    outcome = np.asarray(outcome, dtype=float)
    confidence = np.asarray(confidence, dtype=float)
    if len(outcome) == 0:
        return float("nan")
    which = np.clip(np.floor(confidence * bins).astype(int), 0, bins - 1)
    gap = np.bincount(which, weights=outcome, minlength=bins) - np.bincount(which, weights=confidence, minlength=bins)
    return float(np.abs(gap).sum() / len(outcome))

def binary_metrics(y_true, y_score, *, threshold=0.5) -> dict:
    """Every two-class figure at one threshold.

    Args:
        y_true: 0/1 labels of shape (n,) (1 = positive class).
        y_score: Probabilities of the positive class, shape (n,).
        threshold: Called positive when ``y_score >= threshold`` (:func:`positive`); one
            threshold, or one per row.

    Returns:
        A dict with :data:`BINARY_METRICS` (floats, NaN where undefined: e.g. sensitivity
        without positives, ROC AUC with one class) plus ``confusion_matrix`` (2x2 list,
        rows = true [negative, positive], columns = predicted).
    """
    y_true = np.asarray(y_true, dtype=int)
    y_score = np.asarray(y_score, dtype=float)
    y_pred = positive(y_score, threshold).astype(int)
    cm = skm.confusion_matrix(y_true, y_pred, labels=[0, 1])
    tn, fp, fn, tp = (int(v) for v in cm.ravel())
    out = _confusion_figures(tp, fp, fn, tn)
    out["balanced_accuracy"] = (
        float(np.mean([out["sensitivity"], out["specificity"]]))
        if not (np.isnan(out["sensitivity"]) or np.isnan(out["specificity"])) else float("nan")
    )
    out["mcc"] = _mcc(cm)
    out["roc_auc"] = _score(skm.roc_auc_score, y_true, y_score)
    out["pr_auc"] = _score(skm.average_precision_score, y_true, y_score)
    out["brier"] = float(np.mean((y_score - y_true) ** 2)) if len(y_true) else float("nan")
    out["ece"] = expected_calibration_error(y_true, y_score)
    out["accuracy"] = _ratio(tp + tn, len(y_true))
    result = {name: out[name] for name in BINARY_METRICS}
    result["confusion_matrix"] = cm.tolist()
    return result


def multiclass_metrics(y_true, probs, *, classes) -> dict:
    """Every figure of a model with three (or more) classes, deciding by arg-max.

    Args:
        y_true: Class indices of shape (n,).
        probs: Probabilities of shape (n, C).
        classes: The C class names (keys of the per-class figures).

    Returns:
        A dict: ``accuracy``, ``balanced_accuracy`` (mean recall over the classes present),
        ``mcc`` (multi-class Matthews), ``brier`` (mean over images of the summed squared
        error, as in Brier's original definition), ``ece`` (top-label confidence against
        correctness, :func:`expected_calibration_error`); for each metric of
        :data:`PER_CLASS_METRICS` one-vs-rest ``"<metric>[<class>]"`` per class and
        ``"<metric>[macro]"`` (mean over the classes where it is defined; NaN if any class
        lacks it); and ``confusion_matrix`` (C x C list, rows = true).
    """
    classes = list(classes)
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=float)
    k = len(classes)
    y_pred = probs.argmax(axis=1)
    cm = skm.confusion_matrix(y_true, y_pred, labels=list(range(k)))
    n = int(cm.sum())
    out = {"accuracy": _ratio(np.trace(cm), n)}
    present = cm.sum(axis=1) > 0
    recalls = np.diag(cm)[present] / cm.sum(axis=1)[present]
    out["balanced_accuracy"] = float(recalls.mean()) if present.any() else float("nan")
    out["mcc"] = _mcc(cm)
    onehot = np.eye(k)[y_true] if n else np.zeros((0, k))
    out["brier"] = float(np.mean(np.sum((probs - onehot) ** 2, axis=1))) if n else float("nan")
    out["ece"] = expected_calibration_error(y_pred == y_true, probs.max(axis=1)) if n else float("nan")
    per_class = {m: [] for m in PER_CLASS_METRICS}
    for i, cls in enumerate(classes):
        tp = int(cm[i, i])
        fn = int(cm[i].sum() - tp)
        fp = int(cm[:, i].sum() - tp)
        tn = n - tp - fn - fp
        figs = _confusion_figures(tp, fp, fn, tn)
        yi = (y_true == i).astype(int)
        figs["roc_auc"] = _score(skm.roc_auc_score, yi, probs[:, i])
        figs["pr_auc"] = _score(skm.average_precision_score, yi, probs[:, i])
        figs["brier"] = float(np.mean((probs[:, i] - yi) ** 2)) if n else float("nan")
        for m in PER_CLASS_METRICS:
            out[f"{m}[{cls}]"] = figs[m]
            per_class[m].append(figs[m])
    for m in PER_CLASS_METRICS:
        values = np.asarray(per_class[m], dtype=float)
        out[f"{m}[macro]"] = float("nan") if np.isnan(values).any() else float(values.mean())
    out["confusion_matrix"] = cm.tolist()
    return out


def compute_metrics(y_true, probs, *, classes, threshold=None) -> dict:
    """Two classes: :func:`binary_metrics` at ``threshold`` (0.5 when None); more:
    :func:`multiclass_metrics` (arg-max; ``threshold`` must be None).

    Args:
        y_true: Class indices of shape (n,).
        probs: Probabilities of shape (n, len(classes)).
        classes: Class names in model output order.
        threshold: Decision threshold on the positive class's probability (two classes).
    """
    classes = list(classes)
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise ValueError(
            f"Expected probabilities of shape (n, {len(classes)}) for classes {classes}. "
            f"Received: probs.shape={probs.shape}"
        )
    if len(classes) == 2:
        return binary_metrics(y_true, probs[:, 1], threshold=0.5 if threshold is None else threshold)
    if threshold is not None:
        raise ValueError(
            "A threshold applies to two-class models only; with more classes the decision is "
            f"the arg-max. Received: threshold={threshold!r}"
        )
    return multiclass_metrics(y_true, probs, classes=classes)


def part_metrics(labels, probs) -> dict:
    """Threshold-free figures of one part of a run: ROC AUC, PR AUC (average precision), log loss.

    Args:
        labels: int class indices (n,).
        probs: probabilities (n, C).

    Returns:
        ``{"images", "roc_auc", "pr_auc", "loss"}``; an AUC is None when the part lacks a class.
        Three classes: one-vs-rest macro averages (:func:`multiclass_metrics`' ``[macro]``).
    """
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    num_classes = probs.shape[1]
    out = {"images": int(len(labels)), "roc_auc": None, "pr_auc": None, "loss": None}
    if len(labels) == 0:
        return out
    clipped = np.clip(probs, 1e-7, 1.0)
    clipped /= clipped.sum(axis=1, keepdims=True)
    out["loss"] = float(skm.log_loss(labels, clipped, labels=list(range(num_classes))))
    if len(np.unique(labels)) < 2:
        return out
    figs = compute_metrics(labels, probs, classes=[str(i) for i in range(num_classes)])
    suffix = "" if num_classes == 2 else "[macro]"
    for name in ("roc_auc", "pr_auc"):
        value = figs[name + suffix]
        out[name] = None if np.isnan(value) else float(value)
    return out


# --------------------------------------------------------------------------- threshold

def _midpoint_below(score: float, scores) -> float:
    """The midpoint between ``score`` and the next lower distinct value of ``scores`` (0 when
    there is none)."""
    lower = np.asarray(scores, dtype=float)
    lower = lower[lower < score]
    return float((score + (lower.max() if lower.size else 0.0)) / 2.0)


def choose_threshold(y_true, y_score, *, method="youden", target_sensitivity=None, threshold=None) -> dict:
    """Choose a decision threshold on **validation** data.

    Args:
        y_true: 0/1 validation labels of shape (n,).
        y_score: Validation probabilities of the positive class, shape (n,).
        method: ``"youden"`` (maximise sensitivity + specificity - 1 over the ROC curve's
            thresholds; ties go to the higher threshold), ``"sensitivity"`` (the highest
            threshold whose sensitivity is at least ``target_sensitivity``) or ``"fixed"``
            (use ``threshold`` as given). A chosen validation score ``s`` is then moved to the
            **midpoint** between ``s`` and the next lower distinct validation score (0 below
            the lowest), so that no threshold sits on a validation score: the validation
            decisions (``score >= threshold``, :func:`positive`) stay the same, and a test score
            equal to ``s`` is no longer a tie.
        target_sensitivity: In (0, 1], for ``method="sensitivity"``.
        threshold: For ``method="fixed"``.

    Returns:
        A dict: ``threshold``, ``method``, ``description`` (one sentence for reports),
        ``validation_score`` (the chosen validation score the midpoint is taken from; None for
        ``fixed``), and the validation ``sensitivity``, ``specificity``, ``n_images`` at that
        threshold.

    Raises:
        ValueError: Unknown method, a missing or out-of-range target, or validation data
            without both classes.
    """
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"Unknown threshold method. Expected one of {list(THRESHOLD_METHODS)}. "
                         f"Received: method={method!r}")
    y_true = np.asarray(y_true, dtype=int)
    y_score = np.asarray(y_score, dtype=float)
    if method == "fixed":
        if threshold is None or not 0 <= float(threshold) <= 1:
            raise ValueError(f"Expected a fixed threshold in [0, 1]. Received: threshold={threshold!r}")
        chosen = float(threshold)
        score = None
        description = f"fixed at {chosen:.4g} by the user"
    else:
        if np.unique(y_true).size < 2:
            raise ValueError(
                "Expected validation predictions of both classes to choose a threshold. "
                f"Received: validation_class_counts={dict(zip(*np.unique(y_true, return_counts=True)))}"
            )
        fpr, tpr, thresholds = skm.roc_curve(y_true, y_score, drop_intermediate=False)
        finite = np.isfinite(thresholds)
        fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
        if method == "youden":
            j = tpr - fpr
            idx = int(np.flatnonzero(j == j.max())[0])  # thresholds decrease: first = highest
            score = float(thresholds[idx])
            description = (f"Youden's J (max sensitivity + specificity - 1 = {j[idx]:.3f}) on the "
                           f"validation part")
        else:
            if target_sensitivity is None or not 0 < float(target_sensitivity) <= 1:
                raise ValueError("Expected target_sensitivity in (0, 1] for method='sensitivity'. "
                                 f"Received: target_sensitivity={target_sensitivity!r}")
            idx = int(np.flatnonzero(tpr >= float(target_sensitivity))[0])
            score = float(thresholds[idx])
            description = (f"highest threshold reaching sensitivity >= {float(target_sensitivity):.3g} "
                           f"on the validation part")
        chosen = _midpoint_below(score, y_score)
        description += " (midpoint to the next lower validation score)"
    figs = binary_metrics(y_true, y_score, threshold=chosen)
    return {
        "threshold": chosen,
        "method": method,
        "target_sensitivity": None if target_sensitivity is None else float(target_sensitivity),
        "description": description,
        "validation_score": score,
        "sensitivity": figs["sensitivity"],
        "specificity": figs["specificity"],
        "n_images": int(len(y_true)),
    }
