"""Read what a finished run folder holds for scoring: its options and predictions, and the
decision threshold chosen on its validation part.
Must not score the data it reads, write anything or load a model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from . import metrics as M

__all__ = ["LEVELS", "RUN_KEYS", "held_out_test", "read_run", "validation_threshold"]

#: Levels a threshold is chosen and applied at: per image, or per patient (mean probability).
LEVELS = ("image", "patient")

#: Config keys shown in every comparison row.
RUN_KEYS = ("backbone", "weights", "feature_layer", "image_size", "strategy", "fold")


def read_run(run_dir, *, need_model=False) -> tuple[dict, pd.DataFrame]:
    """Read a run folder's ``config.json`` and ``predictions.csv``.

    Args:
        run_dir: The run folder.
        need_model: Also require ``model.keras`` (to score new images).

    Returns:
        ``(config, predictions)``; ``config["classes"]`` is a list of class names and
        ``config["task"]`` the task name.

    Raises:
        FileNotFoundError: The folder, its config, its predictions or (``need_model``) its
            model is missing.
        ValueError: The config has no classes, or predictions lack columns.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"Expected a run folder (made by `covidxr train`). Received: run_dir={str(run)!r}")
    config_path = run / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"Expected a run folder with config.json (made by `covidxr train`). Received: run_dir={str(run)!r}"
        )
    config = json.loads(config_path.read_text())
    classes = config.get("classes")
    if not classes or len(classes) < 2:
        raise ValueError(f"Expected config.json to list the model's classes. Received: classes={classes!r}")
    if need_model and not (run / "model.keras").is_file():
        raise FileNotFoundError(
            "Expected a trained model (model.keras) in the run folder to score new images; "
            f"was training interrupted? Received: run_dir={str(run)!r}"
        )
    pred_path = run / "predictions.csv"
    if not pred_path.is_file():
        raise FileNotFoundError(
            "Expected predictions.csv in the run folder (training writes it after the last "
            f"epoch; was training interrupted?). Received: run_dir={str(run)!r}"
        )
    preds = pd.read_csv(pred_path, dtype={"image": str, "patient": str, "label": str, "part": str})
    required = ["image", "patient", "label", "part", *M.prob_columns(classes)]
    missing = [c for c in required if c not in preds.columns]
    if missing:
        raise ValueError(
            f"Expected {str(pred_path)!r} with columns {required}. Received: missing={missing}"
        )
    return config, preds


def validation_threshold(predictions: pd.DataFrame, *, classes, method="youden", target_sensitivity=None,
                         threshold=None, level="image") -> dict | None:
    """The decision threshold chosen on the ``part == "val"`` rows only.

    Per-patient decisions score a patient's mean probability, whose distribution differs from
    that of single images, so they get their own threshold, chosen on the validation
    **patient means** (``level="patient"``); ``fixed`` gives the same threshold at both levels.

    Args:
        predictions: A run's predictions (all parts); only validation rows are looked at.
        classes: Class names (two classes: positive = ``classes[1]``).
        method, target_sensitivity, threshold: See :func:`covidxr.evaluation.choose_threshold`.
        level: ``"image"`` (choose on validation images) or ``"patient"`` (on validation
            patients' mean probabilities, :func:`covidxr.evaluation.patient_frame`).

    Returns:
        :func:`covidxr.evaluation.choose_threshold`'s dict plus ``level`` (and, per patient,
        ``n_patients``; ``n_images`` counts the validation images), or None for three classes
        (arg-max).
    """
    if level not in LEVELS:
        raise ValueError(f"Unknown threshold level. Expected one of {list(LEVELS)}. Received: level={level!r}")
    classes = list(classes)
    if len(classes) != 2:
        return None
    val = predictions[predictions["part"].astype(str) == "val"]
    if val.empty and method != "fixed":
        raise ValueError(
            "Expected validation rows (part == 'val') in the run's predictions to choose the "
            f"threshold. Received: parts={sorted(predictions['part'].astype(str).unique())}"
        )
    rows = M.patient_frame(val, classes) if level == "patient" and len(val) else val
    y, probs = M.class_probabilities(rows, classes) if len(rows) else (np.zeros(0, int), np.zeros((0, 2)))
    info = M.choose_threshold(y, probs[:, 1], method=method, target_sensitivity=target_sensitivity,
                              threshold=threshold)
    info["level"] = level
    if level == "patient":
        info.update(n_patients=int(len(rows)), n_images=int(len(val)))
        info["description"] = info["description"].replace("validation part", "validation patients' mean "
                                                          "probabilities")
    return info


def held_out_test(predictions: pd.DataFrame) -> pd.DataFrame:
    """The ``part == "test"`` rows of a run's predictions (an error when there are none)."""
    scored = predictions[predictions["part"].astype(str) == "test"].reset_index(drop=True)
    if scored.empty:
        raise ValueError("Expected test rows (part == 'test') in the run's predictions.csv. "
                         f"Received: parts={sorted(predictions['part'].astype(str).unique())}")
    return scored
