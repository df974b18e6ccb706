"""Content hashes of every image (exact and perceptual) kept in a per-file index, and the frame
with its split groups.
Must not write outside the cache folder's ``hashes/`` index, nor hash a file whose index entry
is stale (a changed size, modification time or decoder version always hashes it anew).

* :func:`image_hashes` gives each image two hashes: ``exact``, the sha256 of the decoded grey
  pixels (:func:`~covidxr.images.decode.load_image`, with their shape), and ``near``, a 256-bit
  DCT perceptual hash (pHash: the signs of the 16×16 lowest frequencies of a 64×64 grey copy
  against their median, as 64 hex digits), plus ``std``, the grey standard deviation of that
  copy. They are kept
  in ``<cache_dir>/hashes/index.csv``, one row per file keyed by its resolved path, size,
  modification time and :data:`~covidxr.images.decode.DECODER_VERSION`, so a second load of a
  dataset decodes nothing.
* :func:`group_frame` hashes a frame and adds its ``group`` and ``hash`` columns
  (:func:`covidxr.data.groups.assign_groups`): what ``train``, ``split``, ``eda`` and ``audit``
  all read.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..atomic import write_text
from ..data import load_dataset
from ..data.groups import NEAR_DISTANCE, assign_groups
from ..data.groups import drop_mixed_patients as drop_mixed
from .cache import resolve_cache_dir
from .decode import DECODER_VERSION, load_radiograph

__all__ = ["HASH_COLUMNS", "HashIndex", "group_frame", "image_hashes", "load_grouped", "pixel_hashes"]

#: Columns of :func:`image_hashes`.
HASH_COLUMNS = ("exact", "near", "std")
_INDEX = Path("hashes") / "index.csv"
_KEY = ("path", "size", "mtime_ns", "decoder")


def pixel_hashes(grey: np.ndarray) -> tuple[str, str, float]:
    """``(exact, near, std)`` of one decoded ``uint8`` grey image of shape (H, W)."""
    from scipy.fft import dctn

    grey = np.ascontiguousarray(grey, dtype=np.uint8)
    digest = hashlib.sha256(f"{grey.shape[0]}x{grey.shape[1]}:".encode() + grey.tobytes()).hexdigest()
    small = np.asarray(Image.fromarray(grey).resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float64)
    low = dctn(small, norm="ortho")[:16, :16].ravel()
    near = np.packbits(low > np.median(low[1:])).tobytes().hex()
    return digest, near, float(small.std())


def _stamp(path) -> tuple:
    real = os.path.realpath(path)
    try:
        stat = os.stat(real)
    except OSError:
        return real, None, None
    return real, int(stat.st_size), int(stat.st_mtime_ns)


def _read_index(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        table = pd.read_csv(path, dtype={"path": str, "exact": str, "near": str}, keep_default_na=False)
        return {(r.path, int(r.size), int(r.mtime_ns), int(r.decoder)): (r.exact, r.near, float(r.std))
                for r in table.itertuples(index=False)}
    except Exception as err:  # noqa: BLE001 - a damaged index is rebuilt, never trusted
        warnings.warn(f"The image hash index {path} cannot be read ({type(err).__name__}: {err}); "
                      "hashing every image again.", stacklevel=3)
        return {}


def _write_index(path: Path, index: dict) -> None:
    rows = [dict(zip(_KEY, key), exact=v[0], near=v[1], std=v[2]) for key, v in sorted(index.items(), key=str)]
    write_text(path, pd.DataFrame(rows, columns=[*_KEY, *HASH_COLUMNS]).to_csv(index=False))


class HashIndex:
    """The per-file hash index of one cache folder (``<cache_dir>/hashes/index.csv``), read once.

    :meth:`hashes` looks images up and hashes those it lacks; :meth:`save` writes the index back
    (atomically) when it gained entries. ``covidxr train`` saves it only after its memory check,
    so that a refused run writes nothing.
    """

    def __init__(self, cache_dir=None):
        self.path = resolve_cache_dir(cache_dir) / _INDEX
        self.entries = _read_index(self.path)
        self.changed = False

    def hashes(self, frame: pd.DataFrame, *, progress=False) -> pd.DataFrame:
        """As :func:`image_hashes`, without writing the index."""
        keys = [(*_stamp(p), DECODER_VERSION) for p in frame["path"]]
        todo = [i for i, k in enumerate(keys) if k[1] is not None and k not in self.entries]
        if todo:
            from tqdm.auto import tqdm

            for i in tqdm(todo, desc="hashing images", disable=not progress, leave=False):
                try:
                    grey = load_radiograph(frame["path"].iloc[i])  # a too small image is never merged
                except (ValueError, FileNotFoundError):
                    self.entries[keys[i]] = ("", "", 0.0)
                    continue
                self.entries[keys[i]] = pixel_hashes(grey)
            self.changed = True
        values = [self.entries.get(k, ("", "", 0.0)) for k in keys]
        return pd.DataFrame(values, columns=list(HASH_COLUMNS), index=frame.index)

    def save(self) -> None:
        """Write the index when it gained entries; a folder that cannot be written gives a warning."""
        if not self.changed:
            return
        try:
            _write_index(self.path, self.entries)
            self.changed = False
        except OSError as err:  # a read-only cache folder: the hashes still serve this load
            warnings.warn(f"Could not write the image hash index {self.path} ({err}).", stacklevel=3)


def image_hashes(frame: pd.DataFrame, *, cache_dir=None, progress=False, index=None) -> pd.DataFrame:
    """Exact and near content hashes of every image of ``frame``, through the hash index.

    Args:
        frame: A frame with a ``path`` column, shape (n, ...).
        cache_dir: The cache folder that holds ``hashes/index.csv`` (see
            :func:`~covidxr.images.cache.resolve_cache_dir`).
        progress: Show a progress bar (tqdm) while hashing files not in the index.
        index: A :class:`HashIndex` to use and leave unsaved (the caller saves it); None reads the
            index of ``cache_dir`` and writes it back when it gained entries.

    Returns:
        A frame aligned with ``frame`` (same index), columns :data:`HASH_COLUMNS`; an image that
        cannot be decoded gets blank hashes and ``std`` 0 (it is never merged).
    """
    if index is not None:
        return index.hashes(frame, progress=progress)
    index = HashIndex(cache_dir)
    out = index.hashes(frame, progress=progress)
    index.save()
    return out


def group_frame(frame: pd.DataFrame, *, duplicates="merge", group_by="patient", drop_mixed_patients=False,
                cache_dir=None, max_distance=NEAR_DISTANCE, progress=False, index=None) -> pd.DataFrame:
    """``frame`` with its split groups: hashed (:func:`image_hashes`), then
    :func:`covidxr.data.groups.assign_groups`.

    Args:
        frame: One row per image, shape (n, ...), as :func:`covidxr.data.load_dataset` returns.
        duplicates, group_by, max_distance: As :func:`covidxr.data.groups.assign_groups`.
        drop_mixed_patients: First leave out the patients whose images carry more than one label
            (:func:`covidxr.data.groups.drop_mixed_patients`, with a warning).
        cache_dir, progress, index: As :func:`image_hashes`.

    Returns:
        The frame with ``group`` and ``hash`` columns, shape (m, ...) with m ≤ n.
    """
    if drop_mixed_patients:
        frame = drop_mixed(frame)
    hashes = image_hashes(frame, cache_dir=cache_dir, progress=progress, index=index)
    return assign_groups(frame, hashes, duplicates=duplicates, group_by=group_by, max_distance=max_distance)


def load_grouped(data_dir=None, *, task="covid-vs-rest", duplicates="merge", group_by="patient",
                 drop_mixed_patients=False, cache_dir=None, progress=False, index=None,
                 **load_options) -> pd.DataFrame:
    """Read a dataset (:func:`covidxr.data.load_dataset`, with ``load_options``) and add its split
    groups (:func:`group_frame`; ``index`` as :func:`image_hashes`): the frame every command splits,
    counts or trains on."""
    frame = load_dataset(data_dir, task=task, **load_options)
    return group_frame(frame, duplicates=duplicates, group_by=group_by, drop_mixed_patients=drop_mixed_patients,
                       cache_dir=cache_dir, progress=progress, index=index)
