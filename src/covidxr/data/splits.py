"""Group-level splits: train / val / test parts that never put one split group in two parts.
Must not read images; it writes split files only through :mod:`covidxr.atomic`.

The split unit is the frame's **group** (:func:`covidxr.data.groups.group_column`: ``group`` when
the frame has one, i.e. patients merged by shared images or, with ``group_by="source"``, whole
sources; else ``patient``). Every split is stratified by each group's most common label (a source
group, which mixes classes, by the rarest class of the data that it holds).

* :func:`split_patients` makes one split: each class's groups are shuffled with the seed and
  ``round(test_size × n)`` of them go to test, ``round(val_size × n)`` of the rest to validation,
  so the parts hold close to the fractions of groups asked; the achieved fractions of images are
  recorded in ``attrs["split_sizes"]`` (:func:`split_sizes`) and a warning says when they differ
  from the request by more than :data:`SIZE_TOLERANCE`.
* :func:`official_split` follows the dataset's own split (COVIDx lists, COVID-QU-Ex folders: the
  frame's ``official_part``): its test part is the test part, its validation part (where it has
  one) the validation part, else validation groups are drawn from its training part as above.
* :func:`kfold_split` makes one fold of a k-fold split (scikit-learn's ``StratifiedGroupKFold``);
  with source groups it is leave-sources-out cross-validation.
* :func:`check_parts` refuses a split where a part lacks a class (naming the sources and their
  class counts with source groups); a validation class with fewer than
  :data:`MIN_VALIDATION_GROUPS` groups gets a :class:`SmallValidationWarning`, and fewer than 2 is
  refused unless ``allow_small_validation=True``.
* :func:`write_split` and :func:`read_split` store a split as CSV (:data:`SPLIT_COLUMNS`); reading
  checks unique images and one part per group and per patient. Files without ``group`` and
  ``hash`` (written before :data:`SPLIT_VERSION` 2) read with ``group`` = ``patient``, ``hash`` = "".
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .groups import group_column
from .readers import read_csv, require_columns

__all__ = ["MIN_VALIDATION_GROUPS", "SIZE_TOLERANCE", "SPLIT_COLUMNS", "SPLIT_VERSION", "SmallValidationWarning",
           "check_parts", "describe_groups", "kfold_split", "official_split", "read_split", "split_frame",
           "split_from_file", "split_patients", "split_sizes", "write_split"]

#: The rules that make splits and folds: 1 split raw patient ids by scikit-learn folds; 2 splits
#: merged groups (shared images, optionally whole sources), sampled per class to the fractions.
SPLIT_VERSION = 2
#: The columns of a split file, in order.
SPLIT_COLUMNS = ("image", "patient", "group", "hash", "label", "part")
#: A validation class with fewer groups than this gets a :class:`SmallValidationWarning`.
MIN_VALIDATION_GROUPS = 5
#: Largest accepted difference between a requested and an achieved fraction of images.
SIZE_TOLERANCE = 0.05
_PARTS = ("train", "val", "test")
_SHOW = 5  # names shown in an error message, then a count


class SmallValidationWarning(UserWarning):
    """A validation class holds fewer than :data:`MIN_VALIDATION_GROUPS` groups: the checkpoint
    and the threshold chosen on it rest on very few patients."""


def _first(items, n=_SHOW):
    """The first ``n`` of ``items`` (the message gives the count)."""
    return list(items)[:n]


def _source_groups(frame: pd.DataFrame, column: str) -> bool:
    return column == "group" and frame["group"].astype(str).str.startswith("source:").any()


def _group_labels(frame: pd.DataFrame, column: str) -> pd.Series:
    """Each group's stratification label, indexed by group: its most common label (ties: the first in
    sorted order); for source groups, which mix classes, the rarest class of the frame that the
    source holds, so that the sources holding a rare class are spread over the parts."""
    counts = frame.groupby([column, "label"]).size().reset_index(name="n")
    if _source_groups(frame, column):
        sizes = frame["label"].value_counts()
        rank = {c: i for i, c in enumerate(sorted(sizes.index, key=lambda c: (sizes[c], c)))}  # 0: the rarest
        counts["n"] = -counts["label"].map(rank)
    counts = counts.sort_values(["n", "label"], ascending=[False, True], kind="stable")
    return counts.drop_duplicates(column).set_index(column)["label"].sort_index()


def _sources(frame: pd.DataFrame) -> dict:
    """Images per class of each source, as ``{source: {class: n}}`` (sources of source groups only)."""
    table = frame.groupby(["source", "label"]).size().unstack(fill_value=0)
    return {str(s): {str(c): int(n) for c, n in row.items() if n} for s, row in table.iterrows()}


def describe_groups(frame: pd.DataFrame, column=None) -> str:
    """``groups_per_class={...}`` of a frame and, with source groups, ``images_per_source_and_class``
    (every source and its class counts): the ``Received:`` part of a too-few-groups message."""
    column = column or group_column(frame)
    text = f"groups_per_class={frame.groupby('label')[column].nunique().to_dict()}"
    if "source" in frame.columns and _source_groups(frame, column):
        text += f", images_per_source_and_class={_sources(frame)}"
    return text


def check_parts(split: pd.DataFrame, classes) -> None:
    """Raise ValueError when a part of ``split`` (``train``, ``val``, ``test``: its ``part`` column)
    has no image of one of ``classes``; with source groups the message names every source and its
    class counts."""
    for part in _PARTS:
        rows = split[split["part"] == part]
        absent = [c for c in classes if c not in set(rows["label"])]
        if absent:
            raise ValueError(
                f"Too few groups (patients, or sources) for this split: part {part!r} has no image of class "
                f"{absent}. Use fewer folds, larger parts, or another task. "
                f"Received: {describe_groups(split, group_column(split))}"
            )


def _check_validation(split: pd.DataFrame, classes, *, allow_small_validation: bool) -> None:
    """Refuse a validation class with fewer than 2 groups (unless allowed); warn below
    :data:`MIN_VALIDATION_GROUPS`."""
    column = group_column(split)
    val = split[split["part"] == "val"]
    counts = {c: int(val.loc[val["label"] == c, column].nunique()) for c in classes}
    fewest = min(counts.values())
    if fewest < 2 and not allow_small_validation:
        raise ValueError(
            "Expected at least 2 groups (patients) of every class in the validation part, which chooses "
            "the checkpoint and the threshold; use a larger val_size, or allow_small_validation=True "
            f"(--allow-small-validation) to accept it. Received: val_groups_per_class={counts}"
            + (f"; validation part: {describe_groups(val, column)}" if _source_groups(split, column) else "")
        )
    if fewest < MIN_VALIDATION_GROUPS:
        warnings.warn(SmallValidationWarning(
            f"The validation part has fewer than {MIN_VALIDATION_GROUPS} groups (patients) in a class: the "
            f"checkpoint and the threshold chosen on it are uncertain. Received: val_groups_per_class={counts}"
        ), stacklevel=4)


def _sample(labels: pd.Series, fractions: dict, seed) -> dict:
    """Assign groups to parts: per class (``labels``: group → label), shuffle the groups with
    ``seed`` and give each part of ``fractions`` (in order) ``round(fraction × n)`` of them, at least
    one while one is left for training; the rest is ``train``."""
    rng = np.random.default_rng(seed)
    part = {}
    for label in sorted(labels.unique()):
        groups = list(labels.index[labels == label])
        groups = [groups[i] for i in rng.permutation(len(groups))]
        start = 0
        for name, fraction in fractions.items():
            k = min(max(1, math.floor(fraction * len(groups) + 0.5)), len(groups) - start - 1)
            part.update(dict.fromkeys(groups[start:start + max(k, 0)], name))
            start += max(k, 0)
        part.update(dict.fromkeys(groups[start:], "train"))
    return part


def split_sizes(split: pd.DataFrame) -> dict:
    """The achieved sizes of a split: ``images`` and ``groups`` (fractions per part, rounded to 4
    digits) and ``counts`` (``{part: {"images": n, "groups": n}}``)."""
    column = group_column(split)
    n_images, n_groups = max(len(split), 1), max(int(split[column].nunique()), 1)
    counts = {p: {"images": int((split["part"] == p).sum()),
                  "groups": int(split.loc[split["part"] == p, column].nunique())} for p in _PARTS}
    return {"images": {p: round(c["images"] / n_images, 4) for p, c in counts.items()},
            "groups": {p: round(c["groups"] / n_groups, 4) for p, c in counts.items()}, "counts": counts}


def _require_groups(frame: pd.DataFrame, column: str, minimum: int, *, what: str) -> None:
    per_class = frame.groupby("label")[column].nunique()
    if len(per_class) and per_class.min() < minimum:
        raise ValueError(
            f"Too few groups (patients, or sources) for {what}: every class needs at least {minimum} groups. "
            f"Received: {describe_groups(frame, column)}"
        )


def _finish(frame, part, *, allow_small_validation) -> pd.DataFrame:
    """``frame`` with its ``part`` column, checked: every part every class, validation big enough."""
    out = frame.assign(part=part)
    classes = sorted(frame["label"].unique())
    check_parts(out, classes)
    _check_validation(out, classes, allow_small_validation=allow_small_validation)
    return out


def split_patients(frame: pd.DataFrame, *, val_size=0.15, test_size=0.15, seed=0,
                   allow_small_validation=False) -> pd.DataFrame:
    """Split images into train / val / test by group, stratified by each group's label.

    Each class's groups (those whose most common label it is; for source groups, the rarest class
    they hold) are shuffled with ``seed``;
    ``round(test_size × n)`` go to test and ``round(val_size × n)`` of the others to validation
    (at least one each while one is left for training). Sizes are fractions of groups; groups
    carry different numbers of images, so the image fractions are checked afterwards.

    Args:
        frame: A frame with ``image``, ``patient`` and ``label`` columns (and ``group`` when grouped),
            shape (n, ...).
        val_size: Fraction of groups for validation, in (0, 0.5).
        test_size: Fraction of groups for testing, in (0, 0.5).
        seed: Seed; the same seed and frame give the same split.
        allow_small_validation: Accept a validation class with fewer than 2 groups.

    Returns:
        A copy of ``frame`` with a ``part`` column (``train``, ``val``, ``test``);
        ``attrs["split_sizes"]`` holds :func:`split_sizes` plus ``requested``.

    Raises:
        ValueError: Sizes out of range, too few groups for every class in every part, or a
            validation class with fewer than 2 groups.

    Warns:
        UserWarning: An achieved image fraction differs from the request by more than
            :data:`SIZE_TOLERANCE`. SmallValidationWarning: a validation class has fewer than
            :data:`MIN_VALIDATION_GROUPS` groups.
    """
    for name, value in (("val_size", val_size), ("test_size", test_size)):
        if not 0 < float(value) < 0.5:
            raise ValueError(f"Expected {name} in (0, 0.5). Received: {name}={value!r}")
    require_columns(frame, ["image", "patient", "label"], source="frame")
    frame = frame.reset_index(drop=True)
    column = group_column(frame)
    _require_groups(frame, column, 3, what="a train / val / test split (one per part)")
    parts = _sample(_group_labels(frame, column), {"test": float(test_size), "val": float(val_size)}, seed)
    out = _finish(frame, frame[column].map(parts).to_numpy(dtype=object),
                  allow_small_validation=allow_small_validation)
    sizes = {**split_sizes(out), "requested": {"val": float(val_size), "test": float(test_size)}}
    off = {p: sizes["images"][p] for p in ("val", "test")
           if abs(sizes["images"][p] - sizes["requested"][p]) > SIZE_TOLERANCE}
    if off:
        warnings.warn(f"The split's image fractions differ from the request by more than {SIZE_TOLERANCE} "
                      f"(groups carry different numbers of images): achieved {sizes['images']}, "
                      f"groups {sizes['groups']}. Received: val_size={val_size}, test_size={test_size}",
                      stacklevel=2)
    out.attrs["split_sizes"] = sizes
    return out


def kfold_split(frame: pd.DataFrame, *, folds=5, fold=0, val_size=0.15, seed=0,
                allow_small_validation=False) -> pd.DataFrame:
    """Group-grouped, stratified k-fold split: fold ``fold`` is the test part (scikit-learn's
    ``StratifiedGroupKFold``); the validation part is sampled from that fold's training groups
    per class with ``seed`` (as :func:`split_patients`). With source groups it is
    leave-sources-out cross-validation.

    Args:
        frame: A frame with ``image``, ``patient`` and ``label`` columns (and ``group``), shape (n, ...).
        folds: Number of folds (>= 2).
        fold: Which fold is the test part, 0 <= fold < folds.
        val_size: Fraction of the training groups held out for validation.
        seed: Seed; the same seed gives the same folds.
        allow_small_validation: Accept a validation class with fewer than 2 groups.

    Returns:
        A copy of ``frame`` with a ``part`` column; ``attrs["split_sizes"]`` as :func:`split_sizes`.
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
    column = group_column(frame)
    _require_groups(frame, column, int(folds), what=f"{folds} folds")
    labels = _group_labels(frame, column)
    cv = StratifiedGroupKFold(n_splits=int(folds), shuffle=True, random_state=seed)
    groups = frame[column].astype(str).to_numpy()
    splits = list(cv.split(np.zeros(len(frame)), frame[column].map(labels).to_numpy(), groups=groups))
    rest, test = splits[int(fold)]
    rest_groups = set(frame[column].iloc[rest])
    parts = _sample(labels[labels.index.isin(rest_groups)], {"val": float(val_size)}, seed + 1 + int(fold))
    part = frame[column].map(parts).to_numpy(dtype=object)
    part[test] = "test"
    out = _finish(frame, part, allow_small_validation=allow_small_validation)
    out.attrs["split_sizes"] = {**split_sizes(out), "requested": {"val": float(val_size), "folds": int(folds)}}
    return out


