"""``covidxr calibrate``: recalibrate a run for a new site from a few of its labelled images and
choose the site's threshold; write ``RUN/calibrations/<site>-<timestamp>/``; read such a folder
back and apply it (``evaluate --calibration``, ``predict --calibration``).
Must not compute figures itself: the maps, the draw and the gain are
:mod:`covidxr.evaluation.calibration`'s, scoring :mod:`covidxr.evaluation`'s, drawing
:mod:`covidxr.figures.trust`'s; this module puts them in a folder.

A calibration folder holds:

* ``calibration.json``: the options, the map's parameters (``params``), the site's image and patient
  thresholds, the run and the site it was made for (the small file ``--calibration`` applies);
* ``labelled.csv``: the labelled images (home and recalibrated probabilities), which later
  evaluations leave out and on which conformal sets can be calibrated;
* ``metrics.json`` and ``report.md``: the rest of the site scored before (home probabilities, the run's
  validation thresholds) and after (recalibrated, the site's thresholds), with group-bootstrap intervals;
* ``predictions.csv`` (the rest, ``prob_`` after and ``home_prob_`` before), ``gain_by_size.csv`` and
  ``figures/`` (reliability before/after, gain against the number of labelled images).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .atomic import json_text, new_folder
from .data.groups import group_column
from .evaluation import evaluate_predictions, external_predictions, held_out_test, read_run, run_thresholds
from .evaluation import metrics as M
from .evaluation.calibration import (CALIBRATION_METHODS, apply_calibration, draw_labelled, fit_calibration,
                                     gain_by_size, site_threshold)

__all__ = ["calibrate_site", "calibrated_probs", "leave_out_labelled", "read_calibration"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


def _site_name(name, data_dir) -> str:
    if name is None:
        stem = "test" if data_dir is None else Path(str(data_dir)).expanduser().resolve().name
        stem = Path(stem).stem if Path(stem).suffix.lower() == ".csv" else stem
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "site"
    if not _NAME.match(str(name)):
        raise ValueError("Expected a site name of letters, digits, '.', '_' or '-' (up to 80, no slashes). "
                         f"Received: name={name!r}")
    return str(name)


def _draw_unit(site: pd.DataFrame) -> str:
    """The groups labelled images are drawn by: the split groups (patients merged by shared images), except
    in the test part of a run split by source (there a group is a whole source: ``source:...``), where the
    site's images are drawn by patient."""
    unit = group_column(site)
    if unit == "group" and site[unit].astype(str).str.startswith("source:").any():
        return "patient"
    return unit


def calibrated_probs(frame: pd.DataFrame, calibration: dict) -> pd.DataFrame:
    """``frame`` with its ``prob_`` columns recalibrated by ``calibration["params"]`` (two classes) and
    the home probabilities kept as ``home_prob_<class>``."""
    classes = calibration["classes"]
    cols = M.prob_columns(classes)
    _, probs = M.class_probabilities(frame, classes)
    positive = apply_calibration(calibration["params"], probs[:, 1])
    out = frame.assign(**{f"home_{c}": frame[c].to_numpy() for c in cols})
    out[cols[0]], out[cols[1]] = 1.0 - positive, positive
    return out


def _score(rows, classes, threshold, patient_threshold, infos, *, n_bootstrap, seed, level) -> dict:
    return evaluate_predictions(rows, classes=classes, threshold=threshold, patient_threshold=patient_threshold,
                                n_bootstrap=n_bootstrap, seed=seed, level=level, threshold_info=infos[0],
                                patient_threshold_info=infos[1])


def _site_rows(run, config, preds, *, data_dir, data_options, batch_size, cache_dir):
    if data_dir is None:
        return held_out_test(preds), "the run's test part (predictions.csv)"
    scored, _, _, _ = external_predictions(run, config, data_dir=data_dir, batch_size=batch_size,
                                           data_options=data_options, cache_dir=cache_dir)
    return scored, str(data_dir)


