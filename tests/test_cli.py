"""Tests for the command line (download, eda, split) and the download logic."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pandas as pd
import pytest

import covidxr
from covidxr import cli, data, download


def run_cli(*args, env=None):
    """Run ``python -m covidxr.cli`` in a subprocess (as a user would)."""
    return subprocess.run([sys.executable, "-m", "covidxr.cli", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300)


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"covidxr {covidxr.__version__}"


def test_help_mentions_research_only(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "not a medical device" in capsys.readouterr().out


def test_eda_counts_match_pandas(collection, tmp_path, capsys):
    assert cli.main(["eda", "--data-dir", str(collection), "--out", str(tmp_path / "eda")]) == 0
    out = capsys.readouterr().out
    meta = pd.read_csv(collection / "metadata.csv")
    meta = meta[meta.filename.map(lambda f: (collection / "images" / f).is_file())]
    frontal = meta[(meta.modality == "X-ray") & meta.view.isin(["PA", "AP", "AP Supine"]) & (meta.finding != "todo")]
    normal = frontal.finding.eq("No Finding")
    covid = frontal.finding.str.contains("COVID-19")
    assert f"{len(frontal)} labelled images of {frontal.patientid.nunique()} patients" in out
    line = next(l for l in out.splitlines() if l.split()[:2] == ["covid-vs-normal", "normal"])
    assert line.split()[2:] == [str(normal.sum()), str(frontal[normal].patientid.nunique())]
    line = next(l for l in out.splitlines() if l.split()[:2] == ["covid-vs-rest", "covid"])
    assert line.split()[2:] == [str(covid.sum()), str(frontal[covid].patientid.nunique())]
    written = sorted(p.name for p in (tmp_path / "eda").iterdir())
    assert {"eda_overview.png", "sample_grid.png", "eda_age_by_sex.png", "eda_class_counts.png"} <= set(written)
    assert all((tmp_path / "eda" / name).stat().st_size > 5000 for name in written if name.endswith(".png"))
    assert len(list((tmp_path / "eda" / "review_pairs").glob("*.png"))) == 24  # the closest of many look-alikes


@pytest.mark.realdata
def test_eda_real_snapshot(real_data, real_cache, capsys, tmp_path):
    assert cli.main(["eda", "--data-dir", str(real_data), "--cache-dir", str(real_cache)]) == 0
    out = capsys.readouterr().out
    meta = pd.read_csv(real_data / "metadata.csv")
    meta = meta[[(real_data / "images" / f).is_file() for f in meta.filename]].drop_duplicates("filename")
    frontal = meta[(meta.modality == "X-ray") & meta.view.isin(data.FRONTAL_VIEWS)
                   & meta.finding.notna() & (meta.finding != "todo")]
    covid = frontal.finding.str.contains("COVID-19")
    assert f"{len(frontal)} labelled images of {frontal.patientid.nunique()} patients" in out
    line = next(l for l in out.splitlines() if l.split()[:2] == ["covid-vs-rest", "covid"])
    assert line.split()[2:] == [str(covid.sum()), str(frontal[covid].patientid.nunique())]
    assert "only 16 patients in its smallest class" in out
    # the merged split groups and the mixed-label patients (9 of the 16 normal patients also have COVID-19 films)
    # 192+196: one film under two ids, merged by the shipped same-patients file (--same-patients auto)
    assert "4 split groups hold more than one patient (19 images); the largest is 178+97 (2 patients, 9 images)" in out
    assert "same patients: 1 confirmed pairs of patient ids from covid-chestxray-dataset-2020.csv" in out
    assert "3 pairs of images of different split groups are within 64 of 256 near-hash bits, 0 not reviewed" in out
    assert "9 of 309 patients have images of more than one label (9 of 257 covid, 9 of 16 normal, 0 of 45 other" in out


def test_split_command(collection, tmp_path, capsys):
    out = tmp_path / "split.csv"
    assert cli.main(["split", "--data-dir", str(collection), "--task", "three-class", "--out", str(out),
                     "--val-size", "0.2", "--test-size", "0.2", "--allow-small-validation"]) == 0
    assert re.search(r"achieved sizes: train 0\.\d{3} of images / 0\.\d{3} of groups.*\(requested: val 0.2, test 0.2\)",
                     capsys.readouterr().out)
    split = data.read_split(out)
    assert split.groupby("patient")["part"].nunique().max() == 1
    assert cli.main(["split", "--data-dir", str(collection), "--out", str(out)]) == 2
    assert "Received: out=" in capsys.readouterr().err
    assert cli.main(["split", "--data-dir", str(collection), "--task", "three-class", "--out", str(tmp_path / "b.csv"),
                     "--val-size", "0.2", "--test-size", "0.2"]) == 2  # without --allow-small-validation
    assert "Received: val_groups_per_class=" in capsys.readouterr().err


def test_bad_task_is_rejected(collection):
    result = run_cli("eda", "--data-dir", collection, "--task", "nope")
    assert result.returncode == 2
    assert "invalid choice: 'nope'" in result.stderr


def test_bad_view_message(collection, capsys):
    assert cli.main(["split", "--data-dir", str(collection), "--views", "PA,Oblique", "--out", "x.csv"]) == 2
    assert "Unknown view name" in capsys.readouterr().err


# --------------------------------------------------------------------------- download

def _zip_collection(collection, path, top="covid-chestxray-dataset-abc"):
    with zipfile.ZipFile(path, "w") as zf:
        for file in collection.rglob("*"):
            if file.is_file():
                zf.write(file, f"{top}/{file.relative_to(collection).as_posix()}")
    return path


def test_download_offline_message(tmp_path, monkeypatch):
    import keras

    def offline(**kwargs):
        raise Exception("URL fetch failure on https://github.com/...: None -- [Errno -3] no network")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(ConnectionError, match=r"Could not download the dataset.*place the data by hand.*Received: url="):
        download.download(tmp_path / "ds", ref="abc")
    assert not (tmp_path / "ds").exists()


def test_download_unpacks_and_verifies(collection, tmp_path, monkeypatch):
    import keras

    archive = _zip_collection(collection, tmp_path / "a.zip")
    seen = {}

    def fake_get_file(**kwargs):
        seen.update(kwargs)
        return str(archive)

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    summary = download.download(tmp_path / "ds", ref="abc")
    assert seen["origin"] == "https://github.com/ieee8023/covid-chestxray-dataset/archive/abc.zip"
    assert (tmp_path / "ds" / "metadata.csv").is_file()
    assert "labelled images on disk" in summary and "1 listed images missing" in summary
    seen.clear()
    again = download.download(tmp_path / "ds", ref="abc")  # present: verified, not fetched again
    assert "already holds the collection" in again and not seen
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match=r"pass --force.*Received: dest="):
        download.download(tmp_path / "other", ref="abc")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".covidxr-download-")]


def test_download_refuses_zip_slip(tmp_path, monkeypatch):
    import keras

    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../../evil.txt", "x")
    monkeypatch.setattr(keras.utils, "get_file", lambda **kw: str(archive))
    with pytest.raises(ValueError, match=r"inside the target folder.*Received: member='\.\./\.\./evil.txt'"):
        download.download(tmp_path / "ds")
    assert not (tmp_path.parent / "evil.txt").exists()


@pytest.mark.network
@pytest.mark.skipif(os.environ.get("COVIDXR_NETWORK_TESTS") != "1", reason="needs internet (set COVIDXR_NETWORK_TESTS=1)")
def test_download_real(tmp_path):  # pragma: no cover - needs network
    summary = download.download(tmp_path / "ds")
    assert "labelled images on disk" in summary


def test_eda_and_the_figures_load_no_keras(collection):
    """`covidxr eda`, the figures and the evaluation layer start without Keras or TensorFlow (the
    Grad-CAM examples and external scoring load it when they are used)."""
    code = ("import sys; from covidxr.cli import main; rc = main(['eda', '--data-dir', sys.argv[1]]); "
            "import covidxr.evaluation, covidxr.figures, covidxr.reports; "
            "print(rc, sorted(m for m in ('keras', 'tensorflow', 'jax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(collection)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "0 []"


# --------------------------------------------------------------------------- failures: one line, exit 2

def _error_line(err, command):
    """The one line an anticipated failure prints (nothing else on stderr but one-line warnings)."""
    lines = [line for line in err.strip().splitlines() if line and not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith(f"covidxr {command}: error: "), err
    return lines[0]


def test_os_errors_are_one_line(collection, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    assert cli.main(["split", "--data-dir", str(collection), "--out", str(tmp_path / "file" / "split.csv")]) == 2
    assert re.search(r"Expected a path covidxr can use; .*\(\w+Error, errno \d+\)\. Received: path='.*file'$",
                     _error_line(capsys.readouterr().err, "split"))

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/data/split.csv")

    monkeypatch.setattr(data, "write_split", denied)
    assert cli.main(["split", "--data-dir", str(collection), "--out", str(tmp_path / "s.csv")]) == 2
    assert _error_line(capsys.readouterr().err, "split").endswith(
        "error: Expected a path covidxr can use; permission denied (PermissionError, errno 13). "
        "Received: path='/data/split.csv'")


def test_a_missing_optional_package_is_one_line(collection, tmp_path, capsys, monkeypatch):
    def missing(*args, **kwargs):
        raise ImportError("Expected a decoder for JPEG-LS Lossless (1.2.840.10008.1.2.4.80); install it with "
                          "pip install pylibjpeg. Received: path='x.dcm'")

    monkeypatch.setattr(data, "write_split", missing)
    assert cli.main(["split", "--data-dir", str(collection), "--out", str(tmp_path / "s.csv")]) == 2
    assert _error_line(capsys.readouterr().err, "split").endswith("pip install pylibjpeg. Received: path='x.dcm'")


def test_debug_shows_the_traceback(collection, tmp_path, capsys):
    out = tmp_path / "s.csv"
    out.write_text("x")
    for argv in (["--debug", "split", "--data-dir", str(collection), "--out", str(out)],
                 ["split", "--data-dir", str(collection), "--out", str(out), "--debug"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "\nTraceback (most recent call last)" in err and "FileExistsError" in err
        assert err.strip().splitlines()[-1].startswith("covidxr split: error: Expected a new file")


def test_read_only_runs_folder(collection, tmp_path, capsys, monkeypatch):
    from covidxr import runfolder

    monkeypatch.setattr(runfolder.os, "access", lambda path, mode: False)  # as a read-only folder answers
    assert cli.main(["train", "--data-dir", str(collection), "--backbone", "vgg16", "--weights", "none",
                     "--runs-dir", str(tmp_path / "runs")]) == 2
    assert re.search(r"Expected a runs_dir folder this user may write to; '.*' is read-only\. "
                     r"Received: runs_dir='.*runs'$", _error_line(capsys.readouterr().err, "train"))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_runs_folder_for_real(collection, tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    runs.chmod(0o500)
    try:
        assert cli.main(["train", "--data-dir", str(collection), "--backbone", "vgg16", "--weights", "none",
                         "--runs-dir", str(runs)]) == 2
    finally:
        runs.chmod(0o700)
    assert "is read-only. Received: runs_dir=" in _error_line(capsys.readouterr().err, "train")


def test_damaged_model_file(tiny_run, collection, tmp_path, capsys):
    image = collection / "images" / "p000_0.jpg"
    for name, damage in (("cut", lambda b: b[: len(b) // 3]), ("not-keras", None)):
        run = tmp_path / name
        shutil.copytree(tiny_run, run)
        model = run / "model.keras"
        if damage is None:
            model.unlink()
            with zipfile.ZipFile(model, "w") as zf:
                zf.writestr("notes.txt", "a zip, but no Keras model")
        else:
            model.write_bytes(damage(model.read_bytes()))
        assert cli.main(["predict", str(image), "--run", str(run)]) == 2  # the run's record knows
        line = _error_line(capsys.readouterr().err, "predict")
        assert "Expected model.keras as covidxr wrote it" in line and line.endswith(f"Received: path='{model}'")
        (run / "record.json").unlink()  # a run made before records: the loader says what is wrong
        assert cli.main(["predict", str(image), "--run", str(run)]) == 2
        line = _error_line(capsys.readouterr().err, "predict")
        assert "not a Keras model file" in line and "File not found" not in line
        assert line.endswith(f"Received: path='{model}'")


def test_damaged_download_is_one_line(tmp_path, capsys, monkeypatch):
    import keras

    archive = tmp_path / "cut.zip"
    archive.write_bytes(b"PK\x03\x04 cut short")
    monkeypatch.setattr(keras.utils, "get_file", lambda **kw: str(archive))
    assert cli.main(["download", "--data-dir", str(tmp_path / "ds"), "--ref", "abc"]) == 2
    assert "the download is damaged and was removed" in _error_line(capsys.readouterr().err, "download")
    assert not (tmp_path / "ds").exists() and not archive.exists()


def test_train_reports_a_wrong_data_dir_before_weights(tmp_path, capsys, monkeypatch):
    import keras

    from covidxr import train

    monkeypatch.setattr(keras.utils, "get_file", lambda **kw: pytest.fail("weights fetched"))
    monkeypatch.setattr(train, "build_model", lambda *a, **kw: pytest.fail("model built"))
    assert cli.main(["train", "--data-dir", str(tmp_path / "nowhere"), "--weights", "imagenet",
                     "--runs-dir", str(tmp_path / "runs")]) == 2
    assert re.search(r"error: Expected a dataset folder .*Received: data_dir='.*nowhere'$",
                     _error_line(capsys.readouterr().err, "train"))
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- download --force

def test_download_force_replaces_only_a_previous_download(collection, tmp_path, capsys, monkeypatch):
    import keras

    archive = _zip_collection(collection, tmp_path / "a.zip")
    monkeypatch.setattr(keras.utils, "get_file", lambda **kw: str(archive))
    ds = tmp_path / "ds"
    download.download(ds, ref="abc")
    marker = json.loads((ds / download.MARKER).read_text())
    assert marker["ref"] == "abc" and marker["url"].endswith("/abc.zip")
    other = tmp_path / "thesis"
    other.mkdir()
    (other / "chapter1.tex").write_text("years of work")
    with pytest.raises(FileExistsError, match=r"with --force one that holds a previous download \(metadata\.csv "
                                              r"or \.covidxr-download\.json\); this one does not, so nothing is "
                                              r"removed\. Received: dest="):
        download.download(other, ref="abc", force=True)
    assert cli.main(["download", "--data-dir", str(other), "--force"]) == 2
    assert "nothing is removed" in _error_line(capsys.readouterr().err, "download")
    assert sorted(p.name for p in other.iterdir()) == ["chapter1.tex"]
    (ds / "metadata.csv").unlink()  # a previous download, damaged: its marker says it is ours
    download.download(ds, ref="abc", force=True)
    assert (ds / "metadata.csv").is_file() and (ds / download.MARKER).is_file()
