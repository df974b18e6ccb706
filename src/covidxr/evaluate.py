"""``covidxr evaluate`` and ``covidxr compare``: write an evaluation folder for a run (its test
part or another dataset) and the comparison files of several runs.
Must not compute figures itself: scoring is :mod:`covidxr.evaluation`'s, drawing
:mod:`covidxr.figures`' and text :mod:`covidxr.reports`'; this module puts them in folders.

* :func:`evaluate_run` reads a run folder, takes the decision threshold from the run's
  **validation** predictions (never from the data being scored), scores the test part or an
  external dataset, and writes ``RUN_DIR/evaluations/<name>-<timestamp>/`` with
  ``metrics.json``, ``predictions.csv``, ``figures/`` and ``report.md`` (with lung masks also
  ``lung_mass.csv``: the Grad-CAM mass inside the lungs) and ``record.json`` (their digests,
  :mod:`covidxr.records`). Nothing is ever overwritten.
* :func:`write_comparison` writes one table (CSV + Markdown) and one chart over several runs;
  :func:`write_paired` the paired comparison of two runs (``paired.json``, ``paired.md``).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pandas as pd

from . import __version__
from .atomic import json_text, new_folder, write_json, write_text
from .calibrate import calibrated_probs, leave_out_labelled, read_calibration
from .evaluation import (RUN_KEYS, evaluate_predictions, external_predictions, find_lung_masks, held_out_test,
                         lung_mass, read_run, run_thresholds, with_decisions)
from .evaluation import metrics as M
from .evaluation.conformal import check_alpha, fit_conformal, run_conformal
from .evaluation.selective import selective_summary
from .figures import plot_comparison, plot_lung_mass, save_figure, write_evaluation_figures
from .figures.gradcam import LUNG_MASK_CREDIT, PREDICTED_MASK_CREDIT
from .figures.trust import plot_risk_coverage
from .lungs import run_lung_masks
from .records import record_files
from .reports import comparison_markdown, evaluation_report, grid_markdown, paired_markdown
from .tracking import MlflowRun, check_server, evaluation_metrics

__all__ = ["PREDICTED", "evaluate_run", "write_comparison", "write_grid_comparison", "write_paired"]

#: ``--lung-masks predicted``: masks from the bundled segmenter where the dataset has no mask file.
PREDICTED = "predicted"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


def _check_name(name) -> str:
    if not _NAME.match(str(name)):
        raise ValueError(
            "Expected an evaluation name of letters, digits, '.', '_' or '-' (up to 80, no "
            f"slashes). Received: name={name!r}"
        )
    return str(name)


def _default_name(data_dir) -> str:
    if data_dir is None:
        return "test"
    stem = Path(str(data_dir)).expanduser().resolve().name
    stem = Path(stem).stem if Path(stem).suffix.lower() == ".csv" else stem
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "external"


def _new_folder(run: Path, name: str, now) -> Path:
    stamp = time.strftime("%Y-%m-%dT%H-%M-%S", now or time.gmtime())
    out = run / "evaluations" / f"{name}-{stamp}"
    if out.exists():
        raise FileExistsError(
            f"Expected a new evaluation folder, but {str(out)!r} exists and is left as it is. Choose "
            f"another --name or wait a second. Received: name={name!r}"
        )
    return out


def _scored_rows(run, config, preds, *, data_dir, options, batch_size, cache_dir, allow_overlap):
    """``(scored rows, source, unreadable, overlap, left_out_by_task)``: the run's test part, or another
    dataset predicted with the run's model (:func:`covidxr.evaluation.external_predictions`)."""
    if data_dir is None:
        return held_out_test(preds), "the run's test part (predictions.csv)", [], None, None
    scored, unreadable, overlap, left_out = external_predictions(run, config, data_dir=data_dir,
                                                                  batch_size=batch_size, data_options=options,
                                                                  cache_dir=cache_dir, allow_overlap=allow_overlap)
    return scored, str(data_dir), unreadable, overlap, left_out


def _check_lung_masks(lung_masks, data_dir, conformal=None):
    """Cheap checks before any work: ``lung_masks`` with the run's own test part, an existing folder; the
    conformal alpha in (0, 1) (returned as a float, or None)."""
    alpha = None if conformal is None else check_alpha(conformal)
    if lung_masks is None:
        return alpha
    if data_dir is not None:
        raise ValueError("Expected lung_masks (--lung-masks) with the run's own test part only, not with another "
                         f"dataset. Received: data_dir={str(data_dir)!r}")
    if str(lung_masks) != PREDICTED:
        find_lung_masks(lung_masks)
    return alpha


