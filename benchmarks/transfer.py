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
   and fold: the project's phase-1 head (``covidxr.training.fit_head`` on the stored features, the
   model cut at that layer with ``feature_layer``: standardised features, dropout, dense, class
   weights, exact validation ROC AUC for early stopping, the schedule and the best epoch) and a standardised logistic regression (scikit-learn, class-balanced, C in {0.01, 0.1, 1}
   chosen on the fold's validation part).
3. Floor baselines on the same folds: the file-property audit (format, mode, size, bit depth;
   gradient boosting) and a logistic regression on 32×32 grey pixels.
4. Chooses the configuration (weights × layer × model) with the best **mean of per-fold validation
   ROC AUCs** — never a test figure — and reports every configuration's pooled test ROC AUC (the
   folds' test parts together hold every image once) with a stratified group-bootstrap interval,
   and the paired difference of the chosen hed configuration against the same configuration with
   random weights (``covidxr.evaluation.paired_bootstrap``).
5. One source-held-out split (``group_by="source"``, 3 leave-sources-out folds) for the chosen
   layer, hed against random.
6. With ``--only-fine-tune --fine-tune-epochs 2 [--fine-tune-size 128 --layer block4_conv3]``: the
   full pipeline instead (``covidxr.train`` per fold, the same folds as split files, phase 1 then
   phase 2 with augmentation), hed against random, pooled and paired as above
   (``OUT/fine_tuned.md``).

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
C_VALUES = (0.01, 0.1, 1.0)


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


def logistic(x, y, part, *, seed=0):
    """Standardised, class-balanced logistic regression; C chosen on the validation part.
    Returns ``(val_auc, test_scores, C)``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    tr, va, te = (part == "train"), (part == "val"), (part == "test")
    best = None
    for c in C_VALUES:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000,
                                                                 random_state=seed))
        clf.fit(x[tr], y[tr])
        val = _auc(y[va], clf.predict_proba(x[va])[:, 1])
        if best is None or val > best[0]:
            best = (val, clf.predict_proba(x[te])[:, 1], c)
    return best


def project_head(x, y, part, images, *, layer, seed=0, epochs=30, patience=5):
    """The project's phase-1 head on stored features (``fit_head(features=...)``: standardisation
    adapted on the training part, class weights, exact validation ROC AUC driving early stopping,
    the learning-rate schedule and the best epoch, as in every run); ``(val_auc, test_scores, best_epoch)``."""
    import keras

    from covidxr.models import build_model, head_model
    from covidxr.training import SaveBest, fit_head, schedules, set_arrays

    tr, va, te = (part == "train"), (part == "val"), (part == "test")
    keras.utils.set_random_seed(seed)
    model = build_model("vgg16", num_classes=2, image_size=images.shape[1], weights="none", augmentation=None,
                        feature_layer=layer, seed=seed)
    saver = SaveBest(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_head(model, images[tr], y[tr], images[va], y[va], num_classes=2, epochs=epochs, strategy="class-weight",
                 seed=seed, features=(x[tr], x[va]), callbacks=[*schedules(patience), saver], verbose=0)
    set_arrays(model.weights, saver.best_weights, what="weights")
    probs = head_model(model).predict(x[te], batch_size=256, verbose=0)
    keras.backend.clear_session()
    return saver.best, np.asarray(probs)[:, -1], saver.best_epoch


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


def run_configs(frame, images, feats, y, fold_parts, *, seed, epochs):
    """Every weights × layer × model, plus the floors; a list of cross-validation results."""
    results = []
    for weights in WEIGHTS:
        for layer in LAYERS:
            x = feats[weights][layer]
            for model, fit in (("head", lambda p, x=x, layer=layer: project_head(x, y, p, images, layer=layer, seed=seed,
                                                                               epochs=epochs)),
                               ("logistic", lambda p, x=x: logistic(x, y, p, seed=seed))):
                start = time.perf_counter()
                res = cross_validate(f"{weights} / {layer} / {model}", fit, y, fold_parts)
                res.update(weights=weights, layer=layer, model=model, seconds=round(time.perf_counter() - start, 1))
                results.append(res)
                print(f"{res['config']}: mean validation ROC AUC {res['val_auc_mean']:.3f}", flush=True)
    px = pixels(images)
    for name, fit in (("floor / 32x32 grey pixels / logistic", lambda p: logistic(px, y, p, seed=seed)),
                      ("floor / file properties / gradient boosting", lambda p: audit_scores(frame, y, p, seed=seed))):
        res = cross_validate(name, fit, y, fold_parts)
        res.update(weights="floor", layer=name.split(" / ")[1], model=name.split(" / ")[2], seconds=None)
        results.append(res)
        print(f"{name}: mean validation ROC AUC {res['val_auc_mean']:.3f}", flush=True)
    return results


def choose(results):
    """The validation-chosen hed configuration (best mean, then best minimum per-fold val AUC)."""
    hed = [r for r in results if r["weights"] == "hed"]
    return max(hed, key=lambda r: (r["val_auc_mean"], r["val_auc_min"], r["config"]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/covid-chestxray-dataset")
    parser.add_argument("--out", default="runs/benchmarks/transfer")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30, help="phase-1 head epochs (early stopping)")
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fine-tune-epochs", type=int, default=0,
                        help="also run phase 1 + this many fine-tuning epochs of covidxr.train per fold (0: skip)")
    parser.add_argument("--fine-tune-size", type=int, default=128, help="image size of those runs")
    parser.add_argument("--only-fine-tune", action="store_true",
                        help="skip the feature tables; fine-tune at the layer given by --layer")
    parser.add_argument("--layer", default="block4_conv3", help="layer of --only-fine-tune")
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
    results = run_configs(frame, images, feats, y, fold_parts, seed=args.seed, epochs=args.epochs)
    for r in results:
        r["test"] = pooled(r, y, groups, n_bootstrap=args.n_bootstrap, seed=args.seed)
    chosen = choose(results)
    twin = next(r for r in results if r["weights"] == "none" and r["layer"] == chosen["layer"]
                and r["model"] == chosen["model"])
    diff = paired(chosen, twin, y, groups, n_bootstrap=args.n_bootstrap, seed=args.seed)
    source = source_held_out(args, chosen, frame, images, feats)
    write(out, results, chosen, twin, diff, source, info, args, frame, seconds=time.perf_counter() - started)


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
        fit = ((lambda p, x=x: project_head(x, y, p, images[rows], layer=chosen["layer"], seed=args.seed,
                                            epochs=args.epochs))
               if chosen["model"] == "head" else (lambda p, x=x: logistic(x, y, p, seed=args.seed)))
        res = cross_validate(f"{weights} / {chosen['layer']} / {chosen['model']} (sources held out)", fit, y, parts)
        res["test"] = pooled(res, y, groups, n_bootstrap=args.n_bootstrap, seed=args.seed)
        out[weights] = res
    out["paired"] = paired(out["hed"], out["none"], y, groups, n_bootstrap=args.n_bootstrap, seed=args.seed)
    out["n_sources"] = int(frame["source"].nunique())
    return out


def fine_tuned(args, frame, fold_parts, layer, *, y, groups):
    """Phase 1 + 2 of the full pipeline (``covidxr.train``, the folds as split files) at
    ``--fine-tune-size`` for random and HED weights, cut at ``layer``; pooled test results per source
    and their paired difference."""
    from covidxr.config import TrainConfig
    from covidxr.data import write_split
    from covidxr.train import train

    out = Path(args.out)
    index = {image: i for i, image in enumerate(frame["image"])}
    results = {}
    for weights in WEIGHTS:
        scores, vals, start = np.full(len(frame), np.nan), [], time.perf_counter()
        for k, part in enumerate(fold_parts):
            split_path = out / "splits" / f"fold{k}.csv"
            if not split_path.is_file():
                write_split(frame.assign(part=part), split_path)
            config = TrainConfig(data_dir=args.data_dir, backbone="vgg16", weights=weights, image_size=args.fine_tune_size,
                                 feature_layer=layer, epochs=args.epochs, fine_tune_epochs=args.fine_tune_epochs,
                                 strategy="class-weight", seed=args.seed, split_file=str(split_path),
                                 runs_dir=str(out / "runs"), cache_dir=args.cache_dir, verbose=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                run = train(config)
            preds = pd.read_csv(run / "predictions.csv", dtype={"image": str})
            test = preds[preds["part"] == "test"]
            scores[[index[i] for i in test["image"]]] = test["prob_covid"].to_numpy()
            vals.append(json.loads((run / "metrics.json").read_text())["val"]["roc_auc"])
        res = {"config": f"{weights} / {layer} / phase 1 + {args.fine_tune_epochs} fine-tuning epochs, "
                         f"{args.fine_tune_size} px", "scores": scores, "val_aucs": vals,
               "val_auc_mean": float(np.mean(vals)), "seconds": round(time.perf_counter() - start, 1)}
        keep = np.isfinite(scores)  # images a run could not decode are left out
        res["test"] = pooled({"scores": scores[keep]}, y[keep], groups[keep], n_bootstrap=args.n_bootstrap,
                             seed=args.seed)
        results[weights] = res
        print(f"{res['config']}: mean validation ROC AUC {res['val_auc_mean']:.3f}, {res['seconds']} s", flush=True)
    keep = np.isfinite(results["hed"]["scores"]) & np.isfinite(results["none"]["scores"])
    results["paired"] = paired({"scores": results["hed"]["scores"][keep]}, {"scores": results["none"]["scores"][keep]},
                               y[keep], groups[keep], n_bootstrap=args.n_bootstrap, seed=args.seed)
    return results


def _fmt(fig):
    return f"{fig['value']:.3f} [{fig['ci_low']:.3f}, {fig['ci_high']:.3f}]"


def write(out, results, chosen, twin, diff, source, info, args, frame, *, seconds):
    """The table (CSV, Markdown), the figure and a JSON record."""
    table = pd.DataFrame([{
        "config": r["config"], "weights": r["weights"], "layer": r["layer"], "model": r["model"],
        "val_auc_mean": round(r["val_auc_mean"], 4), "val_auc_min": round(r["val_auc_min"], 4),
        "test_roc_auc": round(r["test"]["value"], 4), "test_ci_low": round(r["test"]["ci_low"], 4),
        "test_ci_high": round(r["test"]["ci_high"], 4), "chosen": r is chosen,
        "details": json.dumps(r["details"]), "seconds": r["seconds"]} for r in results])
    table.to_csv(out / "transfer.csv", index=False)
    d = diff["difference"]
    lines = [
        f"# Transfer on the 2020 snapshot ({len(frame)} frontal X-rays, {frame['group'].nunique()} split groups; "
        f"covid-vs-rest; {args.image_size} px; {args.folds} group folds, seed {args.seed})", "",
        "| configuration | mean val ROC AUC (min) | pooled test ROC AUC [95% CI] |", "| --- | --- | --- |"]
    for r in results:
        mark = " **(chosen on validation)**" if r is chosen else ""
        lines.append(f"| {r['config']}{mark} | {r['val_auc_mean']:.3f} ({r['val_auc_min']:.3f}) | {_fmt(r['test'])} |")
    lines += ["", f"Chosen on validation: **{chosen['config']}**. Against the same configuration with random "
              f"weights, paired group bootstrap: hed − random = {d['value']:.3f} [{d['ci_low']:.3f}, "
              f"{d['ci_high']:.3f}] (p = {diff['p_value']:.3f}).", ""]
    sd = source["paired"]["difference"]
    lines += [f"Sources held out ({source['n_sources']} sources, 3 leave-sources-out folds, "
              f"{chosen['layer']} / {chosen['model']}): hed {_fmt(source['hed']['test'])}, random "
              f"{_fmt(source['none']['test'])}; hed − random = {sd['value']:.3f} [{sd['ci_low']:.3f}, "
              f"{sd['ci_high']:.3f}].", "",
              f"Weights: hed sha256 {info['hed'].get('sha256')}; random: seed 0. Wall time {seconds / 60:.1f} min."]
    text = "\n".join(lines) + "\n"
    (out / "transfer.md").write_text(text)
    (out / "transfer.json").write_text(json.dumps({"chosen": chosen["config"], "paired": diff, "source": {
        k: (v if k in ("paired", "n_sources") else {"test": v["test"], "val_auc_mean": v["val_auc_mean"]})
        for k, v in source.items()}, "args": vars(args), "seconds": seconds}, indent=2, default=float) + "\n")
    plot(table, out / "transfer.png")
    print(text)


def write_fine_tuned(out, result, args):
    """``OUT/fine_tuned.md`` and ``.json``: the phase 1 + 2 rows and their paired difference."""
    d = result["paired"]["difference"]
    lines = ["| configuration | mean val ROC AUC | pooled test ROC AUC [95% CI] | wall time |", "| --- | --- | --- | --- |"]
    lines += [f"| {result[w]['config']} | {result[w]['val_auc_mean']:.3f} | {_fmt(result[w]['test'])} | "
              f"{result[w]['seconds'] / 60:.1f} min |" for w in WEIGHTS]
    lines += ["", f"hed − random = {d['value']:.3f} [{d['ci_low']:.3f}, {d['ci_high']:.3f}] "
              f"(paired group bootstrap, p = {result['paired']['p_value']:.3f})."]
    text = "\n".join(lines) + "\n"
    (out / "fine_tuned.md").write_text(text)
    (out / "fine_tuned.json").write_text(json.dumps({w: {k: v for k, v in result[w].items() if k != "scores"}
                                                    for w in WEIGHTS} | {"paired": result["paired"], "args": vars(args)},
                                                   indent=2, default=float) + "\n")
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
