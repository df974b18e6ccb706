"""Score image files with a trained run: probability per class, the decision at the run's
validation-chosen threshold, and optional Grad-CAM overlays.

Research software, not a diagnostic device: a probability here is a model output on one
image, not a diagnosis.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["predict_files", "preprocessing_settings"]


def preprocessing_settings(config: dict) -> dict:
    """The preprocessing a run was trained with: ``image_size``, ``resize``, ``contrast``.

    Args:
        config: A run's ``config.json`` as a dict.
    """
    prep = config.get("preprocessing") or {}
    size = prep.get("image_size", config.get("image_size"))
    if size is None:
        raise ValueError(f"Expected config.json to record the image size. Received: keys={sorted(config)}")
    return {
        "image_size": int(size),
        "resize": prep.get("resize", config.get("resize", "pad")),
        "contrast": prep.get("contrast", "clahe" if config.get("clahe") else None),
    }


def _unique(path: Path) -> Path:
    """``path`` itself, or ``stem-2.png``, ``stem-3.png``... if taken (never overwrite)."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def predict_files(run_dir, paths, *, gradcam_dir=None, threshold_method="youden", target_sensitivity=None,
                  batch_size=16) -> pd.DataFrame:
    """Score image files (PNG, JPEG, DICOM...) with a run's best model.

    Args:
        run_dir: A run folder made by ``covidxr train``.
        paths: Image files.
        gradcam_dir: If given, write one Grad-CAM overlay PNG per readable image there.
        threshold_method, target_sensitivity: How the threshold is chosen on the run's
            validation predictions (see :func:`covidxr.metrics.choose_threshold`).
        batch_size: Images per forward pass.

    Returns:
        One row per file: ``file``, ``prob_<class>`` for each class, ``decision``,
        ``threshold`` (two classes; NaN for arg-max decisions), ``gradcam`` (overlay path or
        empty) and ``error`` (empty, or why the file could not be scored).
    """
    from .evaluate import read_run, validation_threshold
    from .images import load_image, preprocess
    from .train import load_run, predict_images

    run_dir = Path(run_dir)
    config, predictions = read_run(run_dir, need_model=True)
    model, config = load_run(run_dir, config=config)
    classes = list(config["classes"])
    settings = preprocessing_settings(config)
    chosen = validation_threshold(predictions, classes=classes, method=threshold_method,
                                  target_sensitivity=target_sensitivity)
    threshold = float(chosen["threshold"]) if chosen else float("nan")

    rows, images, good = [], [], []
    for path in map(Path, paths):
        row = {"file": str(path), "error": ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                grey = load_image(path, strict=True)
            images.append(preprocess(grey, **settings))
            good.append(len(rows))
        except Exception as err:  # any unreadable file is reported, the others are scored
            row["error"] = f"{type(err).__name__}: {err}"
        rows.append(row)

    columns = [f"prob_{c}" for c in classes]
    table = pd.DataFrame(rows)
    for column in columns:
        table[column] = np.nan
    table["decision"] = ""
    table["threshold"] = threshold
    table["gradcam"] = ""
    if images:
        batch = np.stack(images)[..., None]
        probs = predict_images(model, batch, batch_size=batch_size)
        table.loc[good, columns] = probs
        if len(classes) == 2:
            decisions = np.where(probs[:, 1] >= threshold, classes[1], classes[0])
        else:
            decisions = np.asarray(classes)[probs.argmax(axis=1)]
        table.loc[good, "decision"] = decisions
        if gradcam_dir is not None:
            from PIL import Image

            from .atomic import atomic_path
            from .gradcam import gradcam, overlay

            out = Path(gradcam_dir)
            out.mkdir(parents=True, exist_ok=True)
            decided = np.array([classes.index(d) for d in decisions])  # explain the decision made
            maps, _ = gradcam(model, batch, class_index=decided, batch_size=batch_size)
            for k, i in enumerate(good):
                target = _unique(out / f"{Path(table.at[i, 'file']).stem}_gradcam.png")
                with atomic_path(target) as tmp:
                    Image.fromarray(overlay(batch[k], maps[k])).save(tmp)
                table.at[i, "gradcam"] = str(target)
    return table[["file", *columns, "decision", "threshold", "gradcam", "error"]]
