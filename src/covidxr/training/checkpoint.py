"""The per-epoch training state of a run (``RUN/checkpoint/``): commit it, restore it on resume.
Must not decide what a run trains or write anything outside ``RUN/checkpoint/``.

Every file of a run folder is written under a temporary name in the same folder and then
renamed into place (:func:`covidxr.atomic.atomic_path`), so a reader (or a run killed with SIGKILL at any
moment) sees either the old file or the new one, never half of one.

During training, :class:`RunCheckpoint` keeps ``RUN/checkpoint/``::

    state.json            the commit point: phase, next epoch, history rows, callback states,
                          and the names of the array files below
    base-p<P>.npz         every variable of the full model when phase P started
    vars-p<P>-e<E>.npz    the variables of the model being fitted after epoch E of phase P
                          (the head alone in a phase 1 on cached features)
    opt-p<P>-e<E>.npz     its optimizer's variables (iteration, learning rate, moments)
    stop-p<P>-e<E>.npz    early stopping's best weights so far in phase P
    best-p<P>-e<E>.npz    the full model's weights at the best validation AUC of the run
    end-p<P>.npz          every variable of the full model when phase P ended

Array files carry the epoch in their name and are never rewritten; ``state.json`` is
replaced last, and files it no longer names are deleted afterwards. A run killed at any
point therefore leaves a state that names complete files only, and
``covidxr train --resume RUN_DIR`` (:func:`covidxr.train.resume`) continues from the last
finished epoch: random states (augmentation, dropout, the batch order) included, so the
resumed run ends with the same epochs, and on CPU the same predictions, as an uninterrupted one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import keras
import numpy as np

from ..atomic import fault_point, load_arrays, save_arrays, write_json

__all__ = [
    "CHECKPOINT_DIR",
    "RunCheckpoint",
    "read_state",
    "restore_best",
    "set_arrays",
    "variable_arrays",
]

#: Subfolder of a run folder that holds the training state until the run finishes.
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"

def set_arrays(variables, arrays, *, what="variables") -> None:
    """Assign ``arrays`` to Keras ``variables`` after checking count and shapes.

    Raises:
        ValueError: The checkpoint was written by another architecture or option set.
    """
    variables = list(variables)
    if len(variables) != len(arrays):
        raise ValueError(f"Expected a checkpoint with {len(variables)} {what} for this model; it holds "
                         f"{len(arrays)} (was the run made with other options?). Received: {what}={len(arrays)}")
    for variable, array in zip(variables, arrays):
        if tuple(variable.shape) != tuple(array.shape):
            raise ValueError(f"Expected {what} of shape {tuple(variable.shape)} for {variable.path}. "
                             f"Received: shape={tuple(array.shape)}")
    for variable, array in zip(variables, arrays):
        variable.assign(array)


def read_state(run_dir) -> dict | None:
    """The last committed training state of a run (None before the first epoch)."""
    path = Path(run_dir) / CHECKPOINT_DIR / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as err:  # cannot happen with atomic writes; say so if it does
        raise ValueError(f"Expected a readable checkpoint state ({err}). Received: state={str(path)!r}") from err
    if not isinstance(state, dict) or "phase" not in state:
        raise ValueError(f"Expected a checkpoint state with a phase. Received: state={str(path)!r}")
    return state


def restore_best(saver, state, folder) -> None:
    """Give the best-model keeper (``best``, ``best_epoch``, ``best_weights``, ``file``) the
    best validation AUC of a committed state and load its weights."""
    best = (state or {}).get("best") or {}
    if best.get("weights"):
        saver.best = float(best["value"]) if best.get("value") is not None else -np.inf
        saver.best_epoch = best.get("epoch")
        saver.best_weights = load_arrays(Path(folder) / best["weights"])
        saver.file = best["weights"]
        saver.changed = False


def variable_arrays(variables) -> list[np.ndarray]:
    """The values of Keras variables as numpy arrays, in order."""
    return [keras.ops.convert_to_numpy(v) for v in variables]


class RunCheckpoint(keras.callbacks.Callback):
    """Commit the state of one training phase after every epoch; restore it on resume.

    Put it *last* in the callback list: Keras calls callbacks in order, so at the end of an
    epoch it sees what early stopping, the learning-rate schedule, the history recorder and the
    best-model keeper decided, and at the start of training it restores their states after
    they reset themselves.

    Args:
        folder: ``RUN/checkpoint``.
        phase: 1 or 2.
        full_model: The whole model (the fitted model may be its head alone).
        epochs: Epochs of the phase.
        early_stopping, reduce_lr: The phase's EarlyStopping and ReduceLROnPlateau.
        recorder: The history recorder (``rows``).
        saver: The best-model keeper (``best``, ``best_epoch``, ``best_weights``).
        history: History rows of earlier phases.
        state: A committed state of this phase, after at least one epoch, to resume from; None
            starts the phase. (The caller restores the full model, the best-model keeper and the
            batch order before ``fit``: see :func:`restore_best`.)
        base: Name of the file holding the full model at the start of the phase (None: write one).
    """

    def __init__(self, folder, *, phase, full_model, epochs, early_stopping, reduce_lr, recorder, saver,
                 history=(), state=None, base=None):
        super().__init__()
        self.folder = Path(folder)
        self.phase = int(phase)
        self.full_model = full_model
        self.epochs = int(epochs)
        self.early_stopping = early_stopping
        self.reduce_lr = reduce_lr
        self.recorder = recorder
        self.saver = saver
        self.history = list(history)
        self.state = state
        self.base = base
        self.seconds = 0.0
        self._stop_file = None

    # ------------------------------------------------------------------ helpers
    def _commit(self, state: dict) -> None:
        write_json(self.folder / STATE_FILE, state)
        fault_point("after-state")
        keep = {STATE_FILE} | set(_file_names(state))
        for path in self.folder.iterdir():  # older epochs, and temporary files of a killed run
            if path.name not in keep and path.is_file():
                path.unlink(missing_ok=True)

    def _saver_state(self, tag) -> dict:
        saver = self.saver
        if saver.best_weights is not None and saver.changed:
            saver.file = f"best-{tag}.npz"
            save_arrays(self.folder / saver.file, saver.best_weights)
            saver.changed = False
        return {"value": None if not np.isfinite(saver.best) else float(saver.best),
                "epoch": saver.best_epoch, "weights": saver.file}

    # ------------------------------------------------------------------ callback hooks
    def on_train_begin(self, logs=None):
        start = time.perf_counter()
        self.folder.mkdir(parents=True, exist_ok=True)
        state = self.state
        if state is None or state.get("next_epoch", 0) == 0 and state.get("variables") is None:
            if self.base is None:
                self.base = f"base-p{self.phase}.npz"
                save_arrays(self.folder / self.base, variable_arrays(self.full_model.variables))
            self._commit({"phase": self.phase, "done": False, "next_epoch": 0, "base": self.base,
                          "history": self.history, "best": self._saver_state(f"p{self.phase}-start")})
        else:
            self._restore(state)
        self.seconds += time.perf_counter() - start

    def _restore(self, state):
        set_arrays(self.model.variables, load_arrays(self.folder / state["variables"]), what="variables")
        optimizer = self.model.optimizer
        if not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        set_arrays(optimizer.variables, load_arrays(self.folder / state["optimizer"]), what="optimizer variables")
        es = state["early_stopping"]
        self.early_stopping.wait = es["wait"]
        self.early_stopping.best = es["best"]
        self.early_stopping.best_epoch = es["best_epoch"]
        if es.get("weights"):
            self._stop_file = es["weights"]
            self.early_stopping.best_weights = load_arrays(self.folder / es["weights"])
        lr = state["reduce_lr"]
        self.reduce_lr.wait = lr["wait"]
        self.reduce_lr.best = lr["best"]
        self.reduce_lr.cooldown_counter = lr["cooldown_counter"]
        self.recorder.rows = [row for row in state["history"] if row.get("phase") == self.phase]
        self.history = [row for row in state["history"] if row.get("phase") != self.phase]
        self.base = state.get("base")

    def on_epoch_end(self, epoch, logs=None):
        start = time.perf_counter()
        tag = f"p{self.phase}-e{epoch + 1}"
        es = self.early_stopping
        if es.best_weights is not None and es.best_epoch == epoch:
            self._stop_file = f"stop-{tag}.npz"
            save_arrays(self.folder / self._stop_file, es.best_weights)
        save_arrays(self.folder / f"vars-{tag}.npz", variable_arrays(self.model.variables))
        save_arrays(self.folder / f"opt-{tag}.npz", variable_arrays(self.model.optimizer.variables))
        fault_point("mid-checkpoint")
        stopping = bool(getattr(self.model, "stop_training", False))
        state = {
            "phase": self.phase, "done": False,
            "next_epoch": self.epochs if stopping else epoch + 1,
            "base": self.base,
            "variables": f"vars-{tag}.npz", "optimizer": f"opt-{tag}.npz",
            "early_stopping": {"wait": int(es.wait), "best": _plain(es.best), "best_epoch": int(es.best_epoch),
                               "weights": self._stop_file},
            "reduce_lr": {"wait": int(self.reduce_lr.wait), "best": _plain(self.reduce_lr.best),
                          "cooldown_counter": int(self.reduce_lr.cooldown_counter)},
            "best": self._saver_state(tag),
            "history": self.history + list(self.recorder.rows),
        }
        self._commit(state)
        self.seconds += time.perf_counter() - start

    def on_train_end(self, logs=None):
        start = time.perf_counter()
        end = f"end-p{self.phase}.npz"
        save_arrays(self.folder / end, variable_arrays(self.full_model.variables))
        self._commit({"phase": self.phase, "done": True, "variables": end,
                      "best": self._saver_state(f"p{self.phase}-end"),
                      "history": self.history + list(self.recorder.rows)})
        self.seconds += time.perf_counter() - start


def _plain(value):
    if value is None:
        return None
    value = float(keras.ops.convert_to_numpy(value))
    return value if np.isfinite(value) else None


def _file_names(state: dict):
    for key in ("base", "variables", "optimizer"):
        if state.get(key):
            yield state[key]
    for key in ("early_stopping", "best"):
        name = (state.get(key) or {}).get("weights")
        if name:
            yield name
