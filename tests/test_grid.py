"""Tests for covidxr.grid: a tiny 2 × 2 × 2 grid, interrupted and resumed; pooled metrics; a feature-layer axis."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import GRID, GridInterrupted

from covidxr import cli, data, grid
from covidxr import evaluation as M
from covidxr.train import TrainConfig

BACKBONES, STRATEGIES, FOLDS = GRID["backbones"], GRID["strategies"], GRID["folds"]


def _base(collection, cache_dir, **kwargs):
    options = dict(data_dir=str(collection), weights="none", image_size=32, batch_size=8, epochs=1,
                   fine_tune_epochs=0, val_size=0.3, cache_dir=str(cache_dir), verbose=0)
    options.update(kwargs)
    return TrainConfig(**options)


def test_grid_writes_every_run_and_the_comparison(finished_grid):
    out = finished_grid["out"]
    record = json.loads((out / "grid.json").read_text())
    assert record["backbones"] == BACKBONES and record["strategies"] == STRATEGIES and record["folds"] == FOLDS
    assert record["split_version"] == data.SPLIT_VERSION and record["options"]["duplicates"] == "merge"
    assert len(record["runs"]) == 8 and len(set(record["runs"])) == 8
    seen = set()
    for name in record["runs"]:
        run = out / "runs" / name
        for artifact in grid.RUN_ARTIFACTS:
            assert (run / artifact).is_file(), (name, artifact)
        config = json.loads((run / "config.json").read_text())
        assert config["folds"] == FOLDS and config["image_size"] == 32
        assert config["split_version"] == data.SPLIT_VERSION and config["group_by"] == "patient"
        seen.add((config["backbone"], config["strategy"], config["fold"]))
    assert seen == {(b, s, f) for b in BACKBONES for s in STRATEGIES for f in range(FOLDS)}
    for name in ("comparison.csv", "comparison.md", "comparison.png", "runs.csv"):
        assert (out / name).stat().st_size > 0
    pooled = pd.read_csv(out / "comparison.csv")
    assert len(pooled) == 2 * 2 * 2  # backbone × strategy × level
    assert set(pooled["run"]) == {f"{b} / {s}" for b in BACKBONES for s in STRATEGIES}
    assert (pooled["folds"] == FOLDS).all()
    # folds pooled: every usable image of the dataset is tested exactly once
    per_run = pd.read_csv(out / "runs.csv")
    image_rows = per_run[per_run["level"] == "image"]
    one = image_rows[(image_rows["backbone"] == "vgg16") & (image_rows["strategy"] == "none")]
    assert (pooled["n_images"] == one["n_images"].sum()).all()
    assert {"roc_auc_ci_low", "sensitivity_ci_high"} <= set(pooled.columns)
    text = (out / "comparison.md").read_text()
    assert "Folds pooled" in text and "Per run" in text and "vgg19 / oversample" in text
    assert "## Chosen on validation" in text and "descriptive, not for choosing" in text
    selection = record["selection"]
    assert selection["run"] in set(pooled["run"]) and set(selection["test"]) == {"image", "patient"}
    assert {"val_roc_auc_mean", "val_roc_auc_min", "val_roc_aucs"} <= set(pooled.columns)


def test_interrupted_grid_resumes_without_retraining(finished_grid):
    out = finished_grid["out"]
    assert len(finished_grid["calls"]) == 2
    assert len(finished_grid["resumed"]) == 6
    assert not set(finished_grid["calls"]) & set(finished_grid["resumed"])
    record = json.loads((out / "grid.json").read_text())
    for name in finished_grid["first"]:
        assert name in record["runs"]
        assert (out / "runs" / name / "model.keras").stat().st_mtime_ns == finished_grid["mtimes"][name]
    # the incomplete folder stays, but does not count
    assert finished_grid["partial"].is_dir() and finished_grid["partial"].name not in record["runs"]
    assert len(record["timings"]) == 8


def test_resume_with_other_options_is_refused(finished_grid, monkeypatch):
    out, base = finished_grid["out"], finished_grid["base"]

    def fail(config):  # pragma: no cover - must not be reached
        raise AssertionError("trained")

    monkeypatch.setattr(grid, "train", fail)
    with pytest.raises(ValueError, match=r"other options.*epochs: 2 -> 3"):
        grid.run_grid(TrainConfig(**{**base.to_dict(), "epochs": 3}), out=out, backbones=BACKBONES,
                      strategies=STRATEGIES, folds=FOLDS, progress=False)
    with pytest.raises(ValueError, match=r"strategies: \['none', 'oversample'\] -> \['none'\]"):
        grid.run_grid(base, out=out, backbones=BACKBONES, strategies=["none"], folds=FOLDS, progress=False)
    # the same options: nothing to train, the comparison is written again
    (out / "comparison.md").unlink()
    grid.run_grid(base, out=out, backbones=BACKBONES, strategies=STRATEGIES, folds=FOLDS, n_bootstrap=5,
                  progress=False)
    assert (out / "comparison.md").is_file()


def test_a_rerun_grid_refuses_a_damaged_run_file(finished_grid, tmp_path, monkeypatch, capsys):
    out = tmp_path / "grid"
    shutil.copytree(finished_grid["out"], out)
    run = out / "runs" / finished_grid["first"][0]
    lines = (run / "predictions.csv").read_text().splitlines(keepends=True)
    (run / "predictions.csv").write_text("".join(lines[:-3]))  # lost its last lines

    def fail(config):  # pragma: no cover - must not be reached
        raise AssertionError("trained")

    monkeypatch.setattr(grid, "train", fail)
    with pytest.raises(ValueError, match=r"Expected predictions\.csv as covidxr wrote it .*changed or damaged"):
        grid.run_grid(finished_grid["base"], out=out, backbones=BACKBONES, strategies=STRATEGIES, folds=FOLDS,
                      n_bootstrap=5, progress=False)


def test_views_frontal_resumes_a_grid_started_with_the_explicit_views(finished_grid, monkeypatch):
    """The command line's default views (the explicit frontal list) and the notebook's "frontal"
    are one value to the grid: a grid started with one resumes with the other, training nothing."""
    out, base = finished_grid["out"], finished_grid["base"]
    assert base.views == "PA,AP,AP Supine,AP Erect"

    def fail(config):  # pragma: no cover - must not be reached
        raise AssertionError("trained")

    monkeypatch.setattr(grid, "train", fail)
    (out / "comparison.md").unlink()
    grid.run_grid(TrainConfig(**{**base.to_dict(), "views": "frontal"}), out=out, backbones=BACKBONES,
                  strategies=STRATEGIES, folds=FOLDS, n_bootstrap=5, progress=False)
    assert (out / "comparison.md").is_file()
    with pytest.raises(ValueError, match=r"other options.*views: 'PA,AP,AP Supine,AP Erect' -> 'PA'"):
        grid.run_grid(TrainConfig(**{**base.to_dict(), "views": "PA"}), out=out, backbones=BACKBONES,
                      strategies=STRATEGIES, folds=FOLDS, progress=False)


def test_bad_options_are_refused(collection, tmp_path):
    base = _base(collection, tmp_path / "cache")
    with pytest.raises(ValueError, match=r"Unknown backbones.*Received: backbones=\['alexnet'\]"):
        grid.run_grid(base, out=tmp_path / "g", backbones="vgg16,alexnet", strategies="none", folds=2)
    with pytest.raises(ValueError, match=r"Unknown strategies"):
        grid.run_grid(base, out=tmp_path / "g", backbones="vgg16", strategies="smote", folds=2)
    with pytest.raises(ValueError, match=r"folds to be an integer >= 2"):
        grid.run_grid(base, out=tmp_path / "g", backbones="vgg16", strategies="none", folds=1)
    normal = _base(collection, tmp_path / "cache", task="covid-vs-normal")
    with pytest.raises(ValueError, match=r"Too few patients for 9 .*class 'normal'.*covid-vs-normal"):
        grid.run_grid(normal, out=tmp_path / "g", backbones="vgg16", strategies="none", folds=9)
    assert not (tmp_path / "g" / "runs").exists()


@pytest.mark.parametrize("stored", [None, 1])
def test_grid_started_before_split_versions_is_refused(collection, tmp_path, monkeypatch, stored):
    base = _base(collection, tmp_path / "cache")
    out = tmp_path / "g"
    out.mkdir()
    old = grid._grid_record(base, ["vgg16"], ["none"], 2)  # the same options, folds made by other rules
    old.pop("split_version")
    if stored is not None:
        old["split_version"] = stored
    (out / "grid.json").write_text(json.dumps(old))
    monkeypatch.setattr(grid, "train", lambda config: pytest.fail("trained"))
    with pytest.raises(ValueError, match=r"folds were made by other rules \(split version 1; this covidxr makes "
                                         r"version 2.*Start a new --out. Received: out="):
        grid.run_grid(base, out=out, backbones="vgg16", strategies="none", folds=2, progress=False)
    assert not (out / "runs").exists()


def test_grid_accepts_group_by_source(collection, tmp_path, monkeypatch):
    base = _base(collection, tmp_path / "cache", group_by="source")
    seen = []

    def capture(config):
        seen.append(config)
        raise GridInterrupted("captured")

    monkeypatch.setattr(grid, "train", capture)
    with pytest.raises(GridInterrupted):
        grid.run_grid(base, out=tmp_path / "g", backbones="vgg16", strategies="none", folds=2, progress=False)
    assert seen[0].group_by == "source" and seen[0].folds == 2
    record = json.loads((tmp_path / "g" / "grid.json").read_text())
    assert record["options"]["group_by"] == "source"
    # three sources in the collection: 4 leave-sources-out folds are refused, naming the sources
    with pytest.raises(ValueError, match=r"Too few patients for 4 group-wise folds.*has 3 split groups.*"
                                         r"images_per_source_and_class=\{'site0.example.org': \{'covid'"):
        grid.run_grid(base, out=tmp_path / "g4", backbones="vgg16", strategies="none", folds=4, progress=False)


def test_pooled_metrics_use_each_folds_threshold():
    # fold 0 scores are low, fold 1 scores high; each fold's threshold separates its own rows
    frame = pd.DataFrame({
        "patient": ["a", "b", "c", "d", "e", "f", "g", "h"],
        "label": ["non-covid", "covid"] * 4,
        "prob_non-covid": 0.0,
        "prob_covid": [0.10, 0.20, 0.12, 0.22, 0.80, 0.90, 0.82, 0.92],
        "threshold": [0.15] * 4 + [0.85] * 4,
    })
    frame["prob_non-covid"] = 1 - frame["prob_covid"]
    result = M.pooled_metrics(frame, classes=["non-covid", "covid"], n_bootstrap=50, seed=0)
    figs = result["image"]["metrics"]
    assert figs["sensitivity"]["value"] == 1.0 and figs["specificity"]["value"] == 1.0
    # one global threshold could not do this; the threshold-free AUC sees the pooled scale
    single = M.binary_metrics(np.arange(8) % 2, frame["prob_covid"], threshold=0.5)
    assert single["specificity"] == 0.5
    assert figs["roc_auc"]["value"] == pytest.approx(single["roc_auc"])
    assert result["patient"]["n_groups"] == 8 and figs["sensitivity"]["n_used"] > 0
    with pytest.raises(ValueError, match="one fold's test part only"):
        M.pooled_metrics(pd.concat([frame, frame.assign(threshold=0.5)]), classes=["non-covid", "covid"],
                            n_bootstrap=0)


def test_pooled_patients_use_each_folds_patient_threshold():
    # two images per patient; patient means sit between the image thresholds and the patient ones
    frame = pd.DataFrame({
        "patient": ["a", "a", "b", "b", "c", "c", "d", "d"],
        "label": ["non-covid"] * 2 + ["covid"] * 2 + ["non-covid"] * 2 + ["covid"] * 2,
        "prob_covid": [0.1, 0.3, 0.3, 0.5, 0.6, 0.8, 0.8, 1.0],      # means a .2 b .4 | c .7 d .9
        "threshold": [0.5] * 4 + [0.95] * 4,
        "patient_threshold": [0.3] * 4 + [0.8] * 4,
        "group": ["ab", "ab", "ab", "ab", "c", "c", "d", "d"],
    })
    frame["prob_non-covid"] = 1 - frame["prob_covid"]
    result = M.pooled_metrics(frame, classes=["non-covid", "covid"], n_bootstrap=20, seed=0)
    patient = result["patient"]["metrics"]
    assert patient["sensitivity"]["value"] == 1.0 and patient["specificity"]["value"] == 1.0
    assert result["patient"]["n_groups"] == 3 and result["image"]["n_groups"] == 3
    image = result["image"]["metrics"]
    assert image["sensitivity"]["value"] == pytest.approx(2 / 4)        # 0.5 (fold 0) and 1.0 (fold 1)
    # without patient thresholds the image ones are used
    fallback = M.pooled_metrics(frame.drop(columns="patient_threshold"), classes=["non-covid", "covid"],
                                n_bootstrap=0)
    assert fallback["patient"]["metrics"]["sensitivity"]["value"] == 0.0
    with pytest.raises(ValueError, match=r"finite 'patient_threshold'.*Received: non_finite=8"):
        M.pooled_metrics(frame.assign(patient_threshold=np.nan), classes=["non-covid", "covid"], n_bootstrap=0)


def _fake_run(root, backbone, strategy, fold, *, swaps, test_neg=(0.3, 0.35, 0.45, 0.4), feature_layer=None):
    """A finished fake run of fold ``fold``: val AUC lowered by ``swaps`` swapped pairs, the test
    part's negatives scored ``test_neg`` (positives 0.5 .. 0.8)."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({
        "classes": ["non-covid", "covid"], "task": "covid-vs-rest", "backbone": backbone, "strategy": strategy,
        "fold": fold, "folds": 2, "weights": "none", **({"feature_layer": feature_layer} if feature_layer else {})}))
    neg, pos = [0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]
    for k in range(swaps):
        neg[-1 - k], pos[k] = pos[k], neg[-1 - k]
    rows = []
    for part, scores in (("val", neg + pos), ("test", list(test_neg) + [0.5, 0.6, 0.7, 0.8])):
        for i, score in enumerate(scores):
            rows.append({"image": f"{part}/{fold}_{i}.png", "patient": f"{part}-{fold}-{i}", "part": part,
                         "label": "covid" if i >= 4 else "non-covid", "prob_covid": score})
    preds = pd.DataFrame(rows)
    preds["prob_non-covid"] = 1 - preds["prob_covid"]
    preds.to_csv(root / "predictions.csv", index=False)
    return root


