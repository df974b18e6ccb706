"""Dataset readers: three layouts into one frame with one row per usable image.
Must not decode images or write files; it never writes into the dataset folder.

* the COVID-19 image data collection (``metadata.csv`` + ``images/``), flat findings
  ("COVID-19, ARDS") as in the 2020 snapshot or hierarchical ones
  ("Pneumonia/Viral/COVID-19") as upstream writes them now;
* one folder per class (``root/<class>/*.png``), as most public collections ship;
* a CSV manifest with an image, a label and (optionally) a patient column;
* COVIDx and COVID-QU-Ex (:mod:`covidxr.data.layouts`, registered by :func:`register_layout`).

The frame's columns are :data:`~covidxr.data.tasks.FRAME_COLUMNS`. :func:`load_dataset` reads
any of them (the frame summaries are in :mod:`covidxr.data.summaries`).
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .notices import DataWarning, summarise
from .tasks import (FRAME_COLUMNS, FRONTAL_VIEWS, IMAGE_EXTENSIONS, LABEL_ALIASES, UNKNOWN_VIEW, UNLABELLED,
                    alias_category, finding_category, get_task, none_if_blank, parse_views, warn_normalised)

__all__ = [
    "DEFAULT_DATA_DIR", "LAYOUTS", "OPTIONAL_COLUMNS", "detect_layout", "finish_frame", "load_dataset",
    "patient_ids", "read_csv", "read_folders", "read_manifest", "read_metadata", "register_layout",
    "require_columns", "resolve_data_dir", "safe_path",
]

#: Where the data lives when neither ``--data-dir`` nor ``COVIDXR_DATA_DIR`` says.
DEFAULT_DATA_DIR = Path("data/raw/covid-chestxray-dataset")


def resolve_data_dir(data_dir=None) -> Path:
    """Where the data lives: ``data_dir``, else ``$COVIDXR_DATA_DIR``, else
    :data:`DEFAULT_DATA_DIR` (relative to the working directory)."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get("COVIDXR_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return DEFAULT_DATA_DIR


@functools.lru_cache(maxsize=16)
def _resolved(root: Path) -> Path:
    """``root.resolve()``, once per dataset folder (not once per row)."""
    return root.resolve()


def safe_path(root: Path, relative: str, *, column: str) -> Path:
    """Join ``root`` and a file name from a table, refusing anything that leaves ``root``."""
    text = str(relative).strip()
    if not text or text.lower() == "nan":
        raise ValueError(f"Expected a file name in column {column!r}. Received: {column}={relative!r}")
    if os.path.isabs(text) or text.startswith(("/", "\\")) or (len(text) > 1 and text[1] == ":"):
        raise ValueError(f"Expected a path relative to {str(root)!r}, not an absolute path. "
                         f"Received: {column}={relative!r}")
    parts = Path(text.replace("\\", "/")).parts
    if ".." in parts:
        raise ValueError(f"Expected a path inside {str(root)!r}; '..' is not allowed. Received: {column}={relative!r}")
    path = root / Path(*parts)
    # A symbolic link may still lead out of the folder: compare resolved paths.
    if path.exists():
        real_root = _resolved(root)
        real = path.resolve()
        if real != real_root and real_root not in real.parents:
            raise ValueError(f"Expected a file inside {str(root)!r}; this one resolves outside it "
                             f"(symbolic link?). Received: {column}={relative!r}")
    return path


def require_columns(frame: pd.DataFrame, required, *, source) -> None:
    """Raise ValueError naming the columns of ``required`` that ``frame`` (``source``) lacks."""
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(f"{source} lacks required column(s) {missing}; it has {list(frame.columns)}. "
                         f"Received: missing={missing}")


def read_csv(path: Path) -> pd.DataFrame:
    """Read a CSV file as strings (no NA parsing): UTF-8, else Latin-1 with a warning."""
    if not path.is_file():
        raise FileNotFoundError(f"Expected a CSV file. Received: path={str(path)!r}")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError:
        warnings.warn(DataWarning(f"{path} is not valid UTF-8; reading it as Latin-1.",
                                  what=f"{path.name} read as Latin-1"), stacklevel=3)
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="latin-1")
    except pd.errors.EmptyDataError as err:
        raise ValueError(f"Expected a CSV file with a header row. Received: path={str(path)!r} (empty)") from err


