"""MLflow tracking (covidxr.tracking) against a real tracking server (the session's ``mlflow_server``:
SQLite backend store on 127.0.0.1), read back through ``MlflowClient``: a run's params, per-epoch
metrics (no step twice after a resume), final metrics and artefacts; an evaluation's figures with
their bounds in the same run; a grid's parent run with one child per combination; the errors."""

from __future__ import annotations

import json
import pickle

import pandas as pd
import pytest

from covidxr import cli
from covidxr.tracking import MlflowRun, Tracking, child_tracking, evaluation_metrics, metric_name, tracking_uri
from covidxr.train import TrainConfig, resume, train

OPTIONS = dict(backbone="vgg16", weights="none", image_size=32, batch_size=8, head="gradient", epochs=3, fine_tune_epochs=0,
               strategy="oversample", learning_rate=1e-2, patience=5, verbose=0)


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _steps(client, run_id, key):
    return [m.step for m in client.get_metric_history(run_id, key)]


@pytest.fixture(scope="module")
def tracked_run(mlflow_server, collection, tmp_path_factory):
    """A run tracked in MLflow, interrupted (in-process) right after epoch 2 was committed, then resumed."""
    import covidxr.training.checkpoint as checkpoint

    root = tmp_path_factory.mktemp("tracked")
    config = TrainConfig(data_dir=str(collection), runs_dir=str(root / "runs"), cache_dir=str(root / "cache"),
                         run_name="tracked", **OPTIONS)
    original = checkpoint.RunCheckpoint.on_epoch_end

    def commit_then_stop(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 1:  # committed; the writers after the checkpoint have not seen it yet
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpoint.RunCheckpoint, "on_epoch_end", commit_then_stop)
        with pytest.raises(KeyboardInterrupt):
            train(config, mlflow=mlflow_server)
    run = root / "runs" / "tracked"
    record = json.loads((run / "config.json").read_text())
    run_id = record["mlflow"]["run_id"]
    client = _client(mlflow_server)
    interrupted = {"status": client.get_run(run_id).info.status, "loss_steps": _steps(client, run_id, "loss")}
    assert resume(run) == run  # the recorded MLflow run is continued, no --mlflow needed
    return run, run_id, interrupted


def test_a_run_logs_params_epochs_final_metrics_and_artefacts(tracked_run, mlflow_server):
    run, run_id, interrupted = tracked_run
    client = _client(mlflow_server)
    assert interrupted == {"status": "KILLED", "loss_steps": [1]}  # epoch 2 committed, not yet logged
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED" and logged.info.run_name == "tracked"
    assert logged.data.params["backbone"] == "vgg16" and logged.data.params["epochs"] == "3"
    assert logged.data.params["tensorboard"] == "True"
    history = pd.read_csv(run / "history.csv")
    for key in ("loss", "auc", "val_auc", "val_loss", "learning_rate", "phase"):
        assert _steps(client, run_id, key) == list(history["epoch"]), key  # each epoch once, resume included
    val_auc = {m.step: m.value for m in client.get_metric_history(run_id, "val_auc")}
    assert val_auc == pytest.approx(dict(zip(history["epoch"], history["val_auc"])))
    metrics = json.loads((run / "metrics.json").read_text())
    assert logged.data.metrics["final_test_roc_auc"] == pytest.approx(metrics["test"]["roc_auc"])
    assert logged.data.metrics["final_val_loss"] == pytest.approx(metrics["val"]["loss"])
    assert logged.data.metrics["final_best_val_auc"] == pytest.approx(metrics["best_val_auc"])
    artefacts = {f.path for f in client.list_artifacts(run_id)}
    assert {"config.json", "model.keras", "metrics.json", "history.csv", "tensorboard"} <= artefacts
    record = json.loads((run / "config.json").read_text())
    assert record["mlflow"] == {"tracking_uri": mlflow_server, "run_id": run_id, "parent_run_id": None}
    assert len(record["resumed"]) == 1


def test_evaluate_logs_figures_with_bounds_into_the_run(tracked_run, mlflow_server, capsys):
    run, run_id, _ = tracked_run
    code = cli.main(["evaluate", "--run", str(run), "--n-bootstrap", "20", "--no-figures", "--mlflow", mlflow_server])
    assert code == 0, capsys.readouterr().err
    out = next((run / "evaluations").iterdir())
    result = json.loads((out / "metrics.json").read_text())
    metrics = _client(mlflow_server).get_run(run_id).data.metrics
    auc = result["image"]["metrics"]["roc_auc"]
    assert metrics["test_roc_auc"] == pytest.approx(auc["value"])
    assert metrics["test_roc_auc_low"] == pytest.approx(auc["ci_low"])
    assert metrics["test_roc_auc_high"] == pytest.approx(auc["ci_high"])
    assert metrics["test_patient_roc_auc"] == pytest.approx(result["patient"]["metrics"]["roc_auc"]["value"])
    artefacts = {f.path for f in _client(mlflow_server).list_artifacts(run_id, "evaluations")}
    assert artefacts == {f"evaluations/{out.name}"}


