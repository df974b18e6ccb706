"""Group bootstrap, stratified by class, of any set of figures; Wilson intervals on an effective
sample size for the proportions; a tidy table of them.
Must not choose thresholds or read files: it resamples the rows it is given.

Confidence intervals come from a bootstrap **over groups** (patients, or patients merged because
they share an image: callers pass ``frame[covidxr.data.groups.group_column(frame)]``): each
resample draws groups with replacement and takes all of their rows, so that images of one group
stay together. The resampling is **stratified by class**: a group's stratum is its most common
label (ties: the lowest class index), and each resample draws, within each stratum, as many
groups as that stratum has, so every resample keeps the data's class mix. A resample in which a
metric is undefined (for example no predicted positive, so no PPV) is skipped for that metric
only; ``n_used`` records how many resamples each interval rests on, and a
:class:`BootstrapWarning` names the metrics whose ``n_used`` is below 90% of the resamples.

Proportions (sensitivity, specificity, PPV, NPV, accuracy; per class for three classes) get a
Wilson score interval on the effective sample size instead (:mod:`.intervals`): the percentile
bootstrap collapses to [1, 1] at 15 of 15. Each metric records which ``interval`` it has
(``"wilson-deff"`` or ``"bootstrap"``) and keeps the percentile bounds as ``boot_low`` /
``boot_high``. Every interval is conditional on the chosen model and threshold.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from .intervals import proportion_intervals
from .metrics import compute_metrics, decide
from .resampled import resample_counts, resampled_metrics

__all__ = ["BootstrapWarning", "MIN_USED_SHARE", "bootstrap_metrics", "metrics_table", "patient_bootstrap",
           "resampled_bootstrap"]

#: A metric whose interval rests on fewer than this share of the resamples is named in a warning.
MIN_USED_SHARE = 0.9

TABLE_COLUMNS = ["level", "metric", "value", "ci_low", "ci_high", "n_used", "interval", "boot_low", "boot_high",
                 "n_eff"]


class BootstrapWarning(UserWarning):
    """A bootstrap interval rests on far fewer resamples than were drawn."""


def _flat(figures: dict) -> dict:
    return {k: v for k, v in figures.items() if k != "confusion_matrix"}


def _row_thresholds(threshold, n):
    """``threshold`` as given, or checked to be one per row."""
    if threshold is None or np.ndim(threshold) == 0:
        return threshold
    threshold = np.asarray(threshold, dtype=float)
    if threshold.shape != (n,):
        raise ValueError(f"Expected one threshold, or one per row ({n}). Received: threshold.shape={threshold.shape}")
    return threshold


def bootstrap_metrics(y_true, probs, groups, *, classes, threshold=None, n_bootstrap=1000, seed=0,
                      level=0.95) -> dict:
    """Point figures, stratified group-bootstrap intervals, and Wilson intervals of proportions.

    Each of ``n_bootstrap`` resamples draws, within each class stratum, as many groups as the
    stratum has, with replacement, and keeps all of each drawn group's rows (a group drawn twice
    counts twice). Proportions get a Wilson interval on the effective sample size (groups as
    clusters); the other figures their percentile bootstrap interval. The resamples are scored
    all at once (:mod:`.resampled`); the point figures are :func:`compute_metrics`'.

    Args:
        y_true: Class indices of shape (n,).
        probs: Probabilities of shape (n, C).
        groups: Group (patient) id per row, shape (n,).
        classes: C class names.
        threshold: Two-class decision threshold (see :func:`compute_metrics`): one, or one
            per row (shape (n,): pooled folds).
        n_bootstrap: Number of resamples (>= 0; 0 gives no bootstrap intervals).
        seed: Seed of the resampling (same seed, same intervals).
        level: Coverage of the intervals, in (0, 1).

    Returns:
        ``{"metrics": {name: {"value", "ci_low", "ci_high", "n_used", "interval", "boot_low",
        "boot_high", "n_eff"}}, "confusion_matrix": [[...]], "n_bootstrap", "seed", "level",
        "n_rows", "n_groups", "stratified"}`` (``n_eff``: the effective sample size of a Wilson
        interval; None for bootstrap intervals).
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
    threshold = _row_thresholds(threshold, len(y_true))
    point = compute_metrics(y_true, probs, classes=classes, threshold=threshold)
    result = resampled_bootstrap(
        lambda counts: resampled_metrics(counts, y_true, probs, classes=classes, threshold=threshold),
        groups, point=point, labels=y_true, n_bootstrap=n_bootstrap, seed=seed, level=level, stacklevel=3,
    )
    if len(y_true):
        two = len(classes) == 2
        y_pred = decide(probs, threshold=(0.5 if threshold is None else threshold) if two else None)
        for name, fig in proportion_intervals(y_true, y_pred, groups, classes=classes, level=level).items():
            if name in result["metrics"]:
                result["metrics"][name].update(ci_low=fig["ci_low"], ci_high=fig["ci_high"], interval="wilson-deff",
                                               n_eff=fig["n_eff"])
    return result


