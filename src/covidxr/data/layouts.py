"""Two published benchmark layouts, read into the same frame as the other readers, with their
official split in an ``official_part`` column (``train`` / ``val`` / ``test``).
Must not decode images or write files; it never writes into the dataset folder.

* **COVIDx** (COVID-Net's benchmark, https://github.com/lindawangg/COVID-Net, ``docs/COVIDx.md``):
  list files ``train.txt`` / ``test.txt`` (optionally ``val.txt``), or a versioned pair such as
  ``train_COVIDx8A.txt`` / ``test_COVIDx8A.txt``, whose lines are space-separated
  ``patient_id filename label [source]``; the images sit in ``train/``, ``val/`` and ``test/``.
  Labels are ``positive`` / ``negative`` (the "B" files) or ``COVID-19`` / ``pneumonia`` /
  ``normal`` (the "A" files, COVIDx5 and earlier); some older lists (e.g. COVIDx7A) have no source column.
* **COVID-QU-Ex** (Tahir et al. 2021, https://www.kaggle.com/datasets/anasmohammedtahir/covidqu):
  ``{Train,Val,Test}/{COVID-19,Non-COVID,Normal}/images/*.png`` with the lung masks, under the
  same file names, in ``lung masks/`` beside ``images/`` (the ``mask`` column). It has no patient
  ids: each image is its own patient (with the readers' warning).

Labels go through :func:`covidxr.data.tasks.alias_category` (the one mapping table), except
COVIDx's ``negative``, which means "not COVID-19" (normal or pneumonia), so it is ``other``:
COVIDx's B files serve ``covid-vs-rest`` only.

Each layout registers a detector and a reader with :func:`covidxr.data.readers.register_layout`.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .notices import DataWarning
from .readers import finish_frame, patient_ids, safe_path, register_layout
from .tasks import IMAGE_EXTENSIONS, LABEL_ALIASES, alias_category, get_task

__all__ = ["COVIDX_LABELS", "COVID_QU_EX_PARTS", "covidx_lists", "is_covid_qu_ex", "is_covidx",
           "read_covid_qu_ex", "read_covidx"]

#: COVIDx labels (lower case) to the alias they are read as: "negative" is not "normal" here.
COVIDX_LABELS = {"positive": "covid", "negative": "other", "covid-19": "covid-19", "pneumonia": "pneumonia",
                 "normal": "normal"}
#: COVID-QU-Ex part folders (matched case-insensitively) and the official part each one is.
COVID_QU_EX_PARTS = {"train": "train", "val": "val", "test": "test"}
_LIST = re.compile(r"^(train|val|test)(_covidx.*)?\.txt$", re.IGNORECASE)
_SHOW = 5


# --------------------------------------------------------------------------- COVIDx

def covidx_lists(path) -> dict:
    """The COVIDx list files that ``path`` names: ``{"train": Path, "test": Path, "val": Path}`` (the
    parts found; ``train`` always).

    Args:
        path: The dataset folder, or one of its list files (to choose a version when the folder
            holds several, e.g. ``train_COVIDx8A.txt`` and ``train_COVIDx8B.txt``).

    Raises:
        ValueError: No train list, or several versions and a folder given.
    """
    path = Path(path)
    if path.is_file():
        match = _LIST.match(path.name)
        if not match:
            raise ValueError(f"Expected a COVIDx list file (train.txt, test.txt, train_COVIDx*.txt ...). "
                             f"Received: data_dir={str(path)!r}")
        root, versions = path.parent, [match.group(2) or ""]
    else:
        root = path
        found = [_LIST.match(p.name) for p in root.iterdir() if p.is_file()] if root.is_dir() else []
        versions = sorted({m.group(2) or "" for m in found if m and m.group(1).lower() == "train"})
        if len(versions) > 1:
            names = [f"train{v}.txt" for v in versions]
            raise ValueError(f"Expected one COVIDx version in {str(root)!r}; it holds several: pass the train list "
                             f"of the one to read as --data-dir, e.g. {str(root / names[0])!r}. Received: "
                             f"train_lists={names}")
    suffix = versions[0] if versions else ""
    by_name = {q.name.lower(): q for q in root.iterdir() if q.is_file()} if root.is_dir() else {}
    lists = {part: by_name[f"{part}{suffix}.txt".lower()] for part in ("train", "val", "test")
             if f"{part}{suffix}.txt".lower() in by_name}
    if "train" not in lists:
        raise ValueError(f"Expected a COVIDx train list (train.txt or train_COVIDx*.txt) in {str(root)!r}. "
                         f"Received: data_dir={str(path)!r}")
    return lists


def is_covidx(path) -> bool:
    """Whether ``path`` is a COVIDx folder (it holds a train list) or one of its list files."""
    path = Path(path)
    if path.is_file():
        return bool(_LIST.match(path.name))
    return path.is_dir() and any(p.is_file() and _LIST.match(p.name) and p.name.lower().startswith("train")
                                 for p in path.iterdir())


def _parse_line(tokens: list[str], *, where: str) -> tuple[str, str, str, str]:
    """``(patient, filename, label, source)`` of one list line's whitespace-separated tokens; a file
    name with spaces keeps them (single spaces); a line without a source column gets a blank one."""
    if len(tokens) >= 3 and tokens[-1].lower() in COVIDX_LABELS:
        return tokens[0], " ".join(tokens[1:-1]), tokens[-1], ""
    if len(tokens) >= 4 and tokens[-2].lower() in COVIDX_LABELS:
        return tokens[0], " ".join(tokens[1:-2]), tokens[-2], tokens[-1]
    raise ValueError(f"Expected a COVIDx line 'patient_id filename label [source]' with a label of "
                     f"{sorted(COVIDX_LABELS)} at {where}. Received: line={' '.join(tokens)!r}")


def _read_list(path: Path, part: str) -> pd.DataFrame:
    """The rows of one COVIDx list file (blank lines skipped), with their official part."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        tokens = line.split()
        if tokens:
            rows.append((*_parse_line(tokens, where=f"{path.name}:{number}"), part))
    return pd.DataFrame(rows, columns=["pid", "filename", "finding", "source", "official_part"])