def test_grid_chooses_on_validation_not_on_test(tmp_path):
    # vgg16/none: best validation AUC (no swaps), worse test; vgg19/none: one swap on validation,
    # perfect test; vgg16/oversample: as vgg16/none on one fold and worse on the other.
    runs = [_fake_run(tmp_path / f"a{f}", "vgg16", "none", f, swaps=0, test_neg=(0.3, 0.35, 0.55, 0.65))
            for f in (0, 1)]
    runs += [_fake_run(tmp_path / f"b{f}", "vgg19", "none", f, swaps=1) for f in (0, 1)]
    runs += [_fake_run(tmp_path / "c0", "vgg16", "oversample", 0, swaps=0),
             _fake_run(tmp_path / "c1", "vgg16", "oversample", 1, swaps=2)]
    pooled, per_run = M.grid_comparison(runs, n_bootstrap=0)
    val = per_run[per_run["level"] == "image"].set_index("run")["val_roc_auc"]
    assert val["a0"] == 1.0 and val["b0"] == pytest.approx(1 - 1 / 16) and val["c1"] == pytest.approx(1 - 4 / 16)
    means = pooled.drop_duplicates("run").set_index("run")["val_roc_auc_mean"]
    assert means["vgg16 / none"] == 1.0 and means["vgg16 / oversample"] == pytest.approx((1 + 12 / 16) / 2)
    test_auc = pooled[pooled["level"] == "image"].set_index("run")["roc_auc"]
    assert test_auc["vgg19 / none"] > test_auc["vgg16 / none"]           # test would pick the other one
    selection = M.grid_selection(pooled)
    assert selection["run"] == "vgg16 / none" and selection["val_roc_auc_mean"] == 1.0
    assert [r["run"] for r in selection["ranking"]] == ["vgg16 / none", "vgg19 / none", "vgg16 / oversample"]
    assert selection["test"]["image"]["roc_auc"]["value"] == pytest.approx(test_auc["vgg16 / none"])
    json.dumps(selection)                                                # JSON-ready for grid.json
    # patient thresholds are each fold's own, listed on the patient rows
    patient_row = pooled[(pooled["level"] == "patient") & (pooled["run"] == "vgg16 / none")].iloc[0]
    assert patient_row["thresholds"] == "0.4500, 0.4500"
    from covidxr.reports import grid_markdown

    text = grid_markdown(pooled, per_run)
    chosen, rest = text.split("## All configurations: descriptive, not for choosing")
    assert "**vgg16 / none**: mean validation ROC AUC 1.0000" in chosen and "vgg19 / none" in rest
    assert chosen.index("vgg16 / none") < chosen.index("Pooled test figures")


