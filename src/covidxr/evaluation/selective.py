"""Selective prediction: decide only the images the model is surest about and refer the rest; the
risk-coverage curve (error rate among the decided images against the share decided) and its area.
Must not read or write files: arrays in, frames and dicts out.

Confidence of a decision (the more, the earlier an image is decided):

* **Two classes**, decided at threshold ``t`` (:func:`covidxr.evaluation.metrics.decide`): how far
  the positive probability ``p`` lies into the decided side, relative to that side's width:
  ``(p - t) / (1 - t)`` when ``p >= t``, ``(t - p) / t`` otherwise (0 at the threshold, 1 at 0 or 1).
  It orders images as ``|p - t|`` does on each side, and is consistent with a threshold other than 0.5.
* **Three classes**: the top class's probability.

The curve decides images in decreasing confidence (ties in a stable order): at coverage ``k / n``
the risk is the error rate among the ``k`` most confident images. The area (AURC) is the mean of the
risks over ``k = 1..n``: lower is better; deciding at random gives the overall error rate.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import metrics as M

__all__ = ["decision_confidence", "risk_coverage", "selective_summary"]


def decision_confidence(probs, *, threshold=None) -> np.ndarray:
    """Each decision's confidence, shape (n,), in [0, 1] (see the module's text).

    Args:
        probs: Probabilities of shape (n, C).
        threshold: Two classes: the decision threshold on ``probs[:, 1]``; None for arg-max (C > 2).
    """
    probs = np.asarray(probs, dtype=float)
    if probs.shape[1] != 2 or threshold is None:
        return probs.max(axis=1)
    t = float(threshold)
    p = probs[:, 1]
    up = (p - t) / max(1.0 - t, 1e-12)
    down = (t - p) / max(t, 1e-12)
    return np.clip(np.where(p >= t, up, down), 0.0, 1.0)


def risk_coverage(y, probs, *, threshold=None) -> pd.DataFrame:
    """The risk-coverage curve.

    Args:
        y: Class indices, shape (n,).
        probs: Probabilities, shape (n, C).
        threshold: As for :func:`decision_confidence`.

    Returns:
        One row per ``k = 1..n``: ``coverage`` (k / n), ``risk`` (errors among the k most confident
        images / k), ``confidence`` (the k-th confidence).
    """
    y = np.asarray(y, dtype=int)
    probs = np.asarray(probs, dtype=float)
    conf = decision_confidence(probs, threshold=threshold)
    wrong = (M.decide(probs, threshold=threshold) != y).astype(float)
    order = np.argsort(-conf, kind="stable")
    k = np.arange(1, len(y) + 1)
    return pd.DataFrame({"coverage": k / max(len(y), 1), "risk": np.cumsum(wrong[order]) / k,
                         "confidence": conf[order]})


def _level(y, probs, threshold, coverages) -> tuple[dict, pd.DataFrame]:
    curve = risk_coverage(y, probs, threshold=threshold)
    if curve.empty:
        return {"aurc": float("nan"), "error_rate": float("nan"), "n": 0, "risk_at": {}}, curve
    risk_at = {}
    for c in coverages:
        k = max(1, int(np.ceil(c * len(curve))))
        risk_at[f"{c:g}"] = float(curve["risk"].iloc[k - 1])
    return {"aurc": float(curve["risk"].mean()), "error_rate": float(curve["risk"].iloc[-1]), "n": int(len(curve)),
            "risk_at": risk_at}, curve


def selective_summary(frame: pd.DataFrame, *, classes, threshold=None, patient_threshold=None,
                      coverages=(0.5, 0.8, 0.9)) -> tuple[dict, dict]:
    """Risk-coverage per image and per patient (mean probability over a patient's images, decided at
    ``patient_threshold``).

    Args:
        frame: Scored rows (``patient``, ``label``, ``prob_<class>``), shape (n, ...).
        classes: Class names. threshold, patient_threshold: Two classes: the thresholds (None: arg-max).
        coverages: Coverages at which the risk is reported.

    Returns:
        ``(summary, curves)``: ``summary`` = {"confidence": rule, "image": {aurc, error_rate, n, risk_at},
        "patient": {...}}; ``curves`` = {"image": frame, "patient": frame} (:func:`risk_coverage`).
    """
    y, probs = M.class_probabilities(frame, classes)
    image, image_curve = _level(y, probs, threshold, coverages)
    per_patient = M.patient_frame(frame, classes)
    py, pprobs = M.class_probabilities(per_patient, classes)
    patient, patient_curve = _level(py, pprobs, patient_threshold if patient_threshold is not None else threshold,
                                    coverages)
    rule = ("distance of p(positive) from the threshold, relative to the decided side's width"
            if len(classes) == 2 and threshold is not None else "the top class's probability")
    return {"confidence": rule, "image": image, "patient": patient}, {"image": image_curve, "patient": patient_curve}
