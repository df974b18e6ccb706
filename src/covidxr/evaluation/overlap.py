"""The external-set overlap guard: which rows of a dataset given to ``covidxr evaluate --data-dir``
the run trained or validated on, by content hash, by path and by patient id.
Must not predict, score or write anything, and must not trust a patient id from another
dataset folder (hospitals reuse ids like "1", "2"): it reads the run's split and hashes, and
returns flags and counts.

* :func:`run_reference` reads the run's ``split.csv`` and the content hashes of its images:
  hashed anew (exact and near, :func:`covidxr.images.image_hashes`, cheap through the hash
  index) when the run's dataset can still be read (:func:`covidxr.config.load_frame`), else
  the exact hashes of split.csv's ``hash`` column, with a warning.
* :func:`flag_overlap` compares a dataset's rows with the run's rows: by content always (the
  same exact hash, or near hashes at most :data:`~covidxr.data.groups.NEAR_DISTANCE` bits
  apart; images of very low variance never match), by path and by patient id only when the
  dataset folder is the run's own.
* :func:`overlap_summary` is the ``overlap`` block of an evaluation's ``metrics.json``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import read_csv, require_columns, resolve_data_dir
from ..data.groups import NEAR_BITS, NEAR_DISTANCE, near_bits, near_distances, usable_hashes
from ..images import image_hashes

__all__ = ["FIT_PARTS", "OVERLAP_KINDS", "flag_overlap", "overlap_summary", "run_reference"]

#: The ways a row can overlap with a run's data, in the order they are tested.
OVERLAP_KINDS = ("exact", "near", "path", "patient")
#: The parts of a run that tuned its model (training) or its checkpoint and threshold (validation).
FIT_PARTS = ("train", "val")


def _data_root(data_dir) -> Path:
    """The folder a dataset's image keys are relative to: the folder itself, or a manifest's folder."""
    path = Path(os.path.realpath(resolve_data_dir(data_dir)))
    return path.parent if path.is_file() else path


def _read_split(path: Path) -> pd.DataFrame:
    """A run's ``split.csv`` as strings, as written (old files without ``group``/``hash`` too)."""
    split = read_csv(path)
    require_columns(split, ["image", "patient", "part"], source=str(path))
    return split


def _rehash(split: pd.DataFrame, config: dict, cache_dir, index):
    """The split's rows with exact and near hashes from the run's dataset, or the reason it cannot be read."""
    from ..config import TrainConfig, load_frame   # here: covidxr.config imports Keras (the model registry)

    try:
        options = TrainConfig.from_dict({**config, "cache_dir": cache_dir if cache_dir is not None
                                         else config.get("cache_dir")})
        with warnings.catch_warnings():   # the run's own dataset: its loader warnings were shown at training
            warnings.simplefilter("ignore")
            frame = load_frame(options, hash_index=index)
            frame = frame[frame["image"].isin(set(split["image"]))]
            hashes = image_hashes(frame, cache_dir=options.cache_dir, index=index)
    except (ValueError, FileNotFoundError, TypeError, OSError) as err:
        return None, f"{type(err).__name__}: {err}"[:300]
    found = pd.concat([frame[["image", "path"]], hashes], axis=1)
    return found.drop_duplicates("image").set_index("image"), None


