"""covidxr.evaluate: run-folder evaluation on the test part and on external data in every layout,
threshold from validation only, bad input, comparison, the CLI commands and the notebook.

Run folders here are fake (config.json + predictions.csv + an empty model.keras); the model is
replaced by ``predict_frame`` stubs that read a probability written into each image's pixels.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covidxr import evaluate as E
from covidxr import evaluation as M

BINARY = ["non-covid", "covid"]
THREE = ["normal", "covid", "other"]
NOW = time.strptime("2026-11-27T12-00-00", "%Y-%m-%dT%H-%M-%S")
NB = 100  # bootstrap resamples in tests (users: 1000)


def assert_same_metrics(got: dict, expected: dict):
    """Nested {metric: {value, ci_low, ci_high, n_used}} dicts agree (NaN equals NaN)."""
    assert set(got) == set(expected)
    for name, fig in expected.items():
        for key, value in fig.items():
            assert got[name][key] == pytest.approx(value, nan_ok=True), (name, key)


def _parts_frame(classes, *, n_patients=24, per_patient=2, seed=0, part="test"):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label_idx = p % len(classes)
        for i in range(per_patient):
            raw = rng.dirichlet(np.ones(len(classes)))
            raw[label_idx] += 0.6 * rng.random()
            probs = raw / raw.sum()
            rows.append({"image": f"{part}/p{p:02d}_{i}.png", "patient": f"{part}-{p:02d}",
                         "label": classes[label_idx], "part": part,
                         **{f"prob_{c}": float(v) for c, v in zip(classes, probs)}})
    return pd.DataFrame(rows)


def make_run(root: Path, classes=BINARY, *, task="covid-vs-rest", seed=0, model=True, extra=None, **config):
    """A fake run folder with val and test predictions."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = {"classes": list(classes), "task": task, "backbone": "resnet50", "strategy": "oversample",
           "fold": 0, "weights": "imagenet", **config}
    (root / "config.json").write_text(json.dumps(cfg))
    preds = pd.concat([_parts_frame(classes, seed=seed, part="train", n_patients=6),
                       _parts_frame(classes, seed=seed + 1, part="val"),
                       _parts_frame(classes, seed=seed + 2, part="test")], ignore_index=True)
    if extra is not None:
        preds = extra(preds)
    preds.to_csv(root / "predictions.csv", index=False)
    if model:
        (root / "model.keras").write_bytes(b"stub")
    return root


def test_evaluate_run_on_test_part_uses_validation_threshold(tmp_path):
    run = make_run(tmp_path / "run")
    out = E.evaluate_run(run, n_bootstrap=NB, now=NOW)
    assert out == run / "evaluations" / "test-2026-11-27T12-00-00"
    for name in ("metrics.json", "predictions.csv", "report.md", "figures/confusion_image.png",
                 "figures/curves_patient.png"):
        assert (out / name).is_file(), name
    result = json.loads((out / "metrics.json").read_text())
    preds = pd.read_csv(run / "predictions.csv")
    val = preds[preds["part"] == "val"]
    expected = M.choose_threshold((val["label"] == "covid").astype(int), val["prob_covid"])["threshold"]
    assert result["threshold"] == pytest.approx(expected)
    test = preds[preds["part"] == "test"]
    direct = M.evaluate_predictions(test, classes=BINARY, threshold=expected, n_bootstrap=NB)
    assert_same_metrics(result["image"]["metrics"], direct["image"]["metrics"])
    assert_same_metrics(result["patient"]["metrics"], direct["patient"]["metrics"])
    assert result["patient"]["metrics"]["roc_auc"] == pytest.approx(direct["patient"]["metrics"]["roc_auc"])
    assert result["n_images"] == 48 and result["n_patients"] == 24
    table = M.metrics_table(result)
    assert list(table.columns) == ["level", "metric", "value", "ci_low", "ci_high", "n_used", "interval", "boot_low",
                                   "boot_high", "n_eff"]
    assert len(table) == 2 * len(M.BINARY_METRICS) and set(table["level"]) == {"image", "patient"}
    report = (out / "report.md").read_text()
    assert "Youden" in report and f"{expected:.4f}" in report and "per patient" in report
    scored = pd.read_csv(out / "predictions.csv")
    assert set(scored["part"]) == {"test"} and {"predicted", "correct"} <= set(scored.columns)


def test_threshold_ignores_test_probabilities(tmp_path):
    def scramble_test(preds):
        test = preds["part"] == "test"
        preds.loc[test, "prob_covid"] = 1 - preds.loc[test, "prob_covid"]
        preds.loc[test, "prob_non-covid"] = 1 - preds.loc[test, "prob_covid"]
        return preds

    def shift_val(preds):
        val = preds["part"] == "val"
        preds.loc[val, "prob_covid"] = preds.loc[val, "prob_covid"] ** 3
        preds.loc[val, "prob_non-covid"] = 1 - preds.loc[val, "prob_covid"]
        return preds

    a = json.loads((E.evaluate_run(make_run(tmp_path / "a"), n_bootstrap=0, figures=False) / "metrics.json").read_text())
    b = json.loads((E.evaluate_run(make_run(tmp_path / "b", extra=scramble_test), n_bootstrap=0,
                                   figures=False) / "metrics.json").read_text())
    c = json.loads((E.evaluate_run(make_run(tmp_path / "c", extra=shift_val), n_bootstrap=0,
                                   figures=False) / "metrics.json").read_text())
    assert a["threshold"] == b["threshold"]                 # test data changed: same threshold
    assert a["image"]["metrics"]["roc_auc"]["value"] != b["image"]["metrics"]["roc_auc"]["value"]
    assert c["threshold"] != a["threshold"]                 # validation changed: new threshold


