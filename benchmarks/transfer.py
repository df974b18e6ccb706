"""Transfer learning measured on the shared snapshot: pretrained (HED) against random VGG16
trunks, three feature layers, the project's phase-1 head against a logistic regression on the same
features, floor baselines, a source-held-out split and paired differences.

    python benchmarks/transfer.py --data-dir ../shared/data/covid-chestxray-dataset \
        --out runs/benchmarks/transfer [--image-size 224] [--folds 5]

What it does (task covid-vs-rest, frontal X-rays, split groups as every run makes them):

1. Decodes the snapshot once into the image cache at ``--image-size`` and computes, **once per
   weights source**, the globally average-pooled outputs of ``block3_conv3``, ``block4_conv3`` and
   ``block5_conv3`` of VGG16 (random weights with seed 0, and ``--weights hed``), through the
   project's own input pipeline (grey → three channels → VGG16 ``preprocess_input``).
2. Patient-grouped, stratified ``--folds``-fold cross-validation (``covidxr.data.kfold_split``: the
   test part is the fold, validation is drawn from its training groups). For every weights × layer
   and fold: the project's phase-1 head (``covidxr.training.fit_linear_head`` on the stored features:
   standardised features, class weights, a logistic regression whose C is chosen by group
   cross-validation inside the training part, fitted to convergence) and the benchmark, scikit-learn's
   standardised, class-balanced ``LogisticRegressionCV`` with C chosen the same way (ROC AUC over
   ``StratifiedGroupKFold`` folds of the training part).
3. Floor baselines on the same folds: the file-property audit (format, mode, size, bit depth;
   gradient boosting, untuned) and the same logistic regression on 32×32 grey pixels.
4. No configuration sees a fold's validation part while it is fitted or tuned, so each one's
   validation ROC AUC is the same kind of figure. Chooses the configuration with the best **mean of
   per-fold validation ROC AUCs** among all of them (:data:`CHOICE_RULE`) — never a test figure — and
   reports every configuration's pooled test ROC AUC (the folds' test parts together hold every image
   once) with a stratified group-bootstrap interval, beside the mean of the per-fold test ROC AUCs with
   its interval (``covidxr.evaluation.pooling.fold_mean_auc``), and the paired difference of hed
   against random weights at the chosen layer and model (``covidxr.evaluation.paired_bootstrap``).
5. One source-held-out split (``group_by="source"``, 3 leave-sources-out folds) for that layer, hed
   against random. Its folds differ in prevalence, so the conclusion rests on the mean of the
   per-fold ROC AUCs; the pooled one is shown beside it.
6. With ``--only-fine-tune --fine-tune-epochs 2 [--fine-tune-size 128 --layer block4_conv3
   --fine-tune-weights none,hed]``: the full pipeline instead (``covidxr.train`` per fold, the same
   folds as split files under ``OUT/splits/seed<S>-folds<K>-<data digest>/``, so other folds, seeds or
   data never reuse them), phase 1 alone and phase 1 + 2, pooled, fold-mean and paired as above
   (``OUT/fine_tuned.md``). A run that leaves an image of its test part unscored stops the benchmark.

Writes ``OUT/transfer.csv`` (one row per configuration), ``OUT/transfer.md`` (the table and the
statements) and ``OUT/transfer.png`` (pooled test ROC AUC with intervals, validation-chosen row
marked), and prints the Markdown. Random-weight rows are the comparison, not a claim.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

LAYERS = ("block3_conv3", "block4_conv3", "block5_conv3")
WEIGHTS = ("none", "hed")
C_VALUES = tuple(float(c) for c in np.logspace(-4, 2, 13))  # the project's C_GRID


def load(data_dir, *, cache_dir, image_size, group_by="patient"):
    """The grouped frame and its cached images (uint8, (n, S, S, 1)), rows in frame order."""
    from covidxr.images import build_cache, load_grouped

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = load_grouped(data_dir, task="covid-vs-rest", cache_dir=cache_dir, group_by=group_by)
        cache = build_cache(frame, image_size=image_size, cache_dir=cache_dir, strict=False, progress=False)
    frame = frame[frame["image"].isin(set(cache.rows["image"]))].reset_index(drop=True)
    images = np.asarray(cache.select(frame["image"]))
    return frame, images


def features(images, *, weights, image_size, batch_size=32):
    """``{layer: pooled features (n, channels)}`` of VGG16 with ``weights``, all layers in one pass."""
    import keras

    from covidxr.models import LAYER_NAMES, backbone_layer, build_model

    keras.utils.set_random_seed(0)
    model = build_model("vgg16", num_classes=2, image_size=image_size, weights=weights, augmentation=None)
    base = backbone_layer(model)
    split = keras.Model(base.inputs, [keras.layers.GlobalAveragePooling2D()(base.get_layer(n).output)
                                      for n in LAYERS])
    inputs = keras.Input(images.shape[1:], dtype="uint8")
    x = model.get_layer(LAYER_NAMES["to_rgb"])(inputs)
    x = model.get_layer(LAYER_NAMES["preprocess"])(x)
    extractor = keras.Model(inputs, split(x))
    outs = extractor.predict(images, batch_size=batch_size, verbose=0)
    return {n: np.asarray(o, dtype=np.float32) for n, o in zip(LAYERS, outs)}, model.covidxr_weights


def stored_features(path: Path, frame, images, *, image_size):
    """The features of both weights sources, computed once and kept in ``path`` (keyed by the images)."""
    if path.is_file():
        data = np.load(path, allow_pickle=False)
        if list(data["images"]) == list(frame["image"]):
            feats = {w: {n: data[f"{w}__{n}"] for n in LAYERS} for w in WEIGHTS}
            return feats, json.loads(str(data["info"]))
    feats, info = {}, {}
    for weights in WEIGHTS:
        start = time.perf_counter()
        feats[weights], info[weights] = features(images, weights=weights, image_size=image_size)
        info[weights] = {k: v for k, v in info[weights].items() if isinstance(v, (str, int, float, bool, type(None)))}
        info[weights]["feature_seconds"] = round(time.perf_counter() - start, 1)
        print(f"features, weights {weights}: {info[weights]['feature_seconds']} s", flush=True)
    np.savez(path, images=np.asarray(frame["image"], dtype=str), info=json.dumps(info),
             **{f"{w}__{n}": feats[w][n] for w in WEIGHTS for n in LAYERS})
    return feats, info


def folds(frame, *, n_folds, seed=0, allow_small_validation=False):
    """Per fold: a part per row ("train", "val", "test")."""
    from covidxr.data import kfold_split

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [kfold_split(frame, folds=n_folds, fold=k, seed=seed,
                            allow_small_validation=allow_small_validation)["part"].to_numpy()
                for k in range(n_folds)]


def _auc(y, s):
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if len(np.unique(y)) == 2 else float("nan")


def logistic(x, y, part, groups, *, seed=0):
    """The benchmark: scikit-learn's standardised, class-balanced ``LogisticRegressionCV``, C chosen
    by ROC AUC over stratified group folds of the training part only (never the validation part).
    Returns ``(val_auc, test_scores, C)``."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    tr, va, te = (part == "train"), (part == "val"), (part == "test")
    cv = list(StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed).split(x[tr], y[tr], groups[tr]))
    clf = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=C_VALUES, cv=cv, scoring="roc_auc",
                                                               class_weight="balanced", max_iter=5000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(x[tr], y[tr])
    return (_auc(y[va], clf.predict_proba(x[va])[:, 1]), clf.predict_proba(x[te])[:, 1],
            float(clf[-1].C_[0]))


