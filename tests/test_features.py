"""Tests for the frozen-feature store (covidxr.images.feature_store, covidxr.training.frozen): a grid
computes each backbone's features once, keys, damaged files, concurrent writers, no augmentation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from covidxr import grid
from covidxr.images import FEATURES_DIR, FeatureStore, clear_feature_store, decode, feature_key, image_ids
from covidxr.images.feature_store import STALE_SECONDS
from covidxr.models import build_model
from covidxr.train import TrainConfig, train
from covidxr.training import frozen

SIZE = 32
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _counting(monkeypatch):
    """Count the images of every backbone forward pass of phase 1 (all go through pooled_features)."""
    calls = []
    real = frozen.pooled_features

    def counted(model, images, *, batch_size):
        calls.append(len(images))
        return real(model, images, batch_size=batch_size)

    monkeypatch.setattr(frozen, "pooled_features", counted)
    return calls


# --------------------------------------------------------------------------- a grid, end to end

@pytest.fixture(scope="module")
def feature_grid(collection, tmp_path_factory):
    root = tmp_path_factory.mktemp("feature-grid")
    base = TrainConfig(data_dir=str(collection), weights="none", image_size=SIZE, batch_size=8, epochs=1,
                       fine_tune_epochs=0, val_size=0.3, cache_dir=str(root / "cache"), verbose=0)
    with pytest.MonkeyPatch.context() as mp:
        calls = _counting(mp)
        out = grid.run_grid(base, out=root / "grid", backbones=["vgg16"], strategies=["none", "oversample"],
                            folds=2, n_bootstrap=10, progress=False)
    record = json.loads((out / "grid.json").read_text())
    runs = [json.loads((out / "runs" / name / "config.json").read_text()) for name in record["runs"]]
    return {"root": root, "base": base, "calls": calls, "runs": runs}


def test_a_grid_computes_each_backbones_features_once(feature_grid):
    runs, calls = feature_grid["runs"], feature_grid["calls"]
    images = runs[0]["phase1_features"]["computed"]
    counts = runs[0]["class_counts"]
    assert len(runs) == 4 and images == sum(counts[part][c] for part in counts for c in runs[0]["classes"])
    assert calls == [images]  # one forward pass, in the first run, over every cached image
    first, *later = (run["phase1_features"] for run in runs)
    assert first["computed"] == images and first["reused"] == 0
    for store in later:  # the other strategy and the other fold read them
        assert store["computed"] == 0 and store["reused"] == images and store["key"] == first["key"]
        assert store["path"].startswith(str(feature_grid["root"] / "cache" / FEATURES_DIR))
    assert all(run["timing"]["phase1_feature_seconds"] < 60 for run in runs)


def test_without_the_store_a_run_computes_its_own_features(feature_grid, monkeypatch, tmp_path):
    calls = _counting(monkeypatch)
    run = train(TrainConfig(**{**feature_grid["base"].to_dict(), "backbone": "vgg16", "runs_dir": str(tmp_path),
                               "feature_store": False}))
    record = json.loads((run / "config.json").read_text())
    assert record["feature_store"] is False and "phase1_features" not in record
    assert len(calls) == 2  # the train and val parts, computed in the run (no store)


def test_stored_features_are_the_models_own(feature_grid):
    """The stored rows equal a fresh forward pass of the same model (seed 0, random weights)."""
    keras.utils.set_random_seed(0)
    model = build_model("vgg16", num_classes=2, image_size=SIZE, weights=None, augmentation={}, seed=0)
    images = np.random.default_rng(1).integers(0, 255, (5, SIZE, SIZE, 1), dtype=np.uint8)
    parts = frozen.feature_parts(model, resize="pad", contrast=None, seed=0)
    assert parts["weights"]["source"] == "none" and parts["weights"]["seed"] == 0
    expected = frozen.pooled_features(model, images, batch_size=4)
    got, info = frozen.stored_features(model, images, cache_dir=feature_grid["root"] / "cache", resize="pad",
                                       contrast=None, seed=0, batch_size=4)
    assert info["computed"] == 5
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- the key

@pytest.mark.jax
def test_no_augmentation_in_phase_one_features():
    """Augmentation layers are phase 2 only: the same backbone with and without them gives the
    same key and the same features, in inference and in training mode alike."""
    images = np.random.default_rng(2).integers(0, 255, (4, SIZE, SIZE, 1), dtype=np.uint8)
    out = []
    for augmentation in ({"hflip": True}, None):
        keras.utils.set_random_seed(0)
        model = build_model("vgg16", num_classes=2, image_size=SIZE, weights=None, augmentation=augmentation, seed=0)
        out.append((frozen.feature_parts(model, resize="pad", contrast=None, seed=0),
                    frozen.pooled_features(model, images, batch_size=4)))
    assert feature_key(out[0][0]) == feature_key(out[1][0])
    np.testing.assert_array_equal(out[0][1], out[1][1])


def _parts(model, **kwargs):
    return frozen.feature_parts(model, **{"resize": "pad", "contrast": None, "seed": 0, **kwargs})


def test_the_key_changes_when_any_part_changes(monkeypatch):
    def built(**kwargs):
        keras.utils.set_random_seed(kwargs.pop("seed", 0))
        options = {"num_classes": 2, "image_size": SIZE, "weights": None, "augmentation": None, **kwargs}
        return build_model("vgg16", **options)

    model = built()
    base = feature_key(_parts(model))
    assert base.startswith("vgg16-32-") and base == feature_key(_parts(built()))  # same seed, same weights
    keys = {
        "weights (seed)": feature_key(_parts(built(seed=1), seed=1)),
        "feature layer": feature_key(_parts(built(feature_layer="block4_pool"))),
        "pooling": feature_key(_parts(built(pooling="max"))),
        "image size": feature_key(_parts(built(image_size=48))),
        "resize": feature_key(_parts(model, resize="crop")),
        "contrast": feature_key(_parts(model, contrast="clahe")),
    }
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        keys["dtype policy"] = feature_key(_parts(built()))
    finally:
        keras.config.set_dtype_policy("float32")
    monkeypatch.setattr(decode, "DECODER_VERSION", decode.DECODER_VERSION + 1)
    keys["decoder version"] = feature_key(_parts(model))
    monkeypatch.undo()
    monkeypatch.setattr(keras, "__version__", "0.0.1")
    keys["keras version"] = feature_key(_parts(model))
    monkeypatch.undo()
    monkeypatch.setattr(keras.backend, "backend", lambda: "other")
    keys["keras backend"] = feature_key(_parts(model))
    monkeypatch.undo()
    parts = _parts(model)
    keys["weights file"] = feature_key({**parts, "weights": {"source": "file", "sha256": "ab" * 32}})
    keys["backbone"] = feature_key({**parts, "backbone": "vgg19"})
    assert all(key != base for key in keys.values()), keys
    assert len(set(keys.values())) == len(keys)


def test_bad_parts_and_bad_compute_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"Expected the feature key's parts as a dict.*Received: parts=\['x'\]"):
        feature_key(["x"])
    store = FeatureStore({"backbone": "b", "image_size": 4}, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"Expected compute to return one feature row per missing image.*"
                                         r"Received: shape=\(1, 3\)"):
        store.features(["a", "b"], lambda rows: np.zeros((1, 3)))


# --------------------------------------------------------------------------- integrity

def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (n, 4, 4, 1), dtype=np.uint8)


def _fake(images, calls=None):
    def compute(rows):
        if calls is not None:
            calls.append(list(rows))
        return images[rows].reshape(len(rows), -1).astype(np.float32) / 255
    return compute


def test_ids_follow_pixels_and_subsets_reuse_rows(tmp_path):
    images = _images(6)
    ids = image_ids(images)
    assert len(set(ids)) == 6 and list(image_ids(images[[3, 1]])) == [ids[3], ids[1]]
    store, calls = FeatureStore({"backbone": "b", "image_size": 4}, cache_dir=tmp_path), []
    first, info = store.features(ids[:4], _fake(images[:4], calls))
    assert info["computed"] == 4 and calls == [[0, 1, 2, 3]]
    again, info = store.features(ids[[5, 2, 4, 2]], _fake(images[[5, 2, 4, 2]], calls))
    assert info == {**info, "computed": 2, "reused": 1} and calls[-1] == [0, 2]  # only 5 and 4 computed
    np.testing.assert_array_equal(again[1], first[2])
    np.testing.assert_array_equal(again[1], again[3])
    assert len(list(store.path.glob("part-*.npz"))) == 2 and (store.path / "store.json").is_file()
    stale = store.path / ".part-0.tmp-1-abcdef.npz"  # left by a writer killed mid-write
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - STALE_SECONDS - 1,) * 2)
    store.features(image_ids(_images(1, seed=9)), _fake(_images(1, seed=9)))
    assert not stale.exists()


@pytest.mark.parametrize("damage", ["truncate", "checksum"])
def test_a_damaged_file_is_rebuilt_with_a_warning(tmp_path, damage):
    images = _images(5)
    ids = image_ids(images)
    store, calls = FeatureStore({"backbone": "b", "image_size": 4}, cache_dir=tmp_path), []
    expected, _ = store.features(ids, _fake(images, calls))
    (part,) = store.path.glob("part-*.npz")
    if damage == "truncate":
        part.write_bytes(part.read_bytes()[:200])
        reason = "unreadable"
    else:  # a well-formed file whose rows were changed after its checksum was written
        with np.load(part) as data:
            arrays = dict(data)
        arrays["features"] = arrays["features"] + 1
        with open(part, "wb") as handle:
            np.savez(handle, **arrays)
        reason = "do not match the sha256 checksum"
    with pytest.warns(UserWarning, match=f"Rebuilding a damaged feature store file: .*part-.*{reason}"):
        got, info = store.features(ids, _fake(images, calls))
    assert info["computed"] == 5 and len(calls) == 2 and info["damaged"] == [str(part)]
    np.testing.assert_array_equal(got, expected)
    _, info = store.features(ids, _fake(images, calls))  # sound again: nothing computed, no warning
    assert info["computed"] == 0 and len(calls) == 2


def test_threads_writing_the_same_key_without_the_lock_leave_one_sound_file(tmp_path):
    images = _images(8)
    ids = image_ids(images)
    results, calls = [], []
    barrier = threading.Barrier(2)

    def slow(rows):
        barrier.wait(timeout=10)  # both are computing at the same time
        return _fake(images, calls)(rows)

    def worker():
        store = FeatureStore({"backbone": "b", "image_size": 4}, cache_dir=tmp_path, lock=False)
        results.append(store.features(ids, slow)[0])

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(calls) == 2 and len(results) == 2
    np.testing.assert_array_equal(results[0], results[1])
    folder = FeatureStore({"backbone": "b", "image_size": 4}, cache_dir=tmp_path).path
    assert [p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != ".lock"] == []
    assert len(list(folder.glob("part-*.npz"))) == 1


_WRITER = """
import sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
from covidxr.images.feature_store import FeatureStore, image_ids
images = np.random.default_rng(0).integers(0, 255, (8, 4, 4, 1), dtype=np.uint8)
log = open(sys.argv[3], "a")
def compute(rows):
    log.write("computed\\n"); log.flush()
    time.sleep(1.0)
    return images[rows].reshape(len(rows), -1).astype(np.float32)