def test_target_sensitivity_and_fixed_threshold(tmp_path):
    run = make_run(tmp_path / "run")
    out = E.evaluate_run(run, name="sens", threshold_method="sensitivity", target_sensitivity=0.95,
                         n_bootstrap=0, figures=False)
    result = json.loads((out / "metrics.json").read_text())
    assert result["threshold_selection"]["method"] == "sensitivity"
    assert result["threshold_selection"]["sensitivity"] >= 0.95
    out = E.evaluate_run(run, name="fixed", threshold_method="fixed", threshold=0.5, n_bootstrap=0,
                         figures=False)
    assert json.loads((out / "metrics.json").read_text())["threshold"] == 0.5


def test_three_classes_use_argmax(tmp_path):
    run = make_run(tmp_path / "run", THREE, task="three-class")
    out = E.evaluate_run(run, n_bootstrap=NB, now=NOW)
    result = json.loads((out / "metrics.json").read_text())
    assert result["threshold"] is None and result["decision"] == "argmax"
    assert "roc_auc[macro]" in result["patient"]["metrics"] and "sensitivity[covid]" in result["image"]["metrics"]
    assert "arg-max" in (out / "report.md").read_text()


def test_patient_decisions_use_a_threshold_chosen_on_validation_patient_means(tmp_path):
    run = make_run(tmp_path / "run")
    out = E.evaluate_run(run, n_bootstrap=NB, figures=False)
    result = json.loads((out / "metrics.json").read_text())
    preds = pd.read_csv(run / "predictions.csv")
    val_patients = M.patient_frame(preds[preds["part"] == "val"], BINARY)
    expected = M.choose_threshold((val_patients["label"] == "covid").astype(int), val_patients["prob_covid"])
    assert result["patient_threshold"] == pytest.approx(expected["threshold"])
    assert result["patient_threshold"] != pytest.approx(result["threshold"])     # two thresholds recorded
    sel = result["patient_threshold_selection"]
    assert sel["level"] == "patient" and sel["n_patients"] == 24 and sel["n_images"] == 48
    assert result["threshold_selection"]["level"] == "image"
    test_patients = M.patient_frame(preds[preds["part"] == "test"], BINARY)
    at_patient = M.binary_metrics((test_patients["label"] == "covid").astype(int), test_patients["prob_covid"],
                                  threshold=result["patient_threshold"])
    assert result["patient"]["confusion_matrix"] == at_patient["confusion_matrix"]
    assert result["patient"]["metrics"]["sensitivity"]["value"] == pytest.approx(at_patient["sensitivity"])
    report = (out / "report.md").read_text()
    assert f"{result['patient_threshold']:.4f}" in report and "mean probability" in report
    assert "conditional on the chosen model and threshold" in report
    assert "| sensitivity |" in report and "Wilson (deff)" in report and "| roc_auc |" in report
    table = M.compare_runs([run], n_bootstrap=0)
    assert list(table["threshold"]) == pytest.approx([result["threshold"], result["patient_threshold"]])
    fixed = M.run_thresholds(preds, classes=BINARY, threshold_method="fixed", threshold=0.4)
    assert fixed[0]["threshold"] == fixed[1]["threshold"] == 0.4
    with pytest.raises(ValueError, match=r"Expected one of \['image', 'patient'\]\. Received: level='group'"):
        M.validation_threshold(preds, classes=BINARY, level="group")


def test_intervals_resample_groups_and_record_their_method(tmp_path):
    test = _parts_frame(BINARY, n_patients=12, per_patient=2)
    merged = test.assign(group=test["patient"].str[:-1])          # patients 00..09 -> group "test-0", 10, 11 -> "test-1"
    plain = M.evaluate_predictions(test, classes=BINARY, threshold=0.5, n_bootstrap=50)
    grouped = M.evaluate_predictions(merged, classes=BINARY, threshold=0.5, n_bootstrap=50)
    assert plain["bootstrap"]["unit"] == "patient" and grouped["bootstrap"]["unit"] == "group"
    assert plain["n_groups"] == 12 and grouped["n_groups"] == 2 and grouped["n_patients"] == 12
    assert grouped["patient"]["n_groups"] == 2 and plain["patient"]["n_groups"] == 12
    assert grouped["patient_threshold"] == 0.5                     # defaults to the image threshold
    for block in ("image", "patient"):
        figs = grouped[block]["metrics"]
        assert {figs[m]["interval"] for m in ("sensitivity", "specificity", "ppv", "npv", "accuracy")} == {"wilson-deff"}
        assert {figs[m]["interval"] for m in ("roc_auc", "f1", "mcc", "ece", "brier")} == {"bootstrap"}
        assert "ece" in figs and 0 <= figs["ece"]["value"] <= 1
        # two big groups: a larger design effect, so a Wilson interval no narrower than with 12 groups
        assert figs["accuracy"]["n_eff"] <= plain[block]["metrics"]["accuracy"]["n_eff"]
    assert grouped["bootstrap"]["conditional_on"] == "the chosen model and thresholds"


