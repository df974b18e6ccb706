"""The two phases of transfer learning: the head on a frozen backbone, then fine-tuning;
and running one phase under the per-epoch checkpoint.
Must not read data, make run folders or draw: it trains a built model on arrays it is given.

Phase 1 adapts the model's feature standardisation (:class:`covidxr.models.FeatureNorm`) to the
training part's raw pooled features, so the head sees standardised inputs whatever the
backbone's feature scale (raw VGG features reach ~250); phase 2 keeps it as it is. In both
phases :class:`~covidxr.training.callbacks.ExactValidation` computes the validation figures that
early stopping, the schedule and the best checkpoint follow.
"""

from __future__ import annotations

import logging
import time
import warnings

import keras
import numpy as np

from ..atomic import load_arrays
from ..models import LAYER_NAMES, backbone_layer, feature_model, head_model, resolve_fine_tune_from, set_trainable_from
from ..runtime import padding_masked
from . import frozen
from .batches import FeatureSequence, class_weight_for, make_sequence, predict_batches, train_batches
from .callbacks import EpochRecorder, ExactValidation, HistoryWriters, StepProgress, exact_scores, schedules
from .checkpoint import RunCheckpoint, set_arrays

__all__ = ["UNDERFIT_AUC", "adapt_feature_norm", "calibrate_batchnorm", "check_fit", "compile_model", "fine_tune",
           "fit_head", "phase1_features", "run_phase"]

logger = logging.getLogger("covidxr.train")

#: A head whose exact training ROC AUC at the end of phase 1 is below this did not fit its own
#: training data: :func:`fit_head` warns.
UNDERFIT_AUC = 0.6


def _metrics(num_classes):
    if num_classes == 2:
        return [keras.metrics.AUC(name="auc"), keras.metrics.AUC(curve="PR", name="pr_auc")]
    return [keras.metrics.AUC(name="auc", multi_label=True, num_labels=num_classes),
            keras.metrics.AUC(name="pr_auc", curve="PR", multi_label=True, num_labels=num_classes)]


def _loss(num_classes):
    return "binary_crossentropy" if num_classes == 2 else "categorical_crossentropy"


def compile_model(model, *, num_classes, learning_rate, jit_compile="auto"):
    # Training batches are padded to full size with zero-weight samples (see train_batches):
    # the metrics count every real sample once and never the padding.
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=float(learning_rate)), loss=_loss(num_classes),
                  weighted_metrics=padding_masked(_metrics(num_classes)), jit_compile=jit_compile)



def adapt_feature_norm(model, features) -> None:
    """Set the mean and variance of ``model``'s feature standardisation to those of ``features``
    (raw pooled training features (n, F)); a model without the layer is left as it is."""
    if LAYER_NAMES["feature_norm"] in [layer.name for layer in model.layers]:
        model.get_layer(LAYER_NAMES["feature_norm"]).adapt(np.asarray(features, dtype=np.float32))


def phase1_features(model, train, val, *, features, cache_features, num_classes, batch_size):
    """``(train features, val features or None, seconds)``: the caller's, or computed once."""
    if features is not None:
        if not cache_features:
            raise ValueError("Expected cache_features=True when features are given (the head is fitted on "
                             "them). Received: cache_features=False")
        train_f, val_f = (np.asarray(f, dtype=np.float32) for f in features)
        width = model.get_layer(LAYER_NAMES["pooling"]).output.shape[-1]
        if train_f.shape != (len(train[1]), width) or val_f.shape != (len(val[1]), width):
            raise ValueError(f"Expected features of shapes ({len(train[1])}, {width}) and ({len(val[1])}, {width}) "
                             f"(one row per image, the pooled width). Received: shapes={train_f.shape}, {val_f.shape}")
        return train_f, val_f, 0.0
    start = time.perf_counter()
    train_f = frozen.pooled_features(model, train[0], batch_size=batch_size)
    val_f = frozen.pooled_features(model, val[0], batch_size=batch_size) if cache_features else None
    return train_f, val_f, time.perf_counter() - start


def check_fit(head, features, labels, *, batch_size) -> float:
    """The exact training ROC AUC of the head at the end of phase 1; warn when it is below
    :data:`UNDERFIT_AUC`."""
    auc = exact_scores(labels, predict_batches(head, features, batch_size=batch_size))["auc"]
    if np.isfinite(auc) and auc < UNDERFIT_AUC:
        message = (f"The head did not fit its own training data: training ROC AUC {auc:.3f} at the end of "
                   f"phase 1, below {UNDERFIT_AUC} (check the weights, the feature layer, the learning rate "
                   f"and the epochs)")
        logger.warning("%s", message)
        warnings.warn(message, UserWarning, stacklevel=3)
    return auc


