"""Tests of covidxr.runtime: precision, memory checks, uneven-batch padding, the compilation
cache and data parallelism on two virtual CPU devices (JAX and TensorFlow, in subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

from covidxr import runtime
from covidxr.runtime import devices as runtime_devices
from covidxr.runtime import (
    ReplicaBatches,
    available_memory,
    check_memory,
    data_parallel_scope,
    enable_compilation_cache,
    estimate_training_memory,
    precision_policy,
    predict_padded,
    replica_batch_size,
)
from covidxr.sampling import BatchSequence

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _tiny_model(size=32, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 1), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs)


def _data(n=21, size=32, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8)
    labels = np.arange(n) % 2
    return images, labels


def _start(script, *, backend, tmp_path, extra_env=None):
    """Start ``script`` in a new Python process on ``backend``; :func:`_result` waits for it."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PJRT_NPROC", "NPROC")}
    env.update({"KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2",
                "PYTHONPATH": SRC + os.pathsep + env.get("PYTHONPATH", "")})
    env.update(extra_env or {})
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"script_{backend}.py"
    path.write_text(textwrap.dedent(script))
    with open(tmp_path / f"script_{backend}.out", "w") as out, open(tmp_path / f"script_{backend}.err", "w") as err:
        proc = subprocess.Popen([sys.executable, str(path)], env=env, stdout=out, stderr=err, cwd=str(tmp_path))
    proc.output = (tmp_path / f"script_{backend}.out", tmp_path / f"script_{backend}.err")
    return proc


def _result(proc, *, timeout=300):
    """The ``RESULT`` line a script started by :func:`_start` printed, parsed; fails on any other ending."""
    proc.wait(timeout=timeout)
    stdout, stderr = (path.read_text() for path in proc.output)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    lines = [l for l in stdout.splitlines() if l.startswith("RESULT ")]
    assert lines, stdout[-3000:] + stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def _run(script, *, backend, tmp_path, extra_env=None, timeout=300):
    return _result(_start(script, backend=backend, tmp_path=tmp_path, extra_env=extra_env), timeout=timeout)


# --------------------------------------------------------------------------- precision

@pytest.mark.parametrize("value, expected", [
    (None, "float32"), (False, "float32"), ("float32", "float32"), ("FP32", "float32"),
    ("none", "float32"), (True, "mixed_bfloat16"), ("bf16", "mixed_bfloat16"),
    ("mixed_bfloat16", "mixed_bfloat16"), ("mixed-bfloat16", "mixed_bfloat16"),
    ("fp16", "mixed_float16"), ("Mixed_Float16", "mixed_float16"), ("float16", "mixed_float16"),
])
def test_precision_policy(value, expected):
    assert precision_policy(value) == expected


@pytest.mark.parametrize("value", ["int8", "mixed", 16, 1.0, ["bf16"]])
def test_precision_policy_rejects(value):
    with pytest.raises(ValueError, match=r"Expected None, False, True or one of \['float32', "
                       r"'mixed_bfloat16', 'mixed_float16'\].*Received: mixed_precision="):
        precision_policy(value)


# --------------------------------------------------------------------------- memory

def test_available_memory_reports_host_bytes():
    memory = available_memory()
    assert set(memory) == {"host_bytes", "device_bytes", "device"}
    assert isinstance(memory["host_bytes"], int) and memory["host_bytes"] > 0
    assert memory["host_bytes"] < 2 ** 50  # not the cgroup "no limit" sentinel
    if memory["device"] == "cpu":
        assert memory["device_bytes"] is None


