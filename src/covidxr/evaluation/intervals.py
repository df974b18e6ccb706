"""Confidence intervals of proportions that do not collapse at 0 or 1: the Wilson score interval
on an effective sample size from the design effect of clustered (grouped) rows.
Must not choose thresholds, resample or read files: it takes decisions, labels and groups as arrays.

Sensitivity, specificity, PPV, NPV and accuracy are proportions ``p = k / n`` of rows (images or
patients), but rows of one group (a patient, or patients merged because they share an image) are
not independent. Following Korn & Graubard (1998, *Confidence intervals for proportions with
small expected number of positive counts estimated from survey data*, Survey Methodology
24:193–201), the interval is Wilson's (1927) score interval computed on the **effective sample
size** ``n_eff = n / deff``, where the design effect (Kish 1965) is

    deff = cluster-robust variance of p / binomial variance p (1 - p) / n

with the groups as clusters (the linearisation variance of a ratio estimator,
``G / (G - 1) * sum_g (k_g - p n_g)^2 / n^2`` over the ``G`` groups with rows in the
denominator), clamped to ``deff >= 1``. When ``p`` is 0 or 1 both variances are 0 and the ratio
is undefined; then the worst case ``deff = sum_g n_g^2 / sum_g n_g`` is used (as if all rows of a
group agreed), which is also used when only one group is present. With one row per group this is
the plain Wilson interval: 15 of 15 gives [0.796, 1.000] at 95%, where the percentile bootstrap
gives [1, 1]. :func:`clopper_pearson` (exact, conservative: [0.782, 1.000] there) is offered for
comparison but not used in the reports.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pandas as pd

__all__ = ["PROPORTION_METRICS", "clopper_pearson", "design_effect", "proportion_intervals", "wilson_interval"]

#: Metrics that are proportions of rows (for three classes also ``<metric>[<class>]``, one-vs-rest).
PROPORTION_METRICS = ("sensitivity", "specificity", "ppv", "npv", "accuracy")


def _z(level: float) -> float:
    if not 0 < float(level) < 1:
        raise ValueError(f"Expected level in (0, 1). Received: level={level!r}")
    return NormalDist().inv_cdf(0.5 + float(level) / 2.0)


def wilson_interval(p, n, *, level=0.95) -> tuple[float, float]:
    """Wilson's score interval of a proportion ``p`` observed on ``n`` (possibly effective, not
    whole) trials.

    Args:
        p: The observed proportion, in [0, 1].
        n: The (effective) sample size, > 0.
        level: Coverage, in (0, 1).

    Returns:
        ``(low, high)``; NaN for both when ``n`` is 0 or ``p`` is NaN.
    """
    z = _z(level)
    if not n or not np.isfinite(p):
        return float("nan"), float("nan")
    z2n = z * z / float(n)
    centre = (p + z2n / 2.0) / (1.0 + z2n)
    half = z / (1.0 + z2n) * np.sqrt(p * (1.0 - p) / n + z2n / (4.0 * n))
    low = 0.0 if p <= 0 else max(0.0, centre - half)
    high = 1.0 if p >= 1 else min(1.0, centre + half)
    return float(low), float(high)


def clopper_pearson(k, n, *, level=0.95) -> tuple[float, float]:
    """The exact (Clopper–Pearson) interval of ``k`` successes in ``n`` trials (for comparison).

    Returns:
        ``(low, high)``; NaN for both when ``n`` is 0.
    """
    from scipy.stats import beta

    _z(level)
    if not n:
        return float("nan"), float("nan")
    alpha = 1.0 - float(level)
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def design_effect(successes, groups) -> dict:
    """The design effect of a proportion over clustered rows.

    Args:
        successes: 0/1 (or bool) per row in the proportion's denominator, shape (n,).
        groups: The group (cluster) of each row, shape (n,).

    Returns:
        ``{"p", "n", "k", "groups", "deff", "n_eff", "deff_rule"}``: ``deff_rule`` is
        ``"cluster-robust"`` (ratio of variances, clamped to >= 1) or ``"worst-case"`` (``p`` at 0
        or 1, or one group: ``sum n_g^2 / sum n_g``). NaN figures when ``n`` is 0.
    """
    s = np.asarray(successes, dtype=float)
    n = int(len(s))
    if n == 0:
        return {"p": float("nan"), "n": 0, "k": 0, "groups": 0, "deff": float("nan"), "n_eff": float("nan"),
                "deff_rule": "none"}
    codes = pd.factorize(np.asarray(groups).astype(str))[0]
    n_g = np.bincount(codes).astype(float)
    k_g = np.bincount(codes, weights=s)
    n_g, k_g = n_g[n_g > 0], k_g[n_g > 0]
    k = float(s.sum())
    p = k / n
    worst = float((n_g ** 2).sum() / n)
    if p in (0.0, 1.0) or len(n_g) < 2:
        deff, rule = worst, "worst-case"
    else:
        g = len(n_g)
        v_cluster = g / (g - 1) * float(((k_g - p * n_g) ** 2).sum()) / n ** 2
        deff, rule = max(1.0, v_cluster / (p * (1.0 - p) / n)), "cluster-robust"
    return {"p": p, "n": n, "k": int(round(k)), "groups": int(len(n_g)), "deff": float(deff),
            "n_eff": float(n / deff), "deff_rule": rule}


def _proportions(y_true, y_pred, classes) -> dict:
    """``name -> (denominator mask, success mask)`` of every proportion metric."""
    out = {"accuracy": (np.ones(len(y_true), bool), y_pred == y_true)}
    targets = [(1, "")] if len(classes) == 2 else [(i, f"[{c}]") for i, c in enumerate(classes)]
    for i, suffix in targets:
        true_i, pred_i = y_true == i, y_pred == i
        out[f"sensitivity{suffix}"] = (true_i, pred_i)
        out[f"specificity{suffix}"] = (~true_i, ~pred_i)
        out[f"ppv{suffix}"] = (pred_i, true_i)
        out[f"npv{suffix}"] = (~pred_i, ~true_i)
    return out


def proportion_intervals(y_true, y_pred, groups, *, classes, level=0.95) -> dict:
    """Wilson intervals on the effective sample size of every proportion metric.

    Args:
        y_true: Class indices of shape (n,).
        y_pred: Decided class indices of shape (n,) (at the threshold, or arg-max).
        groups: The group of each row, shape (n,).
        classes: The C class names (two: names without suffix for the positive class
            ``classes[1]``; more: ``<metric>[<class>]`` one-vs-rest).
        level: Coverage, in (0, 1).

    Returns:
        ``{name: {"value", "ci_low", "ci_high", "n", "n_eff", "deff", "deff_rule"}}`` for
        :data:`PROPORTION_METRICS` (per class for three classes, plus ``accuracy``).
    """
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    groups = np.asarray(groups).astype(str)
    out = {}
    for name, (rows, success) in _proportions(y_true, y_pred, list(classes)).items():
        d = design_effect(success[rows], groups[rows])
        low, high = wilson_interval(d["p"], d["n_eff"], level=level)
        out[name] = {"value": d["p"], "ci_low": low, "ci_high": high, "n": d["n"], "n_eff": d["n_eff"],
                     "deff": d["deff"], "deff_rule": d["deff_rule"]}
    return out
