"""covidxr.evaluation.resampled and the vectorised bootstrap: every figure of every resample equals
compute_metrics on the duplicated rows, the intervals equal the one-resample-at-a-time loop on the
same resamples, and agree with the frozen loop of ``benchmarks/bootstrap.py`` (other draws) within
Monte-Carlo error; per image and per patient, two and three classes; the paired bootstrap too."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from covidxr import evaluation as M
from covidxr.evaluation.resampled import resample_counts, resampled_metrics

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "bootstrap.py"


@pytest.fixture(scope="module")
def frozen():
    """The loop implementation as it was, from the benchmark that keeps it."""
    spec = importlib.util.spec_from_file_location("frozen_bootstrap_loop", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _frame(n_classes, *, n_patients=40, seed=0):
    """A predictions frame: 1-4 images per patient, scores with ties, two patients sharing a group."""
    rng = np.random.default_rng(seed)
    classes = ["normal", "covid", "other"][:n_classes] if n_classes == 3 else ["non-covid", "covid"]
    sizes = rng.integers(1, 5, n_patients)
    patient = np.repeat([f"p{i:02d}" for i in range(n_patients)], sizes)
    y = np.repeat(rng.integers(0, n_classes, n_patients), sizes)
    y[0] = (y[0] + 1) % n_classes  # a patient with two labels
    logits = rng.normal(size=(len(y), n_classes)) + 1.2 * np.eye(n_classes)[y]
    probs = np.exp(logits)
    probs = np.round(probs / probs.sum(axis=1, keepdims=True), 1)
    probs[:, -1] = 1.0 - probs[:, :-1].sum(axis=1)
    frame = pd.DataFrame({"patient": patient, "group": np.where(patient == "p01", "p00", patient),
                          "label": np.asarray(classes)[y]})
    for i, c in enumerate(classes):
        frame[f"prob_{c}"] = probs[:, i]
    return frame, classes


def _level(frame, classes, level):
    """``(y, probs, groups)`` of one level: images, or patients (mean probability per patient)."""
    rows = frame if level == "image" else M.patient_frame(frame, classes)
    y, probs = M.class_probabilities(rows, classes)
    return y, probs, rows["group"].to_numpy()


def _same(a, b, tol=1e-12):
    return (np.isnan(a) and np.isnan(b)) or abs(a - b) <= tol


@pytest.mark.parametrize("n_classes", [2, 3])
def test_every_figure_of_every_resample_equals_compute_metrics(n_classes):
    frame, classes = _frame(n_classes, n_patients=12)
    y, probs, groups = _level(frame, classes, "image")
    # per-row thresholds (pooled folds) for two classes; unstratified draws so some resamples lack a class
    threshold = np.where(np.arange(len(y)) % 2, 0.4, 0.6) if n_classes == 2 else None
    counts = np.concatenate(list(resample_counts(groups, n_bootstrap=60, seed=5)))
    fast = resampled_metrics(counts, y, probs, classes=classes, threshold=threshold)
    undefined = 0
    for b, drawn in enumerate(counts.astype(int)):
        idx = np.repeat(np.arange(len(y)), drawn)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = M.compute_metrics(y[idx], probs[idx], classes=classes,
                                    threshold=None if threshold is None else threshold[idx])
        ref.pop("confusion_matrix")
        assert list(fast) == list(ref)
        for name, value in ref.items():
            assert _same(fast[name][b], value), (b, name, fast[name][b], value)
        undefined += np.isnan(ref["roc_auc" if n_classes == 2 else "roc_auc[macro]"])
    assert undefined > 0  # some resamples had one class only: NaN like the loop


@pytest.mark.parametrize("n_classes", [2, 3])
def test_intervals_equal_the_loop_on_the_same_resamples(n_classes):
    frame, classes = _frame(n_classes)
    for level in ("image", "patient"):
        y, probs, groups = _level(frame, classes, level)
        threshold = 0.45 if n_classes == 2 else None
        fast = M.bootstrap_metrics(y, probs, groups, classes=classes, threshold=threshold, n_bootstrap=40, seed=2)
        loop = M.patient_bootstrap(lambda idx: M.compute_metrics(y[idx], probs[idx], classes=classes,
                                                                 threshold=threshold),
                                   groups, labels=y, n_bootstrap=40, seed=2)
        assert list(fast["metrics"]) == list(loop["metrics"])
        for name, fig in loop["metrics"].items():
            got = fast["metrics"][name]
            assert got["n_used"] == fig["n_used"], name
            for key in ("value", "boot_low", "boot_high"):
                assert _same(got[key], fig[key]), (level, name, key)
        assert fast["confusion_matrix"] == loop["confusion_matrix"]


@pytest.mark.parametrize("n_classes", [2, 3])
def test_agrees_with_the_frozen_loop_within_monte_carlo_error(frozen, n_classes):
    """Point figures identical; each percentile bound of the frozen loop (its own draws, ``n_loop``
    resamples) lies within the vectorised bootstrap's quantiles at ``q -/+ d`` (``n_ref``
    resamples), where ``d`` is 4.5 standard deviations of the difference of two empirical
    quantiles' ranks, ``sqrt(q (1 - q) (1 / n_loop + 1 / n_ref))``; ``n_used`` likewise as shares."""
    frame, classes = _frame(n_classes, n_patients=60, seed=1)
    n_loop, n_ref, level = 100, 2000, 0.9
    for lvl in ("image", "patient"):
        y, probs, groups = _level(frame, classes, lvl)
        threshold = 0.5 if n_classes == 2 else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            old = frozen.loop_bootstrap_metrics(y, probs, groups, classes=classes, threshold=threshold,
                                                n_bootstrap=n_loop, seed=0, level=level)
            new = M.bootstrap_metrics(y, probs, groups, classes=classes, threshold=threshold, n_bootstrap=n_ref,
                                      seed=0, level=level)
        counts = np.concatenate(list(resample_counts(groups, labels=y, n_bootstrap=n_ref, seed=0)))
        drawn = resampled_metrics(counts, y, probs, classes=classes, threshold=threshold)
        assert list(new["metrics"]) == list(old["metrics"])
        for name, fig in old["metrics"].items():
            got = new["metrics"][name]
            assert got == {**fig, "boot_low": got["boot_low"], "boot_high": got["boot_high"],
                           "ci_low": got["ci_low"], "ci_high": got["ci_high"], "n_used": got["n_used"]}, name
            if fig["interval"] == "wilson-deff":  # not resampled: identical
                assert (got["ci_low"], got["ci_high"]) == (fig["ci_low"], fig["ci_high"]), name
            share = np.sqrt(0.25 * (1 / n_loop + 1 / n_ref))
            assert abs(got["n_used"] / n_ref - fig["n_used"] / n_loop) <= 4.5 * share, name
            values = drawn[name][~np.isnan(drawn[name])]
            for q, key in (((1 - level) / 2, "boot_low"), ((1 + level) / 2, "boot_high")):
                d = 4.5 * np.sqrt(q * (1 - q) * (1 / n_loop + 1 / n_ref))
                low, high = np.quantile(values, [max(q - d, 0.0), min(q + d, 1.0)])
                assert low - 1e-9 <= fig[key] <= high + 1e-9, (lvl, name, key, fig[key], (low, high))


