"""Markdown reports: a run's ``report.md``, an evaluation's ``report.md`` and tables of figures,
the comparison of runs, and the grid's ``comparison.md``.
Must not compute figures or write files: every function returns text from results it is given.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import RESEARCH_ONLY
from .evaluation.runs import RUN_KEYS

__all__ = ["comparison_markdown", "evaluation_report", "grid_markdown", "metrics_markdown", "overlap_markdown",
           "run_report"]


def _fmt(fig: dict, digits=3) -> str:
    value, low, high = fig["value"], fig["ci_low"], fig["ci_high"]
    if value is None or np.isnan(value):
        return "n/a"
    if np.isnan(low):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def metrics_markdown(result: dict) -> str:
    """Per-image and per-patient figures side by side, as a Markdown table."""
    lines = ["| metric | per image | per patient | resamples used (image / patient) |",
             "|---|---|---|---|"]
    for name, fig in result["image"]["metrics"].items():
        pat = result["patient"]["metrics"].get(name, {"value": float("nan"), "ci_low": float("nan"),
                                                      "ci_high": float("nan"), "n_used": 0})
        lines.append(f"| {name} | {_fmt(fig)} | {_fmt(pat)} | {fig['n_used']} / {pat['n_used']} |")
    return "\n".join(lines)


def _cm_markdown(cm, classes) -> str:
    lines = ["| true \\ predicted | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    for cls, row in zip(classes, cm):
        lines.append(f"| {cls} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def evaluation_report(result: dict, *, figures=()) -> str:
    """The ``report.md`` of an evaluation folder."""
    classes = result["classes"]
    sel = result["threshold_selection"] or {}
    boot = result["bootstrap"]
    counts = ", ".join(f"{c}: {n['images']} images / {n['patients']} patients"
                       for c, n in result["class_counts"].items())
    if result["decision"] == "threshold":
        decision = (f"An image (or patient) is called **{result['positive_class']}** when its probability is "
                    f">= **{result['threshold']:.4f}**. The threshold was chosen by {sel.get('description', '?')} "
                    f"(validation sensitivity {sel.get('sensitivity', float('nan')):.3f}, specificity "
                    f"{sel.get('specificity', float('nan')):.3f}, {sel.get('n_images', '?')} images) and applied "
                    "unchanged here; the scored data tuned nothing.")
    else:
        decision = ("Three classes: the predicted class is the one with the highest probability (arg-max); "
                    "per-class figures are one-vs-rest, `[macro]` their unweighted mean.")
    lines = [
        f"# Evaluation `{result['name']}` of run `{result['run']}`",
        "",
        f"*{RESEARCH_ONLY}*",
        "",
        f"- Data: {result['data']} (task `{result['task']}`, classes {classes})",
        f"- {result['n_images']} images of {result['n_patients']} patients ({counts}); figures at the data's "
        "own prevalence, no re-balancing.",
        f"- Decision: {decision}",
        f"- Intervals: {boot['level']:.0%} percentile bootstrap over **patients** ({boot['n_bootstrap']} "
        f"resamples, seed {boot['seed']}); a resample in which a figure is undefined (a class not drawn) is "
        "skipped for that figure, the last column says how many were used.",
        "- Per patient: a patient's probability is the mean over their images.",
    ]
    if result.get("unreadable"):
        lines.append(f"- {len(result['unreadable'])} images could not be read and were left out: "
                     + ", ".join(f"`{b['image']}`" for b in result["unreadable"][:20]))
    lines += ["", overlap_markdown(result)] if result.get("overlap") else []
    lines += ["", "## Figures with 95% confidence intervals" if boot["level"] == 0.95 else "## Figures", "",
              metrics_markdown(result), "",
              "## Confusion matrix (images)", "", _cm_markdown(result["image"]["confusion_matrix"], classes), "",
              "## Confusion matrix (patients)", "", _cm_markdown(result["patient"]["confusion_matrix"], classes),
              ""]
    if figures:
        lines += ["## Figures", ""] + [f"![{f}](figures/{f})" for f in figures] + [""]
    return "\n".join(lines)


def _metric_names(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if f"{c}_ci_low" in table.columns]


def comparison_markdown(table: pd.DataFrame, *, digits=3) -> str:
    """The comparison table as Markdown: one cell ``value [low, high]`` per metric."""
    keys = ["run", "task", *RUN_KEYS, "data", "level", "n_images", "n_patients", "threshold"]
    keys = [k for k in keys if k in table.columns]
    names = _metric_names(table)
    lines = ["| " + " | ".join(keys + names) + " |", "|---" * (len(keys) + len(names)) + "|"]
    for _, row in table.iterrows():
        cells = []
        for k in keys:
            v = row[k]
            cells.append(f"{v:.4f}" if k == "threshold" and isinstance(v, float) and not np.isnan(v) else
                         ("" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)))
        for m in names:
            cells.append(_fmt({"value": row[m], "ci_low": row[f"{m}_ci_low"], "ci_high": row[f"{m}_ci_high"]},
                              digits))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_report(run_name: str, options: dict, config: dict, counts: dict, metrics: dict, classes) -> str:
    """A run folder's ``report.md``: settings, images per class and part, threshold-free figures.

    Args:
        run_name: The run folder's name.
        options: The run's options (``TrainConfig.to_dict()``), listed as its settings.
        config: The run's ``config.json`` record (versions, backend).
        counts: Images per class and patients, per part. metrics: The run's ``metrics.json``.
        classes: Class names in model output order.
    """
    lines = [f"# Run {run_name}", "", f"> {RESEARCH_ONLY}", "", "## Settings", "",
             "| option | value |", "| --- | --- |"]
    for key, value in options.items():
        lines.append(f"| {key} | {value} |")
    lines += ["", f"Classes (model output order): {', '.join(classes)}. "
              f"Keras {config['keras_version']} ({config['keras_backend']} backend), covidxr {config['covidxr_version']}.",
              "", "## Images per class and part", "",
              "| part | " + " | ".join(classes) + " | patients |",
              "| --- | " + " | ".join("---" for _ in classes) + " | --- |"]
    for part, row in counts.items():
        lines.append(f"| {part} | " + " | ".join(str(row[c]) for c in classes) + f" | {row['patients']} |")
    lines += ["", "## Training curves", "", "![training curves](figures/training_curves.png)", "",
              f"Best validation ROC AUC {metrics.get('best_val_auc')} at epoch {metrics.get('best_epoch')} "
              f"(phase {metrics.get('best_phase')}).", "",
              "## Threshold-free metrics (best checkpoint)", "",
              "| part | images | ROC AUC | PR AUC | log loss |", "| --- | --- | --- | --- | --- |"]

    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    for part in ("val", "test"):
        m = metrics[part]
        lines.append(f"| {part} | {m['images']} | {fmt(m['roc_auc'])} | {fmt(m['pr_auc'])} | {fmt(m['loss'])} |")
    lines += ["", "Decision thresholds, confidence intervals and further figures: `covidxr evaluate`.", ""]
    return "\n".join(lines)


def grid_markdown(pooled: pd.DataFrame, per_run: pd.DataFrame, *, record=None) -> str:
    """The grid's ``comparison.md``: settings, the folds-pooled table, thresholds per fold, the
    per-run table.

    Args:
        pooled, per_run: :func:`covidxr.evaluation.pooling.grid_comparison`'s tables.
        record: The grid's ``grid.json`` content (shown in the header).
    """
    record = record or {}
    opts = record.get("options", {})
    comp = record.get("comparison", {})
    settings = ", ".join(f"{k}={opts[k]}" for k in ("task", "weights", "image_size", "epochs", "fine_tune_epochs",
                                                     "batch_size", "seed") if k in opts)
    lines = [
        "# Grid comparison", "", f"*{RESEARCH_ONLY}*", "",
        f"- Backbones: {', '.join(record.get('backbones', sorted(set(pooled['backbone']))))}; strategies: "
        f"{', '.join(record.get('strategies', sorted(set(pooled['strategy']))))}; "
        f"{record.get('folds', '?')} patient-grouped folds.",
        f"- Settings: {settings}." if settings else "- Settings: see grid.json.",
        "- Folds pooled: the test predictions of all folds of one backbone × strategy are scored together; "
        "each image is decided at the threshold its own fold chose on its validation part "
        f"({comp.get('threshold_method', 'youden')}); ROC AUC, PR AUC and Brier use the pooled probabilities.",
        f"- Intervals: {comp.get('level', 0.95):.0%} percentile bootstrap over patients "
        f"({comp.get('n_bootstrap', '?')} resamples, seed {comp.get('seed', '?')}); per patient: mean "
        "probability over the patient's images.",
        "", "## Folds pooled (per backbone × strategy)", "", comparison_markdown(pooled), "",
        "Thresholds per fold:", "",
    ]
    for _, row in pooled[pooled["level"] == "image"].iterrows():
        lines.append(f"- {row['run']}: {row['thresholds']}")
    lines += ["", "## Per run (each fold's own test part)", "", comparison_markdown(per_run), "",
              "![comparison](comparison.png)", ""]
    return "\n".join(lines)


def overlap_markdown(result: dict) -> str:
    """The report's section on the overlap between an external dataset and the run's own data
    (``result["overlap"]``, as :func:`covidxr.evaluation.overlap.overlap_summary` gives it)."""
    block = result["overlap"]
    lines = ["## Overlap with the run's training and validation data", ""]
    if not block["checked"]:
        return "\n".join(lines + ["**Not checked**: the run has no split.csv, so these figures may include images "
                                  "it was trained on.", ""])
    how = {"exact and near": "content hashes, exact and near", "exact": "exact content hashes only (split.csv)",
           "none": "no content hashes"}.get(block["content"], str(block["content"]))
    how += "; paths and patient ids (the run's own dataset folder)" if block["same_dataset"] else \
        "; not by path or patient id (another dataset folder: ids there name other people)"
    lines.append(f"- Compared by {how}: {block['n_checked']} rows checked.")
    if block["n_rows"]:
        counts = ", ".join(f"{kind} {n}" for kind, n in block["counts"].items() if n)
        fate = ("**KEPT and scored** (allow_overlap): the figures above are inflated and are **not** an external "
                "validation" if block["kept"] else "left out of every figure and score")
        lines.append(f"- **{block['n_rows']} rows are images the run was trained or validated on** ({counts}); "
                     f"{fate}: " + ", ".join(f"`{i['image']}` ({'+'.join(i['kinds'])}, run `{i['run_image']}`, "
                                              f"{i['run_part']})" for i in block["images"][:20])
                     + (" ..." if len(block["images"]) > 20 else ""))
    else:
        lines.append("- No row is an image the run was trained or validated on.")
    if block["in_run_test"]:
        lines.append(f"- {block['in_run_test']} rows are images of the run's own test part: kept, flagged "
                     "`in_run_test` in predictions.csv.")
    lines += [f"- {w}" for w in block["warnings"]]
    return "\n".join(lines + [""])
