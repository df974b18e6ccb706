"""Does cutting images to their lungs remove shortcuts? Measured on the shared snapshot, with the
project's own pipeline, whole images against ``--lungs crop`` (the bundled segmenter).

    python benchmarks/lungs.py --data-dir ../shared/data/covid-chestxray-dataset \
        --out runs/benchmarks/lungs [--image-size 224] [--folds 5] [--source-folds 3]

For whole images and for lung crops alike (task covid-vs-rest, frontal X-rays, VGG16 with
``--weights hed`` cut at ``block4_conv3``, phase 1 only, class weights, no augmentation):

1. ``covidxr grid`` over ``--folds`` patient-grouped folds: pooled internal test ROC AUC; the
   paired difference crop − whole (same images, paired stratified group bootstrap,
   :func:`covidxr.evaluation.paired_bootstrap`).
2. ``covidxr grid --group-by source`` over ``--source-folds`` leave-sources-out folds: the mean of
   per-fold test ROC AUCs (folds differ in prevalence, so pooling would mix their differences),
   and the paired difference of those means (each fold's groups resampled within the fold).
3. The shortcut floor on the same images: a logistic regression on 32×32 grey pixels of the
   cached images (whole against crops), out of fold by group; the file-property audit
   (:mod:`covidxr.audit`) reads file headers, which a crop does not change, so it is the same
   for both and not repeated.
4. The Grad-CAM share inside the lungs for every test image of the internal folds
   (``covidxr evaluate --lung-masks predicted``: the collection's lungVAE mask where an image has
   one, the segmenter's otherwise): mean share and mean excess over the lungs' own area share,
   paired difference with a group bootstrap.

Writes ``OUT/lungs.md`` and ``OUT/lungs.json`` and prints the Markdown; every figure is reported
as it comes, whichever way it points.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

MODES = ("none", "crop")


def grid(config, out, *, folds):
    from covidxr.grid import run_grid

    return run_grid(config, out=out, backbones=["vgg16"], strategies=["class-weight"], folds=folds,
                    n_bootstrap=200, progress=True)


def test_rows(grid_dir: Path) -> pd.DataFrame:
    """The test rows of every run of a grid, with the fold."""
    from covidxr.evaluation import held_out_test, read_run

    rows = []
    for run in sorted((grid_dir / "runs").iterdir()):
        if (run / "predictions.csv").is_file():
            config, preds = read_run(run)
            rows.append(held_out_test(preds).assign(fold=config["fold"], run=str(run)))
    return pd.concat(rows, ignore_index=True)


def paired(a: pd.DataFrame, b: pd.DataFrame, *, seed=0) -> dict:
    """crop − whole pooled ROC AUC, paired by image."""
    from covidxr.evaluation import paired_bootstrap

    b = b.set_index("image").loc[a["image"]].reset_index()
    y = (a["label"] == "covid").astype(int).to_numpy()
    probs = [np.stack([1 - t["prob_covid"], t["prob_covid"]], axis=1) for t in (a, b)]
    result = paired_bootstrap(y, probs[0], probs[1], a["group"].astype(str).to_numpy(),
                              classes=["non-covid", "covid"], n_bootstrap=1000, seed=seed)
    return result


def fold_means(tables: dict, *, n_bootstrap=1000, seed=0) -> dict:
    """Mean per-fold ROC AUC of each mode and of the paired difference, with group-bootstrap intervals
    (each fold's test groups resampled within the fold, the same draws for both modes)."""
    from sklearn.metrics import roc_auc_score

    from covidxr.evaluation.resampled import resample_counts

    rng_seed = seed
    folds = sorted(tables["none"]["fold"].unique())
    point, draws = {m: [] for m in MODES}, {m: np.zeros((n_bootstrap, len(folds))) for m in MODES}
    for k, fold in enumerate(folds):
        base = tables["none"][tables["none"]["fold"] == fold].reset_index(drop=True)
        y = (base["label"] == "covid").astype(int).to_numpy()
        scores = {m: tables[m].set_index("image").loc[base["image"], "prob_covid"].to_numpy() for m in MODES}
        for m in MODES:
            point[m].append(roc_auc_score(y, scores[m]))
        done = 0
        for counts in resample_counts(base["group"].astype(str).to_numpy(), labels=y, n_bootstrap=n_bootstrap,
                                      seed=rng_seed + k):
            for c in counts.astype(int):
                idx = np.repeat(np.arange(len(y)), c)
                for m in MODES:
                    draws[m][done, k] = roc_auc_score(y[idx], scores[m][idx]) if len(set(y[idx])) == 2 else np.nan
                done += 1
    out = {}
    for name, values, boot in [(m, point[m], draws[m]) for m in MODES] + [
            ("difference", np.subtract(point["crop"], point["none"]), draws["crop"] - draws["none"])]:
        means = np.nanmean(boot, axis=1)
        out[name] = {"mean": float(np.mean(values)), "ci_low": float(np.nanpercentile(means, 2.5)),
                     "ci_high": float(np.nanpercentile(means, 97.5)), "per_fold": [float(v) for v in values]}
    return out


def pixel_floor(tables: dict, grids: dict, *, seed=0) -> dict:
    """Out-of-fold ROC AUC of a logistic regression on 32×32 grey pixels, whole and crop (same folds)."""
    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from covidxr.images import ImageCache

    result = {}
    for mode in MODES:
        table = tables[mode]
        config = json.loads((Path(table["run"].iloc[0]) / "config.json").read_text())
        cache = ImageCache.open(config["cache"]["path"])
        index = pd.Index(cache.rows["image"])
        pixels = np.stack([np.asarray(Image.fromarray(np.asarray(cache.images[i])[..., 0]).resize((32, 32)),
                                      np.float32).ravel() for i in index.get_indexer(table["image"])])
        y = (table["label"] == "covid").astype(int).to_numpy()
        oof = np.zeros(len(table))
        for fold in sorted(table["fold"].unique()):
            test = (table["fold"] == fold).to_numpy()
            model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, class_weight="balanced", max_iter=2000))
            oof[test] = model.fit(pixels[~test], y[~test]).predict_proba(pixels[test])[:, 1]
        result[mode] = table[["image", "group", "label"]].assign(prob_covid=oof)
    return paired(result["crop"], result["none"], seed=seed)


