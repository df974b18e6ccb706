"""Label tasks, finding categories, view names and the "blank means none" rule.
Must not read files: names and mapping tables only.

* :data:`TASKS` is the one mapping table from finding category (:data:`CATEGORIES`) to class,
  per task; :func:`get_task` looks a task up by name.
* :func:`finding_category` maps a collection finding, flat ("COVID-19, ARDS") or hierarchical
  ("Pneumonia/Viral/COVID-19"), to a category; :func:`alias_category` does the same for folder
  names and manifest labels (:data:`LABEL_ALIASES`).
* :func:`parse_views` turns a ``views`` option into canonical view names (or None for all);
  :func:`views_key` gives a canonical string to compare two such options.
* :func:`none_if_blank` is the one rule for options where a blank, ``"all"`` or ``"none"``
  means None.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "CATEGORIES",
    "FRAME_COLUMNS",
    "FRONTAL_VIEWS",
    "IMAGE_EXTENSIONS",
    "KNOWN_VIEWS",
    "LABEL_ALIASES",
    "TASKS",
    "UNKNOWN_VIEW",
    "UNLABELLED",
    "Task",
    "alias_category",
    "finding_category",
    "get_task",
    "none_if_blank",
    "parse_views",
    "views_key",
]

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
#: The ``views`` token that keeps rows without a view (a blank view cell, or one in :data:`UNLABELLED`).
UNKNOWN_VIEW = "unknown"

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

#: Findings and labels that mean "not labelled" (compared lower-cased, stripped).
UNLABELLED = {"", "todo", "unknown", "nan", "none"}


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
    if text.lower() in UNLABELLED:
        return None
    last = text.replace("\\", "/").rstrip("/").split("/")[-1].strip()
    tokens = {t.strip().lower() for t in last.split(",")}
    if "covid-19" in tokens or "covid19" in tokens:
        return "covid"
    if last.lower() in UNLABELLED:
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


def parse_views(views):
    """Canonical view names of a ``views`` option, or None for all views.

    Args:
        views: None, a comma-separated string or a sequence of view names; names are
            matched case-insensitively against :data:`KNOWN_VIEWS`, ``"frontal"`` stands for
            :data:`FRONTAL_VIEWS`, ``"unknown"`` (:data:`UNKNOWN_VIEW`) for rows without a
            view and ``"all"`` for every view.

    Returns:
        A tuple of canonical view names (duplicates removed, first occurrence kept; it may
        hold :data:`UNKNOWN_VIEW`), or None (``views`` is None or names ``"all"``).

    Raises:
        ValueError: An unknown view name.
    """
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
        elif view.lower() == UNKNOWN_VIEW:
            out.append(UNKNOWN_VIEW)
        elif view.lower() in by_lower:
            out.append(by_lower[view.lower()])
        else:
            raise ValueError(
                f"Unknown view name. Expected any of {list(KNOWN_VIEWS)}, 'frontal', '{UNKNOWN_VIEW}' or 'all'. "
                f"Received: views={view!r}"
            )
    return tuple(dict.fromkeys(out))


def views_key(views) -> str:
    """A canonical string for comparing ``views`` options.

    ``"all"`` when :func:`parse_views` gives None (all views), else the canonical view names
    joined by commas in :func:`parse_views`' order, so ``"frontal"``, ``"PA,AP,AP Supine,AP
    Erect"`` and ``("PA", "AP", "AP Supine", "AP Erect")`` give the same key;
    ``"frontal,unknown"`` gives ``"PA,AP,AP Supine,AP Erect,unknown"``.

    Raises:
        ValueError: An unknown view name (as :func:`parse_views`).
    """
    parsed = parse_views(views)
    return "all" if parsed is None else ",".join(parsed)


def none_if_blank(value):
    """None when ``value`` is None, blank, ``"all"`` or ``"none"`` (any case, stripped), else
    ``value`` unchanged: the one rule for options such as ``modality`` and ``patient_col``."""
    return None if value is None or str(value).strip().lower() in ("", "all", "none") else value
