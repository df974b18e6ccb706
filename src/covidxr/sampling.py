"""Training batches from the image cache, with class-imbalance strategies.
Must not touch validation or test data: only the training part is ever resampled or weighted.

:class:`BatchSequence` is a backend-neutral ``keras.utils.PyDataset`` serving ``uint8``
batches (the model turns them into floats). Strategies, chosen by name (:data:`STRATEGIES`):

* ``none``: every image once per epoch;
* ``class-weight``: every image once per epoch; the trainer turns :func:`class_weights` into
  per-image sample weights of the training batches (:class:`covidxr.runtime.ReplicaBatches`);
* ``oversample``: each epoch, every class is filled up to the majority count by drawing its
  images with replacement (each image at least once);
* ``undersample``: each epoch, every class is drawn down to the minority count without
  replacement, a different subset every epoch.

Shuffling and resampling are seeded by ``(seed, epoch)``, so a run is reproducible and
:meth:`BatchSequence.epoch_indices` shows any epoch. Validation and test batches use
``strategy="none", shuffle=False``: they are never resampled.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pandas as pd

__all__ = [
    "STRATEGIES",
    "BatchSequence",
    "check_strategy",
    "class_weights",
    "epoch_class_counts",
    "resample_indices",
]

STRATEGIES = ("none", "class-weight", "oversample", "undersample")


def check_strategy(strategy) -> str:
    """Return ``strategy`` if it is one of :data:`STRATEGIES`, else raise ValueError."""
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown strategy. Expected one of {STRATEGIES}. Received: strategy={strategy!r}")
    return strategy


def _check_labels(labels, num_classes) -> np.ndarray:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"Expected num_classes to be an integer >= 2. Received: num_classes={num_classes!r}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            "Expected labels as a non-empty 1-D array of integer class indices. "
            f"Received: labels with shape={labels.shape}, dtype={labels.dtype}"
        )
    if labels.min() < 0 or labels.max() >= num_classes:
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise ValueError(f"Expected class indices in [0, {num_classes - 1}]. Received: label={int(bad)}")
    return labels.astype(np.int64)


def class_weights(labels, *, num_classes) -> dict[int, float]:
    """Class weights inverse to class frequency (applied as sample weights of the training batches).

    ``n_samples / (n_present_classes * count[c])`` (scikit-learn's ``"balanced"``); a class
    with no sample gets 1.0.

    Args:
        labels: Integer class indices, shape (n,).
        num_classes: Number of classes of the task.

    Returns:
        ``{class_index: weight}`` for every class index.
    """
    from sklearn.utils.class_weight import compute_class_weight

    labels = _check_labels(labels, num_classes)
    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    out = {c: 1.0 for c in range(num_classes)}
    out.update({int(c): float(w) for c, w in zip(present, weights)})
    return out


def resample_indices(labels, *, strategy, rng) -> np.ndarray:
    """Indices of one epoch under ``strategy`` (unshuffled: grouped by class).

    Args:
        labels: Integer class indices, shape (n,).
        strategy: One of :data:`STRATEGIES`.
        rng: A ``numpy.random.Generator``.

    Returns:
        int64 array of indices into ``labels``.
    """
    check_strategy(strategy)
    labels = np.asarray(labels)
    if strategy in ("none", "class-weight"):
        return np.arange(len(labels), dtype=np.int64)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    counts = [len(g) for g in groups]
    parts = []
    if strategy == "oversample":
        top = max(counts)
        for group in groups:
            extra = rng.choice(group, size=top - len(group), replace=True)
            parts += [group, extra]
    else:  # undersample
        low = min(counts)
        for group in groups:
            parts.append(np.sort(rng.choice(group, size=low, replace=False)))
    return np.concatenate(parts).astype(np.int64)


class BatchSequence(keras.utils.PyDataset):
    """``uint8`` image batches with per-epoch shuffling and class resampling.

    Args:
        images: ``uint8`` array or memmap of shape (n, H, W, 1) (``ImageCache.images``).
        labels: Integer class indices, shape (n,).
        num_classes: Number of classes. Two classes give targets of shape (b, 1) (the
            positive class is index 1); more give one-hot targets (b, num_classes).
        batch_size: Images per batch (the last batch may be smaller).
        strategy: One of :data:`STRATEGIES`; validation and test data use ``"none"``.
        shuffle: Shuffle each epoch (False keeps the order; use it for evaluation).
        seed: Seed; epoch ``e`` uses ``numpy.random.default_rng((seed, e))``.
        **kwargs: ``keras.utils.PyDataset`` options (``workers``, ``use_multiprocessing``,
            ``max_queue_size``).

    Yields:
        ``(x, y)``: x ``uint8`` (b, H, W, 1); y ``float32`` (b, 1) or (b, num_classes).
    """

    def __init__(self, images, labels, *, num_classes, batch_size=32, strategy="none", shuffle=True,
                 seed=0, **kwargs):
        super().__init__(**kwargs)
        check_strategy(strategy)
        labels = _check_labels(labels, num_classes)
        shape = getattr(images, "shape", None)
        if shape is None or len(shape) != 4 or shape[-1] != 1 or getattr(images, "dtype", None) != np.uint8:
            raise ValueError(
                "Expected images as a uint8 array of shape (n, H, W, 1). "
                f"Received: images with shape={shape}, dtype={getattr(images, 'dtype', None)}"
            )
        if shape[0] != len(labels):
            raise ValueError(f"Expected one label per image ({shape[0]} images). Received: labels of length {len(labels)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"Expected batch_size to be a positive integer. Received: batch_size={batch_size!r}")
        self.images = images
        self.labels = labels
        self.num_classes = int(num_classes)
        self.batch_size = int(batch_size)
        self.strategy = strategy
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.epoch = 0
        self._indices = self.epoch_indices(0)

    def epoch_indices(self, epoch) -> np.ndarray:
        """The image indices epoch ``epoch`` serves, in order (int64, shape (m,))."""
        rng = np.random.default_rng((self.seed, int(epoch)))
        indices = resample_indices(self.labels, strategy=self.strategy, rng=rng)
        if self.shuffle:
            indices = rng.permutation(indices)
        return indices

    @property
    def num_batches(self) -> int:
        return math.ceil(len(self._indices) / self.batch_size)

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, index):
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"Expected a batch index in [0, {len(self) - 1}]. Received: index={index}")
        idx = self._indices[index * self.batch_size: (index + 1) * self.batch_size]
        # Read a memmap in ascending order (fast), then restore the epoch's order.
        order = np.argsort(idx, kind="stable")
        x = np.empty((len(idx),) + tuple(self.images.shape[1:]), np.uint8)
        x[order] = self.images[idx[order]]
        labels = self.labels[idx]
        if self.num_classes == 2:
            y = labels.astype(np.float32)[:, None]
        else:
            y = np.eye(self.num_classes, dtype=np.float32)[labels]
        return x, y

    def on_epoch_end(self):
        """Move to the next epoch: new resample and shuffle."""
        self.set_epoch(self.epoch + 1)

    def set_epoch(self, epoch) -> None:
        """Serve epoch ``epoch`` next (a resumed run continues the batch order)."""
        self.epoch = int(epoch)
        self._indices = self.epoch_indices(self.epoch)

    def class_counts(self, epoch=None) -> np.ndarray:
        """Images per class served in ``epoch`` (default: the current one), shape (num_classes,)."""
        indices = self._indices if epoch is None else self.epoch_indices(epoch)
        return np.bincount(self.labels[indices], minlength=self.num_classes)


def epoch_class_counts(labels, *, num_classes, classes=None, strategies=STRATEGIES, epochs=3, seed=0) -> pd.DataFrame:
    """Images per class served in each of the first ``epochs`` epochs, under each strategy.

    Returns:
        Long DataFrame with columns strategy, epoch, class, images, unique (distinct images).
    """
    labels = _check_labels(labels, num_classes)
    names = list(classes) if classes is not None else [str(c) for c in range(num_classes)]
    dummy = np.zeros((len(labels), 1, 1, 1), np.uint8)
    rows = []
    for strategy in strategies:
        seq = BatchSequence(dummy, labels, num_classes=num_classes, strategy=strategy, seed=seed)
        for epoch in range(epochs):
            idx = seq.epoch_indices(epoch)
            for c in range(num_classes):
                mine = idx[labels[idx] == c]
                rows.append({"strategy": strategy, "epoch": epoch, "class": names[c],
                             "images": len(mine), "unique": len(np.unique(mine))})
    return pd.DataFrame(rows)
