"""Where the model looks, in numbers: the share of each test image's Grad-CAM mass that falls
inside its lung mask, per image and as a mean with a group-bootstrap interval.
Must not draw or write files, and must not import Keras at import time: Grad-CAM and the model
are loaded inside :func:`lung_mass` only.

A model that finds COVID-19 outside the lungs (text markers, the image border, the shoulders)
uses a shortcut. For each scored image that has a mask, the Grad-CAM map of the positive class
(:func:`covidxr.gradcam.gradcam`, on the image preprocessed as the run was trained) is compared
with the mask put through the **same** geometry: resized to the decoded image's size, then
scaled and padded or cropped by :func:`covidxr.images.preprocess` with the run's settings
(no contrast step), then binarised at 128. The share is ``sum(cam * mask) / sum(cam)``; the
mask's own area share (what a uniform map would get) is reported beside it, and ``excess`` is
their difference: a map that ignores the lungs has an excess near 0 or below.

Masks are matched by file name: ``<image stem>_mask.png`` (the collection's
``annotations/lungVAE-masks``, Selvan et al., arXiv:2005.10052, CC BY-SA, four of whose files
end in ``_mask.png.png``, which is accepted too). Images without a mask are skipped and counted.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..data.groups import group_column
from ..images.lungs import prepare_mask
from .bootstrap import patient_bootstrap
from .runs import held_out_test, read_run

__all__ = ["MASK_SUFFIXES", "find_lung_masks", "image_paths", "lung_mass", "lung_mass_summary", "mass_shares", "match_masks",
           "prepare_mask", "typical_rows"]

#: File name endings of a mask, after the image's stem (first one wins when both exist).
MASK_SUFFIXES = ("_mask.png", "_mask.png.png")
#: Columns of :func:`lung_mass`'s per-image table.
TABLE_COLUMNS = ["image", "patient", "group", "label", "mask", "prob", "mass_inside", "mask_area", "excess"]
_FIGURES = ("mass_inside", "mask_area", "excess")


def find_lung_masks(masks_dir) -> dict[str, Path]:
    """The mask files of a folder, by the stem of the image they belong to.

    Args:
        masks_dir: A folder of ``<image stem>_mask.png`` files (other files are ignored).

    Returns:
        ``{image stem: mask path}``.

    Raises:
        FileNotFoundError: The folder does not exist or holds no mask file.
    """
    folder = Path(masks_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"Expected a folder of lung masks (<image stem>_mask.png). "
                                f"Received: masks_dir={str(folder)!r}")
    found: dict[str, Path] = {}
    for suffix in MASK_SUFFIXES:
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.name.endswith(suffix) and len(path.name) > len(suffix):
                found.setdefault(path.name[: -len(suffix)], path)
    if not found:
        raise FileNotFoundError(f"Expected mask files named <image stem>{MASK_SUFFIXES[0]} in the folder. "
                                f"Received: masks_dir={str(folder)!r}")
    return found


def match_masks(images, masks: dict[str, Path]) -> pd.DataFrame:
    """Each image's mask, matched by the stem of its file name.

    Args:
        images: Image names or paths, shape (n,).
        masks: :func:`find_lung_masks`'s mapping.

    Returns:
        Columns ``image``, ``mask`` (the mask path, or None) and ``status``: ``matched``,
        ``no mask``, or ``ambiguous`` (two images of the list share the stem, so the mask
        cannot be told whose it is).
    """
    images = [str(i) for i in images]
    stems = [Path(i).stem for i in images]
    counts = pd.Series(stems).value_counts()
    rows = []
    for image, stem in zip(images, stems):
        mask = masks.get(stem)
        status = "no mask" if mask is None else ("ambiguous" if counts[stem] > 1 else "matched")
        rows.append({"image": image, "mask": mask if status == "matched" else None, "status": status})
    return pd.DataFrame(rows, columns=["image", "mask", "status"])


def mass_shares(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    """Each map's share of mass inside its mask, and each mask's area share.

    Args:
        maps: Non-negative heatmaps of shape (n, S, S).
        masks: bool masks of shape (n, S, S).

    Returns:
        ``(inside, area)``, float64 of shape (n,): ``sum(map * mask) / sum(map)`` (NaN for an
        all-zero map) and ``mean(mask)``.
    """
    maps = np.asarray(maps, dtype=np.float64)
    masks = np.asarray(masks, dtype=bool)
    if maps.shape != masks.shape or maps.ndim != 3:
        raise ValueError(f"Expected maps and masks of one shape (n, S, S). Received: shapes={maps.shape}, "
                         f"{masks.shape}")
    total = maps.sum(axis=(1, 2))
    inside = (maps * masks).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)
    return share, masks.mean(axis=(1, 2))


def lung_mass_summary(table: pd.DataFrame, *, n_bootstrap=1000, seed=0, level=0.95) -> dict:
    """Mean ``mass_inside``, ``mask_area`` and ``excess`` over the rows with a measured share,
    with percentile intervals of a group bootstrap stratified by label.

    Args:
        table: :data:`TABLE_COLUMNS` rows (``group``, ``label``, the three figures).
        n_bootstrap, seed, level: As :func:`covidxr.evaluation.patient_bootstrap`.

    Returns:
        ``{figure: {"value", "ci_low", "ci_high", "n_used"}}`` for the three figures, plus
        ``n_measured`` and ``n_groups``.
    """
    rows = table[np.isfinite(table["mass_inside"].to_numpy(float))]
    nan = {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n_used": 0}
    if rows.empty:
        return {**{name: dict(nan) for name in _FIGURES}, "n_measured": 0, "n_groups": 0}
    values = {name: rows[name].to_numpy(float) for name in _FIGURES}
    boot = patient_bootstrap(lambda idx: {name: float(np.mean(v[idx])) if len(idx) else float("nan")
                                          for name, v in values.items()},
                             rows["group"].astype(str).to_numpy(), labels=rows["label"].astype(str).to_numpy(),
                             n_bootstrap=n_bootstrap, seed=seed, level=level)
    keep = ("value", "ci_low", "ci_high", "n_used")
    return {**{name: {k: boot["metrics"][name][k] for k in keep} for name in _FIGURES},
            "n_measured": int(len(rows)), "n_groups": boot["n_groups"]}


def typical_rows(table: pd.DataFrame, *, k=4) -> list[int]:
    """The positions of up to ``k`` measured rows whose share is nearest the median share."""
    share = table["mass_inside"].to_numpy(float)
    measured = np.flatnonzero(np.isfinite(share))
    if not len(measured):
        return []
    distance = np.abs(share[measured] - np.median(share[measured]))
    return sorted(int(i) for i in measured[np.argsort(distance, kind="stable")[: int(k)]])


def _positive_index(classes) -> int:
    return 1 if len(classes) == 2 else (classes.index("covid") if "covid" in classes else 1)


def image_paths(config: dict, images, data_dir=None) -> pd.Series:
    """``image -> path`` of the run's dataset (an error naming images it lacks)."""
    from ..config import TrainConfig, load_frame

    frame = load_frame(TrainConfig.from_dict(config), data_dir=data_dir, apply_task=False)
    paths = frame.drop_duplicates("image").set_index("image")["path"]
    missing = [i for i in images if i not in paths.index]
    if missing:
        raise FileNotFoundError("Expected the run's images in its dataset (pass data_dir= if the dataset moved). "
                                f"Received: missing={missing[:5]}")
    return paths