def test_same_seed_same_intervals_other_seed_other_ones():
    frame, classes = _frame(3)
    y, probs, groups = _level(frame, classes, "patient")
    a, b, c = (M.bootstrap_metrics(y, probs, groups, classes=classes, n_bootstrap=100, seed=s) for s in (7, 7, 8))
    assert a == b
    assert a["metrics"]["roc_auc[macro]"] != c["metrics"]["roc_auc[macro]"]


def test_resamples_come_in_chunks_that_keep_whole_groups_and_strata():
    groups = np.repeat([f"g{i}" for i in range(10)], [1, 2, 3, 1, 2, 3, 1, 2, 3, 1])
    labels = np.repeat(np.arange(10) % 2, [1, 2, 3, 1, 2, 3, 1, 2, 3, 1])
    chunks = list(resample_counts(groups, labels=labels, n_bootstrap=25, seed=0, max_cells=5 * len(groups)))
    assert [len(c) for c in chunks] == [5] * 5
    counts = np.concatenate(chunks)
    codes = pd.factorize(groups, sort=True)[0]
    for row in counts:
        per_group = pd.Series(row).groupby(codes)
        assert (per_group.nunique() == 1).all()  # every row of a drawn group, as often
        drawn = per_group.first().to_numpy()
        assert drawn[0::2].sum() == 5 and drawn[1::2].sum() == 5  # five groups of each stratum
    again = np.concatenate(list(resample_counts(groups, labels=labels, n_bootstrap=25, seed=0,
                                                max_cells=5 * len(groups))))
    assert (again == counts).all()


@pytest.mark.parametrize("n_classes,metric", [(2, "roc_auc"), (2, "pr_auc"), (3, "roc_auc"), (3, "brier")])
def test_paired_bootstrap_equals_its_loop(n_classes, metric):
    frame, classes = _frame(n_classes)
    y, pa, groups = _level(frame, classes, "image")
    pb = np.roll(pa, 3, axis=0)
    name = M.PAIRED_METRICS[metric][0 if n_classes == 2 else 1]

    def figure(idx, probs):
        if n_classes == 2 and metric != "brier":
            if np.unique(y[idx]).size < 2:
                return float("nan")
            return float((skm.roc_auc_score if metric == "roc_auc" else skm.average_precision_score)(
                y[idx], probs[idx, 1]))
        return M.compute_metrics(y[idx], probs[idx], classes=classes)[name]

    diffs = []

    def score(idx):
        fa, fb = figure(idx, pa), figure(idx, pb)
        diffs.append(fa - fb)
        return {"a": fa, "b": fb, "difference": fa - fb}

    loop = M.patient_bootstrap(score, groups, labels=y, n_bootstrap=40, seed=4)
    fast = M.paired_bootstrap(y, pa, pb, groups, classes=classes, metric=metric, n_bootstrap=40, seed=4)
    for key in ("a", "b", "difference"):
        for k in ("value", "ci_low", "ci_high", "n_used"):
            assert _same(fast[key][k], loop["metrics"][key][k]), (key, k)
    drawn = np.asarray(diffs[1:])
    drawn = drawn[~np.isnan(drawn)]
    assert fast["p_value"] == min(1.0, 2.0 * min(np.mean(drawn <= 0), np.mean(drawn >= 0)))


def test_resampled_metrics_errors():
    frame, classes = _frame(2, n_patients=5)
    y, probs, _ = _level(frame, classes, "image")
    with pytest.raises(ValueError, match=r"Expected counts \(r, n\), y_true \(n,\) and probs \(n, 2\)\. "
                                         r"Received: shapes="):
        resampled_metrics(np.ones((3, len(y) + 1)), y, probs, classes=classes)
    three = np.c_[probs, np.zeros(len(y))]
    with pytest.raises(ValueError, match=r"two-class models only.*Received: threshold=0\.5"):
        resampled_metrics(np.ones((1, len(y))), y, three, classes=["a", "b", "c"], threshold=0.5)
