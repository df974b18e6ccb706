"""A run folder that vouches for itself (:mod:`covidxr.records`): every file a later command trusts is in
``record.json``; a changed file is one line naming it, exit 2, in ``train --resume``, ``evaluate``, ``compare``
and the grid's pooling; ``predictions.csv``'s content is checked; old runs read with a warning."""

from __future__ import annotations

import json
import os
import shutil
import stat
import warnings
from pathlib import Path

import pandas as pd
import pytest

from covidxr import atomic, cli, records
from covidxr.evaluation import grid_comparison, read_run
from covidxr.records import RECORD_FILE, RecordMismatch, check_record, recorded_path, write_recorded_json


def _copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    return copy


def _one_error_line(capsys, *needles) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("covidxr ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _cut_last(path: Path, n: int) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-n]))


def _append_rows_twice(path: Path) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines + lines[1:]))


def _impossible_probabilities(path: Path) -> None:
    preds = pd.read_csv(path)
    column = [c for c in preds.columns if c.startswith("prob_")][0]
    preds.loc[0, column], preds.loc[1, column] = -3.0, 7.5
    preds.to_csv(path, index=False)


DAMAGES = {"last lines removed": lambda p: _cut_last(p, 5), "rows appended twice": _append_rows_twice,
           "probabilities -3 and 7.5": _impossible_probabilities}


# --------------------------------------------------------------------------- the record itself

def test_a_training_run_records_every_trusted_file(tiny_run):
    record = json.loads((tiny_run / RECORD_FILE).read_text())
    assert {"config.json", "split.csv", "predictions.csv", "model.keras", "metrics.json"} <= set(record["files"])
    assert record["pending"] == {}
    preds = pd.read_csv(tiny_run / "predictions.csv")
    assert record["files"]["predictions.csv"]["rows"] == len(preds)
    assert check_record(tiny_run) is not None  # every listed file matches


class Killed(BaseException):
    pass


