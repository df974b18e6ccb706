"""Keras callbacks of a run: the exact validation figures, the best full model, where the time
goes, one history row per epoch, and the early-stopping / learning-rate schedules on validation
ROC AUC. Must not write files or figures: checkpoints are :mod:`covidxr.training.checkpoint`'s job.
"""

from __future__ import annotations

import logging
import time

import keras
import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from .batches import predict_batches
from .checkpoint import variable_arrays

__all__ = ["MIN_DELTA", "MONITOR", "EpochRecorder", "ExactValidation", "HistoryWriters", "SaveBest", "StepProgress",
           "StepTimer", "best_index", "exact_scores", "improves", "schedules", "validation_logs"]

#: Probabilities are clipped to [EPSILON, 1 - EPSILON] in the loss, as Keras' cross-entropies do.
EPSILON = 1e-7

#: The run's logger: its records go to the run folder's ``train.log``.
logger = logging.getLogger("covidxr.train")


def exact_scores(labels, probs) -> dict:
    """Exact ROC AUC and average precision (scikit-learn) of class probabilities.

    Args:
        labels: int class indices (n,).
        probs: (n, 1) sigmoid outputs (the probability of class 1) or (n, C) softmax outputs.

    Returns:
        ``{"auc", "pr_auc"}``; with C > 2 the macro one-vs-rest means. NaN when a class is
        missing from ``labels``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    columns = [(labels == 1, probs[:, -1])] if probs.shape[1] == 1 else [
        (labels == i, probs[:, i]) for i in range(probs.shape[1])]
    if any(np.unique(y).size < 2 for y, _ in columns):
        return {"auc": float("nan"), "pr_auc": float("nan")}
    return {"auc": float(np.mean([roc_auc_score(y, s) for y, s in columns])),
            "pr_auc": float(np.mean([average_precision_score(y, s) for y, s in columns]))}


def validation_logs(labels, probs) -> dict:
    """``{"val_loss", "val_auc", "val_pr_auc"}`` of validation probabilities (n, 1) or (n, C):
    the mean cross-entropy (Keras' formula, probabilities clipped at :data:`EPSILON`), the exact
    ROC AUC and the average precision (:func:`exact_scores`)."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[1] == 1:
        p, y = np.clip(probs[:, 0], EPSILON, 1 - EPSILON), labels.astype(np.float64)
        loss = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    else:
        p = (probs / probs.sum(axis=1, keepdims=True))[np.arange(len(labels)), labels]
        loss = -np.log(np.clip(p, EPSILON, 1 - EPSILON))
    scores = exact_scores(labels, probs)
    return {"val_loss": float(loss.mean()) if len(loss) else float("nan"),
            "val_auc": scores["auc"], "val_pr_auc": scores["pr_auc"]}


class ExactValidation(keras.callbacks.Callback):
    """The validation figures of an epoch, exact: predict the validation inputs once and write
    ``val_loss``, ``val_auc`` (scikit-learn's ROC AUC; macro one-vs-rest for C > 2) and
    ``val_pr_auc`` (average precision) into the epoch's ``logs``.

    Put it *first* in the callback list and fit without ``validation_data``: Keras hands one
    ``logs`` dict to the callbacks in list order, so early stopping, the learning-rate schedule,
    :class:`SaveBest`, the history recorder and the checkpoint all see the exact values, not
    Keras' 200-threshold AUC approximation (which is off by up to 0.065 on 76 images with scores
    near 0.5). Computing ``val_loss`` here too, instead of keeping Keras' validation pass for it,
    predicts the validation set once per epoch, not twice; the columns of ``history.csv`` stay.

    Args:
        inputs: What the fitted model takes (cached features (m, F), or images (m, S, S, 1)).
        labels: int class indices (m,).
        batch_size: Prediction batch size (a multiple of the devices under data parallelism).
        phase: The run's phase (1 or 2), for the message of a diverged run.

    Raises:
        ValueError: At the end of an epoch whose loss or validation outputs are NaN (diverged):
            the message gives the phase, the epoch and the learning rate.
    """

    def __init__(self, inputs, labels, *, batch_size, phase=None):
        super().__init__()
        self.inputs = inputs
        self.labels = np.asarray(labels, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.phase = phase
        self.seconds = 0.0

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        start = time.perf_counter()
        probs = predict_batches(self.model, self.inputs, batch_size=self.batch_size)
        self._check_finite(epoch, logs.get("loss"), probs)
        logs.update(validation_logs(self.labels, probs))
        self.seconds += time.perf_counter() - start

    def _check_finite(self, epoch, loss, probs) -> None:
        """Training diverged (a NaN loss, or NaN validation outputs): say so, with the epoch and the
        learning rate, instead of failing later in the scores.

        Raises:
            ValueError: The loss or the model's outputs are not finite.
        """
        if np.all(np.isfinite(probs)) and (loss is None or np.isfinite(loss)):
            return
        try:
            lr = f"{float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)):.2e}"
        except Exception:  # noqa: BLE001 - a schedule or no optimizer
            lr = "unknown"
        where = f"phase {self.phase} epoch {epoch + 1}" if self.phase else f"epoch {epoch + 1}"
        raise ValueError(
            f"Expected training to converge; the loss became NaN in {where} at learning rate {lr} (training "
            f"diverged: lower --learning-rate, or --fine-tune-learning-rate in phase 2). Received: loss={loss!r}")


#: What chooses the epoch kept, in both phases: the exact validation loss (smoother than the ROC
#: AUC of a validation part with a dozen images of one class, which a single image moves by 0.005
#: or more).
MONITOR = "val_loss"
#: An epoch is better than the best so far only when its validation loss is lower by more than
#: this (early stopping, the learning-rate schedule and the best model alike). So fine-tuning
#: replaces the phase-1 head only when it lowers the validation loss by more than 0.01 (about 2%
#: of a typical 0.5), not when it wins by the noise of a few images.
MIN_DELTA = 0.01


def improves(value, best, *, min_delta=MIN_DELTA) -> bool:
    """Whether validation loss ``value`` improves on ``best`` by more than ``min_delta``."""
    return value is not None and bool(np.isfinite(value)) and value < best - min_delta


def best_index(values, *, min_delta=MIN_DELTA):
    """Position of the epoch :class:`SaveBest` keeps among validation losses in epoch order (None
    when none is finite): each epoch replaces the best only when it :func:`improves` on it."""
    best, index = np.inf, None
    for i, value in enumerate(values):
        if improves(value, best, min_delta=min_delta):
            best, index = float(value), i
    return index


class SaveBest(keras.callbacks.Callback):
    """Keep the *full* model's weights at the best validation loss of all phases so far (in
    phase 1 the model being fitted may be the head alone), an epoch counting as better only when
    it :func:`improves` on it. :class:`~covidxr.training.checkpoint.RunCheckpoint`
    writes them to the checkpoint; the run saves them as ``model.keras`` when training ends."""

    def __init__(self, full_model, *, monitor=MONITOR, min_delta=MIN_DELTA):
        super().__init__()
        self.full_model = full_model
        self.monitor = monitor
        self.min_delta = float(min_delta)
        self.best = np.inf
        self.best_epoch = None
        self.best_weights = None
        self.changed = False
        self.file = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if not improves(value, self.best, min_delta=self.min_delta):
            return
        self.best = float(value)
        self.best_epoch = epoch
        self.best_weights = variable_arrays(self.full_model.weights)
        self.changed = True


class StepTimer(keras.callbacks.Callback):
    """Where a fit's time goes: the first training batch (tracing and compilation), the
    other batches, and Keras' validation passes (a fit with ``validation_data``; the phases'
    exact validation is timed by :class:`ExactValidation` instead)."""

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


class StepProgress(keras.callbacks.Callback):
    """A progress bar of one epoch's training steps (tqdm on stderr, only on a terminal), cleared
    when the epoch ends: what stays on screen is the run's own line per epoch
    (:class:`EpochRecorder`), never a Keras bar with that line glued to it. Put it before the
    recorder."""

    def __init__(self, phase):
        super().__init__()
        self.phase = phase
        self._bar = None

    def on_epoch_begin(self, epoch, logs=None):
        from tqdm import tqdm

        self._bar = tqdm(total=(self.params or {}).get("steps"), desc=f"phase {self.phase}, epoch {epoch + 1}",
                         unit="step", leave=False, disable=None)

    def on_train_batch_end(self, batch, logs=None):
        if self._bar is not None:
            self._bar.update(1)

    def on_epoch_end(self, epoch, logs=None):
        self.on_train_end()

    def on_train_end(self, logs=None):
        if self._bar is not None:
            self._bar.close()
            self._bar = None


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
        shown = ", ".join(f"{k}={v:.3f}" for k, v in row.items()
                          if k not in ("epoch", "phase", "phase_epoch", "seconds", "learning_rate"))
        logger.info("phase %d epoch %d (%d overall): %s, lr=%.2e, %.1f s", self.phase, epoch + 1,
                    row["epoch"], shown, lr, row["seconds"])


class HistoryWriters(keras.callbacks.Callback):
    """Hand the run's *checkpointed* history rows to writers (TensorBoard, MLflow) at the start of a
    phase and after every epoch.

    Put it right after :class:`~covidxr.training.checkpoint.RunCheckpoint`: Keras calls callbacks in
    list order, so the rows are those of the last checkpoint taken (its ``handed_history``: committed,
    or being written by the background writer; a resumed phase's restored ones at the start), with
    the exact validation figures of :class:`ExactValidation` (first in the list). With
    ``checkpoint_every`` N > 1 the epochs between checkpoints reach the writers with the next one, so
    an epoch a killed run trains again on resume is written once, by the run that keeps it. A writer has
    ``sync(rows)``, which writes the rows it has not written yet: a kill between a commit and a write
    leaves nothing missing, and a resumed run writes no epoch twice.

    Args:
        checkpoint: The phase's ``RunCheckpoint`` (its ``handed_history``).
        writers: Objects with ``sync(rows)``.
    """

    def __init__(self, checkpoint, writers):
        super().__init__()
        self.checkpoint = checkpoint
        self.writers = list(writers)

    def _sync(self):
        rows = list(self.checkpoint.handed_history)  # not the epochs since the last checkpoint
        for writer in self.writers:
            writer.sync(rows)

    def on_train_begin(self, logs=None):
        self._sync()

    def on_epoch_end(self, epoch, logs=None):
        self._sync()


def schedules(patience):
    """Early stopping (keeping the phase's best weights) and ReduceLROnPlateau on the exact
    validation loss (:data:`MONITOR`, from :class:`ExactValidation`), an epoch counting as better
    only when it lowers it by more than :data:`MIN_DELTA`."""
    return (keras.callbacks.EarlyStopping(monitor=MONITOR, mode="min", min_delta=MIN_DELTA, patience=patience,
                                          restore_best_weights=True),
            keras.callbacks.ReduceLROnPlateau(monitor=MONITOR, mode="min", min_delta=MIN_DELTA, factor=0.2,
                                              patience=max(1, patience // 2), min_lr=1e-7))