def _source(row) -> str:
    """Where an image came from: the URL's host, else the DOI's prefix, else the location."""
    url = str(row.get("url", "") or "").strip()
    if "://" in url:
        host = url.split("://", 1)[1].split("/", 1)[0].lower()
        host = host[4:] if host.startswith("www.") else host
        if host:
            return host
    doi = str(row.get("doi", "") or "").strip()
    if doi:
        return "doi:" + doi.split("/", 1)[0]
    return str(row.get("location", "") or "unknown").strip() or "unknown"


#: Columns a layout may add after :data:`FRAME_COLUMNS`: its own split part (train/val/test), a lung mask file.
OPTIONAL_COLUMNS = ("official_part", "mask")


def finish_frame(frame: pd.DataFrame, task, *, dropped_unlabelled: int, source: str) -> pd.DataFrame:
    """Apply a task's labels (if any), order the columns and report what was dropped."""
    frame = frame.reset_index(drop=True)
    frame.attrs["dropped_unlabelled"] = int(dropped_unlabelled)
    frame.attrs["source"] = source
    columns = [*FRAME_COLUMNS, *(c for c in OPTIONAL_COLUMNS if c in frame.columns)]
    if task is None:
        frame["label"] = frame["category"]
        return frame[columns]
    task = get_task(task)
    frame = frame[frame["category"].isin(list(task.mapping))].copy()
    frame["label"] = frame["category"].map(task.mapping)
    frame = frame.reset_index(drop=True)
    frame.attrs.update(dropped_unlabelled=int(dropped_unlabelled), source=source, task=task.name)
    present = set(frame["label"])
    empty = [c for c in task.classes if c not in present]
    if empty:
        raise ValueError(
            f"Task {task.name!r} needs images of every class {list(task.classes)}, but after "
            f"filtering none are left for {empty}. Received: class_counts="
            f"{frame['label'].value_counts().to_dict()}"
        )
    return frame[columns]


def _filter_rows(raw: pd.DataFrame, *, modality, views):
    """The metadata rows (deduplicated, optional columns added, cells stripped) of
    ``modality`` and ``views`` that carry a label, with a ``category`` column; and the findings
    dropped as unlabelled, ``{finding: rows}``."""
    raw = raw.drop_duplicates()
    for column in ("sex", "age", "view", "modality", "folder", "url", "doi", "location", "license"):
        if column not in raw.columns:
            raw[column] = ""
    raw = raw.map(lambda v: v.strip() if isinstance(v, str) else v)

    if modality is not None:
        raw = raw[raw["modality"].str.lower() == str(modality).lower()]
    if views is not None:
        view = raw["view"].str.lower()
        no_view = view.isin(UNLABELLED)
        keep = view.isin([v.lower() for v in views if v != UNKNOWN_VIEW])
        if UNKNOWN_VIEW in views:
            keep |= no_view
        else:
            left_out = int((no_view & raw["finding"].map(finding_category).notna()).sum())
            if left_out:
                warnings.warn(DataWarning(f"{left_out} rows have no view and are left out by the view filter; add "
                                          f"'{UNKNOWN_VIEW}' to --views to keep them (views={','.join(views)}).",
                                          count=left_out, what="rows without a view (left out)"), stacklevel=4)
        raw = raw[keep]

    category = raw["finding"].map(finding_category)
    warn_normalised(raw["finding"], source="metadata.csv", stacklevel=5)
    unlabelled = raw.loc[category.isna(), "finding"].value_counts().to_dict()
    return raw.assign(category=category)[category.notna()], unlabelled


