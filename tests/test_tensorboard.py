"""TensorBoard event files of a run (covidxr.training.tensorboard), read back record by record: tags and
steps of both phases with the exact validation figures and the learning rate, a resumed run without
duplicate steps, a missing ``tensorboard`` package (one warning, the run goes on), no TensorFlow needed."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
from conftest import event_points

import covidxr.training.tensorboard as tb
from covidxr import cli
from covidxr.config import TrainConfig, check_config
from covidxr.train import resume, train
from covidxr.training import TENSORBOARD_DIR, TensorBoardWriter, event_scalars

TRAIN_TAGS = {"epoch_loss", "epoch_auc", "epoch_pr_auc", "epoch_learning_rate"}
VALIDATION_TAGS = {"epoch_loss", "epoch_auc", "epoch_pr_auc"}
OPTIONS = dict(backbone="vgg16", weights="none", image_size=32, batch_size=8, head="gradient", strategy="oversample",
               learning_rate=1e-2, verbose=0)


def _check_run(run):
    """Every epoch of history.csv once per tag; validation AUC and learning rate as history.csv has them."""
    history = pd.read_csv(run / "history.csv")
    epochs = list(history["epoch"])
    points = event_points(run / TENSORBOARD_DIR)
    expected = {("train", tag, step): 1 for tag in TRAIN_TAGS for step in epochs}
    expected.update({("validation", tag, step): 1 for tag in VALIDATION_TAGS for step in epochs})
    assert points == expected
    scalars = event_scalars(run / TENSORBOARD_DIR)
    assert scalars["validation"]["epoch_auc"] == pytest.approx(dict(zip(epochs, history["val_auc"])))
    assert scalars["train"]["epoch_learning_rate"] == pytest.approx(dict(zip(epochs, history["learning_rate"])))
    return history


def test_a_run_writes_its_epochs(tiny_run):
    history = _check_run(tiny_run)
    assert list(history["epoch"]) == [1]  # the linear head: phase 1 is one fit


def test_a_resumed_run_continues_the_event_files_without_duplicate_steps(collection, tmp_path, monkeypatch):
    """Stopped right after phase 2's first epoch was committed (before it reached TensorBoard): the
    resumed run adds that epoch and the next, and writes phase 1's epochs no second time."""
    import covidxr.training.checkpoint as checkpoint

    config = TrainConfig(data_dir=str(collection), runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"),
                         run_name="cut", epochs=2, fine_tune_epochs=2, fine_tune_from="-4", patience=5, **OPTIONS)
    original = checkpoint.RunCheckpoint.on_epoch_end

    def commit_then_stop(self, epoch, logs=None):
        original(self, epoch, logs)
        if self.phase == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.RunCheckpoint, "on_epoch_end", commit_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.undo()
    run = tmp_path / "runs" / "cut"
    assert {step for (_, _, step) in event_points(run / TENSORBOARD_DIR)} == {1, 2}
    assert resume(run) == run
    history = _check_run(run)
    assert list(history["phase"]) == [1, 1, 2, 2] and list(history["epoch"]) == [1, 2, 3, 4]
    assert len(list((run / TENSORBOARD_DIR / "train").glob("events.out.tfevents.*"))) == 2  # appended, not rewritten


def test_the_writer_writes_each_step_once_and_skips_a_cut_record(tmp_path):
    from tensorboard import summary

    rows = [{"epoch": 1, "phase": 1, "phase_epoch": 1, "loss": 0.5, "val_auc": 0.7, "learning_rate": 1e-3,
             "seconds": 1.0}, {"epoch": 2, "phase": 1, "phase_epoch": 2, "loss": 0.4, "val_auc": 0.8,
                               "learning_rate": 1e-3, "seconds": 1.0}]
    writer = TensorBoardWriter(tmp_path, summary=summary)
    assert writer.sync(rows[:1]) == 1 and writer.sync(rows) == 1 and writer.sync(rows) == 0
    writer.close()
    (file,) = (tmp_path / "train").glob("events.out.tfevents.*")
    with open(file, "ab") as handle:  # a killed writer: half a record at the end
        handle.write(b"\x20\x00\x00\x00\x00\x00\x00\x00\x01\x02")
    again = TensorBoardWriter(tmp_path, summary=summary)
    assert again.steps == {"train": {1, 2}, "validation": {1, 2}}
    assert again.sync([*rows, {**rows[1], "epoch": 3}]) == 1
    again.close()
    assert event_points(tmp_path) == {**{("train", t, s): 1 for t in ("epoch_loss", "epoch_learning_rate")
                                         for s in (1, 2, 3)}, **{("validation", "epoch_auc", s): 1 for s in (1, 2, 3)}}


def test_without_the_tensorboard_package_one_warning_and_the_run_goes_on(collection, tmp_path, monkeypatch):
    def missing():
        raise ImportError("No module named 'tensorboard'")

    monkeypatch.setattr(tb, "_summary", missing)
    config = TrainConfig(data_dir=str(collection), runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"),
                         epochs=1, fine_tune_epochs=0, **OPTIONS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = train(config)
    ours = [w for w in caught if "TensorBoard logging is off" in str(w.message)]
    assert len(ours) == 1 and "pip install 'tensorboard" in str(ours[0].message)
    assert (run / "metrics.json").is_file() and not (run / TENSORBOARD_DIR).exists()


def test_no_tensorflow_is_needed(tmp_path):
    # the module alone (loaded from its file: no Keras import), TensorFlow made unimportable
    code = ("import sys, importlib.util; sys.modules['tensorflow'] = None\n"
            f"spec = importlib.util.spec_from_file_location('tb', {str(Path(tb.__file__))!r})\n"
            "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
            "tensorboard_writer, event_scalars = module.tensorboard_writer, module.event_scalars\n"
            f"w = tensorboard_writer({str(tmp_path)!r}); w.sync([{{'epoch': 1, 'phase': 1, 'loss': 0.5}}]); w.close()\n"
            f"print(event_scalars({str(tmp_path / TENSORBOARD_DIR)!r})['train'])\n"
            "assert 'tensorflow' not in sys.modules or sys.modules['tensorflow'] is None\n")
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "{'epoch_loss': {1: 0.5}}" in result.stdout


def test_the_option():
    parser = cli.build_parser()
    assert not hasattr(parser.parse_args(["train"]), "tensorboard")  # not given: TrainConfig's default
    assert TrainConfig().tensorboard is True
    assert parser.parse_args(["train", "--no-tensorboard"]).tensorboard is False
    assert parser.parse_args(["grid", "--out", "g", "--no-tensorboard"]).tensorboard is False
    with pytest.raises(ValueError, match=r"Expected tensorboard to be True or False. Received: tensorboard='yes'"):
        check_config(TrainConfig(tensorboard="yes"))
