"""Tests for covidxr.train: the two phases, feature caching, the run folder, the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from covidxr import cli, data, models
from covidxr.models import build_model
from covidxr.evaluation.metrics import part_metrics
from covidxr.inference import load_run, predict_frame
from covidxr.train import TrainConfig, train
from covidxr.training import best_index, fine_tune, fit_head
from covidxr.training.linear import AUGMENTED_COPIES, C_GRID

SIZE = 32
ARTIFACTS = ["config.json", "split.csv", "history.csv", "model.keras", "predictions.csv", "metrics.json",
             "figures/training_curves.png", "train.log", "report.md"]


def _data(n=16, seed=0):
    """Tiny images with a learnable bright square for class 1."""
    rng = np.random.default_rng(seed)
    x = rng.integers(40, 120, (n, SIZE, SIZE, 1), dtype=np.uint8)
    y = np.arange(n) % 2
    x[y == 1, 8:16, 8:16, 0] = 250
    return x, y.astype(np.int64)


def _config(collection, tmp_path, **kwargs):
    options = dict(data_dir=str(collection), backbone="vgg16", weights="none", image_size=SIZE, batch_size=8,
                   epochs=2, fine_tune_epochs=1, strategy="oversample", runs_dir=str(tmp_path / "runs"),
                   cache_dir=str(tmp_path / "cache"), verbose=0)
    options.update(kwargs)
    return TrainConfig(**options)


def _variables(layers_):
    return {v.path: keras.ops.convert_to_numpy(v).copy() for layer in layers_ for v in layer.weights}


# --------------------------------------------------------------------------- phases

@pytest.mark.jax
@pytest.mark.parametrize("cache_features", [True, False])
def test_phase1_leaves_backbone_unchanged(cache_features):
    keras.utils.set_random_seed(0)
    model = build_model("resnet50", num_classes=2, image_size=SIZE, weights=None, augmentation=None)
    base = models.backbone_layer(model)
    before, head_before = _variables([base]), _variables([model.get_layer("head")])
    x, y = _data()
    fit_head(model, x, y, x[:8], y[:8], num_classes=2, epochs=1, batch_size=8,
             cache_features=cache_features, verbose=0)
    after, head_after = _variables([base]), _variables([model.get_layer("head")])
    assert before.keys() == after.keys() and len(before) > 100
    for key in before:  # kernels, biases and BatchNorm moving statistics alike
        np.testing.assert_array_equal(before[key], after[key], err_msg=key)
    assert any(not np.allclose(head_before[k], head_after[k]) for k in head_before)


@pytest.mark.jax
def test_phase2_changes_only_unfrozen_layers_and_keeps_batchnorm_statistics():
    keras.utils.set_random_seed(0)
    model = build_model("resnet50", num_classes=2, image_size=SIZE, weights=None, augmentation=None)
    base = models.backbone_layer(model)
    start = "conv5_block3_1_conv"
    index = [layer.name for layer in base.layers].index(start)
    frozen, unfrozen = base.layers[:index], base.layers[index:]
    bn_unfrozen = [layer for layer in unfrozen if isinstance(layer, keras.layers.BatchNormalization)]
    assert bn_unfrozen, "the unfrozen block must hold BatchNorm layers for this test to bite"
    before_frozen, before_unfrozen = _variables(frozen), _variables(unfrozen)
    x, y = _data()
    _, info = fine_tune(model, x, y, x[:8], y[:8], num_classes=2, epochs=1, batch_size=8,
                        learning_rate=1e-3, fine_tune_from=start, verbose=0)
    assert info["fine_tune_from_layer"] == start and info["fine_tune_from_index"] == index
    after_frozen, after_unfrozen = _variables(frozen), _variables(unfrozen)
    for key in before_frozen:
        np.testing.assert_array_equal(before_frozen[key], after_frozen[key], err_msg=key)
    moving = [k for k in before_unfrozen if "moving_" in k]
    assert len(moving) == 2 * len(bn_unfrozen)
    for key in moving:
        np.testing.assert_array_equal(before_unfrozen[key], after_unfrozen[key], err_msg=key)
    kernels = [k for k in before_unfrozen if k.endswith("kernel")]
    assert kernels and all(not np.allclose(before_unfrozen[k], after_unfrozen[k]) for k in kernels)


def test_cached_features_match_uncached_phase1():
    x, y = _data(24)
    xv, yv = _data(8, seed=1)
    probs = []
    for cache_features in (True, False):
        keras.utils.set_random_seed(3)
        model = build_model("vgg16", num_classes=2, image_size=SIZE, weights=None, augmentation=None, seed=3)
        fit_head(model, x, y, xv, yv, num_classes=2, epochs=2, batch_size=8, strategy="oversample", seed=5,
                 learning_rate=1e-2, cache_features=cache_features, verbose=0)
        probs.append(model.predict(xv, verbose=0))
    assert np.abs(probs[0] - probs[1]).max() < 1e-4
    assert np.abs(probs[0] - 0.5).max() > 1e-3  # the head did learn something


def test_class_weights_become_sample_weights_and_batches_keep_one_shape(monkeypatch):
    seen = {}
    original = keras.Model.fit

    def spy(self, *args, **kwargs):
        seen["class_weight"] = kwargs.get("class_weight")
        seen["batches"] = [args[0][i] for i in range(len(args[0]))]
        return original(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", spy)
    model = build_model("vgg16", num_classes=2, image_size=SIZE, weights=None, augmentation=None)
    x, y = _data(12)
    y[:9] = 0
    fit_head(model, x, y, x[:4], np.array([0, 1, 0, 1]), num_classes=2, epochs=1, batch_size=5,
             strategy="class-weight", verbose=0)
    # the class weights travel as sample weights (10 vs 2 images: 12/20 and 12/4) ...
    assert seen["class_weight"] is None
    weights = {float(label): float(w) for _, ys, ws in seen["batches"] for label, w in zip(ys[:, 0], ws) if w > 0}
    assert weights == pytest.approx({0.0: 12 / 20, 1.0: 12 / 4})
    # ... and every batch has the full size: the last 2 images are padded with 3 at weight 0
    assert [len(ws) for _, _, ws in seen["batches"]] == [5, 5, 5]
    assert int((seen["batches"][-1][2] == 0).sum()) == 3


def test_part_metrics_binary_and_three_class():
    m = part_metrics(np.array([0, 1, 1, 0]), np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.3, 0.7]]))
    assert m["roc_auc"] == pytest.approx(0.75) and m["images"] == 4 and m["loss"] > 0
    three = np.eye(3)[[0, 1, 2, 0]] * 0.9 + 0.1 / 3
    m3 = part_metrics(np.array([0, 1, 2, 0]), three)
    assert m3["roc_auc"] == pytest.approx(1.0) and m3["pr_auc"] == pytest.approx(1.0)
    assert part_metrics(np.array([1, 1]), np.array([[0.2, 0.8], [0.3, 0.7]]))["roc_auc"] is None


# --------------------------------------------------------------------------- the run folder

@pytest.fixture(scope="module")
def run_dir(collection, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    return train(_config(collection, tmp))


@pytest.mark.jax
def test_run_folder_artifacts(run_dir, collection):
    for name in ARTIFACTS:
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    assert run_dir.name.split("_")[1:4] == ["covid-vs-rest", "vgg16", "oversample"]
    assert len(run_dir.name.split("_")[-1]) == 4

    config = json.loads((run_dir / "config.json").read_text())
    assert config["classes"] == ["non-covid", "covid"]
    assert config["keras_backend"] == keras.backend.backend() and config["seed"] == 0
    assert config["preprocessing"]["image_size"] == SIZE and config["preprocessing"]["resize"] == "pad"
    from covidxr.images import DECODER_VERSION, DECODING_RULE

    assert config["preprocessing"]["decoding"] == {"decoder_version": DECODER_VERSION, "rule": DECODING_RULE}
    assert config["cache"]["key"] and config["covidxr_version"]
    assert TrainConfig.from_json(run_dir / "config.json") == TrainConfig.from_dict(config)

    split = data.read_split(run_dir / "split.csv")
    assert set(split["part"]) == {"train", "val", "test"}
    assert split.groupby("patient")["part"].nunique().max() == 1

    history = pd.read_csv(run_dir / "history.csv")
    assert list(history["phase"]) == [1, 2] and list(history["epoch"]) == [1, 2]  # the linear head: one fit
    assert {"loss", "val_loss", "auc", "val_auc", "learning_rate"} <= set(history.columns)
    assert history.loc[history.phase == 2, "learning_rate"].iloc[0] == pytest.approx(1e-5)  # a hundredth of 1e-3

    model, cfg = load_run(run_dir)
    assert cfg["backbone"] == "vgg16"
    predictions = pd.read_csv(run_dir / "predictions.csv")
    assert list(predictions.columns) == ["image", "patient", "group", "hash", "label", "part", "prob_non-covid",
                                         "prob_covid"]
    assert predictions["hash"].str.fullmatch(r"[0-9a-f]{64}").all()
    assert config["split_version"] == data.SPLIT_VERSION and config["merged_groups"] == 0
    assert set(config["split_sizes"]["images"]) == {"train", "val", "test"}
    assert list(split.columns) == list(data.SPLIT_COLUMNS) and (split["group"] == split["patient"]).all()
    assert set(predictions["part"]) == {"val", "test"}
    np.testing.assert_allclose(predictions["prob_non-covid"] + predictions["prob_covid"], 1.0, atol=1e-6)

    metrics = json.loads((run_dir / "metrics.json").read_text())
    for part in ("val", "test"):
        assert set(metrics[part]) >= {"roc_auc", "pr_auc", "loss", "images"}
        assert metrics[part]["images"] == int((predictions["part"] == part).sum())
    val = predictions[predictions.part == "val"]
    from sklearn.metrics import roc_auc_score

    assert metrics["val"]["roc_auc"] == pytest.approx(roc_auc_score(val["label"] == "covid", val["prob_covid"]))
    # model.keras is the best checkpoint: its validation loss is the best epoch's (lower by > MIN_DELTA)
    best = history.iloc[best_index(history["val_loss"].tolist())]
    assert metrics["best_epoch"] == int(best["epoch"]) and metrics["best_val_loss"] == best["val_loss"]
    assert metrics["val"]["loss"] == pytest.approx(best["val_loss"], abs=2e-3)
    # the logged validation AUC is the exact one (scikit-learn), so it is the saved model's
    assert metrics["val"]["roc_auc"] == pytest.approx(best["val_auc"], abs=1e-6)
    assert 0 <= metrics["phase1_train_auc"] <= 1 and config["phase1_train_auc"] == metrics["phase1_train_auc"]
    head = metrics["phase1_head"]
    assert head["converged"] and head["C"] in C_GRID and 0 < head["iterations"] < head["max_iter"]
    assert config["phase1_head"] == head
    assert head["augmented_copies"] == AUGMENTED_COPIES  # fine-tuning through augmentation follows

    assert "phase 1 epoch 1" in (run_dir / "train.log").read_text()
    report = (run_dir / "report.md").read_text()
    assert "figures/training_curves.png" in report and "| train |" in report


@pytest.mark.jax
def test_predict_frame_matches_predictions_csv(run_dir, collection):
    frame = data.load_dataset(collection, task="covid-vs-rest")
    predictions = pd.read_csv(run_dir / "predictions.csv")
    rows = frame.set_index("image").loc[predictions["image"]].reset_index()
    probs = predict_frame(run_dir, rows, batch_size=8)
    assert probs.shape == (len(rows), 2)
    np.testing.assert_allclose(probs[:, 1], predictions["prob_covid"], atol=1e-5)


def test_repeat_from_config_makes_new_folder(run_dir):
    config = TrainConfig.from_json(run_dir / "config.json")
    again = train(config)
    assert again != run_dir and again.parent == run_dir.parent
    pd.testing.assert_frame_equal(data.read_split(again / "split.csv"), data.read_split(run_dir / "split.csv"))
    first = pd.read_csv(run_dir / "history.csv")
    second = pd.read_csv(again / "history.csv")
    np.testing.assert_allclose(first["val_loss"], second["val_loss"], atol=1e-4)  # same seed, same run


def test_three_class_without_phase2(collection, tmp_path):
    run = train(_config(collection, tmp_path, task="three-class", epochs=1, fine_tune_epochs=0, strategy="class-weight",
                        folds=2, fold=1, val_size=0.3, allow_small_validation=True))
    assert run.name.split("_")[1:5] == ["three-class", "vgg16", "class-weight", "f1"]
    history = pd.read_csv(run / "history.csv")
    assert list(history["phase"]) == [1]
    assert json.loads((run / "metrics.json").read_text())["phase1_head"]["augmented_copies"] == 0  # no phase 2
    predictions = pd.read_csv(run / "predictions.csv")
    assert [c for c in predictions if c.startswith("prob_")] == ["prob_normal", "prob_covid", "prob_other"]


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, error, match", [
    ({"backbone": "alexnet"}, ValueError, r"\['resnet50', 'vgg16', 'vgg19'.*Received: backbone='alexnet'"),
    ({"strategy": "smote"}, ValueError, r"'none', 'class-weight', 'oversample', 'undersample'.*Received: strategy='smote'"),
    ({"image_size": 16}, ValueError, r"at least 32 px.*Received: image_size=16"),
    ({"fine_tune_from": "block9_conv1"}, ValueError, r"Received: fine_tune_from='block9_conv1'"),
    ({"weights": "/no/such/file.h5"}, FileNotFoundError, r"Received: weights='/no/such/file\.h5'"),
    ({"epochs": 0}, ValueError, r"Received: epochs=0"),
    ({"resize": "stretch"}, ValueError, r"Received: resize='stretch'"),
    ({"mixed_precision": "int8"}, ValueError, r"'mixed_bfloat16', 'mixed_float16'.*Received: mixed_precision='int8'"),
    ({"jit_compile": "xla"}, ValueError, r"\['auto', True, False\]. Received: jit_compile='xla'"),
    ({"feature_layer": "block9_conv3"}, ValueError,
     r"candidate feature layers \['block3_conv3', 'block4_conv3', 'block5_conv3'\].*Received: feature_layer='block9_conv3'"),
])
def test_bad_input_fails_before_training(collection, tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        train(_config(collection, tmp_path, **kwargs))
    assert not (tmp_path / "runs").exists()


def test_weights_of_another_architecture_fails_before_training(collection, tmp_path):
    path = tmp_path / "vgg19.weights.h5"
    keras.applications.VGG19(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3)).save_weights(path)
    with pytest.raises(ValueError, match=r"does not match backbone 'vgg16'.*Received: weights="):
        train(_config(collection, tmp_path, weights=str(path)))
    assert not (tmp_path / "runs").exists()


def test_existing_run_folder_is_never_overwritten(collection, tmp_path):
    (tmp_path / "runs" / "mine").mkdir(parents=True)
    (tmp_path / "runs" / "mine" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match=r"never overwritten\. Received: run_dir='.*mine'"):
        train(_config(collection, tmp_path, run_name="mine"))
    assert [p.name for p in (tmp_path / "runs" / "mine").iterdir()] == ["keep.txt"]


# --------------------------------------------------------------------------- command line

def test_cli_train_and_repeat(collection, tmp_path, capsys):
    runs = tmp_path / "runs"
    code = cli.main(["train", "--data-dir", str(collection), "--backbone", "vgg19", "--task", "covid-vs-rest",
                     "--strategy", "undersample", "--weights", "none", "--image-size", "32", "--batch-size", "8",
                     "--epochs", "1", "--fine-tune-epochs", "1", "--fine-tune-from", "-3", "--no-augment",
                     "--runs-dir", str(runs), "--cache-dir", str(tmp_path / "cache"), "--verbose", "0"])
    assert code == 0
    (first,) = list(runs.iterdir())
    config = json.loads((first / "config.json").read_text())
    assert config["fine_tune_from"] == "-3" and config["augment"] is False and config["backbone"] == "vgg19"
    assert config["resolved"]["fine_tune_from_layer"] == "block5_conv3"  # last 3 of 22: conv3, conv4, pool
    code = cli.main(["train", "--config", str(first / "config.json"), "--epochs", "2", "--fine-tune-epochs", "0"])
    assert code == 0
    second = [p for p in runs.iterdir() if p != first]
    assert len(second) == 1
    again = json.loads((second[0] / "config.json").read_text())
    assert again["epochs"] == 2 and again["fine_tune_epochs"] == 0 and again["strategy"] == "undersample"
    assert capsys.readouterr().out.count("wrote ") == 2


def test_cli_train_with_a_feature_layer(collection, tmp_path, capsys):
    """--feature-layer: the run's model stops at that layer, Grad-CAM and 'auto' fine-tuning use it."""
    runs = tmp_path / "runs"
    code = cli.main(["train", "--data-dir", str(collection), "--backbone", "vgg16", "--feature-layer", "block3_conv3",
                     "--weights", "none", "--image-size", "32", "--batch-size", "8", "--epochs", "1",
                     "--fine-tune-epochs", "1", "--runs-dir", str(runs), "--cache-dir", str(tmp_path / "cache"),
                     "--verbose", "0"])
    assert code == 0
    (run,) = list(runs.iterdir())
    assert "_vgg16-block3_conv3_class-weight_" in run.name
    config = json.loads((run / "config.json").read_text())
    assert config["feature_layer"] == "block3_conv3" and config["resolved"]["gradcam_layer"] == "block3_conv3"
    assert config["resolved"]["fine_tune_from_layer"] == "block3_conv1"  # 'auto': the feature layer's block
    model, _ = load_run(run)
    names = [layer.name for layer in models.backbone_layer(model).layers]
    assert names[-1] == "block3_conv3" and "block4_conv1" not in names
    assert TrainConfig.from_json(run).feature_layer == "block3_conv3"
    assert cli.main(["train", "--data-dir", str(collection), "--backbone", "resnet50", "--feature-layer", "block4_conv3",
                     "--weights", "none", "--runs-dir", str(tmp_path / "other")]) == 2
    assert "['conv3_block4_out', 'conv4_block6_out', 'conv5_block3_out']" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_cli_train_bad_backbone(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--backbone", "alexnet", "--weights", "none"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ("covidxr train: error: argument --backbone: invalid choice: 'alexnet' (choose "
                                       "from 'resnet50', 'vgg16', 'vgg19') (see covidxr train --help)\n")


@pytest.mark.realdata
@pytest.mark.slow
def test_train_smoke_on_real_data(real_run):
    run, _ = real_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["images"] > 50 and metrics["val"]["roc_auc"] is not None


PARALLEL_SCRIPT = """
import json, sys
import keras
from covidxr.runtime import virtual_cpu_devices
virtual_cpu_devices(2)
from covidxr.train import TrainConfig, train
run = train(TrainConfig(data_dir=sys.argv[1], runs_dir=sys.argv[2], cache_dir=sys.argv[3], backbone="vgg16",
                        weights="none", image_size=32, batch_size=7, epochs=2, fine_tune_epochs=1,
                        fine_tune_from="-4", strategy="class-weight", augment=False, data_parallel=True, verbose=0))
print("RESULT " + json.dumps({"run": str(run), "runtime": json.load(open(run / "config.json"))["runtime"],
                              "backend": keras.backend.backend()}))
"""


@pytest.fixture(scope="module")
def parallel_runs(collection, tmp_path_factory):
    """The data-parallel run on TensorFlow and on JAX, started together: each process spends most of its
    time in one thread (imports, tracing), so on two cores the two overlap."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("parallel-runs")
    procs = {}
    for backend in ("tensorflow", "jax"):
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
        out, err = (open(root / f"{backend}.{n}", "w") for n in ("out", "err"))
        procs[backend] = (subprocess.Popen([sys.executable, "-c", PARALLEL_SCRIPT, str(collection),
                                            str(root / backend / "runs"), str(root / backend / "cache")],
                                           env=env, stdout=out, stderr=err, text=True), root / backend)
        out.close()
        err.close()
    yield procs
    for proc, _ in procs.values():   # a deselected test's process is not waited for
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_data_parallel_run_on_two_cpu_devices(backend, parallel_runs):
    """``data_parallel=True`` on two virtual CPU devices: a whole two-phase run, with a batch
    size (7) that is rounded up to 8 and batches that do not divide evenly."""
    proc, folder = parallel_runs[backend]
    returncode = proc.wait(timeout=600)
    stdout, stderr = (Path(f"{folder}.{n}").read_text() for n in ("out", "err"))
    assert returncode == 0, stderr[-4000:]
    line = next(x for x in stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    assert out["backend"] == backend
    assert out["runtime"]["num_replicas"] == 2 and out["runtime"]["batch_size"] == 8
    run = Path(out["run"])
    predictions = pd.read_csv(run / "predictions.csv")
    split = pd.read_csv(run / "split.csv")
    assert len(predictions) == int((split["part"] != "train").sum())
    assert predictions["prob_covid"].between(0, 1).all()
    metrics = json.loads((run / "metrics.json").read_text())
    assert all(np.isfinite(metrics[part]["loss"]) for part in ("val", "test"))
    history = pd.read_csv(run / "history.csv")
    assert len(history) == 2 and np.isfinite(history[["loss", "val_loss"]].to_numpy()).all()  # linear head: 1 + 1


def test_memory_check_refuses_before_the_run_folder(collection, tmp_path, monkeypatch):
    import covidxr.runtime.memory as runtime_memory

    monkeypatch.setattr(runtime_memory, "available_memory",
                        lambda: {"host_bytes": 64 * 2 ** 20, "device_bytes": None, "device": "cpu"})
    config = TrainConfig(data_dir=str(collection), backbone="vgg16", weights="none", image_size=64, batch_size=16,
                         epochs=1, fine_tune_epochs=0, runs_dir=str(tmp_path / "runs"),
                         cache_dir=str(tmp_path / "cache"), verbose=0)
    with pytest.raises(ValueError, match=r"to fit in memory.*Lower --batch-size or --image-size.*"
                                         r"Received: batch_size=16, image_size=64"):
        train(config)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()
    run = train(dataclasses.replace(config, memory_check=False))
    assert json.loads((run / "config.json").read_text())["runtime"]["memory_estimate_gib"] is None


@pytest.mark.slow
@pytest.mark.parametrize("precision, policy", [pytest.param("bf16", "mixed_bfloat16", marks=pytest.mark.jax),
                                               ("fp16", "mixed_float16")])
def test_mixed_precision_run(precision, policy, collection, tmp_path):
    """A two-phase run under a mixed policy: recorded, float32 probabilities, finite losses, and
    the global dtype policy restored afterwards."""
    before = keras.config.dtype_policy().name
    run = train(TrainConfig(data_dir=str(collection), backbone="vgg16", weights="none", image_size=32,
                            batch_size=8, epochs=1, fine_tune_epochs=1, fine_tune_from="-4", augment=False,
                            mixed_precision=precision, runs_dir=str(tmp_path / "runs"),
                            cache_dir=str(tmp_path / "cache"), verbose=0))
    assert keras.config.dtype_policy().name == before
    assert json.loads((run / "config.json").read_text())["dtype_policy"] == policy
    history = pd.read_csv(run / "history.csv")
    assert len(history) == 2 and np.isfinite(history["loss"]).all()
    predictions = pd.read_csv(run / "predictions.csv")
    assert predictions["prob_covid"].between(0, 1).all()
    model, _ = load_run(run)
    assert model.outputs[0].dtype == "float32"


def test_wrong_data_dir_is_reported_before_the_model_is_built(tmp_path, monkeypatch):
    """Order of checks: the data folder is checked before any model is built or weights fetched."""
    import covidxr.train as T

    def no_build(*args, **kwargs):
        raise RuntimeError("build_model must not be reached")

    monkeypatch.setattr(T, "build_model", no_build)
    for layout in ("auto", "metadata"):
        config = TrainConfig(data_dir=str(tmp_path / "missing"), layout=layout, backbone="vgg16", weights="none",
                             image_size=32, runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"))
        with pytest.raises(FileNotFoundError, match=r"Expected a dataset.*Received: data_dir=.*missing"):
            train(config)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()