def _official_parts(frame: pd.DataFrame, column: str) -> pd.Series:
    """The ``official_part`` of each row, checked; a group found in two official parts (a patient, or
    copies of one image, listed in two parts) keeps only its rows of the later part (test, then val):
    the published test part stays whole and training loses the leaking rows (``"drop"``)."""
    if "official_part" not in frame.columns or not frame["official_part"].isin(_PARTS).any():
        layout = frame.attrs.get("source", "this dataset's")
        raise ValueError("Expected a dataset with its own split (the covidx or covid-qu-ex layout) for the official "
                         f"split (--official-split); the {layout} layout has none. Received: layout={layout!r}")
    part = frame["official_part"].astype(object)
    bad = sorted(set(part.dropna()) - set(_PARTS))
    if bad or part.isna().any():
        raise ValueError("Expected official parts train/val/test for every image. "
                         f"Received: parts={bad or ['<blank>']}")
    rank = part.map({"train": 0, "val": 1, "test": 2})
    last = rank.groupby(frame[column]).transform("max")
    leaking = rank < last
    if leaking.any():
        warnings.warn(
            f"{int(leaking.sum())} images of the official training or validation part belong to a group (patient, or "
            f"copies of one image) that also has images in a later official part; they are left out: "
            f"{_first(frame.loc[leaking, 'image'])}", stacklevel=3)
    return part.where(~leaking, "drop")