def project_head(x, y, part, images, groups, *, layer, seed=0):
    """The project's phase-1 head on stored features (``fit_linear_head``: standardisation adapted
    on the training part, class weights, C by group cross-validation inside the training part, fitted
    to convergence, as in every run); ``(val_auc, test_scores, C)``."""
    import keras

    from covidxr.models import build_model, head_model
    from covidxr.training.linear import fit_linear_head

    tr, va, te = (part == "train"), (part == "val"), (part == "test")
    keras.utils.set_random_seed(seed)
    model = build_model("vgg16", num_classes=2, image_size=images.shape[1], weights="none", augmentation=None,
                        feature_layer=layer, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, info = fit_linear_head(model, images[:1], y[tr], images[:1], y[va], groups=groups[tr], num_classes=2,
                                  strategy="class-weight", seed=seed, features=(x[tr], x[va]))
    head = head_model(model)
    val, test = (np.asarray(head.predict(x[p], batch_size=256, verbose=0))[:, -1] for p in (va, te))
    keras.backend.clear_session()
    return _auc(y[va], val), test, info["head"]["C"]


def pixels(images, size=32):
    """Grey images resized to ``size``×``size``, flattened to (n, size²) floats."""
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im[..., 0]).resize((size, size), Image.Resampling.BILINEAR),
                                dtype=np.float32).ravel() for im in images])


