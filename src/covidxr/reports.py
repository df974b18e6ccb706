"""Markdown reports: a run's ``report.md``, an evaluation's ``report.md`` and tables of figures,
the comparison of runs (also paired), and the grid's ``comparison.md``.
Must not compute figures or write files: every function returns text from results it is given.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import RESEARCH_ONLY
from .evaluation.pooling import SELECTION_RULE, grid_selection
from .evaluation.runs import RUN_KEYS

__all__ = ["INTERVALS_NOTE", "comparison_markdown", "evaluation_report", "figure_text", "grid_markdown",
           "lung_mass_markdown", "metrics_markdown", "overlap_markdown", "paired_markdown", "paired_statement", "run_report"]

#: What every table of intervals says about them.
INTERVALS_NOTE = ("Intervals are conditional on the chosen model and threshold(s) (the choice itself is not "
                  "re-made in each resample). Proportions (sensitivity, specificity, PPV, NPV, accuracy, also per "
                  "class): Wilson score interval on the effective sample size n / deff, the design effect over "
                  "split groups (Korn & Graubard 1998; worst case sum n_g^2 / sum n_g at 0 or 1), so it does not "
                  "collapse at 0 or 1; other figures (F1, balanced accuracy, MCC, AUCs, Brier, ECE): percentile "
                  "bootstrap over groups, stratified by class.")
_METHODS = {"wilson-deff": "Wilson (deff)", "bootstrap": "bootstrap"}


def _undefined(value) -> bool:
    """NaN in memory, ``null`` once read back from a strict JSON file."""
    return value is None or bool(np.isnan(value))


def figure_text(fig: dict, digits=3) -> str:
    """``value [low, high]`` of a figure dict, ``value`` without an interval, ``n/a`` when undefined
    (NaN, or ``null`` as read from ``metrics.json``)."""
    value, low, high = fig["value"], fig.get("ci_low"), fig.get("ci_high")
    if _undefined(value):
        return "n/a"
    if _undefined(low) or _undefined(high):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def metrics_markdown(result: dict) -> str:
    """Per-image and per-patient figures side by side, as a Markdown table, with the method of
    each interval (``Wilson (deff)`` or ``bootstrap``) and the resamples the bootstrap used."""
    lines = ["| metric | per image | per patient | interval | resamples used (image / patient) |",
             "|---|---|---|---|---|"]
    for name, fig in result["image"]["metrics"].items():
        pat = result["patient"]["metrics"].get(name, {"value": float("nan"), "ci_low": float("nan"),
                                                      "ci_high": float("nan"), "n_used": 0})
        method = _METHODS.get(fig.get("interval", "bootstrap"), str(fig.get("interval")))
        lines.append(f"| {name} | {figure_text(fig)} | {figure_text(pat)} | {method} | {fig['n_used']} / {pat['n_used']} |")
    return "\n".join(lines)


def _cm_markdown(cm, classes) -> str:
    lines = ["| true \\ predicted | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    for cls, row in zip(classes, cm):
        lines.append(f"| {cls} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def _decision_text(result: dict) -> str:
    """How a two-class evaluation decided: the image threshold and the patient threshold."""
    sel = result["threshold_selection"] or {}
    psel = result.get("patient_threshold_selection") or sel
    pthr = result.get("patient_threshold")
    pthr = result["threshold"] if pthr is None else pthr
    units = f"{psel['n_patients']} patients" if "n_patients" in psel else f"{psel.get('n_images', '?')} images"
    return (f"An image is called **{result['positive_class']}** when its probability is >= "
            f"**{result['threshold']:.4f}**, chosen by {sel.get('description', '?')} (validation sensitivity "
            f"{sel.get('sensitivity', float('nan')):.3f}, specificity {sel.get('specificity', float('nan')):.3f}, "
            f"{sel.get('n_images', '?')} images); a patient when their mean probability is >= **{pthr:.4f}**, "
            f"chosen by {psel.get('description', '?')} (validation sensitivity "
            f"{psel.get('sensitivity', float('nan')):.3f}, specificity {psel.get('specificity', float('nan')):.3f}, "
            f"{units}). Both were applied unchanged here; the scored data tuned nothing.")


def evaluation_report(result: dict, *, figures=()) -> str:
    """The ``report.md`` of an evaluation folder."""
    classes = result["classes"]
    boot = result["bootstrap"]
    counts = ", ".join(f"{c}: {n['images']} images / {n['patients']} patients"
                       for c, n in result["class_counts"].items())
    if result["decision"] == "threshold":
        decision = _decision_text(result)
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
        f"- {boot['level']:.0%} intervals. {INTERVALS_NOTE} Bootstrap: {boot['n_bootstrap']} resamples of "
        f"the split unit `{boot.get('unit', 'patient')}`, seed {boot['seed']}; a resample in which a figure is "
        "undefined is skipped for that figure, the last column says how many were used. The `interval` column "
        "names each figure's method.",
        "- Per patient: a patient's probability is the mean over their images.",
    ]
    left_out = result.get("left_out_by_task") or {}
    if left_out.get("n_images"):
        lines.append(f"- {left_out['n_images']} images of findings task `{result['task']}` leaves out were left out, "
                     "as in training: " + ", ".join(f"{k} {v}" for k, v in left_out["categories"].items())
                     + " (" + ", ".join(f"{k}: {v}" for k, v in left_out["findings"].items()) + ")")
    if result.get("unreadable"):
        lines.append(f"- {len(result['unreadable'])} images could not be read and were left out: "
                     + ", ".join(f"`{b['image']}`" for b in result["unreadable"][:20]))
    lines += ["", overlap_markdown(result)] if result.get("overlap") else []
    lines += ["", "## Figures with 95% confidence intervals" if boot["level"] == 0.95 else "## Figures", "",
              metrics_markdown(result), "",
              "## Confusion matrix (images)", "", _cm_markdown(result["image"]["confusion_matrix"], classes), "",
              "## Confusion matrix (patients)", "", _cm_markdown(result["patient"]["confusion_matrix"], classes),
              ""]
    lines += [lung_mass_markdown(result)] if result.get("lung_mass") else []
    if figures:
        lines += ["## Figures", ""] + [f"![{f}](figures/{f})" for f in figures] + [""]
    return "\n".join(lines)


def _metric_names(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if f"{c}_ci_low" in table.columns]


def comparison_markdown(table: pd.DataFrame, *, digits=3, note=True) -> str:
    """The comparison table as Markdown: one cell ``value [low, high]`` per metric, followed (with
    ``note``) by :data:`INTERVALS_NOTE` (conditional on model and threshold; each interval's method)."""
    keys = ["run", "task", *RUN_KEYS, "data", "level", "n_images", "n_patients", "threshold", "val_roc_auc"]
    keys = [k for k in keys if k in table.columns]
    names = _metric_names(table)
    lines = ["| " + " | ".join(keys + names) + " |", "|---" * (len(keys) + len(names)) + "|"]
    for _, row in table.iterrows():
        cells = []
        for k in keys:
            v = row[k]
            cells.append(f"{v:.4f}" if k in ("threshold", "val_roc_auc") and isinstance(v, float) and not np.isnan(v) else
                         ("" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)))
        for m in names:
            cells.append(figure_text({"value": row[m], "ci_low": row[f"{m}_ci_low"], "ci_high": row[f"{m}_ci_high"]},
                              digits))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + (["", INTERVALS_NOTE] if note else []))


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
              f"Model kept: epoch {metrics.get('best_epoch')} (phase {metrics.get('best_phase')}), the lowest validation "
              f"loss ({metrics.get('best_val_loss')}; ROC AUC {metrics.get('best_val_auc')}), a later epoch counting "
              "as lower only by more than 0.01.", "",
              "## Threshold-free metrics (best checkpoint)", "",
              "| part | images | ROC AUC | PR AUC | log loss |", "| --- | --- | --- | --- | --- |"]

    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    for part in ("val", "test"):
        m = metrics[part]
        lines.append(f"| {part} | {m['images']} | {fmt(m['roc_auc'])} | {fmt(m['pr_auc'])} | {fmt(m['loss'])} |")
    lines += ["", "Decision thresholds, confidence intervals and further figures: `covidxr evaluate`.", ""]
    return "\n".join(lines)


