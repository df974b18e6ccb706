"""Dataset readers, label tasks and patient-level splits.

Three layouts are read into one frame with one row per usable image:

* the COVID-19 image data collection (``metadata.csv`` + ``images/``), flat findings
  ("COVID-19, ARDS") as in the 2020 snapshot or hierarchical ones
  ("Pneumonia/Viral/COVID-19") as upstream writes them now;
* one folder per class (``root/<class>/*.png``), as most public collections ship;
* a CSV manifest with an image, a label and (optionally) a patient column.

The frame's columns are :data:`FRAME_COLUMNS`. Splits never put one patient in two parts.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "CATEGORIES",
    "DEFAULT_DATA_DIR",
    "FRAME_COLUMNS",
    "FRONTAL_VIEWS",
    "IMAGE_EXTENSIONS",
    "KNOWN_VIEWS",
    "LABEL_ALIASES",
    "TASKS",
    "Task",
    "finding_category",
    "get_task",
    "kfold_split",
    "load_dataset",
    "read_folders",
    "read_manifest",
    "read_metadata",
    "read_split",
    "resolve_data_dir",
    "source_overlap",
    "split_patients",
    "summary_table",
    "task_counts",
    "write_split",
]

#: Where the data lives when neither ``--data-dir`` nor ``COVIDXR_DATA_DIR`` says.
DEFAULT_DATA_DIR = Path("data/raw/covid-chestxray-dataset")

#: The columns of every frame the readers return (``label`` only once a task is applied).
FRAME_COLUMNS = (
    "image", "path", "patient", "sex", "age", "view", "modality", "finding",
    "category", "source", "license", "label",
)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")

#: Frontal chest X-ray views (the default filter).
FRONTAL_VIEWS = ("PA", "AP", "AP Supine", "AP Erect")
#: Every view name the collection uses (schema and current upstream).
KNOWN_VIEWS = FRONTAL_VIEWS + ("L", "Axial", "Coronal")

#: Coarse finding categories: every labelled finding falls in one of these.
CATEGORIES = ("normal", "covid", "other")

#: Folder names and manifest labels that map to a category (compared case-insensitively).
LABEL_ALIASES = {
    "covid": "covid", "covid-19": "covid", "covid19": "covid", "covid_19": "covid",
    "sars-cov-2": "covid", "positive": "covid",
    "normal": "normal", "no finding": "normal", "no_finding": "normal",
    "healthy": "normal", "negative": "normal",
    "other": "other", "pneumonia": "other", "non-covid": "other", "non_covid": "other",
    "viral pneumonia": "other", "bacterial pneumonia": "other", "lung_opacity": "other",
    "lung opacity": "other",
}

_UNLABELLED = {"", "todo", "unknown", "nan", "none"}


@dataclass(frozen=True)
class Task:
    """A label task: which finding categories become which class.

    Attributes:
        name: The task's name, e.g. ``"covid-vs-rest"``.
        classes: Class names in model output order (positive class last for two classes).
        mapping: Category (``normal``/``covid``/``other``) to class; categories not in it
            are dropped.
        note: One line for reports and the README.
    """

    name: str
    classes: tuple[str, ...]
    mapping: dict
    note: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)


#: The one mapping table from finding category to class, per task.
TASKS = {
    "covid-vs-rest": Task(
        "covid-vs-rest", ("non-covid", "covid"),
        {"covid": "covid", "normal": "non-covid", "other": "non-covid"},
        "COVID-19 vs every other labelled finding, No Finding included (default).",
    ),
    "covid-vs-normal": Task(
        "covid-vs-normal", ("normal", "covid"),
        {"covid": "covid", "normal": "normal"},
        "COVID-19 vs No Finding; other findings dropped. The 2020 snapshot has only 16 "
        "normal patients among its frontal X-rays: confidence intervals are wide.",
    ),
    "three-class": Task(
        "three-class", ("normal", "covid", "other"),
        {"normal": "normal", "covid": "covid", "other": "other"},
        "No Finding / COVID-19 / every other labelled finding.",
    ),
}


def get_task(task) -> Task:
    """Return the :class:`Task` named ``task`` (or ``task`` itself if it is one)."""
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise ValueError(
            f"Unknown task. Expected one of {sorted(TASKS)}. Received: task={task!r}"
        )
    return TASKS[task]


def finding_category(finding) -> str | None:
    """Map a finding, flat or hierarchical, to ``"covid"``, ``"normal"``, ``"other"`` or None.

    ``"COVID-19"``, ``"COVID-19, ARDS"`` and ``"Pneumonia/Viral/COVID-19"`` are covid;
    ``"No Finding"`` is normal; every other named finding ("Streptococcus",
    ``"Pneumonia/Bacterial/Streptococcus"``, "ARDS", "Pneumonia") is other; blank,
    ``"todo"`` and ``"Unknown"`` are unlabelled (None).

    Args:
        finding: The ``finding`` cell of ``metadata.csv`` (a string or NaN).

    Returns:
        The category, or None for an unlabelled row.
    """
    if finding is None or (isinstance(finding, float) and np.isnan(finding)):
        return None
    text = str(finding).strip()
    if text.lower() in _UNLABELLED:
        return None
    last = text.replace("\\", "/").rstrip("/").split("/")[-1].strip()
    tokens = {t.strip().lower() for t in last.split(",")}
    if "covid-19" in tokens or "covid19" in tokens:
        return "covid"
    if last.lower() in _UNLABELLED:
        return None
    if last.lower() == "no finding":
        return "normal"
    return "other"


def alias_category(name) -> str | None:
    """Map a folder name or manifest label to a category through :data:`LABEL_ALIASES`,
    falling back to :func:`finding_category` for findings such as "COVID-19, ARDS"."""
    key = str(name).strip().lower()
    if key in LABEL_ALIASES:
        return LABEL_ALIASES[key]
    if "/" in key or "," in key:
        return finding_category(name)
    return None


def resolve_data_dir(data_dir=None) -> Path:
    """Where the data lives: ``data_dir``, else ``$COVIDXR_DATA_DIR``, else
    :data:`DEFAULT_DATA_DIR` (relative to the working directory)."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get("COVIDXR_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return DEFAULT_DATA_DIR