def _resolve_files(raw: pd.DataFrame, root: Path, *, strict_files):
    """The rows whose image file exists (first row of each file), with a ``path`` column;
    and how many rows name a missing file. Warns (or raises, ``strict_files``) about missing
    files, then warns about files listed twice."""
    paths, exists = [], []
    for folder, name in zip(raw["folder"], raw["filename"]):
        folder = folder or "images"
        base = safe_path(root, folder, column="folder")
        path = safe_path(base, name, column="filename")
        paths.append(path)
        exists.append(path.is_file())
    raw = raw.assign(path=[str(p) for p in paths])
    exists = np.asarray(exists, dtype=bool)
    missing = int((~exists).sum())
    if missing:
        message = f"{missing} of {len(raw)} metadata rows name an image that is not in {root}; skipped."
        if strict_files:
            raise FileNotFoundError(message + f" Received: missing={missing}")
        warnings.warn(DataWarning(message, count=missing, what="metadata rows name a missing image (skipped)"),
                      stacklevel=3)
    raw = raw[exists]
    repeated = raw["path"].duplicated()
    if repeated.any():
        names = sorted(set(raw.loc[repeated, "filename"]))
        warnings.warn(DataWarning(
            f"{int(repeated.sum())} metadata rows list an image already listed (possibly under "
            f"another patient id); kept the first row of each: {names[:5]}",
            count=int(repeated.sum()), what="metadata rows repeat an image (first row kept)"), stacklevel=3)
    return raw[~repeated], missing


def patient_ids(patients, images, *, source) -> tuple[np.ndarray, int]:
    """Patient ids with every blank one (empty or spaces) replaced by ``"image:<image>"``, so
    that each such image is its own patient; and how many were blank (warned about once)."""
    patients = np.asarray([str(p) for p in patients], dtype=object)
    blank = np.array([not p.strip() for p in patients], dtype=bool)
    if blank.any():
        patients[blank] = [f"image:{image}" for image in np.asarray(images, dtype=object)[blank]]
        warnings.warn(DataWarning(
            f"{int(blank.sum())} of {len(patients)} rows of {source} have a blank patient id: each such image is "
            "treated as its own patient, so leakage between split parts is likely.",
            count=int(blank.sum()), what="rows without a patient id (each image its own patient)"), stacklevel=4)
    return patients, int(blank.sum())


def _metadata_frame(raw: pd.DataFrame, root: Path) -> pd.DataFrame:
    """The reader's frame (:data:`FRAME_COLUMNS` but ``label``) of resolved metadata rows."""
    images = [str(Path(p).relative_to(root).as_posix()) for p in raw["path"]]
    patients, blank = patient_ids(raw["patientid"], images, source=str(root / "metadata.csv"))
    frame = pd.DataFrame({
        "image": images,
        "path": raw["path"].to_numpy(),
        "patient": patients,
        "sex": raw["sex"].replace("", np.nan).to_numpy(),
        "age": pd.to_numeric(raw["age"], errors="coerce").to_numpy(),
        "view": raw["view"].replace("", np.nan).to_numpy(),
        "modality": raw["modality"].replace("", np.nan).to_numpy(),
        "finding": raw["finding"].to_numpy(),
        "category": raw["category"].to_numpy(),
        "source": [_source(r) for r in raw.to_dict("records")],
        "license": raw["license"].replace("", np.nan).to_numpy(),
    })
    frame.attrs["blank_patient_ids"] = blank
    return frame


