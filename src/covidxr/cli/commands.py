"""The commands: each a pair ``_add_<name>(subparsers)`` (its options) and ``_run_<name>(args)``.
Must not hold logic: a ``_run_`` function turns options into one call of the package and prints
its result. Heavy modules (keras, matplotlib) are imported inside the ``_run_`` functions so that
``covidxr --version`` and ``covidxr --help`` answer at once.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import warnings
from pathlib import Path

from .. import RESEARCH_ONLY
from ..atomic import write_text
from ..data import resolve_data_dir
from .grid import add_grid, run_grid
from .lungs import add_lungs, run_lungs
from .options import (add_data_options, add_dataset_options, add_mlflow_option, add_train_options, config_values,
                      data_options, grouping_options, mlflow_uri)
from .quiet import show_warning
from .trust import add_calibrate, add_trust_options, print_trust, run_calibrate, run_pooled_conformal


def _print_warnings(caught) -> None:
    """The user warnings a command caught, one ``warning: ...`` line each on stderr."""
    for w in caught:
        if issubclass(w.category, UserWarning):
            show_warning(w.message, w.category, w.filename, w.lineno)


def _flags(names) -> str:
    return ", ".join("--" + name.replace("_", "-") for name in names)


# --------------------------------------------------------------------------- download

def _add_download(sub):
    from ..download import DEFAULT_REF

    p = sub.add_parser("download", help="fetch the public COVID-19 image data collection")
    p.add_argument("--data-dir", default=None,
                   help="where to put it (default: $COVIDXR_DATA_DIR, else data/raw/covid-chestxray-dataset)")
    p.add_argument("--ref", default=DEFAULT_REF,
                   help="git commit, tag or branch of the upstream repository (default: a pinned commit)")
    p.add_argument("--force", action="store_true",
                   help="download again and replace an existing copy (only a folder that holds a previous "
                        "download: metadata.csv or covidxr's download marker)")


def _run_download(args):
    from ..download import download

    summary = download(resolve_data_dir(args.data_dir), ref=args.ref, force=args.force)
    print(summary)
    return 0


# --------------------------------------------------------------------------- eda

def _add_eda(sub):
    p = sub.add_parser("eda", help="counts per task and EDA figures")
    add_data_options(p)
    p.add_argument("--out", default=None, help="folder for the figures (omit to print counts only)")
    p.add_argument("--samples", type=int, default=4, help="sample images per class in the grid")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sample images")
    p.add_argument("--review-distance", type=int, default=None, metavar="BITS",
                   help="list pairs of images of different split groups whose near hashes are at most BITS of 256 "
                        "apart, candidates for --same-patients (with --out: review_pairs.csv and side-by-side "
                        "figures of the closest 24); 0 turns it off (default: 64 for datasets of at most "
                        "5000 images; larger ones only when asked, since look-alike films can give millions "
                        "of pairs within 64 bits)")


#: ``eda`` lists same-patient candidates by default up to this many images (an explicit
#: ``--review-distance`` always does): the review search compares every pair of images.
REVIEW_AUTO_MAX = 5000


def _run_eda(args):
    from ..data import summary_table, task_counts
    from ..data.same_patients import REVIEW_DISTANCE
    from ..data.summaries import review_lines
    from ..images import candidate_pairs, load_grouped

    if args.review_distance is not None and args.review_distance < 0:
        raise ValueError(f"Expected --review-distance >= 0 bits. Received: review_distance={args.review_distance}")
    frame = load_grouped(args.data_dir, task=None, **data_options(args), **grouping_options(args))
    counts = task_counts(frame)
    print(summary_table(frame, counts))
    if args.review_distance is None:
        args.review_distance = REVIEW_DISTANCE if len(frame) <= REVIEW_AUTO_MAX else 0
        if not args.review_distance:
            print(f"same-patient candidates not listed for {len(frame)} images (more than {REVIEW_AUTO_MAX}): "
                  f"ask with --review-distance {REVIEW_DISTANCE}")
    pairs = candidate_pairs(frame, max_distance=args.review_distance, cache_dir=args.cache_dir) \
        if args.review_distance else None
    if pairs is not None:
        print("\n" + "\n".join(review_lines(pairs, max_distance=args.review_distance)))
    if args.out:
        from ..figures import write_eda_figures, write_review_figures   # matplotlib: only when drawing

        written = write_eda_figures(frame, args.out, samples=args.samples, seed=args.seed)
        if frame.attrs.get("data_warnings"):   # in full; the console had their one-line summary
            written.append(Path(args.out) / "data_warnings.txt")
            write_text(written[-1], "\n".join(frame.attrs["data_warnings"]) + "\n")
        if pairs is not None:
            written.append(Path(args.out) / "review_pairs.csv")
            write_text(written[-1], pairs.drop(columns=["a", "b"]).to_csv(index=False))
            figures = write_review_figures(frame, pairs, Path(args.out) / "review_pairs")
            written += figures
            if len(figures) < len(pairs):
                print(f"review figures: the closest {len(figures)} of {len(pairs)} pairs (all in review_pairs.csv)")
        for path in written:
            print(f"wrote {path}")
    return 0


# --------------------------------------------------------------------------- split

def _add_split(sub):
    p = sub.add_parser("split", help="write a group-level (patients merged by shared images) split as CSV")
    add_data_options(p)
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--val-size", type=float, default=0.15, help="validation share of the patients (groups)")
    p.add_argument("--test-size", type=float, default=0.15, help="test share of the patients (groups)")
    p.add_argument("--folds", type=int, default=None,
                   help="k-fold mode: number of folds (default: none, one train / val / test split)")
    p.add_argument("--fold", type=int, default=0, help="k-fold mode: the test fold")
    p.add_argument("--official-split", action="store_true",
                   help="the dataset's own split (layouts covidx, covid-qu-ex): its test part; its validation part, "
                        "else --val-size of its training groups")
    p.add_argument("--seed", type=int, default=0, help="random seed of the split")
    p.add_argument("--allow-small-validation", action="store_true",
                   help="accept a validation part with fewer than 2 patients (groups) in a class")


def _run_split(args):
    from ..data import split_frame, split_sizes, write_split
    from ..data.groups import group_column
    from ..images import load_grouped

    frame = load_grouped(args.data_dir, task=args.task, **data_options(args), **grouping_options(args))
    split = split_frame(frame, folds=args.folds, fold=args.fold, val_size=args.val_size, test_size=args.test_size,
                        seed=args.seed, allow_small_validation=args.allow_small_validation,
                        official=args.official_split)
    if Path(args.out).exists():
        raise FileExistsError(f"Expected a new file; this one exists. Received: out={args.out!r}")
    write_split(split, args.out)
    table = split.groupby(["part", "label"]).size().unstack(fill_value=0)
    table["patients"] = split.groupby("part")["patient"].nunique()
    table["groups"] = split.groupby("part")[group_column(split)].nunique()
    print(table.to_string())
    sizes = split.attrs.get("split_sizes") or split_sizes(split)
    requested = ", ".join(f"{k} {v}" for k, v in sizes.get("requested", {}).items())
    print("achieved sizes: " + ", ".join(f"{p} {sizes['images'][p]:.3f} of images / {sizes['groups'][p]:.3f} of "
                                         f"groups" for p in ("train", "val", "test"))
          + (f" (requested: {requested})" if requested else ""))
    print(f"wrote {args.out}")
    return 0


# --------------------------------------------------------------------------- cache

def _add_cache(sub):
    p = sub.add_parser("cache", help="list or remove decode-once image caches and their sizes")
    actions = p.add_subparsers(dest="cache_action", metavar="ACTION", required=True)
    for name, text in (("list", "show the caches and their sizes"), ("clear", "remove caches")):
        q = actions.add_parser(name, help=text)
        q.add_argument("--cache-dir", default=None,
                       help="cache folder (default: $COVIDXR_CACHE_DIR, else data/interim)")
    q.add_argument("--key", default=None,
                   help="the cache to remove (a unique key prefix will do; default: all, and the frozen-feature store)")


def _run_cache(args):
    from ..images import clear_caches, clear_feature_store, list_caches, resolve_cache_dir

    root = resolve_cache_dir(args.cache_dir)
    if args.cache_action == "clear":
        removed = clear_caches(root, key=args.key) + (clear_feature_store(root) if args.key is None else [])
        for path in removed:
            print(f"removed {path}")
        print(f"removed {len(removed)} folder(s) from {root}")
        return 0
    table = list_caches(root)
    if table.empty:
        print(f"no caches in {root}")
        return 0
    shown = table.drop(columns="path").rename(columns={"mb": "MB"})
    print(shown.to_string(index=False))
    print(f"{len(table)} cache(s), {table['mb'].sum():.1f} MB in {root}")
    return 0


# --------------------------------------------------------------------------- evaluate / audit / compare

def _add_evaluate(sub):
    p = sub.add_parser("evaluate", help="score a run on its test part or on another dataset (external validation)")
    p.add_argument("--run", required=True, help="run folder (config.json, predictions.csv, model.keras)")
    p.add_argument("--data-dir", default=None,
                   help="another dataset (collection folder, class folders or CSV manifest); "
                        "omit to score the run's own test part")
    p.add_argument("--name", default=None,
                   help="evaluation name (default: 'test', or the dataset folder's name); the results go "
                        "to RUN/evaluations/<name>-<timestamp>/")
    add_dataset_options(p)
    p.add_argument("--threshold-method", default="youden", choices=["youden", "sensitivity", "fixed"],
                   help="how the threshold is chosen on the run's validation part (default: youden)")
    p.add_argument("--target-sensitivity", type=float, default=None,
                   help="with --threshold-method sensitivity: the validation sensitivity to reach (default: none)")
    p.add_argument("--threshold", type=float, default=None, help="with --threshold-method fixed (default: none)")
    p.add_argument("--n-bootstrap", type=int, default=1000, help="patient bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="random seed of the bootstrap")
    p.add_argument("--batch-size", type=int, default=32, help="prediction batch size")
    p.add_argument("--no-figures", action="store_true", help="skip the figures")
    p.add_argument("--cache-dir", default=None, help="hash index folder for --data-dir (default: the run's)")
    p.add_argument("--allow-overlap", action="store_true",
                   help="with --data-dir: keep and score the images the run was trained or validated on "
                        "(left out by default; the figures are then not an external validation)")
    p.add_argument("--lung-masks", default=None, metavar="DIR|predicted",
                   help="folder of lung masks (<image stem>_mask.png, e.g. the collection's "
                        "annotations/lungVAE-masks): also measure the share of Grad-CAM mass inside the lungs "
                        "on the test images that have one (lung_mass.csv, figures/lung_mass.png); 'predicted': "
                        "every test image, the dataset's mask file where it has one and the bundled lung "
                        "segmenter's mask otherwise")
    add_mlflow_option(p, what="the evaluation (into the run's MLflow run, config.json's mlflow run id)")
    add_trust_options(p, what="left out of the scored images, recalibrates the rest and decides at the site's "
                               "threshold")


def _run_evaluate(args):
    from ..evaluate import evaluate_run
    from ..reports import count_text, figure_text, metrics_markdown

    mlflow = mlflow_uri(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = evaluate_run(
            args.run, data_dir=args.data_dir, name=args.name, **data_options(args),
            threshold_method=args.threshold_method, target_sensitivity=args.target_sensitivity,
            threshold=args.threshold, n_bootstrap=args.n_bootstrap, seed=args.seed,
            batch_size=args.batch_size, figures=not args.no_figures, allow_overlap=args.allow_overlap,
            cache_dir=args.cache_dir, lung_masks=args.lung_masks, mlflow=mlflow, calibration=args.calibration,
            conformal=args.conformal)
    _print_warnings(caught)
    result = json.loads((out / "metrics.json").read_text())
    sel = result["threshold_selection"]
    print(f"{count_text(result)} from {result['data']}")
    if result.get("overlap") and result["overlap"]["n_rows"]:
        print(f"{result['overlap']['n_rows']} rows the run was trained or validated on: "
              + ("KEPT (--allow-overlap)" if result["overlap"]["kept"] else "left out"))
    if result["threshold"] is not None:
        print(f"threshold {result['threshold']:.4f}: {sel['description']}")
        psel = result.get("patient_threshold_selection") or sel
        print(f"patient threshold {result.get('patient_threshold', result['threshold']):.4f}: {psel['description']}")
    else:
        print("decision: arg-max over the three classes")
    print(metrics_markdown(result))
    print_trust(result)
    if result.get("lung_mass"):
        lungs = result["lung_mass"]
        inside = lungs["mass_inside"]
        print(f"Grad-CAM mass inside the lungs: {figure_text(inside)}"   # metrics.json: undefined is null
              f" over {lungs['n_measured']} test images with a mask (lung area alone "
              f"{figure_text({'value': lungs['mask_area']['value']})}; {lungs['n_no_mask']} without a mask)")
    print(f"wrote {out}")
    return 0


def _add_audit(sub):
    p = sub.add_parser("audit", help="can file properties alone (format, mode, size, bit depth) predict the label?")
    add_data_options(p)
    p.add_argument("--model", default="gradient-boosting", choices=["gradient-boosting", "logistic-regression"],
                   help="the classifier of the file properties")
    p.add_argument("--folds", type=int, default=5, help="patient-grouped cross-validation folds")
    p.add_argument("--n-bootstrap", type=int, default=1000, help="patient bootstrap resamples")
    p.add_argument("--warn-above", type=float, default=0.6, help="AUROC above which to warn")
    p.add_argument("--seed", type=int, default=0, help="random seed of the folds and the bootstrap")


def _run_audit(args):
    from ..audit import audit_dataset, audit_report
    from ..images import load_grouped

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = load_grouped(args.data_dir, task=args.task, **data_options(args), **grouping_options(args))
    _print_warnings(caught)
    result = audit_dataset(frame, model=args.model, n_splits=args.folds, n_bootstrap=args.n_bootstrap,
                           seed=args.seed, warn_above=args.warn_above)
    print(audit_report(result, data=str(resolve_data_dir(args.data_dir))))
    return 0


def _add_compare(sub):
    p = sub.add_parser("compare", help="one table and chart of every metric with CIs over run folders")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders")
    p.add_argument("--out", default=None,
                   help="folder for comparison.csv/.md/.png (omit to print the table only)")
    p.add_argument("--evaluation", default=None,
                   help="compare each run's latest evaluation of this name instead of its test part")
    p.add_argument("--n-bootstrap", type=int, default=1000, help="patient bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="random seed of the bootstrap")
    p.add_argument("--paired", action="store_true",
                   help="exactly two runs scored on the same images: A - B of --metric per image and per "
                        "patient with a paired group-bootstrap interval (--out: paired.json, paired.md)")
    p.add_argument("--metric", default="roc_auc",
                   help="with --paired: roc_auc (default), pr_auc or brier")
    p.add_argument("--conformal", type=float, default=None, metavar="ALPHA",
                   help="instead: conformal sets of each run (calibrated on its validation part, applied to its test "
                        "part; e.g. a grid's folds) and of their test parts pooled: coverage per class, set size, "
                        "referrals")


def _run_paired(args):
    from ..evaluate import write_paired
    from ..evaluation import paired_difference
    from ..reports import paired_markdown, paired_statement

    if len(args.runs) != 2:
        raise ValueError(f"Expected exactly two run folders with --paired (A and B, for A - B). "
                         f"Received: runs={args.runs}")
    result = paired_difference(*args.runs, evaluation=args.evaluation, metric=args.metric,
                               n_bootstrap=args.n_bootstrap, seed=args.seed)
    print(paired_markdown(result))
    print(paired_statement(result))
    if args.out:
        for path in write_paired(result, args.out):
            print(f"wrote {path}")
    return 0


def _run_compare(args):
    from ..evaluate import write_comparison
    from ..evaluation import compare_runs
    from ..reports import comparison_summary

    if args.paired:
        return _run_paired(args)
    if args.conformal is not None:
        return run_pooled_conformal(args)
    if args.metric != "roc_auc":
        raise ValueError(f"Expected --metric only with --paired. Received: metric={args.metric!r}")
    table = compare_runs(args.runs, evaluation=args.evaluation, n_bootstrap=args.n_bootstrap, seed=args.seed)
    print(comparison_summary(table))
    if args.out:
        for path in write_comparison(table, args.out):
            print(f"wrote {path}")
    else:
        print("(every metric with its interval: --out DIR writes comparison.md, comparison.csv and comparison.png)")
    return 0


# --------------------------------------------------------------------------- train

def _add_train(sub):
    p = sub.add_parser(
        "train", help="train one transfer-learning model (two phases) into a new run folder",
        description="Phase 1 trains the head on a frozen backbone (cached features); phase 2 "
                    "fine-tunes the backbone from a layer at a lower learning rate. Every run "
                    "writes a new folder under --runs-dir.")
    add_train_options(p)


def train_config(args):
    """The ``TrainConfig`` of a ``train`` command line: ``--config``'s options (a new run name)
    with every option given on the command line in their place, whatever its value; without
    ``--config``, the options given and ``TrainConfig``'s defaults."""
    from ..config import TrainConfig

    given = config_values(args)
    if args.config:
        return dataclasses.replace(TrainConfig.from_json(args.config), run_name=None, **given)
    return TrainConfig(**given)


