"""Locks that say who holds them: a run folder, a grid combination, a cache build or a feature store
is held by one process at a time. Must not import Keras or any other covidxr module:
every layer above (images, training, the grid) takes its locks here.

A lock is an ``fcntl.flock`` on a small file that holds the holder's PID, host, start time and what it
holds. The kernel frees the lock when its holder dies, so a killed process never blocks anyone; a lock
whose file names a dead process on this host and is still held (a forked child inherited it) is
*stale* and is taken over. A second process either gets :class:`LockHeld` at once (one line naming
the holder) or, with ``wait=True``, waits, saying so after :data:`NOTICE_SECONDS` and every
:data:`REPEAT_SECONDS` after that. Where ``fcntl`` is missing or the file system refuses locks, the
block runs unlocked (the atomic writes alone keep the files sound).

Example::

    with hold(run_dir / LOCK_NAME, what=f"run folder {run_dir}"):
        ...  # no other process writes this run meanwhile
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["LOCK_NAME", "NOTICE_SECONDS", "Lock", "LockHeld", "acquire", "hold", "holder", "is_held"]

#: The lock file of a run folder (and of a grid folder).
LOCK_NAME = ".lock"
#: Seconds of waiting before the first message.
NOTICE_SECONDS = 3.0
#: Seconds between later messages while still waiting.
REPEAT_SECONDS = 60.0
#: Seconds between two tries while waiting.
POLL_SECONDS = 0.2

logger = logging.getLogger("covidxr.locks")


class LockHeld(BlockingIOError):
    """Another live process holds the lock; ``holder`` is its record (pid, host, since, what)."""

    def __init__(self, message, holder=None):
        super().__init__(message)
        self.holder = holder or {}


def holder(path) -> dict | None:
    """The record in a lock file (``pid``, ``host``, ``since``, ``what``), or None (no file, empty)."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8") or "null")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _describe(record: dict | None) -> str:
    if not record:
        return "another process"
    stopped = " (stopped)" if _state(record) == "T" else ""
    return (f"PID {record.get('pid')}{stopped} on {record.get('host')} since {record.get('since')}"
            f" ({record.get('what')})")


def _state(record: dict) -> str | None:
    """The process state letter of a holder on this host (Linux ``/proc``), or None."""
    if record.get("host") != socket.gethostname():
        return None
    try:
        text = Path(f"/proc/{int(record['pid'])}/stat").read_text()
        return text.rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def _dead(record: dict | None) -> bool:
    """The holder named in the file ran on this host and is no longer alive."""
    if not record or record.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, KeyError, TypeError, OverflowError):
        return False
    return _state(record) == "Z"  # a zombie holds nothing


class Lock:
    """A held lock (from :func:`acquire`); :meth:`release` (or leaving its ``with`` block) frees it."""

    def __init__(self, path: Path, handle: int | None):
        self.path, self._handle = path, handle

    def release(self) -> None:
        if self._handle is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # while still held: a waiter then locks a new file, never a removed one
        os.close(self._handle)  # closing frees the lock
        self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _try_lock(path: Path, what: str):
    """An open handle holding the lock on ``path``; None when another process holds it; ``False``
    when locks are not available here."""
    try:
        import fcntl
    except ImportError:
        return False
    handle = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        return None
    except OSError as err:  # a file system without locks
        os.close(handle)
        logger.debug("no lock on %s (%s)", path, err)
        return False
    try:
        same = os.stat(path).st_ino == os.fstat(handle).st_ino
    except FileNotFoundError:
        same = False
    if not same:  # the file was released and removed between open and lock: try the new one
        os.close(handle)
        return None
    record = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
              "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    os.ftruncate(handle, 0)
    os.write(handle, json.dumps(record).encode())
    os.fsync(handle)
    return handle


def _take_over(path: Path, record: dict) -> None:
    """Remove a stale lock file (its holder is dead) unless another process replaced it meanwhile."""
    if holder(path) == record:
        with contextlib.suppress(OSError):
            path.unlink()
        print(f"covidxr: taking over a stale lock {path} of {_describe(record)}: that process is gone",
              file=sys.stderr, flush=True)


def acquire(path, *, what, wait=False, timeout=None, notify=None) -> Lock:
    """Take the lock ``path`` (its folder is made if missing).

    Args:
        path: The lock file.
        what: What it guards, in the holder's record and the messages (``"run folder RUN"``).
        wait: Wait for the holder to finish; False: raise :class:`LockHeld` at once.
        timeout: Seconds to wait at most (None: no limit).
        notify: Called with each waiting message (default: print it to stderr).

    Returns:
        The held :class:`Lock`.

    Raises:
        LockHeld: Another live process holds it (``wait=False``, or ``timeout`` passed); the message
            names the holder's PID, host, start time and what it holds.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    notify = notify or (lambda text: print(text, file=sys.stderr, flush=True))
    start, told = time.monotonic(), None
    while True:
        handle = _try_lock(path, what)
        if handle is not None:
            return Lock(path, handle if handle is not False else None)
        record = holder(path)
        if _dead(record):
            _take_over(path, record)
            continue
        waited = time.monotonic() - start
        if not wait or (timeout is not None and waited >= timeout):
            raise LockHeld(f"Expected {what} to be free; it is held by {_describe(record)}. Wait for that "
                           f"process to end (or stop it) and try again. Received: lock={str(path)!r}", record)
        if waited >= NOTICE_SECONDS and (told is None or time.monotonic() - told >= REPEAT_SECONDS):
            notify(f"covidxr: waiting for {what}: held by {_describe(record)} (lock {path})")
            told = time.monotonic()
        time.sleep(POLL_SECONDS)


@contextlib.contextmanager
def hold(path, *, what, wait=False, timeout=None, notify=None):
    """:func:`acquire` for the length of a ``with`` block."""
    lock = acquire(path, what=what, wait=wait, timeout=timeout, notify=notify)
    try:
        yield lock
    finally:
        lock.release()


def is_held(path) -> dict | None:
    """The holder's record when a live process holds the lock ``path``, else None (free, stale or
    missing). Takes and frees the lock to find out."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        lock = acquire(path, what="a check", wait=False)
    except LockHeld as err:
        return err.holder or {"pid": None, "host": None}
    lock.release()
    return None