def _check_views(views):
    if views is None:
        return None
    if isinstance(views, str):
        views = [v for v in views.split(",")]
    views = [v.strip() for v in views if v.strip()]
    by_lower = {v.lower(): v for v in KNOWN_VIEWS}
    out = []
    for view in views:
        if view.lower() == "frontal":
            out.extend(FRONTAL_VIEWS)
        elif view.lower() == "all":
            return None
        elif view.lower() in by_lower:
            out.append(by_lower[view.lower()])
        else:
            raise ValueError(
                f"Unknown view name. Expected any of {list(KNOWN_VIEWS)}, 'frontal' or 'all'. "
                f"Received: views={view!r}"
            )
    return tuple(dict.fromkeys(out))


def _safe_path(root: Path, relative: str, *, column: str) -> Path:
    """Join ``root`` and a file name from a table, refusing anything that leaves ``root``."""
    text = str(relative).strip()
    if not text or text.lower() == "nan":
        raise ValueError(f"Expected a file name in column {column!r}. Received: {column}={relative!r}")
    if os.path.isabs(text) or text.startswith(("/", "\\")) or (len(text) > 1 and text[1] == ":"):
        raise ValueError(
            f"Expected a path relative to {str(root)!r}, not an absolute path. "
            f"Received: {column}={relative!r}"
        )
    parts = Path(text.replace("\\", "/")).parts
    if ".." in parts:
        raise ValueError(
            f"Expected a path inside {str(root)!r}; '..' is not allowed. "
            f"Received: {column}={relative!r}"
        )
    path = root / Path(*parts)
    # A symbolic link may still lead out of the folder: compare resolved paths.
    if path.exists():
        real_root = root.resolve()
        real = path.resolve()
        if real != real_root and real_root not in real.parents:
            raise ValueError(
                f"Expected a file inside {str(root)!r}; this one resolves outside it "
                f"(symbolic link?). Received: {column}={relative!r}"
            )
    return path


def _require_columns(frame: pd.DataFrame, required, *, source) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{source} lacks required column(s) {missing}; it has {list(frame.columns)}. "
            f"Received: missing={missing}"
        )


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"Expected a CSV file. Received: path={str(path)!r}")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError:
        warnings.warn(f"{path} is not valid UTF-8; reading it as Latin-1.", stacklevel=3)
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


def _finish(frame: pd.DataFrame, task, *, dropped_unlabelled: int, source: str) -> pd.DataFrame:
    """Apply a task's labels (if any), order the columns and report what was dropped."""
    frame = frame.reset_index(drop=True)
    frame.attrs["dropped_unlabelled"] = int(dropped_unlabelled)
    frame.attrs["source"] = source
    if task is None:
        frame["label"] = frame["category"]
        return frame[list(FRAME_COLUMNS)]
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
    return frame[list(FRAME_COLUMNS)]


