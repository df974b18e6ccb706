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
           "comparison_summary", "count_text", "lung_mass_markdown", "metrics_markdown", "overlap_markdown",
           "paired_markdown", "paired_statement", "run_report", "calibration_markdown", "conformal_markdown",
           "selective_markdown"]

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


def count_text(result: dict) -> str:
    """``"78 images of 46 patients in 45 split groups"``, with the (patient, label) pairs that the
    class rows and the per-patient figures count when a patient has images of two labels."""
    text = f"{result['n_images']} images of {result['n_patients']} patients"
    pairs = result.get("n_patient_labels", result["n_patients"])
    if pairs != result["n_patients"]:
        mixed = pairs - result["n_patients"]
        text += (f" ({pairs} patient-label pairs: {mixed} {'patient has' if mixed == 1 else 'patients have'} "
                 "images of two labels and count once per label in the class rows and per-patient figures)")
    if result.get("n_groups") is not None:
        text += f" in {result['n_groups']} split groups"
    return text


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
        f"- {count_text(result)} ({counts}); figures at the data's own prevalence, no re-balancing.",
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
    lines += [conformal_markdown(result["conformal"]), ""] if result.get("conformal") else []
    lines += [selective_markdown(result["selective"]), ""] if result.get("selective") else []
    if figures:
        lines += ["## Figures", ""] + [f"![{f}](figures/{f})" for f in figures] + [""]
    return "\n".join(lines)


def _metric_names(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if f"{c}_ci_low" in table.columns]


#: Columns of the terminal comparison (:func:`comparison_summary`), when the table has them.
SUMMARY_METRICS = ("roc_auc", "sensitivity", "specificity")


def comparison_summary(table: pd.DataFrame, *, width=120) -> str:
    """The comparison for a terminal, at most ``width`` characters a line: one row per run and
    level, the run named by what it is (:func:`covidxr.figures.run_label`'s text: backbone,
    weights, feature layer, size, strategy, fold), ROC AUC with its interval, sensitivity and
    specificity (values; their intervals are in the full table); the full table is :func:`comparison_markdown` (``comparison.md``)."""
    from .figures.common import run_label

    metrics = [m for m in SUMMARY_METRICS if m in table.columns] or [m for m in _metric_names(table)[:2]]
    rows = []
    for _, row in table.iterrows():
        cells = {"run": run_label(row), "level": row.get("level", ""), "images": row.get("n_images", "")}
        for k, m in enumerate(metrics):  # the first with its interval, the others as values
            cells[m] = figure_text({"value": row[m], "ci_low": row[f"{m}_ci_low"] if k == 0 else None,
                                    "ci_high": row[f"{m}_ci_high"] if k == 0 else None})
        rows.append(cells)
    frame = pd.DataFrame(rows)
    budget = width - sum(max(frame[c].astype(str).str.len().max(), len(c)) + 2 for c in frame.columns if c != "run")
    frame["run"] = [r if len(r) <= budget else r[:max(budget - 3, 10)] + "..." for r in frame["run"]]
    return frame.to_string(index=False)


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
    data = config.get("data") or {}
    if data:
        mark = data["fingerprint"]
        lines += ["", f"Data: `{data['dir']}` ({data['layout']} layout); fingerprint: "
                  f"{mark['file'] or 'image list'} sha256 `{mark['sha256']}`, {mark['images']} images."]
    lines += ["", f"Classes (model output order): {', '.join(classes)}. "
              f"Keras {config['keras_version']} ({config['keras_backend']} backend), covidxr {config['covidxr_version']}.",
              "", "## Images per class and part", "",
              "| part | " + " | ".join(classes) + " | split groups | patients |",
              "| --- | " + " | ".join("---" for _ in classes) + " | --- | --- |"]
    for part, row in counts.items():
        lines.append(f"| {part} | " + " | ".join(str(row[c]) for c in classes)
                     + f" | {row.get('groups', 'n/a')} | {row['patients']} |")
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


# --------------------------------------------------------------------------- trust at a new site