def _selection_lines(selection: dict, pooled: pd.DataFrame) -> list[str]:
    """The grid's choice on validation, the validation AUCs of every configuration, and the
    chosen configuration's pooled test figures."""
    def auc(v):
        return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4f}"

    chosen = pooled[pooled["run"] == selection["run"]]  # one name per backbone × feature layer × strategy
    lines = ["## Chosen on validation", "",
             f"**{selection['run']}**: mean validation ROC AUC {auc(selection['val_roc_auc_mean'])} (minimum "
             f"{auc(selection['val_roc_auc_min'])}; per fold {selection['val_roc_aucs']}; image level, each fold's "
             f"own validation part). Rule: {selection.get('rule', SELECTION_RULE)}.", "",
             "| configuration | mean validation ROC AUC | minimum | per fold |", "|---|---|---|---|"]
    configs = pooled.drop_duplicates(["run"]).set_index("run")
    for entry in selection["ranking"]:
        per_fold = configs.loc[entry["run"], "val_roc_aucs"] if entry["run"] in configs.index else ""
        lines.append(f"| {entry['run']} | {auc(entry['val_roc_auc_mean'])} | {auc(entry['val_roc_auc_min'])} | "
                     f"{per_fold} |")
    lines += ["", f"Pooled test figures of the chosen configuration ({selection['run']}), the grid's result:", "",
              comparison_markdown(chosen, note=False), ""]
    return lines


