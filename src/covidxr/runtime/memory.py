"""Memory: refuse a run that cannot fit before hours are spent training.
Must not allocate what it estimates: it reads layer shapes and what the machine has free.

:func:`available_memory` says what is free (host and first accelerator),
:func:`estimate_training_memory` estimates a training run's peak, and :func:`check_memory`
compares the two. TensorFlow is imported lazily, only in its branch.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import keras
import numpy as np

__all__ = [
    "available_memory",
    "check_memory",
    "estimate_training_memory",
]

GiB = 1024 ** 3


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
