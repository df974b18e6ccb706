"""Atomic file writes: a reader, or a process killed at any moment, never sees half a file.
Must not import Keras or any other covidxr module: every layer above writes through it.

Every writer here writes under a temporary name in the target's folder, flushes the bytes to
disk and renames the file into place with :func:`os.replace` (atomic on POSIX and Windows
within one file system). The run folder (:mod:`covidxr.train`), the training checkpoint
(:mod:`covidxr.training.checkpoint`), split files, grid records and figures all go through it.
The one exception: TensorBoard's event files (``RUN/tensorboard/``,
:mod:`covidxr.training.tensorboard`) are appended to by design, as TensorBoard reads them while
they grow; they hold committed epochs only and a resumed run writes no step twice.
No Keras import here: the data and plotting modules use it too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import uuid
from pathlib import Path

import numpy as np

__all__ = ["atomic_path", "fault_point", "load_arrays", "remove_stale", "save_arrays", "write_json", "write_text"]

#: Environment variable of the kill-and-resume tests: a fault point name (see :func:`fault_point`).
FAULT_ENV = "COVIDXR_FAULT"


_FAULT_COUNTS: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Kill this process with SIGKILL at a named point when ``$COVIDXR_FAULT`` asks for it.

    ``COVIDXR_FAULT=NAME`` kills at the first time the point is reached, ``NAME@K`` at the
    K-th. Only the interruption tests set the variable; it lets them stop a training
    subprocess at an exact moment (between writing a temporary file and renaming it, say).
    """
    wanted = os.environ.get(FAULT_ENV)
    if not wanted or not wanted.startswith(name):
        return
    point, _, count = wanted.partition("@")
    if point != name:
        return
    _FAULT_COUNTS[name] = _FAULT_COUNTS.get(name, 0) + 1
    if _FAULT_COUNTS[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block succeeds.

    The temporary name keeps the suffix (Keras and NumPy choose the format from it) and
    starts with a dot. On an exception it is removed and ``path`` is left as it was.

    Example::

        with atomic_path(run / "model.keras") as tmp:
            model.save(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}{path.suffix}")
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb+") as handle:  # the bytes reach the disk before the rename
                os.fsync(handle.fileno())
        fault_point(f"before-rename:{path.name}")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink()


def write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path, value) -> Path:
    """Write ``value`` as indented JSON to ``path`` atomically (non-JSON values via ``str``)."""
    return write_text(path, json.dumps(value, indent=2, default=str) + "\n")


def save_arrays(path, arrays) -> Path:
    """Save a list of arrays (in order) to an ``.npz`` file atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, *[np.asarray(a) for a in arrays])
    return Path(path)


def load_arrays(path) -> list[np.ndarray]:
    """The arrays :func:`save_arrays` wrote, in order."""
    with np.load(path, allow_pickle=False) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]



def remove_stale(folder) -> list[Path]:
    """Delete the temporary files (``.NAME.tmp-PID-XXXXXX.SUFFIX``) that a killed process left
    in ``folder`` and its subfolders; return them. Call it only when no writer is running."""
    removed = []
    for path in Path(folder).rglob(".*.tmp-*"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
