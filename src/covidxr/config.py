"""The options of a run: :class:`TrainConfig`, their checks, and the dataset and split they name.
Must not build models, train, or write run folders: it holds the options and checks them
(the layers above read it; it reads only the data, images, sampling, weights, models and runtime
layers).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import sys
import types
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import json_text, read_json_object, write_text
from .data import FRONTAL_VIEWS, detect_layout, get_task, split_frame
from .data.splits import split_from_file
from .data.groups import DUPLICATES, GROUP_BY
from .images import RESIZES, load_grouped
from .images.lungs import check_lungs
from .images.pool import resolve_workers
from .models import check_feature_layer, get_backbone
from .runtime import precision_policy
from .sampling import check_strategy
from .weights import check_weights

__all__ = ["FINE_TUNE_DIVISOR", "HEADS", "JIT_COMPILE", "LEGACY_DEFAULTS", "OFFICIAL_SPLIT_LAYOUTS", "RECORD_KEYS",
           "VERBOSE", "TrainConfig", "check_config", "check_data_dir", "check_data_record", "data_record", "grid_folds",
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
#: Layouts whose datasets carry their own split (``official_split``).
OFFICIAL_SPLIT_LAYOUTS = ("covidx", "covid-qu-ex")
#: Values of the ``verbose`` option (see :func:`resolve_verbose`).
VERBOSE = ("auto", 0, 1, 2)
#: Options added after runs were made, and the value that reproduces a run whose ``config.json``
#: lacks them (runs split before same-patient pairs existed were grouped without any).
LEGACY_DEFAULTS = {"same_patients": "none", "lungs": "none", "workers": None, "official_split": False,
                   "head": "gradient"}
#: The keys of a run's ``config.json`` that are not options: what the run recorded about itself
#: (:mod:`covidxr.train` writes them). :meth:`TrainConfig.from_dict` (``strict``) passes them over
#: silently and warns about any other key that is not an option.
RECORD_KEYS = frozenset({
    "cache", "class_counts", "classes", "covidxr_version", "dtype_policy", "finished", "keras_backend",
    "keras_version", "merged_groups", "mlflow", "num_classes", "numpy_version", "phase1_features",
    "phase1_train_auc", "positive_class", "preprocessing", "python_version", "resolved", "resumed", "run_dir",
    "runtime", "split_sizes", "split_version", "started", "timing", "weights_sha256", "weights_source",
    "same_patients_used", "lungs_segmenter", "data", "phase1_head",
})


@dataclass
class TrainConfig:
    """Every option of a run; field names are the ``covidxr train`` options with underscores.

    Data: ``data_dir``, ``layout``, ``task``, ``views``, ``modality``, ``image_col``,
    ``label_col``, ``patient_col`` (as :func:`covidxr.data.load_dataset`); ``val_size``,
    ``test_size``, ``folds``/``fold`` (k-fold mode when ``folds`` is set), ``split_file``
    (a ``split.csv`` to reuse instead of splitting), ``official_split`` (the dataset's own split: the
    covidx and covid-qu-ex layouts' test part, validation drawn from their training part where they
    have none: :func:`covidxr.data.splits.official_split`), ``seed``; ``duplicates`` (images found
    twice: ``merge`` their patients into one split group, ``drop`` the copies, ``keep``),
    ``group_by`` (``patient`` or ``source``: no source in two parts), ``drop_mixed_patients``
    (leave out patients whose images carry different labels), ``same_patients`` (``"auto"``, ``"none"``
    or a CSV of confirmed same-patient pairs merged into one split group:
    :mod:`covidxr.data.same_patients`), ``allow_small_validation``
    (accept a validation part with fewer than 2 patients in a class).

    Images: ``image_size``, ``resize`` (pad/crop), ``clahe``, ``cache_dir``, ``lungs`` (``none``;
    ``crop``/``mask``: each image cut to its lungs by the bundled segmenter first:
    :func:`covidxr.images.lungs.apply_lungs`, :mod:`covidxr.lungmasks`), ``workers`` (processes that
    decode and hash images; None: all cores; results do not depend on it).

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
    same_patients: str | None = "auto"
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
    lungs: str = "none"
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
    official_split: bool = False
    allow_small_validation: bool = False
    cache_dir: str | None = None
    workers: int | None = None
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
    def from_dict(cls, values: dict, *, strict=False, complete=False, source="config") -> "TrainConfig":
        """Build from a dict, ignoring keys that are not options (a run's ``config.json``
        holds more: :data:`RECORD_KEYS`). A run's ``config.json`` (it names its ``run_dir``) made
        before an option existed gets :data:`LEGACY_DEFAULTS`' value for it, the one that
        reproduces the run.

        Args:
            values: Options by field name.
            strict: Check the type of every option (``"views": 5`` is refused), and warn about
                a key that is neither an option nor one of :data:`RECORD_KEYS`, naming the
                closest option (a misspelt option would silently be its default).
            complete: Every option must be there (a run's own ``config.json`` on ``--resume``:
                a lost key must not become its default).
            source: What ``values`` came from, for the messages (a file path).

        Raises:
            ValueError: ``values`` is not a dict; an option has the wrong type (``strict``); an
                option is missing (``complete``).
        """
        if not isinstance(values, dict):
            raise ValueError(f"Expected a JSON object (a dict) of options in {source}. "
                             f"Received: type={type(values).__name__!r}")
        hints = _field_types()
        if "run_dir" in values:
            values = {**LEGACY_DEFAULTS, **values}
        if complete:
            missing = sorted(set(hints) - set(values))
            if missing:
                raise ValueError(
                    f"Expected every option in {source}; {len(missing)} are missing (lost or edited out? a "
                    f"default would change the run). Received: missing={missing}")
        if strict:
            for key in sorted(set(values) - set(hints) - RECORD_KEYS):
                close = difflib.get_close_matches(key, list(hints), n=1)
                hint = f"did you mean {close[0]!r}?" if close else "see `covidxr train --help` for the options"
                warnings.warn(f"Unknown option {key!r} in {source} is ignored; {hint}", UserWarning, stacklevel=2)
            for key, value in values.items():
                if key in hints:
                    _check_type(key, value, hints[key], source)
        return cls(**{k: v for k, v in values.items() if k in hints})

    @classmethod
    def from_json(cls, path_or_text, *, complete=False) -> "TrainConfig":
        """Read options from a ``config.json`` file (a run's, or one :meth:`to_json` wrote)
        or from JSON text, strictly (see :meth:`from_dict`).

        Raises:
            FileNotFoundError: No such file.
            ValueError: Not a JSON object (the message names the file and the cause), or an
                option of the wrong type or (``complete``) missing.
        """
        text = str(path_or_text)
        if not text.lstrip().startswith(("{", "[")):
            path = Path(text)
            if path.is_dir():
                path = path / "config.json"
            if not path.is_file():
                raise FileNotFoundError(f"Expected a config.json file. Received: config={text!r}")
            return cls.from_dict(read_json_object(path, what="a JSON object of options"), strict=True,
                                 complete=complete, source=str(path))
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"Expected a JSON object of options ({err}). Received: config={text[:80]!r}") from err
        return cls.from_dict(values, strict=True, complete=complete, source="the JSON text")

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

