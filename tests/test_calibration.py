"""Recalibration at a new site: the maps and their choice (covidxr.evaluation.calibration), the draw
by group, `covidxr calibrate` (covidxr.calibrate) and a calibration applied by `evaluate` and `predict`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from covidxr import cli
from covidxr.calibrate import calibrate_site, read_calibration
from covidxr.evaluate import evaluate_run
from covidxr.evaluation import metrics as M
from covidxr.evaluation.calibration import (apply_calibration, draw_labelled, fit_calibration, gain_by_size,
                                            site_threshold)

CLASSES = ["non-covid", "covid"]


def _site(n=120, *, prevalence=0.8, shift=-1.5, seed=0, per_patient=2):
    """A site where the model ranks well but its probabilities sit too low (home prevalence 0.5)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    z = rng.normal(np.where(y == 1, 1.0, -1.0), 1.2) + shift
    p = 1 / (1 + np.exp(-z))
    return pd.DataFrame({"image": [f"s/{i}.png" for i in range(n)], "patient": [f"p{i // per_patient}" for i in range(n)],
                         "label": np.asarray(CLASSES)[y], "part": "test", "prob_non-covid": 1 - p, "prob_covid": p})


@pytest.mark.parametrize("method", ["temperature", "platt"])
def test_monotone_maps_leave_roc_auc_unchanged(method):
    site = _site()
    y, probs = M.class_probabilities(site, CLASSES)
    fitted = fit_calibration(y, probs[:, 1], site["patient"], method=method)
    q = apply_calibration(fitted["params"], probs[:, 1])
    assert roc_auc_score(y, q) == pytest.approx(roc_auc_score(y, probs[:, 1]), abs=1e-12)
    assert not np.allclose(q, probs[:, 1])
    if method == "temperature":
        assert apply_calibration(fitted["params"], [0.5])[0] == pytest.approx(0.5)   # 0.5 stays where it is


def test_recalibration_lowers_ece_and_auto_picks_by_group_cv():
    site = _site(400, seed=1)
    y, probs = M.class_probabilities(site, CLASSES)
    lab = np.arange(len(y)) < 200
    for method in ("platt", "isotonic", "auto"):
        fitted = fit_calibration(y[lab], probs[lab, 1], site["patient"][lab], method=method)
        q = apply_calibration(fitted["params"], probs[~lab, 1])
        before = M.expected_calibration_error(y[~lab], probs[~lab, 1])
        assert M.expected_calibration_error(y[~lab], q) < before / 2, method
    assert set(fitted["cv_log_loss"]) == {"temperature", "platt", "isotonic"}
    assert fitted["method"] == min(fitted["cv_log_loss"], key=fitted["cv_log_loss"].get)
    few = fit_calibration(y[:20], probs[:20, 1], site["patient"][:20], method="auto")
    assert set(few["cv_log_loss"]) == {"temperature", "platt"}    # no isotonic steps on 20 images
    with pytest.raises(ValueError, match=r"Unknown recalibration method.*Received: method='beta'"):
        fit_calibration(y, probs[:, 1], site["patient"], method="beta")
    with pytest.raises(ValueError, match=r"both classes.*Received: class_counts="):
        site_threshold(np.ones(5), np.linspace(0, 1, 5))


def test_draw_keeps_groups_whole_and_both_classes():
    site = _site(60, per_patient=3)
    mask = draw_labelled(site, 10, group_col="patient", seed=4)
    assert 10 <= mask.sum() < 13
    assert not set(site["patient"][mask]) & set(site["patient"][~mask])
    assert site["label"][mask].nunique() == 2
    assert draw_labelled(site, 0.25, group_col="patient").sum() >= 15
    with pytest.raises(ValueError, match=r"fewer labelled images than the site's 60 images.*Received: labelled=60"):
        draw_labelled(site, 60, group_col="patient")
    with pytest.raises(ValueError, match=r"integer >= 2\) or a share in \(0, 1\).*Received: labelled='ten'"):
        draw_labelled(site, "ten", group_col="patient")
    with pytest.raises(ValueError, match=r"site with images of both classes.*Received: class_counts="):
        draw_labelled(site.assign(label="covid"), 10, group_col="patient")
    table = gain_by_size(site, classes=CLASSES, sizes=[10, 20, 100], home_threshold=0.5, group_col="patient",
                         repeats=3)
    assert sorted(table["labelled"].unique()) == [10, 20] and len(table) == 6


