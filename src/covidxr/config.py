"""The options of a run: :class:`TrainConfig`, their checks, and the dataset and split they name.
Must not build models, train, or write run folders: it holds the options and checks them
(the layers above read it; it reads only the data, images, sampling, weights, models and runtime
layers).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import json_text, write_text
from .data import FRONTAL_VIEWS, detect_layout, get_task, read_split, split_frame
from .data.groups import DUPLICATES, GROUP_BY, group_column
from .images import RESIZES, load_grouped
from .models import check_feature_layer, get_backbone
from .runtime import precision_policy
from .sampling import check_strategy
from .weights import check_weights

__all__ = ["FINE_TUNE_DIVISOR", "HEADS", "JIT_COMPILE", "VERBOSE", "TrainConfig", "check_config", "check_data_dir",
           "load_frame", "make_split", "resolve_verbose", "split_from_file"]

#: Phase 2 learning rate when not given: the phase 1 rate divided by this (1e-5 by default, the Keras
#: transfer-learning guide's: Adam moves every weight by about the rate in its first steps, and 1e-4
#: undid the phase-1 head in the first fine-tuning epoch).
FINE_TUNE_DIVISOR = 100.0
#: Values of the ``head`` option: phase 1 as a convex fit (:mod:`covidxr.training.linear`) or as
#: gradient descent on the head (``epochs`` of Adam; phase 1 through augmentation needs it).
HEADS = ("linear", "gradient")
#: Values of the ``jit_compile`` option (Keras ``compile``; "auto" lets Keras decide).
JIT_COMPILE = ("auto", True, False)
#: Values of the ``verbose`` option (see :func:`resolve_verbose`).
VERBOSE = ("auto", 0, 1, 2)


@dataclass
class TrainConfig:
    """Every option of a run; field names are the ``covidxr train`` options with underscores.

    Data: ``data_dir``, ``layout``, ``task``, ``views``, ``modality``, ``image_col``,
    ``label_col``, ``patient_col`` (as :func:`covidxr.data.load_dataset`); ``val_size``,
    ``test_size``, ``folds``/``fold`` (k-fold mode when ``folds`` is set), ``split_file``
    (a ``split.csv`` to reuse instead of splitting), ``seed``; ``duplicates`` (images found
    twice: ``merge`` their patients into one split group, ``drop`` the copies, ``keep``),
    ``group_by`` (``patient`` or ``source``: no source in two parts), ``drop_mixed_patients``
    (leave out patients whose images carry different labels), ``allow_small_validation``
    (accept a validation part with fewer than 2 patients in a class).

    Images: ``image_size``, ``resize`` (pad/crop), ``clahe``, ``cache_dir``.

    Model: ``backbone``, ``weights`` (``"imagenet"``, ``"hed"`` (VGG16), ``"none"`` or a path:
    :mod:`covidxr.weights`), ``dropout``, ``pooling``, ``feature_layer`` (None: the whole backbone;
    a layer name of the backbone: the head sits on that layer's pooled output, the layers above are
    left out; see :func:`covidxr.models.truncate_backbone`), ``augment``, ``hflip``.

    Training: ``batch_size``, ``head`` (phase 1: ``"linear"``, a logistic regression with C chosen by
    group cross-validation on the training part, or ``"gradient"``: ``epochs`` of Adam; see
    :data:`HEADS`), ``epochs`` (phase 1, gradient head), ``learning_rate``, ``fine_tune_epochs``
    (0, the default: no phase 2, which did not help at this data size: docs/results.md),
    ``fine_tune_from``, ``fine_tune_learning_rate`` (None: a hundredth of ``learning_rate``),
    ``strategy`` (see :data:`covidxr.sampling.STRATEGIES`), ``patience`` (early stopping, epochs),
    ``cache_features`` (phase 1 on cached features), ``feature_store``
    (those features read from, or written to, the frozen-feature store beside the image cache, so
    the strategies and folds of a grid and later runs with the same key share them:
    :mod:`covidxr.images.feature_store`; only with ``cache_features``), ``checkpoint_every``
    (write the resumable checkpoint after every N-th epoch of a phase, its last epoch and its end;
    written in a background thread: :mod:`covidxr.training.checkpoint`),
    ``mixed_precision`` (None/False: float32; True or ``"mixed_bfloat16"``; ``"mixed_float16"``:
    see :func:`covidxr.runtime.precision_policy`), ``jit_compile`` (``"auto"``, True, False:
    Keras' ``compile(jit_compile=...)``; XLA), ``data_parallel`` (spread every batch over all
    GPUs, or all CPU devices: :func:`covidxr.runtime.data_parallel_scope`), ``memory_check``
    (refuse before training a run whose estimated memory exceeds what is available:
    :func:`covidxr.runtime.check_memory`), ``verbose`` (Keras progress: 0, 1, 2 or "auto":
    see :func:`resolve_verbose`).

    Output: ``runs_dir``, ``run_name`` (default: made from the time, task, backbone,
    strategy, fold and 4 random characters; an existing folder is an error), ``tensorboard``
    (write ``RUN/tensorboard/`` event files where the ``tensorboard`` package can be imported:
    :mod:`covidxr.training.tensorboard`).
    """

    data_dir: str | None = None
    layout: str = "auto"
    task: str = "covid-vs-rest"
    views: str = ",".join(FRONTAL_VIEWS)
    modality: str | None = "X-ray"
    image_col: str = "path"
    label_col: str = "label"
    patient_col: str | None = "patient"
    duplicates: str = "merge"
    group_by: str = "patient"
    drop_mixed_patients: bool = False
    backbone: str = "resnet50"
    weights: str | None = "imagenet"
    image_size: int = 224
    batch_size: int = 32
    head: str = "linear"
    epochs: int = 10
    fine_tune_epochs: int = 0
    fine_tune_from: str | int | None = "auto"
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float | None = None
    strategy: str = "class-weight"
    augment: bool = True
    hflip: bool = False
    clahe: bool = False
    resize: str = "pad"
    dropout: float = 0.2
    pooling: str = "avg"
    feature_layer: str | None = None
    patience: int = 5
    cache_features: bool = True
    feature_store: bool = True
    checkpoint_every: int = 1
    mixed_precision: str | bool | None = None
    jit_compile: str | bool = "auto"
    data_parallel: bool = False
    memory_check: bool = True
    seed: int = 0
    val_size: float = 0.15
    test_size: float = 0.15
    folds: int | None = None
    fold: int = 0
    split_file: str | None = None
    allow_small_validation: bool = False
    cache_dir: str | None = None
    runs_dir: str = "runs"
    run_name: str | None = None
    tensorboard: bool = True
    verbose: int | str = "auto"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self, path=None) -> str:
        """The options as JSON text; also written to ``path`` when given."""
        text = json_text(self.to_dict())
        if path is not None:
            write_text(path, text + "\n")
        return text

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """Build from a dict, ignoring keys that are not options (a run's ``config.json``
        holds more: class order, versions, cache key ...)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    @classmethod
    def from_json(cls, path_or_text) -> "TrainConfig":
        """Read options from a ``config.json`` file (a run's, or one :meth:`to_json` wrote)
        or from JSON text."""
        text = str(path_or_text)
        if not text.lstrip().startswith("{"):
            path = Path(text)
            if path.is_dir():
                path = path / "config.json"
            if not path.is_file():
                raise FileNotFoundError(f"Expected a config.json file. Received: config={text!r}")
            text = path.read_text()
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"Expected a JSON object of options ({err}). Received: config={str(path_or_text)[:80]!r}") from err
        if not isinstance(values, dict):
            raise ValueError(f"Expected a JSON object of options. Received: config={type(values).__name__}")
        return cls.from_dict(values)

    @property
    def contrast(self):
        """The cache's contrast setting (``"clahe"`` or None)."""
        return "clahe" if self.clahe else None

    @property
    def resolved_fine_tune_learning_rate(self) -> float:
        if self.fine_tune_learning_rate is None:
            return float(self.learning_rate) / FINE_TUNE_DIVISOR
        return float(self.fine_tune_learning_rate)