def _fit(site, classes, *, labelled, method, threshold_method, target_sensitivity, seed) -> dict:
    """The draw, the fitted map and the site's thresholds."""
    unit = _draw_unit(site)
    mask = draw_labelled(site, labelled, group_col=unit, seed=seed)
    y, probs = M.class_probabilities(site, classes)
    fitted = fit_calibration(y[mask], probs[mask, 1], site[unit].to_numpy()[mask], method=method)
    calibration = {"classes": classes, "params": fitted["params"]}
    after = calibrated_probs(site, calibration)
    lab = after[mask]
    ly, lprobs = M.class_probabilities(lab, classes)
    info = site_threshold(ly, lprobs[:, 1], method=threshold_method, target_sensitivity=target_sensitivity)
    per_patient = M.patient_frame(lab, classes)
    py, pprobs = M.class_probabilities(per_patient, classes)
    pinfo = site_threshold(py, pprobs[:, 1], method=threshold_method, target_sensitivity=target_sensitivity)
    pinfo["description"] = pinfo["description"].replace("labelled images", "labelled patients' mean probabilities")
    info["level"], pinfo["level"] = "image", "patient"
    return {"mask": mask, "unit": unit, "fitted": fitted, "after": after, "info": info, "pinfo": pinfo}


def calibrate_site(run_dir, *, labelled, data_dir=None, name=None, method="auto", threshold_method="youden",
                   target_sensitivity=None, seed=0, n_bootstrap=1000, level=0.95, sizes=(10, 20, 40), repeats=20,
                   batch_size=32, cache_dir=None, figures=True, now=None, data_options=None) -> Path:
    """Recalibrate a two-class run for a site from ``labelled`` of its images; write a calibration folder.

    Args:
        run_dir: A run folder (``model.keras`` too with ``data_dir``).
        labelled: Labelled images: a number (int >= 2) or a share in (0, 1) of the site's images, drawn by
            group (:func:`covidxr.evaluation.calibration.draw_labelled`).
        data_dir: The site (any layout :func:`covidxr.data.load_dataset` reads; images the run was trained
            or validated on are left out). None: the run's own test part.
        name: Site name (default: the folder's name, or ``test``).
        method: One of :data:`covidxr.evaluation.calibration.CALIBRATION_METHODS`.
        threshold_method, target_sensitivity: The site's threshold rule (``youden`` or ``sensitivity``).
        seed: Seed of the draw and the bootstrap.
        n_bootstrap, level: Group bootstrap of the rest of the site.
        sizes, repeats: The gain against the number of labelled images (``gain_by_size.csv``, a figure);
            empty ``sizes`` skips it.
        batch_size, cache_dir, data_options: How ``data_dir`` is read and predicted.
        figures: Also draw the figures. now: Timestamp of the folder name (UTC).

    Returns:
        The folder ``RUN/calibrations/<name>-<timestamp>/``.

    Raises:
        ValueError: Three classes, a site of one class, too many labelled images, bad options.
        FileExistsError: The folder exists (nothing is overwritten).
    """
    run = Path(run_dir)
    if threshold_method not in ("youden", "sensitivity"):
        raise ValueError(f"Expected threshold_method 'youden' or 'sensitivity'. Received: "
                         f"threshold_method={threshold_method!r}")
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"Unknown recalibration method. Expected one of {list(CALIBRATION_METHODS)}. "
                         f"Received: method={method!r}")
    config, preds = read_run(run, need_model=data_dir is not None)
    classes = [str(c) for c in config["classes"]]
    if len(classes) != 2:
        raise ValueError(f"Expected a two-class run to recalibrate. Received: classes={classes}")
    name = _site_name(name, data_dir)
    stamp = time.strftime("%Y-%m-%dT%H-%M-%S", now or time.gmtime())
    out = run / "calibrations" / f"{name}-{stamp}"
    if out.exists():
        raise FileExistsError(f"Expected a new calibration folder, but {str(out)!r} exists. Received: name={name!r}")
    site, source = _site_rows(run, config, preds, data_dir=data_dir, data_options=data_options or {},
                              batch_size=batch_size, cache_dir=cache_dir)
    fit = _fit(site, classes, labelled=labelled, method=method, threshold_method=threshold_method,
               target_sensitivity=target_sensitivity, seed=seed)
    home = run_thresholds(preds, classes=classes, threshold_method=threshold_method,
                          target_sensitivity=target_sensitivity)
    mask = fit["mask"]
    rest_before = site[~mask].reset_index(drop=True)
    rest_after = fit["after"][~mask].reset_index(drop=True)
    options = {"n_bootstrap": n_bootstrap, "seed": seed, "level": level}
    before = _score(rest_before, classes, home[0]["threshold"], home[1]["threshold"], home, **options)
    after = _score(rest_after, classes, fit["info"]["threshold"], fit["pinfo"]["threshold"],
                   (fit["info"], fit["pinfo"]), **options)
    gain = pd.DataFrame()
    if sizes:
        gain = gain_by_size(site, classes=classes, sizes=sizes, home_threshold=home[0]["threshold"],
                            group_col=fit["unit"], repeats=repeats, seed=seed, method=method,
                            threshold_method=threshold_method, target_sensitivity=target_sensitivity)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", now or time.gmtime())
    record = {"name": out.name, "site": name, "run": run.name, "run_dir": str(run.resolve()), "data": source,
              "classes": classes, "labelled_requested": labelled, "n_labelled": int(mask.sum()),
              "n_rest": int((~mask).sum()), "drawn_by": fit["unit"], "seed": seed, "method": fit["fitted"]["method"],
              "method_requested": method, "chosen_by": fit["fitted"]["chosen_by"],
              "cv_log_loss": fit["fitted"]["cv_log_loss"], "params": fit["fitted"]["params"],
              "threshold": fit["info"]["threshold"], "threshold_selection": fit["info"],
              "patient_threshold": fit["pinfo"]["threshold"], "patient_threshold_selection": fit["pinfo"],
              "created": created, "covidxr_version": __version__}
    result = {"calibration": record, "before": before, "after": after, "gain_by_size": _gain_summary(gain)}
    _write(out, record, result, fit["after"][mask], rest_after, gain, figures=figures, rest_before=rest_before)
    return out


