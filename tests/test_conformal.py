"""covidxr.evaluation.conformal: split conformal sets through crepes, class-conditional (Mondrian)
coverage, summaries, a run's validation part, pooling folds, and the `compare --conformal` command."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from covidxr import cli
from covidxr.evaluation.conformal import (check_alpha, conformal_summary, fit_conformal, pooled_conformal,
                                          prediction_sets, run_conformal, set_labels)

CLASSES = ["non-covid", "covid"]


def _calibrated(n, *, prevalence=0.5, seed=0, sharp=2.0):
    """Labels drawn from the probabilities themselves: a perfectly calibrated model."""
    rng = np.random.default_rng(seed)
    z = rng.normal(np.log(prevalence / (1 - prevalence)), sharp, size=n)
    p = 1 / (1 + np.exp(-z))
    y = (rng.random(n) < p).astype(int)
    return y, np.stack([1 - p, p], axis=1)


def _coverage(y, sets, c):
    rows = y == c
    return sets[rows, c].mean()


def test_coverage_on_synthetic_data_is_one_minus_alpha_per_class():
    y_cal, p_cal = _calibrated(5000, seed=1)
    y, p = _calibrated(6000, seed=2)
    model = fit_conformal(y_cal, p_cal, classes=CLASSES, alpha=0.1)
    sets = prediction_sets(model, p)
    for c in (0, 1):
        n_c = model["n_calibration"][CLASSES[c]]
        expected = np.ceil(0.9 * (n_c + 1)) / (n_c + 1)   # unsmoothed: the exact finite-sample coverage
        assert _coverage(y, sets, c) == pytest.approx(expected, abs=0.025)
    # a tiny alpha asks for more than the calibration rows can tell: every set holds every class
    few = fit_conformal(y_cal[:12], p_cal[:12], classes=CLASSES, alpha=0.01)
    assert prediction_sets(few, p).all()


def test_mondrian_keeps_the_rare_class_covered_where_marginal_sets_do_not():
    rng = np.random.default_rng(3)

    def rare(n):
        # rare class 1 (10%) that the model scores poorly: its probabilities overlap the common class
        y = (rng.random(n) < 0.1).astype(int)
        p = np.clip(rng.normal(np.where(y == 1, 0.35, 0.15), 0.12), 0.001, 0.999)
        return y, np.stack([1 - p, p], axis=1)

    y_cal, p_cal = rare(3000)
    y, p = rare(6000)
    marginal = prediction_sets(fit_conformal(y_cal, p_cal, classes=CLASSES, alpha=0.1, class_conditional=False), p)
    mondrian = prediction_sets(fit_conformal(y_cal, p_cal, classes=CLASSES, alpha=0.1), p)
    assert _coverage(y, marginal, 1) < 0.8                       # the rare class pays for the common one
    assert (y == np.argmax(p, axis=1)).mean() > 0.85
    assert _coverage(y, mondrian, 1) == pytest.approx(0.9, abs=0.03)
    assert _coverage(y, mondrian, 0) == pytest.approx(0.9, abs=0.03)


@pytest.mark.parametrize("alpha", [0, 1, -0.1, 1.5, "x", None])
def test_alpha_outside_zero_one_is_refused(alpha):
    with pytest.raises(ValueError, match=r"alpha in \(0, 1\).*Received: alpha="):
        check_alpha(alpha)
    with pytest.raises(ValueError, match=r"alpha in \(0, 1\)"):
        fit_conformal([0, 1], [[0.6, 0.4], [0.3, 0.7]], classes=CLASSES, alpha=alpha)


def test_bad_calibration_rows_are_refused():
    with pytest.raises(ValueError, match=r"rows of every class.*Received: n_calibration="):
        fit_conformal([1, 1], [[0.6, 0.4], [0.3, 0.7]], classes=CLASSES, alpha=0.1)
    with pytest.raises(ValueError, match=r"shape \(n, 2\).*Received: shape="):
        fit_conformal([0, 1], [0.4, 0.7], classes=CLASSES, alpha=0.1)
    model = fit_conformal([0, 1], [[0.6, 0.4], [0.3, 0.7]], classes=CLASSES, alpha=0.5)
    with pytest.raises(ValueError, match=r"shape \(n, 2\).*Received: shape="):
        prediction_sets(model, np.ones((3, 3)) / 3)


def test_summary_counts_sets_and_refers_two_class_sets():
    y = np.array([0, 0, 1, 1, 1])
    sets = np.array([[1, 0], [1, 1], [0, 1], [0, 0], [1, 0]], dtype=bool)
    s = conformal_summary(y, sets, ["a", "a", "b", "c", "d"], classes=CLASSES)
    assert s["coverage"]["overall"]["value"] == pytest.approx(3 / 5)
    assert s["coverage"]["non-covid"]["value"] == 1.0 and s["coverage"]["covid"]["value"] == pytest.approx(1 / 3)
    assert s["mean_set_size"] == pytest.approx(5 / 5)
    assert s["refer"]["value"] == pytest.approx(1 / 5) and s["empty"]["value"] == pytest.approx(1 / 5)
    assert s["coverage"]["non-covid"]["ci_low"] < 1.0             # Wilson: no collapse at 1
    assert set_labels(sets, CLASSES) == ["{non-covid}", "{non-covid, covid}", "{covid}", "{}", "{non-covid}"]


def _run(root, seed, fold):
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"classes": CLASSES, "task": "covid-vs-rest", "fold": fold}))
    frames = []
    for part, n in (("val", 300), ("test", 300)):
        y, p = _calibrated(n, seed=seed + len(frames), prevalence=0.7)
        frames.append(pd.DataFrame({"image": [f"{part}{fold}_{i}.png" for i in range(n)],
                                    "patient": [f"{part}{fold}_{i // 2}" for i in range(n)],
                                    "label": np.asarray(CLASSES)[y], "part": part,
                                    "prob_non-covid": p[:, 0], "prob_covid": p[:, 1]}))
    pd.concat(frames).to_csv(root / "predictions.csv", index=False)
    return root


def test_pooled_folds_and_the_compare_command(tmp_path, capsys):
    runs = [_run(tmp_path / f"r{k}", seed=10 * k, fold=k) for k in range(3)]
    per_run, pooled = pooled_conformal(runs, alpha=0.1)
    assert list(per_run["fold"]) == [0, 1, 2] and (per_run["n_test"] == 300).all()
    assert pooled["n"] == 900 and pooled["n_runs"] == 3
    for c in CLASSES:
        assert 0.85 <= pooled["coverage"][c]["value"] <= 0.97
    _, one, table = run_conformal(*[pd.read_csv(runs[0] / "predictions.csv")] * 1,
                                  pd.read_csv(runs[0] / "predictions.csv").query("part == 'test'"),
                                  classes=CLASSES, alpha=0.1)
    assert one["calibrated_on"] == "the run's validation part" and {"set", "refer", "in_set_covid"} <= set(table)
    assert cli.main(["compare", *map(str, runs), "--conformal", "0.1", "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "Conformal prediction sets (alpha = 0.1" in out and (tmp_path / "c" / "conformal.csv").is_file()
    assert cli.main(["compare", str(runs[0]), "--conformal", "1.5"]) == 2
    assert "Received: alpha=1.5" in capsys.readouterr().err
