"""Training: the batches, callbacks, per-epoch checkpoint and the two phases of a run.
Must not read datasets, make run folders or draw: numbers and the ``RUN/checkpoint/`` files
only; :mod:`covidxr.train` puts a run together from these pieces.
"""

from .batches import FeatureSequence, class_weight_for, make_sequence, predict_batches, train_batches, val_batches
from .callbacks import EpochRecorder, SaveBest, StepTimer, schedules
from .checkpoint import CHECKPOINT_DIR, RunCheckpoint, read_state, restore_best, set_arrays, variable_arrays
from .phases import compile_model, fine_tune, fit_head, run_phase

__all__ = [
    "CHECKPOINT_DIR", "EpochRecorder", "FeatureSequence", "RunCheckpoint", "SaveBest", "StepTimer",
    "class_weight_for", "compile_model", "fine_tune", "fit_head", "make_sequence", "predict_batches",
    "read_state", "restore_best", "run_phase", "schedules", "set_arrays", "train_batches", "val_batches",
    "variable_arrays",
]