# --------------------------------------------------------------------------- checks

def _positive_int(name, value, *, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"Expected {name} to be an integer >= {minimum}. Received: {name}={value!r}")


def _positive_float(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"Expected {name} to be a positive number. Received: {name}={value!r}")


def check_config(config: TrainConfig) -> TrainConfig:
    """Validate every option that can be checked without data; raise on the first bad one."""
    if not isinstance(config, TrainConfig):
        raise ValueError(f"Expected a TrainConfig. Received: config={type(config).__name__}")
    spec = get_backbone(config.backbone)
    get_task(config.task)
    check_strategy(config.strategy)
    if isinstance(config.image_size, bool) or not isinstance(config.image_size, (int, np.integer)) \
            or config.image_size < spec.min_size:
        raise ValueError(
            f"Expected an integer image_size of at least {spec.min_size} px for backbone "
            f"{spec.name!r}. Received: image_size={config.image_size!r}"
        )
    check_feature_layer(spec, config.feature_layer)
    if config.duplicates not in DUPLICATES:
        raise ValueError(f"Unknown duplicates. Expected one of {list(DUPLICATES)}. "
                         f"Received: duplicates={config.duplicates!r}")
    if config.group_by not in GROUP_BY:
        raise ValueError(f"Unknown group_by. Expected one of {list(GROUP_BY)}. Received: group_by={config.group_by!r}")
    if config.resize not in RESIZES:
        raise ValueError(f"Unknown resize. Expected one of {RESIZES}. Received: resize={config.resize!r}")
    if config.head not in HEADS:
        raise ValueError(f"Unknown head. Expected one of {list(HEADS)}. Received: head={config.head!r}")
    _positive_int("batch_size", config.batch_size)
    _positive_int("epochs", config.epochs)
    _positive_int("fine_tune_epochs", config.fine_tune_epochs, minimum=0)
    _positive_int("patience", config.patience)
    _positive_int("checkpoint_every", config.checkpoint_every)
    _positive_float("learning_rate", config.learning_rate)
    precision_policy(config.mixed_precision)
    if config.jit_compile not in JIT_COMPILE:
        raise ValueError(f"Unknown jit_compile. Expected one of {list(JIT_COMPILE)}. "
                         f"Received: jit_compile={config.jit_compile!r}")
    resolve_verbose(config.verbose)  # checks the value
    if config.fine_tune_learning_rate is not None:
        _positive_float("fine_tune_learning_rate", config.fine_tune_learning_rate)
    check_weights(spec.name, config.weights)
    if not isinstance(config.tensorboard, (bool, np.bool_)):
        raise ValueError(f"Expected tensorboard to be True or False. Received: tensorboard={config.tensorboard!r}")
    if config.folds is not None:
        _positive_int("folds", config.folds, minimum=2)
        if not 0 <= int(config.fold) < int(config.folds):
            raise ValueError(f"Expected 0 <= fold < folds={config.folds}. Received: fold={config.fold!r}")
    if config.split_file is not None and not Path(config.split_file).is_file():
        raise FileNotFoundError(f"Expected a split CSV file. Received: split_file={config.split_file!r}")
    return config


