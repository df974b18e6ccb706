"""Tests for covidxr.executors and ``covidxr grid --executor ray``: one local Ray instance (2 CPUs) per
session; a tiny 2 × 2 × 2 grid on Ray equals the local one, a worker killed mid-run is retried and the
retry continues the run, a rerun trains nothing, a failing run is reported while the others finish."""

from __future__ import annotations

import contextlib
import io
import json
import re
import socket
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import GRID, grid_base

from covidxr import cli, executors, grid

BACKBONES, STRATEGIES, FOLDS = GRID["backbones"], GRID["strategies"], GRID["folds"]
KEY = ["backbone", "strategy", "fold"]


def _runs(out) -> dict:
    """(backbone, strategy, fold) -> (config, metrics, predictions) of every run of a grid."""
    found = {}
    for name in json.loads((out / "grid.json").read_text())["runs"]:
        run = out / "runs" / name
        config = json.loads((run / "config.json").read_text())
        metrics = json.loads((run / "metrics.json").read_text())
        found[tuple(config[k] for k in KEY)] = (config, metrics, pd.read_csv(run / "predictions.csv"), run)
    return found


@pytest.fixture(scope="module")
def grids(collection, ray_cluster, finished_grid, tmp_path_factory):
    """The tiny grid on Ray, one worker killed after epoch 1 of some run, beside the same grid run locally
    (the session's ``finished_grid``, as its resume left it)."""
    root = tmp_path_factory.mktemp("grid-ray")
    base = grid_base(collection, root / "cache")  # two phase-1 epochs: the kill falls between them
    ray_cluster["marker"].write_text("armed")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        on_ray = grid.run_grid(base, out=root / "ray", executor="ray", cpus_per_run=1, **GRID)
    return {"local": finished_grid["reference"], "ray": on_ray, "base": base, "kwargs": {**GRID, "cpus_per_run": 1},
            "lines": printed.getvalue().splitlines(), "marker": ray_cluster["marker"]}


def test_ray_grid_equals_the_local_grid(grids):
    local, on_ray = _runs(grids["local"]), _runs(grids["ray"])
    assert set(local) == set(on_ray) == {(b, s, f) for b in BACKBONES for s in STRATEGIES for f in range(FOLDS)}
    for key, (config, metrics, preds, _) in local.items():
        other_config, other_metrics, other_preds, _ = on_ray[key]
        assert preds["image"].equals(other_preds["image"]), key
        np.testing.assert_allclose(preds["prob_covid"], other_preds["prob_covid"], atol=1e-6, err_msg=str(key))
        for part in ("val", "test"):
            for name, value in metrics[part].items():
                if isinstance(value, float):
                    assert other_metrics[part][name] == pytest.approx(value, abs=1e-6), (key, part, name)
        assert config["runs_dir"] != other_config["runs_dir"]
    a, b = (pd.read_csv(g / "comparison.csv").drop(columns="runs") for g in (grids["local"], grids["ray"]))
    pd.testing.assert_frame_equal(a, b, atol=1e-6)  # the tables too (run names differ by time and id)
    record = json.loads((grids["ray"] / "grid.json").read_text())
    assert record["executor"]["executor"] == "ray" and record["failures"] == [] and record["finished"]
    assert len(record["timings"]) == 8


def test_killed_worker_is_retried_and_the_retry_continues_the_run(grids):
    assert not grids["marker"].exists()  # the fault fired
    runs = _runs(grids["ray"])
    resumed = {key: run for key, (config, *_, run) in runs.items() if config.get("resumed")}
    assert len(resumed) == 1, [c.get("resumed") for c, *_ in runs.values()]
    ((key, run),) = resumed.items()
    log = (run / "train.log").read_text()
    assert "resuming run folder" in log and "phase 1: continuing after epoch 1" in log
    history = pd.read_csv(run / "history.csv")
    assert len(history) == 2 and (history["phase"] == 1).all()  # both epochs, the second one after the kill
    assert len(list((grids["ray"] / "runs").iterdir())) == 8  # the retry used the killed run's folder
    label = f"{key[0]} / {key[1]} / fold {key[2]}"
    (line,) = [x for x in grids["lines"] if label in x and "continued in" in x]
    assert "val AUC" in line
    counts = [x for x in grids["lines"] if " done, " in x]
    assert len(counts) == 8 and counts[-1].endswith("(8/8 done, 0 running, 0 failed)")


def test_rerun_of_a_finished_grid_trains_nothing(grids, capsys):
    out = grids["ray"]
    mtimes = {p.name: (p / "model.keras").stat().st_mtime_ns for p in (out / "runs").iterdir()}
    before = json.loads((out / "grid.json").read_text())
    grid.run_grid(grids["base"], out=out, executor="ray", **grids["kwargs"])
    lines = capsys.readouterr().out.splitlines()
    assert sum("done before, kept" in x for x in lines) == 8 and not any("trained in" in x for x in lines)
    assert {p.name: (p / "model.keras").stat().st_mtime_ns for p in (out / "runs").iterdir()} == mtimes
    after = json.loads((out / "grid.json").read_text())
    assert after["timings"] == before["timings"] and after["runs"] == before["runs"]


