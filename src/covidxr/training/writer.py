"""One background writer for the checkpoint: the training thread hands it a finished snapshot
(numpy arrays and a JSON state) and goes on training while the files are written.
Must not touch Keras objects: what it runs reads host arrays and writes files only.

At most one write is in flight: :meth:`CheckpointWriter.submit` first waits for the previous
one (queue depth 1), so writes are committed in the order they were taken and never pile up in
memory. An exception raised by a write is raised again on the training thread, at the next
:meth:`~CheckpointWriter.submit`, :meth:`~CheckpointWriter.check` or
:meth:`~CheckpointWriter.wait`.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

__all__ = ["CheckpointWriter"]


class CheckpointWriter:
    """Run checkpoint writes one at a time, in a background thread or (``background=False``) at once.

    Args:
        background: False runs every write on the calling thread (the behaviour before the
            writer existed; the benchmark's baseline).

    Attributes:
        write_seconds: Time spent in the writes themselves (in whichever thread ran them).
        wait_seconds: Time the calling thread spent waiting for a previous write to finish.
    """

    def __init__(self, *, background: bool = True):
        self.background = bool(background)
        self.write_seconds = 0.0
        self.wait_seconds = 0.0
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future | None = None

    def _timed(self, write, *args) -> None:
        start = time.perf_counter()
        try:
            write(*args)
        finally:
            self.write_seconds += time.perf_counter() - start

    def submit(self, write, *args) -> None:
        """Wait for the previous write (raising its exception, if any), then start ``write(*args)``."""
        self.wait()
        if not self.background:
            self._timed(write, *args)
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="covidxr-checkpoint")
        self._pending = self._executor.submit(self._timed, write, *args)

    def check(self) -> None:
        """Raise the exception of a write that has already failed; never waits."""
        if self._pending is not None and self._pending.done():
            self.wait()

    def wait(self) -> None:
        """Block until the write in flight (if any) has finished; raise its exception."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        start = time.perf_counter()
        try:
            pending.result()
        finally:
            self.wait_seconds += time.perf_counter() - start

    def close(self, *, quiet: bool = False) -> None:
        """Wait for the write in flight and stop the thread. ``quiet=True`` swallows the write's
        exception (the caller is already raising another one)."""
        try:
            self.wait()
        except Exception:  # noqa: BLE001 - only when quiet: the caller's exception is the one to see
            if not quiet:
                raise
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
