"""``covidxr train``: one two-phase transfer-learning run, written into a new run folder.
Must not hold the training, scoring or drawing itself: it calls the lower layers in named steps
(build → prepare data → train phases → write artefacts) and writes what they return.

:func:`train` does one run, as the Keras transfer-learning guide does it:

1. **Phase 1** fits only the head, the backbone frozen. The pooled backbone output of every
   training and validation image is computed once (with ``feature_store=True``, the default, read
   from the frozen-feature store beside the image cache, :mod:`covidxr.images.feature_store`, which
   computes them once for every image of the cache for every later run with the same backbone,
   weights and settings). With ``head="linear"`` (the default) the head is a logistic regression
   on the standardised features, its C chosen by group cross-validation inside the training part
   and fitted to convergence (:mod:`covidxr.training.linear`): one history row. ``head="gradient"``
   trains it with ``epochs`` of Adam instead (``cache_features=False``: through the whole model,
   with its augmentation). With random weights (``weights="none"``) the backbone's
   BatchNormalization statistics are first set to the training images'
   (:func:`covidxr.training.calibrate_batchnorm`).
2. **Phase 2** unfreezes the backbone from a layer (``fine_tune_from``: a layer name, ``-N``
   for the last N layers, ``"auto"`` for the registry's last block or ``"all"``) and trains
   on whole images, with augmentation, at a learning rate a hundred times lower than phase 1's
   (1e-5: Adam's first steps move every weight by about the rate, whatever its gradient, and
   1e-4 undid phase 1 at once). Pretrained
   BatchNormalization layers stay frozen and so in inference mode (their moving statistics
   never change; see :func:`covidxr.models.set_trainable_from`); random-weight ones train.
   ``fine_tune_epochs=0`` skips it.

Both phases use early stopping and ReduceLROnPlateau on the exact validation loss
(``history.csv``'s ``val_loss``), an epoch counting as better only when it lowers the loss by more than
:data:`covidxr.training.MIN_DELTA`; the best full model over both phases by the same rule is saved as
``model.keras`` (so the phase-1 head is kept unless fine-tuning lowers the validation loss by more
than that); ``metrics.json`` has ``phase1_train_auc`` (the head's, exact) and ``phase1_head`` (C,
iterations, convergence, ``augmented_copies``: with fine-tuning through augmentation the head is
fitted on :data:`~covidxr.training.linear.AUGMENTED_COPIES` augmented copies of each training image
too, so phase 2 starts from a head fitted to what it trains on). Every run writes a new folder
(see :func:`make_run_dir`)::

    config.json  split.csv  history.csv  model.keras  predictions.csv  metrics.json
    figures/training_curves.png  train.log  report.md  tensorboard/

``tensorboard/`` holds TensorBoard event files, one point per epoch of both phases
(:mod:`covidxr.training.tensorboard`; none with ``tensorboard=False`` or without the ``tensorboard``
package). With ``mlflow`` (a tracking URI) the run is also an MLflow run (:mod:`covidxr.tracking`),
whose id ``config.json["mlflow"]`` records.

``covidxr train --config RUN/config.json`` repeats a run into a new folder;
:func:`covidxr.inference.load_run` and :func:`covidxr.inference.predict_frame` use a finished one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from functools import partial
from datetime import datetime, timezone
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from . import RESEARCH_ONLY
from .artifacts import mlflow_block, write_artifacts, write_run_record
from .atomic import read_json_object, remove_stale
from .config import (TrainConfig, check_config, check_data_dir, check_data_record, data_record, load_frame,
                     make_split, resolve_verbose, split_from_file)
from .data import SPLIT_VERSION, check_parts, get_task, split_sizes, write_split
from .data.groups import group_column
from .images import HashIndex, build_cache
from .locks import LOCK_NAME, acquire
from .lungmasks import lung_mask_files, segmenter_for
from .models import build_model, resolve_fine_tune_from, set_trainable_from
from .records import check_record, recorded_path, write_recorded_json
from .runfolder import (check_cache_folder, check_writable, logger, make_run_dir, parts_table,
                        refuse_existing, run_name, setup_logging)
from .runtime import check_memory, data_parallel_scope, enable_compilation_cache, precision_policy
from .tracking import EpochMetrics, Tracking, check_server, open_run_tracking
from .training import (CHECKPOINT_DIR, SaveBest, StepTimer, calibrate_batchnorm, fine_tune, fit_head, read_state,
                       restore_best, run_phase, tensorboard_writer)
from .training.frozen import stored_features
from .training.linear import AUGMENTED_COPIES, fit_linear_head

__all__ = ["TrainConfig", "make_run_dir", "resume", "run_name", "train"]


def train(config: TrainConfig, *, mlflow=None, expect_data=None) -> Path:
    """Run one two-phase training and write its run folder.

    Every option is checked, and the model built (which checks the weights and the
    fine-tuning layer), before the run folder is made and before any data is read. After
    every epoch (every ``checkpoint_every``-th) the run's state is committed to ``RUN/checkpoint/`` (see
    :mod:`covidxr.training.checkpoint`), so a run that is killed can be continued with :func:`resume`.

    Args:
        config: The run's :class:`TrainConfig`.
        mlflow: Track the run in MLflow: a tracking URI, or a :class:`covidxr.tracking.Tracking`
            (a grid's child run); None: no tracking.
        expect_data: The ``data`` record of an earlier run's ``config.json`` (see
            :func:`covidxr.config.data_record`): the data read must have its fingerprint.

    Returns:
        The run folder. Its ``config.json`` holds ``data_dir`` resolved to an absolute path
        (from ``$COVIDXR_DATA_DIR`` or the default when the option is None) and the ``data``
        record: folder, layout and fingerprint.

    Raises:
        ValueError: A bad option (unknown backbone, strategy, task; image size below the
            backbone's minimum; unknown fine-tuning layer; weights file of another
            architecture ...); data whose fingerprint is not ``expect_data``'s.
        FileNotFoundError: Missing weights file, split file or dataset.
        PermissionError: A read-only runs folder.
        FileExistsError: ``run_name`` names an existing folder.
        ConnectionError: ImageNet weights requested but they cannot be downloaded, or the MLflow
            tracking server does not answer.
    """
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    check_config(config)
    root, _ = check_data_dir(config)  # a wrong --data-dir is reported before any model is built or weights fetched
    config = replace(config, data_dir=str(root.expanduser().resolve()))  # a new shell finds the same data
    check_writable(config.runs_dir)  # a read-only runs folder too
    if config.run_name:  # refused now, before hours of loading and training; made after the checks
        refuse_existing(Path(config.runs_dir).expanduser() / config.run_name)
    target = Tracking.of(mlflow)
    if target is not None:
        check_server(target.uri)
    return _run(config, tracking=target, expect_data=expect_data)


def resume(run_dir, *, verbose=None, mlflow=None) -> Path:
    """Continue a run that was interrupted (killed, out of time, machine restarted).

    The run's own ``config.json`` gives every option; its ``split.csv`` (when written) the
    split; ``checkpoint/state.json`` the last finished epoch: weights, optimizer, early
    stopping and learning-rate schedule, best model so far and the batch order. Training
    continues from there and the run ends with the same epochs as an uninterrupted one; the
    artifacts written after training (predictions, metrics, figures, report) are redone.

    Args:
        run_dir: The interrupted run folder.
        verbose: Keras progress (None: the run's own setting).
        mlflow: A tracking URI: where the run's MLflow run is (default: the one ``config.json``
            records), or where to start one for a run that had none. A run tracked before is
            always continued in its MLflow run.

    Returns:
        The run folder, now finished.

    Raises:
        FileNotFoundError: No such folder, or it has no ``config.json`` (the run was killed
            before it wrote one: start a new run).
        ValueError: The run has finished already, or its dataset no longer holds its images;
            its ``config.json`` is damaged, not an object, lacks an option or holds one of the
            wrong type (:meth:`TrainConfig.from_dict`, ``strict`` and ``complete``).
    """
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise FileNotFoundError(f"Expected a run folder to resume. Received: run_dir={str(run_dir)!r}")
    lock = acquire(run_dir / LOCK_NAME, what=f"run folder {run_dir}")  # a second resume: one line naming us
    try:
        return _resume(run_dir, verbose=verbose, mlflow=mlflow, lock=lock)
    finally:
        lock.release()


def _resume(run_dir: Path, *, verbose, mlflow, lock) -> Path:
    """:func:`resume` once the run folder is held: its files checked against its record, then run."""
    check_record(run_dir, ["config.json", "split.csv"], what="run folder")
    path = run_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            "Expected a run folder with config.json; this run was stopped before it wrote one, so "
            f"there is nothing to continue: start a new run. Received: run_dir={str(run_dir)!r}"
        )
    record = read_json_object(path, what="the run's options")
    if record.get("finished"):
        raise ValueError(f"Expected an unfinished run; this one finished at {record['finished']} and is "
                         f"never overwritten. Received: run_dir={str(run_dir)!r}")
    config = TrainConfig.from_dict(record, strict=True, complete=True, source=str(path))
    if verbose is not None:
        config.verbose = verbose
    check_config(config)
    check_data_dir(config)
    check_writable(run_dir, what="run_dir")
    target = Tracking.of(mlflow)
    uri = target.uri if target is not None else (record.get("mlflow") or {}).get("tracking_uri")
    if uri:
        check_server(uri)
    return _run(config, run_dir=run_dir, previous=record, tracking=target, lock=lock)


# --------------------------------------------------------------------------- the run, step by step

@dataclass
class RunState:
    """What the steps of one run hand to each other (built up as the run goes)."""

    config: TrainConfig
    run_dir: Path | None
    previous: dict | None
    runtime: object
    started: datetime
    wall: float
    compilation_cache: bool
    handlers: list = field(default_factory=list)
    model: object = None
    fine_tune_index: int | None = None
    split: pd.DataFrame | None = None
    cache: object = None
    data: dict = field(default_factory=dict)
    history: pd.DataFrame | None = None
    record: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)
    target: object = None  # covidxr.tracking.Tracking asked for
    tracked: object = None  # its open covidxr.tracking.MlflowRun
    writers: list = field(default_factory=list)  # per-epoch writers (TensorBoard, MLflow)
    lock: object = None  # the run folder's covidxr.locks.Lock
    expect_data: dict | None = None  # the data record the data read must match (None: any)
    data_record: dict = field(default_factory=dict)  # covidxr.config.data_record of the data read

    @property
    def classes(self) -> list:
        return list(get_task(self.config.task).classes)

    @property
    def resuming(self) -> bool:
        return self.previous is not None

    @property
    def batch_size(self) -> int:
        """The global batch size (rounded up to a multiple of the devices under data parallelism)."""
        return self.runtime.batch_size(self.config.batch_size)


def _run(config: TrainConfig, *, run_dir=None, previous=None, tracking=None, lock=None, expect_data=None) -> Path:
    """Set the precision and devices, run the steps, and restore the global state afterwards."""
    previous_policy = keras.config.dtype_policy()
    started = datetime.now(timezone.utc)
    wall = time.perf_counter()
    keras.config.set_dtype_policy(precision_policy(config.mixed_precision))
    compilation_cache = enable_compilation_cache()  # JAX: folds and strategies reuse compiled steps
    state = None
    try:
        with data_parallel_scope(enabled=bool(config.data_parallel)) as runtime:
            state = RunState(config, run_dir, previous, runtime, started, wall, compilation_cache, target=tracking,
                             lock=lock, expect_data=expect_data or (previous or {}).get("data"))
            _build(state)
            memory = _prepare_data(state)
            write_run_record(state, memory)
            saver = _train_phases(state)
            write_artifacts(state, saver)
            return state.run_dir
    except BaseException as err:
        if state is not None and state.tracked is not None:  # resumable: --resume sets it running again
            state.tracked.set_status("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        if isinstance(err, KeyboardInterrupt) and state is not None and state.run_dir is not None \
                and (state.run_dir / "config.json").is_file():
            err.run_dir = state.run_dir  # the command line says `--resume RUN` continues it
        raise
    finally:
        for writer in (state.writers if state is not None else []):
            getattr(writer, "close", lambda: None)()
        for handler in (state.handlers if state is not None else []):
            logger.removeHandler(handler)
            handler.close()
        keras.config.set_dtype_policy(previous_policy)
        if state is not None and state.lock is not None and state.lock is not lock:  # a new run's own lock
            state.lock.release()


def _build(state: RunState) -> None:
    """Build the model (which checks the weights and the fine-tuning layer) before any data is read."""
    config = state.config
    keras.utils.set_random_seed(int(config.seed))
    state.model = build_model(config.backbone, num_classes=len(state.classes), image_size=config.image_size,
                              weights=config.weights, dropout=config.dropout,
                              augmentation=({"hflip": bool(config.hflip)} if config.augment else None),
                              pooling=config.pooling, seed=int(config.seed), feature_layer=config.feature_layer)
    state.fine_tune_index = (resolve_fine_tune_from(state.model, config.fine_tune_from)
                             if config.fine_tune_epochs else None)


def _prepare_data(state: RunState) -> dict | None:
    """Read and split the data, check the memory, make the run folder, build the cache, write
    ``split.csv``; return the memory estimate (None when the check is off)."""
    config = state.config
    hash_index = HashIndex(config.cache_dir)  # saved after the memory check: a refused run writes nothing
    frame = load_frame(config, hash_index=hash_index)
    state.data_record = data_record(config, frame)
    check_data_record(state.expect_data, state.data_record)  # before the run folder: a refused run writes nothing
    if state.resuming:
        remove_stale(state.run_dir)  # temporary files of the killed process
    if state.resuming and (state.run_dir / "split.csv").is_file():
        split = split_from_file(frame, state.run_dir / "split.csv", require_all=True)
    else:
        split = make_split(config, frame)
    state.record = {"split_version": SPLIT_VERSION, "split_sizes": split.attrs.get("split_sizes") or split_sizes(split),
                    "merged_groups": len((frame.attrs.get("duplicates") or {}).get("merged_groups") or []),
                    "same_patients_used": frame.attrs.get("same_patients")}  # the file --same-patients resolved to
    check_cache_folder(config, split)
    memory = None
    if config.memory_check:  # before the run folder, the cache and hours of training
        memory = check_memory(state.model, batch_size=state.batch_size, train_images=int((split["part"] == "train").sum()),
                              image_size=int(config.image_size), num_replicas=state.runtime.num_replicas)
    hash_index.save()
    if not state.resuming:
        state.run_dir = make_run_dir(config)
        state.lock = acquire(state.run_dir / LOCK_NAME, what=f"run folder {state.run_dir}")
    state.tracked = open_run_tracking(state.target, run_dir=state.run_dir, config=config.to_dict(),
                                      previous=state.previous)
    if not state.resuming:
        # the options first, so that a run killed while building its cache can be resumed
        write_recorded_json(state.run_dir / "config.json", {**config.to_dict(), "data": state.data_record,
                                                            **mlflow_block(state), "run_dir": str(state.run_dir),
                                                            "started": state.started.isoformat(timespec="seconds")})
    state.handlers += setup_logging(state.run_dir)
    logger.info("%s run folder %s", "resuming" if state.resuming else "new", state.run_dir)
    if state.tracked is not None:
        logger.info("MLflow run %s at %s", state.tracked.run_id, state.tracked.uri)
    logger.info("%s", RESEARCH_ONLY)
    found = state.data_record
    logger.info("data: %s (%s layout; %s sha256 %s, %d images)", found["dir"], found["layout"],
                found["fingerprint"]["file"] or "image list", found["fingerprint"]["sha256"][:12],
                found["fingerprint"]["images"])
    for message in frame.attrs.get("data_warnings") or []:   # the console had their one-line summary
        logger.debug("data warning: %s", message)
    _cache_parts(state, split)
    return memory


def _cache_parts(state: RunState, split: pd.DataFrame) -> None:
    """Decode the split's images once (the cache), leave out those that cannot be decoded, write
    ``split.csv`` and keep ``(rows, images, labels)`` per part."""
    config, classes = state.config, state.classes
    start = time.perf_counter()
    framed = split
    if config.lungs != "none":  # the bundled segmenter's masks, stored once per image beside the caches
        framed = split.assign(lung_mask=lung_mask_files(split, cache_dir=config.cache_dir).to_numpy())
        state.record["lungs_segmenter"] = segmenter_for(None)[1]["sha256"]
    cache = build_cache(framed, image_size=int(config.image_size), resize=config.resize,
                        contrast=config.contrast, cache_dir=config.cache_dir, strict=False,
                        progress=resolve_verbose(config.verbose) != 0, lungs=config.lungs, workers=config.workers)
    state.timing["cache_seconds"] = round(time.perf_counter() - start, 2)
    kept = set(cache.rows["image"])
    own = state.run_dir / "split.csv"
    if state.resuming and own.is_file() and len(kept) < len(split):  # never rewrite the run's own split
        raise ValueError(f"Expected every image of the run's split.csv to decode as when the run started; "
                         f"{len(split) - len(kept)} no longer do (the dataset changed). Received: run_dir="
                         f"{str(state.run_dir)!r}")
    if len(kept) < len(split):
        logger.warning("%d images could not be decoded and are left out", len(split) - len(kept))
    split = split[split["image"].isin(kept)].reset_index(drop=True)
    check_parts(split, classes)
    if not (state.resuming and own.is_file()):  # --resume never writes back a file it did not produce
        with recorded_path(own, folder=state.run_dir) as tmp:
            write_split(split, tmp)
    state.split, state.cache = split, cache
    merged = state.record["merged_groups"]
    note = f" ({_count(merged, 'split group')} of patients who share an image)" if merged else ""
    logger.info("images per part%s:\n%s", note, parts_table(split, classes))
    lookup = {c: i for i, c in enumerate(classes)}
    for part in ("train", "val", "test"):
        rows = split[split["part"] == part].reset_index(drop=True)
        state.data[part] = (rows, cache.select(rows["image"]), rows["label"].map(lookup).to_numpy(np.int64))


def _epoch_writers(state: RunState) -> list:
    """The writers of checkpointed history rows: TensorBoard (``config.tensorboard``, where the
    ``tensorboard`` package imports) and MLflow (a tracked run)."""
    writers = []
    if state.config.tensorboard:
        writer = tensorboard_writer(state.run_dir)
        writers += [writer] if writer is not None else []
    if state.tracked is not None:
        writers.append(EpochMetrics(state.tracked))
    return writers


def _keras_verbose(verbose) -> int:
    """Keras' ``fit`` verbosity: none for ``"auto"`` (the run prints its own line per epoch, with a
    step bar on a terminal: :class:`covidxr.training.callbacks.StepProgress`), else as given."""
    return 0 if verbose == "auto" else resolve_verbose(verbose)


def _count(n: int, noun: str) -> str:
    """``"1 epoch"``, ``"10 epochs"``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _train_phases(state: RunState) -> SaveBest:
    """Phase 1 (head, frozen backbone) and phase 2 (fine-tuning), each resumable from the
    checkpoint; return the keeper of the best full model."""
    config, model, timing = state.config, state.model, state.timing
    folder = state.run_dir / CHECKPOINT_DIR
    saver, timer = SaveBest(model), StepTimer()
    committed = read_state(state.run_dir) if state.resuming else None  # the last checkpoint, once
    restore_best(saver, committed, folder)
    (_, x_train, y_train), (_, x_val, y_val) = state.data["train"], state.data["val"]
    common = dict(num_classes=len(state.classes), batch_size=state.batch_size,
                  strategy=config.strategy, seed=config.seed, verbose=_keras_verbose(config.verbose),
                  jit_compile=config.jit_compile, runtime=state.runtime)
    state.writers = _epoch_writers(state)
    phase = dict(model=model, folder=folder, patience=config.patience, saver=saver, timer=timer,
                 checkpoint_every=config.checkpoint_every, writers=state.writers, progress=config.verbose == "auto")
    random_weights = _start_phase1(state)
    linear = config.head == "linear"
    groups = state.data["train"][0][group_column(state.data["train"][0])].astype(str).to_numpy()

    def fit1(callbacks, initial_epoch):
        stored = _stored_features(state)  # None: computed in fit_head (no store, or --no-cache-features)
        copies = AUGMENTED_COPIES if config.fine_tune_epochs and config.augment else 0  # phase 2's distribution
        fit = partial(fit_linear_head, groups=groups, augmented_copies=copies) if linear else partial(
            fit_head, epochs=config.epochs, cache_features=config.cache_features, patience=config.patience)
        history, info = fit(model, x_train, y_train, x_val, y_val, learning_rate=config.learning_rate,
                            features=stored[:2] if stored else None, callbacks=callbacks,
                            initial_epoch=initial_epoch, **common)
        info["feature_seconds"] = stored[2] if stored else info["feature_seconds"]
        return history, info

    rows, info1 = run_phase(1, fit=fit1, state=committed,
                            epochs=1 if linear else config.epochs, history=[], **phase)
    checkpoint_seconds, validation_seconds = 0.0, 0.0
    if info1 is not None:
        timing["phase1_feature_seconds"] = round(info1["feature_seconds"], 2)
        timing["phase1_fit_seconds"] = round(info1["fit_seconds"], 2)
        checkpoint_seconds += info1["checkpoint_seconds"]
        validation_seconds += info1["validation_seconds"]
        auc = info1["train_auc"]
        state.record["phase1_train_auc"] = float(auc) if np.isfinite(auc) else None  # kept for a resume
        if info1.get("head"):
            state.record["phase1_head"] = info1["head"]  # C, CV AUC per C, iterations, convergence
        write_recorded_json(state.run_dir / "config.json", state.record, folder=state.run_dir)
    elif state.previous and "phase1_train_auc" in state.previous:
        state.record["phase1_train_auc"] = state.previous["phase1_train_auc"]
        if state.previous.get("phase1_head"):
            state.record["phase1_head"] = state.previous["phase1_head"]
    if config.fine_tune_epochs:
        logger.info("phase 2: fine-tuning from %s (backbone layer %d), %s, lr %.2e",
                    state.record["resolved"]["fine_tune_from_layer"], state.fine_tune_index,
                    _count(config.fine_tune_epochs, "epoch"), config.resolved_fine_tune_learning_rate)

        def fit2(callbacks, initial_epoch):
            return fine_tune(model, x_train, y_train, x_val, y_val, epochs=config.fine_tune_epochs,
                             learning_rate=config.resolved_fine_tune_learning_rate,
                             fine_tune_from=config.fine_tune_from, callbacks=callbacks,
                             initial_epoch=initial_epoch, train_batchnorm=random_weights, **common)

        rows2, info2 = run_phase(2, fit=fit2, state=read_state(state.run_dir), epochs=config.fine_tune_epochs,
                                 history=rows, **phase)
        if info2 is not None:
            timing["phase2_fit_seconds"] = round(info2["fit_seconds"], 2)
            checkpoint_seconds += info2["checkpoint_seconds"]
            validation_seconds += info2["validation_seconds"]
        state.record["resolved"]["unfrozen_layers"] = len(set_trainable_from(model, state.fine_tune_index,
                                                                                train_batchnorm=random_weights))
        rows += rows2
    timing.update(first_step_seconds=round(timer.first_step, 2), steady_step_seconds=round(timer.steady_steps, 2),
                  train_steps=timer.steps, validation_seconds=round(timer.validation + validation_seconds, 2),
                  checkpoint_seconds=round(checkpoint_seconds, 2))
    state.history = pd.DataFrame(rows)
    for writer in state.writers:  # epochs of a phase that had finished before a resume
        writer.sync(rows)
    return saver


