"""Figures of training and evaluation: training curves, confusion matrices with the figures
beside them, ROC, precision-recall and calibration curves, and a comparison of runs.
Must not choose thresholds or compute intervals: it draws the results the evaluation layer returns.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from ..evaluation import metrics as M
from .common import LEVEL_COLOURS, class_colour, new_axes, run_label, save_figure

__all__ = ["DEFAULT_COMPARISON_METRICS", "plot_calibration", "plot_comparison", "plot_confusion_matrix",
           "plot_confusion_summary", "plot_precision_recall", "plot_roc", "plot_training_curves",
           "write_evaluation_figures"]


def plot_training_curves(history, ax=None, *, title=None, best_epoch=None):
    """Loss and AUC per epoch, training vs validation, both phases, phase boundary and the epoch
    whose weights the run kept (``model.keras``) marked.

    Args:
        history: ``history.csv`` of a run (path or DataFrame) with columns ``epoch``,
            ``phase`` and ``loss``/``val_loss``/``auc``/``val_auc`` (missing ones are skipped).
        ax: Two Matplotlib axes (loss, AUC); None makes a new figure.
        title: The figure's title, e.g. :func:`covidxr.figures.run_label` of the run's config
            (which names the weights source); None: no title.
        best_epoch: The epoch kept, as the run's ``metrics.json`` records it (``best_epoch``: the
            lowest validation loss, an epoch counting as lower only by more than a margin); None:
            the epoch of the lowest validation loss in ``history`` (the same unless two are within
            that margin).

    Returns:
        The two axes (numpy array of shape (2,)).
    """
    if not isinstance(history, pd.DataFrame):
        history = pd.read_csv(history)
    own = ax is None   # a figure of its own: one legend under both panels, clear of the curves
    if own:
        _, ax = plt.subplots(1, 2, figsize=(10, 3.9), layout="constrained")
    axes = np.asarray(ax).ravel()
    if axes.size != 2:
        raise ValueError(f"Expected two axes (loss, AUC). Received: ax with {axes.size} axes")
    epoch = history["epoch"] if "epoch" in history else pd.Series(np.arange(1, len(history) + 1))
    if best_epoch is None and "val_loss" in history and history["val_loss"].notna().any():
        best_epoch = epoch.loc[history["val_loss"].idxmin()]
    kept = history[epoch.to_numpy() == best_epoch] if best_epoch is not None else history.iloc[:0]
    best_label = None
    if len(kept):
        row = kept.iloc[0]
        scores = [f"{name} {row[col]:.3f}" for col, name in (("val_loss", "val loss"), ("val_auc", "ROC AUC"))
                  if col in row and pd.notna(row[col])]
        best_label = f"model kept: epoch {int(best_epoch)} ({', '.join(scores)})"
    for a, metric, name in ((axes[0], "loss", "Loss"), (axes[1], "auc", "ROC AUC")):
        for column, style, label in ((metric, "-o", "train"), (f"val_{metric}", "--s", "validation")):
            if column in history:
                a.plot(epoch, history[column], style, markersize=3, label=label)
        if "phase" in history:
            phases = history["phase"].to_numpy()
            for i in np.flatnonzero(phases[1:] != phases[:-1]):
                boundary = (epoch.iloc[i] + epoch.iloc[i + 1]) / 2
                a.axvline(boundary, color="grey", linestyle=":", linewidth=1)
                a.annotate("fine-tuning", (boundary, 1.0), xycoords=("data", "axes fraction"),
                           xytext=(3, -10), textcoords="offset points", fontsize=7, color="grey")
        if best_label is not None:
            a.axvline(best_epoch, color="#27ae60", linewidth=1.2, alpha=0.8, label=best_label)
        a.set(title=name, xlabel="epoch", ylabel=metric)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(history) == 1:  # phase 1 as one convex fit: its point, with its values, on a readable scale
            _single_epoch(a, history, epoch, metric)
        if not own:
            a.legend(fontsize=7)
    if own:
        axes[0].figure.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize=8)
    if title:
        axes[0].figure.suptitle(title, fontsize=9)
    return axes


def _single_epoch(ax, history, epoch, metric):
    """A one-row history: the values written beside their points, the scale from 0 (loss) or 0.5
    (ROC AUC) rather than a zoom on two points."""
    values = []
    for column, side in ((metric, -1), (f"val_{metric}", 1)):  # training on the left, validation on the right
        if column in history and pd.notna(history[column].iloc[0]):
            values.append(history[column].iloc[0])
            ax.annotate(f"{'validation' if side > 0 else 'train'} {values[-1]:.3f}", (epoch.iloc[0], values[-1]),
                        xytext=(8 * side, 0), textcoords="offset points", fontsize=7, va="center",
                        ha="left" if side > 0 else "right")
    top = max(values, default=1.0)
    ax.set_xlim(epoch.iloc[0] - 0.5, epoch.iloc[0] + 0.5)
    ax.set_ylim(*((0.5, 1.0) if metric == "auc" else (0.0, 1.2 * top)))
    ax.set_xticks([epoch.iloc[0]], [f"{int(epoch.iloc[0])}\n(phase 1)"])


def _curves(predictions: pd.DataFrame, classes):
    """The probabilities (n, C) and the curves to draw, ``[(class index, name, 0/1 truth (n,))]``:
    the positive class for two classes, each class one-vs-rest for more; a class whose truth is
    all 0 or all 1 in ``predictions`` has no curve."""
    y, probs = M.class_probabilities(predictions, classes)
    targets = [(1, classes[1])] if len(classes) == 2 else list(enumerate(classes))
    truths = [(i, name, (y == i).astype(int)) for i, name in targets]
    return probs, [(i, name, yi) for i, name, yi in truths if yi.min() != yi.max()]


def _operating_point(called, truth):
    """Sensitivity, false-positive rate and precision (NaN when nothing is called) of the
    decisions ``called`` (bool (n,)) against ``truth`` (0/1 (n,))."""
    hits = (called & (truth == 1)).sum()
    sensitivity = hits / max((truth == 1).sum(), 1)
    false_positive_rate = (called & (truth == 0)).sum() / max((truth == 0).sum(), 1)
    precision = hits / called.sum() if called.sum() else np.nan
    return sensitivity, false_positive_rate, precision


def plot_confusion_matrix(cm, classes, *, normalize=False, ax=None, title=None):
    """A confusion matrix (rows = true class, columns = predicted), counts or row-normalised.

    Args:
        cm: Array-like of shape (C, C).
        classes: The C class names.
        normalize: Divide each row by its total (each row then sums to 1).
    """
    ax = new_axes(ax, figsize=(3.6, 3.2))
    cm = np.asarray(cm, dtype=float)
    shown = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize else cm
    ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else max(shown.max(), 1))
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            text = f"{shown[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
            dark = shown[i, j] > (0.5 if normalize else shown.max() / 2)
            ax.text(j, i, text, ha="center", va="center", color="white" if dark else "black", fontsize=9)
    ax.set_xticks(range(len(classes)), classes, fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true",
           title=title or ("row-normalised" if normalize else "counts"))
    return ax


def _figures_text(block: dict, *, limit=14) -> str:
    lines = []
    items = list(block["metrics"].items())
    if any("[" in name for name, _ in items):  # three classes: overall and macro figures
        items = [(n, f) for n, f in items if "[" not in n or n.endswith("[macro]")]
    for name, fig in items[:limit]:
        if fig["value"] is None or np.isnan(fig["value"]):
            lines.append(f"{name:<22} n/a")
        elif np.isnan(fig["ci_low"]):
            lines.append(f"{name:<22} {fig['value']:.3f}")
        else:
            lines.append(f"{name:<22} {fig['value']:.3f} [{fig['ci_low']:.3f}, {fig['ci_high']:.3f}]")
    return "\n".join(lines)


def _level_threshold(result: dict, level: str):
    """The threshold of one level of an evaluation result (the patient one when recorded)."""
    if level == "patient" and result.get("patient_threshold") is not None:
        return result["patient_threshold"]
    return result.get("threshold")


def plot_confusion_summary(result: dict, *, level="image"):
    """Counts, row-normalised confusion matrix and the figures with their intervals beside.

    Args:
        result: Output of :func:`covidxr.evaluation.evaluate_predictions`.
        level: ``"image"`` or ``"patient"``.

    Returns:
        The Matplotlib figure.
    """
    block = result[level]
    classes = result["classes"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), layout="constrained",
                             gridspec_kw={"width_ratios": [1, 1, 1.3]})
    plot_confusion_matrix(block["confusion_matrix"], classes, ax=axes[0], title=f"counts ({level}s)")
    plot_confusion_matrix(block["confusion_matrix"], classes, normalize=True, ax=axes[1],
                          title=f"row-normalised ({level}s)")
    axes[2].axis("off")
    limit = 14
    threshold = _level_threshold(result, level)
    head = f"threshold {threshold:.3f} (from validation)" if threshold is not None else "decision: arg-max"
    axes[2].text(0, 1, f"{head}\n{int(result['bootstrap']['level'] * 100)}% CI: Wilson (proportions), "
                 "group bootstrap (others)\n\n"
                 + _figures_text(block, limit=limit), va="top", ha="left", family="monospace", fontsize=8,
                 transform=axes[2].transAxes)
    return fig


def plot_roc(predictions: pd.DataFrame, classes, *, threshold=None, ax=None, title="ROC curve"):
    """ROC curve(s) with the operating point of the decision rule.

    Args:
        predictions: Frame with ``label`` and ``prob_<class>`` columns.
        classes: Class names in model output order.
        threshold: Two classes: the chosen threshold (marked on the curve). More classes:
            one-vs-rest curves, the arg-max decision marked on each.
    """
    from sklearn.metrics import auc, roc_curve

    ax = new_axes(ax, figsize=(4.2, 4))
    classes = list(classes)
    probs, curves = _curves(predictions, classes)
    decided = M.decide(probs, threshold=threshold)
    for i, name, yi in curves:
        fpr, tpr, _ = roc_curve(yi, probs[:, i])
        line, = ax.plot(fpr, tpr, color=class_colour(name), label=f"{name} (AUC {auc(fpr, tpr):.3f})")
        sens, fp_rate, _ = _operating_point(decided == i, yi)
        marker = f"threshold {threshold:.3f}" if len(classes) == 2 and threshold is not None else "arg-max"
        ax.plot([fp_rate], [sens], "o", color=line.get_color(), markeredgecolor="black",
                label=f"operating point ({marker})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(fontsize=7, loc="lower right")
    return ax


def plot_precision_recall(predictions: pd.DataFrame, classes, *, threshold=None, ax=None,
                          title="Precision-recall curve"):
    """Precision-recall curve(s) with the operating point; the dashed line is prevalence."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    ax = new_axes(ax, figsize=(4.2, 4))
    classes = list(classes)
    probs, curves = _curves(predictions, classes)
    decided = M.decide(probs, threshold=threshold)
    for i, name, yi in curves:
        precision, recall, _ = precision_recall_curve(yi, probs[:, i])
        ap = average_precision_score(yi, probs[:, i])
        line, = ax.step(recall, precision, where="post", color=class_colour(name), label=f"{name} (AP {ap:.3f})")
        rec, _, prec = _operating_point(decided == i, yi)
        ax.plot([rec], [prec], "o", color=line.get_color(), markeredgecolor="black",
                label="operating point")
        ax.axhline(yi.mean(), ls="--", lw=0.8, color=line.get_color())
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title=title, xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(fontsize=7, loc="lower left")
    return ax