def test_existing_evaluation_is_not_overwritten(tmp_path):
    run = make_run(tmp_path / "run")
    out = E.evaluate_run(run, n_bootstrap=0, figures=False, now=NOW)
    before = (out / "metrics.json").read_text()
    with pytest.raises(FileExistsError, match=r"left as it is.*Received: name='test'"):
        E.evaluate_run(run, n_bootstrap=0, figures=False, now=NOW)
    assert (out / "metrics.json").read_text() == before
    assert [p.name for p in (run / "evaluations").iterdir()] == [out.name]


@pytest.mark.parametrize("remove, pattern", [
    ("predictions.csv", r"predictions\.csv in the run folder.*Received: run_dir="),
    ("config.json", r"config\.json.*Received: run_dir="),
])
def test_run_folder_missing_files(tmp_path, remove, pattern):
    run = make_run(tmp_path / "run")
    (run / remove).unlink()
    with pytest.raises(FileNotFoundError, match=pattern):
        E.evaluate_run(run, n_bootstrap=0)
    assert not (run / "evaluations").exists()


def test_bad_names_and_missing_model(tmp_path, collection):
    run = make_run(tmp_path / "run", model=False)
    with pytest.raises(ValueError, match=r"letters, digits.*Received: name='\.\./x'"):
        E.evaluate_run(run, name="../x")
    with pytest.raises(FileNotFoundError, match=r"model\.keras.*Received: run_dir="):
        E.evaluate_run(run, data_dir=collection)
    with pytest.raises(FileNotFoundError, match=r"Expected a run folder.*Received: run_dir="):
        E.evaluate_run(tmp_path / "nope")


# --------------------------------------------------------------------------- external data

def _write_grey(path: Path, value: int, fmt_mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.full((20, 24), value, dtype=np.uint8), mode="L")
    img.convert(fmt_mode).save(path)


def _stub_predict(run_dir, frame, *, batch_size=32):
    """A 'model' whose covid probability is the image's grey level / 255."""
    p = np.array([np.asarray(Image.open(path).convert("L"), dtype=float).mean() / 255 for path in frame["path"]])
    return np.c_[1 - p, p]


@pytest.fixture
def external(tmp_path):
    """One small external dataset, written in all three layouts, plus its in-memory truth."""
    rng = np.random.default_rng(7)
    rows = []
    for p in range(12):
        category = ["covid", "normal", "other"][p % 3]
        for i in range(2):
            base = 170 if category == "covid" else 90
            value = int(np.clip(base + rng.integers(-80, 80), 1, 254))
            rows.append({"patient": f"ext{p:02d}", "category": category, "value": value,
                         "name": f"e{p:02d}_{i}.png"})
    truth = pd.DataFrame(rows)
    finding = {"covid": "COVID-19", "normal": "No Finding", "other": "Streptococcus"}
    folder = {"covid": "COVID", "normal": "normal", "other": "pneumonia"}
    meta_root, folders_root, manifest_root = tmp_path / "meta", tmp_path / "folders", tmp_path / "manifest"
    meta = []
    for r in rows:
        _write_grey(meta_root / "images" / r["name"], r["value"])
        _write_grey(folders_root / folder[r["category"]] / r["name"], r["value"])
        _write_grey(manifest_root / "imgs" / r["name"], r["value"])
        meta.append({"patientid": r["patient"], "finding": finding[r["category"]], "view": "PA",
                     "modality": "X-ray", "folder": "images", "filename": r["name"]})
    pd.DataFrame(meta).to_csv(meta_root / "metadata.csv", index=False)
    pd.DataFrame({"path": ["imgs/" + r["name"] for r in rows],
                  "label": [{"other": "pneumonia"}.get(r["category"], finding[r["category"]]) for r in rows],
                  "patient": [r["patient"] for r in rows]}).to_csv(manifest_root / "manifest.csv", index=False)
    return {"truth": truth, "metadata": meta_root, "folders": folders_root,
            "manifest": manifest_root / "manifest.csv"}


FOLDER = {"covid": "COVID", "normal": "normal", "other": "pneumonia"}


def _in_memory(truth, *, patients=True):
    """The same data as an in-memory predictions frame. Class folders carry no patient ids:
    there each image (its key ``<folder>/<file>``) is its own patient."""
    p = truth["value"].to_numpy() / 255
    label = np.where(truth["category"] == "covid", "covid", "non-covid")
    keys = truth["category"].map(FOLDER) + "/" + truth["name"]
    return pd.DataFrame({"patient": truth["patient"] if patients else keys, "label": label,
                         "prob_non-covid": 1 - p, "prob_covid": p})