def test_estimate_grows_with_batch_and_image_size():
    model = _tiny_model()
    base = estimate_training_memory(model, batch_size=8, train_images=100, image_size=32)
    assert base["total"] == sum(base[k] for k in ("weights", "optimizer", "activations", "data", "overhead"))
    assert base["device"] == base["total"] - base["data"]
    assert base["weights"] == model.count_params() * 4
    assert base["optimizer"] == 3 * base["weights"]
    assert base["data"] == 100 * 32 * 32
    bigger_batch = estimate_training_memory(model, batch_size=16, train_images=100, image_size=32)
    assert bigger_batch["activations"] == pytest.approx(2 * base["activations"], rel=1e-6)
    assert bigger_batch["total"] > base["total"]
    bigger_image = estimate_training_memory(model, batch_size=8, train_images=100, image_size=64)
    # Spatial activations scale with the image area; the pooled (8, 4) and head outputs do not.
    assert 3.5 * base["activations"] < bigger_image["activations"] < 4 * base["activations"]
    assert bigger_image["data"] == 4 * base["data"]
    assert bigger_image["weights"] == base["weights"]
    split = estimate_training_memory(model, batch_size=16, train_images=100, image_size=32, num_replicas=2)
    assert split["activations"] == base["activations"]


def test_estimate_scales_a_small_model_to_the_run_size():
    from covidxr.models import build_model

    small = build_model("vgg16", num_classes=2, image_size=32, weights=None, augmentation=None)
    large = build_model("vgg16", num_classes=2, image_size=64, weights=None, augmentation=None)
    a = estimate_training_memory(small, batch_size=4, train_images=10, image_size=64)
    b = estimate_training_memory(large, batch_size=4, train_images=10, image_size=64)
    assert a["activations"] == pytest.approx(b["activations"], rel=0.05)
    assert a["weights"] == b["weights"] > 50e6  # VGG16 without top: 14.7M float32 weights


@pytest.mark.parametrize("name, value", [("batch_size", 0), ("image_size", -1), ("train_images", -1),
                                         ("num_replicas", 0), ("batch_size", 2.5)])
def test_estimate_rejects_bad_sizes(name, value):
    kwargs = dict(batch_size=8, train_images=10, image_size=32)
    kwargs[name] = value
    with pytest.raises(ValueError, match=rf"Expected an integer {name} >= .*Received: {name}="):
        estimate_training_memory(_tiny_model(), **kwargs)


def test_check_memory_refuses_a_run_that_does_not_fit():
    with pytest.raises(ValueError, match=r"Expected the training run to fit in memory: estimated "
                       r"\d+\.\d\d GiB for batch_size=8 at image_size=32, but only 0\.00 GiB is "
                       r"available\. Lower --batch-size or --image-size \(or pass "
                       r"--no-memory-check\)\. Received: batch_size=8, image_size=32"):
        check_memory(_tiny_model(), batch_size=8, train_images=10, image_size=32, available=1024)


def test_check_memory_passes_a_small_model_in_real_memory():
    result = check_memory(_tiny_model(), batch_size=8, train_images=40, image_size=32)
    assert result["where"] in ("host", available_memory()["device"])
    assert 0 < result["total"] <= available_memory()["host_bytes"]
    assert result["available"] > 0
    assert check_memory(_tiny_model(), batch_size=8, train_images=40, image_size=32,
                        available=10 * 1024 ** 3)["where"] == "given"


# --------------------------------------------------------------------------- uneven batches

@pytest.mark.parametrize("batch, replicas, expected", [(5, 2, 6), (6, 2, 6), (1, 4, 4), (7, 1, 7), (9, 3, 9)])
def test_replica_batch_size(batch, replicas, expected):
    assert replica_batch_size(batch, replicas) == expected


def test_replica_batch_size_rejects():
    with pytest.raises(ValueError, match="Expected a positive integer batch_size. Received: batch_size=0"):
        replica_batch_size(0, 2)
    with pytest.raises(ValueError, match="Expected a positive integer num_replicas. Received: num_replicas=0"):
        replica_batch_size(4, 0)


def test_replica_batches_pad_with_zero_weights():
    images, labels = _data(21)
    seq = BatchSequence(images, labels, num_classes=2, batch_size=5, shuffle=False)
    padded = ReplicaBatches(seq, num_replicas=2, class_weight={0: 1.0, 1: 3.0})
    assert len(padded) == 5
    sizes = []
    for i in range(len(padded)):
        x, y, w = padded[i]
        real_x, real_y = seq[i]
        n = len(real_x)
        sizes.append(len(x))
        assert len(x) % 2 == 0 and len(x) == len(y) == len(w) and x.dtype == np.uint8
        np.testing.assert_array_equal(x[:n], real_x)
        np.testing.assert_array_equal(w[:n], np.where(real_y[:, 0] == 1, 3.0, 1.0))
        assert np.all(w[n:] == 0)
    assert sizes == [6, 6, 6, 6, 2]
    assert ReplicaBatches(seq, num_replicas=1)[4][2].tolist() == [1.0]


