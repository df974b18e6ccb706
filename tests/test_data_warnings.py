"""The data warnings of one load as one summary line (``warning: data: ...``) on the command line
and in a notebook, with each warning in full still at hand (``--debug``, ``eda --out``'s
``data_warnings.txt``, the frame's ``attrs["data_warnings"]``, the ``covidxr.data`` logger)."""

from __future__ import annotations

import logging
import pickle
import warnings

import pandas as pd
import pytest

from conftest import write_collection
from covidxr import data
from covidxr.cli import main, notebook
from covidxr.data.notices import DataWarning, summarise, summary_text
from covidxr.images import load_grouped

SUMMARY = ("warning: data: 1 metadata rows name a missing image (skipped); 1 metadata rows repeat an image "
           "(first row kept); 2 rows without a patient id (each image its own patient)")


@pytest.fixture(scope="module")
def flawed(tmp_path_factory):
    """A small collection with three kinds of data warning: a missing image, an image listed twice
    and two blank patient ids."""
    root = tmp_path_factory.mktemp("flawed")
    meta = write_collection(root)
    meta.loc[0, "patientid"] = meta.loc[1, "patientid"] = " "
    meta = pd.concat([meta, meta.iloc[[5]].assign(patientid="999")], ignore_index=True)   # listed twice
    meta.to_csv(root / "metadata.csv", index=False)
    return root


def _warning_lines(text):
    return [line for line in text.splitlines() if line.startswith("warning:")]


def test_split_prints_one_summary_line(flawed, tmp_path, capsys):
    assert main(["split", "--data-dir", str(flawed), "--cache-dir", str(tmp_path / "cache"), "--workers", "1",
                 "--out", str(tmp_path / "split.csv")]) == 0
    err = capsys.readouterr().err
    assert _warning_lines(err) == [SUMMARY], err   # before: one line per warning
    assert "data warning:" not in err


def test_debug_prints_each_data_warning_in_full(flawed, tmp_path, capsys):
    assert main(["split", "--data-dir", str(flawed), "--cache-dir", str(tmp_path / "cache"), "--workers", "1",
                 "--out", str(tmp_path / "split.csv"), "--debug"]) == 0
    err = capsys.readouterr().err
    full = [line for line in err.splitlines() if line.startswith("data warning: ")]
    assert len(full) == 3 and "metadata rows name an image that is not in" in full[0], err
    assert _warning_lines(err) == [SUMMARY]
    assert not logging.getLogger("covidxr.data").handlers   # the handler goes with the command


def test_eda_writes_the_warnings_in_full(flawed, tmp_path, capsys):
    out = tmp_path / "eda"
    assert main(["eda", "--data-dir", str(flawed), "--cache-dir", str(tmp_path / "cache"), "--workers", "1",
                 "--out", str(out), "--review-distance", "0", "--samples", "1"]) == 0
    captured = capsys.readouterr()
    assert _warning_lines(captured.err) == [SUMMARY]
    lines = (out / "data_warnings.txt").read_text().splitlines()
    assert len(lines) == 3 and lines[2].startswith("2 of ") and "have a blank patient id" in lines[2]
    assert f"wrote {out / 'data_warnings.txt'}" in captured.out


def test_a_notebook_shows_one_line_once(flawed, tmp_path, monkeypatch, capsys):
    """Two cells that read the data: one short line in all, without a source line."""
    monkeypatch.setattr(notebook, "_SHOWN", set())
    with warnings.catch_warnings():   # setup_notebook changes the process's warning display
        notebook.setup_notebook(chdir=False)
        frame = load_grouped(flawed, cache_dir=tmp_path / "cache", workers=1)
        data.load_dataset(flawed)
    err = capsys.readouterr().err
    assert err.splitlines() == [SUMMARY], err
    assert len(frame.attrs["data_warnings"]) == 3


def test_summarise_merges_nested_loaders_and_passes_other_warnings_on(caplog):
    @summarise
    def inner():
        warnings.warn(DataWarning("3 of 9 rows of a.csv are odd: ['x']", count=3, what="odd rows (skipped)"))
        warnings.warn("the hash index is damaged")   # not about the data
        return pd.DataFrame({"a": [1]})

    @summarise
    def outer():
        inner()
        warnings.warn(DataWarning("2 of 9 rows of b.csv are odd", count=2, what="odd rows (skipped)"))
        warnings.warn(DataWarning("a.csv read as Latin-1", what="a.csv read as Latin-1"))
        return inner()   # the same warnings again: counted once

    with caplog.at_level(logging.INFO, logger="covidxr.data"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = outer()
    data_warnings = [w.message for w in caught if isinstance(w.message, DataWarning)]
    assert [str(m) for m in data_warnings] == ["data: 5 odd rows (skipped); a.csv read as Latin-1"]
    assert data_warnings[0].details == ["3 of 9 rows of a.csv are odd: ['x']", "2 of 9 rows of b.csv are odd",
                                        "a.csv read as Latin-1"]
    assert frame.attrs["data_warnings"] == data_warnings[0].details
    assert [str(w.message) for w in caught if not isinstance(w.message, DataWarning)] \
        == ["the hash index is damaged"] * 2
    assert "3 of 9 rows of a.csv are odd: ['x']" in caplog.messages


def test_a_failing_loader_still_says_what_it_found(tmp_path):
    @summarise
    def fails():
        warnings.warn(DataWarning("4 rows name a missing image", count=4, what="rows name a missing image"))
        raise ValueError("Expected images. Received: root='x'")

    with pytest.warns(DataWarning, match=r"^data: 4 rows name a missing image$"), \
            pytest.raises(ValueError, match=r"Expected images\. Received: root='x'"):
        fails()


def test_a_data_warning_survives_a_worker_process():
    """The process pool sends a worker's data warnings back pickled: the count and phrase go too."""
    back = pickle.loads(pickle.dumps(DataWarning("Skipping a missing image file: a.png", count=1, what="files")))
    assert back.parts == [(1, "files", "Skipping a missing image file: a.png")]
    assert summary_text(back.parts + back.parts) == "data: 2 files"


def test_a_command_prints_each_warning_once_however_many_runs_read_the_data(flawed, capsys):
    from covidxr.cli.quiet import quiet_warnings

    with quiet_warnings():
        for _ in range(3):   # a grid's runs each load the data; filters changing between them clear Python's registry
            with warnings.catch_warnings():
                warnings.simplefilter("default")
                data.load_dataset(flawed, task="covid-vs-rest")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: data:")]
    assert len(lines) == 1