@pytest.mark.parametrize("layout", ["metadata", "folders", "manifest"])
def test_external_evaluation_matches_in_memory(tmp_path, external, layout, monkeypatch):
    from covidxr import inference

    monkeypatch.setattr(inference, "predict_frame", _stub_predict, raising=False)
    run = make_run(tmp_path / "run")
    with pytest.warns(UserWarning) if layout == "folders" else _nullcontext():
        out = E.evaluate_run(run, data_dir=external[layout], n_bootstrap=NB, figures=layout == "manifest")
    result = json.loads((out / "metrics.json").read_text())
    preds = pd.read_csv(run / "predictions.csv")
    threshold = M.validation_threshold(preds, classes=BINARY)["threshold"]
    memory = _in_memory(external["truth"], patients=layout != "folders")   # folders carry no patient ids
    expected = M.evaluate_predictions(memory, classes=BINARY, threshold=threshold, n_bootstrap=NB)
    assert result["threshold"] == pytest.approx(threshold)
    for level in ("image", "patient"):
        assert_same_metrics(result[level]["metrics"], expected[level]["metrics"])
    assert result["n_images"] == 24
    assert out.name.startswith({"metadata": "meta-", "folders": "folders-", "manifest": "manifest-"}[layout])
    assert set(pd.read_csv(out / "predictions.csv")["part"]) == {"external"}


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_external_unreadable_images_are_reported_and_left_out(tmp_path, external, monkeypatch):
    from covidxr import inference

    monkeypatch.setattr(inference, "predict_frame", _stub_predict, raising=False)
    root = external["folders"]
    (root / "COVID" / "broken.png").write_bytes(b"not an image at all")
    run = make_run(tmp_path / "run")
    with pytest.warns(UserWarning, match=r"1 of 25 images cannot be read.*broken\.png"):
        out = E.evaluate_run(run, data_dir=root, n_bootstrap=0, figures=False)
    result = json.loads((out / "metrics.json").read_text())
    assert result["n_images"] == 24
    assert [b["image"] for b in result["unreadable"]] == ["COVID/broken.png"]
    assert "could not be read" in (out / "report.md").read_text()


@pytest.mark.parametrize("layout", ["metadata", "folders", "manifest"])
def test_external_evaluation_drops_findings_the_task_leaves_out(tmp_path, external, layout, monkeypatch):
    """A covid-vs-normal run scores an external dataset's COVID and normal images; the other pneumonias
    are dropped with a count, exactly the rows training keeps (load_dataset with the task)."""
    from covidxr import inference
    from covidxr.data import load_dataset

    monkeypatch.setattr(inference, "predict_frame", _stub_predict, raising=False)
    run = make_run(tmp_path / "run", ["normal", "covid"], task="covid-vs-normal")
    with pytest.warns(UserWarning, match=r"8 of 24 images are of findings task 'covid-vs-normal' leaves out "
                                         r"\(category \['other'\].*left out, as in training"):
        out = E.evaluate_run(run, data_dir=external[layout], n_bootstrap=0, figures=False)
    result = json.loads((out / "metrics.json").read_text())
    finding = {"metadata": "Streptococcus", "folders": "pneumonia", "manifest": "pneumonia"}[layout]
    assert result["left_out_by_task"] == {"task": "covid-vs-normal", "kept_categories": ["covid", "normal"],
                                          "n_images": 8, "categories": {"other": 8}, "findings": {finding: 8}}
    assert result["n_images"] == 16 and result["class_counts"]["normal"]["images"] == 8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trained_on = load_dataset(external[layout], task="covid-vs-normal")
    scored = pd.read_csv(out / "predictions.csv")
    assert sorted(scored["image"]) == sorted(trained_on["image"])        # the rows training would keep
    assert dict(zip(scored["image"], scored["label"])) == dict(zip(trained_on["image"], trained_on["label"]))
    assert "8 images of findings task `covid-vs-normal` leaves out were left out" in (out / "report.md").read_text()


def test_external_labels_of_no_category_and_nothing_left_are_errors(tmp_path, external, monkeypatch):
    from covidxr import inference

    monkeypatch.setattr(inference, "predict_frame", _stub_predict, raising=False)
    run = make_run(tmp_path / "run", ["normal", "covid"], task="covid-vs-normal")
    manifest = external["manifest"]
    table = pd.read_csv(manifest)
    table.loc[0, "label"] = "banana"
    table.to_csv(manifest, index=False)
    with pytest.raises(ValueError, match=r"Unknown label\(s\) in column 'label'.*Received: labels=\['banana'\]"):
        E.evaluate_run(run, data_dir=manifest, n_bootstrap=0)
    only_other = tmp_path / "only-other"
    shutil.copytree(external["folders"] / "pneumonia", only_other / "pneumonia")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"categories task 'covid-vs-normal' keeps "
                                                                    r"\(\['covid', 'normal'\]\).*Received: categories="
                                                                    r"\{'other': 8\}"):
        E.evaluate_run(run, data_dir=only_other, n_bootstrap=0)
    untasked = make_run(tmp_path / "untasked", ["normal", "covid"], task=None)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"not trained on.*no task.*Received: "
                                                                    r"unknown_labels=\['pneumonia'\]"):
        E.evaluate_run(untasked, data_dir=external["folders"], n_bootstrap=0)
    assert not any((run / "evaluations").glob("*/metrics.json"))