def audit_scores(frame, y, part, *, seed=0):
    """File-property gradient boosting (the audit's model) trained on the fold's train part."""
    from covidxr.audit import AUDIT_FEATURES, _pipeline, file_properties

    props = file_properties(frame["path"])[list(AUDIT_FEATURES)]
    tr, va, te = (part == "train"), (part == "val"), (part == "test")
    model = _pipeline("gradient-boosting", seed).fit(props[tr], y[tr])
    return _auc(y[va], model.predict_proba(props[va])[:, 1]), model.predict_proba(props[te])[:, 1], None


def cross_validate(name, fit, y, fold_parts):
    """Run ``fit(part) -> (val_auc, test_scores, detail)`` on every fold; pool the test scores."""
    scores = np.full(len(y), np.nan)
    vals, details = [], []
    for part in fold_parts:
        val, test_scores, detail = fit(part)
        scores[part == "test"] = test_scores
        vals.append(val)
        details.append(detail)
    return {"config": name, "val_aucs": vals, "val_auc_mean": float(np.mean(vals)),
            "val_auc_min": float(np.min(vals)), "details": details, "scores": scores}


def pooled(result, y, groups, *, n_bootstrap, seed=0):
    """Pooled test ROC AUC of a configuration with its stratified group-bootstrap interval."""
    from covidxr.evaluation import bootstrap_metrics

    probs = np.stack([1 - result["scores"], result["scores"]], axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        boot = bootstrap_metrics(y, probs, groups, classes=["non-covid", "covid"], n_bootstrap=n_bootstrap,
                                 seed=seed)
    return boot["metrics"]["roc_auc"]


def paired(a, b, y, groups, *, n_bootstrap, seed=0):
    """Paired group-bootstrap difference of two configurations' pooled test ROC AUCs."""
    from covidxr.evaluation import paired_bootstrap

    def two(s):
        return np.stack([1 - s, s], axis=1)

    return paired_bootstrap(y, two(a["scores"]), two(b["scores"]), groups, classes=["non-covid", "covid"],
                            metric="roc_auc", n_bootstrap=n_bootstrap, seed=seed)


def run_configs(frame, images, feats, y, groups, fold_parts, *, seed):
    """Every weights × layer × model, plus the floors; a list of cross-validation results."""
    results = []
    for weights in WEIGHTS:
        for layer in LAYERS:
            x = feats[weights][layer]
            for model, fit in (("head", lambda p, x=x, layer=layer: project_head(x, y, p, images, groups, layer=layer,
                                                                               seed=seed)),
                               ("logistic", lambda p, x=x: logistic(x, y, p, groups, seed=seed))):
                start = time.perf_counter()
                res = cross_validate(f"{weights} / {layer} / {model}", fit, y, fold_parts)
                res.update(weights=weights, layer=layer, model=model, seconds=round(time.perf_counter() - start, 1))
                results.append(res)
                print(f"{res['config']}: mean validation ROC AUC {res['val_auc_mean']:.3f}", flush=True)
    px = pixels(images)
    for name, fit in (("floor / 32x32 grey pixels / logistic", lambda p: logistic(px, y, p, groups, seed=seed)),
                      ("floor / file properties / gradient boosting", lambda p: audit_scores(frame, y, p, seed=seed))):
        res = cross_validate(name, fit, y, fold_parts)
        res.update(weights="floor", layer=name.split(" / ")[1], model=name.split(" / ")[2], seconds=None)
        results.append(res)
        print(f"{name}: mean validation ROC AUC {res['val_auc_mean']:.3f}", flush=True)
    return results


#: How :func:`choose` picks, stated in the output.
CHOICE_RULE = ("every configuration is fitted on each fold's training part only (any C chosen by group "
               "cross-validation inside it), so each fold's validation part is unseen by all of them alike; the "
               "configuration with the best mean of per-fold validation ROC AUCs is chosen among all of them "
               "(random weights and floors included), ties: the best minimum, then the name")


def choose(results):
    """The validation-chosen configuration, among all of them (:data:`CHOICE_RULE`)."""
    return max(results, key=lambda r: (r["val_auc_mean"], r["val_auc_min"], r["config"]))


def fold_mean(result, y, groups, fold_parts, *, n_bootstrap, seed=0):
    """The mean of the per-fold test ROC AUCs with its interval (beside the pooled one)."""
    from covidxr.evaluation.pooling import fold_mean_auc

    fold = np.full(len(y), -1)
    for k, part in enumerate(fold_parts):
        fold[part == "test"] = k
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fold_mean_auc(y, result["scores"], fold, groups, n_bootstrap=n_bootstrap, seed=seed)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/covid-chestxray-dataset")
    parser.add_argument("--out", default="runs/benchmarks/transfer")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fine-tune-epochs", type=int, default=0,
                        help="also run phase 1 + this many fine-tuning epochs of covidxr.train per fold (0: skip)")
    parser.add_argument("--fine-tune-size", type=int, default=128, help="image size of those runs")
    parser.add_argument("--only-fine-tune", action="store_true",
                        help="skip the feature tables; fine-tune at the layer given by --layer")
    parser.add_argument("--layer", default="block4_conv3", help="layer of --only-fine-tune")
    parser.add_argument("--fine-tune-weights", default="none,hed", help="weights sources of --only-fine-tune")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    frame, images = load(args.data_dir, cache_dir=args.cache_dir, image_size=args.image_size)
    y = (frame["label"] == "covid").to_numpy(int)
    groups = frame["group"].astype(str).to_numpy()
    if args.only_fine_tune:
        result = fine_tuned(args, frame, folds(frame, n_folds=args.folds, seed=args.seed), args.layer, y=y,
                            groups=groups)
        write_fine_tuned(out, result, args)
        return
    feats, info = stored_features(out / f"features-{args.image_size}.npz", frame, images, image_size=args.image_size)
    fold_parts = folds(frame, n_folds=args.folds, seed=args.seed)
    results = run_configs(frame, images, feats, y, groups, fold_parts, seed=args.seed)
    for r in results:
        r["test"] = pooled(r, y, groups, n_bootstrap=args.n_bootstrap, seed=args.seed)
        r["fold_mean"] = fold_mean(r, y, groups, fold_parts, n_bootstrap=args.n_bootstrap, seed=args.seed)
    chosen = choose(results)
    # the paired comparison: hed against random weights at the chosen layer and model (the best
    # hed configuration's, when a floor was chosen)
    anchor = chosen if chosen["weights"] != "floor" else choose([r for r in results if r["weights"] == "hed"])
    hed, twin = (next(r for r in results if r["weights"] == w and r["layer"] == anchor["layer"]
                      and r["model"] == anchor["model"]) for w in ("hed", "none"))
    diff = paired(hed, twin, y, groups, n_bootstrap=args.n_bootstrap, seed=args.seed)
    source = source_held_out(args, anchor, frame, images, feats)
    write(out, results, chosen, (hed, twin), diff, source, info, args, frame, seconds=time.perf_counter() - started)


