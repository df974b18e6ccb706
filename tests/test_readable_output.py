"""What a researcher reads: figures that show what they claim (age per patient with both sexes
visible, one colour per class, the best epoch, bin counts, titles that do not overlap, a Grad-CAM
panel large enough to read, comparisons labelled by what was run, with a chance line) and terminal
text with 3 decimals, "1 epoch", small tables no wider than 120 columns and one way of counting."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from PIL import Image  # noqa: E402

from covidxr import figures, reports  # noqa: E402
from covidxr.runfolder import metrics_line, parts_table  # noqa: E402


def test_age_by_sex_counts_patients_and_shows_both_sexes():
    frame = pd.DataFrame({"patient": ["a", "a", "a", "b", "c", "d"], "sex": ["M", "M", "M", "F", "F", None],
                          "age": [40, 41, 42, 45, 70, np.nan]})
    ax = figures.plot_age_by_sex(frame)
    heights = {}
    for patch in ax.patches:
        heights.setdefault(to_hex(patch.get_facecolor()), []).append(patch.get_height())
    assert len(heights) == 2 and sorted(sum(h) for h in heights.values()) == [1, 2]  # a counted once
    widths = {round(p.get_width(), 6) for p in ax.patches}
    starts = sorted((p.get_x(), to_hex(p.get_facecolor())) for p in ax.patches if p.get_height() > 0)
    assert len(widths) == 1 and len({x for x, _ in starts}) == len(starts)  # side by side, never on top
    assert "per patient" in ax.get_title() and "1 patients without age" in ax.get_title()
    plt.close("all")


def _predictions(n=60, seed=0):
    rng = np.random.default_rng(seed)
    label = np.array(["non-covid", "covid"] * (n // 2))
    p = np.clip(rng.normal(0.5, 0.2, n) + 0.2 * (label == "covid"), 0, 1)
    return pd.DataFrame({"patient": np.arange(n).astype(str), "label": label,
                         "prob_non-covid": 1 - p, "prob_covid": p})


def test_one_colour_per_class_and_bin_counts():
    frame, classes = _predictions(), ["non-covid", "covid"]
    colour = figures.CATEGORY_COLOURS["covid"]
    assert len(set(figures.CATEGORY_COLOURS.values())) == len(figures.CATEGORY_COLOURS)
    roc = figures.plot_roc(frame, classes, threshold=0.5)
    pr = figures.plot_precision_recall(frame, classes, threshold=0.5)
    cal = figures.plot_calibration(frame, classes, n_bins=5)
    for ax in (roc, pr, cal):
        assert to_hex(ax.get_lines()[0].get_color()) == colour
    counts = [int(t.get_text().split("=")[1]) for t in cal.texts if t.get_text().startswith("n=")]
    assert len(counts) == 5 and sum(counts) == len(frame)
    plt.close("all")


def test_training_curves_mark_the_best_epoch_and_name_the_weights():
    history = pd.DataFrame({"epoch": [1, 2, 3, 4], "phase": [1, 1, 2, 2], "loss": [1, 0.8, 0.7, 0.6],
                            "val_loss": [1, 0.9, 0.8, 0.9], "auc": [0.5, 0.6, 0.7, 0.8], "val_auc": [0.5, 0.7, 0.65, 0.6]})
    label = figures.run_label({"backbone": "vgg16", "weights": "hed", "feature_layer": "block4_conv3",
                               "image_size": 224, "strategy": "class-weight", "fold": None})
    assert label == "vgg16 · hed · block4_conv3 · 224 px · class-weight"
    pooled = pd.Series({"backbone": "vgg16", "weights": "hed", "feature_layer": np.nan, "image_size": 64.0,
                        "strategy": "oversample", "fold": "5 pooled", "folds": 5})  # a grid's comparison.csv row
    assert figures.run_label(pooled) == "vgg16 · hed · full · 64 px · oversample · folds 5 pooled"
    axes = figures.plot_training_curves(history, title=label)
    for ax in axes:   # the epoch model.keras holds (lowest validation loss), not the highest AUC (2)
        assert any(line.get_label() == "model kept: epoch 3 (val loss 0.800, ROC AUC 0.650)" for line in ax.get_lines())
    assert axes[0].figure._suptitle.get_text() == label
    kept = figures.plot_training_curves(history, best_epoch=4)   # as metrics.json records it
    assert "model kept: epoch 4 (val loss 0.900, ROC AUC 0.600)" in [line.get_label() for line in kept[1].get_lines()]
    plt.close("all")


def test_training_curves_of_a_one_fit_phase_1_are_readable():
    history = pd.DataFrame({"epoch": [1], "phase": [1], "loss": [0.481], "val_loss": [0.493], "auc": [0.892],
                            "val_auc": [0.801]})
    loss, auc = figures.plot_training_curves(history)
    assert auc.get_ylim() == (0.5, 1.0) and loss.get_ylim()[0] == 0.0   # a scale, not a zoom on two points
    assert [t.get_text() for t in auc.texts] == ["train 0.892", "validation 0.801"]
    assert [t.get_text() for t in loss.get_xticklabels()] == ["1\n(phase 1)"]
    plt.close("all")


def test_preprocessing_titles_do_not_overlap(collection):
    paths = sorted((collection / "images").glob("*.png"))[:4]
    titles = [f"non-covid: {'a-very-long-file-name-of-an-image-' * 2}{i}.png" for i in range(4)]
    fig = figures.plot_preprocessing(paths, image_size=32, titles=titles)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_title()]
    assert len(boxes) == 4
    for left, right in zip(boxes, boxes[1:]):
        assert left.x1 <= right.x0, (left, right)
    plt.close("all")


def test_gradcam_panel_is_large_and_says_the_decision(tmp_path):
    image = (np.arange(32 * 32).reshape(32, 32) % 255).astype(np.uint8)
    fig = figures.plot_gradcam_panel(image, np.linspace(0, 1, 32 * 32).reshape(32, 32), name="x.png",
                                     probabilities={"non-covid": 0.3, "covid": 0.7}, decision="covid",
                                     threshold=0.55, positive_class="covid")
    title = fig._suptitle.get_text()
    assert "P(covid) = 0.700" in title and "threshold 0.550" in title and "decision: covid" in title
    assert len(fig.axes) == 3  # image, overlay, colour bar
    path = figures.save_figure(fig, tmp_path / "cam.png")
    height, width = np.asarray(Image.open(path)).shape[:2]
    assert height >= figures.GRADCAM_PANEL_PIXELS and width >= 2 * figures.GRADCAM_PANEL_PIXELS


def _comparison_table():
    rows = []
    for weights, strategy in (("hed", "class-weight"), ("none", "class-weight")):
        for level in ("image", "patient"):
            row = {"run": f"2026-12-06T20-00-00_covid-vs-rest_vgg16_{strategy}_ab{weights[:2]}", "task": "covid-vs-rest",
                   "backbone": "vgg16", "weights": weights, "feature_layer": "block4_conv3", "image_size": 224,
                   "strategy": strategy, "fold": None, "data": "test", "level": level, "n_images": 78,
                   "n_patients": 46, "threshold": 0.5}
            for m in ("roc_auc", "pr_auc", "sensitivity", "specificity", "balanced_accuracy", "mcc", "f1", "ppv", "npv",
                      "brier", "ece", "accuracy"):
                row.update({m: 0.61234, f"{m}_ci_low": 0.51234, f"{m}_ci_high": 0.71234})
            rows.append(row)
    return pd.DataFrame(rows)


def test_comparisons_name_the_runs_and_draw_chance():
    table = _comparison_table()
    fig = figures.plot_comparison(table)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[0] == "vgg16 · hed · block4_conv3 · 224 px · class-weight (image)"
    assert "vgg16 · none · block4_conv3" in labels[2]
    roc = next(ax for ax in fig.axes if ax.get_title() == "roc_auc")
    assert any(np.allclose(line.get_xdata(), 0.5) for line in roc.get_lines())
    plt.close("all")
    text = reports.comparison_summary(table)
    assert max(len(line) for line in text.splitlines()) <= 120, text
    assert "0.612 [0.512, 0.712]" in text and "vgg16 · hed" in text and "0.61234" not in text


def test_terminal_counts_and_numbers():
    split = pd.DataFrame({"part": ["train"] * 4 + ["val"] * 2 + ["test"] * 2,
                          "label": ["covid", "non-covid"] * 4, "patient": list("aabcdefg"),
                          "group": list("aabcdefg")})
    table = parts_table(split, ["non-covid", "covid"])
    assert table.splitlines()[0].split()[:7] == ["part", "images", "non-covid", "covid", "groups", "patients", "of"]
    assert "0.500" in table and "0.500000" not in table
    line = metrics_line({"val": {"images": 2, "roc_auc": 0.6004464285714286, "pr_auc": None, "loss": 0.5},
                         "test": {"images": 2, "roc_auc": 1.0, "pr_auc": 1.0, "loss": 0.25}})
    assert line.startswith("val: 2 images, ROC AUC 0.600, PR AUC n/a, log loss 0.500 | test:") and "{" not in line
    result = {"n_images": 78, "n_patients": 46, "n_patient_labels": 47, "n_groups": 45}
    assert reports.count_text(result) == (
        "78 images of 46 patients (47 patient-label pairs: 1 patient has images of two labels and count once "
        "per label in the class rows and per-patient figures) in 45 split groups")


@pytest.mark.parametrize("n, text", [(1, "1 epoch"), (10, "10 epochs")])
def test_epochs_are_counted_in_words(n, text):
    from covidxr.train import _count

    assert _count(n, "epoch") == text


@pytest.mark.slow
def test_notebook_setup_keeps_tensorflow_quiet_and_its_logger_working():
    """After setup_notebook, TensorFlow's import prints no start-up line, its Python warnings are
    dropped and its errors still reach stderr (its handler is not left on the closed temporary file)."""
    import subprocess
    import sys

    code = ("from covidxr.cli.notebook import setup_notebook; setup_notebook(chdir=False); import tensorflow as tf; "
            "tf.get_logger().warning('dropped-warning'); tf.get_logger().error('kept-error')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={k: v for k, v in __import__("os").environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "kept-error" in result.stderr and "dropped-warning" not in result.stderr, result.stderr
    assert "Logging error" not in result.stderr and "cuda drivers" not in result.stderr, result.stderr