# --------------------------------------------------------------------------- strict JSON

def strict_json(text: str):
    """``json.loads`` that refuses NaN, Infinity and -Infinity (not JSON, though Python writes them)."""
    def refuse(constant):
        raise ValueError(f"Expected strict JSON. Received: constant={constant!r}")

    return json.loads(text, parse_constant=refuse)


def test_strict_json_parser_refuses_nan():
    with pytest.raises(ValueError, match=r"Received: constant='NaN'"):
        strict_json(json.dumps({"auc": float("nan")}))


def test_undefined_metrics_are_written_as_null_and_read_back_as_nan(tmp_path, capsys):
    def only_covid_in_test(preds):   # one class in the test part: ROC AUC and specificity are undefined
        return preds[(preds["part"] != "test") | (preds["label"] == "covid")].reset_index(drop=True)

    run = make_run(tmp_path / "run", extra=only_covid_in_test)
    with pytest.warns(UserWarning, match=r"No images of class\(es\) \['non-covid'\]"):
        out = E.evaluate_run(run, name="one-class", n_bootstrap=20, figures=False)
    text = (out / "metrics.json").read_text()
    result = strict_json(text)
    for level in ("image", "patient"):
        assert result[level]["metrics"]["roc_auc"]["value"] is None
        assert result[level]["metrics"]["specificity"]["value"] is None
        assert result[level]["metrics"]["sensitivity"]["value"] is not None
    table = M.compare_runs([run], evaluation="one-class")   # the reader turns null back into NaN
    assert table["roc_auc"].dtype == float and table["roc_auc"].isna().all()
    assert table["sensitivity"].notna().all()
    E.write_comparison(table, tmp_path / "cmp")
    assert "| nan" not in (tmp_path / "cmp" / "comparison.md").read_text().lower()
    from covidxr.cli import main   # the command prints the figures it reads back from metrics.json

    assert main(["evaluate", "--run", str(run), "--name", "cli", "--n-bootstrap", "0", "--no-figures"]) == 0
    printed = capsys.readouterr().out
    assert "| roc_auc | n/a | n/a |" in printed and re.search(r"\| brier \| 0\.\d{3} \| 0\.\d{3} \|", printed)


@pytest.mark.jax
def test_every_json_of_a_run_and_its_evaluations_is_strict(tiny_run, collection, tmp_path):
    """A tiny trained run, its test-part evaluation and an external one of its COVID test images only
    (specificity and ROC AUC undefined): every JSON file parses strictly."""
    run = tmp_path / tiny_run.name
    shutil.copytree(tiny_run, run)
    E.evaluate_run(run, n_bootstrap=20)
    split = pd.read_csv(run / "split.csv")
    covid = split[(split["part"] == "test") & (split["label"] == "covid")]
    (tmp_path / "ext").mkdir()
    for image in covid["image"]:
        shutil.copy(collection / image, tmp_path / "ext" / Path(image).name)
    pd.DataFrame({"path": [Path(i).name for i in covid["image"]], "label": "covid",
                  "patient": covid["patient"]}).to_csv(tmp_path / "ext" / "manifest.csv", index=False)
    with pytest.warns(UserWarning, match=r"No images of class\(es\) \['non-covid'\]"):
        out = E.evaluate_run(run, data_dir=tmp_path / "ext" / "manifest.csv", name="covid-only", n_bootstrap=20,
                             figures=False, cache_dir=tmp_path / "cache")
    assert strict_json((out / "metrics.json").read_text())["image"]["metrics"]["roc_auc"]["value"] is None
    files = sorted(run.rglob("*.json")) + sorted((tiny_run.parents[1] / "cache").rglob("*.json"))
    # the run's config, metrics and record, two evaluations' metrics and records, the image cache's record,
    # the frozen-feature store's record (a finished run keeps no checkpoint/state.json: tests/test_atomic.py
    # checks write_json, which writes it)
    assert sorted(p.name for p in files) == ["cache.json", "config.json", "metrics.json", "metrics.json",
                                             "metrics.json", "record.json", "record.json", "record.json",
                                             "store.json"]
    for path in files:
        strict_json(path.read_text())


# --------------------------------------------------------------------------- comparison

def test_compare_runs_table_and_files(tmp_path):
    runs = [make_run(tmp_path / "r1", seed=0), make_run(tmp_path / "r2", seed=5, backbone="vgg16", fold=1)]
    table = M.compare_runs(runs, n_bootstrap=NB)
    assert len(table) == 4 and list(table["level"]) == ["image", "patient"] * 2
    assert list(table["backbone"]) == ["resnet50", "resnet50", "vgg16", "vgg16"]
    assert {"roc_auc", "roc_auc_ci_low", "roc_auc_ci_high", "strategy", "fold", "weights"} <= set(table.columns)
    written = E.write_comparison(table, tmp_path / "cmp")
    assert [p.name for p in written] == ["comparison.csv", "comparison.md", "comparison.png"]
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "vgg16" in md and "[" in md
    assert "conditional on the chosen model and threshold" in md and "Wilson score interval" in md
    with pytest.raises(FileExistsError, match=r"Received: out="):
        E.write_comparison(table, tmp_path / "cmp")
    with pytest.raises(ValueError, match=r"Received: run_dirs=\[\]"):
        M.compare_runs([])


