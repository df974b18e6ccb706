"""Frame summaries: per-task counts, how far sources go with the label, merged split groups,
same-patient pairs and candidates, unlabelled findings, mixed-label patients, and the text
``covidxr eda`` prints.
Must not read files or decode images: it describes a frame the readers (and the hash grouping) made.
"""

from __future__ import annotations

import pandas as pd

from .groups import merged_groups, mixed_label_patients
from .tasks import TASKS

__all__ = ["group_lines", "mixed_lines", "review_lines", "source_overlap", "summary_table", "task_counts",
           "unlabelled_lines"]


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


def group_lines(frame: pd.DataFrame) -> list[str]:
    """Lines on the merged split groups (:func:`~covidxr.data.groups.merged_groups`): how many
    image pairs hold the same image, the groups of more than one patient as a table, and the
    largest one; nothing for a frame without groups. The pair counts come from
    ``frame.attrs["duplicates"]`` (:func:`~covidxr.data.groups.assign_groups`)."""
    if "group" not in frame.columns:
        return []
    info, groups, lines = frame.attrs.get("duplicates") or {}, merged_groups(frame), []
    if info:
        pairs = info.get("pairs", {})
        lines.append(f"duplicates: {pairs.get('exact', 0)} exact and {pairs.get('near', 0)} near pairs of images "
                     f"(at most {info.get('max_distance')} of 256 perceptual-hash bits apart), "
                     f"{info.get('cross_patient_pairs', 0)} of them under different patient ids "
                     f"(duplicates={info.get('mode')!r}, {info.get('dropped', 0)} dropped)")
    same = frame.attrs.get("same_patients") or {}
    if same.get("file"):
        lines.append(f"same patients: {same.get('pairs', 0)} confirmed pairs of patient ids from {same['file']} "
                     f"(--same-patients {same.get('option')}), {same.get('applied', 0)} with both patients here, "
                     f"{same.get('joined', 0)} of them joining two split groups")
    if len(groups):
        top = groups.iloc[0]
        lines += [f"{len(groups)} split groups hold more than one patient ({int(groups['images'].sum())} images); "
                  f"the largest is {top['group']} ({top['patients']} patients, {top['images']} images):",
                  "", groups.to_string(index=False), ""]
    return lines


def unlabelled_lines(frame: pd.DataFrame) -> list[str]:
    """One line listing the findings (labels) that map to no class and were left out, with their row
    counts (``frame.attrs["unlabelled_findings"]``, set by the readers); nothing when there are none."""
    found = frame.attrs.get("unlabelled_findings") or {}
    if not found:
        return []
    listed = ", ".join(f"{k!r} ({v})" for k, v in sorted(found.items(), key=lambda kv: (-kv[1], str(kv[0]))))
    return [f"findings that map to no class (left out): {listed}"]


def review_lines(pairs: pd.DataFrame, *, max_distance) -> list[str]:
    """The candidate same-patient pairs (:func:`covidxr.data.same_patients.review_pairs`) as lines: a
    count, then a table (distance, images, patients, labels), closest first."""
    if not len(pairs):
        return [f"no pairs of images of different split groups within {max_distance} near-hash bits"]
    shown = pairs[[c for c in ("distance", "image_a", "patient_a", "label_a", "image_b", "patient_b", "label_b",
                               "review") if c in pairs.columns]]
    todo = int((pairs["review"] == "").sum()) if "review" in pairs.columns else len(pairs)
    return [f"{len(pairs)} pairs of images of different split groups are within {max_distance} of 256 near-hash "
            f"bits, {todo} not reviewed yet: review each (eda --out writes side-by-side figures) and list those "
            "that show one patient in a --same-patients file:", "", shown.to_string(index=False), ""]


def mixed_lines(frame: pd.DataFrame) -> list[str]:
    """Lines on the patients whose images carry more than one label
    (:func:`~covidxr.data.groups.mixed_label_patients`), as a table; nothing when there are none."""
    dropped = frame.attrs.get("mixed_dropped") or []
    lines = [f"{len(dropped)} patients with images of more than one label were left out "
             f"(--drop-mixed-patients): {dropped[:5]}{' ...' if len(dropped) > 5 else ''}"] if dropped else []
    if "group" in frame.columns:
        groups = mixed_label_patients(frame, by="group")
        groups = groups[groups["patients"] > 1]
        if len(groups):
            lines.append(f"{len(groups)} merged split groups hold images of more than one label (the same image "
                         f"labelled differently?): {list(groups['group'][:5])}")
    mixed = mixed_label_patients(frame)
    if not len(mixed):
        return lines
    column = "label" if "label" in frame.columns else "category"
    labels, patients = frame[column].astype(str), frame["patient"].astype(str)
    is_mixed = patients.isin(set(mixed["patient"]))
    involved = ", ".join(f"{patients[is_mixed & (labels == c)].nunique()} of {patients[labels == c].nunique()} {c}"
                         for c in sorted(set(labels)))
    return lines + [f"{len(mixed)} of {frame['patient'].nunique()} patients have images of more than one label "
                    f"({involved} patients); --drop-mixed-patients leaves them out:",
                    "", mixed.to_string(index=False), ""]


def summary_table(frame: pd.DataFrame, counts: pd.DataFrame | None = None) -> str:
    """The text ``covidxr eda`` prints: totals, per-task class counts and patient counts,
    the merged split groups and mixed-label patients (:func:`group_lines`,
    :func:`mixed_lines`), and the source overlap warning."""
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
    extra = unlabelled_lines(frame) + group_lines(frame) + mixed_lines(frame)
    if extra:
        lines += ["", *extra]
    overlap = source_overlap(frame)
    if not frame["source"].notna().any():  # class folders, COVID-QU-Ex
        lines.append("note: the dataset records no image sources, so whether a source goes with the label cannot be "
                     "checked here (run `covidxr audit`).")
    elif overlap["non_covid_images"] and overlap["covid_images"] and overlap["leaning_sources"]:
        lines.append(
            f"warning: {overlap['non_covid_from_leaning']} of {overlap['non_covid_images']} non-COVID "
            f"images come from {len(overlap['leaning_sources'])} sources that supply only "
            f"{overlap['covid_from_leaning']} of {overlap['covid_images']} COVID-19 images "
            f"({', '.join(overlap['leaning_sources'][:5])}{', ...' if len(overlap['leaning_sources']) > 5 else ''}): "
            "a model can learn the source instead of the disease (run `covidxr audit`)."
        )
    return "\n".join(lines)
