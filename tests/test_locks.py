"""Locks (:mod:`covidxr.locks`): a run folder, a grid combination, a cache build and a feature store are each
held by one process; a second one gets one line naming the holder or waits with a message; a dead holder's
lock is taken over; ``cache clear`` skips a cache being built; two grids on one folder train nothing twice."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from covidxr import cli, executors, grid, locks
from covidxr.config import TrainConfig
from covidxr.images import clear_caches, feature_store
from covidxr.locks import LOCK_NAME, LockHeld, acquire, hold
from covidxr.records import write_recorded_json

HOLDER = """
import sys, time
from covidxr.locks import acquire
lock = acquire(sys.argv[1], what=sys.argv[2])
print("held", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


def _holder_process(path, what):
    """Another process that holds the lock ``path`` until its stdin is closed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), what], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _end(proc):
    proc.stdin.close()
    proc.wait(timeout=120)


def test_a_held_lock_names_its_holder(tmp_path):
    path = tmp_path / "x.lock"
    proc = _holder_process(path, "run folder R")
    try:
        with pytest.raises(LockHeld, match=rf"Expected run folder R to be free; it is held by PID {proc.pid} on "
                                           rf"{socket.gethostname()} since .*Received: lock="):
            acquire(path, what="run folder R")
        assert locks.is_held(path)["pid"] == proc.pid
        os.kill(proc.pid, signal.SIGSTOP)  # a stopped holder is named as such
        deadline = time.monotonic() + 30
        while locks._state({"pid": proc.pid, "host": socket.gethostname()}) != "T" and time.monotonic() < deadline:
            time.sleep(0.05)  # the signal is delivered asynchronously
        with pytest.raises(LockHeld, match=rf"held by PID {proc.pid} \(stopped\)"):
            acquire(path, what="run folder R")
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        _end(proc)
    with hold(path, what="run folder R"):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists() and locks.is_held(path) is None


def test_waiting_says_so_after_a_few_seconds(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "NOTICE_SECONDS", 0.2)
    path = tmp_path / "x.lock"
    first = acquire(path, what="feature store K")
    threading.Timer(0.8, first.release).start()
    said = []
    start = time.monotonic()
    with hold(path, what="feature store K", wait=True, notify=said.append):
        assert time.monotonic() - start >= 0.7
    assert len(said) == 1 and f"waiting for feature store K: held by PID {os.getpid()}" in said[0]
    other = acquire(path, what="K")
    with pytest.raises(LockHeld, match="held by PID"):
        acquire(path, what="K", wait=True, timeout=0.3, notify=said.append)
    other.release()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capfd):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / "x.lock"
    inherited = os.open(path, os.O_RDWR | os.O_CREAT)  # as a forked child of the dead holder keeps it locked
    fcntl.flock(inherited, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(inherited, json.dumps({"pid": dead.pid, "host": socket.gethostname(), "what": "cache build K",
                                    "since": "earlier"}).encode())
    try:
        with hold(path, what="cache build K"):
            assert json.loads(path.read_text())["pid"] == os.getpid()
        assert f"taking over a stale lock {path} of PID {dead.pid}" in capfd.readouterr().err
    finally:
        os.close(inherited)


def test_a_busy_feature_store_holder_gets_a_message(tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(locks, "NOTICE_SECONDS", 0.2)
    store = feature_store.FeatureStore({"backbone": "x", "image_size": 32}, cache_dir=tmp_path)
    store.path.mkdir(parents=True)
    first = acquire(store.path / ".lock", what="feature store")
    threading.Timer(0.8, first.release).start()
    features, info = store.features(["a", "b"], lambda positions: np.ones((len(positions), 3)))
    assert features.shape == (2, 3) and info["computed"] == 2
    assert f"waiting for feature store {store.key}: held by PID {os.getpid()}" in capfd.readouterr().err


def test_cache_clear_skips_a_cache_being_built(tmp_path):
    key = "32-pad-none-0123456789abcdef"
    building = tmp_path / f".tmp-{key}-0a1b2c3d"
    (building / "part").mkdir(parents=True)
    with hold(tmp_path / f".{key}.lock", what=f"cache build {key}"):
        with pytest.warns(UserWarning, match=rf"Skipping cache .*{key}.*: it is being built by PID {os.getpid()}"):
            assert clear_caches(tmp_path) == []
        assert building.is_dir()
    assert clear_caches(tmp_path) == [building] and not building.exists()


def test_a_second_resume_of_a_run_gets_one_line(tiny_run, tmp_path, capsys):
    run = tmp_path / tiny_run.name
    shutil.copytree(tiny_run, run)
    config = json.loads((run / "config.json").read_text())
    config.pop("finished")
    write_recorded_json(run / "config.json", config)
    proc = _holder_process(run / LOCK_NAME, f"run folder {run}")
    try:
        assert cli.main(["train", "--resume", str(run)]) == 2
    finally:
        _end(proc)
    err = capsys.readouterr().err
    assert err.count("covidxr train: error:") == 1 and "Traceback" not in err
    assert f"Expected run folder {run} to be free; it is held by PID {proc.pid}" in err


def _fake_run(config: TrainConfig) -> Path:
    run = Path(config.runs_dir) / f"run-{config.fold}-{os.getpid()}-{threading.get_ident()}"
    run.mkdir(parents=True)
    for name in grid.RUN_ARTIFACTS:
        (run / name).write_text("{}")
    (run / "config.json").write_text(json.dumps({**config.to_dict(), "finished": "now"}))
    return run


def test_two_grids_on_one_folder_train_each_combination_once(collection, tmp_path, monkeypatch):
    trained = []

    def slow_train(config, **kwargs):
        trained.append(config.fold)
        time.sleep(0.5)
        return _fake_run(config)

    monkeypatch.setattr(grid, "train", slow_train)
    runs = tmp_path / "out" / "runs"
    configs = [TrainConfig(data_dir=str(collection), runs_dir=str(runs), folds=3, fold=k) for k in range(3)]
    jobs = [{"config": c.to_dict(), "label": f"fold {c.fold}", "progress": False, "clear_session": False,
             "wait": False} for c in configs]
    results = {}

    def one_grid(name):
        outcomes = executors.run_jobs(grid.run_combination, jobs, labels=[j["label"] for j in jobs],
                                      options={"executor": "local"}, out=tmp_path / "out", progress=False)
        results[name] = outcomes

    threads = [threading.Thread(target=one_grid, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(trained) == [0, 1, 2]  # each combination trained once, by one of the two
    for outcomes in results.values():
        assert all(o.error is None and o.result["how"] in ("trained", "kept") for o in outcomes)
        assert [Path(o.result["run"]).name.split("-")[1] for o in outcomes] == ["0", "1", "2"]
    assert len(list(runs.iterdir())) == 3