def _recorded_data(args):
    """The ``data`` record of ``--config``'s run (its fingerprint must match the data read), unless
    ``--data-dir`` names other data; None without ``--config``."""
    if not args.config or "data_dir" in config_values(args):
        return None
    path = Path(args.config)
    path = path / "config.json" if path.is_dir() else path
    text = args.config if args.config.lstrip().startswith("{") else path.read_text() if path.is_file() else ""
    return json.loads(text).get("data") if text.lstrip().startswith("{") else None


def _run_train(args):
    from ..train import resume, train

    mlflow = mlflow_uri(args)
    if args.resume:
        others = sorted(k for k in config_values(args) if k != "verbose") + (["config"] if args.config else [])
        if others:
            raise ValueError("Expected no other options with --resume: a run continues with its own options "
                             f"(only --verbose and --mlflow may be given). Received: {_flags(others)}")
        run_dir = resume(args.resume, verbose=getattr(args, "verbose", None), mlflow=mlflow)
        print(f"finished {run_dir}")
        return 0
    run_dir = train(train_config(args), mlflow=mlflow, expect_data=_recorded_data(args))
    print(f"wrote {run_dir}")
    return 0


# --------------------------------------------------------------------------- predict

def _add_predict(sub):
    p = sub.add_parser("predict", help="probability, decision and optional Grad-CAM for image files",
                       description="Scores every readable file; a file that cannot be read (or an image too small "
                                   "to be a radiograph) gets its reason in the error column, and the command then "
                                   "exits with status 2 after printing (and writing --csv) the whole table.")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, DICOM, ...)")
    p.add_argument("--run", required=True, help="a run folder made by `covidxr train`")
    p.add_argument("--gradcam", default=None, metavar="OUT_DIR", help="write Grad-CAM overlays here")
    p.add_argument("--csv", default=None, help="also write the table to this CSV file (must not exist)")
    p.add_argument("--threshold-method", default="youden", choices=["youden", "sensitivity"],
                   help="how the run's validation part chooses the threshold (default: youden)")
    p.add_argument("--target-sensitivity", type=float, default=None,
                   help="with --threshold-method sensitivity: the validation sensitivity to reach (default: none)")
    p.add_argument("--batch-size", type=int, default=16, help="prediction batch size")
    add_trust_options(p, what="the conformal sets' calibration with --conformal; its map recalibrates the "
                                "probabilities and its threshold decides")


