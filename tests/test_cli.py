"""Tests for the command line (download, eda, split) and the download logic."""

from __future__ import annotations

import os
import re
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
    assert all((tmp_path / "eda" / name).stat().st_size > 5000 for name in written)


@pytest.mark.realdata
def test_eda_real_snapshot(real_data, capsys, tmp_path):
    assert cli.main(["eda", "--data-dir", str(real_data), "--cache-dir", str(tmp_path / "cache")]) == 0
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
    assert "3 split groups hold more than one patient (13 images); the largest is 178+97 (2 patients, 9 images)" in out
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
