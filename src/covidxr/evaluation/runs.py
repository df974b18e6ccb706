"""Read what a finished run folder holds for scoring: its options and predictions, and the
decision threshold chosen on its validation part.
Must not score the data it reads, write anything or load a model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import read_json_object
from ..records import check_record
from . import metrics as M

__all__ = ["LEVELS", "RUN_KEYS", "check_predictions", "held_out_test", "read_run", "validation_threshold"]

#: The run files :func:`read_run` checks against the run's ``record.json`` (and ``model.keras`` when needed).
CHECKED_FILES = ("config.json", "split.csv", "predictions.csv", "metrics.json")
#: How far a row's probabilities may sum from 1 (float32 softmax outputs written as text).
SUM_TOLERANCE = 1e-3

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

    The files are first checked against the run's ``record.json`` (:func:`covidxr.records.check_record`;
    a run made before records were kept reads unchecked, with a warning), then the predictions'
    content (:func:`check_predictions`).

    Raises:
        FileNotFoundError: The folder, its config, its predictions or (``need_model``) its
            model is missing.
        ValueError: The config has no classes, or predictions lack columns or fail
            :func:`check_predictions`.
        covidxr.records.RecordMismatch: A file differs from the run's record (a ValueError).
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"Expected a run folder (made by `covidxr train`). Received: run_dir={str(run)!r}")
    config_path = run / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"Expected a run folder with config.json (made by `covidxr train`). Received: run_dir={str(run)!r}"
        )
    record = check_record(run, [*CHECKED_FILES, *(["model.keras"] if need_model else [])], what="run folder")
    config = read_json_object(config_path, what="the run's options")
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
    for column in M.prob_columns(classes):
        numbers = pd.to_numeric(preds[column], errors="coerce")
        bad = preds[column][numbers.isna() & preds[column].notna()]
        if len(bad):
            raise ValueError(f"Expected numbers in column {column} of {str(pred_path)!r} (damaged or edited?); "
                             f"{len(bad)} rows hold text. Received: {column}={bad.iloc[0]!r}")
        preds[column] = numbers
    split = run / "split.csv"  # a recorded run's own split (an unchecked one's may be hand-made)
    check_predictions(preds, classes=classes, path=pred_path,
                      split=pd.read_csv(split, dtype={"image": str, "part": str})
                      if record is not None and split.is_file() else None)
    return config, preds


def check_predictions(preds: pd.DataFrame, *, classes, path, split=None) -> None:
    """A run's predictions are what training wrote: each image once, probabilities in [0, 1] that sum
    to 1 per row, and (given the run's split) one row per image of the split's validation and test parts.

    Args:
        preds: ``predictions.csv`` as read, shape (n, ...), with ``image``, ``part`` and ``prob_<class>``.
        classes: The run's classes.
        path: The file, named in the messages.
        split: The run's ``split.csv`` (``image``, ``part``), or None (not checked against it).

    Raises:
        ValueError: The first check that fails, naming the file and the rows.
    """
    columns = M.prob_columns(classes)
    values = preds[columns].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    bad = ~np.isfinite(values).all(axis=1) | (values < 0).any(axis=1) | (values > 1).any(axis=1)
    if bad.any():
        raise ValueError(f"Expected probabilities in [0, 1] in {str(path)!r}; {int(bad.sum())} rows have a value "
                         f"outside it or not a number. Received: rows={preds.loc[bad, columns].head(3).to_dict('records')}")
    sums = values.sum(axis=1)
    off = np.abs(sums - 1) > SUM_TOLERANCE
    if off.any():
        raise ValueError(f"Expected each row's probabilities in {str(path)!r} to sum to 1; {int(off.sum())} rows do "
                         f"not. Received: sums={sorted(set(np.round(sums[off], 4).tolist()))[:3]}")
    repeated = preds["image"][preds["image"].duplicated()].unique()
    if len(repeated):
        raise ValueError(f"Expected each image once in {str(path)!r}; {len(repeated)} are listed more than once. "
                         f"Received: images={list(repeated[:3])}")
    if split is None or not {"image", "part"} <= set(split.columns):
        return
    wanted = set(split.loc[split["part"].astype(str).isin(["val", "test"]), "image"].astype(str))
    have = set(preds["image"].astype(str))
    if wanted != have:
        missing, extra = sorted(wanted - have), sorted(have - wanted)
        raise ValueError(f"Expected one row per image of the run's validation and test parts ({len(wanted)} in "
                         f"split.csv) in {str(path)!r}; {len(missing)} are missing and {len(extra)} are not in "
                         f"those parts. Received: missing={missing[:3]}, extra={extra[:3]}")


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
