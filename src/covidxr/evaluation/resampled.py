"""The figures of many bootstrap resamples at once, as array operations on a count matrix.
Must not choose thresholds, read files or warn: arrays in, one array per figure out.

A resample is a **count vector** over the rows: how many times each row was drawn (a group drawn
twice brings each of its rows twice). :func:`resample_counts` draws them, ``r`` at a time, as an
``(r, n)`` matrix, with the class-stratified group rule of :mod:`covidxr.evaluation.bootstrap`
(a group's stratum is its most common label, ties to the lowest; each stratum draws as many
groups as it has, with replacement). Every figure of a resample is then a figure of the data
weighted by its counts, which is what the figure of the duplicated rows is:

* confusion counts, squared errors and the calibration bins are sums of per-row indicators, so
  one matrix product gives them for every resample;
* ROC AUC is the Mann-Whitney statistic on the rows sorted once by score, tied scores pooled
  (each tied positive-negative pair counts one half: average ranks, as scikit-learn's
  ``roc_auc_score``), and average precision is scikit-learn's
  ``average_precision_score``: ``sum_k (R_k - R_{k-1}) P_k`` over the distinct scores, from the
  counts at and above each one.

The figures and their undefined (NaN) cases are those of
:func:`covidxr.evaluation.compute_metrics` on the duplicated rows (checked in the tests).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from .metrics import ECE_BINS, PER_CLASS_METRICS, positive

__all__ = ["MAX_CELLS", "resample_counts", "resampled_metrics", "strata_members"]

#: Resamples are drawn and scored in chunks of at most this many (resample, row) cells (a few
#: tens of MB of temporaries); the chunks depend only on the data's size, so a seed gives the
#: same resamples on every machine.
MAX_CELLS = 1 << 20


def strata_members(groups, labels) -> tuple[np.ndarray, list[np.ndarray]]:
    """The group of each row, and the groups of each stratum (a group's most common label).

    Args:
        groups: Group id per row, shape (n,) (compared as strings).
        labels: Class per row, shape (n,); None: one stratum of every group.

    Returns:
        ``(codes, strata)``: each row's group index (groups in sorted order) of shape (n,), and
        per stratum (in label order) the sorted indices of its groups.
    """
    codes, uniques = pd.factorize(np.asarray(groups).astype(str), sort=True)
    n_groups = len(uniques)
    if labels is None:
        return codes, [np.arange(n_groups)]
    labels = np.asarray(labels)
    if len(labels) != len(codes):
        raise ValueError(f"Expected one label per row ({len(codes)}). Received: len(labels)={len(labels)}")
    lab_codes, lab_uniques = pd.factorize(labels, sort=True)
    k = max(len(lab_uniques), 1)
    table = np.bincount(codes * k + lab_codes, minlength=n_groups * k).reshape(n_groups, k)
    stratum = table.argmax(axis=1)  # ties: the first, i.e. the lowest label
    return codes, [np.flatnonzero(stratum == s) for s in np.unique(stratum)]


def resample_counts(groups, *, labels=None, n_bootstrap=1000, seed=0, max_cells=MAX_CELLS) -> Iterator[np.ndarray]:
    """Stratified group-bootstrap resamples as count matrices, a chunk at a time.

    Args:
        groups: Group id per row, shape (n,).
        labels: Class per row to stratify by (see :func:`strata_members`); None: one stratum.
        n_bootstrap: Number of resamples in all.
        seed: Seed of the draws (same seed and data, same resamples).
        max_cells: Largest ``rows x resamples`` of one chunk.

    Yields:
        float arrays of shape (r, n): how many times each row is in each of the next ``r``
        resamples (together ``n_bootstrap`` rows).
    """
    codes, strata = strata_members(groups, labels)
    n_groups = int(codes.max()) + 1 if len(codes) else 0
    strata = [s for s in strata if len(s)]
    rng = np.random.default_rng(seed)
    total = int(n_bootstrap)
    chunk = max(1, min(total, int(max_cells) // max(len(codes), 1)))
    for start in range(0, total, chunk):
        r = min(chunk, total - start)
        if not strata:
            yield np.zeros((r, len(codes)))
            continue
        picks = np.concatenate([s[rng.integers(0, len(s), size=(r, len(s)))] for s in strata], axis=1)
        cells = (np.arange(r)[:, None] * n_groups + picks).ravel()
        per_group = np.bincount(cells, minlength=r * n_groups).reshape(r, n_groups)
        yield per_group[:, codes].astype(float)


def _div(num, den) -> np.ndarray:
    """``num / den``, NaN where ``den`` is 0."""
    num, den = np.broadcast_arrays(np.asarray(num, dtype=float), np.asarray(den, dtype=float))
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _confusion(tp, fp, fn, tn) -> dict:
    """As :func:`covidxr.evaluation.metrics` computes them from the four counts."""
    return {
        "sensitivity": _div(tp, tp + fn),
        "specificity": _div(tn, tn + fp),
        "ppv": _div(tp, tp + fp),
        "npv": _div(tn, tn + fn),
        "f1": np.where(tp + fn > 0, _div(2 * tp, 2 * tp + fp + fn), np.nan),
    }


def _mcc(cm: np.ndarray) -> np.ndarray:
    """Matthews correlation of confusion matrices of shape (r, k, k), as the point figure's."""
    t, p = cm.sum(axis=2), cm.sum(axis=1)
    c = np.trace(cm, axis1=1, axis2=2)
    s = cm.sum(axis=(1, 2))
    cov_ytyp = c * s - (t * p).sum(axis=1)
    cov_ypyp = s * s - (p * p).sum(axis=1)
    cov_ytyt = s * s - (t * t).sum(axis=1)
    den = cov_ypyp * cov_ytyt
    ratio = _div(cov_ytyp, np.sqrt(den))
    return np.where(den == 0, np.where(cov_ytyt == 0, np.nan, 0.0), ratio)


def _ranked(counts: np.ndarray, truth: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC AUC and average precision of every resample; NaN where one class is missing."""
    r = counts.shape[0]
    if not len(score):
        return np.full(r, np.nan), np.full(r, np.nan)
    order = np.argsort(score, kind="stable")
    ranked = score[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    weights = counts[:, order]
    pos = np.add.reduceat(weights * truth[order], starts, axis=1)  # (r, distinct scores), ascending
    neg = np.add.reduceat(weights, starts, axis=1) - pos
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negatives strictly below each score
    auc = _div((pos * (below + 0.5 * neg)).sum(axis=1), n_pos * n_neg)
    tps = n_pos[:, None] - (np.cumsum(pos, axis=1) - pos)  # positives at or above each score
    precision = _div(tps, tps + n_neg[:, None] - below)
    ap = _div(np.where(pos > 0, pos * precision, 0.0).sum(axis=1), n_pos)
    both = (n_pos > 0) & (n_neg > 0)
    return np.where(both, auc, np.nan), np.where(both, ap, np.nan)


def _ece(counts, outcome, confidence, n) -> np.ndarray:
    """Expected calibration error of every resample (the bins of the point figure's)."""
    which = np.clip(np.floor(confidence * ECE_BINS).astype(int), 0, ECE_BINS - 1)
    onehot = np.eye(ECE_BINS)[which]
    gap = counts @ (onehot * (outcome.astype(float) - confidence)[:, None])
    return _div(np.abs(gap).sum(axis=1), n)


def _binary(counts, y, score, threshold) -> dict:
    truth = (y == 1).astype(float)
    called = positive(score, threshold)
    yes = y == 1
    feats = np.stack([yes & called, ~yes & called, yes & ~called, ~yes & ~called], axis=1).astype(float)
    sums = counts @ np.c_[feats, (score - y) ** 2]
    tp, fp, fn, tn, squared = sums.T
    n = tp + fp + fn + tn
    out = _confusion(tp, fp, fn, tn)
    out["balanced_accuracy"] = (out["sensitivity"] + out["specificity"]) / 2.0
    out["mcc"] = _mcc(np.stack([np.stack([tn, fp], axis=1), np.stack([fn, tp], axis=1)], axis=1))
    out["roc_auc"], out["pr_auc"] = _ranked(counts, truth, score)
    out["brier"] = _div(squared, n)
    out["ece"] = _ece(counts, truth, score, n)
    out["accuracy"] = _div(tp + tn, n)
    return out


def _multiclass(counts, y, probs, classes) -> dict:
    k = len(classes)
    pred = probs.argmax(axis=1)
    onehot = np.eye(k)[y]
    cm = (counts @ np.eye(k * k)[y * k + pred]).reshape(-1, k, k)
    n = cm.sum(axis=(1, 2))
    diag, rows, cols = np.diagonal(cm, axis1=1, axis2=2), cm.sum(axis=2), cm.sum(axis=1)
    present = rows > 0
    out = {"accuracy": _div(diag.sum(axis=1), n)}
    out["balanced_accuracy"] = _div(np.where(present, _div(diag, rows), 0.0).sum(axis=1), present.sum(axis=1))
    out["mcc"] = _mcc(cm)
    sums = counts @ np.c_[np.sum((probs - onehot) ** 2, axis=1), (probs - onehot) ** 2]
    out["brier"] = _div(sums[:, 0], n)
    out["ece"] = _ece(counts, pred == y, probs.max(axis=1), n)
    per_class = {m: [] for m in PER_CLASS_METRICS}
    for i, cls in enumerate(classes):
        tp = diag[:, i]
        fn, fp = rows[:, i] - tp, cols[:, i] - tp
        figs = _confusion(tp, fp, fn, n - tp - fn - fp)
        figs["roc_auc"], figs["pr_auc"] = _ranked(counts, onehot[:, i], probs[:, i])
        figs["brier"] = _div(sums[:, 1 + i], n)
        for m in PER_CLASS_METRICS:
            out[f"{m}[{cls}]"] = figs[m]
            per_class[m].append(figs[m])
    for m in PER_CLASS_METRICS:
        out[f"{m}[macro]"] = np.mean(per_class[m], axis=0)  # NaN when any class lacks it
    return out


def resampled_metrics(counts, y_true, probs, *, classes, threshold=None) -> dict:
    """Every figure of :func:`covidxr.evaluation.compute_metrics` for many resamples at once.

    Args:
        counts: How many times each row is in each resample, shape (r, n)
            (:func:`resample_counts`).
        y_true: Class indices of shape (n,).
        probs: Probabilities of shape (n, C).
        classes: C class names.
        threshold: Two classes: the decision threshold (0.5 when None), one or one per row;
            more classes: None (arg-max).

    Returns:
        ``{name: float array (r,)}`` with the names of ``compute_metrics`` (without
        ``confusion_matrix``); NaN where a figure is undefined in a resample.
    """
    counts = np.asarray(counts, dtype=float)
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=float)
    classes = list(classes)
    if counts.ndim != 2 or counts.shape[1] != len(y_true) or probs.shape != (len(y_true), len(classes)):
        raise ValueError(f"Expected counts (r, n), y_true (n,) and probs (n, {len(classes)}). "
                         f"Received: shapes={(counts.shape, y_true.shape, probs.shape)}")
    if len(classes) == 2:
        return _binary(counts, y_true, probs[:, 1], 0.5 if threshold is None else threshold)
    if threshold is not None:
        raise ValueError("A threshold applies to two-class models only; with more classes the decision is "
                         f"the arg-max. Received: threshold={threshold!r}")
    return _multiclass(counts, y_true, probs, classes)
