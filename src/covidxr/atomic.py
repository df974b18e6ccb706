"""Atomic file writes: a reader, or a process killed at any moment, never sees half a file.
Must not import Keras or any other covidxr module: every layer above writes through it.

Every writer here writes under a temporary name in the target's folder, flushes the bytes to
disk and renames the file into place with :func:`os.replace` (atomic on POSIX and Windows
within one file system). Every JSON file is strict (:func:`json_text`: an undefined figure, NaN or
infinite, is ``null``; ``allow_nan=False``). The run folder (:mod:`covidxr.train`), the training checkpoint
(:mod:`covidxr.training.checkpoint`), split files, grid records and figures all go through it.
The one exception: TensorBoard's event files (``RUN/tensorboard/``,
:mod:`covidxr.training.tensorboard`) are appended to by design, as TensorBoard reads them while
they grow; they hold checkpointed epochs only and a resumed run writes no step twice.
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

__all__ = ["atomic_path", "fault_point", "json_text", "load_arrays", "new_folder", "plain_json", "remove_stale",
           "save_arrays", "write_json", "write_text"]

#: Environment variable of the kill-and-resume tests: a fault point name (see :func:`fault_point`).
FAULT_ENV = "COVIDXR_FAULT"
#: With it, a fault point fires only while the file it names exists, and removes it first: a fault
#: that fires once in a pool of reused processes (the Ray grid tests), so that a retry does not die again.
FAULT_ONCE_ENV = "COVIDXR_FAULT_ONCE"


_FAULT_COUNTS: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Kill this process with SIGKILL at a named point when ``$COVIDXR_FAULT`` asks for it.

    ``COVIDXR_FAULT=NAME`` kills at the first time the point is reached, ``NAME@K`` at the
    K-th. Only the interruption tests set the variable; it lets them stop a training
    subprocess at an exact moment (between writing a temporary file and renaming it, say).
    With ``$COVIDXR_FAULT_ONCE=FILE`` the point counts and fires only while ``FILE`` exists, and
    the process that fires removes it first (one fault in a pool of processes).
    """
    wanted = os.environ.get(FAULT_ENV)
    if not wanted or not wanted.startswith(name):
        return
    point, _, count = wanted.partition("@")
    if point != name:
        return
    marker = os.environ.get(FAULT_ONCE_ENV)
    if marker and not os.path.exists(marker):
        return
    _FAULT_COUNTS[name] = _FAULT_COUNTS.get(name, 0) + 1
    if _FAULT_COUNTS[name] == int(count or 1):
        if marker:
            try:
                os.remove(marker)
            except FileNotFoundError:  # another process fired it
                return
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


@contextlib.contextmanager
def new_folder(out, *, what="folder", received=""):
    """Yield a new temporary folder beside ``out`` (``.<name>.partial-<pid>``); rename it to ``out`` when
    the block succeeds, never over a folder that appeared meanwhile (FileExistsError: ``Expected a new
    <what>, but ... appeared meanwhile. Received: <received>``). On an exception it is removed."""
    out = Path(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=False)
    try:
        yield tmp
        if out.exists():
            raise FileExistsError(f"Expected a new {what}, but {str(out)!r} appeared meanwhile. Received: {received}")
        os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _plain_key(key):
    if isinstance(key, np.generic):
        key = key.item()
    return key if key is None or isinstance(key, (str, int, float, bool)) else str(key)


def plain_json(value):
    """``value`` made fit for strict JSON: every float that is not finite (NaN, infinity: an
    undefined figure) becomes None, NumPy scalars and arrays become Python numbers and lists,
    tuples become lists; dicts and lists are converted all the way down. Other values are kept.

    Example::

        plain_json({"auc": np.float32("nan"), "cm": np.eye(2, dtype=int)})
        # {'auc': None, 'cm': [[1, 0], [0, 1]]}
    """
    if isinstance(value, dict):
        return {_plain_key(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain_json(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def json_text(value, *, indent=2) -> str:
    """``value`` as strict JSON text (:func:`plain_json`, then ``allow_nan=False``; other
    non-JSON values, a ``Path`` say, via ``str``), without a final newline."""
    return json.dumps(plain_json(value), indent=indent, allow_nan=False, default=str)


def write_json(path, value, *, indent=2) -> Path:
    """Write ``value`` as indented, strict JSON (:func:`json_text`) to ``path`` atomically."""
    return write_text(path, json_text(value, indent=indent) + "\n")


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
