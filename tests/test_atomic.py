"""Atomic writes (covidxr.atomic) and checkpoint array restore (covidxr.training.checkpoint)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

from covidxr.atomic import (atomic_path, fault_point, json_text, load_arrays, plain_json, remove_stale, save_arrays,
                            write_json, write_text)
from covidxr.training.checkpoint import read_state, set_arrays


def test_write_replaces_whole_file_and_failure_keeps_the_old_one(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    write_json(path, {"auc": 0.5})
    assert json.loads(path.read_text()) == {"auc": 0.5}
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            assert tmp.parent == path.parent and tmp.suffix == ".json" and tmp.name.startswith(".")
            tmp.write_text('{"auc": 0.')  # half a file, then the writer dies
            raise RuntimeError("writer failed")
    assert json.loads(path.read_text()) == {"auc": 0.5}
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.json"]
    write_text(path, "{}\n")
    assert path.read_text() == "{}\n"


def _refuse(constant):
    raise ValueError(f"Expected strict JSON. Received: constant={constant!r}")


def test_json_is_strict_undefined_figures_are_null(tmp_path):
    """NaN and infinities, also inside NumPy scalars and arrays and nested dicts/lists, become null."""
    value = {"auc": float("nan"), "loss": np.float32("inf"), "best": -np.inf, "n": np.int64(3), "ok": np.bool_(True),
             "history": [{"val_auc": np.float64("nan"), "loss": 0.25}], "cm": np.array([[1.0, np.nan], [2, 3]]),
             "pair": (np.float16(0.5), float("-inf")), np.int64(7): "key", "path": tmp_path}
    path = write_json(tmp_path / "m.json", value)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text and text.endswith("}\n")
    assert json.loads(text, parse_constant=_refuse) == {
        "auc": None, "loss": None, "best": None, "n": 3, "ok": True, "history": [{"val_auc": None, "loss": 0.25}],
        "cm": [[1.0, None], [2.0, 3.0]], "pair": [0.5, None], "7": "key", "path": str(tmp_path)}
    assert plain_json([np.float32(1.5), {"x": np.nan}]) == [1.5, {"x": None}]
    assert json_text({"a": 1}, indent=None) == '{"a": 1}'
    with pytest.raises(ValueError, match=r"Received: constant='NaN'"):
        json.loads(json.dumps(float("nan")), parse_constant=_refuse)


def test_arrays_round_trip_in_order(tmp_path):
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array(7, dtype=np.int64), np.zeros((0, 4))]
    save_arrays(tmp_path / "a.npz", arrays)
    back = load_arrays(tmp_path / "a.npz")
    assert len(back) == 3
    for a, b in zip(arrays, back):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_remove_stale_only_removes_temporary_files(tmp_path):
    (tmp_path / "figures").mkdir()
    keep = [tmp_path / "model.keras", tmp_path / "figures" / "roc.png", tmp_path / ".hidden"]
    stale = [tmp_path / ".model.tmp-12-abcdef.keras", tmp_path / "figures" / ".roc.tmp-3-a1b2c3.png"]
    for path in keep + stale:
        path.write_bytes(b"x")
    assert sorted(remove_stale(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)


def test_fault_point_kills_only_at_the_named_count(monkeypatch):
    monkeypatch.setenv("COVIDXR_FAULT", "other-point")
    fault_point("some-point")  # another point: nothing happens
    code = ("from covidxr.atomic import fault_point\n"
            "for i in range(3):\n    print(i, flush=True)\n    fault_point('here')\n")
    env = {**os.environ, "COVIDXR_FAULT": "here@2"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == -signal.SIGKILL
    assert result.stdout.split() == ["0", "1"]


def test_set_arrays_checks_count_and_shape(tmp_path):
    variables = [keras.Variable(np.zeros((2, 3))), keras.Variable(np.zeros(3))]
    set_arrays(variables, [np.ones((2, 3)), np.full(3, 2.0)])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variables[1]), [2, 2, 2])
    with pytest.raises(ValueError, match=r"Expected a checkpoint with 2 variables .* Received: variables=1"):
        set_arrays(variables, [np.ones((2, 3))])
    with pytest.raises(ValueError, match=r"Expected variables of shape \(3,\) .* Received: shape=\(4,\)"):
        set_arrays(variables, [np.ones((2, 3)), np.ones(4)])


def test_read_state(tmp_path):
    assert read_state(tmp_path) is None
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "state.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="Expected a checkpoint state with a phase"):
        read_state(tmp_path)
    (tmp_path / "checkpoint" / "state.json").write_text("{not json")
    with pytest.raises(ValueError, match="Expected a readable checkpoint state"):
        read_state(tmp_path)


def test_damaged_arrays_file_is_named(tmp_path):
    path = save_arrays(tmp_path / "best-p1.npz", [np.zeros(100), np.ones(3)])
    data = path.read_bytes()
    for damaged in (data[: len(data) // 2], b"not a zip"):
        path.write_bytes(damaged)
        with pytest.raises(ValueError, match=r"Expected best-p1\.npz to be a NumPy archive of arrays that covidxr "
                                             r"wrote; it is damaged \(BadZipFile: File is not a zip file\)\. "
                                             rf"Received: path='{path}'"):
            load_arrays(path)


@pytest.mark.skipif(os.name != "posix", reason="RLIMIT_FSIZE is POSIX")
def test_a_write_over_the_file_size_limit_names_the_file(tmp_path, collection):
    """``[Errno 27] File too large`` (a file-size limit, ``ulimit -f``) names the file or cache being written."""
    import errno
    import resource

    from covidxr.data import load_dataset
    from covidxr.images import build_cache

    frame = load_dataset(collection).head(8)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # Python ignores SIGXFSZ: the write fails instead
    try:
        with pytest.raises(OSError) as text_error:
            write_text(tmp_path / "big.txt", "x" * 10_000)
        with pytest.raises(OSError) as cache_error:
            build_cache(frame, image_size=64, cache_dir=tmp_path / "cache", progress=False)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert (text_error.value.errno, text_error.value.filename) == (errno.EFBIG, str(tmp_path / "big.txt"))
    assert cache_error.value.errno == errno.EFBIG and str(tmp_path / "cache" / ".tmp-") in cache_error.value.filename
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"] and not any((tmp_path / "cache").iterdir())
