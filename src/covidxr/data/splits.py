"""Patient-level splits: train / val / test parts that never put one patient in two parts.
Must not read images; it writes split files only through :mod:`covidxr.atomic`.

:func:`split_patients` makes one split, :func:`kfold_split` one fold of a k-fold split
(scikit-learn's ``StratifiedGroupKFold``, stratified by label, grouped by patient);
:func:`check_parts` refuses a split where a part lacks a class. :func:`write_split` and
:func:`read_split` store a split as CSV (:data:`SPLIT_COLUMNS`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .readers import read_csv, require_columns

__all__ = [
    "SPLIT_COLUMNS",
    "check_parts",
    "kfold_split",
    "read_split",
    "split_frame",
    "split_patients",
    "write_split",
]


def _patient_labels(frame):
    """One stratification label per image: the patient's most common label, so that a
    patient with mixed findings still lands in one part."""
    mode = frame.groupby("patient")["label"].agg(lambda s: s.value_counts().index[0])
    return frame["patient"].map(mode).to_numpy()


def _group_split(frame, index, fraction, seed, *, what):
    """Take about ``fraction`` of the patients of ``frame.iloc[index]`` out, stratified."""
    from sklearn.model_selection import StratifiedGroupKFold

    sub = frame.iloc[index]
    n_splits = max(2, int(round(1.0 / fraction)))
    patients_per_class = sub.groupby("label")["patient"].nunique()
    if patients_per_class.min() < 2:
        raise ValueError(
            f"Too few patients to carve a {what} part: every class needs at least 2 patients "
            f"in the data being split. Received: patients_per_class={patients_per_class.to_dict()}"
        )
    n_splits = min(n_splits, int(sub["patient"].nunique()))
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    rest, held = next(cv.split(np.zeros(len(sub)), _patient_labels(sub), groups=sub["patient"]))
    return index[rest], index[held]


def check_parts(split: pd.DataFrame, classes) -> None:
    """Raise ValueError when a part of ``split`` (its ``part`` column) has no image of one
    of ``classes``."""
    for part, group in split.groupby("part"):
        absent = [c for c in classes if c not in set(group["label"])]
        if absent:
            counts = split.groupby("label")["patient"].nunique().to_dict()
            raise ValueError(
                f"Too few patients for this split: part {part!r} has no image of class "
                f"{absent}. Use fewer folds, larger parts, or another task. "
                f"Received: patients_per_class={counts}"
            )


def split_patients(frame: pd.DataFrame, *, val_size=0.15, test_size=0.15, seed=0) -> pd.DataFrame:
    """Split images into train / val / test by patient, stratified by label.

    Uses scikit-learn's ``StratifiedGroupKFold``: the test part is one fold of about
    ``1/test_size`` folds, validation one fold of the rest. Sizes are fractions of patients
    and are approximate (patients carry different numbers of images).

    Args:
        frame: A frame with ``image``, ``patient`` and ``label`` columns, shape (n, ...).
        val_size: Fraction of patients for validation, in (0, 0.5).
        test_size: Fraction of patients for testing, in (0, 0.5).
        seed: Seed; the same seed and frame give the same split.

    Returns:
        A copy of ``frame`` with a ``part`` column (``train``, ``val``, ``test``).

    Raises:
        ValueError: Sizes out of range, or too few patients for every class in every part.
    """
    for name, value in (("val_size", val_size), ("test_size", test_size)):
        if not 0 < float(value) < 0.5:
            raise ValueError(f"Expected {name} in (0, 0.5). Received: {name}={value!r}")
    require_columns(frame, ["image", "patient", "label"], source="frame")
    frame = frame.reset_index(drop=True)
    index = np.arange(len(frame))
    rest, test = _group_split(frame, index, test_size, seed, what="test")
    train, val = _group_split(frame, rest, val_size / (1 - test_size), seed + 1, what="validation")
    part = np.empty(len(frame), dtype=object)
    part[train], part[val], part[test] = "train", "val", "test"
    out = frame.assign(part=part)
    check_parts(out, sorted(frame["label"].unique()))
    return out


def kfold_split(frame: pd.DataFrame, *, folds=5, fold=0, val_size=0.15, seed=0) -> pd.DataFrame:
    """Patient-grouped, stratified k-fold split: fold ``fold`` is the test part; the
    validation part is carved from that fold's training patients with ``seed``.

    Args:
        frame: A frame with ``image``, ``patient`` and ``label`` columns.
        folds: Number of folds (>= 2).
        fold: Which fold is the test part, 0 <= fold < folds.
        val_size: Fraction of the training patients held out for validation.
        seed: Seed; the same seed gives the same folds.

    Returns:
        A copy of ``frame`` with a ``part`` column.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if int(folds) < 2:
        raise ValueError(f"Expected folds >= 2. Received: folds={folds!r}")
    if not 0 <= int(fold) < int(folds):
        raise ValueError(f"Expected 0 <= fold < folds={folds}. Received: fold={fold!r}")
    if not 0 < float(val_size) < 0.5:
        raise ValueError(f"Expected val_size in (0, 0.5). Received: val_size={val_size!r}")
    require_columns(frame, ["image", "patient", "label"], source="frame")
    frame = frame.reset_index(drop=True)
    per_class = frame.groupby("label")["patient"].nunique()
    if per_class.min() < folds:
        raise ValueError(
            f"Too few patients for {folds} folds: every class needs at least {folds} patients. "
            f"Received: patients_per_class={per_class.to_dict()}"
        )
    cv = StratifiedGroupKFold(n_splits=int(folds), shuffle=True, random_state=seed)
    splits = list(cv.split(np.zeros(len(frame)), _patient_labels(frame), groups=frame["patient"]))
    rest, test = splits[int(fold)]
    train, val = _group_split(frame, rest, val_size, seed + 1 + int(fold), what="validation")
    part = np.empty(len(frame), dtype=object)
    part[train], part[val], part[test] = "train", "val", "test"
    out = frame.assign(part=part)
    check_parts(out, sorted(frame["label"].unique()))
    return out


#: The columns of a split file, in order.
def split_frame(frame: pd.DataFrame, *, folds=None, fold=0, val_size=0.15, test_size=0.15, seed=0) -> pd.DataFrame:
    """The split the split options ask for: fold ``fold`` of :func:`kfold_split` when ``folds`` is
    set, else one :func:`split_patients` train / val / test split (``test_size`` is then unused
    in k-fold mode: the test part is the fold)."""
    if folds:
        return kfold_split(frame, folds=folds, fold=fold, val_size=val_size, seed=seed)
    return split_patients(frame, val_size=val_size, test_size=test_size, seed=seed)


SPLIT_COLUMNS = ("image", "patient", "label", "part")


def write_split(split: pd.DataFrame, path) -> Path:
    """Write a split as CSV with columns ``image, patient, label, part``."""
    require_columns(split, list(SPLIT_COLUMNS), source="split")
    from ..atomic import write_text

    return write_text(path, split[list(SPLIT_COLUMNS)].to_csv(index=False))


def read_split(path) -> pd.DataFrame:
    """Read a split written by :func:`write_split`."""
    split = read_csv(Path(path))
    require_columns(split, list(SPLIT_COLUMNS), source=str(path))
    bad = sorted(set(split["part"]) - {"train", "val", "test"})
    if bad:
        raise ValueError(f"Expected parts train/val/test in {path}. Received: part={bad}")
    return split[list(SPLIT_COLUMNS)]
