"""The frozen-feature store: raw pooled backbone features of cached images, computed once.
Must not import Keras nor compute features itself: it keys, stores, checks and hands back
float32 rows; the caller's ``compute`` function runs the backbone (:mod:`covidxr.training.frozen`).

With the backbone frozen and no augmentation (phase 1), an image's pooled backbone features are a
function of its preprocessed pixels and of the backbone alone, so every strategy and fold of a
grid, and any later run with the same key, can share them. The store lives beside the image
cache (:func:`~covidxr.images.cache.resolve_cache_dir`)::

    <cache_dir>/features/<key>/store.json        the key's parts (backbone, weights checksum, ...)
    <cache_dir>/features/<key>/part-<16 hex>.npz  ids (n,), features (n, F) float32, checksum
    <cache_dir>/features/<key>/.lock             advisory lock of the writers (fcntl)

The **key** (:func:`feature_key`) hashes every part the features depend on (backbone, weights
checksum or seed, feature layer, pooling, image size, resize, contrast, decoder version, dtype
policy, Keras backend and version) and :data:`FEATURE_STORE_FORMAT`. Within a key each image is
identified by a digest of its cached pixels (:func:`image_ids`), so a run with another split,
fold or subset of the same images finds the rows it needs in whichever part file holds them.

**Integrity**, as for the image cache: each part file carries the sha256 of its ids and
features and is checked when read; a damaged one (truncated, unreadable, checksum mismatch) is
removed with a warning and its rows computed again. Part files are written under a temporary
name and renamed into place (:func:`covidxr.atomic.atomic_path`), so two processes computing the
same key at once never leave a half file: the rename is atomic and both write the same name
(a digest of the ids) with the same rows. Writers also take an ``fcntl`` lock on the key's
``.lock`` file, so the second waits and reads what the first computed instead of computing it
again; where locks are unavailable (no ``fcntl``, a file system that refuses them) the store
works without one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, write_json
from ..locks import acquire
from .cache import resolve_cache_dir

__all__ = ["FEATURES_DIR", "FEATURE_STORE_FORMAT", "STALE_SECONDS", "FeatureStore", "clear_feature_store", "feature_key",
           "image_ids"]

logger = logging.getLogger("covidxr.images")

#: Version of the store's layout and of the feature path; part of every key (bump it when the
#: features of the same key could change: a new preprocessing layer, another pooling rule).
FEATURE_STORE_FORMAT = 1
#: The store's folder under the cache folder.
FEATURES_DIR = "features"
#: A writer's temporary file older than this (seconds) was left by a killed process.
STALE_SECONDS = 600
_PART_GLOB = "part-*.npz"
_RECORD = "store.json"


def feature_key(parts: dict) -> str:
    """The store key of ``parts`` (a JSON-able dict of everything the features depend on).

    Returns:
        ``"<backbone>-<image_size>-<16 hex digits>"``; the digits change when any part, or
        :data:`FEATURE_STORE_FORMAT`, changes.

    Raises:
        ValueError: ``parts`` is not a dict with ``backbone`` and ``image_size``.
    """
    if not isinstance(parts, dict) or not {"backbone", "image_size"} <= set(parts):
        raise ValueError("Expected the feature key's parts as a dict with at least 'backbone' and 'image_size'. "
                         f"Received: parts={parts!r}")
    payload = json.dumps({"format": FEATURE_STORE_FORMAT, **parts}, sort_keys=True, default=str)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return f"{parts['backbone']}-{parts['image_size']}-{digest}"


def image_ids(images) -> np.ndarray:
    """One id per image: the 128-bit BLAKE2b digest (hex) of its shape and pixels.

    Args:
        images: Array (n, ...) of cached images (e.g. ``ImageCache.images``).
    """
    array = np.asarray(images)
    ids = []
    for image in array:
        digest = hashlib.blake2b(digest_size=16)
        digest.update(repr((image.shape, image.dtype.str)).encode())
        digest.update(np.ascontiguousarray(image).tobytes())
        ids.append(digest.hexdigest())
    return np.asarray(ids, dtype="<U32")


def clear_feature_store(cache_dir=None) -> list[Path]:
    """Remove the frozen-feature store of ``cache_dir`` (every key: the features are computed again
    when next needed); the removed folder, or nothing when there is none."""
    import shutil

    folder = resolve_cache_dir(cache_dir) / FEATURES_DIR
    if not folder.is_dir():
        return []
    shutil.rmtree(folder)
    return [folder]


def _checksum(ids: np.ndarray, features: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(ids).tobytes())
    digest.update(repr(features.shape).encode())
    digest.update(np.ascontiguousarray(features).tobytes())
    return digest.hexdigest()


def _read_part(path: Path, *, wanted: set, width=None):
    """``(ids, features)`` of a part file after its checks, None when it holds no ``wanted`` id;
    ValueError when it is damaged."""
    try:
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as data:
            ids = data["ids"]
            if not wanted.intersection(ids.tolist()):
                return None
            features, checksum = data["features"], str(data["checksum"])
    except FileNotFoundError:  # removed by another process since it was listed
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"unreadable: {type(err).__name__}: {err}") from err
    if features.ndim != 2 or features.dtype != np.float32 or ids.shape != (len(features),):
        raise ValueError(f"ids {ids.shape} and features {features.shape} {features.dtype} do not fit")
    if width is not None and features.shape[1] != width:
        raise ValueError(f"features of width {features.shape[1]}, the store's are {width} wide")
    if _checksum(ids, features) != checksum:
        raise ValueError("its ids and features do not match the sha256 checksum written with them")
    return ids, features


class FeatureStore:
    """The stored features of one key: :meth:`features` hands back rows, computing the missing.

    Args:
        parts: What the features depend on (see :func:`feature_key`); written to ``store.json``.
        cache_dir: Cache folder (see :func:`~covidxr.images.cache.resolve_cache_dir`).
        lock: Take the key's ``fcntl`` lock while computing (False only for tests of the
            atomic writes alone).

    Attributes:
        key: :func:`feature_key` of ``parts``.
        path: ``<cache_dir>/features/<key>``.
    """

    def __init__(self, parts: dict, *, cache_dir=None, lock=True):
        self.parts = dict(parts)
        self.key = feature_key(self.parts)
        self.path = resolve_cache_dir(cache_dir) / FEATURES_DIR / self.key
        self.lock = bool(lock)

    def __repr__(self) -> str:
        return f"FeatureStore(key={self.key!r}, path='{self.path}')"

    def _scan(self, wanted: set) -> tuple[dict, list]:
        """``({id: feature row}, [(damaged file, reason)])`` over the part files holding a wanted id."""
        found, damaged, width = {}, [], None
        for path in sorted(self.path.glob(_PART_GLOB)) if self.path.is_dir() else []:
            try:
                read = _read_part(path, wanted=wanted, width=width)
            except ValueError as err:
                damaged.append((path, str(err)))
                continue
            if read is None:
                continue
            ids, features = read
            width = features.shape[1]
            for i, image_id in enumerate(ids.tolist()):
                if image_id in wanted:
                    found.setdefault(image_id, features[i])
        return found, damaged

    @contextlib.contextmanager
    def _locked(self):
        """The key's exclusive lock while the block runs (:func:`covidxr.locks.acquire`: a message while
        waiting, a dead holder's lock taken over), where the platform and file system allow."""
        if not self.lock:
            yield
            return
        with acquire(self.path / ".lock", what=f"feature store {self.key}", wait=True):
            yield

    def _remove_stale(self) -> None:
        """Remove the temporary files of writers killed mid-write (a write takes well under
        :data:`STALE_SECONDS`; a running one's file is younger)."""
        for path in self.path.glob(".part-*.tmp-*"):
            try:
                if time.time() - path.stat().st_mtime > STALE_SECONDS:
                    path.unlink()
            except OSError:  # gone already
                pass

    def _write(self, ids: np.ndarray, features: np.ndarray) -> Path:
        name = f"part-{hashlib.sha256(' '.join(sorted(ids.tolist())).encode()).hexdigest()[:16]}.npz"
        with atomic_path(self.path / name) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, ids=ids, features=features, checksum=np.asarray(_checksum(ids, features)))
        return self.path / name

    def features(self, ids, compute) -> tuple[np.ndarray, dict]:
        """The rows of ``ids``, in order, read from the store; the missing ones computed once.

        Args:
            ids: Image ids (:func:`image_ids`), one per wanted row (repeats allowed).
            compute: ``compute(positions) -> (k, F)`` features of the images at those
                positions of ``ids`` (the first position of each missing id); called at most once.

        Returns:
            ``(features (n, F) float32, info)``; info has ``key``, ``path``, ``reused`` and
            ``computed`` (distinct ids read and computed), ``damaged`` (files rebuilt) and ``seconds``.

        Raises:
            ValueError: ``compute`` returned an array of another shape than (k, F).
        """
        start = time.perf_counter()
        ids = np.asarray([str(i) for i in ids], dtype=str)
        wanted = set(ids.tolist())
        found, damaged = self._scan(wanted)
        computed, rebuilt = 0, []
        if len(found) < len(wanted) or damaged:
            self.path.mkdir(parents=True, exist_ok=True)
            with self._locked():
                found, damaged = self._scan(wanted)  # another process may have written them meanwhile
                self._remove_stale()
                for path, reason in damaged:
                    warnings.warn(f"Rebuilding a damaged feature store file: {path} ({reason})", stacklevel=2)
                    path.unlink(missing_ok=True)
                    rebuilt.append(str(path))
                missing = sorted({image_id: i for i, image_id in reversed(list(enumerate(ids.tolist())))
                                  if image_id not in found}.values())
                if missing:
                    rows = np.asarray(compute(list(missing)), dtype=np.float32)
                    if rows.ndim != 2 or len(rows) != len(missing):
                        raise ValueError(f"Expected compute to return one feature row per missing image, shape "
                                         f"({len(missing)}, F). Received: shape={rows.shape}")
                    self._write(ids[missing], rows)
                    found.update(zip(ids[missing].tolist(), rows))
                    computed = len(missing)
                if not (self.path / _RECORD).is_file():
                    write_json(self.path / _RECORD, {"format": FEATURE_STORE_FORMAT, "key": self.key,
                                                     "parts": self.parts})
        out = np.stack([found[i] for i in ids.tolist()]) if len(ids) else np.zeros((0, 0), np.float32)
        info = {"key": self.key, "path": str(self.path), "reused": len(wanted) - computed, "computed": computed,
                "damaged": rebuilt, "seconds": round(time.perf_counter() - start, 3)}
        return out, info
