"""``covidxr predict``: score image files with a trained run: probability per class, the decision
at the run's validation-chosen threshold, and optional Grad-CAM overlays.
Must not preprocess or decide by rules of its own: it uses the run's preprocessing
(:func:`covidxr.inference.prepare_image`) and the one decision rule (:func:`covidxr.evaluation.metrics.decide`).

Research software, not a diagnostic device: a probability here is a model output on one
image, not a diagnosis.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .calibrate import read_calibration
from .evaluation import metrics as M
from .evaluation import read_run, validation_threshold
from .evaluation.calibration import apply_calibration
from .evaluation.conformal import check_alpha, fit_conformal, prediction_sets, set_labels
from .figures import plot_gradcam_panel, save_figure
from .gradcam import gradcam
from .inference import load_run, predict_images, prepare_image, preprocessing_settings

__all__ = ["predict_files"]


def _unique(path: Path) -> Path:
    """``path`` itself, or ``stem-2.png``, ``stem-3.png``... if taken (never overwrite)."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def _site_rules(run_dir: Path, predictions, classes, *, calibration, conformal, threshold: float):
    """``(recalibration params or None, threshold, conformal model or None)``: a site calibration's map and
    threshold (else the validation ``threshold``) and sets fitted on its labelled images (else on the run's
    validation part)."""
    params, model, rows = None, None, predictions[predictions["part"].astype(str) == "val"]
    where = "the run's validation part"
    if calibration is not None:
        site, rows = read_calibration(run_dir, calibration)
        if len(classes) != 2 or list(site["classes"]) != list(classes):
            raise ValueError(f"Expected a calibration of the run's classes {classes}. Received: classes={site['classes']}")
        params, threshold = site["params"], float(site["threshold"])
        where = f"the {len(rows)} labelled images of calibration {site['name']}"
    if conformal is not None:
        y, probs = M.class_probabilities(rows, classes)
        model = fit_conformal(y, probs, classes=classes, alpha=conformal)
        model["calibrated_on"] = where
    return params, threshold, model


def _write_gradcam(table, good, model, batch, probs, decided, *, classes, threshold, out, batch_size) -> None:
    """One Grad-CAM panel per scored image (of the class decided), its path in ``table["gradcam"]``."""
    out.mkdir(parents=True, exist_ok=True)
    maps, _ = gradcam(model, batch, class_index=decided, batch_size=batch_size)  # the decision made
    for k, i in enumerate(good):
        target = _unique(out / f"{Path(table.at[i, 'file']).stem}_gradcam.png")
        fig = plot_gradcam_panel(batch[k], maps[k], name=Path(table.at[i, "file"]).name,
                                 probabilities=dict(zip(classes, map(float, probs[k]))),
                                 decision=classes[decided[k]], threshold=threshold,
                                 positive_class=classes[1] if len(classes) == 2 else None)
        save_figure(fig, target)  # atomic, dpi 110: each image at least 512 px
        table.at[i, "gradcam"] = str(target)


def predict_files(run_dir, paths, *, gradcam_dir=None, threshold_method="youden", target_sensitivity=None,
                  batch_size=16, calibration=None, conformal=None) -> pd.DataFrame:
    """Score image files (PNG, JPEG, DICOM...) with a run's best model.

    Args:
        run_dir: A run folder made by ``covidxr train``.
        paths: Image files.
        gradcam_dir: If given, write one Grad-CAM PNG per readable image there: the image beside its
            overlay, each at least 512 px, with the probabilities, decision, threshold and a colour bar.
        threshold_method, target_sensitivity: How the threshold is chosen on the run's
            validation predictions (see :func:`covidxr.evaluation.choose_threshold`).
        batch_size: Images per forward pass.
        calibration: The name of a site calibration of the run (``covidxr calibrate``): its map recalibrates
            the probabilities and its threshold decides.
        conformal: A miscoverage alpha in (0, 1): also the conformal set of each image, calibrated on the
            calibration's labelled images (with ``calibration``) or on the run's validation part.

    Returns:
        One row per file: ``file``, ``prob_<class>`` for each class, ``decision``,
        ``threshold`` (two classes; NaN for arg-max decisions), with ``conformal`` also ``set`` and
        ``advice`` ("uncertain: refer" for a set of two classes or more, "no class: refer" for an empty
        set), ``gradcam`` (overlay path or empty) and ``error`` (empty, or why the file could not be scored).
    """
    run_dir = Path(run_dir)
    conformal = None if conformal is None else check_alpha(conformal)
    config, predictions = read_run(run_dir, need_model=True)
    model, config = load_run(run_dir, config=config)
    classes = list(config["classes"])
    settings = preprocessing_settings(config)
    chosen = validation_threshold(predictions, classes=classes, method=threshold_method,
                                  target_sensitivity=target_sensitivity)
    threshold = float(chosen["threshold"]) if chosen else float("nan")
    params, threshold, sets_model = _site_rules(run_dir, predictions, classes, calibration=calibration,
                                                conformal=conformal, threshold=threshold)

    rows, images, good = [], [], []
    for path in map(Path, paths):
        row = {"file": str(path), "error": ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                images.append(prepare_image(path, settings))
            good.append(len(rows))
        except Exception as err:  # any unreadable file is reported, the others are scored
            row["error"] = f"{type(err).__name__}: {err}"
        rows.append(row)

    columns = M.prob_columns(classes)
    table = pd.DataFrame(rows)
    for column in columns:
        table[column] = np.nan
    table["decision"] = ""
    table["threshold"] = threshold
    table["gradcam"] = ""
    table["set"], table["advice"] = "", ""
    if images:
        batch = np.stack(images)[..., None]
        probs = predict_images(model, batch, batch_size=batch_size)
        if params is not None:
            positive = apply_calibration(params, probs[:, 1])
            probs = np.stack([1.0 - positive, positive], axis=1)
        table.loc[good, columns] = probs
        if sets_model is not None:
            sets = prediction_sets(sets_model, probs)
            table.loc[good, "set"] = set_labels(sets, classes)
            size = sets.sum(axis=1)
            table.loc[good, "advice"] = np.where(size >= 2, "uncertain: refer", np.where(size == 0, "no class: refer", ""))
        decided = M.decide(probs, threshold=threshold)
        table.loc[good, "decision"] = np.asarray(classes)[decided]
        if gradcam_dir is not None:
            _write_gradcam(table, good, model, batch, probs, decided, classes=classes, threshold=threshold,
                           out=Path(gradcam_dir), batch_size=batch_size)
    sets_columns = ["set", "advice"] if sets_model is not None else []
    return table[["file", *columns, "decision", "threshold", *sets_columns, "gradcam", "error"]]
