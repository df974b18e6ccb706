"""The ``covidxr`` command line.

Each command is a pair of functions: ``_add_<name>(subparsers)`` declares its options and
``_run_<name>(args)`` calls the package; the logic lives in the modules, not here.
Heavy modules (keras, matplotlib) are imported inside the ``_run_`` functions so that
``covidxr --version`` and ``covidxr --help`` answer at once.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from . import RESEARCH_ONLY, __version__


# --------------------------------------------------------------------------- shared options

def add_data_options(parser, *, task_default="covid-vs-rest"):
    """Options every command that reads a dataset takes."""
    from .data import FRONTAL_VIEWS, TASKS

    group = parser.add_argument_group("data")
    group.add_argument("--data-dir", default=None,
                       help="dataset folder or CSV manifest (default: $COVIDXR_DATA_DIR, "
                            "else data/raw/covid-chestxray-dataset)")
    group.add_argument("--layout", default="auto", choices=["auto", "metadata", "folders", "manifest"],
                       help="dataset layout (default: detect)")
    group.add_argument("--task", default=task_default, choices=sorted(TASKS),
                       help=f"label task (default: {task_default})")
    group.add_argument("--views", default=",".join(FRONTAL_VIEWS),
                       help="comma-separated views to keep, or 'frontal' / 'all' (default: frontal)")
    group.add_argument("--modality", default="X-ray", help="modality to keep (default: X-ray)")
    group.add_argument("--image-col", default="path", help="manifest: image path column")
    group.add_argument("--label-col", default="label", help="manifest: label column")
    group.add_argument("--patient-col", default="patient", help="manifest: patient id column")
    return group


def load_from_args(args, *, task="__args__"):
    """Read the dataset the data options describe."""
    from .data import load_dataset

    return load_dataset(
        args.data_dir,
        task=args.task if task == "__args__" else task,
        layout=args.layout,
        modality=None if str(args.modality).lower() in ("", "all", "none") else args.modality,
        views=args.views,
        image_col=args.image_col,
        label_col=args.label_col,
        patient_col=None if str(args.patient_col).lower() in ("", "none") else args.patient_col,
    )


# --------------------------------------------------------------------------- download

def _add_download(sub):
    from .download import DEFAULT_REF

    p = sub.add_parser("download", help="fetch the public COVID-19 image data collection")
    p.add_argument("--data-dir", default=None,
                   help="where to put it (default: $COVIDXR_DATA_DIR, else data/raw/covid-chestxray-dataset)")
    p.add_argument("--ref", default=DEFAULT_REF,
                   help="git commit, tag or branch of the upstream repository (default: a pinned commit)")
    p.add_argument("--force", action="store_true", help="replace an existing copy")


def _run_download(args):
    from .data import resolve_data_dir
    from .download import download

    summary = download(resolve_data_dir(args.data_dir), ref=args.ref, force=args.force)
    print(summary)
    return 0


# --------------------------------------------------------------------------- eda

def _add_eda(sub):
    p = sub.add_parser("eda", help="counts per task and EDA figures")
    add_data_options(p)
    p.add_argument("--out", default=None, help="folder for the figures (omit to print counts only)")
    p.add_argument("--samples", type=int, default=4, help="sample images per class in the grid")
    p.add_argument("--seed", type=int, default=0)


def _run_eda(args):
    from .data import load_dataset, summary_table, task_counts
    from .plots import write_eda_figures

    frame = load_dataset(args.data_dir, task=None, layout=args.layout,
                         modality=None if str(args.modality).lower() in ("", "all", "none") else args.modality,
                         views=args.views, image_col=args.image_col, label_col=args.label_col,
                         patient_col=args.patient_col)
    counts = task_counts(frame)
    print(summary_table(frame, counts))
    if args.out:
        written = write_eda_figures(frame, args.out, samples=args.samples, seed=args.seed)
        for path in written:
            print(f"wrote {path}")
    return 0


# --------------------------------------------------------------------------- split

def _add_split(sub):
    p = sub.add_parser("split", help="write a patient-level split as CSV")
    add_data_options(p)
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--val-size", type=float, default=0.15)
    p.add_argument("--test-size", type=float, default=0.15)
    p.add_argument("--folds", type=int, default=None, help="k-fold mode: number of folds")
    p.add_argument("--fold", type=int, default=0, help="k-fold mode: the test fold")
    p.add_argument("--seed", type=int, default=0)


def _run_split(args):
    from pathlib import Path

    from .data import kfold_split, split_patients, write_split

    frame = load_from_args(args)
    if args.folds:
        split = kfold_split(frame, folds=args.folds, fold=args.fold, val_size=args.val_size, seed=args.seed)
    else:
        split = split_patients(frame, val_size=args.val_size, test_size=args.test_size, seed=args.seed)
    if Path(args.out).exists():
        raise FileExistsError(f"Expected a new file; this one exists. Received: out={args.out!r}")
    write_split(split, args.out)
    table = split.groupby(["part", "label"]).size().unstack(fill_value=0)
    table["patients"] = split.groupby("part")["patient"].nunique()
    print(table.to_string())
    print(f"wrote {args.out}")
    return 0


# --------------------------------------------------------------------------- main

COMMANDS = {
    "download": (_add_download, _run_download),
    "eda": (_add_eda, _run_eda),
    "split": (_add_split, _run_split),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="covidxr",
        description="Transfer-learning chest X-ray classifiers for COVID-19 research. " + RESEARCH_ONLY,
    )
    parser.add_argument("--version", action="version", version=f"covidxr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    _, run = COMMANDS[args.command]
    try:
        return int(run(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, ConnectionError) as err:
        print(f"covidxr {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    warnings.simplefilter("default")
    sys.exit(main())
