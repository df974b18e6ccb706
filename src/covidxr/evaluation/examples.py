"""Pick a run's true positives, false positives and false negatives and compute their Grad-CAM
maps: the data behind the Grad-CAM examples figure.
Must not draw: :func:`covidxr.figures.plot_gradcam_examples` draws what this returns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..config import TrainConfig, load_frame
from ..gradcam import gradcam
from ..inference import load_run, prepare_image, preprocessing_settings
from . import metrics as M
from .runs import read_run, validation_threshold

__all__ = ["GRADCAM_CATEGORIES", "select_gradcam_examples"]


#: Rows of :func:`covidxr.figures.plot_gradcam_examples`: (key, title, note when none).
GRADCAM_CATEGORIES = (
    ("TP", "true positives", "no true positives"),
    ("FP", "false positives", "no false positives"),
    ("FN", "false negatives", "no false negatives"),
)


def select_gradcam_examples(run_dir, *, n=3, part="test", seed=0, threshold_method="youden", data_dir=None):
    """Pick true positives, false positives and false negatives of a run and compute their
    Grad-CAM maps for the positive class.

    Decisions use the run's validation threshold (:func:`covidxr.evaluation.validation_threshold`;
    three classes: arg-max, positive = ``covid``). Images are read from the dataset the run was
    trained on (or ``data_dir``) and preprocessed as the run's config says
    (:func:`covidxr.inference.preprocessing_settings`).

    Args:
        run_dir: A run folder (``config.json``, ``predictions.csv``, ``model.keras``).
        n: Examples per category (at most).
        part: Which part of ``predictions.csv`` to draw from (``test`` or ``val``).
        seed: Seed of the random choice within each category.
        threshold_method: How the threshold is chosen on the validation part.
        data_dir: Where the dataset is now, if it moved since training.

    Returns:
        A dict: ``table`` (DataFrame of the chosen rows: ``image, patient, label, category,
        prob`` (from predictions.csv), ``model_prob`` (recomputed from the preprocessed image)),
        ``images`` uint8 (k, S, S), ``maps`` float32 (k, S, S) in [0, 1], ``counts``
        ({category: rows available}), ``threshold``, ``positive_class``, ``run``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"Expected n to be an integer >= 1. Received: n={n!r}")
    run = Path(run_dir)
    config, preds = read_run(run, need_model=True)
    classes = [str(c) for c in config["classes"]]
    positive = classes[1] if len(classes) == 2 else ("covid" if "covid" in classes else classes[1])
    pos_index = classes.index(positive)
    rows = preds[preds["part"].astype(str) == part].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"Expected rows of part {part!r} in the run's predictions.csv. "
                         f"Received: parts={sorted(preds['part'].astype(str).unique())}")
    info = validation_threshold(preds, classes=classes, method=threshold_method)
    probs = rows[M.prob_columns(classes)].to_numpy(float)
    threshold = None if info is None else float(info["threshold"])
    called = M.decide(probs, threshold=threshold) == pos_index
    truth = rows["label"].astype(str).to_numpy() == positive
    masks = {"TP": truth & called, "FP": ~truth & called, "FN": truth & ~called}
    rng = np.random.default_rng(seed)
    chosen = []
    for key, _, _ in GRADCAM_CATEGORIES:
        idx = np.flatnonzero(masks[key])
        if len(idx) > n:
            idx = np.sort(rng.choice(idx, size=n, replace=False))
        for i in idx:
            chosen.append({"image": str(rows.at[i, "image"]), "patient": str(rows.at[i, "patient"]),
                           "label": str(rows.at[i, "label"]), "category": key, "prob": float(probs[i, pos_index])})
    table = pd.DataFrame(chosen, columns=["image", "patient", "label", "category", "prob"])
    settings = preprocessing_settings(config)
    size = settings["image_size"]
    images = np.zeros((len(table), size, size), np.uint8)
    maps = np.zeros((len(table), size, size), np.float32)
    table["model_prob"] = np.nan
    if len(table):
        frame = load_frame(TrainConfig.from_dict(config), data_dir=data_dir, apply_task=False)
        paths = frame.drop_duplicates("image").set_index("image")["path"]
        missing = [i for i in table["image"] if i not in paths.index]
        if missing:
            raise FileNotFoundError(
                "Expected the run's images in its dataset (pass data_dir= if the dataset moved). "
                f"Received: missing={missing[:5]}"
            )
        for k, key in enumerate(table["image"]):
            images[k] = prepare_image(paths[key], settings)
        model, _ = load_run(run, config=config)
        maps, model_probs = gradcam(model, images[..., None], class_index=pos_index)
        table["model_prob"] = model_probs[:, pos_index].astype(float)
    return {"table": table, "images": images, "maps": maps, "threshold": threshold, "positive_class": positive,
            "counts": {k: int(m.sum()) for k, m in masks.items()}, "run": run.name, "part": part}
