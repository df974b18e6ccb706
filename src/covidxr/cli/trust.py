"""``covidxr calibrate``, the ``--calibration`` / ``--conformal`` options of ``evaluate`` and ``predict``, and
``compare --conformal``: trust at a new site. Parses options and calls :mod:`covidxr.calibrate` and
:mod:`covidxr.evaluation.conformal`, nothing else."""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import write_text
from .options import add_dataset_options, data_options

__all__ = ["add_calibrate", "add_trust_options", "print_trust", "run_calibrate", "run_pooled_conformal"]


def add_trust_options(p, *, what):
    """``--calibration`` and ``--conformal`` (evaluate, predict)."""
    p.add_argument("--calibration", default=None, metavar="NAME",
                   help="a site calibration of the run (RUN/calibrations/NAME, or the newest NAME-<timestamp>, made by "
                        f"`covidxr calibrate`): its labelled images are {what}")
    p.add_argument("--conformal", type=float, default=None, metavar="ALPHA",
                   help="conformal prediction sets covering the true class with probability >= 1 - ALPHA per class "
                        "(e.g. 0.1), calibrated on the run's validation part, or with --calibration on its labelled "
                        "images (default: none)")


def print_trust(result: dict) -> None:
    """The risk-coverage, conformal and calibration lines of an evaluation's result."""
    from ..reports import conformal_markdown, selective_markdown

    if result.get("calibration"):
        site = result["calibration"]
        print(f"calibration {site['name']}: {site['method']} map, site threshold {site['threshold']:.4f}; "
              f"{site['n_left_out_labelled']} labelled images left out")
    print(selective_markdown(result["selective"]))
    if result.get("conformal"):
        print(conformal_markdown(result["conformal"]))


def add_calibrate(sub):
    """The options of ``covidxr calibrate``."""
    from ..evaluation.calibration import CALIBRATION_METHODS, CHOICE_RULE

    p = sub.add_parser("calibrate", help="recalibrate a run and choose its threshold for a new site from a few "
                                         "labelled images; score the rest before and after")
    p.add_argument("--run", required=True, help="run folder (config.json, predictions.csv, model.keras)")
    p.add_argument("--data-dir", default=None,
                   help="the site's images (collection folder, class folders or CSV manifest); omit to use the "
                        "run's own test part")
    p.add_argument("--labelled", required=True, metavar="K|FRACTION",
                   help="labelled images of the site: a number (e.g. 20) or a share (e.g. 0.1), drawn by group")
    p.add_argument("--name", default=None, help="site name (default: the folder's name, or 'test'); the results go "
                                                "to RUN/calibrations/<name>-<timestamp>/")
    p.add_argument("--method", default="auto", choices=list(CALIBRATION_METHODS),
                   help=f"recalibration map; auto: {CHOICE_RULE} (default: auto)")
    p.add_argument("--threshold-method", default="youden", choices=["youden", "sensitivity"],
                   help="how the site's threshold is chosen on its labelled images (default: youden)")
    p.add_argument("--target-sensitivity", type=float, default=None,
                   help="with --threshold-method sensitivity: the sensitivity to reach (default: none)")
    p.add_argument("--sizes", default="10,20,40",
                   help="numbers of labelled images for the gain figure ('' to skip) (default: 10,20,40)")
    p.add_argument("--repeats", type=int, default=20, help="draws per size in the gain figure (default: 20)")
    add_dataset_options(p)
    p.add_argument("--n-bootstrap", type=int, default=1000, help="group bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="random seed of the draw and the bootstrap")
    p.add_argument("--batch-size", type=int, default=32, help="prediction batch size")
    p.add_argument("--cache-dir", default=None, help="hash index folder for --data-dir (default: the run's)")
    p.add_argument("--no-figures", action="store_true", help="skip the figures")


def run_calibrate(args):
    """``covidxr calibrate``: one call of :func:`covidxr.calibrate.calibrate_site`, its report printed."""
    from ..calibrate import calibrate_site
    from ..reports import calibration_markdown

    try:
        sizes = [int(v) for v in args.sizes.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"Expected --sizes as comma-separated numbers of images, e.g. 10,20,40. "
                         f"Received: sizes={args.sizes!r}") from None
    out = calibrate_site(args.run, data_dir=args.data_dir, labelled=args.labelled, name=args.name, method=args.method,
                         threshold_method=args.threshold_method, target_sensitivity=args.target_sensitivity,
                         seed=args.seed, n_bootstrap=args.n_bootstrap, sizes=sizes, repeats=args.repeats,
                         batch_size=args.batch_size, cache_dir=args.cache_dir, figures=not args.no_figures,
                         data_options=data_options(args))
    print(calibration_markdown(json.loads((out / "metrics.json").read_text())))
    print(f"wrote {out}")
    return 0


def run_pooled_conformal(args):
    """``compare RUN... --conformal ALPHA``: each run's sets and the pooled test parts."""
    from ..evaluation.conformal import pooled_conformal
    from ..reports import conformal_markdown

    per_run, pooled = pooled_conformal(args.runs, alpha=args.conformal)
    print(per_run.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(conformal_markdown(pooled))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        target = Path(args.out) / "conformal.csv"
        if target.exists():
            raise FileExistsError(f"Expected a folder without conformal.csv. Received: out={args.out!r}")
        write_text(target, per_run.to_csv(index=False))
        print(f"wrote {target}")
    return 0