def source_held_out(args, chosen, base, images, feats, n_folds=3):
    """Hed against random for the chosen layer and model on leave-sources-out folds (the features
    computed for the main table, rows matched by image)."""
    from covidxr.images import load_grouped

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = load_grouped(args.data_dir, task="covid-vs-rest", cache_dir=args.cache_dir, group_by="source")
    frame = frame[frame["image"].isin(set(base["image"]))].reset_index(drop=True)
    rows = base.reset_index(drop=True).reset_index().set_index("image").loc[frame["image"], "index"].to_numpy()
    y = (frame["label"] == "covid").to_numpy(int)
    groups = frame["group"].astype(str).to_numpy()
    parts = folds(frame, n_folds=n_folds, seed=args.seed, allow_small_validation=True)
    out = {}
    for weights in WEIGHTS:
        x = feats[weights][chosen["layer"]][rows]
        fit = ((lambda p, x=x: project_head(x, y, p, images[rows], groups, layer=chosen["layer"], seed=args.seed))
               if chosen["model"] == "head" else (lambda p, x=x: logistic(x, y, p, groups, seed=args.seed)))
        res = cross_validate(f"{weights} / {chosen['layer']} / {chosen['model']} (sources held out)", fit, y, parts)
        res["test"] = pooled(res, y, groups, n_bootstrap=args.n_bootstrap, seed=args.seed)
        res["fold_mean"] = fold_mean(res, y, groups, parts, n_bootstrap=args.n_bootstrap, seed=args.seed)
        out[weights] = res
    out["paired"] = paired(out["hed"], out["none"], y, groups, n_bootstrap=args.n_bootstrap, seed=args.seed)
    out["n_sources"] = int(frame["source"].nunique())
    return out


