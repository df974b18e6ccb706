"""Lung fields: train a U-Net lung segmenter on image/mask pairs, and segment image files with it.
Must not write outside the folders it is given (a new segmenter folder, a new or empty mask folder).

* :func:`train_lungs` (``covidxr lungs train``) pairs a dataset's images with their masks
  (a folder of ``<image stem>_mask.png`` files such as the collection's
  ``annotations/lungVAE-masks``, or the ``mask`` column a layout provides, e.g. COVID-QU-Ex),
  splits them by split group, trains :func:`covidxr.models.segmenter.build_unet` and scores
  Dice and IoU on the held-out groups' masks. It writes a new folder ``OUT/lungs-<timestamp>/``:
  ``model.keras``, ``config.json`` (options, pairs, the model's sha256), ``metrics.json``,
  ``history.csv``, ``split.csv`` and ``figures/lungs.png``.
* :func:`predict_lungs` (``covidxr lungs predict``) writes the segmenter's masks
  (:func:`covidxr.lungmasks.segment`) as ``<stem>_mask.png`` files, which
  ``covidxr evaluate --lung-masks DIR`` reads like any mask folder; :func:`run_lung_masks` does it
  for a run's test images (``covidxr evaluate --lung-masks predicted``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import write_json, write_text
from .evaluation.lungs import find_lung_masks, match_masks
from .lungmasks import save_mask, segment

__all__ = ["lung_pairs", "predict_lungs", "run_lung_masks", "train_lungs"]


def lung_pairs(frame: pd.DataFrame, masks_dir=None) -> pd.DataFrame:
    """The images of a grouped frame that have a lung mask.

    Args:
        frame: Rows with ``path`` and ``group`` (:func:`covidxr.images.load_grouped`), and a ``mask``
            column when the layout provides masks.
        masks_dir: A folder of ``<image stem>_mask.png`` files; None uses the frame's ``mask`` column.

    Returns:
        One row per image with a mask: ``image``, ``path``, ``group``, ``mask``.

    Raises:
        ValueError: No mask source, or no image with a mask.
    """
    if masks_dir is not None:
        matched = match_masks(frame["path"], find_lung_masks(masks_dir))
        frame = frame.assign(mask=matched["mask"].to_numpy())
    elif "mask" not in frame.columns:
        raise ValueError("Expected masks_dir (--masks) or a dataset layout with lung masks (e.g. COVID-QU-Ex). "
                         "Received: masks_dir=None")
    pairs = frame[frame["mask"].notna()].drop_duplicates("path")[["image", "path", "group", "mask"]]
    if len(pairs) < 4:
        raise ValueError(f"Expected at least 4 images with a lung mask. Received: {len(pairs)} pairs "
                         f"(masks_dir={None if masks_dir is None else str(masks_dir)!r})")
    return pairs.reset_index(drop=True)


def _split_pairs(pairs: pd.DataFrame, *, test_size, seed) -> np.ndarray:
    from sklearn.model_selection import GroupShuffleSplit

    if pairs["group"].nunique() < 2:
        raise ValueError(f"Expected masks from at least 2 split groups. Received: groups={pairs['group'].nunique()}")
    train, _ = next(GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
                    .split(pairs, groups=pairs["group"].astype(str)))
    part = np.full(len(pairs), "test", dtype=object)
    part[train] = "train"
    return part


def _new_folder(out, now) -> Path:
    from .runfolder import refuse_existing

    folder = Path(out) / f"lungs-{time.strftime('%Y-%m-%dT%H-%M-%S', now or time.gmtime())}"
    refuse_existing(folder)
    folder.mkdir(parents=True)
    return folder


def _scores(model, images, masks, part, groups, *, seed) -> dict:
    """Dice and IoU on the held-out masks: mean with a group-bootstrap interval, median, minimum."""
    from .evaluation import patient_bootstrap
    from .training.segmentation import dice_iou

    test = part == "test"
    predicted = model.predict(images[test].astype("float32"), verbose=0) >= 0.5
    scores = dict(zip(("dice", "iou"), dice_iou(predicted, masks[test] >= 0.5)))
    boot = patient_bootstrap(lambda idx: {k: float(np.mean(v[idx])) for k, v in scores.items()}, groups[test],
                             n_bootstrap=1000, seed=seed)
    return {name: {**{k: boot["metrics"][name][k] for k in ("value", "ci_low", "ci_high")},
                   "median": float(np.median(v)), "min": float(np.min(v))} for name, v in scores.items()}


def train_lungs(*, data_dir=None, masks=None, out="runs/lungs", image_size=256, filters=8, depth=4, epochs=40,
                batch_size=8, learning_rate=1e-3, test_size=0.2, seed=0, cache_dir=None, layout="auto",
                now=None, figures=True) -> Path:
    """Train a U-Net lung segmenter and score it on held-out groups' masks.

    Args:
        data_dir: The dataset (any layout; every view and label is used).
        masks: A folder of ``<image stem>_mask.png`` files; None: the layout's ``mask`` column.
        out: Parent folder of the new ``lungs-<timestamp>`` folder.
        image_size: Side of the segmenter's square input (divisible by ``2 ** depth``).
        filters, depth: :func:`covidxr.models.segmenter.build_unet`'s size.
        epochs, batch_size, learning_rate: :func:`covidxr.training.segmentation.fit_segmenter`.
        test_size: Share of the split groups held out to score Dice and IoU.
        seed: Split and training seed.
        cache_dir: Where the hash index lives (the split groups).
        layout: The dataset's layout.
        now: Timestamp for the folder name (``time.struct_time``).
        figures: Write ``figures/lungs.png``.

    Returns:
        The new folder.
    """
    from .images import load_grouped
    from .models.segmenter import build_unet, segmenter_digest
    from .training.segmentation import fit_segmenter, segmentation_arrays

    frame = load_grouped(data_dir, task=None, views="all", cache_dir=cache_dir, layout=layout)
    pairs = lung_pairs(frame, masks)
    model = build_unet(input_shape=(image_size, image_size, 1), filters=filters, depth=depth)
    part = _split_pairs(pairs, test_size=test_size, seed=seed)
    images, targets = segmentation_arrays(pairs, image_size=image_size)
    folder = _new_folder(out, now)
    started = time.time()
    history = fit_segmenter(model, images[part == "train"], targets[part == "train"], epochs=epochs,
                            batch_size=batch_size, learning_rate=learning_rate, seed=seed)
    seconds = time.time() - started
    _save_plain(model, folder / "model.keras", filters=filters, depth=depth)
    groups = pairs["group"].astype(str).to_numpy()
    metrics = _scores(model, images, targets, part, groups, seed=seed)
    metrics.update(n_train=int((part == "train").sum()), n_test=int((part == "test").sum()),
                   n_test_groups=int(len(set(groups[part == "test"]))), train_seconds=round(seconds, 1))
    pd.DataFrame(history).to_csv(folder / "history.csv", index=False)
    pairs.assign(part=part).to_csv(folder / "split.csv", index=False)
    write_json(folder / "metrics.json", metrics)
    write_json(folder / "config.json", {
        "kind": "lung segmenter", "data_dir": str(Path(frame.attrs.get("root", data_dir or "")).resolve())
        if data_dir else None, "masks": None if masks is None else str(Path(masks).resolve()),
        "image_size": image_size, "filters": filters, "depth": depth, "epochs": epochs, "batch_size": batch_size,
        "learning_rate": learning_rate, "test_size": test_size, "seed": seed, "n_pairs": int(len(pairs)),
        "sha256": segmenter_digest(folder / "model.keras")})
    if figures:
        _write_figure(folder, model, images, targets, part)
    write_text(folder / "README.md", f"Lung segmenter: Dice {metrics['dice']['value']:.3f} "
               f"[{metrics['dice']['ci_low']:.3f}, {metrics['dice']['ci_high']:.3f}] on "
               f"{metrics['n_test']} held-out images ({metrics['n_test_groups']} groups).\n")
    return folder


def _save_plain(model, path, **options) -> None:
    """Save the weights in a fresh, uncompiled U-Net (no optimizer state: a third of the size; a
    segmenter is only loaded to predict)."""
    from .models.segmenter import build_unet

    plain = build_unet(input_shape=model.input_shape[1:], **options)
    plain.set_weights(model.get_weights())
    plain.save(path)


def _write_figure(folder, model, images, targets, part):
    from .figures import save_figure
    from .figures.lungs import plot_segmentation

    test = np.flatnonzero(part == "test")[:4]
    predicted = model.predict(images[test].astype("float32"), verbose=0)[..., 0] >= 0.5
    save_figure(plot_segmentation(images[test, ..., 0], targets[test, ..., 0] >= 0.5, predicted),
                folder / "figures" / "lungs.png")


def predict_lungs(paths, *, out, segmenter=None, batch_size=16, figures=True, lungs="crop") -> pd.DataFrame:
    """Segment image files and write each mask as ``OUT/<stem>_mask.png`` (0/255, the image's size),
    ``masks.csv``, ``segmenter.json`` and ``lung_crops.png`` (image, mask and ``--lungs`` cut of the
    first four).

    Args:
        paths: Image files (any format :func:`covidxr.images.load_image` reads).
        out: A new or empty folder for the masks.
        segmenter: A segmenter file or folder; None: the bundled one.
        batch_size: Images per forward pass.
        figures: Write ``lung_crops.png``.
        lungs: The cut the figure shows: ``crop`` or ``mask``.

    Returns:
        One row per image: ``image``, ``mask`` (the written file), ``lung_share``.

    Raises:
        ValueError: ``out`` holds files already; two images share a file stem.
    """
    from .models.segmenter import load_segmenter

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"Expected a new or empty folder for the masks (nothing is overwritten). Received: out={str(out)!r}")
    stems = [Path(p).stem for p in paths]
    if len(set(stems)) != len(stems):
        raise ValueError(f"Expected images with distinct file stems (masks are named by stem). "
                         f"Received: {len(stems) - len(set(stems))} repeated stems")
    model, info = load_segmenter(segmenter)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path, target, share in _write_masks(paths, model, out, batch_size=batch_size):
        rows.append({"image": str(path), "mask": str(target), "lung_share": share})
    table = pd.DataFrame(rows, columns=["image", "mask", "lung_share"])
    table.to_csv(out / "masks.csv", index=False)
    write_json(out / "segmenter.json", info)
    if figures and len(table):
        _write_crops_figure(table.iloc[:4], out / "lung_crops.png", lungs=lungs)
    return table


def _write_crops_figure(table, path, *, lungs) -> None:
    """Image, mask and ``--lungs`` cut of a few segmented files."""
    from PIL import Image

    from .figures import save_figure
    from .figures.lungs import plot_lung_crops
    from .images import load_image
    from .images.lungs import apply_lungs

    greys = [load_image(p) for p in table["image"]]
    masks = []
    for mask_path in table["mask"]:
        with Image.open(mask_path) as m:
            masks.append(np.asarray(m) >= 128)
    cuts = [apply_lungs(g, m, lungs=lungs)[0] for g, m in zip(greys, masks)]
    save_figure(plot_lung_crops(greys, masks, cuts, names=[Path(p).name for p in table["image"]], mode=lungs), path)


def _write_masks(paths, model, out: Path, *, batch_size=16):
    """Segment image files 64 at a time and write each mask as ``OUT/<stem>_mask.png``; yields
    ``(path, mask file, lung share)``."""
    from .images import load_image

    for start in range(0, len(paths), 64):
        chunk = [Path(p) for p in paths[start: start + 64]]
        for path, mask in zip(chunk, segment([load_image(p) for p in chunk], model, batch_size=batch_size)):
            target = out / f"{path.stem}_mask.png"
            save_mask(mask, target)
            yield path, target, float(mask.mean())


def run_lung_masks(run_dir, out, *, config, predictions, masks_dir=None, segmenter=None, data_dir=None) -> dict:
    """A mask for every test image of a run: the mask file where one exists, the segmenter's otherwise.

    Writes ``OUT/<stem>_mask.png`` for each test image (copied, or predicted in the image's own
    geometry), so :func:`covidxr.evaluation.lung_mass` reads the folder like any mask folder.

    Args:
        run_dir: The run folder.
        out: A new folder for the masks.
        config, predictions: The run's ``config.json`` and ``predictions.csv`` (:func:`covidxr.evaluation.read_run`).
        masks_dir: Mask files to prefer; None: the dataset's ``annotations/lungVAE-masks`` when it has one.
        segmenter: A segmenter file or folder; None: the bundled one.
        data_dir: Where the run's dataset is now, if it moved since training.

    Returns:
        ``{"from_files", "predicted", "masks_dir", "segmenter"}``: counts and where they came from.
    """
    import shutil

    from .data import resolve_data_dir
    from .evaluation import held_out_test
    from .evaluation.lungs import image_paths
    from .models.segmenter import load_segmenter

    images = list(held_out_test(predictions)["image"].drop_duplicates())
    paths = image_paths(config, images, data_dir)
    if masks_dir is None:
        default = resolve_data_dir(data_dir or config.get("data_dir")) / "annotations" / "lungVAE-masks"
        masks_dir = default if default.is_dir() else None
    files = find_lung_masks(masks_dir) if masks_dir is not None else {}
    out = Path(out)
    out.mkdir(parents=True)
    missing = []
    for image in images:
        stem = Path(paths[image]).stem
        if stem in files:
            shutil.copyfile(files[stem], out / f"{stem}_mask.png")
        else:
            missing.append(Path(paths[image]))
    model, info = load_segmenter(segmenter)
    list(_write_masks(missing, model, out))
    return {"from_files": len(images) - len(missing), "predicted": len(missing),
            "masks_dir": None if masks_dir is None else str(Path(masks_dir).resolve()), "segmenter": info}