def test_compare_reads_named_evaluations(tmp_path):
    run = make_run(tmp_path / "r1")
    E.evaluate_run(run, name="hosp", n_bootstrap=0, figures=False)
    table = M.compare_runs([run], evaluation="hosp")
    assert table["data"].iloc[0].startswith("hosp-")
    with pytest.raises(FileNotFoundError, match=r"Received: evaluation='other'"):
        M.compare_runs([run], evaluation="other")


# --------------------------------------------------------------------------- CLI

def test_cli_evaluate_and_compare(tmp_path, capsys):
    from covidxr.cli import main

    run = make_run(tmp_path / "run")
    assert main(["evaluate", "--run", str(run), "--name", "cli", "--n-bootstrap", "50", "--no-figures"]) == 0
    printed = capsys.readouterr().out
    assert "roc_auc" in printed and "evaluations/cli-" in printed and "patient threshold 0." in printed
    assert main(["compare", str(run), "--out", str(tmp_path / "cmp"), "--n-bootstrap", "50"]) == 0
    assert (tmp_path / "cmp" / "comparison.md").is_file()
    assert main(["evaluate", "--run", str(tmp_path / "missing")]) == 2
    assert "Received: run_dir=" in capsys.readouterr().err


# --------------------------------------------------------------------------- notebook

