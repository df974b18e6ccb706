"""Uneven batches: batches whose size does not divide by the number of replicas.
Must not drop or reweight real images: padding repeats a batch's own images at sample weight 0.

:class:`ReplicaBatches` and :func:`predict_padded` make such batches safe;
:func:`padding_masked` compiles metrics that ignore the padding; :func:`replica_batch_size`
rounds a batch size up to a multiple of the number of replicas.

Measured with Keras 3.15, JAX 0.10, TensorFlow 2.21, two CPU devices:

* JAX + ``DataParallel``: every batch is sharded on its first axis, so a batch whose size
  does not divide by the number of devices fails in ``fit``, ``evaluate`` *and* ``predict``
  with ``IndivisibleError`` (e.g. 5 images on 2 devices), and the model is unusable
  afterwards (its compiled step is left as ``None``).
* TensorFlow + ``MirroredStrategy``: ``fit`` and ``evaluate`` fail with
  ``InvalidArgumentError: Inputs to operation AddN ... must have the same size`` when the
  *first* batch of the call splits unevenly (Keras averages that batch over replicas to build
  the model); later uneven batches and every ``predict`` work.

The rule that works on both: every batch handed to ``fit``/``evaluate`` is a multiple of
``num_replicas``. :class:`ReplicaBatches` pads each batch up to the next multiple by repeating
its own images with **sample weight 0** (and folds ``class_weight`` into the real samples'
weights), so the padding adds nothing to the gradient; the only effect on the loss is that a
padded batch is divided by its padded size (a last batch of 3 real images padded to 4 has its
loss and gradient scaled by 3/4). No image is dropped. Keras' ``metrics=`` ignore sample
weights, so they *would* count the repeated images: compile the metrics as
``weighted_metrics=padding_masked([...])`` (:class:`PaddingMasked` reads a weight only as
"real or padding"), which gives exactly the values ``metrics=`` gives without padding, also
with class weights, on both backends and with one device.
:func:`predict_padded` pads the inputs the same way and trims the predictions, so it returns
exactly one row per input. :func:`replica_batch_size` rounds the global batch size up to a
multiple of ``num_replicas`` so that only the last batch of an epoch needs padding.
"""

from __future__ import annotations

import math

import keras
import numpy as np

__all__ = [
    "PaddingMasked",
    "ReplicaBatches",
    "padding_masked",
    "predict_padded",
    "replica_batch_size",
]


def _check_replicas(num_replicas) -> int:
    if isinstance(num_replicas, bool) or not isinstance(num_replicas, (int, np.integer)) or num_replicas < 1:
        raise ValueError(f"Expected a positive integer num_replicas. Received: num_replicas={num_replicas!r}")
    return int(num_replicas)


