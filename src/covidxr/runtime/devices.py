"""Data parallelism: every batch spread over several devices.
Must not import TensorFlow at import time: the TensorFlow branch imports it lazily.

:func:`data_parallel_scope` spreads every batch over several devices (JAX:
``keras.distribution.DataParallel``; TensorFlow: ``tf.distribute.MirroredStrategy``) and
yields a :class:`DataParallelRuntime`. Build, compile, fit, reload and predict **inside** the
scope. Batches whose size does not divide by the number of replicas need care: see
:mod:`covidxr.runtime.batches`.

Virtual CPU devices (tests, CPU-only machines): JAX's CPU client runs each device's program
on a shared thread pool of one thread per core. With as many virtual devices as cores, a
ResNet50 training step with the augmentation layers deadlocked in an all-reduce (``Termination
timeout for all reduce ... Expected 2 threads to join the rendezvous``) on a 2-core machine;
two threads per device (``PJRT_NPROC``) fixed it. :func:`virtual_cpu_devices` sets this up.

TensorFlow is imported lazily, only in its branches.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from .batches import ReplicaBatches, predict_padded, replica_batch_size

__all__ = [
    "DataParallelRuntime",
    "data_parallel_scope",
    "virtual_cpu_devices",
]

_DATA_PARALLEL_BACKENDS = ("jax", "tensorflow")


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
    (``runtime.predict(model, x)``); see :mod:`covidxr.runtime.batches` for what fails
    otherwise.

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