def fit_head(model, train_images, train_labels, val_images, val_labels, *, num_classes, epochs,
             learning_rate=1e-3, batch_size=32, strategy="none", seed=0, cache_features=True, features=None,
             patience=5, callbacks=(), verbose="auto", initial_epoch=0, jit_compile="auto", runtime=None):
    """Phase 1: adapt the feature standardisation, then train only the head, the backbone frozen.

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
            (with its augmentation layers, if any). Either way the training images' raw pooled
            features are computed once, to adapt the standardisation (:func:`adapt_feature_norm`)
            and to measure the head's training ROC AUC at the end.
        features: ``(train, val)`` raw pooled features, (n, F) and (m, F), that the caller
            computed with :func:`covidxr.training.frozen.pooled_features` or read from the
            feature store (:func:`covidxr.training.frozen.stored_features`: once for every
            strategy and fold); None computes them here. Needs ``cache_features=True``.
        patience: Unused here (the caller's callbacks stop early); kept for the callers.
        callbacks: More Keras callbacks; they come after the
            :class:`~covidxr.training.callbacks.ExactValidation` this adds first, so their
            ``logs`` hold the exact ``val_loss``, ``val_auc`` and ``val_pr_auc``.
        verbose: Keras ``fit`` verbosity.
        initial_epoch: Epoch to start at (a resumed run); the batch order continues from it.
        jit_compile: Keras ``compile(jit_compile=...)``: ``"auto"``, True (XLA) or False.
        runtime: The :class:`covidxr.runtime.DataParallelRuntime` the model was built in
            (None: one device). Validation is predicted in full, padded batches of
            ``batch_size``, which split evenly over its devices.

    Returns:
        ``(history, info)``: the Keras History and a dict with ``feature_seconds`` (time to
        compute the pooled features), ``feature_shape``, ``fit_seconds``,
        ``validation_seconds`` (the exact validation passes) and ``train_auc`` (the exact
        training ROC AUC of the head at the end, no dropout, each training image once; a
        ``UserWarning`` and a log warning when below :data:`UNDERFIT_AUC`).

    Raises:
        ValueError: ``features`` of the wrong shapes, or given with ``cache_features=False``.
    """
    backbone_layer(model).trainable = False
    class_weight = class_weight_for(strategy, train_labels, num_classes)
    train_seq = make_sequence(train_images, train_labels, num_classes=num_classes, batch_size=batch_size,
                          strategy=strategy, shuffle=True, seed=seed)
    train_seq.set_epoch(initial_epoch)
    train_features, val_features, seconds = phase1_features(
        model, (train_images, train_labels), (val_images, val_labels), features=features,
        cache_features=cache_features, num_classes=num_classes, batch_size=batch_size)
    info = {"feature_seconds": seconds, "feature_shape": list(train_features.shape)}
    adapt_feature_norm(model, train_features)
    head = head_model(model)
    if cache_features:
        fitted, train_data, val_inputs = head, FeatureSequence(train_seq, train_features), val_features
    else:
        fitted, train_data, val_inputs = model, train_seq, np.asarray(val_images)
    validator = ExactValidation(val_inputs, val_labels, batch_size=batch_size, phase=1)
    compile_model(fitted, num_classes=num_classes, learning_rate=learning_rate, jit_compile=jit_compile)
    train_data = train_batches(train_data, batch_size=batch_size, class_weight=class_weight)
    start = time.perf_counter()
    # shuffle=False: the sequence shuffles and resamples with its own (seed, epoch) generator;
    # Keras' own shuffling of the batch order would draw from Python's global RNG, which a
    # resumed run cannot restore.
    history = fitted.fit(train_data, epochs=int(epochs), initial_epoch=int(initial_epoch), shuffle=False,
                         callbacks=[validator, *callbacks], verbose=verbose)
    info.update(fit_seconds=time.perf_counter() - start, validation_seconds=validator.seconds,
                train_auc=check_fit(head, train_features, train_labels, batch_size=batch_size))
    return history, info