def replica_batch_size(batch_size, num_replicas) -> int:
    """The smallest multiple of ``num_replicas`` that is >= ``batch_size``.

    Each replica then gets ``result // num_replicas`` images per step; only the last batch of
    an epoch can still be uneven (:class:`ReplicaBatches` pads it).

    Raises:
        ValueError: ``batch_size`` or ``num_replicas`` is not a positive integer.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"Expected a positive integer batch_size. Received: batch_size={batch_size!r}")
    replicas = _check_replicas(num_replicas)
    return int(math.ceil(int(batch_size) / replicas) * replicas)


def _first_len(x) -> int:
    return int(keras.tree.flatten(x)[0].shape[0])


def _take(x, idx):
    return keras.tree.map_structure(lambda a: np.asarray(a)[idx], x)


def _class_weight_samples(y, class_weight) -> np.ndarray:
    """Per-sample weights from ``class_weight`` the way Keras derives them from targets."""
    labels = np.asarray(keras.tree.flatten(y)[0])
    if labels.ndim > 1:
        labels = np.argmax(labels, axis=-1) if labels.shape[-1] != 1 else labels[..., 0]
    labels = np.round(labels).astype(np.int64)
    return np.array([class_weight.get(int(c), 1.0) for c in labels], dtype=np.float32)


class ReplicaBatches(keras.utils.PyDataset):
    """A ``PyDataset`` whose every batch is padded to a multiple of ``num_replicas``.

    Padding repeats the batch's own samples with sample weight 0, so the gradient gets
    nothing from them; the loss of a padded batch is divided by its padded size (a slight
    down-weighting of that one batch). Nothing is dropped. Every batch is
    ``(x, y, sample_weight)`` with float32 weights: real samples get the wrapped dataset's
    own weights, else ``class_weight[label]``, else 1.

    Pass ``class_weight`` here, not to ``fit`` (Keras refuses ``class_weight`` together with
    sample weights), and compile the metrics as ``weighted_metrics=padding_masked([...])``:
    plain ``metrics=`` ignore sample weights and would count the repeated samples. Epoch
    changes (``on_epoch_end``) are forwarded, so a resampling
    :class:`~covidxr.sampling.BatchSequence` keeps working.

    Args:
        dataset: A ``keras.utils.PyDataset`` (or any indexable with ``len``) of ``(x, y)`` or
            ``(x, y, sample_weight)`` batches of numpy arrays.
        num_replicas: Devices each batch is split over.
        class_weight: Optional ``{class_index: weight}``; targets (b, 1) hold 0/1 labels,
            targets (b, C) are one-hot.
        **kwargs: ``PyDataset`` options; default to the wrapped dataset's ``workers``,
            ``use_multiprocessing`` and ``max_queue_size``.

    Raises:
        ValueError: Bad ``num_replicas``; ``class_weight`` with a dataset that already yields
            sample weights (raised when the batch is read).
    """

    def __init__(self, dataset, *, num_replicas, class_weight=None, **kwargs):
        for name in ("workers", "use_multiprocessing", "max_queue_size"):
            if hasattr(dataset, name):
                kwargs.setdefault(name, getattr(dataset, name))
        super().__init__(**kwargs)
        self.dataset = dataset
        self.num_replicas = _check_replicas(num_replicas)
        self.class_weight = None if class_weight is None else {int(k): float(v) for k, v in class_weight.items()}

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def num_batches(self):
        return len(self.dataset)

    def __getitem__(self, index):
        batch = self.dataset[index]
        if not isinstance(batch, tuple) or len(batch) not in (2, 3):
            raise ValueError(
                f"Expected batches (x, y) or (x, y, sample_weight). "
                f"Received: a batch of type {type(batch).__name__}"
            )
        x, y = batch[0], batch[1]
        n = _first_len(x)
        if len(batch) == 3 and batch[2] is not None:
            if self.class_weight is not None:
                raise ValueError(
                    "Expected either class_weight or a dataset yielding sample weights, not both. "
                    f"Received: class_weight={self.class_weight!r}"
                )
            weights = np.asarray(batch[2], dtype=np.float32).reshape(n)
        elif self.class_weight is not None:
            weights = _class_weight_samples(y, self.class_weight)
        else:
            weights = np.ones(n, np.float32)
        size = int(math.ceil(n / self.num_replicas) * self.num_replicas)
        if size == n:
            return x, y, weights
        idx = np.arange(size) % n
        weights = weights[idx]
        weights[n:] = 0.0
        return _take(x, idx), _take(y, idx), weights

    def on_epoch_begin(self):
        if hasattr(self.dataset, "on_epoch_begin"):
            self.dataset.on_epoch_begin()

    def on_epoch_end(self):
        if hasattr(self.dataset, "on_epoch_end"):
            self.dataset.on_epoch_end()


@keras.saving.register_keras_serializable(package="covidxr")
class PaddingMasked(keras.metrics.Metric):
    """A metric that reads sample weights only as a padding mask.

    Weight > 0 counts the sample once, weight 0 ignores it; the size of the weight (a class
    weight) is dropped. Compiled as ``weighted_metrics``, the wrapped metric therefore sees
    exactly the real samples of :class:`ReplicaBatches`, unweighted, the same values as
    ``metrics=`` gives without padding, while the loss still gets the class weights.

    Args:
        metric: A ``keras.metrics.Metric`` (or a name/config ``keras.metrics.get`` accepts).
        name: Metric name; default: the wrapped metric's (so logs keep ``auc``, ``val_auc``).
    """

    def __init__(self, metric, name=None, **kwargs):
        if not isinstance(metric, keras.metrics.Metric):
            metric = keras.metrics.get(metric)
        kwargs.pop("dtype", None)
        super().__init__(name=name or metric.name, dtype=metric.dtype, **kwargs)
        self.metric = metric

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            sample_weight = keras.ops.cast(keras.ops.greater(sample_weight, 0), "float32")
        return self.metric.update_state(y_true, y_pred, sample_weight=sample_weight)

    def result(self):
        return self.metric.result()

    def reset_state(self):
        self.metric.reset_state()

    def get_config(self):
        return {"name": self.name, "metric": keras.metrics.serialize(self.metric)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        metric = keras.metrics.deserialize(config.pop("metric"))
        return cls(metric, **config)


def padding_masked(metrics) -> list:
    """Wrap each metric in :class:`PaddingMasked`; compile them as ``weighted_metrics``.

    Example::

        model.compile(optimizer=..., loss=..., weighted_metrics=padding_masked(
            [keras.metrics.AUC(name="auc"), keras.metrics.AUC(curve="PR", name="pr_auc")]))
    """
    return [m if isinstance(m, PaddingMasked) else PaddingMasked(m) for m in metrics]


class _PaddedInputs(keras.utils.PyDataset):
    """Inputs of a dataset, each batch padded to a multiple of ``num_replicas``; records the
    real batch sizes so the predictions can be trimmed."""

    def __init__(self, dataset, num_replicas):
        super().__init__()  # one worker, no multiprocessing: batches are read in order
        self.dataset = dataset
        self.num_replicas = num_replicas
        self.sizes = {}

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        batch = self.dataset[index]
        x = batch[0] if isinstance(batch, tuple) else batch
        n = _first_len(x)
        self.sizes[index] = n
        size = int(math.ceil(n / self.num_replicas) * self.num_replicas)
        return (_take(x, np.arange(size) % n),) if size != n else (x,)


def predict_padded(model, data, *, num_replicas, batch_size=32, verbose=0):
    """``model.predict`` that never hands a device group an uneven batch.

    Arrays: the batch size is rounded up to a multiple of ``num_replicas``
    (:func:`replica_batch_size`), the inputs are padded at the end by repeating their first
    rows up to a multiple of ``num_replicas``, and the padding rows are cut from the result.
    A ``PyDataset`` (whose batches are ``x``, ``(x,)`` or ``(x, y[, w])``): each batch's
    inputs are padded the same way and every batch's padding rows are cut. With
    ``num_replicas=1`` this is plain ``model.predict``.

    Args:
        model: A Keras model (built inside the active :func:`data_parallel_scope`).
        data: A numpy array (or a structure of arrays with the same first axis) or a
            ``keras.utils.PyDataset``.
        num_replicas: Devices of the active scope.
        batch_size: Requested batch size (arrays only).
        verbose: ``model.predict`` verbosity.

    Returns:
        The predictions, one row per input sample, e.g. (n, 1) or (n, C).

    Raises:
        ValueError: Bad ``num_replicas`` or ``batch_size``.
    """
    replicas = _check_replicas(num_replicas)
    if isinstance(data, keras.utils.PyDataset):
        if replicas == 1:
            return model.predict(data, verbose=verbose)
        padded = _PaddedInputs(data, replicas)
        out = model.predict(padded, verbose=verbose)
        starts = np.cumsum([0] + [int(math.ceil(padded.sizes[i] / replicas) * replicas)
                                  for i in range(len(padded.sizes))])
        keep = np.concatenate([np.arange(start, start + padded.sizes[i])
                               for i, start in enumerate(starts[:-1])]) if padded.sizes else np.zeros(0, int)
        return keras.tree.map_structure(lambda a: np.asarray(a)[keep], out)
    size = replica_batch_size(batch_size, replicas)
    n = _first_len(data)
    if replicas == 1 or n == 0:
        return model.predict(data, batch_size=size, verbose=verbose)
    total = int(math.ceil(n / replicas) * replicas)
    inputs = _take(data, np.arange(total) % n) if total != n else data
    out = model.predict(inputs, batch_size=size, verbose=verbose)
    return keras.tree.map_structure(lambda a: np.asarray(a)[:n], out)
