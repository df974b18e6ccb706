"""Tests for covidxr.predict and the `covidxr predict` command."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covidxr import cli
from covidxr.evaluation import read_run, validation_threshold
from covidxr.inference import preprocessing_settings
from covidxr.predict import predict_files


@pytest.mark.jax
def test_predict_reproduces_the_runs_test_predictions(tiny_run, collection):
    config, preds = read_run(tiny_run)
    test = preds[preds["part"] == "test"].reset_index(drop=True)
    table = predict_files(tiny_run, [collection / image for image in test["image"]])
    assert (table["error"] == "").all()
    np.testing.assert_allclose(table["prob_covid"], test["prob_covid"], atol=1e-4)
    np.testing.assert_allclose(table["prob_non-covid"] + table["prob_covid"], 1, atol=1e-6)
    threshold = validation_threshold(preds, classes=config["classes"])["threshold"]
    assert table["threshold"].eq(threshold).all()
    expected = np.where(test["prob_covid"] >= threshold, "covid", "non-covid")
    # decisions agree except for a probability within 1e-4 of the threshold
    close = np.abs(test["prob_covid"] - threshold) < 1e-4
    assert (table["decision"].to_numpy()[~close] == expected[~close]).all()


@pytest.mark.jax
def test_unreadable_files_are_reported_and_others_scored(tiny_run, collection, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"<html>not an image</html>")
    good = sorted((collection / "images").glob("p00*_0.*"))[:2]
    table = predict_files(tiny_run, [good[0], bad, good[1], tmp_path / "missing.jpg"], gradcam_dir=tmp_path / "cams")
    assert list(table["error"] == "") == [True, False, True, False]
    assert table.loc[1, "error"] and np.isnan(table.loc[1, "prob_covid"])
    assert table.loc[[0, 2], "decision"].isin(["covid", "non-covid"]).all()
    for path in table.loc[[0, 2], "gradcam"]:  # image beside overlay, each at least 512 px, a colour bar
        panel = np.asarray(Image.open(path))
        assert panel.shape[0] >= 512 and panel.shape[1] >= 2 * 512, panel.shape
    # a second call never overwrites the first overlays
    again = predict_files(tiny_run, [good[0]], gradcam_dir=tmp_path / "cams")
    assert again.loc[0, "gradcam"] not in set(table["gradcam"])


@pytest.mark.jax
def test_predict_command(tiny_run, collection, tmp_path, capsys):
    image = sorted((collection / "images").glob("p00*_0.*"))[0]
    out = tmp_path / "p.csv"
    assert cli.main(["predict", str(image), "--run", str(tiny_run), "--csv", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "prob_covid" in printed and "not a medical device" in printed
    assert pd.read_csv(out).shape[0] == 1
    assert cli.main(["predict", str(image), "--run", str(tiny_run), "--csv", str(out)]) == 2
    assert "Received: csv=" in capsys.readouterr().err
    assert cli.main(["predict", str(tmp_path / "none.png"), "--run", str(tiny_run)]) == 2


def test_predict_needs_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Expected a run folder.*Received: run_dir="):
        predict_files(tmp_path, ["x.png"])
    with pytest.raises(ValueError, match=r"record the image size. Received: keys=\['task'\]"):
        preprocessing_settings({"task": "covid-vs-rest"})


@pytest.mark.jax
def test_crafted_model_with_code_is_refused(tiny_run, tmp_path):
    """A model.keras carrying a Lambda layer (arbitrary code) is refused, not run."""
    import shutil

    import keras

    run = tmp_path / "crafted"
    shutil.copytree(tiny_run, run)
    marker = tmp_path / "pwned"
    inputs = keras.Input((32, 32, 1))
    payload = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).touch(), x)[1]")  # noqa: S307
    outputs = keras.layers.Lambda(payload)(inputs)
    from covidxr.records import recorded_path

    with recorded_path(run / "model.keras") as tmp:  # the record agrees: the loader itself must refuse it
        keras.Model(inputs, outputs).save(tmp)
    marker.unlink(missing_ok=True)  # building the model ran the payload once, here, on purpose
    with pytest.raises(ValueError, match=r"Refusing to load model.keras.*Lambda.*Received: run_dir="):
        predict_files(run, ["x.png"])
    assert not marker.exists()


def test_same_seed_same_split_and_predictions(collection, tmp_path):
    """Two CPU runs of one configuration give identical splits and predictions (1e-6)."""
    from covidxr.train import TrainConfig, train

    runs = []
    for k in range(2):
        config = TrainConfig(data_dir=str(collection), backbone="vgg16", weights="none", image_size=32,
                             batch_size=8, epochs=1, fine_tune_epochs=1, strategy="undersample",
                             runs_dir=str(tmp_path / f"runs{k}"), cache_dir=str(tmp_path / "cache"), verbose=0)
        runs.append(train(config))
    a, b = (pd.read_csv(r / "split.csv") for r in runs)
    pd.testing.assert_frame_equal(a, b)
    pa, pb = (pd.read_csv(r / "predictions.csv") for r in runs)
    assert pa["image"].equals(pb["image"])
    np.testing.assert_allclose(pa["prob_covid"], pb["prob_covid"], atol=1e-6)


@pytest.mark.jax
def test_a_too_small_image_is_refused_and_any_failure_makes_predict_exit_2(tiny_run, collection, tmp_path, capsys):
    """One minimum size (MIN_IMAGE_SIDE, as the cache) for predict; a partial failure is exit status 2."""
    from covidxr.images import MIN_IMAGE_SIDE

    small = tmp_path / "dot.png"
    Image.new("L", (1, 1), 128).save(small)
    good = sorted((collection / "images").glob("p00*_0.*"))[0]
    table = predict_files(tiny_run, [good, small])
    assert list(table["error"] == "") == [True, False] and np.isnan(table.loc[1, "prob_covid"])
    assert table.loc[1, "error"] == (f"ValueError: Expected an image at least {MIN_IMAGE_SIDE} px on each side "
                                     f"(a radiograph); this one is 1x1 px. Received: path='{small}'")
    assert cli.main(["predict", str(good), str(small), "--run", str(tiny_run)]) == 2
    captured = capsys.readouterr()
    assert "prob_covid" in captured.out and "1 of 2 files could not be read" in captured.err
