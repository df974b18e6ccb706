"""Keras callbacks of a run: the best full model, where the time goes, one history row per
epoch, and the early-stopping / learning-rate schedules on validation ROC AUC.
Must not write files or figures: checkpoints are :mod:`covidxr.training.checkpoint`'s job.
"""

from __future__ import annotations

import logging
import time

import keras
import numpy as np

from .checkpoint import variable_arrays

__all__ = ["EpochRecorder", "SaveBest", "StepTimer", "schedules"]

#: The run's logger: its records go to the run folder's ``train.log``.
logger = logging.getLogger("covidxr.train")


class SaveBest(keras.callbacks.Callback):
    """Keep the *full* model's weights at the best validation AUC of all phases so far (in
    phase 1 the model being fitted may be the head alone). :class:`~covidxr.training.checkpoint.RunCheckpoint`
    writes them to the checkpoint; the run saves them as ``model.keras`` when training ends."""

    def __init__(self, full_model, *, monitor="val_auc"):
        super().__init__()
        self.full_model = full_model
        self.monitor = monitor
        self.best = -np.inf
        self.best_epoch = None
        self.best_weights = None
        self.changed = False
        self.file = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not np.isfinite(value) or value <= self.best:
            return
        self.best = float(value)
        self.best_epoch = epoch
        self.best_weights = variable_arrays(self.full_model.weights)
        self.changed = True


class StepTimer(keras.callbacks.Callback):
    """Where a fit's time goes: the first training batch (tracing and compilation), the
    other batches, and the validation passes."""

    def __init__(self):
        super().__init__()
        self.first_step = 0.0
        self.steady_steps = 0.0
        self.steps = 0
        self.validation = 0.0
        self._first = True
        self._batch = self._test = None

    def on_train_begin(self, logs=None):
        self._first = True

    def on_train_batch_begin(self, batch, logs=None):
        self._batch = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        seconds = time.perf_counter() - self._batch
        if self._first:
            self.first_step += seconds
            self._first = False
        else:
            self.steady_steps += seconds
        self.steps += 1

    def on_test_begin(self, logs=None):
        self._test = time.perf_counter()

    def on_test_end(self, logs=None):
        self.validation += time.perf_counter() - self._test


class EpochRecorder(keras.callbacks.Callback):
    """One history row per epoch: phase, learning rate, seconds; also logged to train.log."""

    def __init__(self, phase, *, offset=0):
        super().__init__()
        self.phase = phase
        self.offset = offset
        self.rows = []
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        try:
            lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        except Exception:  # noqa: BLE001 - a schedule or no optimizer
            lr = logs.get("learning_rate", float("nan"))
        row = {"epoch": self.offset + epoch + 1, "phase": self.phase, "phase_epoch": epoch + 1}
        row.update({k: float(v) for k, v in logs.items() if k != "learning_rate"})
        row["learning_rate"] = lr
        row["seconds"] = round(time.perf_counter() - self._start, 3)
        self.rows.append(row)
        shown = ", ".join(f"{k}={v:.4f}" for k, v in row.items()
                          if k not in ("epoch", "phase", "phase_epoch", "seconds", "learning_rate"))
        logger.info("phase %d epoch %d (%d overall): %s, lr=%.2e, %.1f s", self.phase, epoch + 1,
                    row["epoch"], shown, lr, row["seconds"])


def schedules(patience):
    """Early stopping (keeping the phase's best weights) and ReduceLROnPlateau on validation AUC."""
    return (keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=patience,
                                          restore_best_weights=True),
            keras.callbacks.ReduceLROnPlateau(monitor="val_auc", mode="max", factor=0.2,
                                              patience=max(1, patience // 2), min_lr=1e-7))

