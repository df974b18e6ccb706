"""Two-phase transfer learning and the run folder.

:func:`train` does one run, as the Keras transfer-learning guide does it:

1. **Phase 1** trains only the head (dropout + dense) with the backbone frozen. By default
   (``cache_features=True``) the pooled backbone output of every training and validation
   image is computed once and the head is trained on these features: with the backbone
   frozen and no augmentation they never change, so this gives the same head as the full
   forward pass at a fraction of the cost. The head's layers are shared with the full model,
   so the trained weights are already in place afterwards.
2. **Phase 2** unfreezes the backbone from a layer (``fine_tune_from``: a layer name, ``-N``
   for the last N layers, ``"auto"`` for the registry's last block or ``"all"``) and trains
   on whole images, with augmentation, at a learning rate about ten times lower. Every
   BatchNormalization layer stays frozen and so in inference mode (its moving statistics
   never change; see :func:`covidxr.models.set_trainable_from`). ``fine_tune_epochs=0``
   skips it.

Both phases use early stopping and ReduceLROnPlateau on validation ROC AUC; the best
full model over both phases is saved as ``model.keras``. Every run writes a new folder
(see :func:`make_run_dir`)::

    config.json  split.csv  history.csv  model.keras  predictions.csv  metrics.json
    figures/training_curves.png  train.log  report.md

``covidxr train --config RUN/config.json`` repeats a run into a new folder;
:func:`load_run` and :func:`predict_frame` use a finished one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import platform
import secrets
import string
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from . import RESEARCH_ONLY, __version__
from .data import FRONTAL_VIEWS, get_task
from .models import (
    backbone_layer,
    build_model,
    feature_model,
    get_backbone,
    head_model,
    resolve_fine_tune_from,
    set_trainable_from,
)

__all__ = [
    "TrainConfig",
    "fine_tune",
    "fit_head",
    "load_run",
    "make_run_dir",
    "part_metrics",
    "predict_frame",
    "predict_images",
    "resume",
    "run_name",
    "train",
]

logger = logging.getLogger("covidxr.train")

#: Phase 2 learning rate when not given: the phase 1 rate divided by this.
FINE_TUNE_DIVISOR = 10.0
#: Values of the ``jit_compile`` option (Keras ``compile``; "auto" lets Keras decide).
JIT_COMPILE = ("auto", True, False)


@dataclass
class TrainConfig:
    """Every option of a run; field names are the ``covidxr train`` options with underscores.

    Data: ``data_dir``, ``layout``, ``task``, ``views``, ``modality``, ``image_col``,
    ``label_col``, ``patient_col`` (as :func:`covidxr.data.load_dataset`); ``val_size``,
    ``test_size``, ``folds``/``fold`` (k-fold mode when ``folds`` is set), ``split_file``
    (a ``split.csv`` to reuse instead of splitting), ``seed``.

    Images: ``image_size``, ``resize`` (pad/crop), ``clahe``, ``cache_dir``.

    Model: ``backbone``, ``weights`` (``"imagenet"``, ``"none"`` or a path), ``dropout``,
    ``pooling``, ``augment``, ``hflip``.

    Training: ``batch_size``, ``epochs`` (phase 1), ``learning_rate``, ``fine_tune_epochs``
    (0: no phase 2), ``fine_tune_from``, ``fine_tune_learning_rate`` (None: a tenth of
    ``learning_rate``), ``strategy`` (see :data:`covidxr.sampling.STRATEGIES`), ``patience``
    (early stopping, epochs), ``cache_features`` (phase 1 on cached features),
    ``mixed_precision`` (None/False: float32; True or ``"mixed_bfloat16"``; ``"mixed_float16"``:
    see :func:`covidxr.runtime.precision_policy`), ``jit_compile`` (``"auto"``, True, False:
    Keras' ``compile(jit_compile=...)``; XLA), ``data_parallel`` (spread every batch over all
    GPUs, or all CPU devices: :func:`covidxr.runtime.data_parallel_scope`), ``memory_check``
    (refuse before training a run whose estimated memory exceeds what is available:
    :func:`covidxr.runtime.check_memory`), ``verbose`` (Keras progress: 0, 1, 2 or "auto").

    Output: ``runs_dir``, ``run_name`` (default: made from the time, task, backbone,
    strategy, fold and 4 random characters; an existing folder is an error).
    """

    data_dir: str | None = None
    layout: str = "auto"
    task: str = "covid-vs-rest"
    views: str = ",".join(FRONTAL_VIEWS)
    modality: str | None = "X-ray"
    image_col: str = "path"
    label_col: str = "label"
    patient_col: str | None = "patient"
    backbone: str = "resnet50"
    weights: str | None = "imagenet"
    image_size: int = 224
    batch_size: int = 32
    epochs: int = 10
    fine_tune_epochs: int = 10
    fine_tune_from: str | int | None = "auto"
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float | None = None
    strategy: str = "class-weight"
    augment: bool = True
    hflip: bool = False
    clahe: bool = False
    resize: str = "pad"
    dropout: float = 0.2
    pooling: str = "avg"
    patience: int = 5
    cache_features: bool = True
    mixed_precision: str | bool | None = None
    jit_compile: str | bool = "auto"
    data_parallel: bool = False
    memory_check: bool = True
    seed: int = 0
    val_size: float = 0.15
    test_size: float = 0.15
    folds: int | None = None
    fold: int = 0
    split_file: str | None = None
    cache_dir: str | None = None
    runs_dir: str = "runs"
    run_name: str | None = None
    verbose: int | str = 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self, path=None) -> str:
        """The options as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            from .atomic import write_text

            write_text(path, text + "\n")
        return text

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """Build from a dict, ignoring keys that are not options (a run's ``config.json``
        holds more: class order, versions, cache key ...)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    @classmethod
    def from_json(cls, path_or_text) -> "TrainConfig":
        """Read options from a ``config.json`` file (a run's, or one :meth:`to_json` wrote)
        or from JSON text."""
        text = str(path_or_text)
        if not text.lstrip().startswith("{"):
            path = Path(text)
            if path.is_dir():
                path = path / "config.json"
            if not path.is_file():
                raise FileNotFoundError(f"Expected a config.json file. Received: config={text!r}")
            text = path.read_text()
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"Expected a JSON object of options ({err}). Received: config={str(path_or_text)[:80]!r}") from err
        if not isinstance(values, dict):
            raise ValueError(f"Expected a JSON object of options. Received: config={type(values).__name__}")
        return cls.from_dict(values)

    @property
    def contrast(self):
        """The cache's contrast setting (``"clahe"`` or None)."""
        return "clahe" if self.clahe else None

    @property
    def resolved_fine_tune_learning_rate(self) -> float:
        if self.fine_tune_learning_rate is None:
            return float(self.learning_rate) / FINE_TUNE_DIVISOR
        return float(self.fine_tune_learning_rate)


# --------------------------------------------------------------------------- checks

def _positive_int(name, value, *, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"Expected {name} to be an integer >= {minimum}. Received: {name}={value!r}")


def _positive_float(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"Expected {name} to be a positive number. Received: {name}={value!r}")


def check_config(config: TrainConfig) -> TrainConfig:
    """Validate every option that can be checked without data; raise on the first bad one."""
    from .images import RESIZES
    from .sampling import check_strategy

    if not isinstance(config, TrainConfig):
        raise ValueError(f"Expected a TrainConfig. Received: config={type(config).__name__}")
    spec = get_backbone(config.backbone)
    get_task(config.task)
    check_strategy(config.strategy)
    if isinstance(config.image_size, bool) or not isinstance(config.image_size, (int, np.integer)) \
            or config.image_size < spec.min_size:
        raise ValueError(
            f"Expected an integer image_size of at least {spec.min_size} px for backbone "
            f"{spec.name!r}. Received: image_size={config.image_size!r}"
        )
    if config.resize not in RESIZES:
        raise ValueError(f"Unknown resize. Expected one of {RESIZES}. Received: resize={config.resize!r}")
    _positive_int("batch_size", config.batch_size)
    _positive_int("epochs", config.epochs)
    _positive_int("fine_tune_epochs", config.fine_tune_epochs, minimum=0)
    _positive_int("patience", config.patience)
    _positive_float("learning_rate", config.learning_rate)
    from .runtime import precision_policy

    precision_policy(config.mixed_precision)
    if config.jit_compile not in JIT_COMPILE:
        raise ValueError(f"Unknown jit_compile. Expected one of {list(JIT_COMPILE)}. "
                         f"Received: jit_compile={config.jit_compile!r}")
    if config.fine_tune_learning_rate is not None:
        _positive_float("fine_tune_learning_rate", config.fine_tune_learning_rate)
    w = config.weights
    if w is not None and str(w).lower() not in ("imagenet", "none") and not Path(str(w)).expanduser().is_file():
        raise FileNotFoundError(
            f"Expected weights 'imagenet', 'none' or the path of an existing weights file. "
            f"Received: weights={w!r}"
        )
    if config.folds is not None:
        _positive_int("folds", config.folds, minimum=2)
        if not 0 <= int(config.fold) < int(config.folds):
            raise ValueError(f"Expected 0 <= fold < folds={config.folds}. Received: fold={config.fold!r}")
    if config.split_file is not None and not Path(config.split_file).is_file():
        raise FileNotFoundError(f"Expected a split CSV file. Received: split_file={config.split_file!r}")
    return config


# --------------------------------------------------------------------------- run folder

def run_name(config: TrainConfig, *, now=None) -> str:
    """``<YYYY-mm-ddTHH-MM-SS>_<task>_<backbone>_<strategy>[_f<K>]_<4 random chars>``."""
    now = now or datetime.now()
    alphabet = string.ascii_lowercase + string.digits
    tag = "".join(secrets.choice(alphabet) for _ in range(4))  # not from the seeded RNGs
    fold = f"_f{int(config.fold)}" if config.folds else ""
    return f"{now:%Y-%m-%dT%H-%M-%S}_{config.task}_{get_backbone(config.backbone).name}_{config.strategy}{fold}_{tag}"


def _refuse_existing(path: Path) -> None:
    if path.exists():
        raise FileExistsError(
            f"Expected a new run folder; this one exists and runs are never overwritten. "
            f"Received: run_dir={str(path)!r}"
        )


def make_run_dir(config: TrainConfig) -> Path:
    """Create the run folder (never an existing one) and its ``figures/`` subfolder."""
    root = Path(config.runs_dir).expanduser()
    if config.run_name:
        path = root / config.run_name
        _refuse_existing(path)
        path.mkdir(parents=True)
    else:
        root.mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            path = root / run_name(config)
            try:
                path.mkdir()
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - 20 collisions of 4 random characters
            raise FileExistsError(f"Could not make a new run folder. Received: runs_dir={str(root)!r}")
    (path / "figures").mkdir()
    return path


# --------------------------------------------------------------------------- data sequences

class _FeatureSequence(keras.utils.PyDataset):
    """Cached features in the exact batch order of a :class:`~covidxr.sampling.BatchSequence`
    (same seed, strategy and shuffling), so cached and uncached phase 1 see the same batches."""

    def __init__(self, sequence, features):
        super().__init__()
        self.sequence = sequence
        self.features = np.asarray(features)
        self.set_epoch(sequence.epoch)

    def __len__(self):
        return math.ceil(len(self._indices) / self.sequence.batch_size)

    def __getitem__(self, index):
        b = self.sequence.batch_size
        idx = self._indices[index * b: (index + 1) * b]
        labels = self.sequence.labels[idx]
        if self.sequence.num_classes == 2:
            y = labels.astype(np.float32)[:, None]
        else:
            y = np.eye(self.sequence.num_classes, dtype=np.float32)[labels]
        return self.features[idx], y

    def on_epoch_end(self):
        self.set_epoch(self.epoch + 1)

    def set_epoch(self, epoch) -> None:
        self.epoch = int(epoch)
        self._indices = self.sequence.epoch_indices(self.epoch)


def _sequence(images, labels, *, num_classes, batch_size, strategy="none", shuffle=False, seed=0):
    from .sampling import BatchSequence

    return BatchSequence(np.asarray(images), np.asarray(labels, dtype=np.int64), num_classes=num_classes,
                         batch_size=batch_size, strategy=strategy, shuffle=shuffle, seed=seed)


# --------------------------------------------------------------------------- callbacks

class _SaveBest(keras.callbacks.Callback):
    """Keep the *full* model's weights at the best validation AUC of all phases so far (in
    phase 1 the model being fitted may be the head alone). :class:`~covidxr.checkpoint.RunCheckpoint`
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
        from .checkpoint import variable_arrays

        self.best_weights = variable_arrays(self.full_model.weights)
        self.changed = True


class _StepTimer(keras.callbacks.Callback):
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


class _EpochRecorder(keras.callbacks.Callback):
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


def _schedules(patience):
    """Early stopping (keeping the phase's best weights) and ReduceLROnPlateau on validation AUC."""
    return (keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=patience,
                                          restore_best_weights=True),
            keras.callbacks.ReduceLROnPlateau(monitor="val_auc", mode="max", factor=0.2,
                                              patience=max(1, patience // 2), min_lr=1e-7))


def _metrics(num_classes):
    if num_classes == 2:
        return [keras.metrics.AUC(name="auc"), keras.metrics.AUC(curve="PR", name="pr_auc")]
    return [keras.metrics.AUC(name="auc", multi_label=True, num_labels=num_classes),
            keras.metrics.AUC(name="pr_auc", curve="PR", multi_label=True, num_labels=num_classes)]


def _loss(num_classes):
    return "binary_crossentropy" if num_classes == 2 else "categorical_crossentropy"


def _compile(model, *, num_classes, learning_rate, jit_compile="auto"):
    from .runtime import padding_masked

    # Training batches are padded to full size with zero-weight samples (see _train_batches):
    # the metrics count every real sample once and never the padding.
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=float(learning_rate)), loss=_loss(num_classes),
                  weighted_metrics=padding_masked(_metrics(num_classes)), jit_compile=jit_compile)


def _parallel(runtime) -> bool:
    return runtime is not None and runtime.num_replicas > 1


def _train_batches(sequence, *, batch_size, class_weight=None):
    """Training batches of one shape: the last, partial batch of an epoch is filled up to
    ``batch_size`` with copies of its own samples at sample weight 0 (they add nothing to the
    gradient or the metrics), and the class weights become sample weights (see
    :class:`covidxr.runtime.ReplicaBatches`). One batch shape means the train step is traced
    and compiled once per run, and, with the same architecture and batch size, the compiled step
    of one fold or strategy serves the next (JAX's compilation cache) instead of a new compile
    for every epoch length. The price: the loss of the padded batch is divided by the full
    batch size."""
    from .runtime import ReplicaBatches

    return ReplicaBatches(sequence, num_replicas=batch_size, class_weight=class_weight)


def _val_batches(runtime, sequence):
    """Validation batches: unpadded on one device (so ``val_loss`` is the plain mean); padded to
    a multiple of the replica count under data parallelism, which requires it."""
    return runtime.batches(sequence) if _parallel(runtime) else sequence


def _predict(model, data, *, batch_size) -> np.ndarray:
    """``model.predict`` in batches of one shape (the last one padded, the padding's rows cut),
    one row per input. ``batch_size`` is a multiple of the replica count under data
    parallelism, so full batches also split evenly over the devices."""
    from .runtime import predict_padded

    return predict_padded(model, data, num_replicas=batch_size, batch_size=batch_size)


def _class_weight(strategy, labels, num_classes):
    if strategy != "class-weight":
        return None
    from .sampling import class_weights

    return class_weights(labels, num_classes=num_classes)


# --------------------------------------------------------------------------- the two phases

def fit_head(model, train_images, train_labels, val_images, val_labels, *, num_classes, epochs,
             learning_rate=1e-3, batch_size=32, strategy="none", seed=0, cache_features=True,
             patience=5, callbacks=(), verbose="auto", initial_epoch=0, jit_compile="auto", runtime=None):
    """Phase 1: train only the head, the backbone frozen.

    Args:
        model: A :func:`covidxr.models.build_model` model (trained in place).
        train_images: uint8 (n, S, S, 1). train_labels: int class indices (n,).
        val_images: uint8 (m, S, S, 1). val_labels: int (m,).
        num_classes: Number of classes.
        epochs: Epochs (>= 1).
        learning_rate: Adam learning rate.
        batch_size: Batch size.
        strategy: Imbalance strategy (:data:`covidxr.sampling.STRATEGIES`).
        seed: Seed of shuffling and resampling.
        cache_features: Compute the frozen backbone's pooled output once and fit the shared
            head on it (no augmentation); False runs every image through the whole model
            (with its augmentation layers, if any).
        patience: Early stopping patience (validation AUC).
        callbacks: More Keras callbacks (get ``logs`` with ``val_auc`` etc.).
        verbose: Keras ``fit`` verbosity.
        initial_epoch: Epoch to start at (a resumed run); the batch order continues from it.
        jit_compile: Keras ``compile(jit_compile=...)``: ``"auto"``, True (XLA) or False.
        runtime: The :class:`covidxr.runtime.DataParallelRuntime` the model was built in
            (None: one device).

    Returns:
        ``(history, info)``: the Keras History and a dict with ``feature_seconds`` (time to
        compute the cached features, 0 without caching) and ``fit_seconds``.
    """
    backbone_layer(model).trainable = False
    class_weight = _class_weight(strategy, train_labels, num_classes)
    train_seq = _sequence(train_images, train_labels, num_classes=num_classes, batch_size=batch_size,
                          strategy=strategy, shuffle=True, seed=seed)
    train_seq.set_epoch(initial_epoch)
    val_seq = _sequence(val_images, val_labels, num_classes=num_classes, batch_size=batch_size)
    info = {"feature_seconds": 0.0}
    if cache_features:
        start = time.perf_counter()
        extractor = feature_model(model)
        plain = _sequence(train_images, train_labels, num_classes=num_classes, batch_size=batch_size)
        train_features = _predict(extractor, plain, batch_size=batch_size)
        val_features = _predict(extractor, val_seq, batch_size=batch_size)
        info["feature_seconds"] = time.perf_counter() - start
        info["feature_shape"] = list(train_features.shape)
        fitted = head_model(model)
        train_data = _FeatureSequence(train_seq, train_features)
        val_data = _FeatureSequence(val_seq, val_features)
    else:
        fitted, train_data, val_data = model, train_seq, val_seq
    _compile(fitted, num_classes=num_classes, learning_rate=learning_rate, jit_compile=jit_compile)
    train_data = _train_batches(train_data, batch_size=batch_size, class_weight=class_weight)
    val_data = _val_batches(runtime, val_data)
    start = time.perf_counter()
    # shuffle=False: the sequence shuffles and resamples with its own (seed, epoch) generator;
    # Keras' own shuffling of the batch order would draw from Python's global RNG, which a
    # resumed run cannot restore.
    history = fitted.fit(train_data, validation_data=val_data, epochs=int(epochs), initial_epoch=int(initial_epoch),
                         shuffle=False, callbacks=list(callbacks), verbose=verbose)
    info["fit_seconds"] = time.perf_counter() - start
    return history, info


def fine_tune(model, train_images, train_labels, val_images, val_labels, *, num_classes, epochs,
              learning_rate=1e-4, fine_tune_from="auto", batch_size=32, strategy="none", seed=0,
              callbacks=(), verbose="auto", initial_epoch=0, jit_compile="auto", runtime=None):
    """Phase 2: unfreeze the backbone from ``fine_tune_from`` and train on whole images.

    BatchNormalization layers stay frozen, hence in inference mode: their moving mean and
    variance do not change.

    Args:
        model: A :func:`covidxr.models.build_model` model, usually after :func:`fit_head`.
        fine_tune_from: Layer name, ``-N`` (last N layers), ``"auto"`` or ``"all"`` (see
            :func:`covidxr.models.resolve_fine_tune_from`).
        learning_rate: Adam learning rate (about a tenth of phase 1's).
        Other arguments: as :func:`fit_head`. The shuffling seed is offset by 1 so phase 2
        does not repeat phase 1's batch order.

    Returns:
        ``(history, info)`` with ``unfrozen`` (names of the unfrozen backbone layers that have
        weights), ``fine_tune_from_index`` and ``fit_seconds``.
    """
    index = resolve_fine_tune_from(model, fine_tune_from)
    unfrozen = set_trainable_from(model, index)
    class_weight = _class_weight(strategy, train_labels, num_classes)
    train_seq = _sequence(train_images, train_labels, num_classes=num_classes, batch_size=batch_size,
                          strategy=strategy, shuffle=True, seed=seed + 1)
    train_seq.set_epoch(initial_epoch)
    val_seq = _sequence(val_images, val_labels, num_classes=num_classes, batch_size=batch_size)
    _compile(model, num_classes=num_classes, learning_rate=learning_rate, jit_compile=jit_compile)
    train_data = _train_batches(train_seq, batch_size=batch_size, class_weight=class_weight)
    val_data = _val_batches(runtime, val_seq)
    start = time.perf_counter()
    history = model.fit(train_data, validation_data=val_data, epochs=int(epochs), initial_epoch=int(initial_epoch),
                        shuffle=False,
                        callbacks=list(callbacks), verbose=verbose)
    info = {"unfrozen": unfrozen, "fine_tune_from_index": index,
            "fine_tune_from_layer": backbone_layer(model).layers[index].name,
            "fit_seconds": time.perf_counter() - start}
    return history, info


# --------------------------------------------------------------------------- prediction, metrics

def predict_images(model, images, *, batch_size=32) -> np.ndarray:
    """Class probabilities (n, C) for uint8 images (n, S, S, 1); two classes give
    ``[1 - p, p]``. Under data parallelism, call it inside the run's scope with a batch size
    that divides by the replica count."""
    images = np.asarray(images)
    if len(images) == 0:
        width = max(2, int(model.outputs[0].shape[-1]))
        return np.zeros((0, width), np.float32)
    probs = np.asarray(_predict(model, images, batch_size=batch_size), dtype=np.float64)
    if probs.shape[-1] == 1:
        probs = np.concatenate([1.0 - probs, probs], axis=1)
    return probs


def part_metrics(labels, probs) -> dict:
    """Threshold-free figures of one part: ROC AUC, PR AUC (average precision) and log loss.

    Args:
        labels: int class indices (n,).
        probs: probabilities (n, C).

    Returns:
        ``{"images", "roc_auc", "pr_auc", "loss"}``; an AUC is None when the part lacks a class.
        Three classes: one-vs-rest macro averages.
    """
    from sklearn import metrics as skm

    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    num_classes = probs.shape[1]
    out = {"images": int(len(labels)), "roc_auc": None, "pr_auc": None, "loss": None}
    if len(labels) == 0:
        return out
    clipped = np.clip(probs, 1e-7, 1.0)
    clipped /= clipped.sum(axis=1, keepdims=True)
    out["loss"] = float(skm.log_loss(labels, clipped, labels=list(range(num_classes))))
    if len(np.unique(labels)) < 2:
        return out
    if num_classes == 2:
        out["roc_auc"] = float(skm.roc_auc_score(labels, probs[:, 1]))
        out["pr_auc"] = float(skm.average_precision_score(labels == 1, probs[:, 1]))
    elif len(np.unique(labels)) == num_classes:
        onehot = np.eye(num_classes)[labels]
        out["roc_auc"] = float(skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
        out["pr_auc"] = float(skm.average_precision_score(onehot, probs, average="macro"))
    return out


# --------------------------------------------------------------------------- the run

def _load_frame(config: TrainConfig) -> pd.DataFrame:
    from .data import load_dataset

    def none_if_blank(value):
        return None if value is None or str(value).lower() in ("", "all", "none") else value

    return load_dataset(
        config.data_dir, task=config.task, layout=config.layout,
        modality=none_if_blank(config.modality), views=config.views, image_col=config.image_col,
        label_col=config.label_col, patient_col=none_if_blank(config.patient_col),
    )


def _split_from_file(frame: pd.DataFrame, path, *, require_all=False) -> pd.DataFrame:
    """The rows of ``frame`` that the split CSV ``path`` names, with its ``part`` column.

    ``require_all``: every image of the file must be in ``frame`` (a resumed run's own split);
    else images the frame lacks are left out.
    """
    from .data import read_split

    parts = read_split(path).set_index("image")["part"]
    if require_all:
        missing = sorted(set(parts.index) - set(frame["image"]))
        if missing:
            raise ValueError(
                f"Expected the dataset to hold every image of the run's split.csv; {len(missing)} are gone "
                f"(the dataset changed since the run started). Received: missing={missing[:3]}"
            )
    split = frame[frame["image"].isin(parts.index)].copy()
    split["part"] = split["image"].map(parts)
    return split.reset_index(drop=True)


def _split(config: TrainConfig, frame: pd.DataFrame) -> pd.DataFrame:
    from .data import kfold_split, split_patients

    if config.split_file:
        return _split_from_file(frame, config.split_file)
    if config.folds:
        return kfold_split(frame, folds=config.folds, fold=config.fold, val_size=config.val_size, seed=config.seed)
    return split_patients(frame, val_size=config.val_size, test_size=config.test_size, seed=config.seed)


def _setup_logging(run_dir: Path):
    logger.setLevel(logging.INFO)
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    stream = logging.StreamHandler()
    stream.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.addHandler(stream)
    logger.propagate = False
    return [handler, stream]


def _class_counts(split: pd.DataFrame, classes) -> dict:
    table = {}
    for part in ("train", "val", "test"):
        sub = split[split["part"] == part]
        table[part] = {c: int((sub["label"] == c).sum()) for c in classes}
        table[part]["patients"] = int(sub["patient"].nunique())
    return table


def _report(run_dir: Path, config: dict, counts: dict, metrics: dict, classes) -> str:
    options = TrainConfig.from_dict(config).to_dict()
    lines = [f"# Run {run_dir.name}", "", f"> {RESEARCH_ONLY}", "", "## Settings", "",
             "| option | value |", "| --- | --- |"]
    for key, value in options.items():
        lines.append(f"| {key} | {value} |")
    lines += ["", f"Classes (model output order): {', '.join(classes)}. "
              f"Keras {config['keras_version']} ({config['keras_backend']} backend), covidxr {config['covidxr_version']}.",
              "", "## Images per class and part", "",
              "| part | " + " | ".join(classes) + " | patients |",
              "| --- | " + " | ".join("---" for _ in classes) + " | --- |"]
    for part, row in counts.items():
        lines.append(f"| {part} | " + " | ".join(str(row[c]) for c in classes) + f" | {row['patients']} |")
    lines += ["", "## Training curves", "", "![training curves](figures/training_curves.png)", "",
              f"Best validation ROC AUC {metrics.get('best_val_auc')} at epoch {metrics.get('best_epoch')} "
              f"(phase {metrics.get('best_phase')}).", "",
              "## Threshold-free metrics (best checkpoint)", "",
              "| part | images | ROC AUC | PR AUC | log loss |", "| --- | --- | --- | --- | --- |"]

    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    for part in ("val", "test"):
        m = metrics[part]
        lines.append(f"| {part} | {m['images']} | {fmt(m['roc_auc'])} | {fmt(m['pr_auc'])} | {fmt(m['loss'])} |")
    lines += ["", "Decision thresholds, confidence intervals and further figures: `covidxr evaluate`.", ""]
    return "\n".join(lines)


def train(config: TrainConfig) -> Path:
    """Run one two-phase training and write its run folder.

    Every option is checked, and the model built (which checks the weights and the
    fine-tuning layer), before the run folder is made and before any data is read. After
    every epoch the run's state is committed to ``RUN/checkpoint/`` (see
    :mod:`covidxr.checkpoint`), so a run that is killed can be continued with :func:`resume`.

    Args:
        config: The run's :class:`TrainConfig`.

    Returns:
        The run folder.

    Raises:
        ValueError: A bad option (unknown backbone, strategy, task; image size below the
            backbone's minimum; unknown fine-tuning layer; weights file of another
            architecture ...).
        FileNotFoundError: Missing weights file, split file or dataset.
        FileExistsError: ``run_name`` names an existing folder.
        ConnectionError: ImageNet weights requested but they cannot be downloaded.
    """
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    check_config(config)
    if config.run_name:  # refused now, before hours of loading and training; made after the checks
        _refuse_existing(Path(config.runs_dir).expanduser() / config.run_name)
    return _run(config)


def resume(run_dir, *, verbose=None) -> Path:
    """Continue a run that was interrupted (killed, out of time, machine restarted).

    The run's own ``config.json`` gives every option; its ``split.csv`` (when written) the
    split; ``checkpoint/state.json`` the last finished epoch: weights, optimizer, early
    stopping and learning-rate schedule, best model so far and the batch order. Training
    continues from there and the run ends with the same epochs as an uninterrupted one; the
    artifacts written after training (predictions, metrics, figures, report) are redone.

    Args:
        run_dir: The interrupted run folder.
        verbose: Keras progress (None: the run's own setting).

    Returns:
        The run folder, now finished.

    Raises:
        FileNotFoundError: No such folder, or it has no ``config.json`` (the run was killed
            before it wrote one: start a new run).
        ValueError: The run has finished already, or its dataset no longer holds its images.
    """
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise FileNotFoundError(f"Expected a run folder to resume. Received: run_dir={str(run_dir)!r}")
    path = run_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            "Expected a run folder with config.json; this run was stopped before it wrote one, so "
            f"there is nothing to continue: start a new run. Received: run_dir={str(run_dir)!r}"
        )
    record = json.loads(path.read_text())
    if record.get("finished"):
        raise ValueError(f"Expected an unfinished run; this one finished at {record['finished']} and is "
                         f"never overwritten. Received: run_dir={str(run_dir)!r}")
    config = TrainConfig.from_dict(record)
    if verbose is not None:
        config.verbose = verbose
    check_config(config)
    return _run(config, run_dir=run_dir, previous=record)


def _run_phase(phase, *, fit, model, folder, state, epochs, patience, saver, timer, history):
    """Run (or skip, or continue) one phase under a :class:`~covidxr.checkpoint.RunCheckpoint`.

    ``state`` is the last committed checkpoint state (None for a new run). Returns the
    phase's history rows and the fit's info dict (None when the phase had finished before).
    """
    from .atomic import load_arrays
    from .checkpoint import RunCheckpoint, set_arrays

    if state is not None and (state["phase"] > phase or (state["phase"] == phase and state["done"])):
        if state["phase"] == phase:  # finished before: continue from its end
            set_arrays(model.variables, load_arrays(folder / state["variables"]))
        return [row for row in state["history"] if row.get("phase") == phase], None
    resume_state, initial, base = None, 0, None
    if state is not None and state["phase"] == phase:  # started before
        base = state["base"]
        set_arrays(model.variables, load_arrays(folder / base))
        if state.get("variables"):
            resume_state, initial = state, int(state["next_epoch"])
            logger.info("phase %d: continuing after epoch %d", phase, initial)
    elif state is not None:  # the previous phase finished: the model holds its end state
        base = state["variables"]
    early_stopping, reduce_lr = _schedules(patience)
    recorder = _EpochRecorder(phase, offset=len(history))
    checkpoint = RunCheckpoint(folder, phase=phase, full_model=model, epochs=epochs, early_stopping=early_stopping,
                               reduce_lr=reduce_lr, recorder=recorder, saver=saver, history=history,
                               state=resume_state, base=base)
    _, info = fit(callbacks=[early_stopping, reduce_lr, recorder, saver, timer, checkpoint], initial_epoch=initial)
    info["checkpoint_seconds"] = checkpoint.seconds
    return list(recorder.rows), info


def _run(config: TrainConfig, *, run_dir=None, previous=None) -> Path:
    from .runtime import data_parallel_scope, enable_compilation_cache, precision_policy

    task = get_task(config.task)
    classes = list(task.classes)
    num_classes = task.num_classes
    previous_policy = keras.config.dtype_policy()
    started = datetime.now(timezone.utc)
    wall = time.perf_counter()
    keras.config.set_dtype_policy(precision_policy(config.mixed_precision))
    compilation_cache = enable_compilation_cache()  # JAX: folds and strategies reuse compiled steps
    handlers = []
    try:
        with data_parallel_scope(enabled=bool(config.data_parallel)) as runtime:
            return _run_in_scope(config, run_dir=run_dir, previous=previous, runtime=runtime, started=started,
                                 wall=wall, classes=classes, num_classes=num_classes, handlers=handlers,
                                 compilation_cache=compilation_cache)
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
        keras.config.set_dtype_policy(previous_policy)


def _run_in_scope(config, *, run_dir, previous, runtime, started, wall, classes, num_classes, handlers,
                  compilation_cache):
    from .atomic import atomic_path, remove_stale, write_json, write_text
    from .checkpoint import CHECKPOINT_DIR, read_state, restore_best
    from .images import build_cache
    from .runtime import check_memory

    batch_size = runtime.batch_size(config.batch_size)
    keras.utils.set_random_seed(int(config.seed))
    model = build_model(config.backbone, num_classes=num_classes, image_size=config.image_size,
                        weights=config.weights, dropout=config.dropout,
                        augmentation=({"hflip": bool(config.hflip)} if config.augment else None),
                        pooling=config.pooling, seed=int(config.seed))
    fine_tune_index = resolve_fine_tune_from(model, config.fine_tune_from) if config.fine_tune_epochs else None

    frame = _load_frame(config)
    resuming = run_dir is not None
    if resuming:
        remove_stale(run_dir)  # temporary files of the killed process
    if resuming and (run_dir / "split.csv").is_file():
        split = _split_from_file(frame, run_dir / "split.csv", require_all=True)
    else:
        split = _split(config, frame)
    memory = None
    if config.memory_check:  # before the run folder, the cache and hours of training
        memory = check_memory(model, batch_size=batch_size, train_images=int((split["part"] == "train").sum()),
                              image_size=int(config.image_size), num_replicas=runtime.num_replicas)
    if not resuming:
        run_dir = make_run_dir(config)
        # the options first, so that a run killed while building its cache can be resumed
        write_json(run_dir / "config.json", {**config.to_dict(), "run_dir": str(run_dir),
                                             "started": started.isoformat(timespec="seconds")})
    handlers += _setup_logging(run_dir)
    logger.info("%s run folder %s", "resuming" if resuming else "new", run_dir)
    logger.info("%s", RESEARCH_ONLY)

    start = time.perf_counter()
    cache = build_cache(split, image_size=int(config.image_size), resize=config.resize,
                        contrast=config.contrast, cache_dir=config.cache_dir, strict=False,
                        progress=bool(config.verbose))
    cache_seconds = time.perf_counter() - start
    kept = set(cache.rows["image"])
    if len(kept) < len(split):
        logger.warning("%d images could not be decoded and are left out", len(split) - len(kept))
    split = split[split["image"].isin(kept)].reset_index(drop=True)
    from .data import _check_parts, write_split

    _check_parts(split, classes)
    write_split(split, run_dir / "split.csv")
    counts = _class_counts(split, classes)
    logger.info("images per part and class: %s", counts)

    lookup = {c: i for i, c in enumerate(classes)}
    data = {}
    for part in ("train", "val", "test"):
        rows = split[split["part"] == part].reset_index(drop=True)
        data[part] = (rows, cache.select(rows["image"]), rows["label"].map(lookup).to_numpy(np.int64))

    options = config.to_dict()
    record = {
        **options,
        "classes": classes,
        "num_classes": num_classes,
        "positive_class": classes[1] if num_classes == 2 else None,
        "covidxr_version": __version__,
        "keras_version": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "python_version": platform.python_version(),
        "numpy_version": np.__version__,
        "dtype_policy": keras.config.dtype_policy().name,
        "runtime": {"data_parallel": runtime.enabled, "num_replicas": runtime.num_replicas,
                    "devices": [str(d) for d in runtime.devices], "batch_size": batch_size,
                    "jit_compile": config.jit_compile, "jax_compilation_cache": compilation_cache,
                    "memory_estimate_gib": None if memory is None else round(memory["total"] / 2 ** 30, 2),
                    "memory_available_gib": None if memory is None else round(memory["available"] / 2 ** 30, 2)},
        "resolved": {
            "fine_tune_learning_rate": config.resolved_fine_tune_learning_rate,
            "fine_tune_from_index": fine_tune_index,
            "fine_tune_from_layer": (backbone_layer(model).layers[fine_tune_index].name
                                     if fine_tune_index is not None else None),
        },
        "preprocessing": {
            "input": "uint8 grey, shape (image_size, image_size, 1); the model adds three "
                     "channels and the backbone's preprocess_input",
            "loader": "covidxr.images.load_image then covidxr.images.preprocess",
            **cache.settings,
        },
        "cache": {"key": cache.key, "path": str(cache.path), "settings": cache.settings,
                  "skipped": list(cache.skipped)},
        "class_counts": counts,
        "run_dir": str(run_dir),
        "started": (previous or {}).get("started") or started.isoformat(timespec="seconds"),
    }
    if resuming:
        record["resumed"] = list((previous or {}).get("resumed") or []) + [started.isoformat(timespec="seconds")]
    write_json(run_dir / "config.json", record)

    folder = run_dir / CHECKPOINT_DIR
    state = read_state(run_dir) if resuming else None
    saver = _SaveBest(model)
    restore_best(saver, state, folder)
    timer = _StepTimer()
    (_, x_train, y_train), (_, x_val, y_val) = (data["train"], data["val"])
    timing = {"cache_seconds": round(cache_seconds, 2)}
    common = dict(num_classes=num_classes, batch_size=batch_size, strategy=config.strategy, seed=config.seed,
                  verbose=config.verbose, jit_compile=config.jit_compile, runtime=runtime)

    logger.info("phase 1: head only, backbone frozen, %s, %d epochs, lr %.2e",
                "cached features" if config.cache_features else "full forward pass",
                config.epochs, config.learning_rate)

    def fit1(callbacks, initial_epoch):
        return fit_head(model, x_train, y_train, x_val, y_val, epochs=config.epochs,
                        learning_rate=config.learning_rate, cache_features=config.cache_features,
                        patience=config.patience, callbacks=callbacks, initial_epoch=initial_epoch, **common)

    rows, info1 = _run_phase(1, fit=fit1, model=model, folder=folder, state=state, epochs=config.epochs,
                             patience=config.patience, saver=saver, timer=timer, history=[])
    checkpoint_seconds = 0.0
    if info1 is not None:
        timing["phase1_feature_seconds"] = round(info1["feature_seconds"], 2)
        timing["phase1_fit_seconds"] = round(info1["fit_seconds"], 2)
        checkpoint_seconds += info1["checkpoint_seconds"]
    if config.fine_tune_epochs:
        logger.info("phase 2: fine-tuning from %s (backbone layer %d), %d epochs, lr %.2e",
                    record["resolved"]["fine_tune_from_layer"], fine_tune_index,
                    config.fine_tune_epochs, config.resolved_fine_tune_learning_rate)

        def fit2(callbacks, initial_epoch):
            return fine_tune(model, x_train, y_train, x_val, y_val, epochs=config.fine_tune_epochs,
                             learning_rate=config.resolved_fine_tune_learning_rate,
                             fine_tune_from=config.fine_tune_from, callbacks=callbacks,
                             initial_epoch=initial_epoch, **common)

        rows2, info2 = _run_phase(2, fit=fit2, model=model, folder=folder, state=read_state(run_dir),
                                  epochs=config.fine_tune_epochs, patience=config.patience, saver=saver,
                                  timer=timer, history=rows)
        if info2 is not None:
            timing["phase2_fit_seconds"] = round(info2["fit_seconds"], 2)
            checkpoint_seconds += info2["checkpoint_seconds"]
        record["resolved"]["unfrozen_layers"] = len(set_trainable_from(model, fine_tune_index))
        rows += rows2
    timing.update(first_step_seconds=round(timer.first_step, 2), steady_step_seconds=round(timer.steady_steps, 2),
                  train_steps=timer.steps, validation_seconds=round(timer.validation, 2),
                  checkpoint_seconds=round(checkpoint_seconds, 2))

    model_path = run_dir / "model.keras"
    if saver.best_weights is not None:
        from .checkpoint import set_arrays

        set_arrays(model.weights, saver.best_weights, what="weights")
    else:  # validation AUC never finite: keep the last weights
        logger.warning("validation AUC was never finite; model.keras holds the last weights")
    with atomic_path(model_path) as tmp:
        model.save(tmp)

    history = pd.DataFrame(rows)
    write_text(run_dir / "history.csv", history.to_csv(index=False))
    from .plots import plot_training_curves, save_figure

    axes = plot_training_curves(history)
    axes[0].figure.suptitle(f"{config.backbone} · {config.task} · {config.strategy}", fontsize=9)
    save_figure(axes[0].figure, run_dir / "figures" / "training_curves.png")

    start = time.perf_counter()
    best, _ = load_run(run_dir, config=record)
    frames, metrics = [], {}
    for part in ("val", "test"):
        rows_p, x, y = data[part]
        probs = predict_images(best, x, batch_size=batch_size)
        out = rows_p[["image", "patient", "label", "part"]].copy()
        for i, c in enumerate(classes):
            out[f"prob_{c}"] = probs[:, i]
        frames.append(out)
        metrics[part] = {**part_metrics(y, probs), "patients": int(rows_p["patient"].nunique())}
    timing["predict_seconds"] = round(time.perf_counter() - start, 2)
    write_text(run_dir / "predictions.csv", pd.concat(frames, ignore_index=True).to_csv(index=False))
    best_row = history.loc[history["val_auc"].idxmax()] if "val_auc" in history and history["val_auc"].notna().any() else None
    metrics.update({
        "classes": classes,
        "best_epoch": None if best_row is None else int(best_row["epoch"]),
        "best_phase": None if best_row is None else int(best_row["phase"]),
        "best_val_auc": None if best_row is None else float(best_row["val_auc"]),
        "epochs_run": {"phase1": int((history["phase"] == 1).sum()),
                       "phase2": int((history["phase"] == 2).sum())},
    })
    write_json(run_dir / "metrics.json", metrics)

    timing["wall_seconds"] = round(time.perf_counter() - wall, 2)
    known = ("cache_seconds", "phase1_feature_seconds", "first_step_seconds", "steady_step_seconds",
             "validation_seconds", "checkpoint_seconds", "predict_seconds")
    timing["other_seconds"] = round(timing["wall_seconds"] - sum(timing.get(k, 0.0) for k in known), 2)
    write_text(run_dir / "report.md", _report(run_dir, record, counts, metrics, classes))
    record.update({"timing": timing, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    write_json(run_dir / "config.json", record)  # "finished" is written last: the run is complete
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    logger.info("val %s | test %s", metrics["val"], metrics["test"])
    logger.info("done in %.1f s: %s", timing["wall_seconds"], run_dir)
    return run_dir


# --------------------------------------------------------------------------- using a run

def load_run(run_dir, *, config=None):
    """Load a run's best model (``safe_mode=True``) and its ``config.json``.

    Args:
        run_dir: The run folder.
        config: The config dict, when already in memory.

    Returns:
        ``(model, config_dict)``.
    """
    import covidxr.models  # noqa: F401  registers the custom layers

    run_dir = Path(run_dir)
    path = run_dir / "model.keras"
    if not path.is_file():
        raise FileNotFoundError(f"Expected a run folder with model.keras. Received: run_dir={str(run_dir)!r}")
    if config is None:
        config_path = run_dir / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"Expected a run folder with config.json. Received: run_dir={str(run_dir)!r}")
        config = json.loads(config_path.read_text())
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except ValueError as err:
        if "safe_mode" in str(err) or "lambda" in str(err).lower():
            raise ValueError(
                "Refusing to load model.keras: it holds code that would run on loading (e.g. a "
                "Lambda layer), which covidxr never saves; only load models from sources you trust "
                f"and made with covidxr. Received: run_dir={str(run_dir)!r}"
            ) from err
        raise
    return model, config


def predict_frame(run_dir, frame: pd.DataFrame, *, batch_size=32, model=None, config=None) -> np.ndarray:
    """Class probabilities for the images of ``frame``, preprocessed as the run was.

    Args:
        run_dir: A run folder.
        frame: Rows with a ``path`` column (FRAME_COLUMNS layout).
        batch_size: Prediction batch size.
        model, config: Already-loaded :func:`load_run` results (optional).

    Returns:
        float64 (n, C) in the run's class order; two classes give ``[1 - p, p]``.
    """
    from .images import load_image, preprocess
    from .predict import preprocessing_settings

    if model is None or config is None:
        model, config = load_run(run_dir)
    if "path" not in frame.columns:
        raise ValueError(f"Expected a frame with a 'path' column. Received: columns={list(frame.columns)}")
    settings = preprocessing_settings(config)
    size = settings["image_size"]
    images = np.zeros((len(frame), size, size, 1), np.uint8)
    for i, path in enumerate(frame["path"]):
        images[i, ..., 0] = preprocess(load_image(path), **settings)
    return predict_images(model, images, batch_size=batch_size)
