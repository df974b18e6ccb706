"""Every anticipated failure of the command line is one line naming the file and the cause, with exit
status 2 (Ctrl-C: one line, 130), and checks that can fail run before a run folder is made
(docs/reliability-errors.md lists the cases)."""

from __future__ import annotations

import json
import shutil
import zipfile

import pandas as pd
import pytest

from covidxr import cli
from covidxr.records import recorded_path, write_recorded_text

TINY = ["--backbone", "vgg16", "--weights", "none", "--image-size", "32", "--batch-size", "8", "--epochs", "1",
        "--fine-tune-epochs", "0", "--verbose", "0"]


def _one_line(err: str, command: str, kind="error") -> str:
    """The one line a command ended with (stderr holds nothing else but one-line warnings)."""
    lines = [line for line in err.strip().splitlines() if line and not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith(f"covidxr {command}: {kind}"), err
    return lines[0]


def _copy(run, tmp_path, name):
    shutil.copytree(run, tmp_path / name)
    return tmp_path / name


def _hostile_model(path):
    """Rewrite model.keras so that a layer's class is ``system`` of module ``os``."""
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(files["config.json"])
    layer = next(layer for layer in config["config"]["layers"] if layer["class_name"] == "Dropout")
    layer.update(module="os", class_name="system", registered_name=None)
    files["config.json"] = json.dumps(config).encode()
    with recorded_path(path) as tmp, zipfile.ZipFile(tmp, "w") as archive:  # the record agrees: the loader refuses
        for name, data in files.items():
            archive.writestr(name, data)


def test_damaged_config_json_is_one_line_naming_it(tiny_run, tmp_path, capsys):
    for name, text, cause in (("list", "[1, 2]", "it holds a JSON list."),
                              ("cut", None, "it is not valid JSON (Unterminated string")):
        run = _copy(tiny_run, tmp_path, name)
        path = run / "config.json"
        write_recorded_text(path, text if text is not None else path.read_text()[:200])  # damaged, record agrees
        for argv in (["evaluate", "--run", str(run), "--no-figures", "--n-bootstrap", "10"],
                     ["train", "--resume", str(run)]):
            assert cli.main(argv) == 2
            line = _one_line(capsys.readouterr().err, argv[0])
            assert f"Expected config.json to hold the run's options; {cause}" in line
            assert line.endswith(f"Received: path='{path}'")


def test_resume_refuses_a_config_json_that_lost_an_option(tiny_run, tmp_path, capsys):
    run = _copy(tiny_run, tmp_path, "lost")
    record = json.loads((run / "config.json").read_text())
    del record["finished"], record["fine_tune_epochs"]
    write_recorded_text(run / "config.json", json.dumps(record))
    assert cli.main(["train", "--resume", str(run)]) == 2
    line = _one_line(capsys.readouterr().err, "train")
    assert line.endswith("Received: missing=['fine_tune_epochs']") and str(run / "config.json") in line


def test_config_option_of_the_wrong_type(collection, tmp_path, capsys):
    path = tmp_path / "options.json"
    path.write_text(json.dumps({"views": 5}))
    assert cli.main(["train", "--data-dir", str(collection), "--config", str(path), "--runs-dir",
                     str(tmp_path / "runs")]) == 2
    assert _one_line(capsys.readouterr().err, "train").endswith(
        f"error: Expected option views in {path} to be a string. Received: views=5")
    assert not (tmp_path / "runs").exists()


def test_text_in_a_probability_column(tiny_run, tmp_path, capsys):
    run = _copy(tiny_run, tmp_path, "abc")
    preds = pd.read_csv(run / "predictions.csv").astype({"prob_covid": object})
    preds.loc[3, "prob_covid"] = "abc"
    write_recorded_text(run / "predictions.csv", preds.to_csv(index=False))
    assert cli.main(["evaluate", "--run", str(run), "--no-figures", "--n-bootstrap", "10"]) == 2
    assert _one_line(capsys.readouterr().err, "evaluate").endswith(
        f"Expected numbers in column prob_covid of '{run / 'predictions.csv'}' (damaged or edited?); 1 rows hold "
        f"text. Received: prob_covid='abc'")


def test_a_model_naming_a_module_such_as_os_is_refused_in_one_line(tiny_run, collection, tmp_path, capsys):
    run = _copy(tiny_run, tmp_path, "hostile")
    _hostile_model(run / "model.keras")
    image = str(collection / "images" / "p000_0.jpg")
    for argv in (["predict", image, "--run", str(run)],
                 ["evaluate", "--run", str(run), "--data-dir", str(collection), "--no-figures", "--n-bootstrap", "10",
                  "--allow-overlap"]):
        assert cli.main(argv) == 2
        line = _one_line(capsys.readouterr().err, argv[0])
        assert "Refusing to load model.keras" in line and "class 'system' of module 'os'" in line
        assert line.endswith(f"Received: path='{run / 'model.keras'}'")


def test_ctrl_c_is_one_line_saying_how_to_continue(collection, tmp_path, capsys, monkeypatch):
    from covidxr import evaluate, train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    def main(argv):
        try:
            return cli.main(argv)
        except KeyboardInterrupt:  # would stop pytest itself
            pytest.fail("Ctrl-C escaped the command line as a traceback")

    monkeypatch.setattr(train, "_cache_parts", interrupted)  # after the run folder and its config.json
    assert main(["train", "--data-dir", str(collection), *TINY, "--runs-dir", str(tmp_path / "runs"),
                 "--cache-dir", str(tmp_path / "cache")]) == 130
    (run,) = (tmp_path / "runs").iterdir()
    err = capsys.readouterr().err  # the run's log, then one line
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"covidxr train: interrupted; `covidxr train --resume {run}` continues"
    assert (run / "config.json").is_file()
    monkeypatch.setattr(evaluate, "evaluate_run", interrupted)
    assert main(["evaluate", "--run", str(run)]) == 130
    assert _one_line(capsys.readouterr().err, "evaluate", kind="interrupted").endswith("run the command again to redo it")


def test_checks_run_before_the_run_folder_is_made(collection, tmp_path, capsys, monkeypatch):
    from covidxr import runfolder

    data = tmp_path / "data"
    shutil.copytree(collection / "images", data / "images")
    rows = [{"path": f"images/{p.name}", "label": "normal" if int(p.name[1:4]) % 2 else "covid", "patient": p.name[:4]}
            for p in sorted((data / "images").glob("p0*"))]
    pd.DataFrame(rows + [rows[0]] * 5).to_csv(data / "manifest.csv", index=False)  # one image six times
    runs = tmp_path / "runs"
    assert cli.main(["train", "--data-dir", str(data / "manifest.csv"), "--task", "covid-vs-normal", *TINY,
                     "--runs-dir", str(runs), "--cache-dir", str(tmp_path / "cache")]) == 2
    assert _one_line(capsys.readouterr().err, "train").endswith(
        "listed more than once. Received: times={'p000_0.jpg': 6}")
    assert not runs.exists()
    cache = tmp_path / "read-only-cache"
    cache.mkdir()
    real = runfolder.os.access
    monkeypatch.setattr(runfolder.os, "access", lambda path, mode: real(path, mode) and cache.name not in str(path))
    assert cli.main(["train", "--data-dir", str(collection), *TINY, "--runs-dir", str(runs),
                     "--cache-dir", str(cache)]) == 2
    assert _one_line(capsys.readouterr().err, "train").endswith(f"Received: cache_dir='{cache}'")
    assert not runs.exists() or not any(runs.iterdir())