def _broken_run(base, out, *, fold):
    """An interrupted run folder of (vgg16, none, fold) whose split names images the data lacks: its
    continuation fails for a reason of its own, on any executor."""
    _, configs, *_ = grid._grid_configs(base, out=out, backbones="vgg16", strategies="none", folds=FOLDS,
                                        n_bootstrap=0)
    run = out / "runs" / "broken-run"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(configs[fold].to_dict()))
    pd.DataFrame({"image": ["gone/x.png"], "patient": ["p"], "label": ["covid"], "part": ["train"]}).to_csv(
        run / "split.csv", index=False)


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_failing_run_is_reported_and_the_others_finish(collection, request, tmp_path, capsys, executor):
    if executor == "ray":
        request.getfixturevalue("ray_cluster")
    out = tmp_path / "g"
    base = grid_base(collection, tmp_path / "cache", head="linear", epochs=1)
    _broken_run(base, out, fold=0)
    args = ["grid", "--data-dir", str(collection), "--backbones", "vgg16", "--strategies", "none", "--folds", "2",
            "--out", str(out), "--weights", "none", "--image-size", "32", "--epochs", "1", "--fine-tune-epochs",
            "0", "--batch-size", "8", "--val-size", "0.3", "--cache-dir", str(tmp_path / "cache"), "--verbose",
            "0", "--learning-rate", "0.01", "--n-bootstrap", "5", "--executor", executor]
    assert cli.main(args) == 2
    captured = capsys.readouterr()
    error = _error_line(captured.err)
    assert error.startswith("covidxr grid: error: 1 run(s) of the grid failed (vgg16 / none / fold 0: ")
    assert "the comparison covers the 1 finished run(s)" in error
    assert "fold 0: ValueError: Expected the dataset to hold every image of the run's split.csv" in error
    assert any(x.endswith("(1/2 done, 0 running, 1 failed)") for x in captured.out.splitlines())
    record = json.loads((out / "grid.json").read_text())
    assert len(record["runs"]) == 1 and [f["fold"] for f in record["failures"]] == [0]
    assert "finished" not in record and (out / "comparison.md").is_file()


def _cli_grid(collection, tmp_path, *extra):
    return cli.main(["grid", "--data-dir", str(collection), "--backbones", "vgg16", "--strategies", "none",
                     "--folds", "2", "--out", str(tmp_path / "g"), "--weights", "none", "--image-size", "32",
                     "--cache-dir", str(tmp_path / "cache"), *extra])


def _error_line(err: str) -> str:
    """The command's one error line (Ray may forward its workers' own output to stderr too)."""
    (line,) = [x for x in err.splitlines() if x.startswith("covidxr grid:")]
    return line


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_ray_input_is_one_line_before_any_run(collection, ray_cluster, tmp_path, capsys, monkeypatch):
    port = _closed_port()
    cases = [
        (["--executor", "ray", "--ray-address", f"127.0.0.1:{port}"],
         rf"Could not reach the Ray cluster at 127\.0\.0\.1:{port} .*ray start --head.*Received: ray_address="),
        (["--executor", "ray", "--ray-address", "nowhere"], r"Expected --ray-address 'auto' or HOST:PORT"),
        (["--executor", "ray", "--gpus-per-run", "1"],
         r"Expected --gpus-per-run at most the GPUs of one Ray node \(the most any of the 1 node\(s\) has: 0\)\. "
         r"Received: gpus_per_run=1"),
        (["--executor", "ray", "--cpus-per-run", "3"], r"Expected --cpus-per-run at most the CPUs of one Ray node"),
        (["--gpus-per-run", "1"], r"--gpus-per-run only with --executor ray"),
        (["--executor", "ray", "--cpus-per-run", "0"], r"cpus_per_run to be a number > 0\. Received: cpus_per_run=0"),
    ]
    for extra, message in cases:
        assert _cli_grid(collection, tmp_path, *extra) == 2, extra
        line = _error_line(capsys.readouterr().err)
        assert line.startswith("covidxr grid: error: ")
        assert re.search(message, line), (extra, line)
        assert not (tmp_path / "g" / "runs").exists()
    # a grid folder the workers cannot write (its runs/ is a file)
    (tmp_path / "g").mkdir(exist_ok=True)
    (tmp_path / "g" / "runs").write_text("not a folder")
    assert _cli_grid(collection, tmp_path, "--executor", "ray") == 2
    line = _error_line(capsys.readouterr().err)
    assert "on a filesystem every Ray node sees and can write" in line and "cannot write" in line
    assert not (tmp_path / "g" / ".covidxr-probe").exists()
    # Ray not installed
    monkeypatch.setitem(sys.modules, "ray", None)
    assert _cli_grid(collection, tmp_path, "--executor", "ray") == 2
    line = _error_line(capsys.readouterr().err)
    assert 'needs Ray, which is not installed: pip install "ray>=2.40,<3"' in line


def test_probe_names_what_a_node_cannot_see(tmp_path):
    probe = tmp_path / ".covidxr-probe"
    probe.write_text("token")
    assert executors.probe_paths(probe=str(probe), token="token", writable=[str(tmp_path / "w")],
                                 readable=[str(tmp_path)]) == []
    problems = executors.probe_paths(probe=str(probe), token="other", readable=[str(tmp_path / "data")])
    assert problems == [f"does not see the driver's grid folder {str(tmp_path)!r} (the probe file the driver "
                        f"wrote there is another one)", f"does not see {str(tmp_path / 'data')!r}"]
    assert "is missing" in executors.probe_paths(probe=str(tmp_path / "none"), token="token")[0]


def test_executor_options_are_checked():
    assert executors.check_executor()["executor"] == "local"
    with pytest.raises(ValueError, match=r"Unknown executor\. Expected one of \['local', 'ray'\]\. "
                                         r"Received: executor='dask'"):
        executors.check_executor("dask")
    with pytest.raises(ValueError, match=r"max_retries to be an integer >= 0\. Received: max_retries=-1"):
        executors.check_executor(max_retries=-1)
    with pytest.raises(ValueError, match=r"gpus_per_run to be a number >= 0\. Received: gpus_per_run=-1"):
        executors.check_executor("ray", gpus_per_run=-1)
    assert executors.run_threads(executors.check_executor("ray")) == 1
    assert executors.run_threads(executors.check_executor()) is None