def test_evaluate_refuses_an_untracked_run_and_a_missing_uri(tiny_run, mlflow_server, monkeypatch, capsys):
    assert cli.main(["evaluate", "--run", str(tiny_run), "--no-figures", "--mlflow", mlflow_server]) == 2
    assert "Expected a run tracked with --mlflow" in capsys.readouterr().err
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert cli.main(["evaluate", "--run", str(tiny_run), "--no-figures", "--mlflow"]) == 2
    assert "Expected a tracking URI after --mlflow or in $MLFLOW_TRACKING_URI" in capsys.readouterr().err
    assert not (tiny_run / "evaluations").exists() or not any((tiny_run / "evaluations").iterdir())


def test_a_run_on_another_server_is_named(tracked_run, mlflow_server):
    run, run_id, _ = tracked_run
    record = json.loads((run / "config.json").read_text())
    record["mlflow"]["run_id"] = "0" * 32
    with pytest.raises(ValueError, match="Expected the run's MLflow run 0+ on this tracking server"):
        MlflowRun.reopen(record, uri=mlflow_server)


def test_a_grid_is_a_parent_run_with_a_child_per_combination(mlflow_server, collection, tmp_path):
    from covidxr.grid import run_grid

    base = TrainConfig(data_dir=str(collection), cache_dir=str(tmp_path / "cache"),
                       val_size=0.3, **{**OPTIONS, "epochs": 1, "tensorboard": False})
    out = run_grid(base, out=tmp_path / "grid", backbones="vgg16", strategies="oversample", folds=2, n_bootstrap=10,
                   progress=False, mlflow=mlflow_server)
    record = json.loads((out / "grid.json").read_text())
    parent_id = record["mlflow"]["run_id"]
    client = _client(mlflow_server)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.params["folds"] == "2"
    assert parent.data.metrics["runs"] == 2 and "selection_val_roc_auc_mean" in parent.data.metrics
    assert {"comparison.csv", "grid.json"} <= {f.path for f in client.list_artifacts(parent_id)}
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    runs = sorted(record["runs"])
    assert sorted(c.info.run_name for c in children) == runs
    for name in runs:
        child = json.loads((out / "runs" / name / "config.json").read_text())["mlflow"]
        assert child["parent_run_id"] == parent_id
    assert all(c.info.status == "FINISHED" for c in children)


def test_child_tracking_is_picklable_and_uris_resolve(monkeypatch):
    target = Tracking("http://127.0.0.1:1", parent_run_id="abc")
    assert pickle.loads(pickle.dumps(target)) == target
    assert child_tracking(None) is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example.invalid:5000")
    assert tracking_uri(None) == "http://example.invalid:5000" and tracking_uri("sqlite:///x.db") == "sqlite:///x.db"
    assert Tracking.of("http://h:1") == Tracking("http://h:1") and Tracking.of(None) is None
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(ValueError, match=r"Expected a tracking URI .* Received: mlflow=None"):
        tracking_uri(None)
    assert metric_name("test_roc_auc[macro]") == "test_roc_auc_macro_"
    result = {"name": "ext", "image": {"metrics": {"roc_auc": {"value": 0.8, "ci_low": 0.7, "ci_high": 0.9}}},
              "patient": {"metrics": {}}, "threshold": 0.5, "n_images": 10}
    assert evaluation_metrics(result)["ext_roc_auc_low"] == 0.7


def test_an_unreachable_server_stops_a_run_before_any_work(collection, tmp_path):
    config = TrainConfig(data_dir=str(collection), runs_dir=str(tmp_path / "runs"), **OPTIONS)
    with pytest.raises(ConnectionError, match=r"Expected an MLflow tracking server .* Received: tracking_uri="):
        train(config, mlflow="http://127.0.0.1:9")
    assert not (tmp_path / "runs").exists()


def test_the_cli_has_the_flag_on_train_evaluate_and_grid():
    parser = cli.build_parser()
    assert parser.parse_args(["train"]).mlflow is None
    assert parser.parse_args(["train", "--mlflow"]).mlflow == ""
    assert parser.parse_args(["grid", "--out", "g", "--mlflow", "http://h:1"]).mlflow == "http://h:1"
    assert parser.parse_args(["evaluate", "--run", "r", "--mlflow"]).mlflow == ""
