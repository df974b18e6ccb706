"""Where and how training runs: data parallelism, precision, compilation cache, memory.

* :func:`data_parallel_scope` spreads every batch over several devices (JAX:
  ``keras.distribution.DataParallel``; TensorFlow: ``tf.distribute.MirroredStrategy``).
  Build, compile, fit, reload and predict **inside** the scope.
* :class:`ReplicaBatches` and :func:`predict_padded` make batches whose size does not divide
  by the number of replicas safe (see "Uneven batches" below).
* :func:`precision_policy` normalises the ``mixed_precision`` option into a Keras dtype policy.
* :func:`enable_compilation_cache` turns on JAX's persistent compilation cache, so folds and
  strategies with the same architecture and shapes are not compiled again in a new process.
* :func:`available_memory`, :func:`estimate_training_memory` and :func:`check_memory` refuse a
  run that cannot fit before hours are spent loading data.

Nothing here imports TensorFlow at import time: the TensorFlow branches import it lazily, so
the module works with ``KERAS_BACKEND=jax`` and no TensorFlow installed.

Uneven batches (measured with Keras 3.15, JAX 0.10, TensorFlow 2.21, two CPU devices):

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

Virtual CPU devices (tests, CPU-only machines): JAX's CPU client runs each device's program
on a shared thread pool of one thread per core. With as many virtual devices as cores, a
ResNet50 training step with the augmentation layers deadlocked in an all-reduce (``Termination
timeout for all reduce ... Expected 2 threads to join the rendezvous``) on a 2-core machine;
two threads per device (``PJRT_NPROC``) fixed it. :func:`virtual_cpu_devices` sets this up.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

__all__ = [
    "PRECISION_POLICIES",
    "DataParallelRuntime",
    "PaddingMasked",
    "ReplicaBatches",
    "available_memory",
    "check_memory",
    "data_parallel_scope",
    "enable_compilation_cache",
    "estimate_training_memory",
    "padding_masked",
    "precision_policy",
    "predict_padded",
    "replica_batch_size",
    "virtual_cpu_devices",
]

#: Keras dtype policies :func:`precision_policy` returns.
PRECISION_POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")

_PRECISION_ALIASES = {
    "float32": "float32", "fp32": "float32", "f32": "float32", "none": "float32",
    "off": "float32", "false": "float32", "no": "float32", "": "float32",
    "mixed_bfloat16": "mixed_bfloat16", "bfloat16": "mixed_bfloat16", "bf16": "mixed_bfloat16",
    "true": "mixed_bfloat16", "on": "mixed_bfloat16", "yes": "mixed_bfloat16",
    "mixed_float16": "mixed_float16", "float16": "mixed_float16", "fp16": "mixed_float16",
    "f16": "mixed_float16",
}

_DATA_PARALLEL_BACKENDS = ("jax", "tensorflow")

GiB = 1024 ** 3


# --------------------------------------------------------------------------- precision

def precision_policy(value) -> str:
    """Normalise a ``mixed_precision`` option into a Keras dtype policy name.

    Args:
        value: ``None``/``False``/``"float32"``/``"fp32"``/``"none"`` (full precision),
            ``True``/``"mixed_bfloat16"``/``"bf16"``/``"bfloat16"``, or
            ``"mixed_float16"``/``"fp16"``/``"float16"``. Strings are case-insensitive.

    Returns:
        One of :data:`PRECISION_POLICIES`; pass it to ``keras.config.set_dtype_policy``
        before building the model. Mixed policies keep float32 variables and compute in
        16 bits; ``mixed_float16`` also makes ``compile`` wrap the optimizer in a loss-scale
        optimizer. The model's head is float32 either way (see ``build_model``).

    Raises:
        ValueError: Any other value.
    """
    if value is None or value is False:
        return "float32"
    if value is True:
        return "mixed_bfloat16"
    if isinstance(value, str):
        key = value.strip().lower().replace("-", "_")
        if key in _PRECISION_ALIASES:
            return _PRECISION_ALIASES[key]
    raise ValueError(
        f"Unknown precision. Expected None, False, True or one of {list(PRECISION_POLICIES)} "
        f"(aliases 'fp32', 'bf16', 'fp16'). Received: mixed_precision={value!r}"
    )


# --------------------------------------------------------------------------- data parallelism

@dataclass
class DataParallelRuntime:
    """What :func:`data_parallel_scope` yields.

    Attributes:
        backend: Keras backend name (``"jax"``, ``"tensorflow"``, ...).
        num_replicas: Devices each batch is split over (1 when data parallelism is off).
        devices: Device names, e.g. ``["cpu:0", "cpu:1"]`` (JAX) or
            ``["/device:GPU:0", ...]`` (TensorFlow); empty when off.
        enabled: Whether a distribution is active.
        distribution: The ``keras.distribution.DataParallel`` (JAX) or
            ``tf.distribute.MirroredStrategy`` (TensorFlow); None when off.
    """

    backend: str
    num_replicas: int = 1
    devices: list = field(default_factory=list)
    enabled: bool = False
    distribution: Any = None

    def batch_size(self, batch_size) -> int:
        """``batch_size`` rounded up to a multiple of :attr:`num_replicas`."""
        return replica_batch_size(batch_size, self.num_replicas)

    def batches(self, dataset, *, class_weight=None) -> "ReplicaBatches":
        """``dataset`` wrapped in :class:`ReplicaBatches` for this runtime."""
        return ReplicaBatches(dataset, num_replicas=self.num_replicas, class_weight=class_weight)

    def predict(self, model, data, *, batch_size=32, verbose=0) -> np.ndarray:
        """:func:`predict_padded` with this runtime's :attr:`num_replicas`."""
        return predict_padded(model, data, num_replicas=self.num_replicas, batch_size=batch_size,
                              verbose=verbose)