def read_metadata(
    data_dir=None, *, task=None, modality="X-ray", views=FRONTAL_VIEWS, strict_files=False
) -> pd.DataFrame:
    """Read the COVID-19 image data collection (``metadata.csv`` + ``images/``).

    Args:
        data_dir: The collection's root folder (see :func:`resolve_data_dir`).
        task: A task name from :data:`TASKS`, or None to keep every labelled row with
            ``label`` = its category (what EDA wants).
        modality: Keep rows of this modality ("X-ray", "CT"); None keeps all.
        views: View names to keep (default: frontal); None or "all" keeps all; the token
            ``"unknown"`` keeps rows without a view (a warning counts the labelled ones left out
            otherwise).
        strict_files: Raise instead of warning when a listed image is missing.

    Returns:
        A frame of shape (n_images, len(FRAME_COLUMNS)) with one row per usable image.
        ``frame.attrs`` holds ``dropped_unlabelled`` and ``missing_files`` counts.

    Raises:
        FileNotFoundError: ``metadata.csv`` is absent.
        ValueError: Missing columns, unknown view or task, a file name that leaves the
            dataset folder, or a class left empty.
    """
    root = resolve_data_dir(data_dir)
    if task is not None:
        task = get_task(task)
    views = parse_views(views)
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise FileNotFoundError(
            f"Expected the collection's metadata.csv in {str(root)!r}; run `covidxr download` "
            f"or pass --data-dir. Received: data_dir={str(root)!r}"
        )
    raw = read_csv(meta)
    raw.columns = [c.strip() for c in raw.columns]
    require_columns(raw, ["patientid", "finding", "filename"], source=str(meta))
    raw, unlabelled = _filter_rows(raw, modality=modality, views=views)
    dropped = sum(unlabelled.values())
    raw, missing = _resolve_files(raw, root, strict_files=strict_files)
    frame = _metadata_frame(raw, root)
    blank = frame.attrs["blank_patient_ids"]
    out = finish_frame(frame, task, dropped_unlabelled=dropped, source="metadata")
    out.attrs.update(missing_files=missing, blank_patient_ids=blank, unlabelled_findings=unlabelled)
    return out