def resampled_bootstrap(score, groups, *, point, labels=None, n_bootstrap=1000, seed=0, level=0.95,
                        stacklevel=2) -> dict:
    """Percentile bootstrap over groups, stratified by class, of figures scored for many
    resamples at once.

    Args:
        score: ``counts (r, n) -> {name: (r,) array}``: the figures of ``r`` resamples, each
            given as how many times each row is in it (:func:`.resampled.resample_counts`);
            NaN where a figure is undefined.
        groups: Group (patient) id per row, shape (n,).
        point: The figures of the data itself, ``{name: float}`` (plus an optional
            ``"confusion_matrix"``); its names are the ones reported.
        labels, n_bootstrap, seed, level: As in :func:`patient_bootstrap` (the same resamples).
        stacklevel: Of the :class:`BootstrapWarning`, as :func:`warnings.warn` takes it here (2: the
            caller).

    Returns:
        As :func:`patient_bootstrap`.
    """
    groups = np.asarray(groups).astype(str)
    names = list(_flat(point))
    chunks = {name: [] for name in names}
    # The products are small: BLAS threads only contend (25x slower on a busy 2-core machine).
    with threadpool_limits(limits=1, user_api="blas"):
        for counts in resample_counts(groups, labels=labels, n_bootstrap=n_bootstrap, seed=seed):
            figs = score(counts)
            for name in names:
                chunks[name].append(np.asarray(figs[name], dtype=float))
    samples = {name: np.concatenate(parts) if parts else np.zeros(0) for name, parts in chunks.items()}
    return _summarise(point, samples, groups, labels=labels, n_bootstrap=n_bootstrap, seed=seed, level=level,
                      stacklevel=stacklevel + 2)


def patient_bootstrap(score, groups, *, labels=None, n_bootstrap=1000, seed=0, level=0.95) -> dict:
    """Percentile bootstrap over groups (patients) of any set of figures, stratified by class.

    Scores one resample at a time (any figure); :func:`resampled_bootstrap` scores them all at
    once, from the same resamples.

    Args:
        score: ``row indices (m,) -> dict`` of float figures (plus an optional
            ``"confusion_matrix"``, reported for the point estimate only).
        groups: Group (patient) id per row, shape (n,).
        labels: Class per row, shape (n,), to stratify by (a group's stratum is its most
            common label, ties to the lowest); None: one stratum (plain group bootstrap).
        n_bootstrap, seed, level: As in :func:`bootstrap_metrics`.

    Returns:
        As :func:`bootstrap_metrics` (every interval ``"bootstrap"``, ``ci_*`` = ``boot_*``).

    Warns:
        BootstrapWarning: Some metric defined on the data has ``n_used`` below
            :data:`MIN_USED_SHARE` of ``n_bootstrap`` (one warning naming them all).
    """
    groups = np.asarray(groups).astype(str)
    point = score(np.arange(len(groups)))
    names = list(_flat(point))
    rows = np.arange(len(groups))
    samples = {name: [] for name in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for counts in resample_counts(groups, labels=labels, n_bootstrap=n_bootstrap, seed=seed):
            for drawn in counts.astype(int):
                figs = score(np.repeat(rows, drawn))
                for name in names:
                    samples[name].append(figs[name])
    return _summarise(point, {name: np.asarray(v, dtype=float) for name, v in samples.items()}, groups,
                      labels=labels, n_bootstrap=n_bootstrap, seed=seed, level=level, stacklevel=4)


def _summarise(point, samples, groups, *, labels, n_bootstrap, seed, level, stacklevel) -> dict:
    """Percentile intervals of each figure's defined resamples, in a result dict."""
    alpha = (1.0 - float(level)) / 2.0
    out = {}
    for name in _flat(point):
        values = samples[name][~np.isnan(samples[name])]
        low, high = np.quantile(values, [alpha, 1.0 - alpha]) if values.size else (float("nan"), float("nan"))
        out[name] = {"value": float(point[name]), "ci_low": float(low), "ci_high": float(high),
                     "n_used": int(values.size), "interval": "bootstrap", "boot_low": float(low),
                     "boot_high": float(high), "n_eff": None}
    _warn_few_used(out, int(n_bootstrap), stacklevel=stacklevel)
    return {
        "metrics": out,
        "confusion_matrix": point.get("confusion_matrix"),
        "n_bootstrap": int(n_bootstrap),
        "seed": int(seed),
        "level": float(level),
        "n_rows": int(len(groups)),
        "n_groups": int(len(np.unique(groups))),
        "stratified": labels is not None,
    }


def _warn_few_used(figures: dict, n_bootstrap: int, *, stacklevel: int) -> None:
    """One :class:`BootstrapWarning` naming the metrics (defined on the data) with few resamples."""
    if n_bootstrap <= 0:
        return
    few = [f"{name} ({fig['n_used']}/{n_bootstrap})" for name, fig in figures.items()
           if not np.isnan(fig["value"]) and fig["n_used"] < MIN_USED_SHARE * n_bootstrap]
    if few:
        warnings.warn(
            f"Bootstrap intervals of {len(few)} metric(s) rest on fewer than {MIN_USED_SHARE:.0%} of the resamples "
            "(the metric was undefined in the others, e.g. no predicted positive drawn), so they are unreliable: "
            + ", ".join(few) + f". Received: n_bootstrap={n_bootstrap}",
            BootstrapWarning, stacklevel=stacklevel)


def metrics_table(result: dict) -> pd.DataFrame:
    """A tidy table of an evaluation result (``covidxr.evaluation.evaluate_predictions``) or of
    one :func:`bootstrap_metrics` output.

    Returns:
        Columns ``level, metric, value, ci_low, ci_high, n_used, interval, boot_low, boot_high,
        n_eff`` (``level`` is ``image`` or ``patient``; empty for a single bootstrap output;
        ``interval`` is ``wilson-deff`` or ``bootstrap``).
    """
    rows = []
    levels = [(lvl, result[lvl]) for lvl in ("image", "patient") if lvl in result] or [("", result)]
    for level, block in levels:
        for name, fig in block["metrics"].items():
            rows.append({"level": level, "metric": name, **fig})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)