def resolve_verbose(verbose, *, stream=None) -> int:
    """Keras' ``fit`` verbosity for a ``verbose`` option; ``config.json`` keeps the option as given.

    ``"auto"``: 1 (progress bars) when ``stream`` (default ``sys.stdout``) is a terminal or the
    process is a Jupyter kernel; else 0, so that redirected output holds only the run's own line
    per epoch (its log on stderr and in ``train.log``) instead of bars redrawn in a file (Keras
    draws them as if on a terminal on every POSIX system) or a second Keras line per epoch.

    Raises:
        ValueError: Not one of :data:`VERBOSE`.
    """
    if isinstance(verbose, bool) or verbose not in VERBOSE:
        raise ValueError(f"Unknown verbose. Expected one of {list(VERBOSE)}. Received: verbose={verbose!r}")
    if verbose != "auto":
        return int(verbose)
    stream = sys.stdout if stream is None else stream
    terminal = bool(getattr(stream, "isatty", None) and stream.isatty())
    return 1 if terminal or "ipykernel" in sys.modules else 0


def check_data_dir(config: TrainConfig):
    """The cheap data check a run makes before it builds a model or fetches weights: the data
    folder (or manifest) exists and its layout is known; return ``(root, layout)``.

    Raises:
        FileNotFoundError: Nothing at the data folder.
    """
    root, layout = detect_layout(config.data_dir, layout=config.layout)
    if not root.exists():
        raise FileNotFoundError(f"Expected a dataset ({layout} layout) at the data folder; nothing is there. "
                                f"Received: data_dir={str(root)!r}")
    return root, layout