def _existing(rows: pd.DataFrame, root: Path, folders: list[str], *, what: str) -> pd.DataFrame:
    """``rows`` whose image (``folders`` row by row, then ``filename``) exists, with ``image`` and
    ``path``; a warning counts the missing ones and the images listed twice (first row kept)."""
    paths = [safe_path(safe_path(root, f, column="folder"), name, column="filename")
             for f, name in zip(folders, rows["filename"])]
    exists = np.array([p.is_file() for p in paths], dtype=bool)
    rows = rows.assign(path=[str(p) for p in paths], image=[p.relative_to(root).as_posix() for p in paths])
    if (~exists).any():
        missing = rows.loc[~exists, "image"].tolist()
        warnings.warn(DataWarning(f"{len(missing)} of {len(rows)} rows of {what} name an image that is not there; "
                                  f"skipped: {missing[:_SHOW]}", count=len(missing),
                                  what="rows name a missing image (skipped)"), stacklevel=3)
    rows = rows[exists]
    repeated = rows["image"].duplicated()
    if repeated.any():
        warnings.warn(DataWarning(f"{int(repeated.sum())} rows of {what} list an image already listed; kept the "
                                  f"first row of each: {rows.loc[repeated, 'image'].tolist()[:_SHOW]}",
                                  count=int(repeated.sum()), what="rows repeat an image (first row kept)"),
                      stacklevel=3)
    return rows[~repeated]


def read_covidx(path, *, task=None) -> pd.DataFrame:
    """Read a COVIDx dataset: its list files and the images in ``train/``, ``val/``, ``test/``.

    Patient ids and sources come from the lists; an id is prefixed with its source
    (``"rsna/<id>"``), since the sources number their patients independently.

    Args:
        path: The dataset folder, or one of its train list files (see :func:`covidx_lists`).
        task: A task name, or None to keep categories as labels.

    Returns:
        A frame with :data:`~covidxr.data.tasks.FRAME_COLUMNS` and ``official_part`` (the list each
        image comes from), one row per listed image that exists.

    Raises:
        ValueError: No train list, several versions, a line that is not ``patient filename label
            [source]``, no listed image found, or a task whose classes the labels lack (the B files'
            ``positive``/``negative`` have no normal class).
    """
    lists = covidx_lists(path)
    root = lists["train"].parent
    rows = pd.concat([_read_list(p, part) for part, p in lists.items()], ignore_index=True)
    names = ", ".join(p.name for p in lists.values())
    rows = _existing(rows, root, rows["official_part"].tolist(), what=names)
    if rows.empty:
        raise ValueError(f"Expected the images of {names} in {str(root)!r} (folders "
                         f"{', '.join(p + '/' for p in lists)}); none of them is there. "
                         f"Received: data_dir={str(path)!r}")
    labels = rows["finding"].str.lower()
    task = None if task is None else get_task(task).name
    if labels.isin(["positive", "negative"]).all() and task in ("covid-vs-normal", "three-class"):
        raise ValueError(f"Expected labels COVID-19 / pneumonia / normal for task {task!r}; {names} label images "
                         "positive / negative only (no normal class): use task 'covid-vs-rest' or the A lists. "
                         f"Received: task={task!r}")
    source = rows["source"].replace("", np.nan)
    patients = [f"{s}/{p}" if s else p for s, p in zip(rows["source"], rows["pid"])]
    frame = pd.DataFrame({
        "image": rows["image"].to_numpy(), "path": rows["path"].to_numpy(), "patient": patients,
        "sex": np.nan, "age": np.nan, "view": np.nan, "modality": "X-ray",
        "finding": rows["finding"].to_numpy(), "category": [alias_category(COVIDX_LABELS[v]) for v in labels],
        "source": source.to_numpy(), "license": np.nan, "official_part": rows["official_part"].to_numpy(),
    })
    return finish_frame(frame, task, dropped_unlabelled=0, source="covidx")