def run_reference(run_dir, config: dict, *, cache_dir=None, index=None) -> dict | None:
    """The run's split rows and their content hashes, to check a dataset against.

    Args:
        run_dir: The run folder (its ``split.csv``).
        config: Its ``config.json`` (data folder, loading options, cache folder).
        cache_dir: The hash index folder (default: the run's ``cache_dir``).
        index: A :class:`covidxr.images.HashIndex` of that folder to use and leave unsaved (the
            caller's, read once for the whole evaluation); None reads and saves the folder's own.

    Returns:
        None (with a warning) when the run has no ``split.csv``; else a dict: ``rows`` (columns
        ``image, patient, part, path, exact, near, std``; path and near blank, std NaN where
        unknown), ``root`` (the run's dataset folder, resolved), ``content`` (``"exact and near"``,
        ``"exact"`` or ``"none"``) and ``warnings`` (what could not be checked).
    """
    run = Path(run_dir)
    if not (run / "split.csv").is_file():
        warnings.warn(f"The run {run.name} has no split.csv: no overlap check with the images it was trained "
                      "and validated on was possible; the figures may include them.", stacklevel=3)
        return None
    split = _read_split(run / "split.csv")
    data_dir = config.get("data_dir")
    root = _data_root(data_dir)
    found, reason = _rehash(split, config, cache_dir, index) if root.exists() else (None, f"{root} does not exist")
    rows = split[["image", "patient", "part"]].copy()
    rows["path"], rows["near"], rows["std"] = "", "", np.nan
    rows["exact"] = split["hash"] if "hash" in split.columns else ""
    if found is not None:
        known = rows["image"].isin(found.index)
        for column in ("path", "exact", "near", "std"):
            rows.loc[known, column] = rows.loc[known, "image"].map(found[column])
        rows.loc[known, "path"] = [os.path.realpath(p) for p in rows.loc[known, "path"]]
    notes = []
    if found is None or not rows["image"].isin(found.index).all():
        what = (f"the run's dataset cannot be read ({reason})" if found is None else
                f"{int((~rows['image'].isin(found.index)).sum())} of its images are no longer in {root}")
        if "hash" in split.columns:
            notes.append(f"Only exact copies could be checked for part of the run's images: {what}, so the "
                         "hash column of split.csv stands in for them (near copies, re-encoded or resized, "
                         "are not found).")
        else:
            notes.append(f"No content check was possible for part of the run's images: {what}, and split.csv "
                         "has no hash column (a run written before content hashes); only paths and patient "
                         "ids within the same dataset folder were compared.")
        for note in notes:
            warnings.warn(note, stacklevel=3)
    content = "exact and near" if not notes else ("exact" if "hash" in split.columns else "none")
    return {"rows": rows.reset_index(drop=True), "root": root, "content": content, "warnings": notes}


def _closest(near, ref_near) -> tuple[np.ndarray, np.ndarray]:
    """For each near hash (n,): the position of the closest of ``ref_near`` (m,) and the distance in bits."""
    a, b = near_bits(near), near_bits(ref_near)
    best, dist = np.full(len(a), -1), np.full(len(a), NEAR_BITS + 1)
    if len(a) and len(b):
        for start in range(0, len(a), 512):   # blocks of 512 rows bound the distance matrix
            d = near_distances(a[start:start + 512], b)
            best[start:start + 512], dist[start:start + 512] = d.argmin(axis=1), d.min(axis=1)
    return best, dist