def split_dir(out, frame, *, seed, n_folds) -> Path:
    """Where the fold split files of ``frame`` live: keyed by the seed, the fold count and a digest of
    the data (images, labels, split groups), so a run with other folds or data never reuses them."""
    import hashlib

    rows = frame[["image", "label", "group"]].astype(str).to_csv(index=False).encode()
    return Path(out) / "splits" / f"seed{seed}-folds{n_folds}-{hashlib.sha256(rows).hexdigest()[:12]}"


def fine_tuned(args, frame, fold_parts, layer, *, y, groups):
    """The full pipeline (``covidxr.train``, the folds as split files) at ``--fine-tune-size``, cut at
    ``layer``, per weights source of ``--fine-tune-weights``: phase 1 alone and phase 1 + 2; pooled test
    results (and the fold mean), and the paired difference of phase 1 + 2 against phase 1 alone.

    Raises:
        RuntimeError: A run left an image of its test part unscored (e.g. not decodable).
    """
    from covidxr.config import TrainConfig
    from covidxr.data import write_split
    from covidxr.train import train

    out = Path(args.out)
    folder = split_dir(out, frame, seed=args.seed, n_folds=args.folds)
    index = {image: i for i, image in enumerate(frame["image"])}
    results = {}
    for weights in args.fine_tune_weights.split(","):
        for epochs in (0, args.fine_tune_epochs):
            scores, vals, start = np.full(len(frame), np.nan), [], time.perf_counter()
            for k, part in enumerate(fold_parts):
                split_path = folder / f"fold{k}.csv"
                if not split_path.is_file():
                    write_split(frame.assign(part=part), split_path)
                config = TrainConfig(data_dir=args.data_dir, backbone="vgg16", weights=weights,
                                     image_size=args.fine_tune_size, feature_layer=layer, fine_tune_epochs=epochs,
                                     strategy="class-weight", seed=args.seed, split_file=str(split_path),
                                     runs_dir=str(out / "runs"), cache_dir=args.cache_dir, verbose=0)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    run = train(config)
                preds = pd.read_csv(run / "predictions.csv", dtype={"image": str})
                test = preds[preds["part"] == "test"]
                scores[[index[i] for i in test["image"]]] = test["prob_covid"].to_numpy()
                vals.append(json.loads((run / "metrics.json").read_text())["val"]["roc_auc"])
            missing = int(np.isnan(scores).sum())
            if missing:
                raise RuntimeError(f"Expected every image scored by its fold's run; {missing} of {len(scores)} "
                                   f"were not (not decodable?). Received: weights={weights!r}, epochs={epochs}")
            res = {"config": f"{weights} / {layer} / phase 1" + (f" + {epochs} fine-tuning epochs" if epochs else
                                                                   " alone") + f", {args.fine_tune_size} px",
                   "scores": scores, "val_aucs": vals, "val_auc_mean": float(np.mean(vals)),
                   "seconds": round(time.perf_counter() - start, 1)}
            res["test"] = pooled(res, y, groups, n_bootstrap=args.n_bootstrap, seed=args.seed)
            res["fold_mean"] = fold_mean(res, y, groups, fold_parts, n_bootstrap=args.n_bootstrap, seed=args.seed)
            results[(weights, epochs)] = res
            print(f"{res['config']}: mean validation ROC AUC {res['val_auc_mean']:.3f}, pooled test "
                  f"{_fmt(res['test'])}, {res['seconds']} s", flush=True)
        results[(weights, "paired")] = paired(results[(weights, args.fine_tune_epochs)], results[(weights, 0)], y,
                                              groups, n_bootstrap=args.n_bootstrap, seed=args.seed)
    return results


