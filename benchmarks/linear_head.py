"""A finished run's phase-1 head against the benchmark logistic regression on the run's own raw
frozen features: scikit-learn's standardised, class-balanced ``LogisticRegressionCV``, C chosen by
ROC AUC over stratified group folds of the training part only (as ``benchmarks/transfer.py``).

    python benchmarks/linear_head.py RUN_DIR [RUN_DIR ...]

Reads each run's ``config.json``, ``split.csv`` and ``metrics.json``, rebuilds its model (same
backbone, weights, feature layer, size) to read the features from the run's feature store
(computing any it lacks), fits the benchmark on the training part and prints, per run and pooled
over the runs' test parts (k folds), the test ROC AUC of both. Deterministic for the run's seed.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pandas as pd  # noqa: E402


def benchmark(run_dir: Path) -> dict:
    """The run's test scores and the benchmark's, with their test ROC AUCs."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from covidxr.config import TrainConfig
    from covidxr.images import build_cache
    from covidxr.models import build_model
    from covidxr.training.frozen import stored_features
    from covidxr.training.linear import C_GRID

    record = json.loads((run_dir / "config.json").read_text())
    config = TrainConfig.from_dict(record)
    preds = pd.read_csv(run_dir / "predictions.csv", dtype={"image": str})
    from covidxr.config import load_frame, split_from_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        split = split_from_file(load_frame(config), run_dir / "split.csv")
        cache = build_cache(split, image_size=config.image_size, resize=config.resize, contrast=config.contrast,
                            cache_dir=config.cache_dir, strict=False, progress=False)
    import keras

    keras.utils.set_random_seed(int(config.seed))
    model = build_model(config.backbone, num_classes=2, image_size=config.image_size, weights=config.weights,
                        augmentation=None, pooling=config.pooling, seed=int(config.seed),
                        feature_layer=config.feature_layer)
    features, _ = stored_features(model, cache.images, cache_dir=config.cache_dir, resize=config.resize,
                                  contrast=config.contrast, seed=config.seed, batch_size=config.batch_size)
    index = pd.Index(cache.rows["image"])
    split = split[split["image"].isin(index)].reset_index(drop=True)
    x = features[index.get_indexer(split["image"])]
    y = (split["label"] == "covid").to_numpy(int)
    tr, te = (split["part"] == "train").to_numpy(), (split["part"] == "test").to_numpy()
    groups = split["group"].astype(str).to_numpy()
    cv = list(StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=int(config.seed)).split(
        x[tr], y[tr], groups[tr]))
    clf = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=list(C_GRID), cv=cv, scoring="roc_auc",
                                                               class_weight="balanced", max_iter=5000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(x[tr], y[tr])
    bench = pd.Series(clf.predict_proba(x[te])[:, 1], index=split.loc[te, "image"])
    test = preds[preds["part"] == "test"].set_index("image")
    labels = (test["label"] == "covid").astype(int)
    return {"run": run_dir.name, "labels": labels, "head": test["prob_covid"], "benchmark": bench.loc[test.index],
            "head_auc": roc_auc_score(labels, test["prob_covid"]),
            "benchmark_auc": roc_auc_score(labels, bench.loc[test.index]), "benchmark_C": float(clf[-1].C_[0]),
            "head_C": (record.get("phase1_head") or {}).get("C")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    from sklearn.metrics import roc_auc_score

    results = [benchmark(run) for run in args.runs]
    for r in results:
        print(f"{r['run']}: test ROC AUC head {r['head_auc']:.4f} (C {r['head_C']}), benchmark "
              f"{r['benchmark_auc']:.4f} (C {r['benchmark_C']:g}), "
              f"head − benchmark {r['head_auc'] - r['benchmark_auc']:+.4f}")
    if len(results) > 1:
        labels = pd.concat([r["labels"] for r in results])
        head, bench = (roc_auc_score(labels, pd.concat([r[k] for r in results])) for k in ("head", "benchmark"))
        print(f"pooled over {len(results)} runs: head {head:.4f}, benchmark {bench:.4f}, head − benchmark "
              f"{head - bench:+.4f}")


if __name__ == "__main__":
    main()
