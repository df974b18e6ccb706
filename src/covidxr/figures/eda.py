"""Figures of exploratory data analysis: sex, age, class counts per task, views, images per
patient, sources, a grid of sample images, and side-by-side figures of candidate same-patient pairs.
Must not change or filter the data it is given: every function draws a frame as it is.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image

from ..data import task_counts
from ..images import load_image
from .common import CATEGORY_COLOURS, DATASET_ATTRIBUTION, new_axes, save_figure

__all__ = ["eda_figure", "plot_age_by_sex", "plot_class_counts", "plot_images_per_patient", "plot_sample_grid",
           "plot_review_pair", "plot_sex_distribution", "plot_sources", "plot_views_modalities", "write_eda_figures",
           "write_review_figures"]


def _label_bars(ax, bars):
    for bar in bars:
        height = bar.get_height()
        ax.annotate(f"{int(height)}", (bar.get_x() + bar.get_width() / 2, height),
                    ha="center", va="bottom", fontsize=8)


def plot_sex_distribution(frame: pd.DataFrame, *, ax=None, by="category"):
    """Images per sex, split by ``by`` (category or label). Blank sex is shown as "unknown"."""
    ax = new_axes(ax)
    table = (frame.assign(sex=frame["sex"].fillna("unknown"))
             .groupby(["sex", by]).size().unstack(fill_value=0))
    table.plot.bar(ax=ax, stacked=True, rot=0,
                   color=[CATEGORY_COLOURS.get(c, None) for c in table.columns])
    ax.set(title="Sex", xlabel="", ylabel="images")
    ax.legend(title=by, fontsize=8)
    return ax


#: Colours of the sexes (not class colours).
SEX_COLOURS = {"M": "#009e73", "F": "#cc79a7", "unknown": "#999999"}


def plot_age_by_sex(frame: pd.DataFrame, *, ax=None, bins=range(0, 101, 10)):
    """Patients per age band, one bar per sex side by side (so no sex hides another): each
    patient counted once, at the age of their first image with an age; patients without an
    age are counted in the title."""
    ax = new_axes(ax)
    edges = np.asarray(list(bins), dtype=float)
    rows = frame.assign(sex=frame["sex"].fillna("unknown").astype(str), patient=frame["patient"].astype(str))
    known = rows.dropna(subset=["age"]).sort_values("age").groupby("patient", sort=False).first()
    no_age = rows["patient"].nunique() - len(known)
    sexes = [s for s in ("F", "M", "unknown") if s in set(known["sex"])] + sorted(set(known["sex"]) - {"F", "M", "unknown"})
    width = np.diff(edges).min() / (len(sexes) + 1) if len(edges) > 1 else 1.0
    for k, sex in enumerate(sexes):
        counts, _ = np.histogram(known.loc[known["sex"] == sex, "age"], bins=edges)
        ax.bar(edges[:-1] + width * (k + 0.5), counts, width=width, align="edge", color=SEX_COLOURS.get(sex, "#555555"),
               label=f"{sex} ({int(counts.sum())} patients)")
    ax.set(title=f"Age by sex, per patient ({no_age} patients without age)", xlabel="age (years)",
           ylabel="patients")
    ax.set_xticks(edges)
    ax.legend(fontsize=8)
    return ax


def plot_class_counts(counts: pd.DataFrame, *, ax=None):
    """Images per class for each task, with patient counts in the labels.

    Args:
        counts: Output of :func:`covidxr.data.task_counts` (task, class, images, patients).
    """
    ax = new_axes(ax, figsize=(7, 3.5))
    x = 0
    ticks, names = [], []
    for task, group in counts.groupby("task", sort=False):
        for _, row in group.iterrows():
            bar = ax.bar(x, row["images"], color=CATEGORY_COLOURS.get(row["class"], "#999999"))
            ax.annotate(f"{row['images']}\n({row['patients']} pat.)", (x, row["images"]),
                        ha="center", va="bottom", fontsize=7)
            ticks.append(x)
            names.append(f"{row['class']}")
            x += 1
            del bar
        ax.annotate(task, (x - len(group) / 2 - 0.5, -0.18), xycoords=("data", "axes fraction"),
                    ha="center", fontsize=8, fontweight="bold")
        x += 0.8
    ax.set_xticks(ticks, names, fontsize=7, rotation=30)
    ax.set(title="Class counts per task (images, patients)", ylabel="images")
    ax.margins(y=0.25)
    return ax


def plot_views_modalities(frame: pd.DataFrame, *, ax=None):
    """Images per view and modality."""
    ax = new_axes(ax)
    table = (frame.assign(view=frame["view"].fillna("unknown"), modality=frame["modality"].fillna("unknown"))
             .groupby(["view", "modality"]).size().unstack(fill_value=0))
    table.plot.barh(ax=ax, stacked=True)
    ax.set(title="Views and modalities", xlabel="images", ylabel="")
    return ax


def plot_images_per_patient(frame: pd.DataFrame, *, ax=None):
    """How many images each patient has (the reason splits must be by patient)."""
    ax = new_axes(ax)
    per_patient = frame.groupby("patient").size()
    counts = per_patient.value_counts().sort_index()
    bars = ax.bar(counts.index.astype(str), counts.to_numpy(), color="#5d6d7e")
    _label_bars(ax, bars)
    ax.set(title=f"Images per patient ({len(per_patient)} patients, {len(frame)} images)",
           xlabel="images of one patient", ylabel="patients")
    return ax


def plot_sources(frame: pd.DataFrame, *, ax=None, top=12):
    """Images per source (URL host) and category: shows how far source and label coincide."""
    ax = new_axes(ax, figsize=(6, 4))
    table = frame.groupby(["source", "category"]).size().unstack(fill_value=0)
    if table.empty:  # class folders, COVID-QU-Ex: no sources recorded
        ax.text(0.5, 0.5, "no sources recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set(title="Images per source", xticks=[], yticks=[])
        return ax
    table = table.loc[table.sum(axis=1).sort_values(ascending=False).index[:top]]
    table.plot.barh(ax=ax, stacked=True, color=[CATEGORY_COLOURS.get(c) for c in table.columns])
    ax.invert_yaxis()
    ax.set(title=f"Images per source (top {top})", xlabel="images", ylabel="")
    return ax


def plot_sample_grid(frame: pd.DataFrame, *, samples=4, seed=0, by="category", image_size=160,
                     load=None):
    """A grid of sample images, one row per class, with the attribution underneath.

    Args:
        frame: Rows with ``path`` and the ``by`` column.
        samples: Images per class (columns).
        seed: Which images are drawn.
        image_size: Thumbnail size in pixels.
        load: ``path -> 2-D uint8 array``; default: :func:`covidxr.images.load_image`.

    Returns:
        The Matplotlib figure.
    """
    if load is None:
        load = load_image
    classes = sorted(frame[by].unique())
    fig, axes = plt.subplots(len(classes), samples, figsize=(1.9 * samples, 2.0 * len(classes) + 0.4),
                             squeeze=False, layout="constrained")
    rng = np.random.default_rng(seed)
    for r, cls in enumerate(classes):
        rows = frame[frame[by] == cls]
        picks = rows.iloc[rng.permutation(len(rows))[:samples]]
        for c in range(samples):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(picks):
                row = picks.iloc[c]
                image = load(row["path"])
                thumb = Image.fromarray(image)
                thumb.thumbnail((image_size, image_size))
                ax.imshow(np.asarray(thumb), cmap="gray", vmin=0, vmax=255)
                ax.set_title(f"{str(row.get('finding', ''))[:22]}\n{row.get('view', '')}", fontsize=7)
            else:
                ax.axis("off")
            if c == 0:
                ax.set_ylabel(f"{cls} (n={len(rows)})", fontsize=9)
    fig.suptitle("Sample images per class", fontsize=10)
    fig.supxlabel(DATASET_ATTRIBUTION, fontsize=6)
    return fig


def eda_figure(frame: pd.DataFrame, counts: pd.DataFrame):
    """The EDA overview: sex, age, class counts per task, views, images per patient, sources."""
    fig, axes = plt.subplots(3, 2, figsize=(12, 12), layout="constrained")
    plot_sex_distribution(frame, ax=axes[0, 0])
    plot_age_by_sex(frame, ax=axes[0, 1])
    plot_class_counts(counts, ax=axes[1, 0])
    plot_views_modalities(frame, ax=axes[1, 1])
    plot_images_per_patient(frame, ax=axes[2, 0])
    plot_sources(frame, ax=axes[2, 1])
    return fig


def write_eda_figures(frame: pd.DataFrame, out_dir, *, samples=4, seed=0) -> list[Path]:
    """Write the EDA figures as PNG files into ``out_dir`` (created if needed).

    Returns:
        The paths written: ``eda_overview.png``, one PNG per panel, ``sample_grid.png``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = task_counts(frame)
    written = []
    panels = {
        "eda_sex.png": lambda ax: plot_sex_distribution(frame, ax=ax),
        "eda_age_by_sex.png": lambda ax: plot_age_by_sex(frame, ax=ax),
        "eda_class_counts.png": lambda ax: plot_class_counts(counts, ax=ax),
        "eda_views.png": lambda ax: plot_views_modalities(frame, ax=ax),
        "eda_images_per_patient.png": lambda ax: plot_images_per_patient(frame, ax=ax),
        "eda_sources.png": lambda ax: plot_sources(frame, ax=ax),
    }
    fig = eda_figure(frame, counts)
    written.append(save_figure(fig, out / "eda_overview.png"))
    for name, draw in panels.items():
        fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
        draw(ax)
        written.append(save_figure(fig, out / name))
    fig = plot_sample_grid(frame, samples=samples, seed=seed)
    written.append(save_figure(fig, out / "sample_grid.png"))
    return written