def _matches(frame, hashes, ref: pd.DataFrame, *, same_folder, max_distance) -> tuple[list, list]:
    """Per row of ``frame``: the kinds it matches ``ref`` by, and the first run image it matches."""
    ok, ref_ok = usable_hashes(hashes), usable_hashes(ref)
    exact = {}
    for h, image in zip(ref["exact"][ref_ok], ref["image"][ref_ok]):
        exact.setdefault(h, image)
    near_ref = ref[ref_ok & (ref["near"].astype(str).str.len() == NEAR_BITS // 4)]
    best, dist = _closest(hashes["near"].to_numpy(), near_ref["near"].to_numpy())
    paths = {p: i for p, i in zip(ref["path"], ref["image"]) if p}
    patients = dict(zip(ref["patient"].astype(str)[::-1], ref["image"][::-1]))
    kinds, first = [], []
    for i, (h, path, patient) in enumerate(zip(hashes["exact"], frame["path"], frame["patient"].astype(str))):
        found = {}
        if ok[i] and h in exact:
            found["exact"] = exact[h]
        elif ok[i] and best[i] >= 0 and dist[i] <= max_distance:
            found["near"] = near_ref["image"].iloc[best[i]]
        if same_folder and os.path.realpath(path) in paths:
            found["path"] = paths[os.path.realpath(path)]
        if same_folder and patient in patients:
            found["patient"] = patients[patient]
        kinds.append([k for k in OVERLAP_KINDS if k in found])
        first.append(next(iter(found.values()), ""))
    return kinds, first


def flag_overlap(frame: pd.DataFrame, hashes: pd.DataFrame, reference: dict | None, *, data_dir,
                 max_distance=NEAR_DISTANCE) -> pd.DataFrame:
    """Flag the rows of a dataset that a run trained, validated or tested on.

    Args:
        frame: The dataset's rows, shape (n, ...): ``image``, ``path``, ``patient``.
        hashes: Aligned with ``frame``: ``exact``, ``near``, ``std``
            (:func:`covidxr.images.image_hashes`).
        reference: :func:`run_reference`'s dict, or None (nothing to compare with).
        data_dir: The dataset (folder or manifest); paths and patient ids are compared only
            when its folder is the run's own.
        max_distance: Near-duplicate threshold in bits.

    Returns:
        A frame aligned with ``frame`` (same index): ``overlap`` (the kinds of
        :data:`OVERLAP_KINDS` by which the row matches the run's training or validation rows,
        joined by ``+``; blank when none), ``overlap_image`` (the first run image it matches),
        ``overlap_part`` (that image's part) and ``in_run_test`` (the row matches the run's
        own test part).
    """
    out = pd.DataFrame({"overlap": "", "overlap_image": "", "overlap_part": "", "in_run_test": False},
                       index=frame.index)
    if reference is None or frame.empty:
        return out
    rows = reference["rows"]
    same = _data_root(data_dir) == reference["root"]
    fit = rows[rows["part"].isin(FIT_PARTS)].reset_index(drop=True)
    kinds, first = _matches(frame, hashes, fit, same_folder=same, max_distance=max_distance)
    part = dict(zip(fit["image"], fit["part"]))
    out["overlap"] = ["+".join(k) for k in kinds]
    out["overlap_image"] = first
    out["overlap_part"] = [part.get(i, "") for i in first]
    test = rows[rows["part"] == "test"].reset_index(drop=True)
    out["in_run_test"] = [bool(k) for k in _matches(frame, hashes, test, same_folder=same,
                                                    max_distance=max_distance)[0]]
    return out


def overlap_summary(frame: pd.DataFrame, flags: pd.DataFrame, reference: dict | None, *, data_dir,
                    allow_overlap=False) -> dict:
    """The ``overlap`` block of an evaluation's ``metrics.json``, with its warnings raised.

    Args:
        frame: The dataset's rows (``image``), aligned with ``flags``.
        flags: :func:`flag_overlap`'s frame.
        reference: :func:`run_reference`'s dict, or None.
        data_dir: The dataset.
        allow_overlap: The overlapping rows are kept (scored) rather than left out.

    Returns:
        ``checked``, ``content`` (how content was compared), ``same_dataset`` (paths and patient
        ids compared), ``counts`` ({kind: rows}), ``n_rows`` (rows that overlap), ``n_checked``,
        ``kept``, ``in_run_test`` (rows of the run's own test part, always kept), ``images``
        ([{image, kinds, run_image, run_part}]) and ``warnings`` (what could not be checked).
    """
    hit = flags["overlap"] != ""
    block = {"checked": reference is not None, "content": None if reference is None else reference["content"],
             "same_dataset": reference is not None and _data_root(data_dir) == reference["root"],
             "counts": {k: int(flags["overlap"].str.split("+").map(lambda ks, k=k: k in ks).sum())
                        for k in OVERLAP_KINDS},
             "n_rows": int(hit.sum()), "n_checked": int(len(flags)), "kept": bool(allow_overlap),
             "in_run_test": int(flags["in_run_test"].sum()),
             "images": [{"image": str(i), "kinds": k.split("+"), "run_image": str(r), "run_part": str(p)}
                        for i, k, r, p in zip(frame.loc[hit, "image"], flags.loc[hit, "overlap"],
                                              flags.loc[hit, "overlap_image"], flags.loc[hit, "overlap_part"])],
             "warnings": list(reference["warnings"]) if reference is not None else
             ["The run has no split.csv: no overlap check was possible."]}
    if block["n_rows"]:
        counts = ", ".join(f"{k}: {n}" for k, n in block["counts"].items() if n)
        names = ", ".join(block_image["image"] for block_image in block["images"][:5])
        if allow_overlap:
            message = (f"KEEPING {block['n_rows']} of {len(flags)} rows that the run was trained or validated on "
                       f"({counts}; allow_overlap=True): these figures are inflated and are NOT an external "
                       f"validation. First: {names}")
        else:
            message = (f"{block['n_rows']} of {len(flags)} rows of the dataset are images the run was trained or "
                       f"validated on ({counts}); they are left out of the scores and figures (--allow-overlap "
                       f"keeps them). First: {names}")
        warnings.warn(message, stacklevel=3)
    return block