def read_metadata(
    data_dir=None, *, task=None, modality="X-ray", views=FRONTAL_VIEWS, strict_files=False
) -> pd.DataFrame:
    """Read the COVID-19 image data collection (``metadata.csv`` + ``images/``).

    Args:
        data_dir: The collection's root folder (see :func:`resolve_data_dir`).
        task: A task name from :data:`TASKS`, or None to keep every labelled row with
            ``label`` = its category (what EDA wants).
        modality: Keep rows of this modality ("X-ray", "CT"); None keeps all.
        views: View names to keep (default: frontal); None or "all" keeps all.
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
    views = _check_views(views)
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise FileNotFoundError(
            f"Expected the collection's metadata.csv in {str(root)!r}; run `covidxr download` "
            f"or pass --data-dir. Received: data_dir={str(root)!r}"
        )
    raw = _read_csv(meta)
    raw.columns = [c.strip() for c in raw.columns]
    _require_columns(raw, ["patientid", "finding", "filename"], source=str(meta))
    raw = raw.drop_duplicates()
    for column in ("sex", "age", "view", "modality", "folder", "url", "doi", "location", "license"):
        if column not in raw.columns:
            raw[column] = ""
    raw = raw.map(lambda v: v.strip() if isinstance(v, str) else v)

    if modality is not None:
        raw = raw[raw["modality"].str.lower() == str(modality).lower()]
    if views is not None:
        raw = raw[raw["view"].str.lower().isin([v.lower() for v in views])]

    category = raw["finding"].map(finding_category)
    dropped = int(category.isna().sum())
    raw = raw.assign(category=category)[category.notna()]

    paths, exists = [], []
    for folder, name in zip(raw["folder"], raw["filename"]):
        folder = folder or "images"
        base = _safe_path(root, folder, column="folder")
        path = _safe_path(base, name, column="filename")
        paths.append(path)
        exists.append(path.is_file())
    raw = raw.assign(path=[str(p) for p in paths])
    exists = np.asarray(exists, dtype=bool)
    missing = int((~exists).sum())
    if missing:
        message = f"{missing} of {len(raw)} metadata rows name an image that is not in {root}; skipped."
        if strict_files:
            raise FileNotFoundError(message + f" Received: missing={missing}")
        warnings.warn(message, stacklevel=2)
    raw = raw[exists]
    repeated = raw["path"].duplicated()
    if repeated.any():
        names = sorted(set(raw.loc[repeated, "filename"]))
        warnings.warn(
            f"{int(repeated.sum())} metadata rows list an image already listed (possibly under "
            f"another patient id); kept the first row of each: {names[:5]}",
            stacklevel=2,
        )
    raw = raw[~repeated]

    frame = pd.DataFrame({
        "image": [str(Path(p).relative_to(root).as_posix()) for p in raw["path"]],
        "path": raw["path"].to_numpy(),
        "patient": raw["patientid"].astype(str).to_numpy(),
        "sex": raw["sex"].replace("", np.nan).to_numpy(),
        "age": pd.to_numeric(raw["age"], errors="coerce").to_numpy(),
        "view": raw["view"].replace("", np.nan).to_numpy(),
        "modality": raw["modality"].replace("", np.nan).to_numpy(),
        "finding": raw["finding"].to_numpy(),
        "category": raw["category"].to_numpy(),
        "source": [_source(r) for r in raw.to_dict("records")],
        "license": raw["license"].replace("", np.nan).to_numpy(),
    })
    out = _finish(frame, task, dropped_unlabelled=dropped, source="metadata")
    out.attrs["missing_files"] = missing
    return out


def read_folders(root, *, task=None) -> pd.DataFrame:
    """Read a one-folder-per-class collection (``root/<class>/*.png|jpg|...``).

    Folder names map to categories through :data:`LABEL_ALIASES`. Such collections carry
    no patient ids, so each image becomes its own patient (with a warning: a
    patient-level split is then impossible and leakage between parts is likely).

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
                rel = _safe_path(root, path.relative_to(root).as_posix(), column="file")
                rows.append({"image": path.relative_to(root).as_posix(), "path": str(rel),
                             "finding": folder.name, "category": category})
    if not rows:
        raise ValueError(f"Expected class folders with image files in {str(root)!r}. Received: root={str(root)!r}")
    warnings.warn(
        f"{root} has no patient ids: each image is treated as its own patient, so a "
        "patient-level split is impossible and leakage between parts is likely.",
        stacklevel=2,
    )
    frame = pd.DataFrame(rows)
    frame["patient"] = frame["image"]
    for column in ("sex", "age", "view", "modality", "license"):
        frame[column] = np.nan
    frame["source"] = frame["image"].str.split("/").str[0]
    return _finish(frame, task, dropped_unlabelled=0, source="folders")


def read_manifest(
    csv_path, *, task=None, image_col="path", label_col="label", patient_col="patient"
) -> pd.DataFrame:
    """Read a CSV manifest: one row per image with a path, a label and a patient id.

    Paths are relative to the manifest's folder (absolute paths and ``..`` are refused).
    Labels go through :data:`LABEL_ALIASES` ("covid", "COVID-19", "normal", "No Finding",
    "pneumonia", "other", ...) or are hierarchical findings ("Pneumonia/Viral/COVID-19");
    anything else is an error that lists them, blank and "todo" rows are dropped. Without a patient column each
    image is its own patient, with a warning.

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
    raw = _read_csv(csv_path)
    raw.columns = [c.strip() for c in raw.columns]
    _require_columns(raw, [image_col, label_col], source=str(csv_path))
    root = csv_path.parent
    labels = raw[label_col].map(lambda v: None if str(v).strip().lower() in _UNLABELLED else alias_category(v))
    unknown = sorted({v for v, c in zip(raw[label_col], labels) if pd.isna(c) and str(v).strip().lower() not in _UNLABELLED})
    if unknown:
        raise ValueError(
            f"Unknown label(s) in column {label_col!r}; expected aliases {sorted(LABEL_ALIASES)} "
            f"or collection findings. Received: labels={unknown[:10]}"
        )
    dropped = int(labels.isna().sum())
    raw = raw.assign(category=labels)[labels.notna()]
    paths = [_safe_path(root, p, column=image_col) for p in raw[image_col]]
    exists = np.array([p.is_file() for p in paths], dtype=bool)
    if (~exists).any():
        warnings.warn(f"{int((~exists).sum())} manifest rows name a missing file; skipped.", stacklevel=2)
    raw = raw[exists]
    paths = [p for p, e in zip(paths, exists) if e]
    if patient_col and patient_col in raw.columns:
        patients = raw[patient_col].astype(str).to_numpy()
    else:
        if patient_col:
            warnings.warn(
                f"{csv_path} has no {patient_col!r} column: each image is treated as its own "
                "patient, so leakage between split parts is likely.",
                stacklevel=2,
            )
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
    return _finish(frame, task, dropped_unlabelled=dropped, source="manifest")


def load_dataset(
    data_dir=None, *, task="covid-vs-rest", layout="auto", modality="X-ray",
    views=FRONTAL_VIEWS, image_col="path", label_col="label", patient_col="patient",
) -> pd.DataFrame:
    """Read a dataset in any supported layout.

    Args:
        data_dir: A collection folder (with ``metadata.csv``), a folder of class folders,
            or a CSV manifest file; see :func:`resolve_data_dir` for the default.
        task: Task name (see :data:`TASKS`) or None.
        layout: ``"auto"``, ``"metadata"``, ``"folders"`` or ``"manifest"``.
        modality, views: Filters for the metadata layout.
        image_col, label_col, patient_col: Columns for the manifest layout.

    Returns:
        A frame with :data:`FRAME_COLUMNS`, one row per usable image.
    """
    layouts = ("auto", "metadata", "folders", "manifest")
    if layout not in layouts:
        raise ValueError(f"Unknown layout. Expected one of {list(layouts)}. Received: layout={layout!r}")
    root = resolve_data_dir(data_dir)
    if layout == "auto":
        if root.is_file():
            layout = "manifest"
        elif (root / "metadata.csv").is_file():
            layout = "metadata"
        elif root.is_dir():
            layout = "folders"
        else:
            raise FileNotFoundError(
                "Expected a dataset folder (metadata.csv + images/, or one folder per class) or a "
                f"CSV manifest; run `covidxr download` or pass --data-dir. Received: data_dir={str(root)!r}"
            )
    if layout == "metadata":
        return read_metadata(root, task=task, modality=modality, views=views)
    if layout == "folders":
        return read_folders(root, task=task)
    return read_manifest(root, task=task, image_col=image_col, label_col=label_col,
                         patient_col=patient_col)


def task_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Images and patients per class for every task, from a frame read with ``task=None``.

    Returns:
        A frame with columns ``task, class, images, patients`` (one row per task and class).
    """
    rows = []
    for task in TASKS.values():
        part = frame[frame["category"].isin(list(task.mapping))]
        labels = part["category"].map(task.mapping)
        for cls in task.classes:
            sel = part[labels == cls]
            rows.append({"task": task.name, "class": cls, "images": len(sel),
                         "patients": sel["patient"].nunique()})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- splits

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


def _check_parts(split: pd.DataFrame, classes) -> None:
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
    _require_columns(frame, ["image", "patient", "label"], source="frame")
    frame = frame.reset_index(drop=True)
    index = np.arange(len(frame))
    rest, test = _group_split(frame, index, test_size, seed, what="test")
    train, val = _group_split(frame, rest, val_size / (1 - test_size), seed + 1, what="validation")
    part = np.empty(len(frame), dtype=object)
    part[train], part[val], part[test] = "train", "val", "test"
    out = frame.assign(part=part)
    _check_parts(out, sorted(frame["label"].unique()))
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
    _require_columns(frame, ["image", "patient", "label"], source="frame")
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
    _check_parts(out, sorted(frame["label"].unique()))
    return out


SPLIT_COLUMNS = ("image", "patient", "label", "part")


def write_split(split: pd.DataFrame, path) -> Path:
    """Write a split as CSV with columns ``image, patient, label, part``."""
    _require_columns(split, list(SPLIT_COLUMNS), source="split")
    from .atomic import write_text

    return write_text(path, split[list(SPLIT_COLUMNS)].to_csv(index=False))


def read_split(path) -> pd.DataFrame:
    """Read a split written by :func:`write_split`."""
    split = _read_csv(Path(path))
    _require_columns(split, list(SPLIT_COLUMNS), source=str(path))
    bad = sorted(set(split["part"]) - {"train", "val", "test"})
    if bad:
        raise ValueError(f"Expected parts train/val/test in {path}. Received: part={bad}")
    return split[list(SPLIT_COLUMNS)]


def source_overlap(frame: pd.DataFrame) -> dict:
    """How far an image's source (URL host) goes with its category.

    A source "leans non-COVID" when its share of non-COVID images is above the collection's
    share. If most non-COVID images come from such sources while few COVID-19 images do, a
    model can learn the source (scanner, processing, journal figure style) instead of the
    disease.

    Returns:
        A dict with ``non_covid_images``, ``non_covid_from_leaning`` (non-COVID images from
        non-COVID-leaning sources), ``covid_images``, ``covid_from_leaning`` and
        ``leaning_sources`` (list of source names).
    """
    is_covid = frame["category"] == "covid"
    overall = 1.0 - float(is_covid.mean()) if len(frame) else 0.0
    share = (~is_covid).groupby(frame["source"]).mean()
    leaning = sorted(share[share > overall].index)
    from_leaning = frame["source"].isin(leaning)
    return {
        "non_covid_images": int((~is_covid).sum()),
        "non_covid_from_leaning": int((~is_covid & from_leaning).sum()),
        "covid_images": int(is_covid.sum()),
        "covid_from_leaning": int((is_covid & from_leaning).sum()),
        "leaning_sources": leaning,
    }


def summary_table(frame: pd.DataFrame, counts: pd.DataFrame | None = None) -> str:
    """The text ``covidxr eda`` prints: totals, per-task class counts and patient counts,
    and the source overlap warning."""
    counts = task_counts(frame) if counts is None else counts
    lines = [
        f"{len(frame)} labelled images of {frame['patient'].nunique()} patients "
        f"({frame.attrs.get('dropped_unlabelled', 0)} unlabelled rows dropped, "
        f"{frame.attrs.get('missing_files', 0)} rows without an image file skipped)",
        "",
        counts.to_string(index=False),
    ]
    for task in TASKS.values():
        sub = counts[counts["task"] == task.name]
        if int(sub["patients"].min()) < 20:
            lines.append(f"note: {task.name}: only {int(sub['patients'].min())} patients in its "
                         f"smallest class; confidence intervals will be wide.")
    overlap = source_overlap(frame)
    if overlap["non_covid_images"] and overlap["covid_images"]:
        lines.append(
            f"warning: {overlap['non_covid_from_leaning']} of {overlap['non_covid_images']} non-COVID "
            f"images come from {len(overlap['leaning_sources'])} sources that supply only "
            f"{overlap['covid_from_leaning']} of {overlap['covid_images']} COVID-19 images "
            f"({', '.join(overlap['leaning_sources'][:5])}{', ...' if len(overlap['leaning_sources']) > 5 else ''}): "
            "a model can learn the source instead of the disease (run `covidxr audit`)."
        )
    return "\n".join(lines)
