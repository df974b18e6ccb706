"""Runs record their data: the resolved absolute folder, the layout and a fingerprint (sha256 of
the metadata/manifest file and the image count) in config.json and report.md; `train --config
RUN/config.json` finds the same data from a new shell, and stops with one line when it differs."""

from __future__ import annotations

import hashlib
import json
import shutil

import pandas as pd
import pytest

from covidxr import cli
from covidxr.config import TrainConfig, check_data_record, data_record, load_frame


def _tiny(tmp_path, **overrides):
    options = dict(data_dir=None, backbone="vgg16", weights="none", image_size=32, batch_size=8, epochs=1,
                   fine_tune_epochs=0, strategy="none", runs_dir=str(tmp_path / "runs"),
                   cache_dir=str(tmp_path / "cache"), verbose=0, tensorboard=False, memory_check=False)
    return TrainConfig(**{**options, **overrides})


def test_data_record_of_each_layout(collection, class_folders, tmp_path):
    config = _tiny(tmp_path, data_dir=str(collection))
    record = data_record(config, load_frame(config))
    assert record["dir"] == str(collection.resolve()) and record["layout"] == "metadata"
    assert record["fingerprint"]["sha256"] == hashlib.sha256((collection / "metadata.csv").read_bytes()).hexdigest()
    assert record["fingerprint"]["file"] == "metadata.csv" and record["fingerprint"]["images"] > 0
    folders = _tiny(tmp_path, data_dir=str(class_folders))
    by_folder = data_record(folders, load_frame(folders))
    assert by_folder["layout"] == "folders" and by_folder["fingerprint"]["file"] is None
    assert len(by_folder["fingerprint"]["sha256"]) == 64


def test_a_differing_fingerprint_is_refused():
    old = {"dir": "/a", "fingerprint": {"file": "metadata.csv", "sha256": "a" * 64, "images": 10}}
    check_data_record(old, old)
    check_data_record(None, old)  # nothing recorded: any data
    for new in ({"sha256": "b" * 64, "images": 10}, {"sha256": "a" * 64, "images": 11}):
        with pytest.raises(ValueError, match=r"Expected the data the run recorded .*pass --data-dir.* Received: data_dir='/b'"):
            check_data_record(old, {"dir": "/b", "fingerprint": {"file": "metadata.csv", **new}})


@pytest.mark.slow
def test_run_through_the_environment_names_its_data(collection, tmp_path, monkeypatch, capsys):
    data = tmp_path / "elsewhere" / "collection"
    shutil.copytree(collection, data)
    monkeypatch.setenv("COVIDXR_DATA_DIR", str(data))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--weights", "none", "--backbone", "vgg16", "--image-size", "32", "--batch-size", "8",
                     "--epochs", "1", "--fine-tune-epochs", "0", "--runs-dir", "runs", "--cache-dir", "cache",
                     "--verbose", "0", "--no-tensorboard", "--no-memory-check"]) == 0
    run = next((tmp_path / "runs").iterdir())
    record = json.loads((run / "config.json").read_text())
    sha = hashlib.sha256((data / "metadata.csv").read_bytes()).hexdigest()
    assert record["data_dir"] == str(data.resolve())
    assert record["data"] == {"dir": str(data.resolve()), "layout": "metadata",
                              "fingerprint": {"file": "metadata.csv", "sha256": sha,
                                              "images": record["data"]["fingerprint"]["images"]}}
    assert record["data"]["fingerprint"]["images"] == len(pd.read_csv(run / "split.csv"))
    assert str(data.resolve()) in (run / "report.md").read_text() and sha in (run / "report.md").read_text()
    capsys.readouterr()

    # a new shell: no COVIDXR_DATA_DIR, another working folder; --config names the same data
    monkeypatch.delenv("COVIDXR_DATA_DIR")
    monkeypatch.chdir(tmp_path / "elsewhere")
    again = TrainConfig.from_json(run / "config.json")
    assert data_record(again, load_frame(again)) == record["data"]

    # the data changed under it: one error line, exit 2, nothing written
    table = pd.read_csv(data / "metadata.csv")
    table.iloc[1:].to_csv(data / "metadata.csv", index=False)
    before = sorted((tmp_path / "runs").iterdir())
    assert cli.main(["train", "--config", str(run / "config.json"), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and "the data found differs" in lines[0] and "--data-dir" in lines[0], err
    assert "Traceback" not in err and sorted((tmp_path / "runs").iterdir()) == before
