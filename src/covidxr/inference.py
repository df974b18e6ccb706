"""Use a finished run: load its model and preprocessing, and predict images and frames.
Must not score, threshold or draw: it returns probabilities; deciding and reporting happen in
the evaluation, figures and application layers.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from . import models  # noqa: F401  (registers the custom layers before any model is loaded)
from .atomic import read_json_object
from .lungmasks import lung_view
from .training.batches import predict_batches

__all__ = ["load_run", "predict_frame", "predict_images", "prepare_image", "preprocessing_settings"]


def preprocessing_settings(config: dict) -> dict:
    """The preprocessing a run was trained with: ``image_size``, ``resize``, ``contrast``, ``lungs``.

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
        "lungs": prep.get("lungs", config.get("lungs") or "none"),
    }


def prepare_image(path, settings: dict) -> np.ndarray:
    """One image file as a run's model takes it: decoded (:func:`covidxr.images.load_radiograph`,
    strict: at least :data:`covidxr.images.MIN_IMAGE_SIDE` px on each side), cropped to its lungs for a
    ``--lungs crop|mask`` run (:func:`covidxr.lungmasks.lung_view`, the bundled segmenter) and
    preprocessed with the run's settings (:func:`preprocessing_settings`).

    This is the one rule for preparing an image at inference time (``predict``, external
    evaluation, Grad-CAM examples).

    Returns:
        uint8 (S, S).

    Raises:
        ValueError, OSError: The file cannot be decoded, or the image is too small.
    """
    return lung_view(path, settings)[0]


def load_run(run_dir, *, config=None):
    """Load a run's best model (``safe_mode=True``) and its ``config.json``.

    Args:
        run_dir: The run folder.
        config: The config dict, when already in memory.

    Returns:
        ``(model, config_dict)``.

    Raises:
        FileNotFoundError: No ``model.keras`` or ``config.json``.
        ValueError: ``config.json`` is not a JSON object; ``model.keras`` is damaged, not a Keras
            model file, or holds code (a Lambda layer) or names a class that is neither Keras' nor
            covidxr's (a module such as ``os``): refused, never run.
    """
    run_dir = Path(run_dir)
    path = run_dir / "model.keras"
    if not path.is_file():
        raise FileNotFoundError(f"Expected a run folder with model.keras. Received: run_dir={str(run_dir)!r}")
    if config is None:
        config_path = run_dir / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"Expected a run folder with config.json. Received: run_dir={str(run_dir)!r}")
        config = read_json_object(config_path, what="the run's options")
    if not zipfile.is_zipfile(path):  # Keras would say "File not found"
        raise ValueError(f"Expected model.keras to be a Keras model file (a zip archive); this one is not a Keras "
                         f"model file (damaged or cut short?). Received: path={str(path)!r}")
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except (zipfile.BadZipFile, KeyError, EOFError) as err:  # a zip, damaged inside or not Keras'
        raise ValueError(f"Expected model.keras to be a Keras model file; this one is not a Keras model file "
                         f"(damaged inside: {err}). Received: path={str(path)!r}") from err
    except ValueError as err:
        if "safe_mode" in str(err) or "lambda" in str(err).lower():
            raise ValueError(
                "Refusing to load model.keras: it holds code that would run on loading (e.g. a "
                "Lambda layer), which covidxr never saves; only load models from sources you trust "
                f"and made with covidxr. Received: run_dir={str(run_dir)!r}"
            ) from err
        raise
    except TypeError as err:  # a class Keras cannot locate: a module such as ``os``, another package's class
        found = re.search(r"Full object config: {'module': '([^']*)', 'class_name': '([^']*)'", str(err))
        named = f"class {found[2]!r} of module {found[1]!r}" if found else " ".join(str(err).split())[:200]
        raise ValueError(
            f"Refusing to load model.keras: it names a class that is neither Keras' nor covidxr's ({named}); only "
            f"load models made with covidxr, from sources you trust. Received: path={str(path)!r}") from err
    return model, config


def predict_images(model, images, *, batch_size=32) -> np.ndarray:
    """Class probabilities (n, C) for uint8 images (n, S, S, 1); two classes give
    ``[1 - p, p]``. Under data parallelism, call it inside the run's scope with a batch size
    that divides by the replica count."""
    images = np.asarray(images)
    if len(images) == 0:
        width = max(2, int(model.outputs[0].shape[-1]))
        return np.zeros((0, width), np.float32)
    probs = np.asarray(predict_batches(model, images, batch_size=batch_size), dtype=np.float64)
    if probs.shape[-1] == 1:
        probs = np.concatenate([1.0 - probs, probs], axis=1)
    return probs


def predict_frame(run_dir, frame: pd.DataFrame, *, batch_size=32, model=None, config=None) -> np.ndarray:
    """Class probabilities for the images of ``frame``, preprocessed as the run was.

    Args:
        run_dir: A run folder.
        frame: Rows with a ``path`` column (FRAME_COLUMNS layout).
        batch_size: Prediction batch size.
        model, config: Already-loaded :func:`load_run` results (optional).

    Returns:
        float64 (n, C) in the run's class order; two classes give ``[1 - p, p]``.
    """
    if model is None or config is None:
        model, config = load_run(run_dir)
    if "path" not in frame.columns:
        raise ValueError(f"Expected a frame with a 'path' column. Received: columns={list(frame.columns)}")
    settings = preprocessing_settings(config)
    size = settings["image_size"]
    images = np.zeros((len(frame), size, size, 1), np.uint8)
    for i, path in enumerate(frame["path"]):
        images[i, ..., 0] = prepare_image(path, settings)
    return predict_images(model, images, batch_size=batch_size)