def _run_predict(args):
    from ..predict import predict_files

    if args.csv and Path(args.csv).exists():
        raise FileExistsError(f"Expected a new CSV file; this one exists. Received: csv={args.csv!r}")
    table = predict_files(args.run, args.images, gradcam_dir=args.gradcam, threshold_method=args.threshold_method,
                          target_sensitivity=args.target_sensitivity, batch_size=args.batch_size,
                          calibration=args.calibration, conformal=args.conformal)
    shown = table.drop(columns=["gradcam"] if not args.gradcam else [])
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(RESEARCH_ONLY)
    if args.csv:
        write_text(args.csv, table.to_csv(index=False))
        print(f"wrote {args.csv}")
    failed = int((table["error"] != "").sum())
    if failed:
        print(f"covidxr predict: {failed} of {len(table)} files could not be read (see the error column)",
              file=sys.stderr)
    return 2 if failed else 0  # any file that failed makes the exit status say so


# --------------------------------------------------------------------------- weights

def _add_weights(sub):
    p = sub.add_parser("weights", help="weights sources per backbone (imagenet, hed, none, files); export a file")
    actions = p.add_subparsers(dest="weights_action", metavar="ACTION", required=True)
    q = actions.add_parser("list", help="every source for every backbone and whether it is usable here")
    q.add_argument("files", nargs="*", metavar="FILE", help="weights files to check against every backbone too")
    q.add_argument("--backbones", default=None, help="comma-separated backbones (default: all)")
    q = actions.add_parser("export", help="write a no-top weights file to use elsewhere with --weights FILE")
    q.add_argument("--source", required=True, help="'hed' (VGG16) or 'imagenet' (Keras' cached file)")
    q.add_argument("--out", required=True, help="the new file (never overwritten)")
    q.add_argument("--backbone", default="vgg16", help="the backbone (default: vgg16)")