def official_split(frame: pd.DataFrame, *, val_size=0.15, seed=0, allow_small_validation=False) -> pd.DataFrame:
    """The dataset's own split (its ``official_part`` column): the official test part is the test
    part; the official validation part, where the dataset has one, is the validation part, else
    ``round(val_size × n)`` of each class's training groups are drawn with ``seed`` (as
    :func:`split_patients`). Rows of a group that also lies in a later official part are left out.

    Args:
        frame: A frame with ``image``, ``patient``, ``label`` and ``official_part`` (and ``group``), shape (n, ...).
        val_size: Fraction of the training groups for validation when the dataset has no validation part.
        seed: Seed of that draw.
        allow_small_validation: Accept a validation class with fewer than 2 groups.

    Returns:
        A copy of ``frame`` (shape (m, ...), m ≤ n) with a ``part`` column; ``attrs["split_sizes"]`` as
        :func:`split_sizes`, ``requested`` ``{"official": True, "val": val_size or "official"}``.

    Raises:
        ValueError: No official split, no official test part, or a part without a class.
    """
    if not 0 < float(val_size) < 0.5:
        raise ValueError(f"Expected val_size in (0, 0.5). Received: val_size={val_size!r}")
    require_columns(frame, ["image", "patient", "label"], source="frame")
    frame = frame.reset_index(drop=True)
    column = group_column(frame)
    part = _official_parts(frame, column)
    if not (part == "test").any():
        raise ValueError("Expected an official test part (COVIDx: test.txt; COVID-QU-Ex: Test/) for the official "
                         f"split. Received: parts={sorted(set(part))}")
    keep = (part != "drop").to_numpy()
    frame, part = frame[keep].reset_index(drop=True), part[keep].reset_index(drop=True)
    has_val = bool((part == "val").any())
    if not has_val:
        train = frame[part == "train"]
        _require_groups(train, column, 2, what="a validation part drawn from the official training part")
        drawn = _sample(_group_labels(train, column), {"val": float(val_size)}, seed)
        part = part.where(part != "train", frame[column].map(drawn).fillna("train"))
    out = _finish(frame, part.to_numpy(dtype=object), allow_small_validation=allow_small_validation)
    out.attrs["split_sizes"] = {**split_sizes(out), "requested": {"official": True,
                                                                   "val": "official" if has_val else float(val_size)}}
    return out


