"""Training: the batches, callbacks, per-epoch checkpoint and the two phases of a run.
Must not read datasets, make run folders or draw: numbers, the ``RUN/checkpoint/`` files and the
``RUN/tensorboard/`` event files only; :mod:`covidxr.train` puts a run together from these pieces.
"""

from .batches import FeatureSequence, class_weight_for, make_sequence, predict_batches, train_batches, val_batches
from .callbacks import (MIN_DELTA, MONITOR, EpochRecorder, ExactValidation, HistoryWriters, SaveBest, StepTimer,
                        best_index, exact_scores, schedules, validation_logs)
from .checkpoint import CHECKPOINT_DIR, RunCheckpoint, read_state, restore_best, set_arrays, variable_arrays
from .phases import UNDERFIT_AUC, adapt_feature_norm, calibrate_batchnorm, compile_model, fine_tune, fit_head, run_phase
from .linear import fit_linear_head
from .tensorboard import TENSORBOARD_DIR, TensorBoardWriter, event_scalars, tensorboard_writer

__all__ = [
    "CHECKPOINT_DIR", "MIN_DELTA", "MONITOR", "TENSORBOARD_DIR", "UNDERFIT_AUC", "best_index", "fit_linear_head", "EpochRecorder", "ExactValidation", "FeatureSequence",
    "HistoryWriters", "RunCheckpoint", "TensorBoardWriter",
    "SaveBest", "StepTimer", "adapt_feature_norm", "calibrate_batchnorm", "class_weight_for", "compile_model", "exact_scores",
    "fine_tune", "fit_head", "make_sequence", "predict_batches", "read_state", "restore_best", "run_phase",
    "schedules", "set_arrays", "tensorboard_writer", "event_scalars", "train_batches", "val_batches",
    "validation_logs", "variable_arrays",
]