def read_folders(root, *, task=None) -> pd.DataFrame:
    """Read a one-folder-per-class collection (``root/<class>/*.png|jpg|...``).

    Folder names map to categories through :data:`LABEL_ALIASES`. Such collections carry
    no patient ids, so each image becomes its own patient (with a warning: a
    patient-level split is then impossible and leakage between parts is likely), and no
    sources (``source`` is blank: ``group_by="source"`` is refused).

    Args:
        root: The folder that holds one sub-folder per class.
        task: A task name, or None to keep categories as labels.

    Returns:
        A frame with :data:`FRAME_COLUMNS`, one row per image file.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Expected a folder of class folders. Received: root={str(root)!r}")
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        category = alias_category(folder.name)
        if category is None:
            raise ValueError(
                f"Unknown class folder name; expected one of the aliases {sorted(LABEL_ALIASES)}. "
                f"Received: folder={folder.name!r}"
            )
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                rel = safe_path(root, path.relative_to(root).as_posix(), column="file")
                rows.append({"image": path.relative_to(root).as_posix(), "path": str(rel),
                             "finding": folder.name, "category": category})
    if not rows:
        raise ValueError(f"Expected class folders with image files in {str(root)!r}. Received: root={str(root)!r}")
    warn_normalised([r["finding"] for r in rows], source=str(root), aliases=True)
    warnings.warn(DataWarning(
        f"{root} has no patient ids: each image is treated as its own patient, so a "
        "patient-level split is impossible and leakage between parts is likely.",
        what="no patient ids (each image its own patient)"), stacklevel=2)
    frame = pd.DataFrame(rows)
    frame["patient"] = frame["image"]
    for column in ("sex", "age", "view", "modality", "license", "source"):
        frame[column] = np.nan
    return finish_frame(frame, task, dropped_unlabelled=0, source="folders")


def _refuse_repeated(paths, csv_path) -> None:
    """An image listed twice: which row holds its label and patient? Refused before any work."""
    listed = pd.Series([str(p) for p in paths]).value_counts()
    if (listed > 1).any():
        repeated = {Path(k).name: int(v) for k, v in listed[listed > 1].head(3).items()}
        raise ValueError(f"Expected each image once in the manifest {csv_path}; {int((listed > 1).sum())} image(s) "
                         f"listed more than once. Received: times={repeated}")


def read_manifest(csv_path, *, task=None, image_col="path", label_col="label", patient_col="patient") -> pd.DataFrame:
    """Read a CSV manifest: one row per image with a path, a label and a patient id.

    Paths are relative to the manifest's folder (absolute paths and ``..`` are refused).
    Labels go through :data:`LABEL_ALIASES` ("covid", "COVID-19", "normal", "No Finding",
    "pneumonia", "other", ...) or are hierarchical findings ("Pneumonia/Viral/COVID-19");
    anything else is an error that lists them, blank and "todo" rows are dropped. Without a patient column each
    image is its own patient, with a warning; so is each image whose patient cell is blank
    (id ``"image:<image>"``, one warning with the count).

    Args:
        csv_path: The manifest file.
        task: A task name, or None to keep categories as labels.
        image_col: Column holding the image path.
        label_col: Column holding the label.
        patient_col: Column holding the patient id (None: no such column).

    Returns:
        A frame with :data:`FRAME_COLUMNS`.
    """
    csv_path = Path(csv_path)
    raw = read_csv(csv_path)
    raw.columns = [c.strip() for c in raw.columns]
    if {"patientid", "finding", "filename"} <= set(raw.columns) and not {image_col, label_col} <= set(raw.columns):
        raise ValueError(f"{csv_path} is the COVID-19 image data collection's metadata.csv, not a manifest: pass its "
                         f"folder as --data-dir ({str(csv_path.parent)!r}, layout metadata). Received: "
                         f"data_dir={str(csv_path)!r}")
    require_columns(raw, [image_col, label_col], source=str(csv_path))
    root = csv_path.parent
    labels = raw[label_col].map(lambda v: None if str(v).strip().lower() in UNLABELLED else alias_category(v))
    warn_normalised(raw.loc[labels.notna(), label_col], source=str(csv_path), aliases=True)
    unknown = sorted({v for v, c in zip(raw[label_col], labels) if pd.isna(c) and str(v).strip().lower() not in UNLABELLED})
    if unknown:
        raise ValueError(
            f"Unknown label(s) in column {label_col!r}; expected aliases {sorted(LABEL_ALIASES)} "
            f"or collection findings. Received: labels={unknown[:10]}"
        )
    dropped = int(labels.isna().sum())
    unlabelled = raw.loc[labels.isna(), label_col].value_counts().to_dict()
    raw = raw.assign(category=labels)[labels.notna()]
    paths = [safe_path(root, p, column=image_col) for p in raw[image_col]]
    exists = np.array([p.is_file() for p in paths], dtype=bool)
    if (~exists).any():
        warnings.warn(f"{int((~exists).sum())} manifest rows name a missing file; skipped.", stacklevel=2)
    raw = raw[exists]
    paths = [p for p, e in zip(paths, exists) if e]
    _refuse_repeated(paths, csv_path)
    blank = 0
    if patient_col and patient_col in raw.columns:
        patients, blank = patient_ids(raw[patient_col], raw[image_col], source=str(csv_path))
    else:
        if patient_col:
            warnings.warn(f"{csv_path} has no {patient_col!r} column: each image is treated as its own patient, so "
                          "leakage between split parts is likely.", stacklevel=2)
        patients = raw[image_col].astype(str).to_numpy()
    get = lambda c: raw[c].replace("", np.nan).to_numpy() if c in raw.columns else np.nan  # noqa: E731
    frame = pd.DataFrame({
        "image": raw[image_col].astype(str).to_numpy(),
        "path": [str(p) for p in paths],
        "patient": patients,
        "sex": get("sex"),
        "age": pd.to_numeric(raw["age"], errors="coerce").to_numpy() if "age" in raw.columns else np.nan,
        "view": get("view"),
        "modality": get("modality"),
        "finding": raw[label_col].to_numpy(),
        "category": raw["category"].to_numpy(),
        "source": get("source") if "source" in raw.columns else "manifest",
        "license": get("license"),
    })
    out = finish_frame(frame, task, dropped_unlabelled=dropped, source="manifest")
    out.attrs.update(blank_patient_ids=blank, unlabelled_findings=unlabelled)
    return out


#: The dataset layouts :func:`load_dataset` reads (``auto`` detects them).
LAYOUTS = ("auto", "metadata", "folders", "manifest", "covidx", "covid-qu-ex")
#: Layouts of other modules, ``name: (detect, read)`` (:func:`register_layout`), tried in order by ``auto``.
_REGISTERED: dict = {}


def register_layout(name, *, detect, read) -> None:
    """Make :func:`load_dataset` read layout ``name`` (one of :data:`LAYOUTS`) with ``read(root, task=...)``;
    ``auto`` picks it where ``detect(root)`` is true (after ``metadata``, before ``manifest`` and ``folders``)."""
    if name not in LAYOUTS:
        raise ValueError(f"Unknown layout. Expected one of {list(LAYOUTS)}. Received: layout={name!r}")
    _REGISTERED[name] = (detect, read)


def _auto_layout(root: Path):
    """The layout ``auto`` finds at ``root`` (None: nothing there)."""
    if root.is_file() and root.name.lower() == "metadata.csv":
        raise ValueError(f"Expected the COVID-19 image data collection's folder, not its metadata.csv: pass "
                         f"--data-dir {str(root.parent)!r} (or --layout manifest to read this file as a manifest). "
                         f"Received: data_dir={str(root)!r}")
    if root.is_dir() and (root / "metadata.csv").is_file():
        return "metadata"
    for name, (detect, _) in _REGISTERED.items():
        if root.exists() and detect(root):
            return name
    if root.is_file():
        return "manifest"
    return "folders" if root.is_dir() else None


def detect_layout(data_dir=None, *, layout="auto") -> tuple[Path, str]:
    """``(root, layout)`` of a dataset without reading it: a folder with ``metadata.csv`` is the
    collection, a COVIDx folder (or list file) or a COVID-QU-Ex tree is that layout, another file a
    manifest, another folder class folders (cheap: ``train`` checks it before building a model or
    downloading weights).

    Raises:
        ValueError: An unknown ``layout``; ``auto`` and a ``metadata.csv`` file (pointed at its folder).
        FileNotFoundError: ``layout="auto"`` and nothing at ``data_dir`` (an explicit layout's reader
            says what it misses).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown layout. Expected one of {list(LAYOUTS)}. Received: layout={layout!r}")
    root = resolve_data_dir(data_dir)
    if layout == "auto" and (layout := _auto_layout(root) or "auto") == "auto":
        raise FileNotFoundError(
            "Expected a dataset folder (metadata.csv + images/, COVIDx lists, a COVID-QU-Ex tree, or one folder per "
            f"class) or a CSV manifest; run `covidxr download` or pass --data-dir. Received: data_dir={str(root)!r}"
        )
    return root, layout