def _jax_devices(devices):
    available = keras.distribution.list_devices()
    if devices is None:
        return list(available)
    if isinstance(devices, int) and not isinstance(devices, bool):
        if not 1 <= devices <= len(available):
            raise ValueError(
                f"Expected between 1 and {len(available)} devices ({available}). "
                f"Received: devices={devices!r}"
            )
        return list(available[:devices])
    chosen = [str(d).lower() for d in devices]
    missing = [d for d in chosen if d not in available]
    if not chosen or missing:
        raise ValueError(
            f"Expected device names among {available}. Received: devices={devices!r}"
        )
    return chosen


def _tf_devices(devices):
    import tensorflow as tf

    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    available = gpus or [d.name for d in tf.config.list_logical_devices("CPU")]
    if devices is None:
        return available
    if isinstance(devices, int) and not isinstance(devices, bool):
        if not 1 <= devices <= len(available):
            raise ValueError(
                f"Expected between 1 and {len(available)} devices ({available}). "
                f"Received: devices={devices!r}"
            )
        return available[:devices]
    chosen = [str(d) for d in devices]
    if not chosen:
        raise ValueError(f"Expected device names among {available}. Received: devices={devices!r}")
    return chosen


def _warn_jax_cpu_threads(devices):
    cpu = [d for d in devices if d.startswith("cpu")]
    if len(cpu) < 2 or os.environ.get("PJRT_NPROC") or os.environ.get("NPROC"):
        return
    cores = os.cpu_count() or 1
    if cores < 2 * len(cpu):
        warnings.warn(
            f"Data parallelism over {len(cpu)} virtual CPU devices on {cores} cores can deadlock "
            f"in JAX's all-reduce; set PJRT_NPROC={2 * len(cpu)} (or call "
            f"covidxr.runtime.virtual_cpu_devices) before JAX starts.",
            RuntimeWarning, stacklevel=3,
        )


