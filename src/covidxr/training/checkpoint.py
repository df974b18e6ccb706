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
    stop-p<P>-e<E>.npz    early stopping's best weights so far in phase P (none when they are
                          the best full model's of the same epoch: the state names that file)
    best-p<P>-e<E>.npz    the full model's weights at the best validation AUC of the run
    end-p<P>.npz          every variable of the full model when phase P ended

Array files carry the epoch in their name and are never rewritten; ``state.json`` is
replaced last, and files it no longer names are deleted afterwards. A run killed at any
point therefore leaves a state that names complete files only, and
``covidxr train --resume RUN_DIR`` (:func:`covidxr.train.resume`) continues from the last
written epoch: random states (augmentation, dropout, the batch order) included, so the
resumed run ends with the same epochs, and on CPU the same predictions, as an uninterrupted one.

``every=N`` (``--checkpoint-every N``) writes after every N-th epoch of a phase, after its
last epoch (early stopping included) and at its end; the best weights of an epoch in between
stay in memory and are written with the next checkpoint. The training thread only copies the
variables to host arrays; the files and ``state.json`` are written by one background
:class:`~covidxr.training.writer.CheckpointWriter` (one write in flight, the next one waits for
it, the phase's end waits for all; a failed write raises on the training thread).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import keras
import numpy as np

from ..atomic import fault_point, load_arrays, save_arrays, write_json
from .writer import CheckpointWriter

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
        saver.best = float(best["value"]) if best.get("value") is not None else np.inf
        saver.best_epoch = best.get("epoch")
        saver.best_weights = load_arrays(Path(folder) / best["weights"])
        saver.file = best["weights"]
        saver.changed = False


def variable_arrays(variables) -> list[np.ndarray]:
    """The values of Keras variables as numpy arrays that own their memory, in order: a
    snapshot that later training steps (or a backend reusing the device buffers) never change."""
    arrays = []
    for variable in variables:
        array = keras.ops.convert_to_numpy(variable)
        arrays.append(array if array.flags.owndata else np.array(array))
    return arrays


class RunCheckpoint(keras.callbacks.Callback):
    """Commit the state of one training phase after every ``every``-th epoch; restore it on resume.

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
        every: Write after epochs N, 2N, ... of the phase (and always after its last epoch and
            at its end).
        background: Write the files in a background thread (False: on the training thread).

    Attributes:
        seconds: Time the training thread spent on checkpoints (snapshots, and waiting for the
            writer; with ``background=False`` the writes too).
        written: The phase epochs (1-based) whose state was handed to the writer.
        handed_history: The history rows (earlier phases' and this one's) of the last state
            handed to the writer or restored: what a resume would continue from.
        writer: The :class:`~covidxr.training.writer.CheckpointWriter` (``write_seconds``).

    Raises:
        ValueError: ``every`` is not an integer >= 1.
    """

    def __init__(self, folder, *, phase, full_model, epochs, early_stopping, reduce_lr, recorder, saver,
                 history=(), state=None, base=None, every=1, background=True):
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"Expected checkpoint_every to be an integer >= 1 (epochs). Received: checkpoint_every={every!r}")
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
        self.every = int(every)
        self.writer = CheckpointWriter(background=background)
        self.seconds = 0.0
        self.written: list[int] = []
        self.handed_history: list[dict] = list(self.history)
        self._stop_file = self._stop_epoch = None

    # ------------------------------------------------------------------ helpers
    def _commit(self, state: dict) -> None:
        write_json(self.folder / STATE_FILE, state)
        fault_point("after-state")
        keep = {STATE_FILE} | set(_file_names(state))
        for path in self.folder.iterdir():  # older epochs, and temporary files of a killed run
            if path.name not in keep and path.is_file():
                path.unlink(missing_ok=True)

    def _write(self, arrays: dict, state: dict, mid: bool = False) -> None:
        """The writer's job: the array files, then ``state.json`` (the commit point)."""
        for name, values in arrays.items():
            save_arrays(self.folder / name, values)
        if mid:
            fault_point("mid-checkpoint")
        self._commit(state)

    def _saver_state(self, tag, arrays: dict) -> dict:
        saver = self.saver
        if saver.best_weights is not None and saver.changed:  # possibly from an epoch not written
            saver.file = f"best-{tag}.npz"
            arrays[saver.file] = saver.best_weights
            saver.changed = False
        return {"value": None if not np.isfinite(saver.best) else float(saver.best),
                "epoch": saver.best_epoch, "weights": saver.file}

    def _submit(self, arrays: dict, state: dict, mid: bool = False) -> None:
        self.handed_history = [dict(row) for row in state["history"]]
        self.writer.submit(self._write, arrays, state, mid)

    def _due(self, epoch) -> bool:
        return ((epoch + 1) % self.every == 0 or epoch + 1 >= self.epochs
                or bool(getattr(self.model, "stop_training", False)))

    def close(self, *, quiet=False) -> None:
        """Wait for the write in flight and stop the writer (``quiet``: keep its exception to
        itself, when the caller is raising another one)."""
        start = time.perf_counter()
        try:
            self.writer.close(quiet=quiet)
        finally:
            self.seconds += time.perf_counter() - start

    # ------------------------------------------------------------------ callback hooks
    def on_train_begin(self, logs=None):
        start = time.perf_counter()
        self.folder.mkdir(parents=True, exist_ok=True)
        state = self.state
        if state is None or state.get("next_epoch", 0) == 0 and state.get("variables") is None:
            arrays = {}
            if self.base is None:
                self.base = f"base-p{self.phase}.npz"
                arrays[self.base] = variable_arrays(self.full_model.variables)
            begin = {"phase": self.phase, "done": False, "next_epoch": 0, "base": self.base,
                     "history": self.history, "best": self._saver_state(f"p{self.phase}-start", arrays)}
            self._submit(arrays, begin)
        else:
            self._restore(state)
            self.handed_history = [dict(row) for row in state["history"]]
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
            self._stop_file, self._stop_epoch = es["weights"], es["best_epoch"]
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
        self.writer.check()  # a failed write stops training at once
        if self._due(epoch):
            self._checkpoint(epoch)
        self.seconds += time.perf_counter() - start

    def _checkpoint(self, epoch):
        """Snapshot the state after ``epoch`` (0-based) on this thread and hand it to the writer."""
        tag = f"p{self.phase}-e{epoch + 1}"
        es, arrays = self.early_stopping, {}
        best = self._saver_state(tag, arrays)
        if es.best_weights is not None and es.best_epoch != self._stop_epoch:  # improved since the last write
            self._stop_epoch = es.best_epoch
            if self.model is self.full_model and best["weights"] in arrays and best["epoch"] == es.best_epoch:
                self._stop_file = best["weights"]  # the same weights, of the same epoch: one file for both
            else:
                self._stop_file = f"stop-{tag}.npz"
                arrays[self._stop_file] = list(es.best_weights)
        arrays[f"vars-{tag}.npz"] = variable_arrays(self.model.variables)
        arrays[f"opt-{tag}.npz"] = variable_arrays(self.model.optimizer.variables)
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
            "best": best,
            "history": self.history + [dict(row) for row in self.recorder.rows],
        }
        self.written.append(epoch + 1)
        self._submit(arrays, state, True)

    def on_train_end(self, logs=None):
        start = time.perf_counter()
        end = f"end-p{self.phase}.npz"
        arrays = {end: variable_arrays(self.full_model.variables)}
        state = {"phase": self.phase, "done": True, "variables": end,
                 "best": self._saver_state(f"p{self.phase}-end", arrays),
                 "history": self.history + [dict(row) for row in self.recorder.rows]}
        self._submit(arrays, state)
        self.seconds += time.perf_counter() - start
        self.close()  # the phase is committed when fit returns

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