def evaluate_run(run_dir, *, data_dir=None, name=None, layout="auto", modality="X-ray", views="frontal",
                 image_col="path", label_col="label", patient_col="patient", threshold_method="youden",
                 target_sensitivity=None, threshold=None, n_bootstrap=1000, seed=0, level=0.95,
                 batch_size=32, figures=True, now=None, allow_overlap=False, cache_dir=None, lung_masks=None,
                 mlflow=None, calibration=None, conformal=None) -> Path:
    """Evaluate a run folder on its test part or on another dataset; write an evaluation folder.

    The decision thresholds (two classes; one per image, one on patient means) always come
    from the run's validation predictions.
    Rows of another dataset that the run was trained or validated on are left out of every
    figure and score (:func:`covidxr.evaluation.external_predictions`: by content hash always,
    by path and patient id within the run's own dataset folder), counted and named in
    ``metrics.json``'s ``overlap`` block and in the report; rows of the run's own test part are
    kept and flagged (``in_run_test``).

    Args:
        run_dir: A run folder (``config.json``, ``predictions.csv``; ``model.keras`` for
            external data).
        data_dir: None: score the run's test part (from ``predictions.csv``). Otherwise a
            dataset in any layout :func:`covidxr.data.load_dataset` reads, labelled by the run's task as
            in training (findings it leaves out dropped, counted in ``left_out_by_task``), scored with the
            run's model (:func:`covidxr.inference.predict_frame`).
        name: Evaluation name (default ``test``, or the dataset folder's name).
        layout, modality, views, image_col, label_col, patient_col: How to read ``data_dir``.
        threshold_method: ``youden``, ``sensitivity`` or ``fixed`` (see
            :func:`covidxr.evaluation.choose_threshold`).
        target_sensitivity: For ``threshold_method="sensitivity"``.
        threshold: For ``threshold_method="fixed"``.
        n_bootstrap, seed, level, batch_size: Patient bootstrap settings; prediction batch size (external data).
        figures: Also draw the figures.
        now: Timestamp for the folder name (``time.struct_time``; default: now, UTC).
        allow_overlap: Keep (score) the rows the run was trained or validated on, with a loud
            warning; the figures are then not an external validation.
        cache_dir: The hash index folder for ``data_dir`` (default: the run's ``cache_dir``).
        lung_masks: Lung masks folder (own test part only): :func:`covidxr.evaluation.lung_mass`, written
            as ``lung_mass.csv``, ``metrics.json["lung_mass"]``, a report section, ``figures/lung_mass.png``.
            ``"predicted"``: a mask for every test image (:func:`covidxr.lungs.run_lung_masks`).
        mlflow: A tracking URI: log the figures with their interval bounds and the folder into the run's
            MLflow run (:func:`_open_tracking`). None: no tracking.
        calibration, conformal: A site calibration's name (:func:`_with_calibration`), a conformal alpha (:func:`_trust`).

    Returns:
        The evaluation folder ``RUN_DIR/evaluations/<name>-<timestamp>/``.

    Raises:
        FileNotFoundError: Missing run files or dataset.
        FileExistsError: The evaluation folder exists already (nothing is overwritten).
        ValueError: Bad options, labels that map to no finding category, no test rows.
    """
    run = Path(run_dir)
    alpha = _check_lung_masks(lung_masks, data_dir, conformal)
    config, preds = read_run(run, need_model=data_dir is not None or lung_masks is not None)
    tracked = _open_tracking(config, mlflow)  # before any work
    classes = [str(c) for c in config["classes"]]
    name = _check_name(name if name is not None else _default_name(data_dir))
    out = _new_folder(run, name, now)
    info, pinfo = run_thresholds(preds, classes=classes, threshold_method=threshold_method,
                                 target_sensitivity=target_sensitivity, threshold=threshold)
    options = {"layout": layout, "modality": modality, "views": views, "image_col": image_col,
               "label_col": label_col, "patient_col": patient_col}
    scored, source, unreadable, overlap, left_out = _scored_rows(run, config, preds, data_dir=data_dir, options=options,
                                                                 batch_size=batch_size, cache_dir=cache_dir,
                                                                 allow_overlap=allow_overlap)
    site, scored, info, pinfo = _with_calibration(run, calibration, scored, classes, info, pinfo)
    result = evaluate_predictions(scored, classes=classes, threshold=None if info is None else info["threshold"],
                                  patient_threshold=None if pinfo is None else pinfo["threshold"], n_bootstrap=n_bootstrap,
                                  seed=seed, level=level, threshold_info=info, patient_threshold_info=pinfo)
    result.update({"name": name, "run": run.name, "run_dir": str(run.resolve()), "task": config.get("task"),
                   "data": source, "unreadable": unreadable, "overlap": overlap, "left_out_by_task": left_out,
                   "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", now or time.gmtime()),
                   "covidxr_version": __version__, "config": {k: config.get(k) for k in RUN_KEYS if k in config}})
    table, curves = _trust(result, preds, scored, site=site, alpha=alpha, level=level)
    lungs = lung_masks and _lung_mass(run, lung_masks, out, result, config=config, preds=preds,
                                      batch_size=batch_size, n_bootstrap=n_bootstrap, seed=seed, level=level)
    _write_folder(out, result, table, figures=figures, name=name, lungs=lungs, curves=curves)
    if tracked is not None:
        tracked.log_metrics(evaluation_metrics(result))
        tracked.log_artifacts(out, f"evaluations/{out.name}")
    return out