@contextlib.contextmanager
def data_parallel_scope(*, enabled, devices=None):
    """Split every batch over several devices, each holding a full copy of the model.

    Build the model, compile it, fit, reload a saved model and predict **inside** the scope:
    variables created outside it are not placed on the devices (JAX) or mirrored (TensorFlow),
    and on TensorFlow a model built in the scope fails to ``predict`` outside it (a model
    reloaded outside it works, on one device). Feed ``fit``/``evaluate`` batches that divide
    by ``num_replicas``: wrap a ``keras.utils.PyDataset`` in :class:`ReplicaBatches`
    (``runtime.batches(seq, class_weight=...)``), compile the metrics as
    ``weighted_metrics=padding_masked([...])``, and predict with :func:`predict_padded`
    (``runtime.predict(model, x)``); see the module docstring for what fails otherwise.

    Keep BatchNormalization frozen (``covidxr.models`` does): under ``MirroredStrategy``
    each replica updates its own moving statistics of a trainable BatchNormalization layer,
    so predictions then depend on which replica computed a row (measured: up to 0.01).

    * JAX: ``keras.distribution.DataParallel`` over ``devices`` (default: all devices of the
      default platform, ``keras.distribution.list_devices()``), set as the global distribution
      on entry; the previous one is restored on exit.
    * TensorFlow: ``tf.distribute.MirroredStrategy`` over ``devices`` (default: every logical
      GPU, or every logical CPU when there is none), whose ``scope()`` is entered. To use
      several CPUs, split the CPU with :func:`virtual_cpu_devices` before TensorFlow starts.

    Args:
        enabled: False: a no-op yielding ``num_replicas=1`` on any backend.
        devices: None (all), a number N (the first N), or a list of device names.

    Yields:
        A :class:`DataParallelRuntime`.

    Raises:
        ValueError: ``enabled`` on a backend other than JAX or TensorFlow, or bad ``devices``.

    Example::

        with data_parallel_scope(enabled=True) as rt:
            model = build_model(...)
            model.compile(optimizer=..., loss=..., weighted_metrics=padding_masked(metrics))
            model.fit(rt.batches(train_seq, class_weight=cw), validation_data=rt.batches(val_seq))
            probs = rt.predict(model, images, batch_size=rt.batch_size(32))
    """
    backend = keras.backend.backend()
    if not enabled:
        yield DataParallelRuntime(backend=backend)
        return
    if backend not in _DATA_PARALLEL_BACKENDS:
        raise ValueError(
            f"Data parallelism is supported on the backends {list(_DATA_PARALLEL_BACKENDS)}; "
            f"set KERAS_BACKEND to one of them or turn data parallelism off. "
            f"Received: backend={backend!r}"
        )
    if backend == "jax":
        names = _jax_devices(devices)
        _warn_jax_cpu_threads(names)
        distribution = keras.distribution.DataParallel(devices=names)
        previous = keras.distribution.distribution()
        keras.distribution.set_distribution(distribution)
        try:
            yield DataParallelRuntime(backend=backend, num_replicas=len(names), devices=names,
                                      enabled=True, distribution=distribution)
        finally:
            keras.distribution.set_distribution(previous)
        return
    import tensorflow as tf

    names = _tf_devices(devices)
    strategy = tf.distribute.MirroredStrategy(devices=names)
    with strategy.scope():
        yield DataParallelRuntime(backend=backend, num_replicas=int(strategy.num_replicas_in_sync),
                                  devices=names, enabled=True, distribution=strategy)


