"""Fault injection: ``train``, ``evaluate`` and ``grid`` are killed (SIGKILL) at seeded random points among the
fault points of :mod:`covidxr.atomic` and the checkpoint, and every later command either gives the result of an
uninterrupted run or ends in one line, exit 2. Reuses the kill machinery of ``tests/test_resume.py``."""

from __future__ import annotations

import json
import random
import shutil
import signal

import numpy as np
import pandas as pd
import pytest
from test_resume import _assert_readable, _covidxr, _finish, _start

from covidxr import cli

#: The seed of the kill points; change it to try others (every seed must pass).
SEED = 24
#: The tiny_run fixture's options on the command line.
TINY = ["--backbone", "vgg16", "--weights", "none", "--image-size", "32", "--batch-size", "8", "--epochs", "2",
        "--fine-tune-epochs", "0", "--strategy", "oversample", "--learning-rate", "0.01", "--verbose", "0"]
#: Where a training run can die: every atomic rename of its files (the k-th write of a file written
#: several times), the decode-once cache, and the checkpoint.
TRAIN_POINTS = (["mid-cache", "before-rename:split.csv", "before-rename:model.keras", "before-rename:history.csv",
                 "before-rename:predictions.csv", "before-rename:metrics.json", "after-state@1", "after-state@2"]
                + [f"before-rename:config.json@{k}" for k in range(1, 5)])
#: ... and every write of its record (two per recorded file: pending, then written).
RECORD_POINTS = [f"before-rename:record.json@{k}" for k in range(1, 19)]
#: Where an evaluation can die: writing its record, the last file of its folder before the rename.
EVALUATE_POINTS = ["before-rename:record.json"]
#: Where a grid of two folds can die: anywhere in its second run, or writing its own record.
GRID_POINTS = ([f"before-rename:record.json@{k}" for k in range(16, 30)]
               + ["before-rename:predictions.csv@2", "before-rename:grid.json@2", "before-rename:comparison.csv"])


def _later(args, capsys, *, expect=None) -> int:
    """A later command, in this process: exit 0, or exit 2 with one line and no traceback (``expect``: that one)."""
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code in (0, 2) and code == (code if expect is None else expect), err
    if code == 2:
        lines = [line for line in err.splitlines() if line.startswith("covidxr ")]
        assert len(lines) == 1 and "Traceback" not in err, err
    return code


def _same_predictions(run, reference) -> None:
    ours, theirs = pd.read_csv(run / "predictions.csv"), pd.read_csv(reference / "predictions.csv")
    assert list(ours["image"]) == list(theirs["image"])
    columns = [c for c in theirs.columns if c.startswith("prob_")]
    np.testing.assert_allclose(ours[columns].to_numpy(), theirs[columns].to_numpy(), atol=1e-5)


def _metrics(folder) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    return {"threshold": round(metrics["threshold"], 5), "n_images": metrics["n_images"],
            **{k: round(v["value"], 5) for k, v in metrics["image"]["metrics"].items() if v["value"] is not None}}


@pytest.mark.slow
def test_killed_commands_recover_or_end_in_one_line(collection, tiny_run, tmp_path, capsys):
    rng = random.Random(SEED)
    points = {"train": [rng.choice(TRAIN_POINTS), rng.choice(RECORD_POINTS)], "evaluate": rng.choice(EVALUATE_POINTS),
              "grid": rng.choice(GRID_POINTS)}
    print("kill points:", points)
    data = ["--data-dir", str(collection), "--cache-dir", str(tmp_path / "cache")]

    # train, killed at two points, each then resumed (or refused in one line), then evaluated
    # (the first killed process starts up while this one evaluates the uninterrupted run)
    first = _start(["train", *data, "--runs-dir", str(tmp_path / "runs0"), *TINY], fault=points["train"][0])
    reference_eval = tmp_path / "reference"
    shutil.copytree(tiny_run, reference_eval)
    _later(["evaluate", "--run", reference_eval, "--n-bootstrap", "20", "--no-figures"], capsys, expect=0)
    (expected,) = (reference_eval / "evaluations").iterdir()
    for k, point in enumerate(points["train"]):
        runs = tmp_path / f"runs{k}"
        result = _finish(first) if k == 0 else _covidxr(["train", *data, "--runs-dir", str(runs), *TINY], fault=point)
        assert result.returncode in (0, -signal.SIGKILL), result.stderr[-3000:]
        for run in (runs.iterdir() if runs.is_dir() else []):
            _assert_readable(run)
            resumed = _later(["train", "--resume", run], capsys)
            config = run / "config.json"
            finished = config.is_file() and json.loads(config.read_text()).get("finished")
            assert resumed == 0 or finished or not config.is_file(), point  # else: nothing to continue
            if not (run / "predictions.csv").is_file():
                continue
            _same_predictions(run, tiny_run)
            _later(["evaluate", "--run", run, "--n-bootstrap", "20", "--no-figures"], capsys, expect=0)
            (evaluation,) = (run / "evaluations").iterdir()
            assert _metrics(evaluation) == _metrics(expected)

    # evaluate, killed: no half evaluation is ever found; evaluating again gives the uninterrupted figures
    run = tmp_path / "evaluated" / tiny_run.name
    shutil.copytree(tiny_run, run)
    result = _covidxr(["evaluate", "--run", str(run), "--n-bootstrap", "20", "--no-figures"], fault=points["evaluate"])
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    _later(["compare", run, "--evaluation", "test", "--n-bootstrap", "0"], capsys, expect=2)
    _later(["evaluate", "--run", run, "--n-bootstrap", "20", "--no-figures"], capsys, expect=0)
    (evaluation,) = (p for p in (run / "evaluations").iterdir() if not p.name.startswith("."))
    assert _metrics(evaluation) == _metrics(expected)
    _later(["compare", run, "--evaluation", "test", "--n-bootstrap", "0"], capsys, expect=0)

    # grid of two folds, killed; the same command again gives the uninterrupted grid's comparison
    grid = ["grid", *data, "--backbones", "vgg16", "--strategies", "oversample", "--folds", "2", "--val-size", "0.3",
            "--n-bootstrap", "20", *[o for o in TINY if o not in ("--strategy", "oversample")]]
    killed = _start([*grid, "--out", str(tmp_path / "grid")], fault=points["grid"])  # beside the reference grid
    _later([*grid, "--out", tmp_path / "grid-reference"], capsys, expect=0)
    result = _finish(killed)
    assert result.returncode in (0, -signal.SIGKILL), result.stderr[-3000:]
    _later([*grid, "--out", tmp_path / "grid"], capsys, expect=0)
    ours = pd.read_csv(tmp_path / "grid" / "comparison.csv")
    theirs = pd.read_csv(tmp_path / "grid-reference" / "comparison.csv")
    numeric = [c for c in theirs.columns if pd.api.types.is_float_dtype(theirs[c])]
    np.testing.assert_allclose(ours[numeric].to_numpy(float), theirs[numeric].to_numpy(float), atol=1e-5)