def _feature_layers_text(record: dict) -> str:
    """``"feature layers: a, b; "`` for a grid with a feature-layer axis, else ``""``."""
    layers = [layer for layer in record.get("feature_layers") or [] if layer]
    if not layers:
        return ""
    return f"feature layers: {', '.join(str(layer) if layer else 'none' for layer in record['feature_layers'])}; "


def grid_markdown(pooled: pd.DataFrame, per_run: pd.DataFrame, *, record=None) -> str:
    """The grid's ``comparison.md``: settings, the configuration chosen on validation ROC AUC with
    its pooled test figures, then the descriptive tables (every configuration pooled, thresholds
    per fold, per run).

    Args:
        pooled, per_run: :func:`covidxr.evaluation.pooling.grid_comparison`'s tables.
        record: The grid's ``grid.json`` content (shown in the header; its ``selection``, from
            :func:`covidxr.evaluation.grid_selection`, is computed from ``pooled`` when absent).
    """
    record = record or {}
    opts = record.get("options", {})
    comp = record.get("comparison", {})
    settings = ", ".join(f"{k}={opts[k]}" for k in ("task", "weights", "image_size", "epochs", "fine_tune_epochs",
                                                     "batch_size", "seed") if k in opts)
    lines = [
        "# Grid comparison", "", f"*{RESEARCH_ONLY}*", "",
        f"- Backbones: {', '.join(record.get('backbones', sorted(set(pooled['backbone']))))}; "
        f"{_feature_layers_text(record)}strategies: "
        f"{', '.join(record.get('strategies', sorted(set(pooled['strategy']))))}; "
        f"{record.get('folds', '?')} patient-grouped folds.",
        f"- Settings: {settings}." if settings else "- Settings: see grid.json.",
        "- Folds pooled: the test predictions of all folds of one configuration (backbone [× feature layer] × "
        "strategy) are scored together; "
        "each image is decided at the threshold its own fold chose on its validation images, each patient at "
        f"the one chosen on its validation patients' mean probabilities ({comp.get('threshold_method', 'youden')}); "
        "ROC AUC, PR AUC, Brier and ECE use the pooled probabilities.",
        f"- {comp.get('level', 0.95):.0%} intervals ({comp.get('n_bootstrap', '?')} bootstrap resamples, seed "
        f"{comp.get('seed', '?')}), in every table below: {INTERVALS_NOTE} Per patient: mean probability over the "
        "patient's images.",
        "",
    ]
    has_val = "val_roc_auc_mean" in pooled.columns
    if has_val:
        lines += _selection_lines(record.get("selection") or grid_selection(pooled), pooled)
    lines += [
        "## All configurations: descriptive, not for choosing", "",
        "These pooled test figures describe every configuration; picking the best of them would tune on the "
        "test data (the choice above uses validation data only)." if has_val else
        "These pooled test figures describe every configuration; do not choose a configuration on them.", "",
        "### Folds pooled (per configuration)", "", comparison_markdown(pooled, note=False), "",
        "Thresholds per fold (image; patient):", "",
    ]
    for run_name, block in pooled.groupby("run", sort=False):
        image = block.loc[block["level"] == "image", "thresholds"]
        patient = block.loc[block["level"] == "patient", "thresholds"]
        lines.append(f"- {run_name}: {', '.join(image)}; {', '.join(patient)}")
    lines += ["", "### Per run (each fold's own test part)", "", comparison_markdown(per_run, note=False), "",
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


def paired_statement(result: dict, *, level="image", digits=3) -> str:
    """One line: ``roc_auc per image: A - B = 0.080 [0.020, 0.150] ...`` of a
    :func:`covidxr.evaluation.paired_difference` result."""
    block = result[level]
    d = block["difference"]
    return (f"{block['metric']} per {level}: A − B = {d['value']:.{digits}f} [{d['ci_low']:.{digits}f}, "
            f"{d['ci_high']:.{digits}f}] ({block['level']:.0%} paired bootstrap over split groups, "
            f"{block['n_bootstrap']} resamples; p {_p_text(block)}; A = {result['runs']['a']}, "
            f"B = {result['runs']['b']})")


def _p_text(block) -> str:
    """``= 0.004``, or ``< 1/n`` when no resample crossed 0 (a bootstrap p-value is never 0)."""
    p, n = block["p_value"], int(block.get("n_bootstrap") or 0)
    return f"< {1 / n:.2g}" if p == 0 and n else f"= {p:.3g}"


def paired_markdown(result: dict, *, digits=3) -> str:
    """The Markdown table of a paired comparison (:func:`covidxr.evaluation.paired_difference`):
    one row per level with A, B, A − B (each with its interval), the p-value and the counts,
    then the one-line statements and how the interval and p-value were made."""
    runs = result["runs"]
    lines = [f"| level | A: `{runs['a']}` | B: `{runs['b']}` | A − B | p | rows | groups |",
             "|---|---|---|---|---|---|---|"]
    for level in ("image", "patient"):
        block = result[level]
        lines.append(f"| {level} | {figure_text(block['a'], digits)} | {figure_text(block['b'], digits)} | "
                     f"**{figure_text(block['difference'], digits)}** | {_p_text(block).removeprefix('= ')} | {block['n_images']} | "
                     f"{block['n_groups']} |")
    first = result["image"]
    lines += ["", *(f"- {paired_statement(result, level=lvl, digits=digits)}" for lvl in ("image", "patient")),
              "", f"Metric `{first['metric']}` of both runs on the same {result['n_images']} images "
              f"({result['data']}) of {result['n_patients']} patients in {result['n_groups']} split groups. Each "
              f"resample draws split groups with replacement within each class and scores **both** runs on the same "
              f"drawn rows, so the interval is that of the difference; per patient, a patient's probability is the "
              f"mean over their images. p-value: {first['p_value_rule']}. Intervals are conditional on the two "
              f"models as trained."]
    return "\n".join(lines)


def lung_mass_markdown(result: dict) -> str:
    """The report's section on the share of Grad-CAM mass inside the lungs (``result["lung_mass"]``,
    as :func:`covidxr.evaluation.lung_mass` gives it)."""
    block = result["lung_mass"]
    level = block["bootstrap"]["level"]
    lines = ["## Where the model looks: Grad-CAM mass inside the lungs", "",
             f"Of the {block['n_images']} test images, {block['n_matched']} have a lung mask in "
             f"`{block['masks_dir']}` ({block['n_no_mask']} have none, {block['n_ambiguous']} share a file stem with "
             f"another image, {block['n_mismatched']} masks do not fit their image, {block['n_empty_map']} maps hold "
             f"no positive evidence): {block['n_measured']} images in {block['n_groups']} split groups are measured. "
             f"Grad-CAM of class **{block['class']}** ({block['layer']}) on the preprocessed image; the mask goes "
             "through the same resizing and padding or cropping, binarised after resizing.", "",
             f"| figure (mean over images) | value [{level:.0%} CI] |", "|---|---|",
             f"| share of Grad-CAM mass inside the lungs | {figure_text(block['mass_inside'])} |",
             f"| lung area share (a uniform map) | {figure_text(block['mask_area'])} |",
             f"| excess (mass share − area share) | {figure_text(block['excess'])} |", "",
             f"Intervals: percentile bootstrap over split groups, stratified by class, "
             f"{block['bootstrap']['n_bootstrap']} resamples, seed {block['bootstrap']['seed']}. A map that ignores "
             "the lungs has an excess near 0 (or below): most of its evidence lies where a shortcut (markers, "
             "borders, devices) would be. Per image: `lung_mass.csv`.", ""]
    return "\n".join(lines)