def virtual_cpu_devices(count) -> int:
    """Split the host CPU into ``count`` logical devices for data parallelism on a CPU.

    Must run before the backend starts (before the first computation): JAX reads
    ``jax_num_cpu_devices`` and TensorFlow its logical device configuration only once. On JAX
    it also sets ``PJRT_NPROC`` (unless already set) to at least two threads per device, which
    avoids an all-reduce deadlock when there are fewer cores than that (see the module
    docstring).

    Args:
        count: Number of logical CPU devices (>= 1).

    Returns:
        The number of CPU devices the backend now has.

    Raises:
        ValueError: ``count`` is not a positive integer, the backend has already started with
            another count, or the backend is neither JAX nor TensorFlow.
    """
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"Expected a positive integer count. Received: count={count!r}")
    count = int(count)
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        os.environ.setdefault("PJRT_NPROC", str(max(os.cpu_count() or 1, 2 * count)))
        try:
            jax.config.update("jax_num_cpu_devices", count)
        except RuntimeError:
            pass  # backend already started: accept it when it has the count asked for
        have = len(jax.devices("cpu"))
    elif backend == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
        except RuntimeError:
            pass
        have = len(tf.config.list_logical_devices("CPU"))
    else:
        raise ValueError(
            f"Expected the jax or tensorflow backend for virtual CPU devices. "
            f"Received: backend={backend!r}"
        )
    if have != count:
        raise ValueError(
            f"The {backend} backend has already started with {have} CPU device(s); call "
            f"virtual_cpu_devices before any computation. Received: count={count}"
        )
    return have


# --------------------------------------------------------------------------- uneven batches

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


# --------------------------------------------------------------------------- compilation cache

def _default_cache_dir() -> Path:
    if os.environ.get("COVIDXR_JAX_CACHE_DIR"):
        return Path(os.environ["COVIDXR_JAX_CACHE_DIR"])
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "covidxr" / "jax-compilation-cache"


def enable_compilation_cache(path=None) -> bool:
    """Turn on JAX's persistent compilation cache in ``path``.

    Compiled train/predict steps are written there and reused by any later process (a new
    fold, another strategy, a resumed run) that compiles the same computation: same
    architecture, input shapes, dtypes, devices and JAX version. The thresholds are lowered
    (``jax_persistent_cache_min_compile_time_secs=0``,
    ``jax_persistent_cache_min_entry_size_bytes=-1``) so that small models are cached too.
    The directory is trusted code: do not share it with users you do not trust.

    Args:
        path: Cache folder (created). Default: ``$COVIDXR_JAX_CACHE_DIR``, else
            ``$XDG_CACHE_HOME/covidxr/jax-compilation-cache`` (``~/.cache/...``).

    Returns:
        True when the JAX cache is on; False (and nothing done) on other backends.
    """
    if keras.backend.backend() != "jax":
        return False
    import jax

    folder = Path(path).expanduser() if path is not None else _default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    folder = str(folder.resolve())
    previous = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    if previous and previous != folder:
        from jax.experimental.compilation_cache import compilation_cache

        compilation_cache.reset_cache()  # drop the cache opened on the previous folder
    return True


# --------------------------------------------------------------------------- memory

def _read_int(path):
    try:
        text = Path(path).read_text().strip()
    except (OSError, ValueError):
        return None
    if not text or text == "max":
        return None
    try:
        return int(text.split()[0])
    except ValueError:
        return None


def _cgroup_available():
    """Bytes left under the cgroup memory limit (v2, then v1), or None without a limit."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit = _read_int(limit_file)
        if limit is None or limit >= 2 ** 60:  # "max" or v1's "no limit" sentinel
            continue
        usage = _read_int(usage_file) or 0
        return max(0, limit - usage)
    return None


def _meminfo_available():
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _sysconf_available():
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _nvidia_smi_bytes(index=0):
    """(total, used) bytes of GPU ``index`` from nvidia-smi, or None."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total,memory.used",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=20, check=True).stdout.strip().splitlines()
        total, used = (int(float(v)) * 1024 * 1024 for v in out[index].split(","))
        return total, used
    except Exception:
        return None