def load_frame(config: TrainConfig, *, data_dir=None, apply_task=True, progress=False, hash_index=None) -> pd.DataFrame:
    """The dataset a configuration names, read and grouped as every run reads it.

    Args:
        config: The run's options (data folder, layout, task, views, modality, columns, duplicates,
            grouping, cache folder).
        data_dir: Read this folder instead of ``config.data_dir`` (a dataset that moved).
        apply_task: False keeps every labelled row with ``label`` = its category.
        progress: Show a progress bar while hashing images not yet in the hash index.
        hash_index: A :class:`covidxr.images.HashIndex` to use and leave unsaved (None: the cache
            folder's index, saved when it gained entries).

    Returns:
        :func:`covidxr.images.load_grouped`'s frame, one row per usable image, with ``group``
        and ``hash`` columns.
    """
    return load_grouped(
        config.data_dir if data_dir is None else data_dir, task=config.task if apply_task else None,
        layout=config.layout, modality=config.modality, views=config.views, image_col=config.image_col,
        label_col=config.label_col, patient_col=config.patient_col, duplicates=config.duplicates,
        group_by=config.group_by, drop_mixed_patients=config.drop_mixed_patients, cache_dir=config.cache_dir,
        progress=progress, index=hash_index,
    )


def split_from_file(frame: pd.DataFrame, path, *, require_all=False) -> pd.DataFrame:
    """The rows of ``frame`` that the split CSV ``path`` names, with its ``part`` column, checked.

    :func:`covidxr.data.read_split` checks the file itself (unique images, one part per patient and
    per group); here its labels must agree with the dataset's, and every group of the *current*
    dataset (:func:`covidxr.data.groups.group_column`: a copy of an image under another patient id
    merges the two) must lie in one part.

    Args:
        frame: The dataset, grouped, shape (n, ...).
        path: A ``split.csv``.
        require_all: Every image of the file must be in ``frame`` (a resumed run's own split);
            else images the frame lacks are left out.

    Raises:
        ValueError: A check fails; the message names the images, patients or groups.
    """
    file = read_split(path).set_index("image")
    parts = file["part"]
    if require_all:
        missing = sorted(set(parts.index) - set(frame["image"]))
        if missing:
            raise ValueError(
                f"Expected the dataset to hold every image of the run's split.csv; {len(missing)} are gone "
                f"(the dataset changed since the run started). Received: missing={missing[:3]}"
            )
    split = frame[frame["image"].isin(parts.index)].copy()
    split["part"] = split["image"].map(parts)
    _check_against_dataset(split, file["label"], path)
    return split.reset_index(drop=True)


def _first(items, n=5) -> dict:
    """The first ``n`` of ``(key, value)`` items as a dict (the message gives the count)."""
    return dict(list(items)[:n])


def _check_against_dataset(split: pd.DataFrame, labels: pd.Series, path) -> None:
    """The split file's labels agree with the dataset's; one part per current dataset group."""
    theirs = split["image"].map(labels)
    wrong = split.assign(file=theirs)[theirs != split["label"]]
    if len(wrong):
        shown = _first((r.image, {"file": r.file, "dataset": r.label}) for r in wrong.itertuples())
        raise ValueError(
            f"Expected the labels of the split file {path} to agree with the dataset's (was it made for "
            f"another task, or did the labels change?); {len(wrong)} images disagree. Received: images={shown}"
        )
    column = group_column(split)
    parts = split.groupby(column).agg(parts=("part", lambda s: sorted(set(s))),
                                      patients=("patient", lambda s: sorted(set(map(str, s)))))
    spread = parts[parts["parts"].map(len) > 1]
    if len(spread):
        raise ValueError(
            f"Expected one part per split group of the dataset; {len(spread)} groups of the split file {path} "
            f"are in more than one part (their patients share an image, e.g. a copy under another patient id, "
            f"or a source). Received: groups="
            f"{_first((g, {'patients': r.patients, 'parts': r.parts}) for g, r in spread.iterrows())}"
        )


def make_split(config: TrainConfig, frame: pd.DataFrame) -> pd.DataFrame:
    """The split a configuration asks for: its ``split_file``, its k-fold fold, or train / val / test."""
    if config.split_file:
        return split_from_file(frame, config.split_file)
    return split_frame(frame, folds=config.folds, fold=config.fold, val_size=config.val_size,
                       test_size=config.test_size, seed=config.seed,
                       allow_small_validation=bool(config.allow_small_validation))
