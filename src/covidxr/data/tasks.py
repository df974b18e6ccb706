"""Label tasks, finding categories, view names and the "blank means none" rule.
Must not read files: names and mapping tables only.

* :data:`TASKS` is the one mapping table from finding category (:data:`CATEGORIES`) to class,
  per task; :func:`get_task` looks a task up by name.
* :func:`finding_category` maps a collection finding, flat ("COVID-19, ARDS") or hierarchical
  ("Pneumonia/Viral/COVID-19"), to a category; :func:`alias_category` does the same for folder
  names and manifest labels (:data:`LABEL_ALIASES`). Both read a label through
  :func:`normalise_label` first (Unicode NFKC, one hyphen, no zero-width characters, ``;`` as ``,``,
  :data:`LABEL_SYNONYMS`), so that every layout reads a spelling the same way;
  :func:`warn_normalised` is the one line that says which spellings were read so.
* :func:`parse_views` turns a ``views`` option into canonical view names (or None for all);
  :func:`views_key` gives a canonical string to compare two such options.
* :func:`none_if_blank` is the one rule for options where a blank, ``"all"`` or ``"none"``
  means None.
"""

from __future__ import annotations

import re
import unicodedata
import warnings
from dataclasses import dataclass

import numpy as np

from .notices import DataWarning

__all__ = [
    "CATEGORIES",
    "FRAME_COLUMNS",
    "FRONTAL_VIEWS",
    "IMAGE_EXTENSIONS",
    "KNOWN_VIEWS",
    "LABEL_ALIASES",
    "LABEL_SYNONYMS",
    "TASKS",
    "UNKNOWN_VIEW",
    "UNLABELLED",
    "Task",
    "alias_category",
    "finding_category",
    "get_task",
    "label_key",
    "none_if_blank",
    "normalise_label",
    "parse_views",
    "views_key",
    "warn_normalised",
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

#: Spellings of one finding, by :func:`label_key`, and the name :func:`normalise_label` gives them.
LABEL_SYNONYMS = {
    "covid 19": "COVID-19", "covid19": "COVID-19", "sars cov 2": "COVID-19", "sars cov2": "COVID-19",
    "sarscov2": "COVID-19", "sars cov 2 pneumonia": "COVID-19", "covid 19 pneumonia": "COVID-19",
    "2019 ncov": "COVID-19", "ncov 2019": "COVID-19", "2019 novel coronavirus": "COVID-19",
    "no finding": "No Finding", "no findings": "No Finding",
}
#: Hyphens and dashes read as ``-`` (NFKC leaves them).
_HYPHENS = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u2043\ufe58\ufe63\uff0d"
#: Invisible characters dropped (zero-width space, joiners, word joiner, BOM, soft hyphen).
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e"))
_SEPARATORS = re.compile(r"\s*(/|,)\s*")


def normalise_label(text) -> str:
    """A finding or label as every layout reads it.

    Unicode NFKC (full-width letters, non-breaking spaces), zero-width characters dropped, every
    hyphen or dash as ``-``, ``;`` as ``,``, runs of spaces as one, and each ``,``-separated term of
    each ``/`` level looked up in :data:`LABEL_SYNONYMS` by :func:`label_key` (``"SARS-CoV-2"``,
    ``"COVID 19"`` and ``"covid19"`` become ``"COVID-19"``). Case is kept.

    Args:
        text: A finding, folder name or manifest label (None or NaN: ``""``).

    Returns:
        The normalised text, e.g. ``"COVID‐19; ARDS"`` → ``"COVID-19, ARDS"``.
    """
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return ""
    text = unicodedata.normalize("NFKC", str(text)).translate(_INVISIBLE)
    text = re.sub(f"[{_HYPHENS}]", "-", text).replace(";", ",")
    text = _SEPARATORS.sub(lambda m: m.group(1), " ".join(text.split())).strip()
    return "/".join(", ".join(LABEL_SYNONYMS.get(label_key(term), term) if term else term
                              for term in level.split(",")) for level in text.split("/"))


def label_key(text) -> str:
    """The key labels are compared by: lower case (casefold), and ``-``, ``_`` and spaces as one
    space (``"No_Finding"``, ``"no finding"`` and ``"No-Finding"`` share ``"no finding"``)."""
    return " ".join(re.sub(r"[\s_\-]+", " ", str(text).casefold()).split())


def warn_normalised(values, *, source, aliases=False, stacklevel=3) -> dict:
    """One warning naming the spellings of ``values`` that :func:`normalise_label` changed (other than
    in case or runs of spaces) and how many rows each, so that no finding changes class silently.

    Args:
        values: The raw findings or labels, shape (n,).
        source: What they were read from, for the message (``"metadata.csv"``, a manifest's path ...).
        aliases: The values are folder names or manifest labels: the names of :data:`LABEL_ALIASES`
            (``"covid19"``, ``"no_finding"``) are read as they are, without a warning.

    Returns:
        ``{raw spelling: normalised}`` of those spellings (empty: no warning).
    """
    counts: dict = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    changed = {}
    for value in counts:
        raw = " ".join(str(value).split()) if isinstance(value, str) else ""
        new = normalise_label(value)
        if new.casefold() != raw.casefold() and not (aliases and raw.casefold() in LABEL_ALIASES):
            changed[value] = new
    if changed:
        listed = ", ".join(f"{k!r} -> {v!r} ({counts[k]} rows)" for k, v in sorted(changed.items(), key=str)[:8])
        warnings.warn(DataWarning(f"{len(changed)} label spellings of {source} were read through label normalisation "
                                  f"(Unicode, hyphens, zero-width characters, synonyms): {listed}"
                                  f"{' ...' if len(changed) > 8 else ''}", count=len(changed),
                                  what="label spellings normalised"), stacklevel=stacklevel)
    return changed


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

    The finding is read through :func:`normalise_label` first. ``"COVID-19"``, ``"COVID-19, ARDS"``,
    ``"COVID-19; ARDS"``, ``"SARS-CoV-2"`` and ``"Pneumonia/Viral/COVID-19"`` are covid;
    ``"No Finding"`` is normal; every other named finding ("Streptococcus",
    ``"Pneumonia/Bacterial/Streptococcus"``, "ARDS", "Pneumonia") is other; blank,
    ``"todo"`` and ``"Unknown"`` are unlabelled (None).

    Args:
        finding: The ``finding`` cell of ``metadata.csv`` (a string or NaN).

    Returns:
        The category, or None for an unlabelled row.
    """
    text = normalise_label(finding)
    if text.lower() in UNLABELLED:
        return None
    last = text.replace("\\", "/").rstrip("/").split("/")[-1].strip()
    tokens = {label_key(t) for t in last.split(",")}
    if label_key("COVID-19") in tokens:
        return "covid"
    if last.lower() in UNLABELLED:
        return None
    if label_key(last) == label_key("No Finding"):
        return "normal"
    return "other"


#: :data:`LABEL_ALIASES` by :func:`label_key`.
_ALIASES = {label_key(k): v for k, v in LABEL_ALIASES.items()}


def alias_category(name) -> str | None:
    """Map a folder name or manifest label to a category through :data:`LABEL_ALIASES` (after
    :func:`normalise_label`, compared by :func:`label_key`), falling back to
    :func:`finding_category` for findings such as "COVID-19, ARDS"."""
    text = normalise_label(name)
    key = label_key(text)
    if key in _ALIASES:
        return _ALIASES[key]
    if "/" in text or "," in text:
        return finding_category(text)
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