def _with_calibration(run: Path, name, scored: pd.DataFrame, classes, info, pinfo):
    """``(calibration record with its labelled rows, scored rows without the labelled images and recalibrated,
    image threshold info, patient threshold info)`` of a site calibration named ``name`` (``covidxr calibrate``;
    ``RUN/calibrations/<name>[-<timestamp>]``): its labelled images are left out, its map recalibrates the
    probabilities and its thresholds replace the validation ones. None: ``(None, scored, info, pinfo)``."""
    if name is None:
        return None, scored, info, pinfo
    site, labelled = read_calibration(run, name)
    if list(site["classes"]) != list(classes):
        raise ValueError(f"Expected a calibration of the run's classes {classes}. Received: classes={site['classes']}")
    scored, site["n_left_out_labelled"] = leave_out_labelled(scored, labelled)
    if scored.empty:
        raise ValueError(f"Expected images to score besides the calibration's labelled ones. Received: calibration={name!r}")
    site["labelled_rows"] = labelled
    return site, calibrated_probs(scored, site), site["threshold_selection"], site["patient_threshold_selection"]


def _trust(result: dict, preds, scored, *, site, alpha, level):
    """The risk-coverage curve (``result["selective"]``) and, with ``alpha``, conformal sets
    (``result["conformal"]``, at miscoverage ``alpha`` in (0, 1); ``set``, ``set_size``, ``refer`` columns;
    :func:`covidxr.evaluation.conformal.run_conformal`) calibrated on the run's validation part, or on
    the site calibration's labelled images (``site``); returns the scored table with decisions (and sets) and the
    curves."""
    classes = result["classes"]
    if site is not None:
        result["calibration"] = site
    result["selective"], curves = selective_summary(scored, classes=classes, threshold=result["threshold"],
                                                    patient_threshold=result.get("patient_threshold"))
    table = with_decisions(scored, result)
    labelled = site.pop("labelled_rows") if site is not None else None
    if alpha is not None:
        model = None
        if labelled is not None:
            y, probs = M.class_probabilities(labelled, classes)
            model = fit_conformal(y, probs, classes=classes, alpha=alpha)
            model["calibrated_on"] = f"the {len(labelled)} labelled images of calibration {site['name']}"
        _, result["conformal"], table = run_conformal(preds, table, classes=classes, alpha=alpha, level=level,
                                                      model=model)
    return table, curves


def _open_tracking(config: dict, mlflow):
    """The run's MLflow run (``config.json["mlflow"]``) on the tracking server ``mlflow`` (checked to
    answer and to know the run), or None without ``mlflow``. The evaluation logs its figures with their
    interval bounds into it (``<name>_roc_auc``, ``<name>_roc_auc_low``, ``<name>_roc_auc_high``; per
    patient ``<name>_patient_...``: :func:`covidxr.tracking.evaluation_metrics`) and its folder as
    artefacts ``evaluations/<folder>``."""
    if mlflow is None:
        return None
    check_server(mlflow)
    return MlflowRun.reopen(config, uri=mlflow)


def _lung_mass(run, lung_masks, out, result, *, config, preds, **options) -> list:
    """``result["lung_mass"]`` and ``[table, examples(, predicted masks folder)]`` for :func:`_write_folder`."""
    sources = None
    if str(lung_masks) == PREDICTED:  # mask files where they exist, the bundled segmenter elsewhere
        lung_masks = out.parent / f".{out.name}.lung_masks-{os.getpid()}"  # moved into the folder on writing
        sources = run_lung_masks(run, lung_masks, config=config, predictions=preds)
    try:
        result["lung_mass"], *lungs = lung_mass(run, lung_masks, **options)
    except BaseException:
        if sources is not None:
            shutil.rmtree(lung_masks, ignore_errors=True)
        raise
    result["lung_mass"]["mask_sources"] = sources
    return lungs + ([lung_masks] if sources is not None else [])


