"""What changed in a dataset since an earlier image cache of the same settings was built.
Must not write files: it reads the ``cache.json`` of earlier caches and warns.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

__all__ = ["META", "SAME_DATASET", "describe_changes", "warn_if_dataset_changed"]

#: The file that describes a cache (:mod:`covidxr.images.cache`).
META = "cache.json"
#: A previous cache of the same settings whose images overlap this much (Jaccard index)
#: is taken for an earlier build of the same dataset when telling what changed.
SAME_DATASET = 0.9


def describe_changes(before, now) -> str:
    """What changed between two source lists (``[image, size, mtime_ns]``)."""
    old = {f[0]: tuple(f[1:]) for f in before}
    new = {f[0]: tuple(f[1:]) for f in now}
    modified = sorted(k for k in old.keys() & new.keys() if old[k] != new[k])
    added, removed = sorted(new.keys() - old.keys()), sorted(old.keys() - new.keys())
    parts = [f"{len(names)} {what}" + (f" ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})" if names else "")
             for what, names in (("modified", modified), ("added", added), ("removed", removed))]
    return ", ".join(parts)


def warn_if_dataset_changed(root: Path, files, *, size, resize, contrast):
    """Warn when an earlier cache of these settings was built from an older state of this
    dataset (the same images, give or take a few, some with other sizes or times)."""
    if not root.is_dir():
        return
    prefix = f"{size}-{resize}-{contrast or 'none'}-"
    images_now = {f[0] for f in files}
    best = None
    for folder in root.iterdir():
        if not folder.name.startswith(prefix) or not (folder / META).is_file():
            continue
        try:
            meta = json.loads((folder / META).read_text())
            before = [list(f) for f in meta["files"]]
            images_before = {f[0] for f in before}
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            continue
        overlap = len(images_now & images_before) / max(len(images_now | images_before), 1)
        if overlap >= SAME_DATASET and (best is None or overlap > best[0]):
            best = (overlap, folder, before)
    if best is not None and best[2] != files:
        warnings.warn(f"The source files changed since cache {best[1].name} was built "
                      f"({describe_changes(best[2], files)}); building a new cache "
                      f"(remove the old one with clear_caches).", stacklevel=3)