@summarise
def load_dataset(
    data_dir=None, *, task="covid-vs-rest", layout="auto", modality="X-ray",
    views=FRONTAL_VIEWS, image_col="path", label_col="label", patient_col="patient",
) -> pd.DataFrame:
    """Read a dataset in any supported layout.

    Args:
        data_dir: A collection folder (with ``metadata.csv``), a COVIDx folder or list file, a COVID-QU-Ex
            folder, class folders, or a CSV manifest file; see :func:`resolve_data_dir` for the default.
        task: Task name (see :data:`TASKS`) or None.
        layout: One of :data:`LAYOUTS` (``"auto"`` detects it).
        modality, views: Filters for the metadata layout; a blank, ``"all"`` or ``"none"``
            modality keeps every modality (see :func:`~covidxr.data.tasks.none_if_blank`).
        image_col, label_col, patient_col: Columns for the manifest layout; a blank,
            ``"all"`` or ``"none"`` patient column means there is none.

    Returns:
        A frame with :data:`FRAME_COLUMNS` (and the layout's :data:`OPTIONAL_COLUMNS`), one row per
        usable image.
    """
    modality, patient_col = none_if_blank(modality), none_if_blank(patient_col)
    root, layout = detect_layout(data_dir, layout=layout)
    if layout == "metadata":
        return read_metadata(root, task=task, modality=modality, views=views)
    if layout == "folders":
        return read_folders(root, task=task)
    if layout in _REGISTERED:
        return _REGISTERED[layout][1](root, task=task)
    return read_manifest(root, task=task, image_col=image_col, label_col=label_col,
                         patient_col=patient_col)
