"""The run folder of ``covidxr train``: its name, its creation (never over an existing folder), its
log and the per-part counts it records.
Must not train or score: it makes the folder and its ``train.log`` handlers for :mod:`covidxr.train`.
"""

from __future__ import annotations

import logging
import os
import secrets
import string
from datetime import datetime
from pathlib import Path

import pandas as pd

from .config import TrainConfig
from .images import cache_key, resolve_cache_dir
from .models import get_backbone, normalize_feature_layer

__all__ = ["check_cache_folder", "check_writable", "class_counts", "logger", "make_run_dir", "refuse_existing", "run_name",
           "setup_logging"]

#: The run's logger: its records also go to the run folder's ``train.log``.
logger = logging.getLogger("covidxr.train")


def run_name(config: TrainConfig, *, now=None) -> str:
    """``<YYYY-mm-ddTHH-MM-SS>_<task>_<backbone>[-<feature layer>]_<strategy>[_f<K>]_<4 random chars>``."""
    now = now or datetime.now()
    alphabet = string.ascii_lowercase + string.digits
    tag = "".join(secrets.choice(alphabet) for _ in range(4))  # not from the seeded RNGs
    fold = f"_f{int(config.fold)}" if config.folds else ""
    layer = f"-{config.feature_layer}" if normalize_feature_layer(config.feature_layer) else ""
    return f"{now:%Y-%m-%dT%H-%M-%S}_{config.task}_{get_backbone(config.backbone).name}{layer}_{config.strategy}{fold}_{tag}"


def refuse_existing(path: Path) -> None:
    if path.exists():
        raise FileExistsError(
            f"Expected a new run folder; this one exists and runs are never overwritten. "
            f"Received: run_dir={str(path)!r}"
        )


def check_writable(folder, *, what="runs_dir") -> Path:
    """Check, before any work, that ``folder`` (or, when it does not exist yet, the nearest folder
    above it that does) is a folder this process may create files in; return ``folder``.

    Raises:
        PermissionError: It is read-only for this user.
        NotADirectoryError: A file is in the way.
    """
    folder = Path(folder).expanduser()
    existing = next((p for p in (folder, *folder.absolute().parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise NotADirectoryError(f"Expected a folder for {what}; a file is in the way. "
                                 f"Received: {what}={str(folder)!r}")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"Expected a {what} folder this user may write to; {str(existing)!r} is read-only. "
                              f"Received: {what}={str(folder)!r}")
    return folder


def make_run_dir(config: TrainConfig) -> Path:
    """Create the run folder (never an existing one) and its ``figures/`` subfolder."""
    root = Path(config.runs_dir).expanduser()
    if config.run_name:
        path = root / config.run_name
        refuse_existing(path)
        path.mkdir(parents=True)
    else:
        root.mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            path = root / run_name(config)
            try:
                path.mkdir()
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - 20 collisions of 4 random characters
            raise FileExistsError(f"Could not make a new run folder. Received: runs_dir={str(root)!r}")
    (path / "figures").mkdir()
    return path


def setup_logging(run_dir: Path):
    """Log the run to ``RUN/train.log`` and the console (DEBUG records, such as each data warning in
    full, to ``train.log`` only); return the handlers to remove later."""
    logger.setLevel(logging.DEBUG)
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    stream = logging.StreamHandler()
    stream.setLevel(logging.INFO)
    stream.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.addHandler(stream)
    logger.propagate = False
    return [handler, stream]


def class_counts(split: pd.DataFrame, classes) -> dict:
    """Images per class, patients and split groups (when the split has a ``group`` column), per part."""
    table = {}
    for part in ("train", "val", "test"):
        sub = split[split["part"] == part]
        table[part] = {c: int((sub["label"] == c).sum()) for c in classes}
        table[part]["patients"] = int(sub["patient"].nunique())
        if "group" in sub.columns:
            table[part]["groups"] = int(sub["group"].nunique())
    return table


def check_cache_folder(config: TrainConfig, split: pd.DataFrame) -> None:
    """What building the cache would refuse, checked before the run folder is made: each image once
    in the split, and a cache folder this user may write to when the split's cache is not built yet.

    Raises:
        ValueError: An image is listed twice.
        PermissionError: The cache is to be built in a read-only folder.
    """
    key = cache_key(split, image_size=int(config.image_size), resize=config.resize, contrast=config.contrast)
    root = resolve_cache_dir(config.cache_dir)
    if not (root / key).is_dir():
        check_writable(root, what="cache_dir")


def parts_table(split: pd.DataFrame, classes) -> str:
    """The per-part summary a run prints: images per class, split groups, patients and each
    part's share of the images and of the groups (3 decimals), as a small text table."""
    counts, rows = class_counts(split, classes), []
    groups_total = max(sum(row.get("groups", 0) for row in counts.values()), 1)
    for part, row in counts.items():
        images = sum(row[c] for c in classes)
        rows.append({"part": part, "images": images, **{c: row[c] for c in classes},
                     "groups": row.get("groups", "-"), "patients": row["patients"],
                     "of images": f"{images / max(len(split), 1):.3f}",
                     "of groups": f"{row['groups'] / groups_total:.3f}" if "groups" in row else "-"})
    return pd.DataFrame(rows).to_string(index=False)


def metrics_line(metrics: dict) -> str:
    """``"val: 78 images, ROC AUC 0.612, PR AUC 0.333, log loss 0.512 | test: ..."`` (3 decimals)."""
    def fmt(value):
        return "n/a" if value is None else f"{value:.3f}"

    return " | ".join(f"{part}: {m['images']} images, ROC AUC {fmt(m['roc_auc'])}, PR AUC {fmt(m['pr_auc'])}, "
                      f"log loss {fmt(m['loss'])}" for part, m in ((p, metrics[p]) for p in ("val", "test")))
