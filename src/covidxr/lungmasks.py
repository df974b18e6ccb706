"""Lung masks from the segmenter, for ``--lungs crop|mask``: on decoded images.
Must not draw, and must not write outside the cache folder's ``lungs/`` store: masks

(:func:`segment`), stored once per image and segmenter beside the caches
(:func:`lung_mask_files`), and the one rule that prepares a file for a ``--lungs`` run at
inference time (:func:`lung_view`).

A mask is stored as ``<cache_dir>/lungs/<segmenter sha256[:16]>/<image content hash>.png``
(0/255, the decoded image's own size): another split, fold or run over the same images and
segmenter reuses it, and a changed image (another content hash) or segmenter (another sha256)
gets a new one. Keras is imported only when a segmenter is loaded.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .atomic import atomic_path
from .images import load_image, load_radiograph, preprocess, resolve_cache_dir
from .images.lungs import apply_lungs, check_lungs

__all__ = ["LUNG_STORE", "lung_mask_files", "lung_view", "save_mask", "segment", "segmenter_for", "unpad_mask"]

#: Folder of stored masks under the cache folder.
LUNG_STORE = "lungs"


@functools.lru_cache(maxsize=2)
def segmenter_for(path=None):
    """:func:`covidxr.models.segmenter.load_segmenter`, loaded once per process and path."""
    from .models.segmenter import load_segmenter  # Keras: only when a mask is made

    return load_segmenter(path)


def unpad_mask(probs, image_shape) -> np.ndarray:
    """A mask predicted on a pad-resized square, back in its decoded image's (H, W).

    Args:
        probs: float (S, S) lung probabilities on :func:`covidxr.images.preprocess`'s ``pad`` square.
        image_shape: The decoded image's (H, W).

    Returns:
        bool (H, W).
    """
    side = probs.shape[0]
    height, width = int(image_shape[0]), int(image_shape[1])
    scale = side / max(height, width)
    inner_h, inner_w = max(1, round(height * scale)), max(1, round(width * scale))
    top, left = (side - inner_h) // 2, (side - inner_w) // 2
    inner = np.asarray(probs[top: top + inner_h, left: left + inner_w], np.float32)
    return np.asarray(Image.fromarray(inner).resize((width, height), Image.Resampling.BILINEAR)) >= 0.5


def segment(greys, model, *, batch_size=16) -> list[np.ndarray]:
    """Each decoded grey image's lung mask, in the image's own geometry.

    Args:
        greys: uint8 arrays (H_i, W_i) (:func:`covidxr.images.load_image`).
        model: A segmenter (:func:`covidxr.models.segmenter.load_segmenter`).
        batch_size: Images per forward pass.

    Returns:
        bool arrays (H_i, W_i).
    """
    if not len(greys):
        return []
    side = int(model.input_shape[1])
    squares = np.stack([preprocess(g, image_size=side) for g in greys])[..., None].astype("float32")
    probs = model.predict(squares, batch_size=batch_size, verbose=0)[..., 0]
    return [unpad_mask(p, g.shape) for p, g in zip(probs, greys)]


def save_mask(mask, path) -> None:
    """A bool mask as a 0/255 PNG."""
    Image.fromarray(np.asarray(mask, np.uint8) * 255).save(path)


def _content_id(row) -> str:
    exact = row.get("hash") if hasattr(row, "get") else None
    if isinstance(exact, str) and exact:
        return exact
    return hashlib.sha256(Path(row["path"]).read_bytes()).hexdigest()


def lung_mask_files(frame: pd.DataFrame, *, cache_dir=None, segmenter=None, batch_size=16) -> pd.Series:
    """The stored lung mask of every image of ``frame``, segmenting those not stored yet.

    Args:
        frame: Rows with ``path`` (and ``hash``, the exact content hash, where known).
        cache_dir: The cache folder (see :func:`covidxr.images.resolve_cache_dir`).
        segmenter: A segmenter file or folder; None: the bundled one.
        batch_size: Images per forward pass.

    Returns:
        The mask file of each row (index as ``frame``'s). An image that cannot be decoded gets
        None (the cache build leaves it out anyway).
    """
    model, info = segmenter_for(None if segmenter is None else str(segmenter))
    folder = resolve_cache_dir(cache_dir) / LUNG_STORE / info["sha256"][:16]
    folder.mkdir(parents=True, exist_ok=True)
    files = pd.Series([folder / f"{_content_id(row)}.png" for _, row in frame.iterrows()], index=frame.index,
                      dtype=object)
    todo = [i for i in frame.index if not files[i].is_file()]
    for start in range(0, len(todo), 64):
        chunk = todo[start: start + 64]
        greys = {i: load_image(frame.at[i, "path"], strict=False) for i in chunk}
        readable = [i for i in chunk if greys[i] is not None]
        for i, mask in zip(readable, segment([greys[i] for i in readable], model, batch_size=batch_size)):
            with atomic_path(files[i]) as tmp:  # another process may read the store meanwhile
                save_mask(mask, tmp)
        for i in set(chunk) - set(readable):
            files[i] = None
    return files


def lung_view(path, settings: dict, *, segmenter=None):
    """One image file as a ``--lungs crop|mask`` run's model takes it, and where it was cut.

    The file is decoded, its lungs found by the segmenter, cropped (or masked) by
    :func:`covidxr.images.lungs.apply_lungs`, then preprocessed with the run's settings.

    Args:
        path: The image file.
        settings: :func:`covidxr.inference.preprocessing_settings` (with ``lungs``).
        segmenter: The segmenter file (None: the bundled one).

    Returns:
        ``(image, shape, box)``: uint8 (S, S); the decoded image's (H, W); the crop box, or None
        (``lungs`` is ``none``, or the mask fell back to the whole image).
    """
    settings = dict(settings)
    lungs = check_lungs(settings.pop("lungs", "none"))
    grey = load_radiograph(path, strict=True)
    box = None
    if lungs != "none":
        model, _ = segmenter_for(None if segmenter is None else str(segmenter))
        cut, box = apply_lungs(grey, segment([grey], model)[0], lungs=lungs)
        return preprocess(cut, **settings), grey.shape[:2], box
    return preprocess(grey, **settings), grey.shape[:2], box