def calibrate_batchnorm(model, images, *, batch_size, limit=256) -> int:
    """Set the moving mean and variance of every BatchNormalization layer of the backbone to the
    average batch statistics of (up to ``limit``) training ``images``; return the layers set.

    For random weights (``--weights none``): their moving statistics are those of initialisation
    (mean 0, variance 1), so in inference mode (phase 1's features) the layers do not normalise,
    while in training mode (phase 2, where they train) they normalise with the batch's statistics:
    the features, and the head fitted on them, would change at once when phase 2 starts. After
    this both modes see about the same statistics. Deterministic: the first ``limit`` images in
    order, batches of ``batch_size``, batch ``k`` weighted ``1 / (k + 1)`` (a running average).
    """
    norms = [layer for layer in backbone_layer(model).layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not norms:
        return 0
    saved = [(layer.trainable, layer.momentum) for layer in norms]
    features = feature_model(model)
    images = np.asarray(images)[:int(limit)]
    try:
        for layer in norms:
            layer.trainable = True  # a frozen layer runs in inference mode and updates nothing
        for k, start in enumerate(range(0, len(images), int(batch_size))):
            for layer in norms:
                layer.momentum = k / (k + 1)
            features(images[start:start + int(batch_size)], training=True)
    finally:
        for layer, (trainable, momentum) in zip(norms, saved):
            layer.trainable, layer.momentum = trainable, momentum
    return len(norms)


def fine_tune(model, train_images, train_labels, val_images, val_labels, *, num_classes, epochs,
              learning_rate=1e-5, fine_tune_from="auto", batch_size=32, strategy="none", seed=0,
              callbacks=(), verbose="auto", initial_epoch=0, jit_compile="auto", runtime=None,
              train_batchnorm=False):
    """Phase 2: unfreeze the backbone from ``fine_tune_from`` and train on whole images.

    BatchNormalization layers stay frozen (unless ``train_batchnorm``), hence in inference mode: their
    moving mean and variance do not change; so does the feature standardisation phase 1 adapted (never
    re-adapted here). Validation as in :func:`fit_head` (exact, first callback).

    Args:
        model: A :func:`covidxr.models.build_model` model, usually after :func:`fit_head`.
        fine_tune_from: Layer name, ``-N`` (last N layers), ``"auto"`` or ``"all"`` (see
            :func:`covidxr.models.resolve_fine_tune_from`).
        learning_rate: Adam learning rate (1e-5: a hundredth of phase 1's gradient-head rate).
        train_batchnorm: Train the unfrozen BatchNormalization layers too (random weights whose
            statistics :func:`calibrate_batchnorm` set); False keeps them frozen, in inference mode.
        Other arguments: as :func:`fit_head` (the shuffling seed offset by 1, so phase 2 does
            not repeat phase 1's batch order).

    Returns:
        ``(history, info)`` with ``unfrozen`` (names of the unfrozen backbone layers that have
        weights), ``fine_tune_from_index``, ``fit_seconds`` and ``validation_seconds``.
    """
    index = resolve_fine_tune_from(model, fine_tune_from)
    unfrozen = set_trainable_from(model, index, train_batchnorm=train_batchnorm)
    class_weight = class_weight_for(strategy, train_labels, num_classes)
    train_seq = make_sequence(train_images, train_labels, num_classes=num_classes, batch_size=batch_size,
                          strategy=strategy, shuffle=True, seed=seed + 1)
    train_seq.set_epoch(initial_epoch)
    validator = ExactValidation(np.asarray(val_images), val_labels, batch_size=batch_size, phase=2)
    compile_model(model, num_classes=num_classes, learning_rate=learning_rate, jit_compile=jit_compile)
    train_data = train_batches(train_seq, batch_size=batch_size, class_weight=class_weight)
    start = time.perf_counter()
    history = model.fit(train_data, epochs=int(epochs), initial_epoch=int(initial_epoch), shuffle=False,
                        callbacks=[validator, *callbacks], verbose=verbose)
    info = {"unfrozen": unfrozen, "fine_tune_from_index": index,
            "fine_tune_from_layer": backbone_layer(model).layers[index].name,
            "fit_seconds": time.perf_counter() - start, "validation_seconds": validator.seconds}
    return history, info



def run_phase(phase, *, fit, model, folder, state, epochs, patience, saver, timer, history, checkpoint_every=1,
              writers=(), progress=False):
    """Run (or skip, or continue) one phase under a :class:`~covidxr.training.checkpoint.RunCheckpoint`.

    ``state`` is the last committed checkpoint state (None for a new run); ``checkpoint_every``
    the checkpoint's ``every``; ``writers`` get the history rows
    (:class:`~covidxr.training.callbacks.HistoryWriters`: TensorBoard, MLflow); ``progress`` adds
    a step bar per epoch (:class:`~covidxr.training.callbacks.StepProgress`, on a terminal only). Returns the phase's
    history rows and the fit's info dict (None when the phase had finished before), with
    ``checkpoint_seconds`` (the training thread's) and ``checkpoint_write_seconds`` (the background
    writer's).
    """
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
    early_stopping, reduce_lr = schedules(patience)
    recorder = EpochRecorder(phase, offset=len(history))
    checkpoint = RunCheckpoint(folder, phase=phase, full_model=model, epochs=epochs, early_stopping=early_stopping,
                               reduce_lr=reduce_lr, recorder=recorder, saver=saver, history=history,
                               state=resume_state, base=base, every=checkpoint_every)
    callbacks = [early_stopping, reduce_lr, recorder, saver, timer, checkpoint]
    if progress:
        callbacks.insert(0, StepProgress(phase))  # closed before the recorder's line
    if writers:
        callbacks.append(HistoryWriters(checkpoint, writers))  # after the checkpoint's turn
    try:
        _, info = fit(callbacks=callbacks, initial_epoch=initial)
    except BaseException:  # interrupted: let the write in flight finish before the error leaves the phase
        checkpoint.close(quiet=True)
        raise
    info.update(checkpoint_seconds=checkpoint.seconds, checkpoint_write_seconds=checkpoint.writer.write_seconds)
    return list(recorder.rows), info

