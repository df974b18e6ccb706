"""Batches for training: cached-feature sequences, padded training batches, class weights.
Must not decide anything about a run (options, folders, figures): it only shapes arrays into
the batches Keras ``fit`` and ``predict`` take.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from ..runtime import ReplicaBatches, predict_padded
from ..sampling import BatchSequence, class_weights

__all__ = ["FeatureSequence", "class_weight_for", "make_sequence", "predict_batches", "train_batches",
           "val_batches"]


class FeatureSequence(keras.utils.PyDataset):
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


def make_sequence(images, labels, *, num_classes, batch_size, strategy="none", shuffle=False, seed=0):
    return BatchSequence(np.asarray(images), np.asarray(labels, dtype=np.int64), num_classes=num_classes,
                         batch_size=batch_size, strategy=strategy, shuffle=shuffle, seed=seed)



def _parallel(runtime) -> bool:
    return runtime is not None and runtime.num_replicas > 1


def train_batches(sequence, *, batch_size, class_weight=None):
    """Training batches of one shape: the last, partial batch of an epoch is filled up to
    ``batch_size`` with copies of its own samples at sample weight 0 (they add nothing to the
    gradient or the metrics), and the class weights become sample weights (see
    :class:`covidxr.runtime.ReplicaBatches`). One batch shape means the train step is traced
    and compiled once per run, and, with the same architecture and batch size, the compiled step
    of one fold or strategy serves the next (JAX's compilation cache) instead of a new compile
    for every epoch length. The price: the loss of the padded batch is divided by the full
    batch size."""
    return ReplicaBatches(sequence, num_replicas=batch_size, class_weight=class_weight)


def val_batches(runtime, sequence):
    """Validation batches: unpadded on one device (so ``val_loss`` is the plain mean); padded to
    a multiple of the replica count under data parallelism, which requires it."""
    return runtime.batches(sequence) if _parallel(runtime) else sequence


def predict_batches(model, data, *, batch_size) -> np.ndarray:
    """``model.predict`` in batches of one shape (the last one padded, the padding's rows cut),
    one row per input. ``batch_size`` is a multiple of the replica count under data
    parallelism, so full batches also split evenly over the devices."""
    return predict_padded(model, data, num_replicas=batch_size, batch_size=batch_size)


def class_weight_for(strategy, labels, num_classes):
    """The ``class-weight`` strategy's weights ``{class index: weight}``; None for the others."""
    if strategy != "class-weight":
        return None
    return class_weights(labels, num_classes=num_classes)
