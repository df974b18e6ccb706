"""Shared fixtures: a small synthetic dataset in each supported layout, and the real
snapshot when it is present."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")
# JAX's compilation cache of the test runs stays out of the user's ~/.cache
os.environ.setdefault("COVIDXR_JAX_CACHE_DIR", os.path.join(tempfile.gettempdir(), "covidxr-test-jax-cache"))


def backend_mismatch() -> str | None:
    """Why Keras does not run on the backend ``KERAS_BACKEND`` names (default tensorflow), or None.

    A ``~/.keras/keras.json`` or an import of Keras before this conftest could pick another
    backend; the JAX run in CI (``KERAS_BACKEND=jax pytest -m jax``) must not pass silently on
    TensorFlow.
    """
    import keras

    expected = os.environ.get("KERAS_BACKEND", "tensorflow")
    actual = keras.backend.backend()
    if actual == expected:
        return None
    return (f"Expected Keras to run on the backend KERAS_BACKEND names. "
            f"Received: keras.backend.backend()={actual!r}, KERAS_BACKEND={expected!r}")


def pytest_report_header(config):
    import keras

    return f"keras {keras.__version__}, backend {keras.backend.backend()} (KERAS_BACKEND={os.environ['KERAS_BACKEND']})"


@pytest.fixture(scope="session", autouse=True)
def _keras_backend_is_the_requested_one():
    """Every test fails at setup when Keras runs on another backend than KERAS_BACKEND."""
    problem = backend_mismatch()
    if problem:
        pytest.fail(problem, pytrace=False)

REAL_DATA = Path(
    os.environ.get("COVIDXR_REAL_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "covid-chestxray-dataset")
).resolve()

# Findings of the synthetic collection, in both notations, cycling over patients.
FLAT = ["COVID-19", "COVID-19, ARDS", "No Finding", "COVID-19", "Streptococcus", "No Finding"]
HIERARCHICAL = ["Pneumonia/Viral/COVID-19", "No Finding", "Pneumonia/Viral/COVID-19",
                "Pneumonia/Bacterial/Streptococcus", "Pneumonia/Viral/SARS"]
# Image modes real files come in: (PIL mode, extension).
MODES = [("RGB", "jpg"), ("L", "jpeg"), ("RGBA", "png"), ("P", "png"), ("I;16", "png"), ("L", "png")]


def _xray(rng, mode, *, size=(72, 60), bright=False):
    """A fake chest X-ray: two dark lungs in a lighter body, some noise; ``bright`` plants a
    bright square (a learnable signal)."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    img = 150 + 30 * rng.standard_normal((h, w))
    for cx in (w * 0.3, w * 0.7):
        img -= 80 * (((x - cx) / (w * 0.17)) ** 2 + ((y - h * 0.5) / (h * 0.33)) ** 2 < 1)
    if bright:
        img[h // 4: h // 4 + h // 5, w // 3: w // 3 + w // 5] = 250
    grey = np.clip(img, 0, 255).astype(np.uint8)
    if mode == "I;16":
        return Image.fromarray(grey.astype(np.uint16) * 257)
    base = Image.fromarray(grey, mode="L")
    if mode == "L":
        return base
    if mode == "RGB":
        return base.convert("RGB")
    if mode == "RGBA":
        return base.convert("RGBA")
    if mode == "P":
        return base.convert("P")
    raise ValueError(mode)


def write_collection(root: Path, *, patients=24, images_per_patient=3, seed=0, hierarchical_from=12,
                     extra_rows=True, size=(72, 60)):
    """Write a synthetic collection in the metadata layout; return the metadata frame.

    Patients cycle over flat findings, then (from ``hierarchical_from``) hierarchical ones, so
    every task has at least a few patients per class. COVID images carry a bright square.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for p in range(patients):
        findings = FLAT if p < hierarchical_from else HIERARCHICAL
        finding = findings[p % len(findings)]
        covid = "COVID-19" in finding
        for i in range(images_per_patient):
            mode, ext = MODES[(p + i) % len(MODES)]
            name = f"p{p:03d}_{i}.{ext}"
            _xray(rng, mode, bright=covid, size=size).save(root / "images" / name)
            rows.append({"patientid": str(100 + p), "offset": i, "sex": "MF"[p % 2],
                         "age": 30 + p, "finding": finding,
                         "view": ["PA", "AP", "AP Supine"][i % 3], "modality": "X-ray",
                         "folder": "images", "filename": name,
                         "url": f"https://site{p % 3}.example.org/case{p}", "license": "CC BY"})
    if extra_rows:
        _xray(rng, "L").save(root / "images" / "todo.png")
        _xray(rng, "L").save(root / "images" / "lateral.png")
        _xray(rng, "L").save(root / "images" / "ct.png")
        rows += [
            {"patientid": "900", "finding": "todo", "view": "PA", "modality": "X-ray",
             "folder": "images", "filename": "todo.png", "sex": "F", "age": 50},
            {"patientid": "901", "finding": "COVID-19", "view": "L", "modality": "X-ray",
             "folder": "images", "filename": "lateral.png", "sex": "M", "age": 51},
            {"patientid": "902", "finding": "COVID-19", "view": "Axial", "modality": "CT",
             "folder": "images", "filename": "ct.png", "sex": "M", "age": 52},
            {"patientid": "903", "finding": "COVID-19", "view": "PA", "modality": "X-ray",
             "folder": "images", "filename": "not-there.jpg", "sex": "M", "age": 53},
        ]
    meta = pd.DataFrame(rows)
    meta.to_csv(root / "metadata.csv", index=False)
    return meta


@pytest.fixture(scope="session")
def collection(tmp_path_factory) -> Path:
    """A synthetic collection (metadata.csv + images/), shared by the session: read only."""
    root = tmp_path_factory.mktemp("collection")
    write_collection(root)
    return root


@pytest.fixture(scope="session")
def class_folders(tmp_path_factory) -> Path:
    """The same kind of images in the one-folder-per-class layout."""
    root = tmp_path_factory.mktemp("folders")
    rng = np.random.default_rng(1)
    for folder, n, bright in (("COVID", 8, True), ("normal", 6, False), ("pneumonia", 6, False)):
        (root / folder).mkdir()
        for i in range(n):
            mode, ext = MODES[i % len(MODES)]
            _xray(rng, mode, bright=bright).save(root / folder / f"{folder}_{i}.{ext}")
    return root


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The shared snapshot; tests using it skip when it is absent."""
    if not (REAL_DATA / "metadata.csv").is_file():
        pytest.skip(f"real dataset snapshot not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(scope="session")
def real_cache(real_data, tmp_path_factory) -> Path:
    """A cache folder shared by the real-data tests (its hash index and decoded images): the snapshot's
    files are hashed and decoded once per session, not once per test. Tests of the cache itself use their own."""
    return tmp_path_factory.mktemp("real-cache")


@pytest.fixture(scope="session")
def real_run(real_data, real_cache, tmp_path_factory):
    """A tiny trained run on the snapshot (VGG16, random weights, 32 px, one head epoch), shared by the
    real-data tests, and the warnings its training gave: ``(run, warnings)``; read only — copy it before
    changing anything in it."""
    import warnings

    from covidxr.train import TrainConfig, train

    config = TrainConfig(data_dir=str(real_data), backbone="vgg16", weights="none", image_size=32, batch_size=32,
                         epochs=1, fine_tune_epochs=0, strategy="class-weight",
                         runs_dir=str(tmp_path_factory.mktemp("real-run") / "runs"), cache_dir=str(real_cache),
                         verbose=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = train(config)
    return run, [w.message for w in caught]


@pytest.fixture(scope="session")
def tiny_run(collection, tmp_path_factory):
    """A tiny trained run (VGG16, random weights, 32 px, 2 head epochs) on the synthetic
    collection; read only — copy it before changing anything in it."""
    from covidxr.train import TrainConfig, train

    root = tmp_path_factory.mktemp("tiny_run")
    config = TrainConfig(data_dir=str(collection), backbone="vgg16", weights="none", image_size=32, batch_size=8,
                         epochs=2, fine_tune_epochs=0, strategy="oversample", learning_rate=1e-2,
                         runs_dir=str(root / "runs"), cache_dir=str(root / "cache"), verbose=0)
    return train(config)


#: The tiny grid of ``finished_grid`` (tests/test_grid.py) and of the Ray grid (tests/test_grid_ray.py).
GRID = {"backbones": ["vgg16", "vgg19"], "strategies": ["none", "oversample"], "folds": 2, "n_bootstrap": 20}


def grid_base(collection, cache_dir, **kwargs):
    """The tiny grids' training options: two phase-1 epochs of the gradient head (a Ray worker can be
    killed between them), 32 px, random weights."""
    from covidxr.train import TrainConfig

    options = dict(data_dir=str(collection), weights="none", image_size=32, batch_size=8, head="gradient", epochs=2,
                   fine_tune_epochs=0, val_size=0.3, cache_dir=str(cache_dir), verbose=0, learning_rate=1e-2)
    return TrainConfig(**{**options, **kwargs})


class GridInterrupted(KeyboardInterrupt):  # a user interrupt stops the grid (a run's own error does not)
    pass


@pytest.fixture(scope="session")
def finished_grid(collection, tmp_path_factory):
    """The tiny local grid, interrupted at the start of its 3rd run, then resumed; shared by the session.

    ``reference`` is a copy of its records as the resume left them (grid.json, the comparison, each
    run's config, metrics and predictions), which the Ray grid must equal; tests may change ``out``.
    """
    import shutil

    from covidxr import grid

    root = tmp_path_factory.mktemp("grid")
    out = root / "grid"
    base = grid_base(collection, root / "cache")
    real_train = grid.train
    calls, resumed = [], []

    def interrupting(config):
        if len(calls) == 2:
            raise GridInterrupted("stopped after the 2nd run")
        calls.append((config.backbone, config.strategy, config.fold))
        return real_train(config)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(grid, "train", interrupting)
        with pytest.raises(GridInterrupted, match="after the 2nd run"):
            grid.run_grid(base, out=out, progress=False, **GRID)
    first = sorted(p.name for p in (out / "runs").iterdir())
    mtimes = {name: (out / "runs" / name / "model.keras").stat().st_mtime_ns for name in first}
    # An interrupted third run: a folder holding only config.json (no model yet).
    partial = out / "runs" / "zz-interrupted-run"
    partial.mkdir()
    shutil.copy(out / "runs" / first[0] / "config.json", partial / "config.json")

    def counting(config):
        resumed.append((config.backbone, config.strategy, config.fold))
        return real_train(config)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(grid, "train", counting)
        grid.run_grid(base, out=out, progress=False, **GRID)
    reference = root / "reference"
    shutil.copytree(out, reference, ignore=shutil.ignore_patterns("*.keras", "checkpoint", "tensorboard", "*.png"))
    return {"out": out, "base": base, "first": first, "mtimes": mtimes, "calls": calls, "resumed": resumed,
            "partial": partial, "reference": reference}


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """One local Ray instance with 2 CPUs for the whole session (workers are reused across tests).

    Its workers carry a fault that fires once: while the file ``marker`` exists, the second commit of
    a training checkpoint (after epoch 1) kills the worker that reaches it and removes the file.
    Skips without Ray only when ``CI`` is unset.
    """
    if os.environ.get("CI"):
        import ray
    else:
        ray = pytest.importorskip("ray")
    marker = tmp_path_factory.mktemp("ray-fault") / "armed"
    env = {"COVIDXR_FAULT": "after-state@2", "COVIDXR_FAULT_ONCE": str(marker)}
    for attempt in (1, 2):  # on a loaded machine the raylet may miss Ray's 30 s start-up window once
        try:
            ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", runtime_env={"env_vars": env})
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    yield {"ray": ray, "marker": marker}
    ray.shutdown()


# --------------------------------------------------------------------------- a real MLflow tracking server

class _MlflowServer:
    """One ``mlflow server`` process per test session: SQLite backend store, artefacts served from a
    temporary folder, on 127.0.0.1 at a free port. Started as soon as the collected tests need it
    (:func:`pytest_collection_modifyitems`), so its start-up overlaps the first tests; waited for on use."""

    process = None
    uri = None
    root = None

    @classmethod
    def start(cls):
        import socket
        import subprocess
        import sys

        if cls.process is not None:
            return
        cls.root = Path(tempfile.mkdtemp(prefix="covidxr-mlflow-"))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        cls.uri = f"http://127.0.0.1:{port}"
        log = open(cls.root / "server.log", "wb")  # noqa: SIM115 - kept open for the process
        cls.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{cls.root / 'mlflow.db'}",
             "--artifacts-destination", str(cls.root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=str(cls.root))

    @classmethod
    def wait(cls, timeout=180.0) -> str:
        import time
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cls.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(cls.uri + "/health", timeout=2) as answer:
                    if answer.status == 200:
                        return cls.uri
            except OSError:
                time.sleep(0.2)
        tail = (cls.root / "server.log").read_text(errors="replace")[-3000:]
        pytest.fail(f"the MLflow tracking server did not start ({cls.uri}):\n{tail}", pytrace=False)

    @classmethod
    def stop(cls):
        import signal

        if cls.process is None:
            return
        import subprocess

        try:
            os.killpg(cls.process.pid, signal.SIGTERM)  # uvicorn and its worker
            cls.process.wait(timeout=3)
        except subprocess.TimeoutExpired:  # still closing connections: nothing there needs keeping
            os.killpg(cls.process.pid, signal.SIGKILL)
            cls.process.wait(timeout=10)
        except (ProcessLookupError, OSError):
            pass
        cls.process = None


def pytest_collection_modifyitems(session, config, items):
    import importlib.util

    if importlib.util.find_spec("mlflow") is not None and any(
            "mlflow_server" in getattr(item, "fixturenames", ()) for item in items):
        _MlflowServer.start()


def pytest_sessionfinish(session, exitstatus):
    _MlflowServer.stop()  # also when no test used it after all (deselected)


@pytest.fixture(scope="session")
def mlflow_server():
    """The URI of a real MLflow tracking server (SQLite backend store, artefacts in a temporary folder)
    on 127.0.0.1, started once per session and stopped at its end. Read what was logged with
    ``mlflow.tracking.MlflowClient(uri)``."""
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        if os.environ.get("CI"):
            pytest.fail("mlflow is not installed (requirements.txt)", pytrace=False)
        pytest.skip("mlflow is not installed")
    _MlflowServer.start()
    try:
        yield _MlflowServer.wait()
    finally:
        _MlflowServer.stop()


def event_points(log_dir) -> dict:
    """How often each ``(part, tag, step)`` occurs in the TensorBoard event files under ``log_dir``, read
    record by record (no de-duplication): a step written twice counts 2."""
    from collections import Counter

    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    counts = Counter()
    for path in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                counts[(path.parent.name, value.tag, int(event.step))] += 1
    return dict(counts)