def _run_weights(args):
    from ..weights import export_weights, list_sources

    if args.weights_action == "export":
        info = export_weights(source=args.source, out=args.out, backbone=args.backbone)
        print(f"wrote {info['path']} ({args.source}, {args.backbone} no-top, sha256 {info['sha256']}); "
              f"use it with --backbone {args.backbone} --weights {info['path']}")
        return 0
    from ..models import BACKBONES, check_weights_file, get_backbone

    backbones = [get_backbone(b).name for b in args.backbones.split(",")] if args.backbones else list(BACKBONES)
    rows = list_sources(backbones, args.files, check_file=check_weights_file if args.files else None)
    widths = [max(len(str(r[k])) for r in rows + [dict(backbone="backbone", source="source", usable="usable")])
              for k in ("backbone", "source", "usable")]
    print("  ".join(f"{k:<{w}}" for k, w in zip(("backbone", "source", "usable"), widths)) + "  detail")
    for r in rows:
        print("  ".join(f"{r[k]!s:<{w}}" for k, w in zip(("backbone", "source", "usable"), widths)) + f"  {r['detail']}")
    return 0


#: Each command: (declare its options, run it).
COMMANDS = {
    "download": (_add_download, _run_download),
    "eda": (_add_eda, _run_eda),
    "split": (_add_split, _run_split),
    "train": (_add_train, _run_train),
    "grid": (add_grid, run_grid),
    "cache": (_add_cache, _run_cache),
    "weights": (_add_weights, _run_weights),
    "evaluate": (_add_evaluate, _run_evaluate),
    "audit": (_add_audit, _run_audit),
    "compare": (_add_compare, _run_compare),
    "calibrate": (add_calibrate, run_calibrate),
    "predict": (_add_predict, _run_predict),
    "lungs": (add_lungs, run_lungs),
}