def _run(root):
    """A fake run folder whose test part is the site of :func:`_site`."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"classes": CLASSES, "task": "covid-vs-rest", "fold": 0}))
    val = _site(80, prevalence=0.5, shift=0.0, seed=7).assign(part="val")
    val["image"], val["patient"] = "v" + val["image"], "v" + val["patient"]
    pd.concat([val, _site(120, seed=8)]).to_csv(root / "predictions.csv", index=False)
    return root


def test_calibrate_writes_a_folder_that_evaluate_applies(tmp_path, capsys):
    run = _run(tmp_path / "run")
    out = calibrate_site(run, labelled=20, name="site", n_bootstrap=50, sizes=(10, 20), repeats=3)
    for name in ("calibration.json", "labelled.csv", "metrics.json", "predictions.csv", "gain_by_size.csv",
                 "report.md", "figures/reliability.png", "figures/gain_by_size.png"):
        assert (out / name).is_file(), name
    result = json.loads((out / "metrics.json").read_text())
    before, after = result["before"]["image"]["metrics"], result["after"]["image"]["metrics"]
    assert after["ece"]["value"] < before["ece"]["value"]
    assert after["roc_auc"]["value"] == pytest.approx(before["roc_auc"]["value"])
    record, labelled = read_calibration(run, "site")
    assert record["n_labelled"] == len(labelled) >= 20 and record["n_rest"] == 120 - len(labelled)
    evaluation = evaluate_run(run, calibration="site", conformal=0.2, n_bootstrap=50, figures=False)
    got = json.loads((evaluation / "metrics.json").read_text())
    assert got["n_images"] == record["n_rest"] and got["threshold"] == pytest.approx(record["threshold"])
    assert got["calibration"]["n_left_out_labelled"] == len(labelled)
    assert "labelled images of calibration" in got["conformal"]["calibrated_on"]
    assert got["image"]["metrics"]["ece"]["value"] == pytest.approx(after["ece"]["value"])
    with pytest.raises(FileNotFoundError, match=r"calibration named 'other'.*Received: calibration='other'"):
        evaluate_run(run, calibration="other", name="again")
    assert cli.main(["calibrate", "--run", str(run), "--labelled", "500", "--sizes", ""]) == 2
    assert "Received: labelled='500'" in capsys.readouterr().err
    assert cli.main(["calibrate", "--run", str(run), "--labelled", "0.2", "--sizes", "", "--n-bootstrap", "20",
                     "--no-figures"]) == 0
    assert "| ece |" in capsys.readouterr().out


def test_predict_applies_a_calibration_file(tiny_run, collection, tmp_path):
    from covidxr.predict import predict_files

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    folder = run / "calibrations" / "site-2026-12-01T00-00-00"
    folder.mkdir(parents=True)
    params = {"method": "platt", "a": 2.0, "b": 1.0}
    (folder / "calibration.json").write_text(json.dumps(
        {"name": folder.name, "classes": CLASSES, "params": params, "threshold": 0.7}))
    pd.DataFrame({"image": ["a", "b", "c", "d"], "patient": ["1", "2", "3", "4"], "label": ["covid", "non-covid"] * 2,
                  "prob_non-covid": [0.2, 0.9, 0.4, 0.6], "prob_covid": [0.8, 0.1, 0.6, 0.4]}).to_csv(
        folder / "labelled.csv", index=False)
    images = sorted((collection / "images").glob("p00*_0.*"))[:3]
    plain = predict_files(run, images)
    site = predict_files(run, images, calibration="site", conformal=0.3)
    expected = apply_calibration(params, plain["prob_covid"].to_numpy())
    np.testing.assert_allclose(site["prob_covid"], expected, atol=1e-6)
    assert (site["threshold"] == 0.7).all()
    assert list(site["decision"]) == list(np.where(expected >= 0.7, "covid", "non-covid"))
    assert set(site["set"]) <= {"{non-covid}", "{covid}", "{non-covid, covid}", "{}"}
    assert ((site["set"] == "{non-covid, covid}") == (site["advice"] == "uncertain: refer")).all()
    with pytest.raises(ValueError, match=r"alpha in \(0, 1\).*Received: alpha=0"):
        predict_files(run, images, conformal=0)