#: What each Python type of a field annotation accepts, and how a message says it.
_ACCEPTS = {str: ((str,), "a string"), bool: ((bool, np.bool_), "true or false"),
            int: ((int, np.integer), "an integer"), float: ((int, float, np.integer, np.floating), "a number"),
            type(None): ((type(None),), "null")}


def _field_types() -> dict:
    """``{field name: tuple of the types its annotation allows}`` of :class:`TrainConfig`."""
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: typing.get_args(hints[f.name]) if isinstance(hints[f.name], types.UnionType)
            else (hints[f.name],) for f in dataclasses.fields(TrainConfig)}


def _check_type(name, value, allowed, source) -> None:
    """``value`` is one of the ``allowed`` types (a bool is never a number here)."""
    for kind in allowed:
        accepted = _ACCEPTS[kind][0]
        if isinstance(value, accepted) and not (kind in (int, float) and isinstance(value, (bool, np.bool_))):
            return
    wanted = " or ".join(_ACCEPTS[kind][1] for kind in allowed)
    raise ValueError(f"Expected option {name} in {source} to be {wanted}. Received: {name}={value!r}")


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
    check_lungs(config.lungs)
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
    resolve_workers(config.workers)  # checks the value
    if config.fine_tune_learning_rate is not None:
        _positive_float("fine_tune_learning_rate", config.fine_tune_learning_rate)
    check_weights(spec.name, config.weights)
    if not isinstance(config.tensorboard, (bool, np.bool_)):
        raise ValueError(f"Expected tensorboard to be True or False. Received: tensorboard={config.tensorboard!r}")
    if config.folds is not None:
        _positive_int("folds", config.folds, minimum=2)
        if not 0 <= int(config.fold) < int(config.folds):
            raise ValueError(f"Expected 0 <= fold < folds={config.folds}. Received: fold={config.fold!r}")
    if not isinstance(config.official_split, (bool, np.bool_)):
        raise ValueError("Expected official_split to be True or False. "
                         f"Received: official_split={config.official_split!r}")
    if config.official_split and (config.folds is not None or config.split_file):
        raise ValueError("Expected neither folds nor split_file with official_split (the dataset's own split is the "
                         f"split). Received: folds={config.folds!r}, split_file={config.split_file!r}")
    if not isinstance(config.same_patients, (str, type(None))) or (
            str(config.same_patients or "auto").strip().lower() not in ("auto", "none", "")
            and not Path(str(config.same_patients)).expanduser().is_file()):
        raise FileNotFoundError(f"Expected 'auto', 'none' or a same-patients CSV file (patient_a,patient_b,reason). "
                                f"Received: same_patients={config.same_patients!r}")
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
        ValueError: ``official_split`` with a layout that has no split of its own.
    """
    root, layout = detect_layout(config.data_dir, layout=config.layout)
    if not root.exists():
        raise FileNotFoundError(f"Expected a dataset ({layout} layout) at the data folder; nothing is there. "
                                f"Received: data_dir={str(root)!r}")
    if config.official_split and layout not in OFFICIAL_SPLIT_LAYOUTS:
        raise ValueError(f"Expected a layout with its own split ({', '.join(OFFICIAL_SPLIT_LAYOUTS)}) for "
                         f"official_split (--official-split). Received: layout={layout!r}")
    return root, layout


def data_record(config: TrainConfig, frame: pd.DataFrame) -> dict:
    """What a run records about its data, so that it can find and recognise it again.

    Args:
        config: The run's options (``data_dir``, ``layout``).
        frame: The frame :func:`load_frame` read, one row per image.

    Returns:
        ``{"dir", "layout", "fingerprint": {"file", "sha256", "images"}}``: the resolved
        absolute data folder (or manifest file), the layout read, and the fingerprint: the
        sha256 of ``metadata.csv`` or of the manifest (for class folders, of the sorted list of
        image names; ``file`` is then None) and the number of images read.
    """
    root, layout = detect_layout(config.data_dir, layout=config.layout)
    root = root.expanduser().resolve()
    table = {"metadata": root / "metadata.csv", "manifest": root}.get(layout)
    if table is not None:
        digest = hashlib.sha256(table.read_bytes()).hexdigest()
    else:
        digest = hashlib.sha256("\n".join(sorted(map(str, frame["image"]))).encode()).hexdigest()
    return {"dir": str(root), "layout": layout,
            "fingerprint": {"file": None if table is None else table.name, "sha256": digest, "images": len(frame)}}


def check_data_record(expected: dict | None, found: dict) -> None:
    """Stop when the data found is not the data a run recorded (its :func:`data_record`).

    Raises:
        ValueError: The fingerprints differ (another ``metadata.csv`` or manifest, or another
            number of images).
    """
    if not expected or not expected.get("fingerprint"):
        return
    old, new = expected["fingerprint"], found["fingerprint"]
    if (old.get("sha256"), old.get("images")) != (new["sha256"], new["images"]):
        raise ValueError(
            f"Expected the data the run recorded ({old.get('file') or 'image list'} sha256 {str(old.get('sha256'))[:12]}, "
            f"{old.get('images')} images at {expected.get('dir')}); the data found differs (sha256 {new['sha256'][:12]}, "
            f"{new['images']} images): pass --data-dir to train on it as it is now. Received: data_dir={found['dir']!r}")


def load_frame(config: TrainConfig, *, data_dir=None, apply_task=True, progress=False, hash_index=None) -> pd.DataFrame:
    """The dataset a configuration names, read and grouped as every run reads it.

    Args:
        config: The run's options (data folder, layout, task, views, modality, columns, duplicates,
            grouping, same-patient pairs, cache folder).
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
        progress=progress, index=hash_index, same_patients=config.same_patients, workers=config.workers,
    )


def grid_folds(config, folds):
    """The folds of each grid combination: ``folds`` (None: 5); with ``official_split`` 1 (one run on the
    dataset's own split), where ``folds`` must be None. ``config``: a :class:`TrainConfig` or its dict."""
    if not (config.get("official_split") if isinstance(config, dict) else config.official_split):
        return 5 if folds is None else folds
    if folds is not None:
        raise ValueError("Expected no folds with official_split: each combination is one run on the dataset's own "
                         f"split. Received: folds={folds!r}")
    return 1


def make_split(config: TrainConfig, frame: pd.DataFrame) -> pd.DataFrame:
    """The split a configuration asks for: its ``split_file``, the dataset's own split, its k-fold fold, or
    train / val / test."""
    if config.split_file:
        return split_from_file(frame, config.split_file)
    return split_frame(frame, folds=config.folds, fold=config.fold, val_size=config.val_size,
                       test_size=config.test_size, seed=config.seed, official=bool(config.official_split),
                       allow_small_validation=bool(config.allow_small_validation))