def _device_memory():
    """(free bytes or None, device name) of the first accelerator of the backend."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform == "cpu":
            return None, "cpu"
        name = f"{device.platform}:{device.id}"
        try:
            stats = device.memory_stats() or {}
            return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), name
        except Exception:
            return None, name
    if backend == "tensorflow":
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            return None, "cpu"
        smi = _nvidia_smi_bytes(0)
        if smi is None:
            return None, "gpu:0"
        total, _ = smi
        try:
            used = int(tf.config.experimental.get_memory_info("GPU:0")["current"])
        except Exception:
            used = smi[1]
        return max(0, total - used), "gpu:0"
    return None, "cpu"


def available_memory() -> dict:
    """Memory free for training now.

    Returns:
        ``{"host_bytes": int, "device_bytes": int | None, "device": str}``. ``host_bytes`` is
        the smallest of: what is left under the cgroup (container) memory limit,
        ``/proc/meminfo``'s ``MemAvailable``, and (only when neither exists)
        ``os.sysconf`` free pages. ``device_bytes`` is the free memory of the first
        accelerator (JAX ``memory_stats()``; TensorFlow: ``nvidia-smi`` total minus TF's
        current use), or None on a CPU; ``device`` is e.g. ``"cpu"`` or ``"gpu:0"``.
    """
    candidates = [v for v in (_cgroup_available(), _meminfo_available()) if v is not None]
    if not candidates:
        candidates = [v for v in (_sysconf_available(),) if v is not None]
    host = min(candidates) if candidates else 0
    device_bytes, device = _device_memory()
    return {"host_bytes": int(host), "device_bytes": device_bytes, "device": device}


def _dtype_bytes(dtype) -> int:
    try:
        return int(np.dtype(str(dtype)).itemsize)
    except TypeError:
        return 2 if "16" in str(dtype) else 4


def _layer_activation_elements(model, scale):
    """(elements per sample, bytes per sample) of every layer output inside ``model``."""
    elements = 0
    nbytes = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if hasattr(layer, "layers") and isinstance(layer, keras.Model):
            e, b = _layer_activation_elements(layer, scale)
            elements += e
            nbytes += b
            continue
        try:
            outputs = keras.tree.flatten(layer.output)
        except (AttributeError, ValueError):
            continue
        for out in outputs:
            dims = [d for d in tuple(out.shape)[1:]]
            if any(d is None for d in dims):
                continue
            count = float(np.prod(dims)) if dims else 1.0
            if len(dims) == 3:  # (h, w, c): spatial output scales with the image area
                count *= scale
            elements += count
            nbytes += count * _dtype_bytes(getattr(layer, "compute_dtype", None) or out.dtype)
    return elements, nbytes


def estimate_training_memory(model, *, batch_size, train_images, image_size, num_classes=2,
                             num_replicas=1, backward_factor=1.5,
                             overhead_bytes=512 * 1024 ** 2) -> dict:
    """Rough peak memory of training ``model`` with Adam, by component, in bytes.

    * ``weights``: every weight (float32 variables, also under mixed precision).
    * ``optimizer``: gradients plus Adam's two slots for every floating weight, i.e. assuming
      the whole backbone may be fine-tuned (``fine_tune_from="all"``); an upper bound for
      the head-only phase.
    * ``activations``: the outputs of every layer (nested backbone layers included) for one
      per-replica batch of ``ceil(batch_size / num_replicas)`` images, in each layer's compute
      dtype, times ``backward_factor`` (the stored forward values plus their gradients).
      Spatial outputs are scaled from the model's input side to ``image_size``, so a model
      built at 32 px estimates a run at 224 px.
    * ``data``: the uint8 training images ``train_images * image_size**2`` in host memory.
    * ``overhead``: a fixed allowance for the framework runtime and compiled programs.

    A deliberately rough, conservative figure. Measured on a CPU (ResNet50, all layers
    trainable, peak RSS of the whole process): 96 px, batch 16: estimate 1.5 GiB, peak
    1.7 GiB (TensorFlow) / 1.6 GiB (JAX); 160 px, batch 32: estimate 4.3 GiB, peak 2.3 GiB
    (TensorFlow reuses activation buffers).

    Args:
        model: A built Keras model (e.g. from :func:`covidxr.models.build_model`).
        batch_size: Global batch size.
        train_images: Number of training images held in memory.
        image_size: Image side S of the run.
        num_classes: Number of classes (the head is counted with the model's weights; kept
            for a model built for another task).
        num_replicas: Devices the batch is split over (weights and optimizer state are per
            device).
        backward_factor: Multiplier of the forward activations for the backward pass.
        overhead_bytes: Fixed allowance added to the total.

    Returns:
        ``{"weights", "optimizer", "activations", "data", "overhead", "total"}`` in bytes
        (ints), plus ``"device"`` (= total without ``data``: what one accelerator holds).

    Raises:
        ValueError: Non-positive ``batch_size``/``image_size``/``num_replicas`` or negative
            ``train_images``.
    """
    for name, value, low in (("batch_size", batch_size, 1), ("image_size", image_size, 1),
                             ("train_images", train_images, 0), ("num_replicas", num_replicas, 1),
                             ("num_classes", num_classes, 2)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"Expected an integer {name} >= {low}. Received: {name}={value!r}")
    params = 0
    float_params = 0
    for weight in model.weights:
        size = int(np.prod(tuple(weight.shape))) if len(weight.shape) else 1
        params += size * _dtype_bytes(weight.dtype)
        if "float" in str(weight.dtype):
            float_params += size
    inputs = getattr(model, "inputs", None) or []
    side = tuple(inputs[0].shape)[1] if inputs and len(inputs[0].shape) == 4 else None
    scale = (float(image_size) / side) ** 2 if side else 1.0
    _, per_sample = _layer_activation_elements(model, scale)
    per_replica = int(math.ceil(int(batch_size) / int(num_replicas)))
    parts = {
        "weights": int(params),
        "optimizer": int(float_params * 4 * 3),
        "activations": int(per_sample * per_replica * float(backward_factor)),
        "data": int(train_images) * int(image_size) ** 2,
        "overhead": int(overhead_bytes),
    }
    parts["total"] = int(sum(parts.values()))
    parts["device"] = parts["total"] - parts["data"]
    return parts


def check_memory(model, *, batch_size, train_images, image_size, available=None, num_replicas=1,
                 **kwargs) -> dict:
    """Refuse a run whose :func:`estimate_training_memory` exceeds the free memory.

    Args:
        model: A built Keras model.
        batch_size: Global batch size.
        train_images: Number of training images held in memory.
        image_size: Image side of the run.
        available: Free bytes to compare with the estimate's ``total``. Default
            (:func:`available_memory`): on a CPU, the host's free memory against ``total``;
            with an accelerator, its free memory against the estimate's ``"device"`` part
            and the host's against ``total``.
        num_replicas: Devices the batch is split over.
        **kwargs: Passed on to :func:`estimate_training_memory`.

    Returns:
        The estimate (bytes by component), with ``"available"`` (the bytes it was compared
        with) and ``"where"`` (``"host"``, a device name, or ``"given"``) added.

    Raises:
        ValueError: "Expected ... to fit in memory: estimated X GiB for batch_size=B at
            image_size=S, but only Y GiB is available. ..." when the estimate does not fit.
    """
    estimate = estimate_training_memory(model, batch_size=batch_size, train_images=train_images,
                                        image_size=image_size, num_replicas=num_replicas, **kwargs)
    checks = []
    if available is not None:
        checks.append(("given", estimate["total"], int(available)))
    else:
        memory = available_memory()
        if memory["device_bytes"] is not None:
            checks.append((memory["device"], estimate["device"], int(memory["device_bytes"])))
        checks.append(("host", estimate["total"], int(memory["host_bytes"])))
    for where, needed, free in checks:
        if needed > free:
            place = "" if where == "given" else f" ({where})"
            raise ValueError(
                f"Expected the training run to fit in memory{place}: estimated "
                f"{needed / GiB:.2f} GiB for batch_size={batch_size} at image_size={image_size}, "
                f"but only {free / GiB:.2f} GiB is available. Lower --batch-size or "
                f"--image-size (or pass --no-memory-check). Received: batch_size={batch_size}, "
                f"image_size={image_size}"
            )
    where, _, free = checks[0]
    return {**estimate, "available": free, "where": where}
