"""Score predictions, per image and per patient (each at its own validation threshold), with
group-bootstrap and Wilson intervals: a run's own test part or another dataset (external
validation), and a table over several runs.
Must not write files or draw: it returns dicts and frames; :mod:`covidxr.evaluate` writes them.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import get_task
from ..data.groups import group_column
from ..images import HashIndex, image_hashes, load_grouped, load_radiograph
from ..records import check_record
from . import bootstrap as B
from . import metrics as M
from .overlap import flag_overlap, overlap_summary, run_reference
from .runs import RUN_KEYS, held_out_test, read_run, validation_threshold

__all__ = ["compare_runs", "evaluate_predictions", "external_predictions", "latest_evaluation", "run_thresholds",
           "score_run", "unreadable_images", "with_decisions"]


def _threshold_block(classes, threshold, info, *, level):
    """``(threshold, selection)`` of one level: 0.5 by default for two classes, arg-max for more."""
    if len(classes) != 2:
        return None, {"method": "argmax",
                      "description": "three classes: the predicted class is the one with the highest probability"}
    if threshold is None:
        return 0.5, info or {"threshold": 0.5, "method": "default", "level": level,
                             "description": "default 0.5 (no validation threshold given)"}
    return float(threshold), info


def evaluate_predictions(predictions_df: pd.DataFrame, *, classes, threshold=None, patient_threshold=None,
                         n_bootstrap=1000, seed=0, level=0.95, threshold_info=None,
                         patient_threshold_info=None) -> dict:
    """Score a predictions frame, per image and per patient, with group-bootstrap and Wilson CIs.

    Intervals resample the frame's split groups (``group`` when present, else ``patient``:
    :func:`covidxr.data.groups.group_column`), stratified by class
    (:func:`covidxr.evaluation.bootstrap_metrics`); they are conditional on the chosen model
    and thresholds.

    Args:
        predictions_df: Rows to score (e.g. a run's test part): columns ``patient``,
            ``label`` and ``prob_<class>`` per class (optional ``group``), shape (n, ...).
        classes: Class names in model output order.
        threshold: Two classes: the per-image decision threshold on ``prob_<classes[1]>``
            (chosen on validation images; 0.5 when None). Three classes: must be None (arg-max).
        patient_threshold: Two classes: the per-patient threshold on a patient's mean
            probability (chosen on validation patient means); None: ``threshold``.
        n_bootstrap: Bootstrap resamples (groups drawn with replacement within each class).
        seed: Seed of the bootstrap.
        level: Interval coverage (0.95 gives 95% intervals).
        threshold_info, patient_threshold_info: How the thresholds were chosen (stored as is).

    Returns:
        A JSON-ready dict: ``classes``, ``positive_class``, ``decision`` (``"threshold"`` or
        ``"argmax"``), ``threshold``, ``threshold_selection``, ``patient_threshold``,
        ``patient_threshold_selection``, ``n_images``, ``n_patients``, ``n_groups`` (split
        groups), ``n_patient_labels`` (the (patient, label) pairs the per-patient figures and the
        class rows count: a patient with images of two labels counts in both),
        ``class_counts`` ({class: {"images", "patients"}}), ``prevalence`` (image share per
        class), ``bootstrap`` ({n_bootstrap, seed, level, unit, stratified, conditional_on})
        and two blocks ``image`` and ``patient`` from
        :func:`covidxr.evaluation.bootstrap_metrics` (``metrics`` with value / ci_low /
        ci_high / n_used / interval / boot_low / boot_high / n_eff, ``confusion_matrix``).
    """
    classes = [str(c) for c in classes]
    threshold, threshold_info = _threshold_block(classes, threshold, threshold_info, level="image")
    if patient_threshold is None:
        patient_threshold, patient_threshold_info = threshold, patient_threshold_info or threshold_info
    patient_threshold, patient_threshold_info = _threshold_block(classes, patient_threshold, patient_threshold_info,
                                                                 level="patient")
    y, probs = M.class_probabilities(predictions_df, classes)
    if len(y) == 0:
        raise ValueError("Expected at least one prediction to score. Received: n_images=0")
    unit = group_column(predictions_df)
    groups = predictions_df[unit].astype(str).to_numpy()
    image = B.bootstrap_metrics(y, probs, groups, classes=classes, threshold=threshold,
                                n_bootstrap=n_bootstrap, seed=seed, level=level)
    per_patient = M.patient_frame(predictions_df, classes)
    py, pprobs = M.class_probabilities(per_patient, classes)
    patient = B.bootstrap_metrics(py, pprobs, per_patient[group_column(per_patient)].to_numpy(), classes=classes,
                                  threshold=patient_threshold, n_bootstrap=n_bootstrap, seed=seed, level=level)
    labels = predictions_df["label"].astype(str)
    counts = {c: {"images": int((labels == c).sum()),
                  "patients": int(predictions_df.loc[labels == c, "patient"].nunique())} for c in classes}
    missing = [c for c, n in counts.items() if n["images"] == 0]
    if missing:
        warnings.warn(f"No images of class(es) {missing} in the scored data: figures that need them "
                      "are undefined (NaN).", stacklevel=2)
    return {
        "classes": classes,
        "positive_class": classes[1] if len(classes) == 2 else None,
        "decision": "threshold" if len(classes) == 2 else "argmax",
        "threshold": threshold,
        "threshold_selection": threshold_info,
        "patient_threshold": patient_threshold,
        "patient_threshold_selection": patient_threshold_info,
        "n_images": int(len(y)),
        "n_patients": int(predictions_df["patient"].astype(str).nunique()),
        "n_groups": int(len(np.unique(groups))),
        "n_patient_labels": int(len(per_patient)),  # the per-patient figures' units (and the class rows')
        "class_counts": counts,
        "prevalence": {c: counts[c]["images"] / len(y) for c in classes},
        "bootstrap": {"n_bootstrap": int(n_bootstrap), "seed": int(seed), "level": float(level),
                      "unit": unit, "stratified": True, "conditional_on": "the chosen model and thresholds"},
        "image": image,
        "patient": patient,
    }


def run_thresholds(preds: pd.DataFrame, *, classes, threshold_method="youden", target_sensitivity=None,
                   threshold=None) -> tuple[dict | None, dict | None]:
    """A run's image-level and patient-level thresholds, both chosen on its validation part
    (:func:`covidxr.evaluation.validation_threshold`); ``(None, None)`` for three classes."""
    options = {"classes": classes, "method": threshold_method, "target_sensitivity": target_sensitivity,
               "threshold": threshold}
    return (validation_threshold(preds, level="image", **options),
            validation_threshold(preds, level="patient", **options))


def score_run(run_dir, *, threshold_method="youden", target_sensitivity=None, threshold=None, n_bootstrap=1000,
              seed=0, level=0.95) -> tuple[dict, pd.DataFrame]:
    """Score a run's own test part in memory (nothing is written).

    The image and patient thresholds come from the run's validation part (:func:`run_thresholds`).

    Returns:
        ``(result, scored)``: :func:`evaluate_predictions`'s dict (plus ``run``, ``task``,
        ``config``) and the test rows with ``predicted`` and ``correct`` columns.
    """
    run = Path(run_dir)
    config, preds = read_run(run)
    classes = [str(c) for c in config["classes"]]
    info, pinfo = run_thresholds(preds, classes=classes, threshold_method=threshold_method,
                                 target_sensitivity=target_sensitivity, threshold=threshold)
    scored = held_out_test(preds)
    result = evaluate_predictions(scored, classes=classes, threshold=None if info is None else info["threshold"],
                                  patient_threshold=None if pinfo is None else pinfo["threshold"],
                                  n_bootstrap=n_bootstrap, seed=seed, level=level, threshold_info=info,
                                  patient_threshold_info=pinfo)
    result.update({"run": run.name, "task": config.get("task"),
                   "config": {k: config.get(k) for k in RUN_KEYS if k in config}})
    return result, with_decisions(scored, result)


def with_decisions(scored: pd.DataFrame, result: dict) -> pd.DataFrame:
    """``scored`` with ``predicted`` (the class decided at the result's threshold, or arg-max) and
    ``correct`` columns."""
    classes = result["classes"]
    _, probs = M.class_probabilities(scored, classes)
    table = scored.copy()
    table["predicted"] = [classes[i] for i in M.decide(probs, threshold=result["threshold"])]
    table["correct"] = table["predicted"] == table["label"].astype(str)
    return table


def unreadable_images(frame: pd.DataFrame) -> list[dict]:
    """Images that cannot be decoded, or are too small to be a radiograph: ``[{"image", "error"}]``."""
    bad = []
    for image, path in zip(frame["image"], frame["path"]):
        try:
            load_radiograph(path)  # also too small to be a radiograph
        except Exception as err:  # noqa: BLE001 - any decoding failure leaves the image out
            bad.append({"image": str(image), "error": f"{type(err).__name__}: {err}"[:300]})
    return bad


def _labelled(frame: pd.DataFrame, config: dict) -> tuple[pd.DataFrame, dict]:
    """The dataset's rows labelled with the run's task, and the ``left_out_by_task`` block.

    Rows of a finding category the task leaves out (other pneumonias for ``covid-vs-normal``)
    are dropped, as training drops them (:func:`covidxr.data.load_dataset` with a task), with a
    warning and a count. Labels that map to no category are the readers' error; a run without
    a task must have its categories as class names (an error naming the others).
    """
    task_name = config.get("task")
    classes = list(config["classes"])
    task = get_task(task_name) if task_name else None
    # no task in the config: categories must be the class names themselves
    mapping = task.mapping if task is not None else {c: c for c in classes}
    known = frame["category"].isin(list(mapping))
    left = frame.loc[~known]
    categories, findings = left["category"].astype(str), left["finding"].astype(str)
    if task is None and len(left):
        raise ValueError(
            f"The dataset has labels the model was not trained on (no task in the run's config, classes "
            f"{classes}; category {sorted(set(categories))} is not a class); remove those images or evaluate a "
            f"model of another task. Received: unknown_labels={sorted(set(findings))[:10]}"
        )
    block = {"task": task_name, "kept_categories": sorted(mapping), "n_images": int(len(left)),
             "categories": {str(k): int(v) for k, v in categories.value_counts().sort_index().items()},
             "findings": {str(k): int(v) for k, v in findings.value_counts().head(20).items()}}
    if len(left):
        warnings.warn(f"{len(left)} of {len(frame)} images are of findings task {task_name!r} leaves out (category "
                      f"{list(block['categories'])}: {', '.join(list(block['findings'])[:5])}); they are left out, "
                      "as in training.", stacklevel=3)
    if not known.any():
        raise ValueError(f"Expected images of the categories task {task_name!r} keeps ({sorted(mapping)}); all "
                         f"{len(frame)} are of categories it leaves out. Received: categories={block['categories']}")
    frame = frame[known].assign(label=frame.loc[known, "category"].map(mapping)).reset_index(drop=True)
    unknown = sorted(set(frame["label"]) - set(classes))
    if unknown:
        raise ValueError(f"Expected labels among the model's classes {classes}. Received: labels={unknown}")
    return frame, block


def _without_overlap(frame, run_dir, config, *, data_dir, cache_dir, allow_overlap, index):
    """The rows to score, flagged (``in_run_test``, ``overlap``), and the ``overlap`` block."""
    reference = run_reference(run_dir, config, cache_dir=cache_dir, index=index)
    flags = flag_overlap(frame, image_hashes(frame, index=index), reference, data_dir=data_dir)
    summary = overlap_summary(frame, flags, reference, data_dir=data_dir, allow_overlap=allow_overlap)
    frame = frame.assign(in_run_test=flags["in_run_test"].to_numpy(), overlap=flags["overlap"].to_numpy())
    if not allow_overlap:
        frame = frame[frame["overlap"] == ""].reset_index(drop=True)
        if frame.empty:
            raise ValueError(
                f"Expected rows the run was not trained or validated on; all {summary['n_checked']} rows of the "
                f"dataset are such images ({summary['counts']}), so nothing is left to score (allow_overlap=True, "
                f"--allow-overlap, scores them anyway). Received: data_dir={str(data_dir)!r}")
    return frame, summary


def external_predictions(run_dir, config, *, data_dir, batch_size, data_options, cache_dir=None,
                         allow_overlap=False) -> tuple[pd.DataFrame, list, dict, dict]:
    """Predict another dataset with a run's model: rows labelled with the run's task (findings it
    leaves out dropped and counted, as in training), checked for overlap with the run's own rows
    (:mod:`covidxr.evaluation.overlap`), scored by :func:`covidxr.inference.predict_frame`.

    Rows the run was trained or validated on (same content, or within the run's own dataset
    folder the same path or patient) are left out before predicting, unless ``allow_overlap``;
    rows of the run's own test part are kept and flagged.

    Args:
        run_dir: The run folder. config: Its ``config.json``.
        data_dir: The dataset (any layout), read with :func:`covidxr.images.load_grouped`.
        batch_size: Prediction batch size.
        data_options: ``layout, modality, views, image_col, label_col, patient_col``.
        cache_dir: The hash index folder (default: the run's ``cache_dir``).
        allow_overlap: Keep (and score) the overlapping rows, with a loud warning.

    Returns:
        ``(predictions, unreadable, overlap, left_out)``: columns ``image, patient, label, part``
        (``external``), ``prob_<class>`` per class, then ``group``, ``hash``, ``in_run_test``
        and ``overlap`` (the kinds a kept row overlaps by, blank for none); the images left
        out as unreadable; the ``overlap`` block (:func:`~covidxr.evaluation.overlap.overlap_summary`);
        the ``left_out_by_task`` block (``task``, ``kept_categories``, ``n_images``, ``categories``
        and ``findings`` with their image counts).
    """
    classes = list(config["classes"])
    cache_dir = cache_dir if cache_dir is not None else config.get("cache_dir")
    index = HashIndex(cache_dir)  # read once: the dataset's hashes, then the run's own for the overlap check
    frame = load_grouped(data_dir, task=None, cache_dir=cache_dir, index=index, **data_options)
    frame, left_out = _labelled(frame, config)
    # hashing decoded every image once: only those it could not hash can be unreadable
    bad = unreadable_images(frame[frame["hash"] == ""])
    if bad:
        warnings.warn(f"{len(bad)} of {len(frame)} images cannot be read and are left out: "
                      + ", ".join(b["image"] for b in bad[:5]) + (" ..." if len(bad) > 5 else ""),
                      stacklevel=3)
        frame = frame[~frame["image"].isin({b["image"] for b in bad})].reset_index(drop=True)
    if frame.empty:
        raise ValueError(f"Expected readable images in the dataset. Received: data_dir={str(data_dir)!r}")
    try:
        frame, overlap = _without_overlap(frame, run_dir, config, data_dir=data_dir, cache_dir=cache_dir,
                                          allow_overlap=allow_overlap, index=index)
    finally:
        index.save()
    from .. import inference  # Keras: only when a model scores new images

    probs = np.asarray(inference.predict_frame(run_dir, frame, batch_size=batch_size), dtype=float)
    if probs.shape != (len(frame), len(classes)):
        raise ValueError(
            f"Expected predict_frame to return shape ({len(frame)}, {len(classes)}). "
            f"Received: shape={probs.shape}"
        )
    ok = np.isfinite(probs).all(axis=1)
    if not ok.all():
        bad += [{"image": str(i), "error": "no prediction (image could not be read)"}
                for i in frame.loc[~ok, "image"]]
        frame, probs = frame[ok].reset_index(drop=True), probs[ok]
    preds = pd.DataFrame({"image": frame["image"].astype(str), "patient": frame["patient"].astype(str),
                          "label": frame["label"].astype(str), "part": "external"})
    for i, col in enumerate(M.prob_columns(classes)):
        preds[col] = probs[:, i]
    for col in ("group", "hash", "in_run_test", "overlap"):
        preds[col] = frame[col].to_numpy()
    return preds, bad, overlap, left_out


#: The timestamp ``covidxr evaluate`` appends to an evaluation's name (``time.strftime("%Y-%m-%dT%H-%M-%S")``).
_STAMP = r"\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}"


def latest_evaluation(run: Path, name: str) -> Path:
    """The newest ``RUN/evaluations/<name>-<timestamp>`` folder with a ``metrics.json``: the name must
    be ``name`` itself (``hospital`` never picks ``hospital-b-<timestamp>``), newest by its timestamp."""
    pattern = re.compile(re.escape(str(name)) + rf"-({_STAMP})")
    found = sorted((match.group(1), p) for p in Path(run).joinpath("evaluations").glob("*")
                   if (match := pattern.fullmatch(p.name)) and (p / "metrics.json").is_file())
    if not found:
        raise FileNotFoundError(
            f"Expected an evaluation named {name!r} in {str(run / 'evaluations')!r} (run `covidxr evaluate "
            f"--name {name}` first). Received: evaluation={name!r}"
        )
    check_record(found[-1][1], what="evaluation folder")  # its metrics and predictions as evaluate wrote them
    return found[-1][1]


def _number(value) -> float:
    """A figure read from ``metrics.json`` as a float: ``null`` (undefined) is NaN."""
    return float("nan") if value is None else float(value)


def _level_threshold(result: dict, level: str):
    """The threshold a result's ``level`` block was decided at (evaluations written before
    patient thresholds existed: the image threshold)."""
    if level == "patient" and result.get("patient_threshold") is not None:
        return result["patient_threshold"]
    return result["threshold"]


def compare_runs(run_dirs, *, evaluation=None, n_bootstrap=1000, seed=0, level=0.95, threshold_method="youden",
                 target_sensitivity=None) -> pd.DataFrame:
    """One row per run and level (image, patient) with every figure and its interval.

    Args:
        run_dirs: Run folders.
        evaluation: None: score each run's test part afresh (threshold from its validation
            part). A name: read each run's latest ``evaluations/<name>-*/metrics.json``.
        n_bootstrap, seed, level, threshold_method, target_sensitivity: As for
            :func:`evaluate_run` (when ``evaluation`` is None).

    Returns:
        Columns ``run, task, backbone, strategy, fold, weights, data, level, n_images,
        n_patients, threshold`` (the level's own: image or patient threshold), then for every metric ``<metric>``, ``<metric>_ci_low``,
        ``<metric>_ci_high``.
    """
    run_dirs = [Path(r) for r in run_dirs]
    if not run_dirs:
        raise ValueError("Expected at least one run folder. Received: run_dirs=[]")
    rows = []
    for run in run_dirs:
        config, _ = read_run(run)
        if evaluation is None:
            result, _ = score_run(run, threshold_method=threshold_method, target_sensitivity=target_sensitivity,
                                  n_bootstrap=n_bootstrap, seed=seed, level=level)
            data = "test"
        else:
            folder = latest_evaluation(run, evaluation)
            result = json.loads((folder / "metrics.json").read_text())
            data = folder.name
        for level_name in ("image", "patient"):
            row = {"run": run.name, "task": config.get("task")}
            row.update({k: config.get(k) for k in RUN_KEYS})
            row.update({"data": data, "level": level_name, "n_images": result["n_images"],
                        "n_patients": result["n_patients"], "threshold": _level_threshold(result, level_name)})
            for metric, fig in result[level_name]["metrics"].items():   # null in metrics.json: undefined, NaN
                row[metric] = _number(fig["value"])
                row[f"{metric}_ci_low"] = _number(fig["ci_low"])
                row[f"{metric}_ci_high"] = _number(fig["ci_high"])
            rows.append(row)
    return pd.DataFrame(rows)
