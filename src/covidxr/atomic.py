"""Atomic file writes: a reader, or a process killed at any moment, never sees half a file.
Must not import Keras or any other covidxr module: every layer above writes through it.

Every writer here writes under a temporary name in the target's folder, flushes the bytes to
disk, renames the file into place with :func:`os.replace` (atomic on POSIX and Windows
within one file system) and flushes the folder (:func:`fsync_folder`), so that the rename too
survives a power cut. Every JSON file is strict (:func:`json_text`: an undefined figure, NaN or
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
import zipfile
import zlib
from pathlib import Path

import numpy as np

__all__ = ["atomic_path", "fault_point", "fsync_folder", "json_text", "load_arrays", "new_folder", "path_error",
           "plain_json", "read_json_object", "remove_stale", "save_arrays", "write_json", "write_text"]

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


def fsync_folder(folder) -> None:
    """Flush a folder's entries (a rename, a new or removed file) to disk, where the platform allows
    it (POSIX; Windows cannot open a folder and needs no such step)."""
    try:
        handle = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # Windows, or a folder this user may not open: the rename stands, unflushed
        return
    try:
        os.fsync(handle)
    except OSError:  # some file systems refuse fsync on a folder
        pass
    finally:
        os.close(handle)


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
        fsync_folder(path.parent)  # the rename itself reaches the disk: a power cut keeps the new file
    except OSError as err:  # a full disk or a file-size limit names no file: name the one being written
        named = path_error(err, path)
        if named is None:
            raise
        raise named from err
    finally:
        if tmp.exists():
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink()


def path_error(err: BaseException, path) -> OSError | None:
    """The operating-system error ``err`` naming ``path``, when it names no file (a write refused
    with ``[Errno 27] File too large`` or ``[Errno 28] No space left on device``); else None."""
    if isinstance(err, OSError) and err.errno is not None and getattr(err, "filename", None) is None:
        return OSError(err.errno, err.strerror or os.strerror(err.errno), str(path))
    return None


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


def read_json_object(path, *, what="a JSON object") -> dict:
    """The JSON object (a dict) in the file ``path``; every failure names the file and the cause.

    Args:
        path: A JSON file (a run's ``config.json``, ...).
        what: What the file should hold, for the messages.

    Raises:
        FileNotFoundError: No such file.
        ValueError: Not UTF-8 JSON (damaged or cut short: the message gives the decoder's cause,
            e.g. ``Unterminated string ...``), or JSON that is not an object (a list, a number).
    """
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:  # json.JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"Expected {path.name} to hold {what}; it is not valid JSON ({err}; damaged, cut short "
                         f"or edited by hand?). Received: path={str(path)!r}") from err
    if not isinstance(value, dict):
        raise ValueError(f"Expected {path.name} to hold {what}; it holds a JSON {_json_kind(value)}. "
                         f"Received: path={str(path)!r}")
    return value


def _json_kind(value) -> str:
    kinds = {list: "list", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


def save_arrays(path, arrays) -> Path:
    """Save a list of arrays (in order) to an ``.npz`` file atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, *[np.asarray(a) for a in arrays])
    return Path(path)


def load_arrays(path) -> list[np.ndarray]:
    """The arrays :func:`save_arrays` wrote, in order.

    Raises:
        FileNotFoundError: No such file.
        ValueError: The file is damaged (not a zip archive, cut short, a damaged member); the
            message names it and the cause.
    """
    try:
        if Path(path).is_file() and not zipfile.is_zipfile(path):  # else NumPy takes it for a pickle
            raise zipfile.BadZipFile("File is not a zip file")
        with np.load(path, allow_pickle=False) as data:
            return [data[f"arr_{i}"] for i in range(len(data.files))]
    except (zipfile.BadZipFile, EOFError, KeyError, ValueError, zlib.error) as err:
        raise ValueError(f"Expected {Path(path).name} to be a NumPy archive of arrays that covidxr wrote; it is "
                         f"damaged ({type(err).__name__}: {err}). Received: path={str(path)!r}") from err



def remove_stale(folder) -> list[Path]:
    """Delete the temporary files (``.NAME.tmp-PID-XXXXXX.SUFFIX``) that a killed process left
    in ``folder`` and its subfolders; return them. Call it only when no writer is running."""
    removed = []
    for path in Path(folder).rglob(".*.tmp-*"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