def test_a_kill_between_the_steps_of_a_recorded_write_leaves_a_folder_that_checks(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    write_recorded_json(folder / "config.json", {"a": 1})

    def killed(*args, **kwargs):
        raise Killed()

    with monkeypatch.context() as mp:  # killed before the rename: the old file and a pending new digest
        mp.setattr(atomic, "fault_point", lambda name: killed() if name == "before-rename:config.json" else None)
        with pytest.raises(Killed):
            write_recorded_json(folder / "config.json", {"a": 2})
    assert json.loads((folder / "config.json").read_text()) == {"a": 1}
    assert "config.json" in json.loads((folder / RECORD_FILE).read_text())["pending"]
    check_record(folder)
    real_note = records._note
    with monkeypatch.context() as mp:  # killed after the rename, before the record says so
        mp.setattr(records, "_note", lambda *a, pending, **k: real_note(*a, pending=pending, **k) if pending
                   else killed())
        with pytest.raises(Killed):
            write_recorded_json(folder / "config.json", {"a": 3})
    assert json.loads((folder / "config.json").read_text()) == {"a": 3}
    check_record(folder)
    (folder / "config.json").write_text('{"a": 4}\n')  # changed by hand: neither digest
    with pytest.raises(RecordMismatch, match=r"Expected config\.json as covidxr wrote it .*Received: path="):
        check_record(folder)
    (folder / "config.json").unlink()
    with pytest.raises(RecordMismatch, match=r"Expected config\.json in the folder: its record\.json lists it, "
                                             r"but it is gone.*Received: path="):
        check_record(folder)


def test_a_folder_without_a_record_reads_unchecked_with_a_warning(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    (run / RECORD_FILE).unlink()
    with pytest.warns(UserWarning, match=r"has no record\.json .*read unchecked"):
        config, preds = read_run(run)
    assert len(preds) and config["classes"]


def test_a_damaged_record_is_one_line(tiny_run, tmp_path, capsys):
    run = _copy(tiny_run, tmp_path)
    (run / RECORD_FILE).write_text("{not json")
    with pytest.raises(RecordMismatch, match=r"Expected record\.json to be the folder's record .*Received: path="):
        read_run(run)
    assert cli.main(["evaluate", "--run", str(run), "--n-bootstrap", "0", "--no-figures"]) == 2
    _one_error_line(capsys, "record.json")


# --------------------------------------------------------------------------- predictions.csv

@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_predictions_are_refused_by_evaluate_and_the_grid(tiny_run, tmp_path, capsys, damage):
    run = _copy(tiny_run, tmp_path)
    DAMAGES[damage](run / "predictions.csv")
    assert cli.main(["evaluate", "--run", str(run), "--n-bootstrap", "0", "--no-figures"]) == 2
    _one_error_line(capsys, "predictions.csv", "changed or damaged")
    assert not (run / "evaluations").exists() or not any((run / "evaluations").iterdir())
    with pytest.raises(RecordMismatch, match=r"predictions\.csv .*Received: path=.*predictions\.csv"):
        grid_comparison([run], n_bootstrap=0)
    assert cli.main(["compare", str(run), "--n-bootstrap", "0"]) == 2
    _one_error_line(capsys, "predictions.csv")


@pytest.mark.parametrize("damage, message", [
    ("rows appended twice", r"Expected each image once in .*predictions\.csv.*Received: images="),
    ("probabilities -3 and 7.5", r"Expected probabilities in \[0, 1\] in .*predictions\.csv.*Received: rows="),
])
def test_unchecked_runs_still_get_the_content_checks(tiny_run, tmp_path, damage, message):
    run = _copy(tiny_run, tmp_path)
    (run / RECORD_FILE).unlink()
    DAMAGES[damage](run / "predictions.csv")
    with pytest.warns(UserWarning, match="unchecked"), pytest.raises(ValueError, match=message):
        read_run(run)


def test_predictions_must_cover_the_split_and_sum_to_one(tiny_run, tmp_path):
    from covidxr.evaluation.runs import check_predictions

    preds = pd.read_csv(tiny_run / "predictions.csv", dtype={"image": str})
    split = pd.read_csv(tiny_run / "split.csv", dtype={"image": str})
    classes = json.loads((tiny_run / "config.json").read_text())["classes"]
    check_predictions(preds, classes=classes, path="p.csv", split=split)
    with pytest.raises(ValueError, match=r"Expected one row per image of the run's validation and test parts .*"
                                         r"3 are missing and 0 are not.*Received: missing="):
        check_predictions(preds.iloc[3:], classes=classes, path="p.csv", split=split)
    halved = preds.assign(**{f"prob_{classes[0]}": preds[f"prob_{classes[0]}"] / 2})
    with pytest.raises(ValueError, match=r"Expected each row's probabilities in 'p\.csv' to sum to 1.*Received: sums="):
        check_predictions(halved, classes=classes, path="p.csv", split=split)
    text = preds.astype({f"prob_{classes[1]}": str})
    text.loc[0, f"prob_{classes[1]}"] = "abc"
    with pytest.raises(ValueError, match=r"Expected probabilities in \[0, 1\].*not a number"):
        check_predictions(text, classes=classes, path="p.csv", split=split)


def test_an_evaluation_folder_is_recorded_and_checked_by_compare(tiny_run, tmp_path, capsys):
    run = _copy(tiny_run, tmp_path)
    assert cli.main(["evaluate", "--run", str(run), "--n-bootstrap", "0", "--no-figures"]) == 0
    (evaluation,) = (run / "evaluations").iterdir()
    assert set(json.loads((evaluation / RECORD_FILE).read_text())["files"]) == {"metrics.json", "predictions.csv"}
    _cut_last(evaluation / "predictions.csv", 2)
    capsys.readouterr()
    assert cli.main(["compare", str(run), "--evaluation", "test", "--n-bootstrap", "0"]) == 2
    _one_error_line(capsys, "predictions.csv", "changed or damaged")


# --------------------------------------------------------------------------- train --resume

def _unfinished(run: Path) -> None:
    """Make a finished copy look interrupted (its config no longer marked finished, re-recorded)."""
    config = json.loads((run / "config.json").read_text())
    config.pop("finished")
    write_recorded_json(run / "config.json", config)


def test_resume_refuses_a_cut_split_and_never_writes_it_back(tiny_run, tmp_path, capsys):
    run = _copy(tiny_run, tmp_path)
    _unfinished(run)
    _cut_last(run / "split.csv", 20)
    cut = (run / "split.csv").read_bytes()
    assert cli.main(["train", "--resume", str(run)]) == 2
    _one_error_line(capsys, "split.csv", "changed or damaged", "rows")
    assert (run / "split.csv").read_bytes() == cut
    assert not (run / ".lock").exists()  # the lock was given back


def test_resume_refuses_an_edited_config(tiny_run, tmp_path, capsys):
    run = _copy(tiny_run, tmp_path)
    _unfinished(run)
    config = json.loads((run / "config.json").read_text())
    del config["fine_tune_epochs"]
    (run / "config.json").write_text(json.dumps(config))
    assert cli.main(["train", "--resume", str(run)]) == 2
    _one_error_line(capsys, "config.json", "changed or damaged")


# --------------------------------------------------------------------------- atomic writes

def test_an_atomic_write_flushes_its_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def recording(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        return real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    atomic.write_text(tmp_path / "a.txt", "x")
    assert synced == [False, True]  # the file's bytes, then the folder's entry (the rename)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        atomic.fsync_folder(tmp_path / "missing")  # a folder that cannot be opened: nothing, no error