def test_grid_selection_tie_breaks():
    def row(backbone, strategy, mean, low):
        return {"run": f"{backbone} / {strategy}", "backbone": backbone, "strategy": strategy, "level": "image",
                "folds": 2, "val_roc_auc_mean": mean, "val_roc_auc_min": low, "val_roc_aucs": "",
                "roc_auc": 0.5, "roc_auc_ci_low": 0.4, "roc_auc_ci_high": 0.6}

    table = pd.DataFrame([row("vgg19", "none", 0.9, 0.85), row("vgg16", "oversample", 0.9, 0.8),
                          row("resnet50", "none", np.nan, np.nan), row("vgg16", "none", 0.9, 0.85)])
    ranking = [r["run"] for r in M.grid_selection(table)["ranking"]]
    # equal mean: higher minimum first, then backbone, then strategy alphabetically; no AUC last
    assert ranking == ["vgg16 / none", "vgg19 / none", "vgg16 / oversample", "resnet50 / none"]
    with pytest.raises(ValueError, match=r"validation AUCs\. Received: rows=1, missing=\['val_roc_auc_mean'"):
        M.grid_selection(table.drop(columns=["val_roc_auc_mean"]).iloc[:1])


def test_cli_grid_options(collection, tmp_path, monkeypatch):
    seen = {}

    def fake(base, **kwargs):
        seen.update(kwargs, base=base)
        return tmp_path

    monkeypatch.setattr(grid, "run_grid", fake)
    code = cli.main(["grid", "--data-dir", str(collection), "--backbones", "vgg16,vgg19", "--strategies", "none",
                     "--folds", "3", "--out", str(tmp_path / "g"), "--weights", "none", "--image-size", "32",
                     "--epochs", "2", "--fine-tune-epochs", "0", "--n-bootstrap", "10"])
    assert code == 0
    assert seen["backbones"] == "vgg16,vgg19" and seen["strategies"] == "none" and seen["folds"] == 3
    assert seen["n_bootstrap"] == 10 and str(seen["out"]) == str(tmp_path / "g")
    base = seen["base"]
    assert base.image_size == 32 and base.epochs == 2 and base.fine_tune_epochs == 0 and base.weights == "none"
    assert base.data_dir == str(collection)
    with pytest.raises(SystemExit):
        cli.main(["grid", "--out", str(tmp_path / "g"), "--split-file", "split.csv"])