def _start_phase1(state: RunState) -> bool:
    """Log phase 1's method; with random weights, set the backbone's BatchNormalization statistics
    to the training images' (before phase 1's features; a resume restores the same ones from the
    checkpoint). Return whether the weights are random (their BatchNormalization layers train in phase 2)."""
    config = state.config
    if config.head == "linear":
        logger.info("phase 1: head only, backbone frozen: logistic regression, C by group cross-validation")
    else:
        logger.info("phase 1: head only, backbone frozen, %s, %s, lr %.2e",
                    "cached features" if config.cache_features else "full forward pass",
                    _count(config.epochs, "epoch"), config.learning_rate)
    if config.weights not in (None, "none"):
        return False
    layers = calibrate_batchnorm(state.model, state.data["train"][1], batch_size=state.batch_size)
    state.record["resolved"]["batchnorm_calibrated"] = layers
    logger.info("random weights: %d BatchNormalization layers set to the training images' statistics; "
                "they train in phase 2", layers)
    return True


def _stored_features(state: RunState):
    """``(train, val, seconds)``: phase 1's raw pooled features of the run's train and val parts
    from the frozen-feature store, which computes (once, for every image of the run's cache) those
    it lacks; recorded in ``config.json["phase1_features"]``. None when the store is off."""
    config = state.config
    if not (config.cache_features and config.feature_store):
        return None
    features, info = stored_features(state.model, state.cache.images, cache_dir=config.cache_dir,
                                     resize=config.resize, contrast=config.contrast, seed=config.seed,
                                     batch_size=state.batch_size, lungs=config.lungs)
    logger.info("feature store %s: %d images read, %d computed in %.1f s", info["key"], info["reused"],
                info["computed"], info["seconds"])
    state.record["phase1_features"] = {k: info[k] for k in ("key", "path", "reused", "computed", "damaged")}
    index = pd.Index(state.cache.rows["image"])
    train, val = (features[index.get_indexer(state.data[part][0]["image"])] for part in ("train", "val"))
    return train, val, info["seconds"]
