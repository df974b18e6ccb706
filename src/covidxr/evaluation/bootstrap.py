"""Percentile bootstrap over patients (groups) of any set of figures, and a tidy table of them.
Must not choose thresholds or read files: it resamples the rows it is given.

Confidence intervals come from a bootstrap **over patients**: each resample draws patients with
replacement and takes all of their images, so that images of one patient stay together. A
resample in which a metric is undefined (for example no positive patient, so no sensitivity)
is skipped for that metric only; ``n_used`` records how many resamples each interval rests on.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from .metrics import compute_metrics

__all__ = ["bootstrap_metrics", "metrics_table", "patient_bootstrap"]


def _flat(figures: dict) -> dict:
    return {k: v for k, v in figures.items() if k != "confusion_matrix"}


def bootstrap_metrics(y_true, probs, groups, *, classes, threshold=None, n_bootstrap=1000, seed=0,
                      level=0.95) -> dict:
    """Point figures and percentile bootstrap intervals, resampling **groups** (patients).

    Each of ``n_bootstrap`` resamples draws as many patients as there are, with replacement,
    and keeps all of each drawn patient's rows (a patient drawn twice counts twice). A
    resample where a metric is undefined (NaN, e.g. no positive patient drawn) is skipped
    for that metric; ``n_used`` says how many resamples its interval rests on.

    Args:
        y_true: Class indices of shape (n,).
        probs: Probabilities of shape (n, C).
        groups: Patient id per row, shape (n,).
        classes: C class names.
        threshold: Two-class decision threshold (see :func:`compute_metrics`).
        n_bootstrap: Number of resamples (>= 0; 0 gives no intervals).
        seed: Seed of the resampling (same seed, same intervals).
        level: Coverage of the intervals, in (0, 1).

    Returns:
        ``{"metrics": {name: {"value", "ci_low", "ci_high", "n_used"}}, "confusion_matrix":
        [[...]], "n_bootstrap", "seed", "level", "n_rows", "n_groups"}``.
    """
    if int(n_bootstrap) < 0:
        raise ValueError(f"Expected n_bootstrap >= 0. Received: n_bootstrap={n_bootstrap!r}")
    if not 0 < float(level) < 1:
        raise ValueError(f"Expected level in (0, 1). Received: level={level!r}")
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=float)
    groups = np.asarray(groups).astype(str)
    if not (len(y_true) == len(probs) == len(groups)):
        raise ValueError(
            "Expected y_true, probs and groups of one length. "
            f"Received: lengths={(len(y_true), len(probs), len(groups))}"
        )
    return patient_bootstrap(
        lambda idx: compute_metrics(y_true[idx], probs[idx], classes=classes, threshold=threshold),
        groups, n_bootstrap=n_bootstrap, seed=seed, level=level,
    )


def patient_bootstrap(score, groups, *, n_bootstrap=1000, seed=0, level=0.95) -> dict:
    """Percentile bootstrap over groups (patients) of any set of figures.

    Args:
        score: ``row indices (m,) -> dict`` of float figures (plus an optional
            ``"confusion_matrix"``, reported for the point estimate only).
        groups: Patient id per row, shape (n,).
        n_bootstrap, seed, level: As in :func:`bootstrap_metrics`.

    Returns:
        As :func:`bootstrap_metrics`.
    """
    groups = np.asarray(groups).astype(str)
    point = score(np.arange(len(groups)))
    names = list(_flat(point))
    codes, uniques = pd.factorize(groups, sort=True)
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
    members = [order[starts[g]:starts[g + 1]] for g in range(len(uniques))]
    rng = np.random.default_rng(seed)
    samples = {name: [] for name in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(int(n_bootstrap)):
            drawn = rng.integers(0, len(uniques), size=len(uniques))
            idx = np.concatenate([members[g] for g in drawn]) if len(drawn) else np.zeros(0, int)
            figs = score(idx)
            for name in names:
                value = figs[name]
                if not np.isnan(value):
                    samples[name].append(value)
    alpha = (1.0 - float(level)) / 2.0
    out = {}
    for name in names:
        values = np.asarray(samples[name], dtype=float)
        if values.size:
            low, high = np.quantile(values, [alpha, 1.0 - alpha])
        else:
            low = high = float("nan")
        out[name] = {"value": float(point[name]), "ci_low": float(low), "ci_high": float(high),
                     "n_used": int(values.size)}
    return {
        "metrics": out,
        "confusion_matrix": point.get("confusion_matrix"),
        "n_bootstrap": int(n_bootstrap),
        "seed": int(seed),
        "level": float(level),
        "n_rows": int(len(groups)),
        "n_groups": int(len(uniques)),
    }


def metrics_table(result: dict) -> pd.DataFrame:
    """A tidy table of an evaluation result (``covidxr.evaluation.evaluate_predictions``) or of
    one :func:`bootstrap_metrics` output.

    Returns:
        Columns ``level, metric, value, ci_low, ci_high, n_used`` (``level`` is ``image`` or
        ``patient``; empty for a single bootstrap output).
    """
    rows = []
    levels = [(lvl, result[lvl]) for lvl in ("image", "patient") if lvl in result] or [("", result)]
    for level, block in levels:
        for name, fig in block["metrics"].items():
            rows.append({"level": level, "metric": name, **fig})
    return pd.DataFrame(rows, columns=["level", "metric", "value", "ci_low", "ci_high", "n_used"])
