"""Where and how training runs: data parallelism, precision, compilation cache, memory.
Must not import TensorFlow at import time, nor train: the TensorFlow branches import it lazily.

* :func:`data_parallel_scope` spreads every batch over several devices (JAX:
  ``keras.distribution.DataParallel``; TensorFlow: ``tf.distribute.MirroredStrategy``).
  Build, compile, fit, reload and predict **inside** the scope (:mod:`covidxr.runtime.devices`,
  which also explains the virtual CPU devices of :func:`virtual_cpu_devices`).
* :class:`ReplicaBatches` and :func:`predict_padded` make batches whose size does not divide
  by the number of replicas safe (:mod:`covidxr.runtime.batches` says what fails otherwise
  and the rule that works).
* :func:`precision_policy` normalises the ``mixed_precision`` option into a Keras dtype policy
  (:mod:`covidxr.runtime.precision`).
* :func:`enable_compilation_cache` turns on JAX's persistent compilation cache, so folds and
  strategies with the same architecture and shapes are not compiled again in a new process
  (:mod:`covidxr.runtime.compilation`).
* :func:`available_memory`, :func:`estimate_training_memory` and :func:`check_memory` refuse a
  run that cannot fit before hours are spent loading data (:mod:`covidxr.runtime.memory`).

Nothing here imports TensorFlow at import time: the TensorFlow branches import it lazily, so
the package works with ``KERAS_BACKEND=jax`` and no TensorFlow installed.
"""

from .batches import PaddingMasked, ReplicaBatches, padding_masked, predict_padded, replica_batch_size
from .compilation import enable_compilation_cache
from .devices import DataParallelRuntime, data_parallel_scope, virtual_cpu_devices
from .memory import available_memory, check_memory, estimate_training_memory
from .precision import PRECISION_POLICIES, precision_policy

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