def _fmt(fig):
    return f"{fig['value']:.3f} [{fig['ci_low']:.3f}, {fig['ci_high']:.3f}]"


def write(out, results, chosen, pair, diff, source, info, args, frame, *, seconds):
    """The table (CSV, Markdown), the figure and a JSON record."""
    hed, twin = pair
    table = pd.DataFrame([{
        "config": r["config"], "weights": r["weights"], "layer": r["layer"], "model": r["model"],
        "val_auc_mean": round(r["val_auc_mean"], 4), "val_auc_min": round(r["val_auc_min"], 4),
        "test_roc_auc": round(r["test"]["value"], 4), "test_ci_low": round(r["test"]["ci_low"], 4),
        "test_ci_high": round(r["test"]["ci_high"], 4), "test_fold_mean": round(r["fold_mean"]["value"], 4),
        "test_fold_mean_ci_low": round(r["fold_mean"]["ci_low"], 4),
        "test_fold_mean_ci_high": round(r["fold_mean"]["ci_high"], 4), "chosen": r is chosen,
        "details": json.dumps(r["details"]), "seconds": r["seconds"]} for r in results])
    table.to_csv(out / "transfer.csv", index=False)
    d = diff["difference"]
    lines = [
        f"# Transfer on the 2020 snapshot ({len(frame)} frontal X-rays, {frame['group'].nunique()} split groups; "
        f"covid-vs-rest; {args.image_size} px; {args.folds} group folds, seed {args.seed})", "",
        "| configuration | mean val ROC AUC (min) | pooled test ROC AUC [95% CI] | mean of per-fold test ROC AUCs "
        "[95% CI] |", "| --- | --- | --- | --- |"]
    for r in results:
        mark = " **(chosen on validation)**" if r is chosen else ""
        lines.append(f"| {r['config']}{mark} | {r['val_auc_mean']:.3f} ({r['val_auc_min']:.3f}) | {_fmt(r['test'])} "
                     f"| {_fmt(r['fold_mean'])} |")
    lines += ["", f"Chosen on validation: **{chosen['config']}** ({CHOICE_RULE}). {hed['config']} against "
              f"{twin['config']}, paired group bootstrap of the pooled test ROC AUC: hed − random = {d['value']:.3f} "
              f"[{d['ci_low']:.3f}, {d['ci_high']:.3f}] (p = {diff['p_value']:.3f}).", ""]
    sd = source["paired"]["difference"]
    lines += [f"Sources held out ({source['n_sources']} sources, 3 leave-sources-out folds of different prevalence, "
              f"{hed['layer']} / {hed['model']}): mean of per-fold test ROC AUCs (the figure the conclusion rests on) "
              f"hed {_fmt(source['hed']['fold_mean'])}, random {_fmt(source['none']['fold_mean'])}; pooled: hed "
              f"{_fmt(source['hed']['test'])}, random {_fmt(source['none']['test'])}; "
              "hed − random (pooled, paired) = "
              f"{sd['value']:.3f} [{sd['ci_low']:.3f}, {sd['ci_high']:.3f}].", "",
              f"Weights: hed sha256 {info['hed'].get('sha256')}; random: seed 0. Wall time {seconds / 60:.1f} min."]
    text = "\n".join(lines) + "\n"
    (out / "transfer.md").write_text(text)
    (out / "transfer.json").write_text(json.dumps({"chosen": chosen["config"], "rule": CHOICE_RULE, "paired": diff,
                                                   "source": {k: (v if k in ("paired", "n_sources") else {
                                                       "test": v["test"], "fold_mean": v["fold_mean"],
                                                       "val_auc_mean": v["val_auc_mean"]})
                                                       for k, v in source.items()},
                                                   "args": vars(args), "seconds": seconds},
                                                  indent=2, default=float) + "\n")
    plot(table, out / "transfer.png")
    print(text)