def plot_calibration(predictions: pd.DataFrame, classes, *, n_bins=10, ax=None, title="Calibration"):
    """Reliability diagram: mean predicted probability against the observed share, per bin
    (quantile bins), for the positive class (two classes) or each class (one-vs-rest); each
    point is labelled with its bin's image count."""
    ax = new_axes(ax, figsize=(4.2, 4))
    classes = list(classes)
    probs, curves = _curves(predictions, classes)
    for i, name, yi in curves:
        bins = int(max(2, min(n_bins, len(yi) // 5)))
        edges = np.unique(np.quantile(probs[:, i], np.linspace(0, 1, bins + 1)))
        which = np.clip(np.searchsorted(edges[1:-1], probs[:, i], side="right"), 0, max(len(edges) - 2, 0))
        counts = np.bincount(which, minlength=max(len(edges) - 1, 1))
        used = np.flatnonzero(counts)
        predicted = np.array([probs[which == b, i].mean() for b in used])
        observed = np.array([yi[which == b].mean() for b in used])
        brier = float(np.mean((probs[:, i] - yi) ** 2))
        ax.plot(predicted, observed, "o-", color=class_colour(name), label=f"{name} (Brier {brier:.3f})")
        for x, y, n in zip(predicted, observed, counts[used]):
            ax.annotate(f"n={n}", (x, y), xytext=(3, -9), textcoords="offset points", fontsize=6,
                        color=class_colour(name))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfect calibration")
    ax.set(xlabel="mean predicted probability", ylabel="observed share", title=title, xlim=(0, 1),
           ylim=(0, 1.02))
    ax.legend(fontsize=7, loc="upper left")
    return ax


DEFAULT_COMPARISON_METRICS = ("roc_auc", "pr_auc", "sensitivity", "specificity", "balanced_accuracy", "mcc")

#: The value a model that guesses gets (the PR AUC's chance level is the prevalence: not drawn).
CHANCE = {"roc_auc": 0.5, "balanced_accuracy": 0.5, "mcc": 0.0}


def plot_comparison(table: pd.DataFrame, *, metrics=None, level=None):
    """Each metric with its interval as an error bar, one point per run (and level).

    Args:
        table: Output of :func:`covidxr.evaluation.compare_runs` (columns ``<m>``,
            ``<m>_ci_low``, ``<m>_ci_high``).
        metrics: Which metrics (default: ROC AUC, PR AUC, sensitivity, specificity, balanced
            accuracy, MCC, or their ``[macro]`` forms for three classes).
        level: Keep only ``"image"`` or ``"patient"`` rows; None shows both.

    Returns:
        The Matplotlib figure.
    """
    if level is not None:
        table = table[table["level"] == level]
    if metrics is None:
        metrics = [m for m in DEFAULT_COMPARISON_METRICS if m in table.columns]
        metrics = metrics or [f"{m}[macro]" for m in DEFAULT_COMPARISON_METRICS if f"{m}[macro]" in table.columns]
        metrics = metrics or [m for m in ("accuracy", "balanced_accuracy", "mcc") if m in table.columns]
    missing = [m for m in metrics if f"{m}_ci_low" not in table.columns]
    if missing:
        raise ValueError(f"Expected metrics present in the table. Received: metrics={missing}")
    labels = [run_label(row) + (f" ({row['level']})" if "level" in table.columns else "") for _, row in table.iterrows()]
    n = len(metrics)
    cols = min(3, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 0.35 * len(table) * rows + 1.6 * rows),
                             squeeze=False, layout="constrained")
    ypos = np.arange(len(table))
    for k, metric in enumerate(metrics):
        ax = axes[k // cols, k % cols]
        value = table[metric].to_numpy(dtype=float)
        low = table[f"{metric}_ci_low"].to_numpy(dtype=float)
        high = table[f"{metric}_ci_high"].to_numpy(dtype=float)
        err = np.vstack([np.clip(value - low, 0, None), np.clip(high - value, 0, None)])
        err = np.nan_to_num(err)
        colours = [LEVEL_COLOURS.get(lv, "#222222") for lv in table.get("level", ["image"] * len(table))]
        for yy, v, e0, e1, c in zip(ypos, value, err[0], err[1], colours):
            ax.errorbar(v, yy, xerr=[[e0], [e1]], fmt="o", color=c, capsize=3)
        chance = CHANCE.get(metric.replace("[macro]", ""))
        if chance is not None:
            ax.axvline(chance, color="grey", linestyle="--", linewidth=0.9)
            ax.annotate("chance", (chance, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -9),
                        textcoords="offset points", fontsize=7, color="grey")
        ax.set_yticks(ypos, labels if k % cols == 0 else [""] * len(labels), fontsize=7)
        ax.set_ylim(len(table) - 0.5, -1.0)   # first run on top, a free band above it for "chance"
        ax.set(title=metric, xlim=(min(0, np.nanmin(low) if np.isfinite(low).any() else 0) - 0.02, 1.02))
        ax.grid(axis="x", alpha=0.3)
    for k in range(n, rows * cols):
        axes[k // cols, k % cols].axis("off")
    fig.suptitle("Runs compared (95% CI error bars; black = per image, orange = per patient; dashed: chance)",
                 fontsize=10)
    return fig


def write_evaluation_figures(predictions: pd.DataFrame, result: dict, out_dir) -> list[Path]:
    """Write an evaluation's figures into ``out_dir``: confusion matrices (per image and per
    patient) with the figures beside them, ROC, precision-recall and calibration curves
    (per image and per patient).

    Args:
        predictions: Scored rows (``patient``, ``label``, ``prob_<class>``).
        result: Output of :func:`covidxr.evaluation.evaluate_predictions`.

    Returns:
        The PNG paths written.
    """
    out = Path(out_dir)
    classes = result["classes"]
    per_patient = M.patient_frame(predictions, classes)
    written = []
    for level, frame in (("image", predictions), ("patient", per_patient)):
        threshold = _level_threshold(result, level)
        written.append(save_figure(plot_confusion_summary(result, level=level), out / f"confusion_{level}.png"))
        fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), layout="constrained")
        plot_roc(frame, classes, threshold=threshold, ax=axes[0], title=f"ROC ({level}s)")
        plot_precision_recall(frame, classes, threshold=threshold, ax=axes[1],
                              title=f"Precision-recall ({level}s)")
        plot_calibration(frame, classes, ax=axes[2], title=f"Calibration ({level}s)")
        written.append(save_figure(fig, out / f"curves_{level}.png"))
    return written