@pytest.mark.slow
def test_notebook_04_runs_on_fake_runs(tmp_path, collection, monkeypatch):
    papermill = pytest.importorskip("papermill")
    nb = Path(__file__).resolve().parents[1] / "notebooks" / "04_evaluation.ipynb"
    runs = [str(make_run(tmp_path / "r1")), str(make_run(tmp_path / "r2", seed=3, strategy="none"))]
    monkeypatch.setenv("MPLBACKEND", "Agg")
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(str(nb), str(out), parameters={
        "run_dirs": runs, "data_dir": str(collection), "task": "covid-vs-rest", "seed": 0, "n_bootstrap": 50,
        "gradcam_examples": 0},  # fake runs have no model; Grad-CAM cells: tests/test_gradcam_examples.py
        cwd=str(tmp_path), kernel_name="python3", progress_bar=False)
    executed = json.loads(out.read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    text = json.dumps(executed)
    assert "Shortcut audit" in text and "roc_auc" in text


# --------------------------------------------------------------------------- end to end

@pytest.mark.jax
@pytest.mark.slow
def test_end_to_end_with_a_trained_run(tmp_path):
    """A tiny real run (helper B's trainer): evaluating its test images as an external manifest
    gives the numbers of the run's own test part (predict_frame preprocesses as training did)."""
    pytest.importorskip("keras")
    from conftest import write_collection

    from covidxr.data import read_split
    from covidxr.train import TrainConfig, train

    root = tmp_path / "coll"
    write_collection(root)
    config = TrainConfig(data_dir=str(root), backbone="vgg16", weights="none", image_size=32, epochs=1,
                         fine_tune_epochs=0, batch_size=16, runs_dir=str(tmp_path / "runs"),
                         cache_dir=str(tmp_path / "cache"), verbose=0, augment=False, patience=1)
    with pytest.warns(UserWarning):
        run = train(config)
    own = json.loads((E.evaluate_run(run, n_bootstrap=NB, figures=False) / "metrics.json").read_text())
    split = read_split(run / "split.csv")
    test = split[split["part"] == "test"]
    pd.DataFrame({"path": test["image"], "label": test["label"], "patient": test["patient"]}).to_csv(
        root / "test-manifest.csv", index=False)
    out = E.evaluate_run(run, data_dir=root / "test-manifest.csv", n_bootstrap=NB, figures=False)
    ext = json.loads((out / "metrics.json").read_text())
    assert ext["threshold"] == own["threshold"]
    assert ext["n_images"] == own["n_images"] and ext["n_patients"] == own["n_patients"]
    for level in ("image", "patient"):
        for name in ("roc_auc", "brier", "sensitivity", "specificity"):
            assert ext[level]["metrics"][name]["value"] == pytest.approx(own[level]["metrics"][name]["value"],
                                                                        abs=1e-4, nan_ok=True), (level, name)


# --------------------------------------------------------------------------- overlap with the run's own data

def _texture(seed: int) -> Image.Image:
    """A smooth random 64x64 grey image, distinct per seed (re-encoding keeps it near)."""
    small = np.random.default_rng(seed).integers(20, 235, (8, 8)).astype(np.uint8)
    return Image.fromarray(small).resize((64, 64), Image.Resampling.BICUBIC)


@pytest.fixture
def own(tmp_path, monkeypatch):
    """A fake run over a small collection (10 patients, 2 images each) with a split.csv that holds
    the images' hashes; the model is the grey-level stub."""
    from covidxr import images, inference
    from covidxr.data import load_dataset

    monkeypatch.setattr(inference, "predict_frame", _stub_predict, raising=False)
    root, cache = tmp_path / "coll", tmp_path / "cache"
    meta = []
    for p in range(10):
        for i in range(2):
            name = f"p{p}_{i}.png"
            (root / "images").mkdir(parents=True, exist_ok=True)
            _texture(10 * p + i).save(root / "images" / name)
            meta.append({"patientid": str(p + 1), "finding": ["COVID-19", "No Finding"][p % 2], "view": "PA",
                         "modality": "X-ray", "folder": "images", "filename": name})
    pd.DataFrame(meta).to_csv(root / "metadata.csv", index=False)
    frame = load_dataset(root)
    split = frame[["image", "patient", "label"]].assign(
        part=["train" if int(p) <= 6 else "val" if int(p) <= 8 else "test" for p in frame["patient"]],
        hash=images.image_hashes(frame, cache_dir=cache)["exact"].to_numpy())
    run = make_run(tmp_path / "run", data_dir=str(root), cache_dir=str(cache))
    split.to_csv(run / "split.csv", index=False)
    return {"root": root, "run": run, "split": split, "cache": cache}


def _external(own, tmp_path, *, copies=True) -> Path:
    """Another hospital's manifest: fresh images under the ids "1".."4" (reused ids, other people), a
    byte copy and a JPEG re-encoding of training images, and a copy of a test image."""
    root = tmp_path / "hospital"
    (root / "imgs").mkdir(parents=True)
    rows = []
    for k in range(8):
        _texture(1000 + k).save(root / "imgs" / f"h{k}.png")
        rows.append({"path": f"imgs/h{k}.png", "label": ["covid", "normal"][k % 2], "patient": str(k % 4 + 1)})
    if copies:
        images = own["root"] / "images"
        (root / "imgs" / "copy.png").write_bytes((images / "p0_0.png").read_bytes())
        Image.open(images / "p2_1.png").convert("L").save(root / "imgs" / "reencoded.jpg", quality=90)
        (root / "imgs" / "test_copy.png").write_bytes((images / "p9_0.png").read_bytes())
        rows += [{"path": "imgs/copy.png", "label": "covid", "patient": "x1"},
                 {"path": "imgs/reencoded.jpg", "label": "covid", "patient": "x2"},
                 {"path": "imgs/test_copy.png", "label": "normal", "patient": "x3"}]
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def test_external_copies_of_training_images_are_left_out(own, tmp_path):
    manifest = _external(own, tmp_path)
    with pytest.warns(UserWarning, match=r"2 of 11 rows of the dataset are images the run was trained or validated "
                                         r"on \(exact: 1, near: 1\); they are left out.*imgs/copy\.png"):
        out = E.evaluate_run(own["run"], data_dir=manifest, n_bootstrap=NB, cache_dir=tmp_path / "c2", now=NOW)
    result = json.loads((out / "metrics.json").read_text())
    block = result["overlap"]
    assert block["checked"] and block["content"] == "exact and near" and not block["same_dataset"]
    assert block["counts"] == {"exact": 1, "near": 1, "path": 0, "patient": 0}   # ids "1".."4": other people
    assert block["n_rows"] == 2 and not block["kept"] and block["in_run_test"] == 1
    assert {(i["image"], i["run_image"], i["run_part"]) for i in block["images"]} == {
        ("imgs/copy.png", "images/p0_0.png", "train"), ("imgs/reencoded.jpg", "images/p2_1.png", "train")}
    table = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert result["n_images"] == len(table) == 9 and "imgs/copy.png" not in set(table["image"])
    assert list(table.columns[:4]) == ["image", "patient", "label", "part"]
    assert {"group", "hash", "in_run_test", "overlap"} <= set(table.columns)
    assert table.loc[table["in_run_test"].astype(str) == "True", "image"].tolist() == ["imgs/test_copy.png"]
    report = (out / "report.md").read_text()
    assert "2 rows are images the run was trained or validated on" in report and "`imgs/reencoded.jpg` (near" in report
    assert "not by path or patient id" in report and "1 rows are images of the run's own test part" in report


def test_allow_overlap_keeps_them_loudly(own, tmp_path):
    from covidxr.cli import main

    manifest = _external(own, tmp_path)
    with pytest.warns(UserWarning, match=r"KEEPING 2 of 11 rows .* NOT an external validation"):
        out = E.evaluate_run(own["run"], data_dir=manifest, n_bootstrap=0, figures=False, allow_overlap=True)
    result = json.loads((out / "metrics.json").read_text())
    assert result["n_images"] == 11 and result["overlap"]["kept"] and result["overlap"]["n_rows"] == 2
    table = pd.read_csv(out / "predictions.csv", keep_default_na=False).set_index("image")
    assert table.loc["imgs/copy.png", "overlap"] == "exact" and table.loc["imgs/h0.png", "overlap"] == ""
    assert "**KEPT and scored**" in (out / "report.md").read_text()
    assert main(["evaluate", "--run", str(own["run"]), "--data-dir", str(manifest), "--name", "cli", "--n-bootstrap",
                 "0", "--no-figures", "--allow-overlap"]) == 0
    cli_out = sorted((own["run"] / "evaluations").glob("cli-*"))[-1]
    assert json.loads((cli_out / "metrics.json").read_text())["n_images"] == 11


def test_the_runs_own_folder_scores_only_its_test_rows(own):
    with pytest.warns(UserWarning, match=r"16 of 20 rows .* \(exact: 16, path: 16, patient: 16\)"):
        out = E.evaluate_run(own["run"], data_dir=own["root"], n_bootstrap=0, figures=False)
    result = json.loads((out / "metrics.json").read_text())
    test = own["split"][own["split"]["part"] == "test"]
    assert result["overlap"]["same_dataset"] and result["overlap"]["in_run_test"] == 4
    table = pd.read_csv(out / "predictions.csv")
    assert sorted(table["image"]) == sorted(test["image"]) and table["in_run_test"].all()


def test_only_exact_copies_when_the_runs_data_is_gone(own, tmp_path):
    manifest = _external(own, tmp_path)
    moved = own["root"].rename(tmp_path / "moved")
    with pytest.warns(UserWarning) as caught:
        out = E.evaluate_run(own["run"], data_dir=manifest, n_bootstrap=0, figures=False)
    messages = [str(w.message) for w in caught]
    assert any(re.search(r"Only exact copies could be checked.*cannot be read.*does not exist", m) for m in messages)
    block = json.loads((out / "metrics.json").read_text())["overlap"]
    assert block["content"] == "exact" and block["counts"]["exact"] == 1 and block["counts"]["near"] == 0
    assert "Only exact copies could be checked" in (out / "report.md").read_text()
    assert moved.is_dir()


def test_no_split_file_no_overlap_check(tmp_path, external, monkeypatch):
    from covidxr import inference

    monkeypatch.setattr(inference, "predict_frame", _stub_predict, raising=False)
    run = make_run(tmp_path / "run")
    with pytest.warns(UserWarning, match=r"has no split.csv: no overlap check .* was possible"):
        out = E.evaluate_run(run, data_dir=external["manifest"], n_bootstrap=0, figures=False,
                             cache_dir=tmp_path / "cache")
    assert json.loads((out / "metrics.json").read_text())["overlap"]["checked"] is False
    assert "**Not checked**" in (out / "report.md").read_text()


def test_nothing_left_to_score(own, tmp_path):
    split = own["split"].assign(part="train")
    split.loc[split.index[:2], "part"] = "val"
    split.to_csv(own["run"] / "split.csv", index=False)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"all 20 rows of the dataset are such images.*"
                                                                    r"--allow-overlap.*Received: data_dir="):
        E.evaluate_run(own["run"], data_dir=own["root"], n_bootstrap=0, figures=False)


