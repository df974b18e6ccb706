"""MLflow tracking of runs, evaluations and grids (``--mlflow [TRACKING_URI]``).
Must not train, score or write run files: it mirrors what the run folder holds into MLflow, and
imports ``mlflow`` only when tracking is asked for (no other path needs it).

Only the ``--mlflow`` flag turns tracking on; without a URI it uses ``$MLFLOW_TRACKING_URI``. Every
call goes through an :class:`mlflow.tracking.MlflowClient` with explicit run ids (no active-run
state), so the same code logs from the driver or from a worker process:

* a **training run** is one MLflow run (name: the run folder's) in the experiment
  ``$MLFLOW_EXPERIMENT_NAME`` (default ``covidxr``): its options as params, one point per
  committed epoch (:class:`EpochMetrics`, step = ``history.csv``'s epoch), the final figures of
  ``metrics.json`` (``final_test_roc_auc`` ...), and the run folder's files as artefacts.
  ``config.json["mlflow"]`` records the tracking URI and run id from the first write on, so
  ``covidxr train --resume`` continues the same MLflow run and adds only the epochs it lacks;
* ``covidxr evaluate --mlflow`` logs an evaluation's figures with their interval bounds
  (``<name>_roc_auc``, ``<name>_roc_auc_low``, ``<name>_roc_auc_high``; per patient
  ``<name>_patient_...``) and its folder into the run's MLflow run;
* a **grid** is a parent run with one child run per combination: a child is started inside the
  combination's own training call from a picklable :class:`Tracking` (tracking URI and parent run
  id), so it works the same in another process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
import os
import re
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

__all__ = ["DEFAULT_EXPERIMENT", "EpochMetrics", "MlflowRun", "Tracking", "check_server", "evaluation_metrics",
           "log_grid_end", "log_run_end", "open_grid_tracking", "open_run_tracking", "tracking_uri"]

#: The experiment of runs and grids when ``$MLFLOW_EXPERIMENT_NAME`` is unset.
DEFAULT_EXPERIMENT = "covidxr"
#: How to install MLflow (the message of a missing package).
MLFLOW_INSTALL = "pip install 'mlflow>=3.13,<4'"
#: History columns that are not per-epoch metrics.
_NOT_METRICS = ("epoch", "phase_epoch", "seconds")
_BAD_NAME = re.compile(r"[^\w./ :-]")

logger = logging.getLogger("covidxr.train")


def tracking_uri(uri=None) -> str:
    """The tracking URI of ``--mlflow [URI]``: ``uri``, else ``$MLFLOW_TRACKING_URI``.

    Raises:
        ValueError: Neither is set.
    """
    value = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not value:
        raise ValueError("Expected a tracking URI after --mlflow or in $MLFLOW_TRACKING_URI (e.g. "
                         "http://127.0.0.1:5000). Received: mlflow=None, MLFLOW_TRACKING_URI=None")
    return str(value)


@dataclasses.dataclass(frozen=True)
class Tracking:
    """Where a run is tracked: plain, picklable values (a grid hands one to each combination).

    Args:
        uri: The tracking URI.
        parent_run_id: A grid's parent run (the new run becomes its child).
        experiment: Experiment name (None: ``$MLFLOW_EXPERIMENT_NAME``, else :data:`DEFAULT_EXPERIMENT`).
    """

    uri: str
    parent_run_id: str | None = None
    experiment: str | None = None

    @classmethod
    def of(cls, value) -> "Tracking | None":
        """None, a :class:`Tracking`, or a tracking URI as a :class:`Tracking`."""
        if value is None or isinstance(value, Tracking):
            return value
        return cls(tracking_uri(str(value)))


def _client(uri):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as err:
        raise ValueError(f"Expected the mlflow package for --mlflow ({MLFLOW_INSTALL}). Received: {err}") from err
    return MlflowClient(tracking_uri=uri)


def check_server(uri) -> None:
    """Cheap reachability check of an HTTP tracking server (``/health``) before any work.

    Raises:
        ConnectionError: The server does not answer.
    """
    if not str(uri).startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(str(uri).rstrip("/") + "/health", timeout=10) as answer:
            answer.read()
    except (urllib.error.URLError, OSError) as err:
        raise ConnectionError(f"Expected an MLflow tracking server at the tracking URI; it does not answer "
                              f"({err}). Received: tracking_uri={uri!r}") from err


def metric_name(name) -> str:
    """``name`` with the characters MLflow refuses in metric names replaced by ``_``."""
    return _BAD_NAME.sub("_", str(name))


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class MlflowRun:
    """One MLflow run, addressed by id through a client (see the module docstring).

    Args:
        uri: Tracking URI.
        run_id: The MLflow run id.
        parent_run_id: The grid's parent run, if any.
    """

    def __init__(self, uri, run_id, *, parent_run_id=None):
        self.uri = str(uri)
        self.run_id = str(run_id)
        self.parent_run_id = parent_run_id
        self.client = _client(self.uri)
        self.failed = False

    @classmethod
    def start(cls, target: Tracking, *, name, params=None, tags=None) -> "MlflowRun":
        """Create a run (a child of ``target.parent_run_id`` when set) with params and tags."""
        from mlflow.exceptions import MlflowException

        client = _client(target.uri)
        experiment = target.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        all_tags = {"mlflow.runName": str(name), **(tags or {})}
        if target.parent_run_id:
            all_tags["mlflow.parentRunId"] = target.parent_run_id
        try:
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
            run = client.create_run(experiment_id, tags=all_tags, run_name=str(name))
        except MlflowException as err:
            raise ConnectionError(f"Expected to start an MLflow run in experiment {experiment!r} ({err}). "
                                  f"Received: tracking_uri={target.uri!r}") from err
        tracked = cls(target.uri, run.info.run_id, parent_run_id=target.parent_run_id)
        tracked.log_params(params or {})
        return tracked

    @classmethod
    def reopen(cls, record: dict, *, uri=None, what="run") -> "MlflowRun":
        """The run a ``config.json`` / ``grid.json`` ``"mlflow"`` block names, on ``uri`` (default: the
        recorded URI), checked to exist there.

        Raises:
            ValueError: No block, or the tracking server does not know the run.
            ConnectionError: The tracking server fails otherwise.
        """
        block = (record or {}).get("mlflow") or {}
        if not block.get("run_id"):
            raise ValueError(f"Expected a {what} tracked with --mlflow (its record has no MLflow run id). "
                             f"Received: mlflow={block or None}")
        uri = uri or block.get("tracking_uri")
        tracked = cls(uri, block["run_id"], parent_run_id=block.get("parent_run_id"))
        from mlflow.exceptions import MlflowException

        try:
            tracked.client.get_run(tracked.run_id)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise ConnectionError(f"Expected to read the {what}'s MLflow run {tracked.run_id} ({err}). "
                                      f"Received: tracking_uri={uri!r}") from err
            raise ValueError(f"Expected the {what}'s MLflow run {tracked.run_id} on this tracking server; it is not "
                             f"there (the {what} was logged to {block.get('tracking_uri')!r}). Received: "
                             f"tracking_uri={uri!r}") from err
        return tracked

    @property
    def record(self) -> dict:
        """The ``"mlflow"`` block of a ``config.json`` or ``grid.json``."""
        return {"tracking_uri": self.uri, "run_id": self.run_id, "parent_run_id": self.parent_run_id}

    def _guard(self, what, call, *args, **kwargs):
        """Run one client call; after a failure warn once and log nothing more (the run folder keeps
        everything)."""
        if self.failed:
            return None
        try:
            return call(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - tracking never stops a run
            self.failed = True
            message = (f"MLflow logging stopped ({what} failed: {err}); the run folder keeps everything. "
                       f"Received: tracking_uri={self.uri!r}, run_id={self.run_id!r}")
            logger.warning("%s", message)
            warnings.warn(message, UserWarning, stacklevel=3)
            return None

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self._guard("logging params", self.client.log_batch, self.run_id, params=items[start:start + 100])

    def log_metrics(self, values: dict, *, step=0) -> None:
        """Log the finite numbers of ``values`` (names made valid) at ``step``."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(metric_name(k), float(v), now, int(step)) for k, v in values.items() if _finite(v)]
        if items:
            self._guard("logging metrics", self.client.log_batch, self.run_id, metrics=items)

    def log_artifacts(self, folder, artifact_path=None) -> None:
        """Every file under ``folder`` (under ``artifact_path`` in the run's artefacts)."""
        self._guard("logging artefacts", self.client.log_artifacts, self.run_id, str(folder), artifact_path)

    def log_files(self, paths) -> None:
        """The files ``paths`` that exist, at the top of the run's artefacts."""
        for path in paths:
            if Path(path).is_file():
                self._guard("logging an artefact", self.client.log_artifact, self.run_id, str(path))

    def set_status(self, status) -> None:
        """``RUNNING`` (a resumed run), or a final state (``FINISHED``, ``FAILED``, ``KILLED``)."""
        if status == "RUNNING":
            self._guard("setting the status", self.client.update_run, self.run_id, status="RUNNING")
            return
        with contextlib.redirect_stdout(io.StringIO()):  # MLflow prints two "View run" lines
            self._guard("ending the run", self.client.set_terminated, self.run_id, status)

    def steps(self, key) -> set[int]:
        """The steps at which metric ``key`` is logged."""
        history = self._guard("reading the metric history", self.client.get_metric_history, self.run_id, key)
        return {int(m.step) for m in history or []}