def _gain_summary(gain: pd.DataFrame) -> dict:
    if gain.empty:
        return {}
    columns = [c for c in gain.columns if c.endswith(("_before", "_after"))]
    table = gain.groupby("labelled")[columns].median()
    return {str(k): {c: float(v) for c, v in row.items()} | {"draws": int((gain["labelled"] == k).sum())}
            for k, row in table.iterrows()}


def _write(out: Path, record, result, labelled_rows, rest_after, gain, *, figures, rest_before) -> None:
    """Write the folder into a temporary sibling, then rename it (never over an existing folder)."""
    from .figures.common import save_figure
    from .figures.trust import plot_gain_by_size, plot_recalibration
    from .reports import calibration_markdown

    with new_folder(out, what="calibration folder", received=f"name={record['site']!r}") as tmp:
        (tmp / "calibration.json").write_text(json_text(record) + "\n")
        (tmp / "metrics.json").write_text(json_text(result) + "\n")
        labelled_rows.to_csv(tmp / "labelled.csv", index=False)
        rest_after.to_csv(tmp / "predictions.csv", index=False)
        written = []
        if not gain.empty:
            gain.to_csv(tmp / "gain_by_size.csv", index=False)
        if figures:
            written.append(save_figure(plot_recalibration(rest_before, rest_after, record["classes"]),
                                       tmp / "figures" / "reliability.png"))
            if not gain.empty:
                written.append(save_figure(plot_gain_by_size(gain), tmp / "figures" / "gain_by_size.png"))
        (tmp / "report.md").write_text(calibration_markdown(result, figures=[p.name for p in written]))


def read_calibration(run_dir, name) -> tuple[dict, pd.DataFrame]:
    """A run's calibration: ``RUN/calibrations/<name>/`` itself, or the newest ``<name>-<timestamp>``.

    Returns:
        ``(calibration.json's dict, labelled.csv)``.

    Raises:
        FileNotFoundError: No such calibration.
    """
    root = Path(run_dir) / "calibrations"
    exact = root / str(name)
    found = [exact] if (exact / "calibration.json").is_file() else sorted(
        p for p in root.glob(f"{name}-*") if (p / "calibration.json").is_file())
    if not found:
        have = sorted(p.name for p in root.glob("*") if (p / "calibration.json").is_file()) if root.is_dir() else []
        raise FileNotFoundError(f"Expected a calibration named {name!r} in {str(root)!r} (made by `covidxr "
                                f"calibrate`); there are {have}. Received: calibration={name!r}")
    folder = found[-1]
    record = json.loads((folder / "calibration.json").read_text())
    record["folder"] = str(folder)
    labelled = pd.read_csv(folder / "labelled.csv", dtype={"image": str, "patient": str, "label": str})
    return record, labelled


def leave_out_labelled(frame: pd.DataFrame, labelled: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """``frame`` without the calibration's labelled images (same content hash, or same image name when
    either lacks hashes), and how many were left out."""
    if "hash" in frame.columns and "hash" in labelled.columns:
        known = set(labelled["hash"].dropna().astype(str)) - {""}
        drop = frame["hash"].astype(str).isin(known).to_numpy()
    else:
        drop = frame["image"].astype(str).isin(set(labelled["image"].astype(str))).to_numpy()
    return frame[~drop].reset_index(drop=True), int(np.sum(drop))