def test_replica_batches_forward_epochs_and_reject_double_weights():
    images, labels = _data(21)
    seq = BatchSequence(images, labels, num_classes=2, batch_size=5, strategy="oversample", seed=3)
    padded = ReplicaBatches(seq, num_replicas=2)
    padded.on_epoch_end()
    assert seq.epoch == 1

    class Weighted(keras.utils.PyDataset):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            return images[:3], labels[:3, None].astype("float32"), np.ones(3, "float32")

    with pytest.raises(ValueError, match="Expected either class_weight or a dataset yielding sample "
                       "weights, not both. Received: class_weight="):
        ReplicaBatches(Weighted(), num_replicas=2, class_weight={0: 1.0, 1: 2.0})[0]
    x, y, w = ReplicaBatches(Weighted(), num_replicas=2)[0]
    assert w.tolist() == [1.0, 1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="Expected a positive integer num_replicas. Received: num_replicas=-1"):
        ReplicaBatches(seq, num_replicas=-1)


def test_padding_masked_metrics_ignore_padding_and_class_weights():
    images, labels = _data(21)
    model = _tiny_model()
    seq = BatchSequence(images, labels, num_classes=2, batch_size=5, shuffle=False)
    metrics = lambda: [keras.metrics.AUC(name="auc"), keras.metrics.AUC(curve="PR", name="pr_auc"),
                       keras.metrics.BinaryAccuracy(name="acc")]
    model.compile(loss="binary_crossentropy", metrics=metrics())
    plain = model.evaluate(seq, verbose=0, return_dict=True)
    padded = ReplicaBatches(seq, num_replicas=4, class_weight={0: 1.0, 1: 5.0})
    unmasked = model.evaluate(padded, verbose=0, return_dict=True)
    assert unmasked["auc"] != pytest.approx(plain["auc"], abs=1e-4)  # plain metrics count the padding
    model.compile(loss="binary_crossentropy", weighted_metrics=runtime.padding_masked(metrics()))
    masked = model.evaluate(padded, verbose=0, return_dict=True)
    for name in ("auc", "pr_auc", "acc"):
        assert masked[name] == pytest.approx(plain[name], abs=1e-6), name
    assert masked["loss"] != pytest.approx(plain["loss"])  # the loss does see the class weights


def test_padding_masked_model_saves_and_reloads(tmp_path):
    images, labels = _data(12)
    model = _tiny_model()
    model.compile(optimizer="sgd", loss="binary_crossentropy",
                  weighted_metrics=runtime.padding_masked([keras.metrics.AUC(name="auc")]))
    seq = BatchSequence(images, labels, num_classes=2, batch_size=5, shuffle=False)
    model.fit(ReplicaBatches(seq, num_replicas=2), epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    logs = loaded.evaluate(ReplicaBatches(seq, num_replicas=2), verbose=0, return_dict=True)
    assert set(logs) == {"loss", "auc"}
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)


def test_predict_padded_returns_one_row_per_input():
    images, labels = _data(21)
    model = _tiny_model()
    expected = model.predict(images, verbose=0)
    for replicas in (1, 2, 4):
        out = predict_padded(model, images, num_replicas=replicas, batch_size=5)
        np.testing.assert_allclose(out, expected, atol=1e-6)
        seq = BatchSequence(images, labels, num_classes=2, batch_size=5, shuffle=False)
        np.testing.assert_allclose(predict_padded(model, seq, num_replicas=replicas), expected, atol=1e-6)
    assert predict_padded(model, images[:1], num_replicas=2).shape == (1, 1)


# --------------------------------------------------------------------------- scope, single process

def test_scope_disabled_is_a_no_op():
    with data_parallel_scope(enabled=False) as rt:
        assert rt.num_replicas == 1 and not rt.enabled and rt.distribution is None
        assert rt.backend == keras.backend.backend()
        assert rt.batch_size(5) == 5