@pytest.mark.realdata
@pytest.mark.slow
def test_real_data_evaluate_on_the_training_collection(real_data, real_run, tmp_path):
    """Evaluating a run on the collection it was trained on scores only its test rows."""
    from covidxr.data import read_split

    run = tmp_path / "run"
    shutil.copytree(real_run[0], run)
    split = read_split(run / "split.csv")
    with pytest.warns(UserWarning, match=r"rows of the dataset are images the run was trained or validated on"):
        out = E.evaluate_run(run, data_dir=real_data, n_bootstrap=0, figures=False)
    result = json.loads((out / "metrics.json").read_text())
    fit, test = split[split["part"].isin(["train", "val"])], split[split["part"] == "test"]
    block = result["overlap"]
    # split groups keep the snapshot's twins (201/78, 178/97, 137/202) in one part, so exactly the
    # training and validation rows overlap and every test image is scored
    assert block["same_dataset"] and block["content"] == "exact and near" and block["n_rows"] == len(fit)
    table = pd.read_csv(out / "predictions.csv")
    assert set(table["image"]) == set(test["image"]) and not set(table["image"]) & set(fit["image"])
    assert table["in_run_test"].all() and len(table) == result["n_images"] > 50


def test_latest_evaluation_matches_only_name_and_timestamp(tmp_path):
    """``hospital`` never picks ``hospital-b-<timestamp>`` (another dataset's, even newer); the newest
    ``hospital-<timestamp>`` wins by its timestamp, and folders without metrics.json are skipped."""
    from covidxr.evaluation import latest_evaluation

    for name in ("hospital-2026-01-02T10-00-00", "hospital-2026-03-01T09-00-00", "hospital-b-2026-12-31T23-59-59",
                 "hospital-2026-12-01T00-00-00-copy", "hospital-2027-01-01T00-00-00"):
        folder = tmp_path / "evaluations" / name
        folder.mkdir(parents=True)
        if name != "hospital-2027-01-01T00-00-00":
            (folder / "metrics.json").write_text("{}")
    assert latest_evaluation(tmp_path, "hospital").name == "hospital-2026-03-01T09-00-00"
    assert latest_evaluation(tmp_path, "hospital-b").name == "hospital-b-2026-12-31T23-59-59"
    with pytest.raises(FileNotFoundError, match=r"Expected an evaluation named 'hosp'.*Received: evaluation='hosp'"):
        latest_evaluation(tmp_path, "hosp")