def _write_folder(out: Path, result: dict, table: pd.DataFrame, *, figures: bool, name: str, lungs=None,
                  curves=None) -> None:
    """Write ``metrics.json``, ``predictions.csv``, the figures and ``report.md`` (and with
    ``lungs`` = [table, examples(, predicted masks folder)] ``lung_mass.csv``, ``figures/lung_mass.png``
    (and ``lung_masks/``)) into a temporary
    folder beside ``out`` and rename it to ``out`` (never over an existing folder)."""
    with new_folder(out, what="evaluation folder", received=f"name={name!r}") as tmp:
        (tmp / "metrics.json").write_text(json_text(result) + "\n")   # strict: an undefined figure is null
        table.to_csv(tmp / "predictions.csv", index=False)
        written = []
        if figures:
            written = write_evaluation_figures(table, result, tmp / "figures")
            if curves is not None:
                written.append(save_figure(plot_risk_coverage(curves, result["selective"]).figure,
                                           tmp / "figures" / "risk_coverage.png"))
        if lungs is not None:
            lungs[0].to_csv(tmp / "lung_mass.csv", index=False)
            if len(lungs) > 2:  # the predicted masks (--lung-masks predicted)
                os.replace(lungs[2], tmp / "lung_masks")
            if figures:
                credit = PREDICTED_MASK_CREDIT if len(lungs) > 2 else LUNG_MASK_CREDIT
                written.append(save_figure(plot_lung_mass(lungs[1], result["lung_mass"], run=result["run"],
                                                          mask_credit=credit), tmp / "figures" / "lung_mass.png"))
        (tmp / "report.md").write_text(evaluation_report(result, figures=[p.name for p in written]))
        record_files(tmp, [n for n in ("metrics.json", "predictions.csv", "lung_mass.csv") if (tmp / n).is_file()])


def write_comparison(table: pd.DataFrame, out_dir, *, metrics=None) -> list[Path]:
    """Write ``comparison.csv``, ``comparison.md`` and ``comparison.png`` into ``out_dir``.

    Raises:
        FileExistsError: One of them exists (nothing is overwritten).
    """
    out = Path(out_dir)
    targets = [out / "comparison.csv", out / "comparison.md", out / "comparison.png"]
    existing = [str(p) for p in targets if p.exists()]
    if existing:
        raise FileExistsError(f"Expected a folder without a comparison, but {existing} exist and are kept. "
                              f"Received: out={str(out)!r}")
    write_text(targets[0], table.to_csv(index=False))
    write_text(targets[1], "# Comparison of runs\n\n" + comparison_markdown(table) + "\n")

    fig = plot_comparison(table, metrics=metrics)
    save_figure(fig, targets[2])
    return targets


def write_paired(result: dict, out_dir) -> list[Path]:
    """Write a paired comparison (:func:`covidxr.evaluation.paired_difference`) as ``paired.json``
    and ``paired.md`` into ``out_dir``.

    Raises:
        FileExistsError: One of them exists (nothing is overwritten).
    """
    out = Path(out_dir)
    targets = [out / "paired.json", out / "paired.md"]
    existing = [str(p) for p in targets if p.exists()]
    if existing:
        raise FileExistsError(f"Expected a folder without a paired comparison, but {existing} exist and are kept. "
                              f"Received: out={str(out)!r}")
    write_json(targets[0], result)
    write_text(targets[1], "# Paired comparison of two runs\n\n" + paired_markdown(result) + "\n")
    return targets


def write_grid_comparison(pooled: pd.DataFrame, per_run: pd.DataFrame, out_dir, *, record=None) -> list[Path]:
    """Write (replacing earlier versions) ``comparison.csv``, ``comparison.md``,
    ``comparison.png`` and ``runs.csv`` into ``out_dir``.

    Args:
        pooled, per_run: :func:`grid_comparison`'s tables.
        out_dir: The grid folder.
        record: The grid's ``grid.json`` content (shown in the Markdown header).

    Returns:
        The four paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path, png_path, runs_path = (out / "comparison.csv", out / "comparison.md",
                                              out / "comparison.png", out / "runs.csv")
    write_text(csv_path, pooled.to_csv(index=False))
    write_text(runs_path, per_run.to_csv(index=False))
    write_text(md_path, grid_markdown(pooled, per_run, record=record))
    fig = plot_comparison(pooled)
    fig.suptitle("Grid, folds pooled (95% CI; black = per image, orange = per patient; dashed: chance)", fontsize=10)
    save_figure(fig, png_path)
    return [csv_path, md_path, png_path, runs_path]
