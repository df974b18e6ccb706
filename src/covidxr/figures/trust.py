"""Figures of trust at a new site: the risk-coverage curve of selective prediction, reliability
before and after a site's recalibration, and how the recalibration's gain depends on the number of
labelled images.
Must not compute results: it draws what :mod:`covidxr.evaluation.selective` and
:mod:`covidxr.evaluation.calibration` return.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .common import new_axes
from .evaluation import plot_calibration

__all__ = ["plot_gain_by_size", "plot_recalibration", "plot_risk_coverage"]


def plot_risk_coverage(curves: dict, summary: dict, *, ax=None, title="Risk-coverage"):
    """Error rate among the decided images against the share decided, per image and per patient.

    Args:
        curves: ``{"image": frame, "patient": frame}`` of :func:`covidxr.evaluation.selective.risk_coverage`.
        summary: :func:`covidxr.evaluation.selective.selective_summary`'s dict (the areas).
    """
    ax = new_axes(ax, figsize=(5, 3.8))
    for level, colour in (("image", "#c0392b"), ("patient", "#2e86c1")):
        curve = curves.get(level)
        if curve is None or curve.empty:
            continue
        block = summary[level]
        ax.plot(curve["coverage"], curve["risk"], color=colour, lw=1.4,
                label=f"per {level} (AURC {block['aurc']:.3f}, n={block['n']})")
        ax.axhline(block["error_rate"], color=colour, ls=":", lw=0.8)
    ax.set(xlabel="coverage (share of images decided, most confident first)", ylabel="error rate among decided",
           title=title, xlim=(0, 1), ylim=(0, None))
    ax.legend(fontsize=7, loc="upper left")
    return ax


def plot_recalibration(before: pd.DataFrame, after: pd.DataFrame, classes, *, title="Rest of the site"):
    """Reliability diagrams of the same rows with the home probabilities and the site's recalibrated ones."""
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 4), layout="constrained")
    plot_calibration(before, classes, ax=axes[0], title=f"{title}: before")
    plot_calibration(after, classes, ax=axes[1], title=f"{title}: after")
    return fig


def plot_gain_by_size(table: pd.DataFrame, *, metrics=("ece", "brier", "specificity", "sensitivity")):
    """Each metric on the rest of the site before and after recalibration, against the number of
    labelled images: median over the draws with the 10th-90th percentile band.

    Args:
        table: :func:`covidxr.evaluation.calibration.gain_by_size`'s rows.
        metrics: Metrics to draw, one panel each.
    """
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.3 * len(metrics), 3.4), layout="constrained")
    axes = np.atleast_1d(axes)
    sizes = sorted(table["labelled"].unique()) if not table.empty else []
    for ax, name in zip(axes, metrics):
        for when, colour in (("before", "grey"), ("after", "#c0392b")):
            column = table.groupby("labelled")[f"{name}_{when}"] if sizes else None
            if column is None:
                continue
            mid = column.median().reindex(sizes)
            low, high = column.quantile(0.1).reindex(sizes), column.quantile(0.9).reindex(sizes)
            ax.plot(sizes, mid, "o-", color=colour, label=when)
            ax.fill_between(sizes, low, high, color=colour, alpha=0.15)
        ax.set(xlabel="labelled images of the site", title=name, xticks=sizes)
        ax.legend(fontsize=7)
    repeats = int(table.groupby("labelled").size().max()) if sizes else 0
    fig.suptitle(f"Recalibration gain on the rest of the site (median, 10-90% of {repeats} draws)", fontsize=10)
    return fig
