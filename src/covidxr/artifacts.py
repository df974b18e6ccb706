"""What a finished training run writes (the last step of :func:`covidxr.train.train`): the best
model, the history and its curves, the predictions and metrics of the validation and test parts,
the report, then ``config.json`` marked finished; every file a later command trusts is listed in
``record.json`` (:mod:`covidxr.records`). Must not train or choose anything: it writes
what the run's ``state`` (a :class:`covidxr.train.RunState`) holds and scores the saved model.
"""

from __future__ import annotations

import platform
import shutil
import time
from datetime import datetime, timezone

import keras
import numpy as np
import pandas as pd

from . import __version__

from .atomic import write_text
from .evaluation.metrics import part_metrics, prob_columns
from .figures import plot_training_curves, run_label, save_figure
from .inference import load_run, predict_images
from .records import recorded_path, write_recorded_json, write_recorded_text
from .reports import run_report
from .images import DECODER_VERSION, DECODING_RULE
from .models import backbone_layer, gradcam_layer
from .runfolder import class_counts, logger, metrics_line
from .tracking import log_run_end
from .training import CHECKPOINT_DIR, MONITOR, best_index
from .training.checkpoint import set_arrays

__all__ = ["mlflow_block", "write_artifacts", "write_run_record"]


def write_artifacts(state, saver) -> None:
    """``model.keras`` (the best checkpoint), ``history.csv``, the training curves, then the
    predictions, metrics and report; ``config.json`` marked finished last."""
    config, run_dir, model, history = state.config, state.run_dir, state.model, state.history
    if saver.best_weights is not None:
        set_arrays(model.weights, saver.best_weights, what="weights")
    else:  # validation AUC never finite: keep the last weights
        logger.warning("validation AUC was never finite; model.keras holds the last weights")
    with recorded_path(run_dir / "model.keras") as tmp:
        model.save(tmp)
    write_recorded_text(run_dir / "history.csv", history.to_csv(index=False))
    kept = best_index(history[MONITOR].tolist()) if MONITOR in history else None
    axes = plot_training_curves(history, title=f"{run_label(config.to_dict())} · {config.task}",
                                best_epoch=None if kept is None else int(history["epoch"].iloc[kept]))
    save_figure(axes[0].figure, run_dir / "figures" / "training_curves.png")
    metrics = _predict_parts(state)
    timing = state.timing
    timing["wall_seconds"] = round(time.perf_counter() - state.wall, 2)
    known = ("cache_seconds", "phase1_feature_seconds", "first_step_seconds", "steady_step_seconds",
             "validation_seconds", "checkpoint_seconds", "predict_seconds")
    timing["other_seconds"] = round(timing["wall_seconds"] - sum(timing.get(k, 0.0) for k in known), 2)
    write_text(run_dir / "report.md", run_report(run_dir.name, config.to_dict(), state.record,
                                                 state.record["class_counts"], metrics, state.classes))
    state.record.update({"timing": timing, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    write_recorded_json(run_dir / "config.json", state.record)  # "finished" is written last: the run is complete
    shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)
    log_run_end(state.tracked, run_dir=run_dir, metrics=metrics)
    logger.info("%s", metrics_line(metrics))
    logger.info("done in %.1f s: %s", timing["wall_seconds"], run_dir)


def _predict_parts(state) -> dict:
    """Predict the validation and test parts with the saved best model; write
    ``predictions.csv`` and ``metrics.json``; return the metrics."""
    start = time.perf_counter()
    classes, history = state.classes, state.history
    best, _ = load_run(state.run_dir, config=state.record)
    frames, metrics = [], {}
    for part in ("val", "test"):
        rows, x, y = state.data[part]
        probs = predict_images(best, x, batch_size=state.batch_size)
        out = rows[[c for c in ("image", "patient", "group", "hash", "label", "part") if c in rows.columns]].copy()
        for i, column in enumerate(prob_columns(classes)):
            out[column] = probs[:, i]
        frames.append(out)
        metrics[part] = {**part_metrics(y, probs), "patients": int(rows["patient"].nunique())}
    state.timing["predict_seconds"] = round(time.perf_counter() - start, 2)
    write_recorded_text(state.run_dir / "predictions.csv", pd.concat(frames, ignore_index=True).to_csv(index=False))
    index = best_index(history[MONITOR].tolist()) if MONITOR in history else None
    best_row = None if index is None else history.iloc[index]  # the epoch SaveBest kept
    metrics.update({
        "classes": classes,
        "best_epoch": None if best_row is None else int(best_row["epoch"]),
        "best_phase": None if best_row is None else int(best_row["phase"]),
        "best_val_auc": None if best_row is None else float(best_row["val_auc"]),
        "best_val_loss": None if best_row is None else float(best_row[MONITOR]),
        "epochs_run": {"phase1": int((history["phase"] == 1).sum()),
                       "phase2": int((history["phase"] == 2).sum())},
        "phase1_train_auc": state.record.get("phase1_train_auc"),  # exact, at the end of phase 1
        "phase1_head": state.record.get("phase1_head"),  # the linear head's C, iterations, convergence
    })
    write_recorded_json(state.run_dir / "metrics.json", metrics)
    return metrics


def write_run_record(state, memory) -> None:
    """Write ``config.json`` at the start of a run (``state``: :class:`covidxr.train.RunState`): every
    option, class order, versions, devices, resolved settings, cache."""
    config, runtime, cache, classes = state.config, state.runtime, state.cache, state.classes
    index = state.fine_tune_index
    weights = dict(getattr(state.model, "covidxr_weights", None) or {})  # from build_model
    record = {
        **config.to_dict(),
        **state.record,  # split_version, split_sizes, merged_groups (from _prepare_data)
        "data": state.data_record,
        "weights_source": weights.get("source"),
        "weights_sha256": weights.get("sha256"),
        "classes": classes,
        "num_classes": len(classes),
        "positive_class": classes[1] if len(classes) == 2 else None,
        "covidxr_version": __version__,
        "keras_version": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "python_version": platform.python_version(),
        "numpy_version": np.__version__,
        "dtype_policy": keras.config.dtype_policy().name,
        "runtime": {"data_parallel": runtime.enabled, "num_replicas": runtime.num_replicas,
                    "devices": [str(d) for d in runtime.devices], "batch_size": state.batch_size,
                    "jit_compile": config.jit_compile, "jax_compilation_cache": state.compilation_cache,
                    "memory_estimate_gib": None if memory is None else round(memory["total"] / 2 ** 30, 2),
                    "memory_available_gib": None if memory is None else round(memory["available"] / 2 ** 30, 2)},
        "resolved": {
            "fine_tune_learning_rate": config.resolved_fine_tune_learning_rate,
            "fine_tune_from_index": index,
            "fine_tune_from_layer": backbone_layer(state.model).layers[index].name if index is not None else None,
            "gradcam_layer": gradcam_layer(state.model),
        },
        "preprocessing": {
            "input": "uint8 grey, shape (image_size, image_size, 1); the model adds three "
                     "channels and the backbone's preprocess_input",
            "loader": "covidxr.images.load_image then covidxr.images.preprocess",
            **cache.settings,
            "decoding": {"decoder_version": DECODER_VERSION, "rule": DECODING_RULE},
        },
        "cache": {"key": cache.key, "path": str(cache.path), "settings": cache.settings,
                  "skipped": list(cache.skipped)},
        "class_counts": class_counts(state.split, classes),
        **mlflow_block(state),
        "run_dir": str(state.run_dir),
        "started": (state.previous or {}).get("started") or state.started.isoformat(timespec="seconds"),
    }
    if state.resuming:
        record["resumed"] = (list((state.previous or {}).get("resumed") or [])
                             + [state.started.isoformat(timespec="seconds")])
    write_recorded_json(state.run_dir / "config.json", record, folder=state.run_dir)
    state.record = record


def mlflow_block(state) -> dict:
    """``{"mlflow": {tracking_uri, run_id, parent_run_id}}`` of a tracked run, else ``{}``."""
    return {"mlflow": state.tracked.record} if state.tracked is not None else {}