def _prepared(rows: pd.DataFrame, paths: pd.Series, settings: dict):
    """The preprocessed images (:func:`covidxr.lungmasks.lung_view`: the rule every run's inference
    follows) and masks of the matched rows; the positions of the rows whose mask does not fit."""
    from ..lungmasks import lung_view

    size = settings["image_size"]
    images = np.zeros((len(rows), size, size), np.uint8)
    masks = np.zeros((len(rows), size, size), bool)
    misfits = []
    for k, (image, mask_path) in enumerate(zip(rows["image"], rows["mask"])):
        images[k], shape, box = lung_view(paths[image], settings)
        try:
            with Image.open(mask_path) as mask:
                masks[k] = prepare_mask(mask, image_shape=shape, image_size=size, resize=settings["resize"], box=box)
        except ValueError:
            misfits.append(k)
    return images, masks, misfits


def _examples(table, images, maps, masks, k):
    keep = typical_rows(table, k=k)
    return {"table": table.iloc[keep].reset_index(drop=True), "images": images[keep], "maps": maps[keep],
            "masks": masks[keep]}


def lung_mass(run_dir, masks_dir, *, data_dir=None, batch_size=16, n_bootstrap=1000, seed=0, level=0.95,
              examples=4) -> tuple[dict, pd.DataFrame, dict]:
    """The share of Grad-CAM mass inside the lungs on a run's test images that have a mask.

    Args:
        run_dir: A run folder (``config.json``, ``predictions.csv``, ``model.keras``).
        masks_dir: The folder of masks (:func:`find_lung_masks`).
        data_dir: Where the run's dataset is now, if it moved since training.
        batch_size: Grad-CAM batch size.
        n_bootstrap, seed, level: The group bootstrap of the means (:func:`lung_mass_summary`).
        examples: How many typical images (share nearest the median) to return for a figure.

    Returns:
        ``(block, table, examples)``: the ``lung_mass`` block of ``metrics.json`` (counts,
        the three means with intervals, the class explained, the masks folder); the per-image
        table (:data:`TABLE_COLUMNS`, ``prob`` = the model's probability of that class; an
        all-zero map has NaN figures and is counted as ``n_empty_map``); and ``{"table",
        "images" (k, S, S) uint8, "maps" (k, S, S) float32, "masks" (k, S, S) bool}``.

    Raises:
        FileNotFoundError: No run files, no masks folder, images missing from the dataset.
    """
    run = Path(run_dir)
    config, preds = read_run(run, need_model=True)
    masks = find_lung_masks(masks_dir)
    classes = [str(c) for c in config["classes"]]
    rows = held_out_test(preds)
    rows = rows.assign(group=rows[group_column(rows)].astype(str))
    matched = match_masks(rows["image"], masks)
    counts = {f"n_{s.replace(' ', '_')}": int((matched["status"] == s).sum()) for s in ("matched", "no mask",
                                                                                     "ambiguous")}
    rows = rows.assign(mask=matched["mask"].to_numpy())[matched["status"].to_numpy() == "matched"]
    rows = rows.reset_index(drop=True)
    from ..inference import load_run, preprocessing_settings  # Keras: only when maps are computed

    settings = preprocessing_settings(config)
    paths = image_paths(config, list(rows["image"]), data_dir)
    images, mask_arrays, misfits = _prepared(rows, paths, settings)
    if misfits:
        warnings.warn(f"{len(misfits)} masks do not have their image's aspect ratio and are left out: "
                      + ", ".join(str(rows.at[k, "image"]) for k in misfits[:5]), stacklevel=2)
        fit = np.setdiff1d(np.arange(len(rows)), misfits)
        rows, images, mask_arrays = rows.iloc[fit].reset_index(drop=True), images[fit], mask_arrays[fit]
    maps = np.zeros(images.shape, np.float32)
    probs = np.zeros((len(rows), len(classes)), np.float32)
    positive = _positive_index(classes)
    if len(rows):
        from ..gradcam import gradcam

        model, _ = load_run(run, config=config)
        maps, probs = gradcam(model, images[..., None], class_index=positive, batch_size=batch_size)
    inside, area = mass_shares(maps, mask_arrays)
    table = rows.assign(mask=[Path(m).name for m in rows["mask"]], prob=probs[:, positive].astype(float),
                        mass_inside=inside, mask_area=area, excess=inside - area)[TABLE_COLUMNS]
    block = {"masks_dir": str(Path(masks_dir).resolve()), "class": classes[positive],
             "layer": config.get("feature_layer") or "the backbone's last conv layer (Grad-CAM default)",
             "part": "test", "n_images": int(len(matched)), **counts, "n_mismatched": len(misfits),
             "n_empty_map": int(np.isnan(inside).sum()),
             **lung_mass_summary(table, n_bootstrap=n_bootstrap, seed=seed, level=level),
             "bootstrap": {"n_bootstrap": int(n_bootstrap), "seed": int(seed), "level": float(level),
                           "unit": "group", "stratified": True}}
    if not block["n_measured"]:
        warnings.warn(f"No test image of the run has a usable lung mask in {str(masks_dir)!r} "
                      f"({counts['n_no_mask']} without one): the lung_mass figures are NaN.", stacklevel=2)
    return block, table, _examples(table, images, maps, mask_arrays, examples)
