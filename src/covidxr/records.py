"""A folder that vouches for its files: ``record.json`` holds the sha256, size and row count of every
file a later command trusts, and every reader checks them. Must not import Keras or any covidxr
module but :mod:`covidxr.atomic`; it knows files and bytes, never what a run or an evaluation means.

``record.json`` is written after the files it lists, atomically. A file written through
:func:`recorded_path` is first listed as *pending* (its new digest, before the rename), then renamed
into place, then listed as written; a process killed between those steps leaves a file that matches
either its old or its pending digest, so a kill at any moment leaves a folder that checks. Any other
change (a file cut short, rows appended, a value edited) is a :class:`RecordMismatch`, one line
naming the file. A folder without ``record.json`` (made before covidxr kept records) reads as before,
with a warning that its files are unchecked.

Example::

    write_recorded_json(run / "config.json", config, folder=run)
    check_record(run, ["config.json"])  # raises RecordMismatch if config.json was changed since
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import warnings
from datetime import datetime, timezone
from pathlib import Path

from .atomic import atomic_path, json_text, write_json, write_text

__all__ = ["RECORD_FILE", "RecordMismatch", "check_record", "file_entry", "read_record", "record_files",
           "recorded_path", "write_recorded_json", "write_recorded_text"]

#: The record of a folder's files.
RECORD_FILE = "record.json"
#: Version of the record's layout.
RECORD_FORMAT = 1

_WARNED: set[str] = set()


class RecordMismatch(ValueError):
    """A file differs from what its folder's ``record.json`` says was written (or is gone)."""


def file_entry(path) -> dict:
    """``{"sha256", "bytes", "rows"}`` of a file; ``rows`` counts a CSV file's records (header
    excluded, quoted line breaks understood) and is None for other files."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    rows = None
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8", errors="replace") as handle:
            rows = max(sum(1 for _ in csv.reader(handle)) - 1, 0)
    return {"sha256": digest.hexdigest(), "bytes": path.stat().st_size, "rows": rows}


def read_record(folder) -> dict | None:
    """A folder's record (``files`` and ``pending``: name → entry), or None when it has none.

    Raises:
        RecordMismatch: ``record.json`` is there but not a record (damaged).
    """
    path = Path(folder) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise RecordMismatch(f"Expected {RECORD_FILE} to be the folder's record of its files; it cannot be read "
                             f"({err}). Received: path={str(path)!r}") from err
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
        raise RecordMismatch(f"Expected {RECORD_FILE} to hold a 'files' table. Received: path={str(path)!r}")
    record.setdefault("pending", {})
    return record


def _note(folder: Path, name: str, entry: dict, *, pending: bool) -> None:
    record = read_record(folder) or {"format": RECORD_FORMAT, "files": {}, "pending": {}}
    if pending:
        record["pending"][name] = entry
    else:
        record["files"][name] = entry
        record["pending"].pop(name, None)
    record["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json(folder / RECORD_FILE, record)


@contextlib.contextmanager
def recorded_path(path, *, folder=None):
    """:func:`covidxr.atomic.atomic_path` that also records the file in ``folder``'s ``record.json``
    (default: the file's own folder): pending before the rename, written after it.

    Example::

        with recorded_path(run / "model.keras", folder=run) as tmp:
            model.save(tmp)
    """
    path = Path(path)
    folder = Path(folder) if folder is not None else path.parent
    name = path.relative_to(folder).as_posix()
    with atomic_path(path) as tmp:
        yield tmp
        entry = file_entry(tmp)
        _note(folder, name, entry, pending=True)
    _note(folder, name, entry, pending=False)


def write_recorded_text(path, text: str, *, folder=None) -> Path:
    """Write ``text`` (UTF-8) atomically and record it (:func:`recorded_path`)."""
    with recorded_path(path, folder=folder) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_recorded_json(path, value, *, folder=None) -> Path:
    """Write ``value`` as strict JSON (:func:`covidxr.atomic.json_text`) atomically and record it."""
    return write_recorded_text(path, json_text(value) + "\n", folder=folder)


def record_files(folder, names) -> Path:
    """Write ``folder``'s ``record.json`` listing ``names`` (paths relative to ``folder``) as they are
    now: for a folder written whole and then renamed into place (an evaluation)."""
    folder = Path(folder)
    files = {name: file_entry(folder / name) for name in names}
    return write_text(folder / RECORD_FILE, json_text({"format": RECORD_FORMAT, "files": files, "pending": {},
                                                       "updated": datetime.now(timezone.utc).isoformat(
                                                           timespec="seconds")}) + "\n")


def _mismatch(path: Path, found: dict, wanted: dict) -> RecordMismatch:
    rows = "" if wanted.get("rows") is None else f"{wanted['rows']} rows, "
    now = "" if found.get("rows") is None else f"{found['rows']} rows, "
    return RecordMismatch(
        f"Expected {path.name} as covidxr wrote it ({rows}{wanted.get('bytes')} bytes, sha256 "
        f"{str(wanted.get('sha256'))[:12]}, recorded in {RECORD_FILE}); it was changed or damaged since "
        f"({now}{found['bytes']} bytes, sha256 {found['sha256'][:12]}): restore it or make it again. "
        f"Received: path={str(path)!r}")


def check_record(folder, names=None, *, what="folder") -> dict | None:
    """Check files of ``folder`` against its ``record.json``.

    Args:
        folder: A run or evaluation folder.
        names: The files to check (relative paths); those the record does not list yet (not written
            so far) are skipped. None: every file it lists.
        what: The folder's kind in the warning for a folder without a record.

    Returns:
        The record, or None for a folder without one (a warning, once per folder and process, says
        that its files are read unchecked).

    Raises:
        RecordMismatch: A file listed as written is missing, or a file differs from both its written and
            its pending entry.
    """
    folder = Path(folder)
    record = read_record(folder)
    if record is None:
        if str(folder.resolve()) not in _WARNED:
            _WARNED.add(str(folder.resolve()))
            warnings.warn(f"{folder} has no {RECORD_FILE} (a {what} made before covidxr recorded its files): "
                          "its files are read unchecked", UserWarning, stacklevel=3)
        return None
    files, pending = record["files"], record["pending"]
    for name in (names if names is not None else sorted(set(files) | set(pending))):
        accepted = [e for e in (files.get(name), pending.get(name)) if isinstance(e, dict)]
        if not accepted:
            continue
        path = folder / name
        if not path.is_file() and name not in files:  # only pending: killed before its first rename
            continue
        if not path.is_file():
            raise RecordMismatch(f"Expected {name} in the {what}: its {RECORD_FILE} lists it, but it is gone "
                                 f"(removed or moved). Received: path={str(path)!r}")
        found = file_entry(path)
        if found["sha256"] not in {e.get("sha256") for e in accepted}:
            raise _mismatch(path, found, accepted[0])
    return record
