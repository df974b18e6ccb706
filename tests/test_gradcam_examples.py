"""Tests for covidxr.figures.plot_gradcam_examples on a tiny trained run."""

from __future__ import annotations

import shutil

import matplotlib
import numpy as np
import pandas as pd
import pytest

from covidxr import evaluation, figures
from covidxr.evaluation import read_run, validation_threshold
from covidxr.records import write_recorded_text

matplotlib.use("Agg")


def _texts(fig):
    out = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        out += [t.get_text() for t in ax.texts] + [ax.get_title(), ax.get_ylabel()]
    if fig._supxlabel is not None:
        out.append(fig._supxlabel.get_text())
    if fig._suptitle is not None:
        out.append(fig._suptitle.get_text())
    return "\n".join(out)


@pytest.mark.jax
def test_examples_follow_the_validation_threshold_and_the_runs_preprocessing(tiny_run):
    ex = evaluation.select_gradcam_examples(tiny_run, n=2, seed=0)
    config, preds = read_run(tiny_run)
    threshold = validation_threshold(preds, classes=config["classes"])["threshold"]
    assert ex["threshold"] == pytest.approx(threshold)
    table = ex["table"]
    test = preds[preds["part"] == "test"]
    called = test["prob_covid"] >= threshold
    positive = test["label"] == "covid"
    assert ex["counts"] == {"TP": int((called & positive).sum()), "FP": int((called & ~positive).sum()),
                            "FN": int((~called & positive).sum())}
    assert len(table) == sum(min(2, v) for v in ex["counts"].values()) > 0
    for _, row in table.iterrows():
        is_called = row["prob"] >= threshold
        assert row["category"] == {(True, True): "TP", (True, False): "FP", (False, True): "FN"}[
            (is_called, row["label"] == "covid")]
    # the image was preprocessed as in training: the model gives the stored probability back
    np.testing.assert_allclose(table["model_prob"], table["prob"], atol=1e-4)
    assert ex["images"].shape == (len(table), 32, 32) and ex["images"].dtype == np.uint8
    assert ex["maps"].shape == (len(table), 32, 32)
    assert float(ex["maps"].min()) >= 0 and float(ex["maps"].max()) <= 1
    again = evaluation.select_gradcam_examples(tiny_run, n=2, seed=0)
    pd.testing.assert_frame_equal(again["table"], table)


@pytest.mark.jax
def test_figure_rows_attribution_and_empty_category(tiny_run, tmp_path):
    fig = figures.plot_gradcam_examples(tiny_run, n=2)
    assert len(fig.axes) == 3 * 4
    text = _texts(fig)
    assert figures.DATASET_ATTRIBUTION in text
    assert "TP: true positives" in text and "FN: false negatives" in text
    figures.save_figure(fig, tmp_path / "gradcam.png")
    assert (tmp_path / "gradcam.png").stat().st_size > 0

    # a run whose test part has no false positives: an empty row with a note, no crash
    copy = tmp_path / tiny_run.name
    shutil.copytree(tiny_run, copy)
    preds = pd.read_csv(copy / "predictions.csv")
    negative_test = (preds["part"] == "test") & (preds["label"] != "covid")
    preds.loc[negative_test, "prob_covid"] = 0.0
    preds.loc[negative_test, "prob_non-covid"] = 1.0
    write_recorded_text(copy / "predictions.csv", preds.to_csv(index=False))  # an edit the run's record knows
    fig = figures.plot_gradcam_examples(copy, n=1)
    table = fig.gradcam_examples
    assert "FP" not in set(table["category"])
    assert "no false positives" in _texts(fig)
    assert len(fig.axes) == 3 * 2


def test_bad_options(tiny_run):
    with pytest.raises(ValueError, match=r"rows of part 'train'.*Received: parts="):
        evaluation.select_gradcam_examples(tiny_run, part="train")
    with pytest.raises(ValueError, match=r"n to be an integer >= 1. Received: n=0"):
        evaluation.select_gradcam_examples(tiny_run, n=0)


def test_real_data_gradcam_examples(real_run):
    run, warned = real_run
    assert any(isinstance(w, UserWarning) for w in warned)  # the snapshot lacks some images
    with pytest.warns(UserWarning):
        fig = figures.plot_gradcam_examples(run, n=1)
    table = fig.gradcam_examples
    assert 1 <= len(table) <= 3 and set(table["category"]) <= {"TP", "FP", "FN"}
    np.testing.assert_allclose(table["model_prob"], table["prob"], atol=1e-4)
    assert figures.DATASET_ATTRIBUTION in _texts(fig)