class EpochMetrics:
    """Per-epoch metrics of a run as MLflow metrics (``loss``, ``auc``, ``val_auc``, ``learning_rate``,
    ``phase`` ...; step = the run's epoch), each epoch once: the ``sync(rows)`` writer of
    :class:`covidxr.training.HistoryWriters`."""

    def __init__(self, run: MlflowRun):
        self.run = run
        self.logged = run.steps("loss")  # a resumed run: the epochs logged before

    def sync(self, rows) -> int:
        written = 0
        for row in rows:
            step = int(row["epoch"])
            if step in self.logged:
                continue
            self.run.log_metrics({k: v for k, v in row.items() if k not in _NOT_METRICS}, step=step)
            if self.run.failed:
                break
            self.logged.add(step)
            written += 1
        return written


def open_run_tracking(target, *, run_dir, config: dict, previous=None) -> MlflowRun | None:
    """The MLflow run of a training run: the one ``previous`` (the run's ``config.json``) names, set
    running again, or a new one (params: ``config``, the run's options) when ``target`` asks for one;
    None when neither."""
    target = Tracking.of(target)
    if previous and (previous.get("mlflow") or {}).get("run_id"):
        tracked = MlflowRun.reopen(previous, uri=None if target is None else target.uri)
        tracked.set_status("RUNNING")
        return tracked
    if target is None:
        return None
    from . import __version__

    return MlflowRun.start(target, name=Path(run_dir).name, params=config,
                           tags={"covidxr.run_dir": str(run_dir), "covidxr.version": __version__})