def plot_review_pair(frame: pd.DataFrame, pair, *, load=None, image_size=512):
    """Two images of a candidate same-patient pair side by side, each with its file, patient, split
    group, label and size underneath, the near-hash distance above them.

    Args:
        frame: The grouped frame the pair's row positions ``a`` and ``b`` index (``path``, ``image``).
        pair: A row of :func:`covidxr.data.same_patients.review_pairs` (``a, b, patient_a, ...``).
        load: ``path -> 2-D uint8 array``; default: :func:`covidxr.images.load_image`.
        image_size: The longer side each image is shown at, in pixels.

    Returns:
        The Matplotlib figure.
    """
    load = load_image if load is None else load
    fig, axes = plt.subplots(1, 2, figsize=(11, 6.2), layout="constrained")
    for ax, side in zip(axes, ("a", "b")):
        row = frame.iloc[int(pair[side])]
        image = load(row["path"])
        thumb = Image.fromarray(image)
        thumb.thumbnail((image_size, image_size))
        ax.imshow(np.asarray(thumb), cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{row['image']}\npatient {pair['patient_' + side]}, group {str(pair['group_' + side])[:40]}\n"
                      f"{pair['label_' + side]}, {image.shape[1]}×{image.shape[0]} px", fontsize=8)
    fig.suptitle(f"near-hash distance {int(pair['distance'])} of 256 bits: one patient? (review, then list "
                 "confirmed pairs in a --same-patients file)", fontsize=10)
    fig.supxlabel(DATASET_ATTRIBUTION, fontsize=6)
    return fig


def _slug(text) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-.")[:40] or "x"


#: At most this many review figures are drawn (the closest pairs; every pair is in ``review_pairs.csv``):
#: a collection of look-alike films can have hundreds of candidates within the review distance.
MAX_REVIEW_FIGURES = 24


def write_review_figures(frame: pd.DataFrame, pairs: pd.DataFrame, out_dir, *, load=None,
                         limit=MAX_REVIEW_FIGURES) -> list[Path]:
    """One :func:`plot_review_pair` PNG per pair, ``out_dir/pair-<nn>_<patient_a>_<patient_b>.png``,
    for the ``limit`` closest pairs (closest first, as ``pairs`` is ordered; ``out_dir`` created if needed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = frame.reset_index(drop=True)
    written = []
    for i, pair in enumerate(pairs.head(limit).to_dict("records"), start=1):
        name = f"pair-{i:02d}_{_slug(pair['patient_a'])}_{_slug(pair['patient_b'])}.png"
        written.append(save_figure(plot_review_pair(frame, pair, load=load), out / name))
    return written
