"""covidxr.evaluation.paired: two runs scored on the same images compared by the difference of
their ROC AUCs with a paired, class-stratified group bootstrap; ``covidxr compare --paired``.

Run folders here are fake (config.json + predictions.csv): run A's probabilities carry the
label by construction, run B's are noise, so A - B is clearly positive.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from covidxr import cli
from covidxr import evaluate as E
from covidxr import evaluation as M
from covidxr.reports import paired_markdown, paired_statement

BINARY = ["non-covid", "covid"]
NB = 200


def _predictions(*, signal, seed, n_patients=40, per_patient=2, parts=("val", "test")):
    """Predictions of the same images for every seed: labels alternate by patient; ``signal``
    moves the covid probability towards the label."""
    noise = np.random.default_rng(seed)
    rows = []
    for part in parts:
        for p in range(n_patients):
            label = p % 2
            for i in range(per_patient):
                prob = float(np.clip(0.5 + signal * (label - 0.5) + 0.25 * noise.standard_normal(), 0.01, 0.99))
                rows.append({"image": f"{part}/p{p:02d}_{i}.png", "patient": f"{part}-{p:02d}",
                             "group": f"{part}-g{p // 2:02d}" if p < 4 else f"{part}-{p:02d}",
                             "label": BINARY[label], "part": part, "prob_non-covid": 1 - prob, "prob_covid": prob})
    return pd.DataFrame(rows)


def fake_run(root: Path, *, signal, seed, edit=None, classes=BINARY) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"classes": list(classes), "task": "covid-vs-rest",
                                                  "backbone": "vgg16", "weights": "hed" if signal else "none",
                                                  "strategy": "class-weight", "fold": 0}))
    preds = _predictions(signal=signal, seed=seed)
    (edit(preds) if edit else preds).to_csv(root / "predictions.csv", index=False)
    return root


@pytest.fixture
def runs(tmp_path):
    return fake_run(tmp_path / "A", signal=0.6, seed=1), fake_run(tmp_path / "B", signal=0.0, seed=2)


def test_a_better_by_construction_excludes_zero(runs):
    result = M.paired_difference(*runs, n_bootstrap=NB, seed=0)
    test = _predictions(signal=0.6, seed=1).query("part == 'test'")
    other = _predictions(signal=0.0, seed=2).query("part == 'test'")
    y = (test["label"] == "covid").to_numpy()
    expected = roc_auc_score(y, test["prob_covid"]) - roc_auc_score(y, other["prob_covid"])
    image = result["image"]
    assert image["difference"]["value"] == pytest.approx(expected)
    assert image["a"]["value"] - image["b"]["value"] == pytest.approx(expected)
    for level in ("image", "patient"):
        d = result[level]["difference"]
        assert 0 < d["ci_low"] <= d["value"] <= d["ci_high"], level
        assert d["n_used"] == NB
        assert result[level]["p_value"] <= 2 / NB
    assert result["n_images"] == image["n_images"] == 80 and result["patient"]["n_images"] == 40
    # the first four patients share two groups: 38 groups of images
    assert result["n_groups"] == image["n_groups"] == 38 == result["patient"]["n_groups"]
    assert result["runs"] == {"a": "A", "b": "B"} and result["config"]["a"]["weights"] == "hed"


def test_identical_runs_differ_by_zero(tmp_path):
    a = fake_run(tmp_path / "A", signal=0.3, seed=1)
    b = fake_run(tmp_path / "B", signal=0.3, seed=1)
    result = M.paired_difference(a, b, n_bootstrap=NB)
    for level in ("image", "patient"):
        d = result[level]["difference"]
        assert d["value"] == 0 and d["ci_low"] <= 0 <= d["ci_high"]
        assert result[level]["p_value"] == 1.0
        assert result[level]["a"]["ci_low"] < result[level]["a"]["ci_high"]  # the AUCs themselves do vary


def test_same_seed_same_result_other_seed_other_intervals(runs):
    first = M.paired_difference(*runs, n_bootstrap=50, seed=3)
    assert M.paired_difference(*runs, n_bootstrap=50, seed=3) == first
    other = M.paired_difference(*runs, n_bootstrap=50, seed=4)
    assert other["image"]["difference"]["value"] == first["image"]["difference"]["value"]
    assert other["image"]["difference"]["ci_low"] != first["image"]["difference"]["ci_low"]


def test_runs_on_other_images_are_refused(tmp_path):
    a = fake_run(tmp_path / "A", signal=0.6, seed=1)
    b = fake_run(tmp_path / "B", signal=0.0, seed=2, edit=lambda p: p.drop(index=p.index[-3:]))
    with pytest.raises(ValueError, match=r"same images.*3 are only in 'A', 0 only in 'B'. Received: "
                                         r"only_a=\[test/p38_1.png, test/p39_0.png, test/p39_1.png\], only_b=\[\]"):
        M.paired_difference(a, b, n_bootstrap=10)
    c = fake_run(tmp_path / "C", signal=0.0, seed=2,
                 edit=lambda p: p.assign(image=p["image"].str.replace("p00_0", "x00_0")))
    with pytest.raises(ValueError, match=r"1 are only in 'A', 1 only in 'C'. Received: only_a=\[test/p00_0.png\], "
                                         r"only_b=\[test/x00_0.png\]"):
        M.paired_difference(a, c, n_bootstrap=10)


def test_other_bad_inputs(tmp_path, runs):
    a, _ = runs
    twice = fake_run(tmp_path / "D", signal=0.0, seed=2,
                     edit=lambda p: p.assign(image=p["image"].str.replace("p01_1", "p01_0")))
    with pytest.raises(ValueError, match=r"Expected each image once in .*D/predictions\.csv.*Received: images=.*"
                                         r"test/p01_0.png"):  # read_run's check of the predictions
        M.paired_difference(a, twice, n_bootstrap=10)
    relabelled = fake_run(tmp_path / "E", signal=0.0, seed=2, edit=lambda p: p.assign(
        label=np.where(p["image"] == "test/p02_0.png", "covid", p["label"])))
    with pytest.raises(ValueError, match=r"same label in both runs. Received: images=test/p02_0.png"):
        M.paired_difference(a, relabelled, n_bootstrap=10)
    three = fake_run(tmp_path / "F", signal=0.0, seed=2, classes=["normal", "covid"], edit=lambda p: p.rename(
        columns={"prob_non-covid": "prob_normal"}).assign(label=p["label"].replace({"non-covid": "normal"})))
    with pytest.raises(ValueError, match=r"same classes. Received: classes=\['non-covid', 'covid'\]"):
        M.paired_difference(a, three, n_bootstrap=10)
    with pytest.raises(ValueError, match=r"Expected one of \['roc_auc', 'pr_auc', 'brier'\]. Received: metric='f1'"):
        M.paired_difference(*runs, metric="f1", n_bootstrap=10)
    with pytest.raises(ValueError, match=r"n_bootstrap >= 1 for a paired interval. Received: n_bootstrap=0"):
        M.paired_difference(*runs, n_bootstrap=0)
    with pytest.raises(ValueError, match=r"Expected y_true \(n,\), groups \(n,\) and probabilities"):
        M.paired_bootstrap([0, 1], np.zeros((2, 2)), np.zeros((3, 2)), ["a", "b"], classes=BINARY)


def test_groups_of_both_runs_are_joined(tmp_path):
    """Run B merged patients 10 and 11 into one group that run A keeps apart: the paired
    resample keeps them together (one group fewer)."""
    a = fake_run(tmp_path / "A", signal=0.6, seed=1)
    b = fake_run(tmp_path / "B", signal=0.0, seed=2, edit=lambda p: p.assign(
        group=p["group"].replace({"test-10": "test-merged", "test-11": "test-merged"})))
    table, classes, _ = M.paired_predictions(a, b)
    assert classes == BINARY and table["group"].nunique() == 37
    assert set(table.loc[table["patient"].isin(["test-10", "test-11"]), "group"]) == {"test-10"}
    assert list(table.columns) == ["image", "patient", "group", "label", "a_prob_non-covid", "b_prob_non-covid",
                                   "a_prob_covid", "b_prob_covid"]


def test_pr_auc_and_named_evaluations(runs):
    for run in runs:
        E.evaluate_run(run, n_bootstrap=0, figures=False, name="held")
    result = M.paired_difference(*runs, evaluation="held", metric="pr_auc", n_bootstrap=50)
    assert result["data"] == "evaluation 'held'" and result["image"]["metric"] == "pr_auc"
    assert result["image"]["difference"]["ci_low"] > 0
    with pytest.raises(FileNotFoundError, match=r"evaluation named 'other'"):
        M.paired_difference(*runs, evaluation="other", n_bootstrap=10)


def test_markdown_and_statement(runs):
    result = M.paired_difference(*runs, n_bootstrap=50)
    d = result["image"]["difference"]
    line = paired_statement(result)
    assert line.startswith(f"roc_auc per image: A − B = {d['value']:.3f} [{d['ci_low']:.3f}, {d['ci_high']:.3f}]")
    text = paired_markdown(result)
    assert "| level | A: `A` | B: `B` | A − B | p | rows | groups |" in text
    assert text.count("\n| image |") == 1 and "| patient |" in text and "capped at 1" in text


def test_cli_compare_paired(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--paired", str(runs[0]), str(runs[1]), "--n-bootstrap", "50", "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "roc_auc per image: A − B = " in printed and f"wrote {out / 'paired.json'}" in printed
    saved = json.loads((out / "paired.json").read_text())
    assert saved["image"]["difference"] == M.paired_difference(*runs, n_bootstrap=50)["image"]["difference"]
    assert (out / "paired.md").read_text().startswith("# Paired comparison of two runs")
    before = (out / "paired.md").read_text()
    assert cli.main(argv) == 2  # never overwritten
    assert "paired.json" in capsys.readouterr().err and (out / "paired.md").read_text() == before
    assert cli.main(["compare", "--paired", str(runs[0]), "--n-bootstrap", "5"]) == 2
    assert "exactly two run folders with --paired" in capsys.readouterr().err
    assert cli.main(["compare", str(runs[0]), "--metric", "pr_auc", "--n-bootstrap", "5"]) == 2
    assert "--metric only with --paired" in capsys.readouterr().err