# --------------------------------------------------------------------------- COVID-QU-Ex

def _children(folder: Path) -> dict:
    """Sub-folders of ``folder`` by lower-case name (hidden ones left out)."""
    if not folder.is_dir():
        return {}
    return {p.name.lower(): p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def is_covid_qu_ex(path) -> bool:
    """Whether ``path`` holds ``Train``/``Val``/``Test`` folders with class folders holding ``images/``."""
    parts = _children(Path(path))
    return any("images" in _children(c) for name, p in parts.items() if name in COVID_QU_EX_PARTS
               for c in _children(p).values())


def _qu_ex_rows(root: Path) -> list[dict]:
    """One dict per image of a COVID-QU-Ex tree: image, path, finding (the class folder), category,
    official part and lung mask (None when the mask file is missing)."""
    rows = []
    for name, part_dir in _children(root).items():
        if name not in COVID_QU_EX_PARTS:
            continue
        for class_dir in _children(part_dir).values():
            images = _children(class_dir).get("images")
            if images is None:
                continue
            category = alias_category(class_dir.name)
            if category is None:
                raise ValueError(f"Unknown class folder name; expected one of the aliases {sorted(LABEL_ALIASES)}. "
                                 f"Received: folder={class_dir.relative_to(root).as_posix()!r}")
            masks = _children(class_dir).get("lung masks")
            for path in sorted(images.iterdir()):
                if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
                    continue
                image = path.relative_to(root).as_posix()
                mask = masks / path.name if masks is not None else None
                rows.append({"image": image, "path": str(safe_path(root, image, column="file")),
                             "finding": class_dir.name, "category": category, "official_part": COVID_QU_EX_PARTS[name],
                             "mask": str(mask) if mask is not None and mask.is_file() else np.nan})
    return rows


def read_covid_qu_ex(root, *, task=None) -> pd.DataFrame:
    """Read a COVID-QU-Ex tree (the ``Lung Segmentation Data`` or ``Infection Segmentation Data``
    folder that holds ``Train``, ``Val`` and ``Test``).

    Args:
        root: That folder.
        task: A task name, or None to keep categories as labels.

    Returns:
        A frame with :data:`~covidxr.data.tasks.FRAME_COLUMNS`, ``official_part`` and ``mask`` (the
        lung mask file, NaN when missing, with a warning counting them); each image is its own patient.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: No image under ``{Train,Val,Test}/<class>/images``, or an unknown class folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Expected a COVID-QU-Ex folder (Train/, Val/, Test/). Received: root={str(root)!r}")
    rows = _qu_ex_rows(root)
    if not rows:
        raise ValueError(f"Expected images in {{Train,Val,Test}}/<class>/images under {str(root)!r} (the Kaggle "
                         "download nests them: point at '.../Lung Segmentation Data/Lung Segmentation Data'). "
                         f"Received: root={str(root)!r}")
    frame = pd.DataFrame(rows)
    no_mask = int(frame["mask"].isna().sum())
    if no_mask:
        warnings.warn(DataWarning(f"{no_mask} of {len(frame)} images of {root} have no lung mask (lung masks/<same "
                                  f"name>): {frame.loc[frame['mask'].isna(), 'image'].tolist()[:_SHOW]}",
                                  count=no_mask, what="images without a lung mask"), stacklevel=2)
    patients, blank = patient_ids([""] * len(frame), frame["image"], source=str(root))
    frame["patient"] = patients
    for column in ("sex", "age", "view", "license", "source"):
        frame[column] = np.nan
    frame["modality"] = "X-ray"
    out = finish_frame(frame, task, dropped_unlabelled=0, source="covid-qu-ex")
    out.attrs["blank_patient_ids"] = blank
    return out


register_layout("covidx", detect=is_covidx, read=read_covidx)
register_layout("covid-qu-ex", detect=is_covid_qu_ex, read=read_covid_qu_ex)
