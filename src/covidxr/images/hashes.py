"""Content hashes of every image (exact and perceptual) kept in a per-file index, and the frame
with its split groups.
Must not write outside the cache folder's ``hashes/`` folder, nor trust an index entry that is
stale or invalid (a changed size, modification time, content digest or decoder version, or
hashes that are not 64 hexadecimal digits, always hash the file anew).

* :func:`image_hashes` gives each image two hashes: ``exact``, the sha256 of the decoded grey
  pixels (:func:`~covidxr.images.decode.load_image`, with their shape), and ``near``, a 256-bit
  DCT perceptual hash (pHash: the signs of the 16×16 lowest frequencies of a 64×64 grey copy
  against their median, as 64 hex digits), plus ``std``, the grey standard deviation of that
  copy. They are kept
  in ``<cache_dir>/hashes/index.csv``, one row per file keyed by its resolved path, size,
  modification time, a fast digest of its bytes (:func:`_digest`: the first and last
  :data:`DIGEST_BYTES` bytes, so a file replaced under the same name, size and time is hashed
  again) and :data:`~covidxr.images.decode.DECODER_VERSION`, so a second load of a dataset
  decodes nothing. Files not in the index are hashed on all cores
  (:func:`covidxr.images.pool.map_chunks`, ``workers``).
* :func:`group_frame` hashes a frame and adds its ``group`` and ``hash`` columns
  (:func:`covidxr.data.groups.assign_groups`): what ``train``, ``split``, ``eda`` and ``audit``
  all read. The duplicate pairs are stored beside the index (``hashes/pairs-<key>.csv``, keyed
  by the hashes' content, the distance and :data:`PAIRS_VERSION`), so a second command does
  not search again; :func:`candidate_pairs` lists the pairs of images of different groups that
  are close enough for a person to review as one patient (``covidxr eda --review-distance``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..atomic import write_text
from ..data import load_dataset
from ..data.notices import summarise
from ..data.groups import MIN_STD, NEAR_DISTANCE, assign_groups, check_group_by, duplicate_pairs
from ..data.groups import drop_mixed_patients as drop_mixed
from ..data.same_patients import REVIEW_DISTANCE, mark_reviewed, resolve_same_patients, review_pairs
from ..data.tasks import none_if_blank
from .cache import resolve_cache_dir
from .decode import DECODER_VERSION, load_radiograph
from .pool import map_chunks

__all__ = ["HASH_COLUMNS", "HashIndex", "candidate_pairs", "group_frame", "image_hashes", "load_grouped",
           "pixel_hashes"]

#: Columns of :func:`image_hashes`.
HASH_COLUMNS = ("exact", "near", "std")
_INDEX = Path("hashes") / "index.csv"
_KEY = ("path", "size", "mtime_ns", "digest", "decoder")
_HEX64 = re.compile("[0-9a-f]{64}")
_PAIR_COLUMNS = ["a", "b", "kind", "distance"]
_KEEP_PAIRS = 64
#: Bytes read from each end of a file for its content digest, on every lookup.
DIGEST_BYTES = 8192
#: Version of the duplicate rules (part of the pairs files' key): a change to them finds the pairs anew.
PAIRS_VERSION = 1


def pixel_hashes(grey: np.ndarray) -> tuple[str, str, float]:
    """``(exact, near, std)`` of one decoded ``uint8`` grey image of shape (H, W)."""
    from scipy.fft import dctn

    grey = np.ascontiguousarray(grey, dtype=np.uint8)
    digest = hashlib.sha256(f"{grey.shape[0]}x{grey.shape[1]}:".encode() + grey.tobytes()).hexdigest()
    small = np.asarray(Image.fromarray(grey).resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float64)
    low = dctn(small, norm="ortho")[:16, :16].ravel()
    near = np.packbits(low > np.median(low[1:])).tobytes().hex()
    return digest, near, float(small.std())


def _digest(path, size) -> str:
    """A fast digest of a file's bytes: blake2b of its size and of its first and last
    :data:`DIGEST_BYTES` bytes (all of it when it is smaller), as 32 hex digits."""
    h = hashlib.blake2b(str(size).encode() + b":", digest_size=16)
    with open(path, "rb") as handle:
        h.update(handle.read(DIGEST_BYTES))
        if size > DIGEST_BYTES:
            handle.seek(max(size - DIGEST_BYTES, DIGEST_BYTES))
            h.update(handle.read(DIGEST_BYTES))
    return h.hexdigest()


def _stamp(path) -> tuple:
    """``(resolved path, size, mtime_ns, digest)``; None for the rest when the file cannot be read.
    Only a regular file is opened for its digest (a FIFO would block): others get a blank one."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
        digest = _digest(real, int(st.st_size)) if stat.S_ISREG(st.st_mode) else ""
        return real, int(st.st_size), int(st.st_mtime_ns), digest
    except OSError:
        return real, None, None, None


