"""Interruption and resume: a real training subprocess is killed (SIGKILL) at several points,
``covidxr train --resume`` continues it, and the result equals an uninterrupted run; checkpoints
every N epochs, written by a background thread."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import event_points

from covidxr import cli
from covidxr.atomic import load_arrays
from covidxr.config import check_config
from covidxr.images import list_caches
from covidxr.train import TrainConfig, resume, train
from covidxr.training import EpochRecorder, HistoryWriters, RunCheckpoint, SaveBest, schedules
from covidxr.training import checkpoint as checkpoint_module
from covidxr.training.writer import CheckpointWriter

OPTIONS = dict(backbone="vgg16", weights="none", image_size=32, batch_size=8, head="gradient", epochs=4, fine_tune_epochs=2,
               fine_tune_from="-4", patience=1, strategy="oversample", learning_rate=1e-2, verbose=0)
CLI_OPTIONS = ["--backbone", "vgg16", "--weights", "none", "--image-size", "32", "--batch-size", "8",
               "--head", "gradient", "--epochs", "4", "--fine-tune-epochs", "2", "--fine-tune-from", "-4", "--patience", "1",
               "--strategy", "oversample", "--learning-rate", "0.01", "--verbose", "0"]
CODE = "import sys; from covidxr.cli import main; sys.exit(main(sys.argv[1:]))"


def _start(args, *, fault=None):
    """``covidxr ARGS`` in a new process (killed at the fault point ``fault``); :func:`_finish` waits for it."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
    env.pop("COVIDXR_FAULT", None)
    if fault:
        env["COVIDXR_FAULT"] = fault
    return subprocess.Popen([sys.executable, "-c", CODE, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(process, *, timeout=300) -> subprocess.CompletedProcess:
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _covidxr(args, *, fault=None, timeout=300):
    return _finish(_start(args, fault=fault), timeout=timeout)


def _killed(result):
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]


def _assert_readable(run_dir: Path):
    """Whatever a kill left behind is complete: every JSON parses, every CSV reads, a model loads."""
    for path in run_dir.rglob("*.json"):
        json.loads(path.read_text())
    for path in run_dir.rglob("*.csv"):
        pd.read_csv(path)
    if (run_dir / "model.keras").exists():
        from covidxr.inference import load_run

        load_run(run_dir)


def _state(run_dir):
    return json.loads((run_dir / "checkpoint" / "state.json").read_text())


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(collection, tmp_path):
    runs, cache = tmp_path / "runs", tmp_path / "cache"
    outcomes = []

    # 1. killed while decoding images into the cache: the run folder holds its options only
    # (the uninterrupted reference trains in this process meanwhile: the new process mostly starts up)
    first = _start(["train", "--data-dir", str(collection), "--runs-dir", str(runs), "--cache-dir", str(cache),
                    *CLI_OPTIONS], fault="mid-cache")
    reference = train(TrainConfig(data_dir=str(collection), runs_dir=str(tmp_path / "ref"),
                                  cache_dir=str(tmp_path / "ref-cache"), **OPTIONS))
    _killed(_finish(first))
    (run,) = list(runs.iterdir())
    assert json.loads((run / "config.json").read_text())["epochs"] == 4
    assert not (run / "split.csv").exists() and list_caches(cache).empty
    outcomes.append("mid-cache")

    # 2. killed right after epoch 2 of phase 1 was committed
    _killed(_covidxr(["train", "--resume", str(run)], fault="after-state@3"))
    state = _state(run)
    assert state["phase"] == 1 and not state["done"] and state["next_epoch"] >= 1
    _assert_readable(run)
    outcomes.append("phase 1, after epoch 2")

    # 3. killed in the middle of a checkpoint: the new state.json is written but not renamed
    _killed(_covidxr(["train", "--resume", str(run)], fault="before-rename:state.json@2"))
    assert list((run / "checkpoint").glob(".state.tmp-*")), "the half-done checkpoint should be left behind"
    _assert_readable(run)
    outcomes.append("mid-checkpoint")

    # 4. killed from outside, mid-epoch in phase 2 (a real SIGKILL, not an injected fault)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
    env.pop("COVIDXR_FAULT", None)
    log = run / "train.log"
    seen = len(log.read_bytes())
    process = subprocess.Popen([sys.executable, "-c", CODE, "train", "--resume", str(run)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if b"phase 2: fine-tuning" in log.read_bytes()[seen:]:
            break
        time.sleep(0.05)
    time.sleep(1.0)  # somewhere in phase 2's first epoch (compilation included)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (run / "model.keras").exists()
    _assert_readable(run)
    outcomes.append("phase 2, external SIGKILL")

    # 5. killed while saving the final model, then 6. after the predictions, before the metrics
    _killed(_covidxr(["train", "--resume", str(run)], fault="before-rename:model.keras"))
    assert not (run / "model.keras").exists()
    _killed(_covidxr(["train", "--resume", str(run)], fault="before-rename:metrics.json"))
    assert (run / "predictions.csv").is_file() and not (run / "metrics.json").exists()
    _assert_readable(run)
    outcomes += ["saving model.keras", "before metrics.json"]

    # 7. the last resume finishes the run
    result = _covidxr(["train", "--resume", str(run)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "finished" in result.stdout
    print("killed at:", "; ".join(outcomes))

    config = json.loads((run / "config.json").read_text())
    assert config["finished"] and len(config["resumed"]) == 6
    assert not (run / "checkpoint").exists()
    assert not list(run.rglob(".*.tmp-*"))
    ref_history = pd.read_csv(reference / "history.csv").drop(columns="seconds")
    history = pd.read_csv(run / "history.csv").drop(columns="seconds")
    assert len(history) == len(ref_history)  # same epochs, early stopping included
    np.testing.assert_allclose(history.to_numpy(float), ref_history.to_numpy(float), atol=1e-6)
    pd.testing.assert_frame_equal(pd.read_csv(run / "split.csv"), pd.read_csv(reference / "split.csv"))
    ref_predictions, predictions = pd.read_csv(reference / "predictions.csv"), pd.read_csv(run / "predictions.csv")
    assert list(predictions["image"]) == list(ref_predictions["image"])
    np.testing.assert_allclose(predictions["prob_covid"], ref_predictions["prob_covid"], atol=1e-6)
    ref_metrics = json.loads((reference / "metrics.json").read_text())
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == ref_metrics["epochs_run"]
    # TensorBoard's event files, appended by six processes: every epoch, none twice
    points = event_points(run / "tensorboard")
    assert set(points.values()) == {1} and {step for (_, _, step) in points} == set(history["epoch"])


@pytest.mark.jax
def test_interrupted_in_process_then_resumed(collection, tmp_path, monkeypatch):
    """An exception (Ctrl-C) in phase 2 leaves a resumable folder; a changed dataset is refused."""
    import covidxr.train as train_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    data = tmp_path / "data"
    shutil.copytree(collection, data)
    options = {**OPTIONS, "epochs": 1, "fine_tune_epochs": 1}
    config = TrainConfig(data_dir=str(data), runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"),
                         run_name="cut", **options)
    monkeypatch.setattr(train_module, "fine_tune", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.undo()
    run = tmp_path / "runs" / "cut"
    state = _state(run)
    assert state["phase"] == 1 and state["done"]
    assert not (run / "model.keras").exists() and not (run / "metrics.json").exists()

    copy = tmp_path / "runs" / "cut-copy"
    shutil.copytree(run, copy)
    moved = pd.read_csv(run / "split.csv")["image"].iloc[0]
    (data / moved).rename(data / (moved + ".gone"))
    with pytest.raises(ValueError, match=r"the data found differs \(sha256 \w+, 71 images\)"):  # the data record
        resume(copy)
    (data / (moved + ".gone")).rename(data / moved)
    assert resume(run, verbose=0) == run
    history = pd.read_csv(run / "history.csv")
    assert list(history["phase"]) == [1, 2]


def test_resume_errors(tiny_run, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="Expected a run folder to resume"):
        resume(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="stopped before it wrote one"):
        resume(tmp_path / "empty")
    with pytest.raises(ValueError, match="Expected an unfinished run"):
        resume(tiny_run)
    assert cli.main(["train", "--resume", str(tiny_run), "--epochs", "3"]) == 2
    assert "Expected no other options with --resume" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(tiny_run)]) == 2
    assert "finished at" in capsys.readouterr().err


# --------------------------------------------------------------------------- checkpoint every N epochs

class _Scripted(keras.callbacks.Callback):
    """First callback: writes a scripted ``val_auc`` into the epoch's logs (and ``val_loss`` = 1 − it,
    which the callbacks follow), keeps a copy of the weights after every epoch, and stops training
    after ``stop_after`` epochs (if given)."""

    def __init__(self, aucs, stop_after=None):
        super().__init__()
        self.aucs, self.stop_after, self.weights = list(aucs), stop_after, {}

    def on_epoch_end(self, epoch, logs=None):
        logs["val_auc"] = self.aucs[epoch]
        logs["val_loss"] = round(1.0 - self.aucs[epoch], 6)
        self.weights[epoch] = [np.array(w) for w in self.model.get_weights()]
        if self.stop_after == epoch + 1:
            self.model.stop_training = True


def _fit_with_checkpoint(folder, monkeypatch, *, epochs=5, every=2, aucs=(0.5, 0.6, 0.9, 0.7, 0.65),
                         stop_after=None, writers=(), **kwargs):
    """A tiny model fitted under a RunCheckpoint (and ``writers`` under a HistoryWriters right after
    it, as ``run_phase`` puts them); returns (checkpoint, scripted, commits), each commit a copy of
    the state with the arrays of its best-model and early-stopping files."""
    commits = []
    real = checkpoint_module.write_json

    def spy(path, state):
        files = {key: load_arrays(Path(path).parent / state[key]["weights"])
                 for key in ("best", "early_stopping") if (state.get(key) or {}).get("weights")}
        commits.append({**json.loads(json.dumps(state)), "arrays": files, "thread": threading.current_thread().name})
        return real(path, state)

    monkeypatch.setattr(checkpoint_module, "write_json", spy)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy")
    x = np.random.default_rng(0).standard_normal((16, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("float32")
    early_stopping, reduce_lr = schedules(10)
    recorder, saver, scripted = EpochRecorder(1), SaveBest(model), _Scripted(aucs, stop_after)
    checkpoint = RunCheckpoint(folder, phase=1, full_model=model, epochs=epochs, early_stopping=early_stopping,
                               reduce_lr=reduce_lr, recorder=recorder, saver=saver, every=every, **kwargs)
    model.fit(x, y, epochs=epochs, batch_size=8, shuffle=False, verbose=0,
              callbacks=[scripted, early_stopping, reduce_lr, recorder, saver, checkpoint]
              + ([HistoryWriters(checkpoint, writers)] if writers else []))
    return checkpoint, scripted, commits


@pytest.mark.jax
def test_checkpoint_every_2_writes_epochs_2_4_and_the_last_with_the_best_weights_of_epoch_3(tmp_path, monkeypatch):
    checkpoint, scripted, commits = _fit_with_checkpoint(tmp_path / "ckpt", monkeypatch)
    assert checkpoint.written == [2, 4, 5]
    assert [c.get("next_epoch") for c in commits] == [0, 2, 4, 5, None] and commits[-1]["done"]
    assert {c["thread"] for c in commits} == {"covidxr-checkpoint_0"}  # off the training thread
    assert [len(c["history"]) for c in commits] == [0, 2, 4, 5, 5]
    # the best epoch (3, val_auc 0.9) was not a checkpoint epoch: its weights come with epoch 4's
    after4 = commits[2]
    assert after4["best"] == {"value": 0.1, "epoch": 2, "weights": "best-p1-e4.npz"}
    # early stopping's best weights are the same arrays (the fitted model is the full one): one file
    assert after4["early_stopping"]["best_epoch"] == 2 and after4["early_stopping"]["weights"] == "best-p1-e4.npz"
    for key in ("best", "early_stopping"):
        for got, want in zip(after4["arrays"][key], scripted.weights[2]):
            np.testing.assert_array_equal(got, want)
        assert not np.array_equal(after4["arrays"][key][0], scripted.weights[3][0])
    assert commits[3]["best"]["weights"] == "best-p1-e4.npz"  # unchanged since: not written again
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["best-p1-e4.npz", "end-p1.npz", "state.json"]
    assert checkpoint.writer.write_seconds > 0


class _EpochsSeen:
    """A ``sync(rows)`` writer that keeps the epochs it was handed at each call."""

    def __init__(self):
        self.calls = []

    def sync(self, rows):
        self.calls.append([int(row["epoch"]) for row in rows])


def test_history_writers_get_the_epochs_of_the_last_checkpoint_only(tmp_path, monkeypatch):
    seen = _EpochsSeen()
    _fit_with_checkpoint(tmp_path / "ckpt", monkeypatch, epochs=5, every=2, writers=[seen])
    # at the start, then after epochs 1..5: epoch 1 waits for epoch 2's checkpoint, 3 for 4's; 5 is the last
    assert seen.calls == [[], [], [1, 2], [1, 2], [1, 2, 3, 4], [1, 2, 3, 4, 5]]


def test_checkpoint_every_writes_the_epoch_early_stopping_ends_on(tmp_path, monkeypatch):
    checkpoint, _, commits = _fit_with_checkpoint(tmp_path / "ckpt", monkeypatch, every=2, stop_after=3,
                                                  background=False)
    assert checkpoint.written == [2, 3]
    assert commits[2]["next_epoch"] == 5 and commits[2]["variables"] == "vars-p1-e3.npz"  # the phase is over
    assert {c["thread"] for c in commits} == {threading.main_thread().name}


def test_a_failed_background_write_is_raised_on_the_training_thread(tmp_path, monkeypatch):
    def full(path, arrays):
        raise OSError(f"No space left on device: {Path(path).name}")

    monkeypatch.setattr(checkpoint_module, "save_arrays", full)
    with pytest.raises(OSError, match="No space left on device: base-p1.npz"):
        _fit_with_checkpoint(tmp_path / "ckpt", monkeypatch, every=1)
    writer = CheckpointWriter()
    writer.submit(full, tmp_path / "x.npz", [])
    with pytest.raises(OSError, match="No space left on device: x.npz"):
        writer.submit(print, "never")  # the next write waits for the failed one and raises its error
    writer.submit(full, tmp_path / "y.npz", [])
    writer.close(quiet=True)  # the caller's own exception wins: nothing raised here


def test_checkpoint_every_must_be_a_positive_integer(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"Expected checkpoint_every to be an integer >= 1\. Received: checkpoint_every=0"):
        check_config(TrainConfig(backbone="vgg16", weights="none", checkpoint_every=0))
    with pytest.raises(ValueError, match=r"integer >= 1 \(epochs\)\. Received: checkpoint_every=1\.5"):
        RunCheckpoint(tmp_path, phase=1, full_model=None, epochs=2, early_stopping=None, reduce_lr=None,
                      recorder=None, saver=None, every=1.5)
    assert cli.main(["train", "--weights", "none", "--checkpoint-every", "0"]) == 2
    assert "covidxr train: error: Expected checkpoint_every to be an integer >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_killed_run_with_checkpoint_every_2_resumes_from_the_last_written_epoch(collection, tmp_path):
    options = {**OPTIONS, "epochs": 2, "fine_tune_epochs": 3, "patience": 3, "checkpoint_every": 2}
    runs = tmp_path / "runs"
    args = [*CLI_OPTIONS, "--epochs", "2", "--fine-tune-epochs", "3", "--patience", "3", "--checkpoint-every", "2"]
    # commits: phase 1 start, epoch 2 (its last), end; phase 2 start, epoch 2 (the 5th), epoch 3, end
    # (the uninterrupted reference trains in this process meanwhile, with a cache of its own)
    killed = _start(["train", "--data-dir", str(collection), "--runs-dir", str(runs), "--cache-dir",
                     str(tmp_path / "cache"), *args], fault="after-state@5")
    reference = train(TrainConfig(data_dir=str(collection), runs_dir=str(tmp_path / "ref"),
                                  cache_dir=str(tmp_path / "ref-cache"), **options))
    _killed(_finish(killed))
    (run,) = list(runs.iterdir())
    state = _state(run)
    assert (state["phase"], state["next_epoch"], len(state["history"])) == (2, 2, 4)
    _assert_readable(run)
    assert resume(run, verbose=0) == run
    assert "phase 2: continuing after epoch 2" in (run / "train.log").read_text()
    history = pd.read_csv(run / "history.csv").drop(columns="seconds")
    ref_history = pd.read_csv(reference / "history.csv").drop(columns="seconds")
    assert list(history["phase_epoch"]) == [1, 2, 1, 2, 3]
    np.testing.assert_allclose(history.to_numpy(float), ref_history.to_numpy(float), atol=1e-6)
    predictions, ref_predictions = pd.read_csv(run / "predictions.csv"), pd.read_csv(reference / "predictions.csv")
    np.testing.assert_allclose(predictions["prob_covid"], ref_predictions["prob_covid"], atol=1e-6)