def split_frame(frame: pd.DataFrame, *, folds=None, fold=0, val_size=0.15, test_size=0.15, seed=0,
                allow_small_validation=False, official=False) -> pd.DataFrame:
    """The split the split options ask for: the dataset's own split (:func:`official_split`) with
    ``official``, fold ``fold`` of :func:`kfold_split` when ``folds`` is set, else one
    :func:`split_patients` train / val / test split (``test_size`` is then unused in k-fold and
    official mode: the test part is the fold, or the dataset's)."""
    if official:
        if folds:
            raise ValueError("Expected no folds with the official split (its test part is the dataset's). "
                             f"Received: folds={folds!r}")
        return official_split(frame, val_size=val_size, seed=seed, allow_small_validation=allow_small_validation)
    if folds:
        return kfold_split(frame, folds=folds, fold=fold, val_size=val_size, seed=seed,
                           allow_small_validation=allow_small_validation)
    return split_patients(frame, val_size=val_size, test_size=test_size, seed=seed,
                          allow_small_validation=allow_small_validation)


def _with_groups(split: pd.DataFrame) -> pd.DataFrame:
    """``split`` with ``group`` (default: the patient) and ``hash`` (default: blank) columns."""
    out = split.copy()
    if "group" not in out.columns:
        out["group"] = out["patient"]
    if "hash" not in out.columns:
        out["hash"] = ""
    return out