def log_run_end(tracked: MlflowRun | None, *, run_dir, metrics: dict) -> None:
    """A finished run's final figures (``metrics.json`` as ``final_val_roc_auc``, ``final_test_pr_auc``,
    ``final_best_val_auc`` ...: apart from the per-epoch ``val_loss`` ... and an evaluation's ``test_...``)
    and the run folder's files, then the run marked finished."""
    if tracked is None:
        return
    final = {f"final_{part}_{k}": v for part in ("val", "test") for k, v in (metrics.get(part) or {}).items()}
    final.update({f"final_{k}": metrics.get(k) for k in ("best_val_auc", "best_epoch", "best_phase",
                                                         "phase1_train_auc")})
    tracked.log_metrics(final)
    tracked.log_artifacts(run_dir)
    tracked.set_status("FINISHED")


def evaluation_metrics(result: dict) -> dict:
    """An evaluation's figures with their interval bounds, named ``<name>_<metric>[_low|_high]``
    (per patient ``<name>_patient_<metric>...``), plus its thresholds and counts."""
    name, out = result["name"], {}
    for level, prefix in (("image", f"{name}_"), ("patient", f"{name}_patient_")):
        for metric, figure in ((result.get(level) or {}).get("metrics") or {}).items():
            out[f"{prefix}{metric}"] = figure.get("value")
            out[f"{prefix}{metric}_low"] = figure.get("ci_low")
            out[f"{prefix}{metric}_high"] = figure.get("ci_high")
    out.update({f"{name}_threshold": result.get("threshold"),
                f"{name}_patient_threshold": result.get("patient_threshold"),
                f"{name}_n_images": result.get("n_images"), f"{name}_n_patients": result.get("n_patients")})
    return out


def open_grid_tracking(target, *, record: dict, out) -> MlflowRun | None:
    """A grid's parent run: the one its ``grid.json`` (``record``) names, set running again, or a new one
    (params: the grid's axes and training options) when ``target`` asks for one; None when neither."""
    target = Tracking.of(target)
    if (record.get("mlflow") or {}).get("run_id"):
        parent = MlflowRun.reopen(record, uri=None if target is None else target.uri, what="grid")
        parent.set_status("RUNNING")
        return parent
    if target is None:
        return None
    check_server(target.uri)
    params = {k: record.get(k) for k in ("backbones", "feature_layers", "strategies", "folds")}
    params.update(record.get("options") or {})
    from . import __version__

    return MlflowRun.start(target, name=Path(out).name, params=params,
                           tags={"covidxr.grid_dir": str(out), "covidxr.version": __version__})


def child_tracking(parent: MlflowRun | None) -> Tracking | None:
    """What a combination needs to log its run as a child of ``parent`` (picklable)."""
    return None if parent is None else Tracking(parent.uri, parent_run_id=parent.run_id)


def log_grid_end(parent: MlflowRun | None, *, record: dict, files) -> None:
    """The grid's choice on validation (``selection_val_roc_auc_mean``, its pooled test figures with
    their bounds, ``selection_test_<level>_<metric>[_low|_high]``) and the comparison ``files``, then
    the parent run marked finished."""
    if parent is None:
        return
    selection = record.get("selection") or {}
    values = {"selection_val_roc_auc_mean": selection.get("val_roc_auc_mean"),
              "selection_val_roc_auc_min": selection.get("val_roc_auc_min"), "runs": len(record.get("runs") or [])}
    for level, figures in (selection.get("test") or {}).items():
        for metric, figure in figures.items():
            for suffix, key in (("", "value"), ("_low", "ci_low"), ("_high", "ci_high")):
                values[f"selection_test_{level}_{metric}{suffix}"] = figure.get(key)
    parent.log_metrics(values)
    parent._guard("setting a tag", parent.client.set_tag, parent.run_id, "covidxr.selection", str(selection.get("run")))
    parent.log_files(files)
    parent.set_status("FINISHED")
