"""What a finished training run writes (the last step of :func:`covidxr.train.train`): the best
model, the history and its curves, the predictions and metrics of the validation and test parts,
the report, then ``config.json`` marked finished. Must not train or choose anything: it writes
what the run's ``state`` (a :class:`covidxr.train.RunState`) holds and scores the saved model.
"""

from __future__ import annotations

import shutil
import time
from datetime import datetime, timezone

import pandas as pd

from .atomic import atomic_path, write_json, write_text
from .evaluation.metrics import part_metrics, prob_columns
from .figures import plot_training_curves, save_figure
from .inference import load_run, predict_images
from .reports import run_report
from .runfolder import logger
from .tracking import log_run_end
from .training import CHECKPOINT_DIR, MONITOR, best_index
from .training.checkpoint import set_arrays

__all__ = ["write_artifacts"]


def write_artifacts(state, saver) -> None:
    """``model.keras`` (the best checkpoint), ``history.csv``, the training curves, then the
    predictions, metrics and report; ``config.json`` marked finished last."""
    config, run_dir, model, history = state.config, state.run_dir, state.model, state.history
    if saver.best_weights is not None:
        set_arrays(model.weights, saver.best_weights, what="weights")
    else:  # validation AUC never finite: keep the last weights
        logger.warning("validation AUC was never finite; model.keras holds the last weights")
    with atomic_path(run_dir / "model.keras") as tmp:
        model.save(tmp)
    write_text(run_dir / "history.csv", history.to_csv(index=False))
    axes = plot_training_curves(history)
    axes[0].figure.suptitle(f"{config.backbone} · {config.task} · {config.strategy}", fontsize=9)
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
    write_json(run_dir / "config.json", state.record)  # "finished" is written last: the run is complete
    shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)
    log_run_end(state.tracked, run_dir=run_dir, metrics=metrics)
    logger.info("val %s | test %s", metrics["val"], metrics["test"])
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
    write_text(state.run_dir / "predictions.csv", pd.concat(frames, ignore_index=True).to_csv(index=False))
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
    write_json(state.run_dir / "metrics.json", metrics)
    return metrics