def test_real_data_covid_vs_normal_refuses_too_many_folds(real_data, real_cache, tmp_path):
    base = TrainConfig(data_dir=str(real_data), task="covid-vs-normal", weights="none", image_size=32,
                       cache_dir=str(real_cache), verbose=0)
    with pytest.warns(UserWarning):  # the snapshot lacks some images
        with pytest.raises(ValueError, match=r"class 'normal' has 16 split groups.*covid-vs-normal"):
            grid.run_grid(base, out=tmp_path / "g", backbones="vgg16", strategies="none", folds=17)
    assert not (tmp_path / "g").exists()


# --------------------------------------------------------------------------- feature layers as an axis

LAYERS = ["block3_conv3", "block4_conv3"]


def test_grid_with_two_feature_layers(collection, tmp_path, monkeypatch):
    out = tmp_path / "grid"
    base = _base(collection, tmp_path / "cache")
    grid.run_grid(base, out=out, backbones="vgg16", strategies="none", folds=FOLDS, feature_layers=",".join(LAYERS),
                  n_bootstrap=10, progress=False)
    record = json.loads((out / "grid.json").read_text())
    assert record["feature_layers"] == LAYERS and "feature_layer" not in record["options"]
    assert [t["feature_layer"] for t in record["timings"]] == [LAYERS[0]] * FOLDS + [LAYERS[1]] * FOLDS
    seen = set()
    for name in record["runs"]:
        config = json.loads((out / "runs" / name / "config.json").read_text())
        assert f"_vgg16-{config['feature_layer']}_none_f{config['fold']}_" in name
        assert config["resolved"]["gradcam_layer"] == config["feature_layer"]
        seen.add((config["feature_layer"], config["fold"]))
    assert seen == {(layer, f) for layer in LAYERS for f in range(FOLDS)}
    pooled = pd.read_csv(out / "comparison.csv")
    assert len(pooled) == 2 * 2  # feature layer × level
    assert set(pooled["run"]) == {f"vgg16:{layer} / none" for layer in LAYERS}
    assert sorted(set(pooled["feature_layer"])) == LAYERS and (pooled["folds"] == FOLDS).all()
    per_run = pd.read_csv(out / "runs.csv")
    assert sorted(set(per_run["feature_layer"])) == LAYERS
    selection = record["selection"]
    assert selection["feature_layer"] in LAYERS and selection["run"] == f"vgg16:{selection['feature_layer']} / none"
    assert len(selection["ranking"]) == 2
    text = (out / "comparison.md").read_text()
    assert "feature layers: block3_conv3, block4_conv3;" in text and f"**{selection['run']}**" in text
    # started again with the same axis: nothing is trained; another axis is refused
    monkeypatch.setattr(grid, "train", lambda config: pytest.fail("trained"))
    grid.run_grid(base, out=out, backbones="vgg16", strategies="none", folds=FOLDS, feature_layers=LAYERS,
                  n_bootstrap=5, progress=False)
    with pytest.raises(ValueError, match=r"feature_layers: \['block3_conv3', 'block4_conv3'\] -> \['block3_conv3'\]"):
        grid.run_grid(base, out=out, backbones="vgg16", strategies="none", folds=FOLDS, feature_layers="block3_conv3",
                      progress=False)