def test_scope_rejects_other_backends(monkeypatch):
    monkeypatch.setattr(runtime_devices.keras.backend, "backend", lambda: "torch")
    with pytest.raises(ValueError, match=r"Data parallelism is supported on the backends \['jax', "
                       r"'tensorflow'\].*Received: backend='torch'"):
        with data_parallel_scope(enabled=True):
            pass
    with data_parallel_scope(enabled=False) as rt:
        assert rt.backend == "torch" and rt.num_replicas == 1


def test_scope_warns_about_too_few_threads_for_virtual_cpu_devices(monkeypatch):
    for name in ("PJRT_NPROC", "NPROC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(runtime_devices.os, "cpu_count", lambda: 2)
    with pytest.warns(RuntimeWarning, match="can deadlock in JAX's all-reduce; set PJRT_NPROC=4"):
        runtime_devices._warn_jax_cpu_threads(["cpu:0", "cpu:1"])
    monkeypatch.setenv("PJRT_NPROC", "4")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runtime_devices._warn_jax_cpu_threads(["cpu:0", "cpu:1"])
        runtime_devices._warn_jax_cpu_threads(["gpu:0", "gpu:1"])


def test_virtual_cpu_devices_rejects_bad_counts_and_a_started_backend():
    with pytest.raises(ValueError, match="Expected a positive integer count. Received: count=0"):
        runtime.virtual_cpu_devices(0)
    keras.ops.convert_to_numpy(keras.ops.ones(1))  # make sure the backend has started
    with pytest.raises(ValueError, match=r"has already started with 1 CPU device\(s\); call "
                       r"virtual_cpu_devices before any computation. Received: count=3"):
        runtime.virtual_cpu_devices(3)
    assert runtime.virtual_cpu_devices(1) == 1


def test_compilation_cache_is_off_on_other_backends():
    if keras.backend.backend() == "jax":
        pytest.skip("covered by the JAX subprocess test")
    assert enable_compilation_cache(Path("unused")) is False
    assert not Path("unused").exists()


# --------------------------------------------------------------------------- subprocesses

CACHE_SCRIPT = """
    import json, sys
    import jax
    from covidxr import runtime
    assert "tensorflow" not in sys.modules
    events = []
    jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
    import keras, numpy as np
    assert runtime.enable_compilation_cache(sys.argv[1] if len(sys.argv) > 1 else "cache") is True
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    model.predict(np.ones((8, 4), "float32"), verbose=0)
    print("RESULT " + json.dumps({
        "hits": events.count("/jax/compilation_cache/cache_hits"),
        "misses": events.count("/jax/compilation_cache/cache_misses"),
        "dir": jax.config.jax_compilation_cache_dir,
        "tensorflow": "tensorflow" in sys.modules}))
"""


@pytest.mark.slow
def test_compilation_cache_reused_by_a_second_process(tmp_path):
    first = _run(CACHE_SCRIPT, backend="jax", tmp_path=tmp_path)
    assert first["dir"] == str((tmp_path / "cache").resolve())
    assert first["misses"] >= 1 and first["hits"] == 0
    assert any((tmp_path / "cache").iterdir())
    second = _run(CACHE_SCRIPT, backend="jax", tmp_path=tmp_path)
    assert second["hits"] >= 1 and second["misses"] == 0
    assert not first["tensorflow"] and not second["tensorflow"]


DATA_PARALLEL_SCRIPT = """
    import json, sys
    import keras
    from covidxr import runtime
    tf_at_import = "tensorflow" in sys.modules
    assert runtime.virtual_cpu_devices(2) == 2
    import numpy as np
    from covidxr.models import build_model, resolve_fine_tune_from, set_trainable_from
    from covidxr.sampling import BatchSequence

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (21, 32, 32, 1), dtype=np.uint8)
    labels = np.arange(21) % 2
    # 21 images in batches of 5: every batch (5, 5, 5, 5, 1) is odd, so none splits over 2 devices.
    train = BatchSequence(images, labels, num_classes=2, batch_size=5, strategy="oversample", seed=1)
    val = BatchSequence(images[:7], labels[:7], num_classes=2, batch_size=5, shuffle=False)
    result = {"tensorflow_at_import": tf_at_import}

    # Without padding an uneven batch fails (the reason ReplicaBatches exists).
    with runtime.data_parallel_scope(enabled=True) as rt:
        tiny = keras.Sequential([keras.Input((32, 32, 1)), keras.layers.Flatten(), keras.layers.Dense(1)])
        tiny.compile(optimizer="sgd", loss="mse")
        try:
            tiny.fit(images[:5].astype("float32"), np.zeros((5, 1), "float32"), batch_size=5, verbose=0)
            result["unpadded_error"] = None
        except Exception as err:
            result["unpadded_error"] = type(err).__name__

    with runtime.data_parallel_scope(enabled=True) as rt:
        model = build_model("resnet50", num_classes=2, image_size=32, weights=None,
                            augmentation=None, seed=0)
        set_trainable_from(model, resolve_fine_tune_from(model, "auto"))
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy",
                      weighted_metrics=runtime.padding_masked([keras.metrics.AUC(name="auc")]))
        history = model.fit(rt.batches(train, class_weight={0: 1.0, 1: 1.5}),
                            validation_data=rt.batches(val), epochs=1, verbose=0)
        probs = rt.predict(model, images, batch_size=5)
        probs_seq = rt.predict(model, BatchSequence(images, labels, num_classes=2, batch_size=5,
                                                    shuffle=False))
        result.update(num_replicas=rt.num_replicas, devices=list(rt.devices), backend=rt.backend,
                      variable_devices=(len(model.weights[0].value.sharding.device_set)
                                        if rt.backend == "jax" else
                                        len(model.weights[0].value.values)),
                      shape=list(probs.shape), finite=bool(np.isfinite(probs).all()),
                      seq_diff=float(np.abs(probs - probs_seq).max()),
                      history={k: [float(v) for v in vs] for k, vs in history.history.items()})
    result["distribution_after"] = (None if rt.backend != "jax" else
                                    repr(keras.distribution.distribution()))
    print("RESULT " + json.dumps(result))
"""


def _check_data_parallel(result, backend):
    assert result["backend"] == backend
    assert result["num_replicas"] == 2 and len(result["devices"]) == 2
    assert result["variable_devices"] == 2  # weights live on both devices
    assert result["unpadded_error"] is not None  # see the runtime module docstring
    assert result["shape"] == [21, 1] and result["finite"]
    assert result["seq_diff"] < 1e-5  # same rows whichever replica computed them
    assert set(result["history"]) == {"loss", "auc", "val_loss", "val_auc"}
    assert all(np.isfinite(v).all() for v in result["history"].values())


@pytest.fixture(scope="module")
def data_parallel(tmp_path_factory):
    """The data-parallel script on JAX and on TensorFlow, started together: each process spends most of
    its time in one thread (imports, tracing, compiling), so on two cores the two overlap."""
    root = tmp_path_factory.mktemp("data-parallel")
    procs = {backend: _start(DATA_PARALLEL_SCRIPT, backend=backend, tmp_path=root / backend)
             for backend in ("jax", "tensorflow")}
    yield procs
    for proc in procs.values():  # one test deselected: its process is not waited for
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.mark.slow
def test_data_parallel_two_cpu_devices_jax(data_parallel):
    result = _result(data_parallel["jax"])
    _check_data_parallel(result, "jax")
    assert result["devices"] == ["cpu:0", "cpu:1"]
    assert result["unpadded_error"] == "IndivisibleError"
    assert result["distribution_after"] == "None"  # the previous (no) distribution is restored
    assert result["tensorflow_at_import"] is False


@pytest.mark.slow
def test_data_parallel_two_cpu_devices_tensorflow(data_parallel):
    result = _result(data_parallel["tensorflow"])
    _check_data_parallel(result, "tensorflow")
    assert [d.rsplit(":", 2)[-2:] for d in result["devices"]] == [["CPU", "0"], ["CPU", "1"]]
    assert result["unpadded_error"] == "InvalidArgumentError"
