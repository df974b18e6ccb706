"""Lung-field geometry on uint8 arrays: a mask in its image's preprocessed geometry, the
lungs' bounding box, and the ``--lungs crop|mask`` step. Must not import Keras or draw.

``crop`` keeps the lungs' bounding box, widened by a margin on every side (a share of the box's
own height and width, clipped to the image); ``mask`` does the same and also blanks (sets to 0)
everything outside the lungs, dilated by the same margin so the lung border stays visible. A
mask covering less than :data:`MIN_LUNG_SHARE` of the image (empty, or a few stray pixels) is
not trusted: the whole image is kept, and the caller counts such images. Both steps use the
mask's main parts only (:func:`main_components`), so a stray blob far from the lungs does not
widen the box.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .decode import preprocess

__all__ = ["LUNG_GEOMETRY", "LUNG_MODES", "LUNG_MARGIN", "MAX_ASPECT_GAP", "MIN_COMPONENT_RATIO", "MIN_LUNG_SHARE",
           "apply_lungs", "check_lungs", "cut_by_mask_file", "lung_box", "lung_mask_names", "main_components",
           "mask_in_image", "prepare_mask"]

#: Values of ``--lungs``.
LUNG_MODES = ("none", "crop", "mask")
#: Margin around the lungs' bounding box, as a share of the box's side.
LUNG_MARGIN = 0.1
#: A mask covering less than this share of the image falls back to the whole image.
MIN_LUNG_SHARE = 0.02
#: A connected part of a mask smaller than this share of its largest part is dropped (a stray blob).
MIN_COMPONENT_RATIO = 0.1
#: Version of the crop and mask geometry, part of the image-cache and feature-store keys of lung
#: runs: a change to :func:`lung_box` or :func:`apply_lungs` never reuses stored crops (2: main parts only).
LUNG_GEOMETRY = 2
#: Largest relative difference between a mask's and its image's aspect ratio (on the snapshot: 0.0015).
MAX_ASPECT_GAP = 0.02


def check_lungs(lungs) -> str:
    """``lungs`` as one of :data:`LUNG_MODES` (None counts as ``none``)."""
    value = "none" if lungs is None else str(lungs)
    if value not in LUNG_MODES:
        raise ValueError(f"Expected lungs to be one of {', '.join(LUNG_MODES)}. Received: lungs={lungs!r}")
    return value


def mask_in_image(mask, *, image_shape) -> np.ndarray:
    """A lung mask resized to its decoded image's (H, W).

    Args:
        mask: A PIL image or an array (h, w) with the image's aspect ratio (non-zero = lung).
        image_shape: The decoded image's (H, W) (:func:`covidxr.images.load_image`).

    Returns:
        bool (H, W), binarised at half way after a bilinear resize.

    Raises:
        ValueError: The mask's aspect ratio differs from the image's by more than
            :data:`MAX_ASPECT_GAP`.
    """
    grey = (mask if isinstance(mask, Image.Image) else Image.fromarray(np.asarray(mask).astype(np.uint8))).convert("L")
    height, width = int(image_shape[0]), int(image_shape[1])
    gap = abs((grey.width / grey.height) / (width / height) - 1.0)
    if gap > MAX_ASPECT_GAP:
        raise ValueError(f"Expected a mask with the image's aspect ratio (within {MAX_ASPECT_GAP:.0%}). "
                         f"Received: mask_shape={(grey.height, grey.width)}, image_shape={(height, width)}")
    binary = (np.asarray(grey) > 0).astype(np.uint8) * 255
    return np.asarray(Image.fromarray(binary).resize((width, height), Image.Resampling.BILINEAR), np.uint8) >= 128


def prepare_mask(mask, *, image_shape, image_size, resize="pad", box=None) -> np.ndarray:
    """A lung mask in the geometry of its preprocessed image.

    Args:
        mask: The mask, a PIL image or an array (h, w) (any size with the image's aspect ratio;
            non-zero = lung).
        image_shape: The decoded image's (H, W) (:func:`covidxr.images.load_image`).
        image_size, resize: The run's preprocessing (:func:`covidxr.inference.preprocessing_settings`).
        box: The ``(top, bottom, left, right)`` box a ``--lungs crop|mask`` run cut the image to
            (:func:`apply_lungs`), or None.

    Returns:
        bool (image_size, image_size): resized to (H, W) (:func:`mask_in_image`), cut to ``box``,
        through :func:`covidxr.images.preprocess` (no contrast step), binarised at 128.

    Raises:
        ValueError: The mask's aspect ratio differs from the image's by more than
            :data:`MAX_ASPECT_GAP`.
    """
    inside = mask_in_image(mask, image_shape=image_shape)
    if box is not None:
        top, bottom, left, right = box
        inside = inside[top:bottom, left:right]
    return preprocess(inside.astype(np.uint8) * 255, image_size=image_size, resize=resize, contrast=None) >= 128


def main_components(mask, *, min_ratio=MIN_COMPONENT_RATIO) -> np.ndarray:
    """The mask without its stray blobs: the connected parts (8-connected) of at least ``min_ratio``
    of the largest part's area.

    Args:
        mask: bool-like (H, W); true = lung.
        min_ratio: Smallest area kept, as a share of the largest part's.

    Returns:
        bool (H, W); all false for an empty mask.
    """
    from scipy.ndimage import label

    mask = np.asarray(mask, dtype=bool)
    labels, count = label(mask, structure=np.ones((3, 3), dtype=bool))
    if count <= 1:
        return mask
    areas = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(areas >= min_ratio * areas.max()) + 1
    return np.isin(labels, keep)


def lung_box(mask, *, margin=LUNG_MARGIN, min_share=MIN_LUNG_SHARE):
    """The lungs' bounding box widened by ``margin``, or None for an untrusted mask.

    Args:
        mask: bool-like (H, W); true = lung.
        margin: Share of the box's height and width added on each side.
        min_share: Smallest share of the image the mask must cover.

    Returns:
        ``(top, bottom, left, right)`` (bottom and right exclusive, clipped to the image) of the
        mask's main parts (:func:`main_components`), or None when they cover less than
        ``min_share`` of the image.
    """
    return _box(main_components(_mask_2d(mask)), margin=margin, min_share=min_share)


def _mask_2d(mask) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or not mask.size:
        raise ValueError(f"Expected a 2-D mask. Received: mask with shape={mask.shape}")
    return mask


def _box(mask: np.ndarray, *, margin, min_share):
    """:func:`lung_box` of a 2-D mask already cut to its main parts."""
    if mask.mean() < min_share:
        return None
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    dy, dx = int(round((bottom - top) * margin)), int(round((right - left) * margin))
    height, width = mask.shape
    return max(0, top - dy), min(height, bottom + dy), max(0, left - dx), min(width, right + dx)


def _dilated(mask: np.ndarray, radius: int) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, iterations=max(1, radius)) if radius > 0 else mask


def apply_lungs(grey, mask, *, lungs, margin=LUNG_MARGIN, min_share=MIN_LUNG_SHARE):
    """Crop a grey image to its lungs, or also blank what lies outside them.

    Args:
        grey: uint8 (H, W), the decoded image.
        mask: bool-like (H, W) in the same geometry (true = lung).
        lungs: ``"none"``, ``"crop"`` or ``"mask"``.
        margin, min_share: As :func:`lung_box`.

    Returns:
        ``(image, box)``: the uint8 result and the ``(top, bottom, left, right)`` box it was cut
        from; the whole image and ``box=None`` when ``lungs`` is ``none`` or the mask is
        untrusted (the fallback, which callers count).

    Raises:
        ValueError: A bad ``lungs`` value, or image and mask of different shapes.
    """
    lungs = check_lungs(lungs)
    grey, mask = np.asarray(grey), np.asarray(mask, dtype=bool)
    if grey.shape[:2] != mask.shape:
        raise ValueError(f"Expected an image and a mask of one shape. Received: shapes={grey.shape}, {mask.shape}")
    if lungs == "none":
        return grey, None
    mask = main_components(_mask_2d(mask))   # once, for the box and the blanking
    box = _box(mask, margin=margin, min_share=min_share)
    if box is None:
        return grey, None
    top, bottom, left, right = box
    if lungs == "mask":
        radius = int(round(margin * max(bottom - top, right - left) / 2))
        grey = np.where(_dilated(mask, radius), grey, 0).astype(np.uint8)
    return np.ascontiguousarray(grey[top:bottom, left:right]), box


def cut_by_mask_file(grey, mask_path, *, lungs):
    """:func:`apply_lungs` with a stored mask file (0/255, the image's size; :mod:`covidxr.lungmasks`).

    Returns:
        ``(image, fell_back)``: a missing file or one of another size falls back to the whole image.
    """
    if check_lungs(lungs) == "none":
        return grey, False
    if mask_path is None or (isinstance(mask_path, float) and np.isnan(mask_path)):
        return grey, True
    with Image.open(mask_path) as mask:
        inside = np.asarray(mask.convert("L")) >= 128
    if inside.shape != np.asarray(grey).shape[:2]:
        return grey, True
    cut, box = apply_lungs(grey, inside, lungs=lungs)
    return cut, box is None


def lung_mask_names(frame, *, lungs) -> list | None:
    """The file names in a frame's ``lung_mask`` column (:func:`covidxr.lungmasks.lung_mask_files`:
    named by image content and segmenter, so they pin both in a cache key), or None for ``lungs="none"``."""
    if check_lungs(lungs) == "none":
        return None
    if "lung_mask" not in frame.columns:
        raise ValueError(f"Expected a frame with a 'lung_mask' column for lungs={lungs!r} "
                         f"(covidxr.lungmasks.lung_mask_files). Received: columns={list(frame.columns)}")
    return [None if m is None or (isinstance(m, float) and np.isnan(m)) else Path(str(m)).name
            for m in frame["lung_mask"]]
