"""TensorBoard event files of a run (``RUN/tensorboard/``): one point per epoch of both phases.
Must not import TensorFlow, nor decide what is trained: it writes the history rows it is handed, and
where the ``tensorboard`` package is missing it says so once and writes nothing.

The files are written with the ``tensorboard`` package's own writer (``tensorboard.summary.Writer``,
numpy only), so they need no TensorFlow: also a JAX-only machine writes them once ``tensorboard`` is
installed. (TensorFlow's ``tf.summary``, which Keras' ``TensorBoard`` callback uses, needs the same
package: TensorFlow 2.21 no longer installs it.) Layout and tags follow Keras' callback, so
TensorBoard overlays training and validation curves as users know them::

    RUN/tensorboard/train/events.out.tfevents.*        epoch_loss, epoch_auc, epoch_pr_auc, epoch_learning_rate
    RUN/tensorboard/validation/events.out.tfevents.*   epoch_loss, epoch_auc, epoch_pr_auc (exact, scikit-learn)

The step is the run's epoch number as in ``history.csv`` (1, 2, ... over both phases: phase 2's
epochs follow phase 1's). Keras' own callback is not used: it numbers each ``fit`` from 0 again
(phase 2 would overwrite phase 1's steps), writes before the epoch is committed to the checkpoint and
cannot tell, on resume, which epochs a killed process wrote. :class:`TensorBoardWriter` instead
writes *committed* history rows only (:class:`~covidxr.training.callbacks.HistoryWriters` hands them
over after :class:`~covidxr.training.checkpoint.RunCheckpoint`, with the exact validation figures),
flushes after each epoch, and reads the existing event files first, so a resumed run adds the epochs
that are missing (also those a killed process had committed but not flushed) and never writes a
step twice.

Event files are appended to by design (TensorBoard reads them while they grow): they are the one
exception to the atomic writes of :mod:`covidxr.atomic`. A resumed run adds new event files beside
the old ones; TensorBoard reads them all as one series.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

__all__ = ["TENSORBOARD_DIR", "TENSORBOARD_INSTALL", "TensorBoardWriter", "event_scalars", "tensorboard_writer"]

#: Subfolder of a run folder with the event files.
TENSORBOARD_DIR = "tensorboard"
#: How to install the writer (the message of a missing package).
TENSORBOARD_INSTALL = "pip install 'tensorboard>=2.16,<2.22'"
#: History columns that are not metrics.
_NOT_METRICS = ("epoch", "phase", "phase_epoch", "seconds")
#: The writers' subfolders (Keras' names).
_PARTS = ("train", "validation")


def _summary():
    """``tensorboard.summary``, imported on first use (it may not be installed)."""
    return importlib.import_module("tensorboard.summary")


def _split(row: dict) -> dict:
    """``{"train": {tag: value}, "validation": {tag: value}}`` of one history row (Keras' tags)."""
    parts = {"train": {}, "validation": {}}
    for key, value in row.items():
        if key in _NOT_METRICS or value is None:
            continue
        part, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
        parts[part][f"epoch_{name}"] = float(value)
    return parts


def event_scalars(log_dir) -> dict:
    """The scalars in the event files under ``log_dir``: ``{part: {tag: {step: value}}}`` for the
    parts ``train`` and ``validation`` (TensorBoard's ``EventAccumulator``, every point kept; a record
    cut short at the end of a file, by a killed writer, is skipped).

    Raises:
        ImportError: The ``tensorboard`` package cannot be imported.
    """
    from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    found = {}
    for part in _PARTS:
        folder = Path(log_dir) / part
        found[part] = {}
        if not folder.is_dir():
            continue
        events = EventAccumulator(str(folder), size_guidance={TENSORS: 0}, purge_orphaned_data=False)
        events.Reload()
        for tag in events.Tags()[TENSORS]:
            found[part][tag] = {int(e.step): float(make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)}
    return found


class TensorBoardWriter:
    """Write history rows (``history.csv``'s) as TensorBoard scalars, each epoch once.

    Args:
        log_dir: ``RUN/tensorboard`` (made if missing).
        summary: The ``tensorboard.summary`` module.
    """

    def __init__(self, log_dir, *, summary):
        self.log_dir = Path(log_dir)
        self.summary = summary
        existing = event_scalars(self.log_dir) if self.log_dir.is_dir() else {}
        # the steps each part holds already (any tag): a resumed run writes only the others
        self.steps = {part: set().union(*[set(s) for s in existing.get(part, {}).values()]) for part in _PARTS}
        self._writers = {}

    def _writer(self, part):
        if part not in self._writers:
            self._writers[part] = self.summary.Writer(str(self.log_dir / part))
        return self._writers[part]

    def sync(self, rows) -> int:
        """Write the rows whose epoch is not written yet; flush; return how many rows were written."""
        written = 0
        for row in rows:
            step, new = int(row["epoch"]), False
            for part, values in _split(row).items():
                if step in self.steps[part] or not values:
                    continue
                writer = self._writer(part)
                for tag, value in values.items():
                    writer.add_scalar(tag, value, step)
                self.steps[part].add(step)
                new = True
            written += new
        for writer in self._writers.values():
            writer.flush()
        return written

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


def tensorboard_writer(run_dir) -> TensorBoardWriter | None:
    """A :class:`TensorBoardWriter` for ``RUN/tensorboard/``, or None, with one warning, where the
    ``tensorboard`` package cannot be imported (the run goes on)."""
    try:
        summary = _summary()
    except ImportError as err:
        message = (f"TensorBoard logging is off: the tensorboard package cannot be imported ({err}); the run "
                   f"goes on without RUN/tensorboard/ ({TENSORBOARD_INSTALL}, or --no-tensorboard)")
        warnings.warn(message, UserWarning, stacklevel=2)
        return None
    return TensorBoardWriter(Path(run_dir) / TENSORBOARD_DIR, summary=summary)
