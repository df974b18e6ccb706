"""The stratified group bootstrap of one level: the loop it used to be (a frozen copy, below) against
the vectorised ``covidxr.evaluation.bootstrap_metrics``.

    python benchmarks/bootstrap.py [--images 300] [--patients 180] [--resamples 1000] [--repeats 3]

Synthetic predictions (two classes, and three), one to several images per patient, scores rounded
to two decimals so that there are ties. Each implementation runs ``--repeats`` times and its best
time is kept (the machine is shared). Prints both times, their ratio per case, the largest
difference of an interval bound between the two (they draw different resamples, so only
Monte-Carlo error; the tests check them properly) and a last line ``ratio: N.N``: the smaller
of the two cases' ratios.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd

from covidxr.evaluation import bootstrap_metrics
from covidxr.evaluation.intervals import proportion_intervals
from covidxr.evaluation.metrics import compute_metrics, decide

# --------------------------------------------------------------------------------------------
# Frozen copy of covidxr/evaluation/bootstrap.py before it was vectorised: one compute_metrics
# call per resample. Kept as it was (only renamed) to compare against; do not use elsewhere.
# --------------------------------------------------------------------------------------------

MIN_USED_SHARE = 0.9


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




def loop_bootstrap_metrics(y_true, probs, groups, *, classes, threshold=None, n_bootstrap=1000, seed=0,
                      level=0.95) -> dict:
    """Point figures, stratified group-bootstrap intervals, and Wilson intervals of proportions.

    Each of ``n_bootstrap`` resamples draws, within each class stratum, as many groups as the
    stratum has, with replacement, and keeps all of each drawn group's rows (a group drawn twice
    counts twice). Proportions get a Wilson interval on the effective sample size (groups as
    clusters); the other figures their percentile bootstrap interval.

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
    row_threshold = (lambda idx: threshold) if threshold is None or np.ndim(threshold) == 0 else (
        lambda idx: threshold[idx])
    result = loop_patient_bootstrap(
        lambda idx: compute_metrics(y_true[idx], probs[idx], classes=classes, threshold=row_threshold(idx)),
        groups, labels=y_true, n_bootstrap=n_bootstrap, seed=seed, level=level,
    )
    if len(y_true):
        two = len(classes) == 2
        y_pred = decide(probs, threshold=(0.5 if threshold is None else threshold) if two else None)
        for name, fig in proportion_intervals(y_true, y_pred, groups, classes=classes, level=level).items():
            if name in result["metrics"]:
                result["metrics"][name].update(ci_low=fig["ci_low"], ci_high=fig["ci_high"], interval="wilson-deff",
                                               n_eff=fig["n_eff"])
    return result


def _strata_members(groups, labels):
    """The rows of each group, and the groups of each stratum (a group's most common label)."""
    codes, uniques = pd.factorize(groups, sort=True)
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
    members = [order[starts[g]:starts[g + 1]] for g in range(len(uniques))]
    if labels is None:
        return members, [np.arange(len(uniques))]
    labels = np.asarray(labels)
    if len(labels) != len(groups):
        raise ValueError(f"Expected one label per row ({len(groups)}). Received: len(labels)={len(labels)}")
    lab_codes, _ = pd.factorize(labels, sort=True)
    stratum = np.array([np.bincount(lab_codes[m]).argmax() for m in members], dtype=int)
    return members, [np.flatnonzero(stratum == s) for s in np.unique(stratum)]


def loop_patient_bootstrap(score, groups, *, labels=None, n_bootstrap=1000, seed=0, level=0.95) -> dict:
    """Percentile bootstrap over groups (patients) of any set of figures, stratified by class.

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
    members, strata = _strata_members(groups, labels)
    rng = np.random.default_rng(seed)
    samples = {name: [] for name in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(int(n_bootstrap)):
            drawn = np.concatenate([rng.choice(s, size=len(s), replace=True) for s in strata if len(s)]
                                   or [np.zeros(0, int)])
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
        low, high = np.quantile(values, [alpha, 1.0 - alpha]) if values.size else (float("nan"), float("nan"))
        out[name] = {"value": float(point[name]), "ci_low": float(low), "ci_high": float(high),
                     "n_used": int(values.size), "interval": "bootstrap", "boot_low": float(low),
                     "boot_high": float(high), "n_eff": None}
    _warn_few_used(out, int(n_bootstrap))
    return {
        "metrics": out,
        "confusion_matrix": point.get("confusion_matrix"),
        "n_bootstrap": int(n_bootstrap),
        "seed": int(seed),
        "level": float(level),
        "n_rows": int(len(groups)),
        "n_groups": int(len(members)),
        "stratified": labels is not None,
    }


def _warn_few_used(figures: dict, n_bootstrap: int) -> None:
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
            BootstrapWarning, stacklevel=3)


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------


def synthetic(*, n_images, n_patients, n_classes, seed=0):
    """``(y, probs, groups)``: every patient has at least one image; scores with ties."""
    rng = np.random.default_rng(seed)
    extra = rng.multinomial(n_images - n_patients, np.ones(n_patients) / n_patients)
    sizes = 1 + extra
    groups = np.repeat([f"p{i:03d}" for i in range(n_patients)], sizes)
    y = np.repeat(rng.integers(0, n_classes, n_patients), sizes)
    logits = rng.normal(size=(n_images, n_classes)) + 1.5 * np.eye(n_classes)[y]
    probs = np.exp(logits)
    probs = np.round(probs / probs.sum(axis=1, keepdims=True), 2)
    probs[:, -1] = 1.0 - probs[:, :-1].sum(axis=1)
    return y, probs, groups


def best_time(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def largest_gap(a, b):
    gaps = [abs(a["metrics"][m][k] - b["metrics"][m][k]) for m in a["metrics"] for k in ("boot_low", "boot_high")
            if np.isfinite(a["metrics"][m][k]) and np.isfinite(b["metrics"][m][k])]
    return max(gaps)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--patients", type=int, default=180)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    ratios = []
    print(f"{args.images} images, {args.patients} patients, {args.resamples} resamples, best of {args.repeats}")
    for n_classes in (2, 3):
        y, probs, groups = synthetic(n_images=args.images, n_patients=args.patients, n_classes=n_classes)
        options = dict(classes=[f"c{i}" for i in range(n_classes)], n_bootstrap=args.resamples, seed=0,
                       threshold=0.5 if n_classes == 2 else None)
        loop_s, loop = best_time(lambda: loop_bootstrap_metrics(y, probs, groups, **options), args.repeats)
        new_s, new = best_time(lambda: bootstrap_metrics(y, probs, groups, **options), args.repeats)
        same_points = all(loop["metrics"][m]["value"] == new["metrics"][m]["value"]
                          or np.isnan(loop["metrics"][m]["value"]) for m in loop["metrics"])
        ratios.append(loop_s / new_s)
        print(f"{n_classes} classes: loop {loop_s:.3f} s, vectorised {new_s:.4f} s, ratio {loop_s / new_s:.1f}; "
              f"point figures identical: {same_points}; largest bound difference {largest_gap(loop, new):.3f}")
    print(f"ratio: {min(ratios):.1f}")


if __name__ == "__main__":
    main()