while time.time() < float(sys.argv[4]):
    time.sleep(0.005)
features, info = FeatureStore({"backbone": "b", "image_size": 4}, cache_dir=sys.argv[2]).features(image_ids(images), compute)
print(info["computed"], float(features.sum()))
"""


def test_two_processes_computing_the_same_key_compute_it_once(tmp_path):
    """With the lock the second process waits for the first and reads its rows."""
    log, start = tmp_path / "log.txt", time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, SRC, str(tmp_path / "cache"), str(log), str(start)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    computed = sorted(int(out.split()[0]) for out, _ in outputs)
    assert computed == [0, 8] and log.read_text().count("computed") == 1
    assert len({out.split()[1] for out, _ in outputs}) == 1  # the same rows for both
    folder = next((tmp_path / "cache" / FEATURES_DIR).iterdir())
    assert len(list(folder.glob("part-*.npz"))) == 1


def test_the_command_line_switches_the_store(monkeypatch, tmp_path):
    import covidxr.train
    from covidxr import cli

    seen = []
    monkeypatch.setattr(covidxr.train, "train", lambda config, **kwargs: seen.append(config) or tmp_path)
    monkeypatch.setattr(grid, "run_grid", lambda config, **kwargs: seen.append(config) or tmp_path)
    assert cli.main(["train", "--data-dir", str(tmp_path)]) == 0
    assert cli.main(["train", "--data-dir", str(tmp_path), "--no-feature-store"]) == 0
    assert cli.main(["grid", "--data-dir", str(tmp_path), "--out", str(tmp_path), "--no-feature-store"]) == 0
    assert [config.feature_store for config in seen] == [True, False, False]
    assert "feature_store" in grid.IGNORED_OPTIONS  # a grid resumed with the other setting keeps its runs


def test_cache_clear_removes_the_store_with_the_caches(tmp_path, capsys):
    from covidxr import cli

    store = tmp_path / FEATURES_DIR / "k" / "part-0.npz"
    store.parent.mkdir(parents=True)
    store.write_bytes(b"x")
    assert cli.main(["cache", "clear", "--cache-dir", str(tmp_path)]) == 0
    assert f"removed {tmp_path / FEATURES_DIR}" in capsys.readouterr().out
    assert not (tmp_path / FEATURES_DIR).exists()
    assert clear_feature_store(tmp_path) == []  # nothing left: nothing removed