def test_feature_layers_must_fit_every_backbone(collection, tmp_path):
    base = _base(collection, tmp_path / "cache")
    with pytest.raises(ValueError, match=r"'block4_conv3' is not a layer of 'resnet50' \(its candidates: "
                                         r"\['conv3_block4_out', 'conv4_block6_out', 'conv5_block3_out'\]\)\. "
                                         r"Received: feature_layers=\['block4_conv3'\], backbones=\['vgg16', 'resnet50'\]"):
        grid.run_grid(base, out=tmp_path / "g", backbones="vgg16,resnet50", strategies="none", folds=2,
                      feature_layers="block4_conv3")
    with pytest.raises(ValueError, match=r"each of feature_layers once\. Received: feature_layers=\['block3_conv3', "):
        grid.run_grid(base, out=tmp_path / "g", backbones="vgg16", strategies="none", folds=2,
                      feature_layers="block3_conv3, block3_conv3")
    with pytest.raises(ValueError, match=r"at least one feature layer.*Received: feature_layers=''"):
        grid.run_grid(base, out=tmp_path / "g", backbones="vgg16", strategies="none", folds=2, feature_layers="")
    assert not (tmp_path / "g").exists()
    # 'none' is the whole backbone; no axis takes the base configuration's feature layer
    combos = grid.combinations(["vgg16", "vgg19"], ["none"], 1, [None, "block3_pool"])
    assert [(c["backbone"], c["feature_layer"]) for c in combos] == [
        ("vgg16", None), ("vgg16", "block3_pool"), ("vgg19", None), ("vgg19", "block3_pool")]
    _, configs, _, _, layers = grid._grid_configs(base, out=tmp_path / "g", backbones="vgg16,vgg19", strategies="none",
                                                  folds=2, n_bootstrap=0, feature_layers="none,block3_pool")
    assert layers == [None, "block3_pool"] and len(configs) == 8
    cut = TrainConfig(**{**base.to_dict(), "feature_layer": "block2_pool"})
    _, configs, _, _, layers = grid._grid_configs(cut, out=tmp_path / "g", backbones="vgg16", strategies="none",
                                                  folds=2, n_bootstrap=0)
    assert layers == ["block2_pool"] and {c.feature_layer for c in configs} == {"block2_pool"}
    # a grid.json from before the axis resumes as a grid without it
    old = grid._grid_record(base, ["vgg16"], ["none"], 2)
    old.pop("feature_layers")
    assert grid._differences(old, grid._grid_record(base, ["vgg16"], ["none"], 2)) == []