def conformal_markdown(summary: dict) -> str:
    """The conformal sets of an evaluation (:func:`covidxr.evaluation.conformal.run_conformal`'s summary)."""
    cover = summary["coverage"]
    kind = "class-conditional (Mondrian by class)" if summary.get("class_conditional") else "marginal"
    lines = [f"## Conformal prediction sets (alpha = {summary['alpha']:g}, {kind})", "",
             f"Calibrated on {summary.get('calibrated_on') or '?'} ({summary.get('n_calibration')}); "
             f"{summary.get('rule', '')}. Intervals: Wilson on the effective sample size over groups.", "",
             "| | coverage | rows |", "|---|---|---|"]
    for key, fig in cover.items():
        lines.append(f"| {key} | {figure_text(fig)} | {fig['n']} |")
    lines += ["", f"- mean set size {summary['mean_set_size']:.3f}; refer (two classes in the set): "
              f"{figure_text(summary['refer'])}; empty sets: {figure_text(summary['empty'])}; "
              f"right among one-class sets: {figure_text(summary['singleton_accuracy'])}"]
    return "\n".join(lines)


def selective_markdown(summary: dict) -> str:
    """The risk-coverage figures of an evaluation (:func:`covidxr.evaluation.selective.selective_summary`)."""
    lines = ["## Selective prediction (risk-coverage)", "",
             f"Images decided most confident first (confidence: {summary['confidence']}); risk = error rate "
             "among those decided; AURC = mean risk over all coverages (lower is better).", "",
             "| level | AURC | error rate at full coverage | " + " | ".join(
                 f"risk at {c}" for c in summary["image"]["risk_at"]) + " |",
             "|---" * (3 + len(summary["image"]["risk_at"])) + "|"]
    for level in ("image", "patient"):
        block = summary[level]
        lines.append(f"| {level} ({block['n']}) | {block['aurc']:.3f} | {block['error_rate']:.3f} | "
                     + " | ".join(f"{v:.3f}" for v in block["risk_at"].values()) + " |")
    return "\n".join(lines)


def calibration_markdown(result: dict, *, figures=()) -> str:
    """The ``report.md`` of a site's calibration folder (:func:`covidxr.calibrate.calibrate_site`)."""
    rec, before, after = result["calibration"], result["before"], result["after"]
    lines = [f"# Calibration `{rec['name']}` of run `{rec['run']}`", "", f"*{RESEARCH_ONLY}*", "",
             f"- Site: {rec['data']}; {rec['n_labelled']} labelled images (requested {rec['labelled_requested']}, "
             f"drawn by `{rec['drawn_by']}`, seed {rec['seed']}), {rec['n_rest']} images scored.",
             f"- Map: **{rec['method']}** {rec['params'] if rec['method'] != 'isotonic' else ''} "
             f"({rec['chosen_by']}).",
             f"- Site threshold {rec['threshold']:.4f} (patients {rec['patient_threshold']:.4f}): "
             f"{rec['threshold_selection']['description']}.",
             f"- Before: home probabilities at the run's validation threshold {before['threshold']:.4f}. After: "
             "recalibrated probabilities at the site's threshold. ROC AUC is unchanged by a strictly monotone map.",
             "", "| metric | before (image) | after (image) | before (patient) | after (patient) |",
             "|---|---|---|---|---|"]
    for name in ("ece", "brier", "sensitivity", "specificity", "roc_auc", "balanced_accuracy"):
        cells = [figure_text(r[level]["metrics"][name]) for level in ("image", "patient") for r in (before, after)]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} |")
    if result.get("gain_by_size"):
        lines += ["", "## Gain against the number of labelled images (median over draws, images)", "",
                  "| labelled | draws | ECE before | ECE after | specificity before | specificity after |",
                  "|---|---|---|---|---|---|"]
        for k, row in result["gain_by_size"].items():
            lines.append(f"| {k} | {row['draws']} | {row['ece_before']:.3f} | {row['ece_after']:.3f} | "
                         f"{row['specificity_before']:.3f} | {row['specificity_after']:.3f} |")
    if figures:
        lines += ["", "## Figures", ""] + [f"![{f}](figures/{f})" for f in figures]
    return "\n".join(lines) + "\n"