def _valid_entry(exact, near, std) -> bool:
    """An entry as :func:`pixel_hashes` writes it: 64 hex digits twice and a finite ``std`` ≥ 0,
    or blanks and 0 for a file that could not be decoded."""
    try:
        std = float(std)
    except (TypeError, ValueError):
        return False
    if exact == "" and near == "":
        return std == 0.0
    return bool(_HEX64.fullmatch(str(exact)) and _HEX64.fullmatch(str(near))) and np.isfinite(std) and std >= 0


def _read_index(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        table = pd.read_csv(path, dtype={"path": str, "exact": str, "near": str, "digest": str}, keep_default_na=False)
        if "digest" not in table.columns:   # an index written before entries were keyed by content
            return {}
        entries, bad = {}, 0
        for r in table.itertuples(index=False):
            key = (r.path, int(r.size), int(r.mtime_ns), r.digest, int(r.decoder))  # a bad key: the file is damaged
            if _valid_entry(r.exact, r.near, r.std):
                entries[key] = (r.exact, r.near, float(r.std))
            else:
                bad += 1
    except Exception as err:  # noqa: BLE001 - a damaged index is rebuilt, never trusted
        warnings.warn(f"The image hash index {path} cannot be read ({type(err).__name__}: {err}); "
                      "hashing every image again.", stacklevel=3)
        return {}
    if bad:
        warnings.warn(f"The image hash index {path} holds {bad} invalid entries (hashes that are not 64 hexadecimal "
                      "digits, or a bad std); hashing those images again.", stacklevel=3)
    return entries


def _write_index(path: Path, index: dict) -> None:
    rows = [dict(zip(_KEY, key), exact=v[0], near=v[1], std=v[2]) for key, v in sorted(index.items(), key=str)]
    write_text(path, pd.DataFrame(rows, columns=[*_KEY, *HASH_COLUMNS]).to_csv(index=False))


def _hash_file(path) -> tuple[str, str, float]:
    """:func:`pixel_hashes` of one file; blanks and 0 when it cannot be decoded or is too small to
    be a radiograph (a pool worker; a too small image is never merged)."""
    try:
        return pixel_hashes(load_radiograph(path))
    except (ValueError, FileNotFoundError):
        return "", "", 0.0


def _pairs_key(hashes: pd.DataFrame, max_distance) -> str:
    """The content key of a grouping: the hashes (in order), the distance and the rules' version."""
    h = hashlib.sha256(json.dumps({"rules": PAIRS_VERSION, "max_distance": int(max_distance), "min_std": MIN_STD,
                                   "n": len(hashes)}).encode())
    for column in HASH_COLUMNS:
        h.update("\n".join(hashes[column].astype(str)).encode() + b"\0")
    return h.hexdigest()[:24]


class HashIndex:
    """The per-file hash index of one cache folder (``<cache_dir>/hashes/index.csv``), read once,
    and the duplicate pairs found from it (``<cache_dir>/hashes/pairs-<key>.csv``).

    :meth:`hashes` looks images up and hashes those it lacks (on ``workers`` processes);
    :meth:`pairs` reads or finds the duplicate pairs of a set of hashes; :meth:`save` writes the
    index back (atomically) when it gained entries, and the pairs found. ``covidxr train`` saves
    it only after its memory check, so that a refused run writes nothing.
    """

    def __init__(self, cache_dir=None):
        self.path = resolve_cache_dir(cache_dir) / _INDEX
        self.entries = _read_index(self.path)
        self.changed = False
        self._new_pairs: dict = {}

    def hashes(self, frame: pd.DataFrame, *, progress=False, workers=None) -> pd.DataFrame:
        """As :func:`image_hashes`, without writing the index."""
        keys = [(*_stamp(p), DECODER_VERSION) for p in frame["path"]]
        todo = [i for i, k in enumerate(keys) if k[1] is not None and k not in self.entries]
        if todo:
            paths = [str(frame["path"].iloc[i]) for i in todo]
            results = map_chunks(_hash_file, paths, workers=workers, desc="hashing images", progress=progress)
            for i, value in zip(todo, results):
                self.entries[keys[i]] = value
            self.changed = True
        values = [self.entries.get(k, ("", "", 0.0)) for k in keys]
        return pd.DataFrame(values, columns=list(HASH_COLUMNS), index=frame.index)

    def pairs(self, hashes: pd.DataFrame, *, max_distance=NEAR_DISTANCE) -> pd.DataFrame:
        """:func:`covidxr.data.groups.duplicate_pairs` of ``hashes``, read from the file of their
        content key when an earlier command stored it (kept for :meth:`save` otherwise)."""
        key = _pairs_key(hashes, max_distance)
        path = self.path.with_name(f"pairs-{key}.csv")
        if key in self._new_pairs:
            return self._new_pairs[key].copy()
        if path.is_file():
            try:
                pairs = pd.read_csv(path, dtype={"a": "int64", "b": "int64", "kind": str, "distance": "int64"})
                if list(pairs.columns) == _PAIR_COLUMNS and ((pairs["a"] < pairs["b"]) & (pairs["b"] < len(hashes))
                                                             & (pairs["a"] >= 0)).all():
                    return pairs
            except (OSError, ValueError):
                pass
            warnings.warn(f"The duplicate pairs file {path} cannot be read; finding the pairs again.", stacklevel=3)
        pairs = duplicate_pairs(hashes, max_distance=max_distance)
        self._new_pairs[key] = pairs
        return pairs.copy()

    def save(self) -> None:
        """Write the index when it gained entries, and the pairs found; a folder that cannot be
        written gives a warning."""
        try:
            if self.changed:
                _write_index(self.path, self.entries)
                self.changed = False
            for key, pairs in list(self._new_pairs.items()):
                write_text(self.path.with_name(f"pairs-{key}.csv"), pairs.to_csv(index=False))
                del self._new_pairs[key]
            _prune_pairs(self.path.parent)
        except OSError as err:  # a read-only cache folder: the hashes still serve this load
            warnings.warn(f"Could not write the image hash index {self.path} ({err}).", stacklevel=3)


def _prune_pairs(folder: Path, *, keep=_KEEP_PAIRS) -> None:
    """Remove all but the ``keep`` most recently written pairs files."""
    files = sorted(folder.glob("pairs-*.csv"), key=lambda f: f.stat().st_mtime_ns, reverse=True)
    for old in files[keep:]:
        old.unlink(missing_ok=True)


def image_hashes(frame: pd.DataFrame, *, cache_dir=None, progress=False, index=None, workers=None) -> pd.DataFrame:
    """Exact and near content hashes of every image of ``frame``, through the hash index.

    Args:
        frame: A frame with a ``path`` column, shape (n, ...).
        cache_dir: The cache folder that holds ``hashes/index.csv`` (see
            :func:`~covidxr.images.cache.resolve_cache_dir`).
        progress: Show a progress bar (tqdm) while hashing files not in the index.
        index: A :class:`HashIndex` to use and leave unsaved (the caller saves it); None reads the
            index of ``cache_dir`` and writes it back when it gained entries.
        workers: Processes that decode and hash the files not in the index (None: all cores;
            see :func:`covidxr.images.pool.map_chunks`); the hashes do not depend on it.

    Returns:
        A frame aligned with ``frame`` (same index), columns :data:`HASH_COLUMNS`; an image that
        cannot be decoded gets blank hashes and ``std`` 0 (it is never merged).
    """
    if index is not None:
        return index.hashes(frame, progress=progress, workers=workers)
    index = HashIndex(cache_dir)
    out = index.hashes(frame, progress=progress, workers=workers)
    index.save()
    return out


def group_frame(frame: pd.DataFrame, *, duplicates="merge", group_by="patient", drop_mixed_patients=False,
                cache_dir=None, max_distance=NEAR_DISTANCE, progress=False, index=None, same_patients=None,
                workers=None) -> pd.DataFrame:
    """``frame`` with its split groups: hashed (:func:`image_hashes`), then
    :func:`covidxr.data.groups.assign_groups` on the duplicate pairs (:meth:`HashIndex.pairs`:
    stored beside the index, so a second command does not search again).

    Args:
        frame: One row per image, shape (n, ...), as :func:`covidxr.data.load_dataset` returns.
        duplicates, group_by, max_distance, same_patients: As :func:`covidxr.data.groups.assign_groups`
            (``same_patients``: a table of confirmed pairs, or None).
        drop_mixed_patients: First leave out the patients whose images carry more than one label
            (:func:`covidxr.data.groups.drop_mixed_patients`, with a warning).
        cache_dir, progress, index, workers: As :func:`image_hashes`.

    Returns:
        The frame with ``group`` and ``hash`` columns, shape (m, ...) with m ≤ n.
    """
    check_group_by(frame, group_by)  # before hashing: a refusal costs nothing
    if drop_mixed_patients:
        frame = drop_mixed(frame)
    own = index is None
    index = HashIndex(cache_dir) if own else index
    hashes = index.hashes(frame, progress=progress, workers=workers)
    pairs = index.pairs(hashes.reset_index(drop=True), max_distance=max_distance)
    if own:
        index.save()
    return assign_groups(frame, hashes, duplicates=duplicates, group_by=group_by, max_distance=max_distance,
                         same_patients=same_patients, pairs=pairs)


@summarise
def load_grouped(data_dir=None, *, task="covid-vs-rest", duplicates="merge", group_by="patient",
                 drop_mixed_patients=False, cache_dir=None, progress=False, index=None, same_patients="auto",
                 workers=None, **load_options) -> pd.DataFrame:
    """Read a dataset (:func:`covidxr.data.load_dataset`, with ``load_options``) and add its split
    groups (:func:`group_frame`; ``index`` and ``workers`` as :func:`image_hashes`): the frame every
    command splits, counts or trains on.

    ``same_patients`` (``"auto"``, ``"none"`` or a CSV file: see
    :func:`covidxr.data.same_patients.resolve_same_patients`) names confirmed same-patient pairs
    that join one group; ``attrs["same_patients"]`` records which file was used (for ``config.json``).
    """
    frame = load_dataset(data_dir, task=task, **load_options)
    pairs, record = resolve_same_patients(same_patients, data_dir=data_dir, layout=load_options.get("layout", "auto"),
                                          patient_col=none_if_blank(load_options.get("patient_col", "patient")),
                                          patients=frame["patient"])
    out = group_frame(frame, duplicates=duplicates, group_by=group_by, drop_mixed_patients=drop_mixed_patients,
                      cache_dir=cache_dir, progress=progress, index=index, same_patients=pairs, workers=workers)
    out.attrs["same_patients"] = {**record, **((out.attrs.get("duplicates") or {}).get("same_patients") or {})}
    return out


def candidate_pairs(frame: pd.DataFrame, *, max_distance=REVIEW_DISTANCE, cache_dir=None, index=None) -> pd.DataFrame:
    """Candidate same-patient pairs of a grouped frame (:func:`load_grouped`'s): its images hashed
    through the index (:func:`image_hashes`), then :func:`covidxr.data.same_patients.review_pairs`,
    with the ``review`` decision of the review file beside the same-patients file in use
    (:func:`covidxr.data.same_patients.mark_reviewed`)."""
    hashes = image_hashes(frame, cache_dir=cache_dir, index=index)
    return mark_reviewed(review_pairs(frame, hashes, max_distance=max_distance), frame.attrs.get("same_patients"))