def write_fine_tuned(out, result, args):
    """``OUT/fine_tuned.md`` and ``.json``: phase 1 alone and phase 1 + 2 per weights source, and their
    paired difference."""
    lines = ["| configuration | mean val ROC AUC | pooled test ROC AUC [95% CI] | mean of per-fold test ROC AUCs "
             "[95% CI] | wall time |", "| --- | --- | --- | --- | --- |"]
    rows = {k: v for k, v in result.items() if k[1] != "paired"}
    lines += [f"| {r['config']} | {r['val_auc_mean']:.3f} | {_fmt(r['test'])} | {_fmt(r['fold_mean'])} | "
              f"{r['seconds'] / 60:.1f} min |" for r in rows.values()]
    for (weights, kind), diff in result.items():
        if kind == "paired":
            d = diff["difference"]
            lines += ["", f"{weights}: phase 1 + {args.fine_tune_epochs} − phase 1 alone = {d['value']:.3f} "
                      f"[{d['ci_low']:.3f}, {d['ci_high']:.3f}] (pooled test ROC AUC, paired group bootstrap, "
                      f"p = {diff['p_value']:.3f})."]
    text = "\n".join(lines) + "\n"
    (out / "fine_tuned.md").write_text(text)
    (out / "fine_tuned.json").write_text(json.dumps(
        {f"{k[0]} / {k[1]}": ({kk: vv for kk, vv in v.items() if kk != "scores"} if k[1] != "paired" else v)
         for k, v in result.items()} | {"args": vars(args)}, indent=2, default=float) + "\n")
    print(text)


def plot(table, path):
    """Pooled test ROC AUC with intervals per configuration; the validation-chosen row in bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.32 * len(table) + 1.2))
    ypos = np.arange(len(table))[::-1]
    colours = table["weights"].map({"hed": "tab:blue", "none": "tab:grey", "floor": "tab:red"}).tolist()
    for y, (_, row), colour in zip(ypos, table.iterrows(), colours):
        ax.errorbar([row["test_roc_auc"]], [y], xerr=[[row["test_roc_auc"] - row["test_ci_low"]],
                                                      [row["test_ci_high"] - row["test_roc_auc"]]],
                    fmt="o", color=colour, ecolor=colour, capsize=2)
    ax.axvline(0.5, color="k", lw=0.8, ls=":")
    ax.set_yticks(ypos, [("▶ " if c else "") + n for n, c in zip(table["config"], table["chosen"])], fontsize=7)
    ax.set_xlabel("pooled test ROC AUC (95% CI); ▶ chosen on validation")
    fig.tight_layout()
    fig.savefig(path, dpi=130)


if __name__ == "__main__":
    main()