def lung_share(grids: dict) -> dict:
    """Grad-CAM share inside the lungs of every internal test image, both modes, and their difference."""
    from covidxr.evaluate import evaluate_run
    from covidxr.evaluation import patient_bootstrap

    tables = {}
    for mode in MODES:
        parts = []
        for run in sorted((grids[mode] / "runs").iterdir()):
            done = sorted((run / "evaluations").glob("lungs-*")) if (run / "evaluations").is_dir() else []
            out = done[-1] if done else evaluate_run(run, lung_masks="predicted", name="lungs", n_bootstrap=100,
                                                     figures=False)
            parts.append(pd.read_csv(out / "lung_mass.csv", dtype={"image": str, "group": str}))
        tables[mode] = pd.concat(parts, ignore_index=True).dropna(subset=["mass_inside"])
    both = tables["none"].merge(tables["crop"], on=["image", "group", "label"], suffixes=("_whole", "_crop"))
    figures = {"share_whole": both["mass_inside_whole"].to_numpy(), "share_crop": both["mass_inside_crop"].to_numpy(),
               "excess_whole": both["excess_whole"].to_numpy(), "excess_crop": both["excess_crop"].to_numpy()}
    figures["share_difference"] = figures["share_crop"] - figures["share_whole"]
    figures["excess_difference"] = figures["excess_crop"] - figures["excess_whole"]
    boot = patient_bootstrap(lambda idx: {k: float(np.mean(v[idx])) for k, v in figures.items()},
                             both["group"].to_numpy(), labels=both["label"].to_numpy(), n_bootstrap=1000, seed=0)
    return {k: {x: boot["metrics"][k][x] for x in ("value", "ci_low", "ci_high")} for k in figures} | {
        "n_images": int(len(both))}


def _ci(d, key="value"):
    return f"{d[key]:.3f} [{d['ci_low']:.3f}, {d['ci_high']:.3f}]"


def main(argv=None) -> int:
    from covidxr.config import TrainConfig

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--source-folds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=30)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore")
    base = dict(data_dir=args.data_dir, backbone="vgg16", weights="hed", feature_layer="block4_conv3",
                image_size=args.image_size, fine_tune_epochs=0, augment=False, epochs=args.epochs, verbose=0,
                cache_dir=args.cache_dir or str(out / "cache"))
    grids, sources = {}, {}
    for mode in MODES:
        grids[mode] = grid(TrainConfig(**base, lungs=mode), out / f"grid-{mode}", folds=args.folds)
        sources[mode] = grid(TrainConfig(**base, lungs=mode, group_by="source", val_size=0.3,
                                         allow_small_validation=True), out / f"source-{mode}", folds=args.source_folds)
    internal = {m: test_rows(grids[m]) for m in MODES}
    held_out = {m: test_rows(sources[m]) for m in MODES}
    result = {"internal": paired(internal["crop"], internal["none"]),
              "source_held_out": fold_means(held_out),
              "pixel_floor": pixel_floor(internal, grids),
              "lung_share": lung_share(grids),
              "settings": {k: v for k, v in base.items() if k != "data_dir"} | {"folds": args.folds,
                                                                                 "source_folds": args.source_folds}}
    (out / "lungs.json").write_text(json.dumps(result, indent=1, default=float))
    text = markdown(result)
    (out / "lungs.md").write_text(text)
    print(text)
    return 0


def markdown(result: dict) -> str:
    """The table of the four figures: whole, crop, crop − whole."""
    internal, source, floor, share = (result[k] for k in ("internal", "source_held_out", "pixel_floor", "lung_share"))
    rows = [
        ("internal test ROC AUC, pooled over folds", _ci(internal["b"]), _ci(internal["a"]), _ci(internal["difference"])),
        ("sources held out: mean per-fold ROC AUC", _ci(source["none"], "mean"), _ci(source["crop"], "mean"),
         _ci(source["difference"], "mean")),
        ("shortcut floor: 32×32-pixel logistic regression, ROC AUC", _ci(floor["b"]), _ci(floor["a"]),
         _ci(floor["difference"])),
        ("Grad-CAM mass inside the lungs (share)", _ci(share["share_whole"]), _ci(share["share_crop"]),
         _ci(share["share_difference"])),
        ("... its excess over the lungs' own area", _ci(share["excess_whole"]), _ci(share["excess_crop"]),
         _ci(share["excess_difference"])),
    ]
    lines = ["| figure | whole image | --lungs crop | crop − whole |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    lines.append(f"\nPaired p-values: internal {internal['p_value']:.3f}, pixel floor {floor['p_value']:.3f}; "
                 f"{share['n_images']} test images with Grad-CAM shares; sources held out per fold "
                 f"(whole / crop): {source['none']['per_fold']} / {source['crop']['per_fold']}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
