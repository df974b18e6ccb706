"""The two phases of transfer learning: the head on a frozen backbone, then fine-tuning;
and running one phase under the per-epoch checkpoint.
Must not read data, make run folders or draw: it trains a built model on arrays it is given.
"""

from __future__ import annotations

import logging
import time

import keras

from ..atomic import load_arrays
from ..models import backbone_layer, feature_model, head_model, resolve_fine_tune_from, set_trainable_from
from ..runtime import padding_masked
from .batches import (FeatureSequence, class_weight_for, make_sequence, predict_batches, train_batches,
                      val_batches)
from .callbacks import EpochRecorder, schedules
from .checkpoint import RunCheckpoint, set_arrays

__all__ = ["compile_model", "fine_tune", "fit_head", "run_phase"]

logger = logging.getLogger("covidxr.train")


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
    class_weight = class_weight_for(strategy, train_labels, num_classes)
    train_seq = make_sequence(train_images, train_labels, num_classes=num_classes, batch_size=batch_size,
                          strategy=strategy, shuffle=True, seed=seed)
    train_seq.set_epoch(initial_epoch)
    val_seq = make_sequence(val_images, val_labels, num_classes=num_classes, batch_size=batch_size)
    info = {"feature_seconds": 0.0}
    if cache_features:
        start = time.perf_counter()
        extractor = feature_model(model)
        plain = make_sequence(train_images, train_labels, num_classes=num_classes, batch_size=batch_size)
        train_features = predict_batches(extractor, plain, batch_size=batch_size)
        val_features = predict_batches(extractor, val_seq, batch_size=batch_size)
        info["feature_seconds"] = time.perf_counter() - start
        info["feature_shape"] = list(train_features.shape)
        fitted = head_model(model)
        train_data = FeatureSequence(train_seq, train_features)
        val_data = FeatureSequence(val_seq, val_features)
    else:
        fitted, train_data, val_data = model, train_seq, val_seq
    compile_model(fitted, num_classes=num_classes, learning_rate=learning_rate, jit_compile=jit_compile)
    train_data = train_batches(train_data, batch_size=batch_size, class_weight=class_weight)
    val_data = val_batches(runtime, val_data)
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
    class_weight = class_weight_for(strategy, train_labels, num_classes)
    train_seq = make_sequence(train_images, train_labels, num_classes=num_classes, batch_size=batch_size,
                          strategy=strategy, shuffle=True, seed=seed + 1)
    train_seq.set_epoch(initial_epoch)
    val_seq = make_sequence(val_images, val_labels, num_classes=num_classes, batch_size=batch_size)
    compile_model(model, num_classes=num_classes, learning_rate=learning_rate, jit_compile=jit_compile)
    train_data = train_batches(train_seq, batch_size=batch_size, class_weight=class_weight)
    val_data = val_batches(runtime, val_seq)
    start = time.perf_counter()
    history = model.fit(train_data, validation_data=val_data, epochs=int(epochs), initial_epoch=int(initial_epoch),
                        shuffle=False,
                        callbacks=list(callbacks), verbose=verbose)
    info = {"unfrozen": unfrozen, "fine_tune_from_index": index,
            "fine_tune_from_layer": backbone_layer(model).layers[index].name,
            "fit_seconds": time.perf_counter() - start}
    return history, info



def run_phase(phase, *, fit, model, folder, state, epochs, patience, saver, timer, history):
    """Run (or skip, or continue) one phase under a :class:`~covidxr.training.checkpoint.RunCheckpoint`.

    ``state`` is the last committed checkpoint state (None for a new run). Returns the
    phase's history rows and the fit's info dict (None when the phase had finished before).
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
                               state=resume_state, base=base)
    _, info = fit(callbacks=[early_stopping, reduce_lr, recorder, saver, timer, checkpoint], initial_epoch=initial)
    info["checkpoint_seconds"] = checkpoint.seconds
    return list(recorder.rows), info