def write_split(split: pd.DataFrame, path) -> Path:
    """Write a split as CSV with the columns :data:`SPLIT_COLUMNS` (a frame without ``group`` or
    ``hash`` gets ``group`` = ``patient`` and a blank ``hash``)."""
    require_columns(split, ["image", "patient", "label", "part"], source="split")
    from ..atomic import write_text

    return write_text(path, _with_groups(split)[list(SPLIT_COLUMNS)].to_csv(index=False))


def _check_split_file(split: pd.DataFrame, path) -> None:
    """Unique images; one part per patient and per group."""
    repeated = split.loc[split["image"].duplicated(keep=False), "image"].unique()
    if len(repeated):
        raise ValueError(f"Expected each image once in the split file {path}; {len(repeated)} images are listed "
                         f"more than once. Received: images={_first(repeated)}")
    for column in ("patient", "group"):
        parts = split.groupby(column)["part"].agg(lambda s: sorted(set(s)))
        spread = parts[parts.map(len) > 1]
        if len(spread):
            raise ValueError(
                f"Expected one part per {column} in the split file {path} (a {column} in two parts puts its "
                f"images in training and evaluation); {len(spread)} {column}s are in more than one part. "
                f"Received: {column}s={dict(_first(spread.items()))}"
            )


def read_split(path) -> pd.DataFrame:
    """Read a split written by :func:`write_split` (or by covidxr before groups existed), checked.

    Returns:
        The columns :data:`SPLIT_COLUMNS`, as strings.

    Raises:
        ValueError: Missing columns, a part other than train/val/test, an image listed twice, or a
            patient or group in two parts (the message names them).
    """
    split = read_csv(Path(path))
    require_columns(split, ["image", "patient", "label", "part"], source=str(path))
    bad = sorted(set(split["part"]) - set(_PARTS))
    if bad:
        raise ValueError(f"Expected parts train/val/test in {path}. Received: part={bad}")
    split = _with_groups(split)
    _check_split_file(split, path)
    return split[list(SPLIT_COLUMNS)]