def test_pooling_groups_by_feature_layer(tmp_path):
    runs = [_fake_run(tmp_path / f"a{f}", "vgg16", "none", f, swaps=1) for f in (0, 1)]
    runs += [_fake_run(tmp_path / f"b{f}", "vgg16", "none", f, swaps=0, feature_layer="block4_conv3") for f in (0, 1)]
    pooled, per_run = M.grid_comparison(runs, n_bootstrap=0)
    assert len(pooled) == 4 and set(pooled["run"]) == {"vgg16 / none", "vgg16:block4_conv3 / none"}
    layers = pooled.drop_duplicates("run").set_index("run")["feature_layer"]
    assert pd.isna(layers["vgg16 / none"]) and layers["vgg16:block4_conv3 / none"] == "block4_conv3"  # none: whole
    selection = M.grid_selection(pooled)
    assert selection["run"] == "vgg16:block4_conv3 / none" and selection["feature_layer"] == "block4_conv3"
    assert [r["run"] for r in selection["ranking"]] == ["vgg16:block4_conv3 / none", "vgg16 / none"]
    assert set(per_run["feature_layer"].dropna()) == {"block4_conv3"} and "feature_layer" in M.RUN_KEYS


def test_cli_grid_feature_layers(collection, tmp_path, monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(grid, "run_grid", lambda base, **kwargs: seen.update(kwargs, base=base) or tmp_path)
    args = ["grid", "--data-dir", str(collection), "--backbones", "vgg16", "--strategies", "none", "--out",
            str(tmp_path / "g"), "--weights", "none", "--image-size", "32"]
    assert cli.main(args + ["--feature-layers", "block3_conv3,block4_conv3"]) == 0
    assert seen["feature_layers"] == "block3_conv3,block4_conv3" and seen["base"].feature_layer is None
    assert cli.main(args) == 0 and seen["feature_layers"] is None
