"""covidxr.evaluation.metrics and .bootstrap: each figure against a hand-computed case, the patient bootstrap, thresholds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from covidxr import evaluation as M

# Hand case (two classes), threshold 0.5:
#   y      1    1    1    0    0    0    0
#   score 0.9  0.6  0.2  0.7  0.1  0.3  0.4
#   pred   1    1    0    1    0    0    0     -> TP=2 FN=1 FP=1 TN=3
Y = np.array([1, 1, 1, 0, 0, 0, 0])
S = np.array([0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.4])
HAND = {
    "sensitivity": 2 / 3,
    "specificity": 3 / 4,
    "ppv": 2 / 3,
    "npv": 3 / 4,
    "f1": 4 / 6,                       # 2TP / (2TP + FP + FN)
    "balanced_accuracy": (2 / 3 + 3 / 4) / 2,
    "mcc": (2 * 3 - 1 * 1) / np.sqrt(3 * 3 * 4 * 4),   # (TP TN - FP FN) / sqrt(...)
    "roc_auc": 8 / 12,                 # positive > negative in 8 of 12 pairs
    "pr_auc": (1 / 1 + 2 / 3 + 3 / 6) / 3,  # precision at each positive, ranked by score
    "brier": (0.01 + 0.16 + 0.64 + 0.49 + 0.01 + 0.09 + 0.16) / 7,
    # one image per 0.1-wide bin: |y - score| per image, averaged
    "ece": (0.1 + 0.4 + 0.8 + 0.7 + 0.1 + 0.3 + 0.4) / 7,
    "accuracy": 5 / 7,
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_binary_metric_matches_hand_computation(name):
    figs = M.binary_metrics(Y, S, threshold=0.5)
    assert figs[name] == pytest.approx(HAND[name], abs=1e-12)


def test_binary_metrics_agree_with_sklearn_and_confusion_matrix():
    figs = M.binary_metrics(Y, S, threshold=0.5)
    pred = (S >= 0.5).astype(int)
    assert figs["confusion_matrix"] == [[3, 1], [1, 2]]
    assert figs["mcc"] == pytest.approx(skm.matthews_corrcoef(Y, pred))
    assert figs["f1"] == pytest.approx(skm.f1_score(Y, pred))
    assert figs["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(Y, pred))
    assert figs["brier"] == pytest.approx(skm.brier_score_loss(Y, S))


def test_threshold_is_inclusive_and_changes_decisions():
    # score 0.6 >= 0.6 is positive; at 0.61 it is not.
    assert M.binary_metrics(Y, S, threshold=0.6)["sensitivity"] == pytest.approx(2 / 3)
    assert M.binary_metrics(Y, S, threshold=0.61)["sensitivity"] == pytest.approx(1 / 3)


def test_undefined_metrics_are_nan_not_errors():
    figs = M.binary_metrics([0, 0, 0], [0.1, 0.6, 0.2], threshold=0.5)
    assert np.isnan(figs["sensitivity"]) and np.isnan(figs["roc_auc"]) and np.isnan(figs["f1"])
    assert figs["specificity"] == pytest.approx(2 / 3)


def test_multiclass_hand_case():
    # y 0 0 1 1 2 2 ; argmax 0 1 1 1 2 0 -> cm [[1,1,0],[0,2,0],[1,0,1]]
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([[.7, .2, .1], [.3, .6, .1], [.1, .8, .1], [.2, .5, .3], [.1, .2, .7], [.5, .1, .4]])
    figs = M.multiclass_metrics(y, probs, classes=["normal", "covid", "other"])
    assert figs["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert figs["accuracy"] == pytest.approx(4 / 6)
    assert figs["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert figs["sensitivity[normal]"] == pytest.approx(1 / 2)
    assert figs["specificity[normal]"] == pytest.approx(3 / 4)   # TN 3 of 4 non-normal
    assert figs["ppv[covid]"] == pytest.approx(2 / 3)
    assert figs["npv[other]"] == pytest.approx(4 / 5)
    assert figs["sensitivity[macro]"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert figs["mcc"] == pytest.approx(skm.matthews_corrcoef(y, probs.argmax(1)))
    assert figs["roc_auc[covid]"] == pytest.approx(skm.roc_auc_score(y == 1, probs[:, 1]))
    assert figs["pr_auc[other]"] == pytest.approx(skm.average_precision_score(y == 2, probs[:, 2]))
    onehot = np.eye(3)[y]
    assert figs["brier"] == pytest.approx(np.mean(((probs - onehot) ** 2).sum(1)))


def test_compute_metrics_refuses_threshold_for_three_classes():
    with pytest.raises(ValueError, match=r"two-class models only.*Received: threshold=0.5"):
        M.compute_metrics([0, 1, 2], np.eye(3), classes=["a", "b", "c"], threshold=0.5)
    with pytest.raises(ValueError, match=r"shape \(n, 2\).*Received: probs.shape"):
        M.compute_metrics([0, 1], np.eye(3)[:2], classes=["a", "b"])


# --------------------------------------------------------------------------- threshold

def test_youden_threshold_hand_case():
    # Candidate thresholds 0.9 .. 0.1: J is largest (2/3 - 0 ... ) -> check against brute force.
    info = M.choose_threshold(Y, S, method="youden")
    best = max(sorted(set(S), reverse=True),
               key=lambda t: M.binary_metrics(Y, S, threshold=t)["sensitivity"]
               + M.binary_metrics(Y, S, threshold=t)["specificity"])
    assert info["validation_score"] == pytest.approx(best)
    assert info["validation_score"] == pytest.approx(0.6)   # sens 2/3, spec 3/4: J = 5/12
    assert info["threshold"] == pytest.approx(0.5)          # midpoint of 0.6 and the next lower score 0.4
    assert info["method"] == "youden" and "Youden" in info["description"]


def test_target_sensitivity_threshold():
    info = M.choose_threshold(Y, S, method="sensitivity", target_sensitivity=1.0)
    assert info["validation_score"] == pytest.approx(0.2)
    assert info["threshold"] == pytest.approx(0.15)         # midpoint of 0.2 and 0.1
    assert info["sensitivity"] == 1.0
    with pytest.raises(ValueError, match=r"target_sensitivity in \(0, 1\].*Received: target_sensitivity=None"):
        M.choose_threshold(Y, S, method="sensitivity")


def test_threshold_errors():
    with pytest.raises(ValueError, match=r"Expected one of \['youden', 'sensitivity', 'fixed'\]\. Received: method='best'"):
        M.choose_threshold(Y, S, method="best")
    with pytest.raises(ValueError, match=r"both classes.*Received: validation_class_counts="):
        M.choose_threshold([1, 1], [0.2, 0.3])
    assert M.choose_threshold(Y, S, method="fixed", threshold=0.3)["threshold"] == 0.3


@pytest.mark.parametrize("method, target", [("youden", None), ("sensitivity", 0.5), ("sensitivity", 1.0)])
def test_thresholds_sit_between_validation_scores_and_keep_decisions(method, target):
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 60)
    s = np.round(np.clip(0.3 * y + 0.7 * rng.random(60), 0, 1), 2)   # ties included
    info = M.choose_threshold(y, s, method=method, target_sensitivity=target)
    assert info["threshold"] not in set(s)
    lower = s[s < info["validation_score"]]
    assert info["threshold"] == pytest.approx((info["validation_score"] + (lower.max() if lower.size else 0)) / 2)
    # the validation decisions are those at the chosen score itself
    assert (M.positive(s, info["threshold"]) == M.positive(s, info["validation_score"])).all()


def test_lowest_score_midpoint_is_taken_with_zero():
    # every validation image positive is best: the threshold falls below the lowest score
    info = M.choose_threshold([1, 1, 0], [0.4, 0.5, 0.8], method="sensitivity", target_sensitivity=1.0)
    assert info["validation_score"] == 0.4 and info["threshold"] == pytest.approx(0.2)


def test_expected_calibration_error_bins():
    # 10 equal-width bins; perfect calibration in a bin gives 0, 1.0 falls in the last bin
    assert M.expected_calibration_error([1, 0], [0.95, 0.05]) == pytest.approx(0.05)
    assert M.expected_calibration_error([1, 1, 0, 0], [1.0, 1.0, 0.0, 0.0]) == 0.0
    assert M.expected_calibration_error([1, 0], [0.5, 0.5]) == 0.0               # one bin: mean 0.5 vs 0.5
    assert M.expected_calibration_error([1, 0], [0.55, 0.45]) == pytest.approx(0.45 / 2 + 0.45 / 2)
    assert np.isnan(M.expected_calibration_error([], []))
    # three classes: top-label confidence against correctness
    probs = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    figs = M.multiclass_metrics([0, 1, 1], probs, classes=["a", "b", "c"])
    # bins: 0.8 right (|1 - 0.8|), 0.6 wrong (|0 - 0.6|), 0.7 right (|1 - 0.7|)
    assert figs["ece"] == pytest.approx((0.2 + 0.6 + 0.3) / 3)


# --------------------------------------------------------------------------- bootstrap

def _patients(n_patients=30, per_patient=3, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"p{i:02d}" for i in range(n_patients)], per_patient)
    y = np.repeat(np.arange(n_patients) % 2, per_patient)
    score = np.clip(0.35 * y + 0.65 * rng.random(len(y)), 0, 1)
    return y, np.c_[1 - score, score], groups


def _spy_counts(monkeypatch):
    """Every count matrix (resamples x rows) the bootstrap scores, as a list."""
    seen = []
    real = M.bootstrap.resampled_metrics

    def spy(counts, *args, **kw):
        seen.append(np.asarray(counts).copy())
        return real(counts, *args, **kw)

    monkeypatch.setattr(M.bootstrap, "resampled_metrics", spy)
    return seen


def test_bootstrap_resamples_whole_patients(monkeypatch):
    y, probs, groups = _patients()
    seen = _spy_counts(monkeypatch)
    M.bootstrap_metrics(y, probs, groups, classes=["a", "b"], threshold=0.5, n_bootstrap=20, seed=1)
    counts = np.concatenate(seen)
    assert counts.shape == (20, len(y))
    for row in counts:
        # every drawn patient brings all 3 of its images, the same number of times each
        per_patient = pd.DataFrame({"patient": groups, "count": row}).groupby("patient")["count"]
        assert (per_patient.nunique() == 1).all()
        assert row.sum() == len(y)  # 30 patients drawn, 3 images each
    assert (counts >= 2).any()  # with replacement


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    y, probs, groups = _patients()
    a = M.bootstrap_metrics(y, probs, groups, classes=["a", "b"], threshold=0.5, n_bootstrap=200, seed=3)
    b = M.bootstrap_metrics(y, probs, groups, classes=["a", "b"], threshold=0.5, n_bootstrap=200, seed=3)
    c = M.bootstrap_metrics(y, probs, groups, classes=["a", "b"], threshold=0.5, n_bootstrap=200, seed=4)
    assert a["metrics"] == b["metrics"]
    assert a["metrics"]["roc_auc"] != c["metrics"]["roc_auc"]
    for name, fig in a["metrics"].items():
        assert fig["ci_low"] <= fig["value"] + 1e-9 and fig["value"] <= fig["ci_high"] + 0.05, name
        assert fig["n_used"] == 200
    assert a["n_groups"] == 30 and a["n_rows"] == 90


def test_patient_bootstrap_is_wider_than_image_bootstrap_for_clustered_data():
    # Images of one patient are near copies: the patient bootstrap must see fewer independent units.
    rng = np.random.default_rng(0)
    n_pat, k = 20, 10
    groups = np.repeat(np.arange(n_pat), k)
    y = np.repeat(np.arange(n_pat) % 2, k)
    pat_score = np.clip(0.3 * (np.arange(n_pat) % 2) + 0.7 * rng.random(n_pat), 0, 1)
    score = np.repeat(pat_score, k) + 0.01 * rng.standard_normal(n_pat * k)
    probs = np.c_[1 - score, score]
    by_patient = M.bootstrap_metrics(y, probs, groups, classes=["a", "b"], n_bootstrap=200)
    by_image = M.bootstrap_metrics(y, probs, np.arange(len(y)), classes=["a", "b"], n_bootstrap=200)
    width = lambda r: r["metrics"]["roc_auc"]["ci_high"] - r["metrics"]["roc_auc"]["ci_low"]  # noqa: E731
    assert width(by_patient) > 2 * width(by_image)


def test_bootstrap_is_stratified_and_skips_undefined_resamples():
    # One positive patient of 12: stratified, every resample draws it (sensitivity always defined);
    # one negative patient is the only predicted positive: PPV is undefined when it is not drawn.
    groups = np.repeat(np.arange(12), 2)
    y = np.repeat((np.arange(12) == 0).astype(int), 2)
    score = np.where(y == 1, 0.3, 0.2)
    score[2:4] = 0.9                          # patient 1 (negative) called positive
    with pytest.warns(M.BootstrapWarning, match=r"fewer than 90% of the resamples.*ppv \(\d+/200\)"
                                               r".*Received: n_bootstrap=200") as caught:
        out = M.bootstrap_metrics(y, np.c_[1 - score, score], groups, classes=["a", "b"], threshold=0.5,
                                  n_bootstrap=200, seed=0)
    assert len(caught) == 1
    figs = out["metrics"]
    assert figs["sensitivity"]["n_used"] == 200 and figs["specificity"]["n_used"] == 200
    assert 0 < figs["ppv"]["n_used"] < 180    # about (10/11)^11 = 35% of resamples lack patient 1
    assert "sensitivity" not in str(caught[0].message)
    assert out["stratified"] and figs["sensitivity"]["interval"] == "wilson-deff"


def test_stratified_resamples_keep_each_class_count(monkeypatch):
    y, probs, groups = _patients(n_patients=9, per_patient=1)      # 5 negatives, 4 positives
    seen = _spy_counts(monkeypatch)
    M.bootstrap_metrics(y, probs, groups, classes=["a", "b"], n_bootstrap=30, seed=2)
    assert (np.concatenate(seen) @ np.eye(2)[y] == [5, 4]).all()
    a = M.patient_bootstrap(lambda idx: {"m": float(len(set(idx)))}, groups, labels=y, n_bootstrap=30, seed=2)
    b = M.patient_bootstrap(lambda idx: {"m": float(len(set(idx)))}, groups, labels=y, n_bootstrap=30, seed=2)
    assert a == b


def test_group_stratum_is_its_most_common_label(monkeypatch):
    # group g0 has two positive rows and one negative: it belongs to the positive stratum
    groups = np.array(["g0", "g0", "g0", "g1", "g2", "g3"])
    labels = np.array([1, 1, 0, 0, 0, 1])
    seen = []
    M.patient_bootstrap(lambda idx: seen.append(groups[idx].tolist()) or {"m": 0.0}, groups,
                        labels=labels, n_bootstrap=40, seed=0)
    # every resample draws exactly 2 groups of the positive stratum {g0 (3 rows), g3 (1 row)}
    draws = [rows.count("g0") // 3 + rows.count("g3") for rows in seen[1:]]
    assert draws == [2] * 40
    assert any(rows.count("g0") == 6 for rows in seen[1:])      # with replacement: g0 drawn twice
    with pytest.raises(ValueError, match=r"one label per row \(6\)\. Received: len\(labels\)=2"):
        M.patient_bootstrap(lambda idx: {"m": 0.0}, groups, labels=[0, 1], n_bootstrap=1)


# --------------------------------------------------------------------------- Wilson / design effect

def test_wilson_and_clopper_pearson_textbook_15_of_15():
    low, high = M.wilson_interval(1.0, 15)
    assert (round(low, 3), round(high, 3)) == (0.796, 1.0)
    low, high = M.clopper_pearson(15, 15)
    assert (round(low, 3), round(high, 3)) == (0.782, 1.0)
    low, high = M.wilson_interval(0.0, 15)
    assert (round(low, 3), round(high, 3)) == (0.0, 0.204)
    # 10 of 20: Wilson [0.299, 0.701] (Newcombe 1998, table I style check)
    assert tuple(round(v, 3) for v in M.wilson_interval(0.5, 20)) == (0.299, 0.701)
    with pytest.raises(ValueError, match=r"level in \(0, 1\)\. Received: level=95"):
        M.wilson_interval(0.5, 20, level=95)


def test_specificity_15_of_15_does_not_collapse():
    # 15 negative patients, one image each, all correctly negative; the bootstrap collapses to [1, 1]
    y = np.r_[np.zeros(15, int), np.ones(5, int)]
    score = np.r_[np.full(15, 0.1), np.full(5, 0.9)]
    out = M.bootstrap_metrics(y, np.c_[1 - score, score], np.arange(20), classes=["a", "b"], threshold=0.5,
                              n_bootstrap=100, seed=0)
    spec = out["metrics"]["specificity"]
    assert spec["value"] == 1.0 and spec["interval"] == "wilson-deff"
    assert round(spec["ci_low"], 3) == 0.796 and spec["ci_high"] == 1.0
    assert spec["boot_low"] == spec["boot_high"] == 1.0
    assert spec["n_eff"] == pytest.approx(15)
    assert out["metrics"]["roc_auc"]["interval"] == "bootstrap"
    assert out["metrics"]["roc_auc"]["ci_low"] == out["metrics"]["roc_auc"]["boot_low"]


def test_design_effect_worst_case_and_cluster_robust():
    # 15 of 15 in 5 groups of 3: worst case deff = sum n_g^2 / n = 45 / 15 = 3 -> n_eff 5
    d = M.design_effect(np.ones(15), np.repeat(np.arange(5), 3))
    assert d["deff_rule"] == "worst-case" and d["deff"] == pytest.approx(3) and d["n_eff"] == pytest.approx(5)
    wide = M.wilson_interval(1.0, d["n_eff"])
    assert wide[0] < M.wilson_interval(1.0, 15)[0]
    # groups that agree within: deff = group size; independent-looking rows: clamped to 1
    agree = M.design_effect(np.repeat([1, 0, 1, 0, 1, 1], 4), np.repeat(np.arange(6), 4))
    assert agree["deff_rule"] == "cluster-robust" and agree["deff"] == pytest.approx(4 * 6 / 5)
    mixed = M.design_effect(np.tile([1, 0], 12), np.repeat(np.arange(6), 4))
    assert mixed["deff"] == 1.0 and mixed["n_eff"] == 24
    assert np.isnan(M.design_effect([], [])["p"])


def test_proportion_intervals_three_classes():
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    out = M.proportion_intervals(y, pred, np.arange(6), classes=["normal", "covid", "other"])
    assert set(out) == {"accuracy", *(f"{m}[{c}]" for m in ("sensitivity", "specificity", "ppv", "npv")
                                      for c in ("normal", "covid", "other"))}
    assert out["sensitivity[covid]"]["value"] == 1.0 and out["sensitivity[covid]"]["ci_low"] < 1.0
    assert out["accuracy"]["value"] == pytest.approx(4 / 6)
    figs = M.bootstrap_metrics(y, np.eye(3)[pred] * 0.8 + 0.2 / 3, np.arange(6), classes=["normal", "covid", "other"],
                               n_bootstrap=0)["metrics"]
    assert figs["ppv[covid]"]["interval"] == "wilson-deff" and figs["sensitivity[macro]"]["interval"] == "bootstrap"
    assert figs["ppv[covid]"]["value"] == pytest.approx(2 / 3)


def test_bootstrap_argument_errors():
    y, probs, groups = _patients()
    with pytest.raises(ValueError, match=r"n_bootstrap >= 0\. Received: n_bootstrap=-1"):
        M.bootstrap_metrics(y, probs, groups, classes=["a", "b"], n_bootstrap=-1)
    with pytest.raises(ValueError, match=r"level in \(0, 1\)\. Received: level=95"):
        M.bootstrap_metrics(y, probs, groups, classes=["a", "b"], level=95)
    with pytest.raises(ValueError, match=r"one length\. Received: lengths=\(90, 90, 3\)"):
        M.bootstrap_metrics(y, probs, groups[:3], classes=["a", "b"])


# --------------------------------------------------------------------------- frames

def test_patient_frame_means_probabilities_per_patient():
    frame = pd.DataFrame({"patient": ["a", "a", "b"], "label": ["covid", "covid", "normal"],
                          "prob_normal": [0.2, 0.6, 0.9], "prob_covid": [0.8, 0.4, 0.1]})
    out = M.patient_frame(frame, ["normal", "covid"])
    assert list(out["patient"]) == ["a", "b"]
    assert out.loc[0, "prob_covid"] == pytest.approx(0.6)
    assert list(out["images"]) == [2, 1] and "group" not in out.columns
    grouped = M.patient_frame(frame.assign(group=["a+b", "a+b", "a+b"]), ["normal", "covid"])
    assert list(grouped["group"]) == ["a+b", "a+b"]


def test_frame_checks():
    frame = pd.DataFrame({"patient": ["a"], "label": ["cat"], "prob_normal": [0.2], "prob_covid": [0.8]})
    with pytest.raises(ValueError, match=r"Received: labels=\['cat'\]"):
        M.class_probabilities(frame, ["normal", "covid"])
    with pytest.raises(ValueError, match=r"Received: missing=\['prob_other'\]"):
        M.class_probabilities(frame, ["normal", "covid", "other"])
    assert M.classes_from_frame(frame) == ["normal", "covid"]