def split_from_file(frame: pd.DataFrame, path, *, require_all=False) -> pd.DataFrame:
    """The rows of ``frame`` that the split CSV ``path`` names, with its ``part`` column, checked.

    :func:`covidxr.data.read_split` checks the file itself (unique images, one part per patient and
    per group); here its labels must agree with the dataset's, and every group of the *current*
    dataset (:func:`covidxr.data.groups.group_column`: a copy of an image under another patient id
    merges the two) must lie in one part.

    Args:
        frame: The dataset, grouped, shape (n, ...).
        path: A ``split.csv``.
        require_all: Every image of the file must be in ``frame`` (a resumed run's own split);
            else images the frame lacks are left out.

    Raises:
        ValueError: A check fails; the message names the images, patients or groups.
    """
    file = read_split(path).set_index("image")
    parts = file["part"]
    if require_all:
        missing = sorted(set(parts.index) - set(frame["image"]))
        if missing:
            raise ValueError(
                f"Expected the dataset to hold every image of the run's split.csv; {len(missing)} are gone "
                f"(the dataset changed since the run started). Received: missing={missing[:3]}"
            )
    split = frame[frame["image"].isin(parts.index)].copy()
    split["part"] = split["image"].map(parts)
    _check_against_dataset(split, file["label"], path)
    return split.reset_index(drop=True)


def _check_against_dataset(split: pd.DataFrame, labels: pd.Series, path) -> None:
    """The split file's labels agree with the dataset's; one part per current dataset group."""
    theirs = split["image"].map(labels)
    wrong = split.assign(file=theirs)[theirs != split["label"]]
    if len(wrong):
        shown = dict(_first((r.image, {"file": r.file, "dataset": r.label}) for r in wrong.itertuples()))
        raise ValueError(
            f"Expected the labels of the split file {path} to agree with the dataset's (was it made for "
            f"another task, or did the labels change?); {len(wrong)} images disagree. Received: images={shown}"
        )
    column = group_column(split)
    parts = split.groupby(column).agg(parts=("part", lambda s: sorted(set(s))),
                                      patients=("patient", lambda s: sorted(set(map(str, s)))))
    spread = parts[parts["parts"].map(len) > 1]
    if len(spread):
        raise ValueError(
            f"Expected one part per split group of the dataset; {len(spread)} groups of the split file {path} "
            f"are in more than one part (their patients share an image, e.g. a copy under another patient id, "
            f"or a source). Received: groups="
            f"{dict(_first((g, {'patients': r.patients, 'parts': r.parts}) for g, r in spread.iterrows()))}"
        )
