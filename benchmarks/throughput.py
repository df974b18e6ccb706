"""Training images per second: a bare ``model.fit`` on in-memory arrays vs the project's path.

For each backbone, at one image size and batch size, with the same model (as
``covidxr.models.build_model`` makes it, augmentation included, backbone unfrozen from
``"auto"`` as in phase 2, compiled as ``covidxr.training`` compiles it):

(a) ``model.fit(x, y, batch_size=B, epochs=E)`` on random uint8 arrays (N, S, S, 1) in memory;
(b) ``covidxr.training.fine_tune`` itself: images from the decode-once cache
    (``covidxr.images.build_cache`` on the patient split of ``--data-dir``), served by
    ``covidxr.sampling.BatchSequence`` (strategy ``"oversample"``, shuffled), with the
    validation part passed as ``train`` passes it. Validation time is measured separately
    and left out of the rate.

Both run the same number of steps per epoch (``--steps``; the training part is subsampled,
keeping its class ratio, so that an oversampled epoch is exactly ``steps * batch_size``
images) for one warm-up epoch (tracing/compilation, not counted) and ``--epochs`` timed
epochs. An epoch's training time ends when the last training step has finished (the
callback waits for the optimizer's step counter), so asynchronous dispatch does not hide
work in the validation or the next epoch.

A path's rate is the median of its per-epoch rates; ``--repeats R`` fits each path R times,
alternating the order (b, a; a, b; ...). On a shared CPU the wall-clock rates swing with the
other processes' load, so the table also gives images per process CPU-second, which is far
less sensitive to it. Without the dataset a small synthetic collection is used (with a note).

Then one ``covidxr.train.train`` run at the same size (random weights, a few epochs) and its
wall-time breakdown from ``run_dir/config.json["timing"]`` (keys missing there print n/a).

Usage::

    KERAS_BACKEND=tensorflow python benchmarks/throughput.py --image-size 64 --batch-size 16 \\
        --steps 6 --epochs 3 --repeats 2 [--backbones resnet50,vgg16,vgg19] [--data-dir DIR] \\
        [--cache-dir DIR] [--weights none|imagenet|PATH] [--skip-breakdown] [--json OUT]

Prints a table per backbone (a img/s, b img/s, b/a), then ``ratio: <min over backbones>``
(the goal is >= 0.9), then the breakdown, and the ratio line again as the last line. Not a
test: figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from covidxr import data, images, models, sampling, train, training  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "covid-chestxray-dataset"

#: The keys of the timing contract (interfaces.md) that partition a run's wall time.
PARTS = ("cache_seconds", "phase1_feature_seconds", "first_step_seconds", "steady_step_seconds",
         "validation_seconds", "checkpoint_seconds", "predict_seconds", "other_seconds")
#: Aggregates that overlap the parts (a fit's time holds its steps, validation, checkpoints).
AGGREGATES = ("phase1_fit_seconds", "phase2_fit_seconds")


# --------------------------------------------------------------------------- environment

def device_description() -> str:
    """The backend's compute devices, in words."""
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            devices = jax.devices()
            return f"{devices[0].platform}: {len(devices)} device(s) ({', '.join(str(d) for d in devices[:4])})"
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                return f"gpu: {len(gpus)} ({', '.join(g.name for g in gpus)})"
            return f"cpu: {len(tf.config.list_physical_devices('CPU'))} TF CPU device(s)"
        if backend == "torch":
            import torch

            if torch.cuda.is_available():
                return f"cuda: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
            return "cpu (torch)"
    except Exception as err:  # noqa: BLE001 - only a description
        return f"unknown ({type(err).__name__}: {err})"
    return "unknown"


def cpu_description() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return f"{model}, {usable} usable core(s) of {os.cpu_count()}"


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


# --------------------------------------------------------------------------- timing

class EpochTimer(keras.callbacks.Callback):
    """Per epoch: training seconds (up to the end of the last training step), validation
    seconds, and the process CPU seconds of the training part (CPU share under load).

    No per-batch hooks, so Keras keeps dispatching batches asynchronously.
    """

    def __init__(self):
        super().__init__()
        self.epochs = []
        self._t0 = self._c0 = self._train_end = self._cpu_end = self._val_start = None
        self._val = 0.0

    def _sync(self):
        # The step counter is written by the last training step: reading it waits for it.
        keras.ops.convert_to_numpy(self.model.optimizer.iterations)

    def on_epoch_begin(self, epoch, logs=None):
        self._t0, self._c0 = time.perf_counter(), time.process_time()
        self._train_end = self._cpu_end = None
        self._val = 0.0

    def on_test_begin(self, logs=None):
        if self._t0 is None:
            return
        if self._train_end is None:
            self._sync()
            self._train_end, self._cpu_end = time.perf_counter(), time.process_time()
        self._val_start = time.perf_counter()

    def on_test_end(self, logs=None):
        if self._val_start is not None:
            self._val += time.perf_counter() - self._val_start   # logs are numbers: synced
            self._val_start = None

    def on_epoch_end(self, epoch, logs=None):
        if self._train_end is None:   # no validation this epoch
            self._sync()
            self._train_end, self._cpu_end = time.perf_counter(), time.process_time()
        self.epochs.append({"train_seconds": self._train_end - self._t0,
                            "cpu_seconds": self._cpu_end - self._c0,
                            "val_seconds": self._val,
                            "epoch_seconds": time.perf_counter() - self._t0})


def summarize(timer: EpochTimer, images_per_epoch: int, steps: int) -> dict:
    """One fit's figures; the first epoch (tracing/compilation) is the warm-up, not timed."""
    warm, timed = timer.epochs[0], timer.epochs[1:]
    if not timed:
        raise ValueError(f"Expected at least one timed epoch after the warm-up. Received: epochs={len(timer.epochs)}")
    return {
        "images_per_epoch": images_per_epoch, "steps": steps,
        "epoch_train_seconds": [e["train_seconds"] for e in timed],
        "epoch_cpu_seconds": [e["cpu_seconds"] for e in timed],
        "epoch_validation_seconds": [e["val_seconds"] for e in timed],
        "warmup_train_seconds": warm["train_seconds"],
        "warmup_validation_seconds": warm["val_seconds"],
    }


def combine(runs: list[dict]) -> dict:
    """Rates over every timed epoch of every repeat of one path.

    ``images_per_second`` is the median of the per-epoch rates (robust to a load spike on a
    shared machine); ``mean_images_per_second`` is all images over all training seconds.
    """
    n, steps = runs[0]["images_per_epoch"], runs[0]["steps"]
    seconds = [s for r in runs for s in r["epoch_train_seconds"]]
    cpu = sum(c for r in runs for c in r["epoch_cpu_seconds"])
    val = [v for r in runs for v in r["epoch_validation_seconds"]]
    rates = [n / s for s in seconds]
    return {
        "images_per_second": float(np.median(rates)),
        "mean_images_per_second": n * len(seconds) / sum(seconds),
        "images_per_second_per_epoch": [round(r, 2) for r in rates],
        "step_ms": 1000 * float(np.median(seconds)) / steps,
        "timed_epochs": len(seconds),
        "cpu_share": cpu / sum(seconds),          # process CPU seconds per wall second
        "images_per_cpu_second": n * len(seconds) / cpu,
        "validation_seconds_per_epoch": float(np.mean(val)),
        "warmup_train_seconds": runs[0]["warmup_train_seconds"],
        "warmup_validation_seconds": runs[0]["warmup_validation_seconds"],
        "runs": runs,
    }


# --------------------------------------------------------------------------- data

def write_synthetic_collection(root: Path, *, patients=90, images_per_patient=2, size=128, seed=0) -> Path:
    """A small collection in the metadata layout (metadata.csv + images/): grey PNGs of
    lungs-like blobs; COVID-19 patients carry a bright square."""
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    findings = ["COVID-19", "COVID-19", "No Finding", "Streptococcus"]
    yy, xx = np.mgrid[0:size, 0:size]
    rows = []
    for p in range(patients):
        finding = findings[p % len(findings)]
        for i in range(images_per_patient):
            img = 150 + 30 * rng.standard_normal((size, size))
            for cx in (0.3 * size, 0.7 * size):
                img -= 80 * (((xx - cx) / (0.17 * size)) ** 2 + ((yy - size / 2) / (0.33 * size)) ** 2 < 1)
            if finding == "COVID-19":
                img[size // 4: size // 4 + size // 5, size // 3: size // 3 + size // 5] = 250
            name = f"p{p:03d}_{i}.png"
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="L").save(root / "images" / name)
            rows.append({"patientid": str(100 + p), "offset": i, "sex": "MF"[p % 2], "age": 30 + p % 50,
                         "finding": finding, "view": "PA", "modality": "X-ray", "folder": "images",
                         "filename": name, "url": "", "license": "synthetic"})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


def subsample_for_steps(labels, *, num_classes, images_per_epoch, seed=0) -> np.ndarray:
    """Indices of a training subset whose oversampled epoch has ``images_per_epoch`` images.

    The largest class gets ``images_per_epoch // num_classes`` images (drawn with
    replacement only when it has fewer), every other class the same fraction of its size, at
    least one; so the class ratio is kept and oversampling fills every class up again.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    present = np.unique(labels)
    top = math.ceil(images_per_epoch / len(present))
    largest = max(int((labels == c).sum()) for c in present)
    parts = []
    for c in present:
        idx = np.flatnonzero(labels == c)
        k = top if len(idx) == largest else max(1, min(top, round(top * len(idx) / largest)))
        parts.append(rng.choice(idx, size=k, replace=k > len(idx)))
    return np.sort(np.concatenate(parts))


def load_split(data_dir, *, task, seed):
    """The frame of ``data_dir`` split by patient, as ``train`` splits it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = data.load_dataset(data_dir, task=task)
    return data.split_patients(frame, val_size=0.15, test_size=0.15, seed=seed)


# --------------------------------------------------------------------------- the two paths

def make_model(backbone, *, num_classes, image_size, weights, seed):
    """As ``train`` builds it (augmentation on, no horizontal flip)."""
    keras.utils.set_random_seed(seed)
    return models.build_model(backbone, num_classes=num_classes, image_size=image_size, weights=weights,
                              augmentation={"hflip": False}, seed=seed)


def run_bare(backbone, *, num_classes, image_size, weights, images_per_epoch, batch_size, epochs,
             learning_rate, seed, verbose) -> dict:
    """(a): bare ``model.fit`` on random in-memory uint8 arrays."""
    model = make_model(backbone, num_classes=num_classes, image_size=image_size, weights=weights, seed=seed)
    models.set_trainable_from(model, models.resolve_fine_tune_from(model, "auto"))
    training.compile_model(model, num_classes=num_classes, learning_rate=learning_rate)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (images_per_epoch, image_size, image_size, 1), dtype=np.uint8)
    labels = np.arange(images_per_epoch) % num_classes
    y = labels.astype(np.float32)[:, None] if num_classes == 2 else np.eye(num_classes, dtype=np.float32)[labels]
    timer = EpochTimer()
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch_size, epochs=1 + epochs, callbacks=[timer], verbose=verbose)
    out = summarize(timer, images_per_epoch, math.ceil(images_per_epoch / batch_size))
    out["fit_seconds"] = time.perf_counter() - start
    del model
    return out


def run_project(backbone, *, num_classes, image_size, weights, x_train, y_train, x_val, y_val,
                batch_size, epochs, learning_rate, seed, verbose) -> dict:
    """(b): ``covidxr.training.fine_tune`` on cached images (BatchSequence, oversample)."""
    model = make_model(backbone, num_classes=num_classes, image_size=image_size, weights=weights, seed=seed)
    seq = sampling.BatchSequence(x_train, y_train, num_classes=num_classes, batch_size=batch_size,
                                 strategy="oversample", shuffle=True, seed=seed + 1)
    images_per_epoch, steps = len(seq.epoch_indices(0)), len(seq)
    # The data side alone: one epoch of __getitem__ (what fit asks the sequence for).
    start = time.perf_counter()
    for i in range(steps):
        seq[i]
    getitem_ms = 1000 * (time.perf_counter() - start) / steps
    timer = EpochTimer()
    start = time.perf_counter()
    _, info = training.fine_tune(model, x_train, y_train, x_val, y_val, num_classes=num_classes,
                              epochs=1 + epochs, learning_rate=learning_rate, fine_tune_from="auto",
                              batch_size=batch_size, strategy="oversample", seed=seed, callbacks=[timer],
                              verbose=verbose)
    out = summarize(timer, images_per_epoch, steps)
    out.update({"fit_seconds": time.perf_counter() - start, "getitem_ms_per_batch": getitem_ms,
                "val_images": int(len(x_val)), "unfrozen_layers": len(info["unfrozen"])})
    del model
    return out


def pipeline_ms_per_batch(x_train, y_train, *, num_classes, batch_size, images_per_epoch, seed, epochs=3):
    """The input pipeline alone, as ``fit`` drives it (Keras' data adapter, no model):
    ms per batch for (a) in-memory arrays and (b) the BatchSequence; the last of ``epochs``
    epochs. Uses a private Keras helper: returns None where it is not available."""
    try:
        from keras.src.trainers.data_adapters import get_data_adapter
    except ImportError:
        return None
    rng = np.random.default_rng(seed)
    size = x_train.shape[1]
    x = rng.integers(0, 256, (images_per_epoch, size, size, 1), dtype=np.uint8)
    labels = np.arange(images_per_epoch) % num_classes
    y = labels.astype(np.float32)[:, None] if num_classes == 2 else np.eye(num_classes, dtype=np.float32)[labels]
    seq = sampling.BatchSequence(x_train, y_train, num_classes=num_classes, batch_size=batch_size,
                                 strategy="oversample", shuffle=True, seed=seed)
    backend = keras.backend.backend()
    out = {}
    for name, adapter in (("a", get_data_adapter(x, y, batch_size=batch_size, shuffle=True)),
                          ("b", get_data_adapter(seq, shuffle=True))):
        for _ in range(epochs):
            adapter.on_epoch_begin()
            start = time.perf_counter()
            if backend == "tensorflow":
                batches = sum(1 for _ in adapter.get_tf_dataset())
            elif backend == "jax":
                batches = sum(1 for _ in adapter.get_jax_iterator())
            else:
                batches = sum(1 for _ in adapter.get_numpy_iterator())
            seconds = time.perf_counter() - start
            adapter.on_epoch_end()
        out[name] = 1000 * seconds / batches
    return out


# --------------------------------------------------------------------------- breakdown

def breakdown(*, data_dir, backbone, image_size, batch_size, epochs, weights, cache_dir, runs_dir, seed) -> dict:
    """One ``train`` run; its ``config.json["timing"]``."""
    config = train.TrainConfig(data_dir=str(data_dir), backbone=backbone, weights=weights, image_size=image_size,
                               batch_size=batch_size, epochs=epochs, fine_tune_epochs=epochs,
                               strategy="oversample", seed=seed, cache_dir=str(cache_dir),
                               runs_dir=str(runs_dir), verbose=0)
    start = time.perf_counter()
    log = io.StringIO()   # train() logs to stderr; keep the benchmark's output readable
    with warnings.catch_warnings(), contextlib.redirect_stderr(log):
        warnings.simplefilter("ignore")
        run_dir = train.train(config)
    outside = time.perf_counter() - start
    record = json.loads((Path(run_dir) / "config.json").read_text())
    import pandas as pd

    history = pd.read_csv(Path(run_dir) / "history.csv")
    history_rows = len(history)
    epoch_seconds = {f"phase{int(ph)}": [round(float(v), 2) for v in g["seconds"]]
                     for ph, g in history.groupby("phase")} if "seconds" in history else {}
    return {"timing": record.get("timing", {}), "call_seconds": outside, "epochs_run": history_rows,
            "log_tail": log.getvalue().splitlines()[-6:], "epoch_seconds": epoch_seconds,
            "config": {k: v for k, v in config.to_dict().items()
                       if k in ("backbone", "weights", "image_size", "batch_size", "epochs",
                                "fine_tune_epochs", "strategy")}}


def print_breakdown(result):
    timing = result["timing"]
    wall = timing.get("wall_seconds")

    def line(key, note=""):
        value = timing.get(key)
        if not isinstance(value, (int, float)):
            print(f"  {key:24s} {'n/a':>9s}")
            return
        unit = "" if key == "train_steps" else " s"
        share = f"{100 * value / wall:6.1f} %" if wall and unit else ""
        shown = f"{value:9d}" if key == "train_steps" else f"{value:9.2f}"
        print(f"  {key:24s} {shown}{unit:2s} {share}{note}")

    print(f"wall-time breakdown of one run (covidxr.train.train, {result['config']}, "
          f"{result['epochs_run']} epochs run; call took {result['call_seconds']:.1f} s):")
    for key in PARTS:
        line(key)
    line("wall_seconds")
    print("  overlapping aggregates:")
    for key in AGGREGATES:
        line(key)
    line("train_steps")
    if result.get("epoch_seconds"):
        print("  epoch seconds from history.csv (train + validation + callbacks): "
              + "; ".join(f"{k} {v}" for k, v in result["epoch_seconds"].items()))
    present = [k for k in PARTS if isinstance(timing.get(k), (int, float))]
    missing = [k for k in PARTS + ("wall_seconds", "train_steps") if k not in timing]
    if wall:
        total = sum(timing[k] for k in present)
        print(f"  sum of the parts present: {total:.2f} s = {100 * total / wall:.1f} % of wall"
              + ("" if "other_seconds" in timing else
                 f" (unaccounted without other_seconds: {wall - total:.2f} s)"))
    if missing:
        print(f"  missing from config.json['timing'] (n/a): {', '.join(missing)}")
    return missing


# --------------------------------------------------------------------------- main

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="resnet50,vgg16,vgg19", help="comma-separated registry names")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="training steps per epoch (both paths)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs, after one warm-up epoch")
    parser.add_argument("--weights", default="none", help="'none' (default), 'imagenet' or a weights file")
    parser.add_argument("--task", default="covid-vs-rest")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--cache-dir", default=None, help="default: a temporary folder, removed afterwards")
    parser.add_argument("--breakdown-epochs", type=int, default=2, help="phase 1 and phase 2 epochs of the run")
    parser.add_argument("--skip-breakdown", action="store_true")
    parser.add_argument("--repeats", type=int, default=1,
                        help="fits per path and backbone, order alternating (b,a then a,b ...); median rate")
    parser.add_argument("--verbose", default=0, help="Keras fit verbosity for both paths (default 0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, metavar="OUT", help="write every figure to this JSON file")
    args = parser.parse_args(argv)
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    for b in backbones:
        models.get_backbone(b)
    if min(args.steps, args.epochs, args.batch_size, args.repeats) < 1:
        parser.error("--steps, --epochs, --batch-size and --repeats must be >= 1")
    verbose = int(args.verbose) if str(args.verbose).isdigit() else args.verbose
    weights = None if args.weights.lower() == "none" else args.weights
    lr = train.TrainConfig().resolved_fine_tune_learning_rate
    task = data.get_task(args.task)

    report = {"keras_backend": keras.backend.backend(), "keras_version": keras.__version__,
              "device": device_description(), "cpu": cpu_description(), "load_average_start": load_average(),
              "image_size": args.image_size, "batch_size": args.batch_size, "steps": args.steps,
              "timed_epochs": args.epochs, "weights": args.weights, "task": task.name,
              "fine_tune_learning_rate": lr, "backbones": {}}
    print(f"backend: {report['keras_backend']} (Keras {keras.__version__}); device: {report['device']}")
    print(f"cpu: {report['cpu']}; load average (1/5/15 min) at start: {report['load_average_start']}")
    print(f"{args.image_size}px, batch {args.batch_size}, {args.steps} steps/epoch, 1 warm-up + "
          f"{args.epochs} timed epoch(s), weights={args.weights}, task {task.name}, lr {lr:g}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_dir = Path(args.data_dir)
        if (data_dir / "metadata.csv").is_file() or (data_dir.is_dir() and any(data_dir.iterdir())):
            report["data"] = str(data_dir.resolve())
        else:
            data_dir = write_synthetic_collection(tmp / "synthetic")
            report["data"] = "synthetic"
            print(f"NOTE: no dataset at {args.data_dir}; using a synthetic collection of "
                  f"{len(list((data_dir / 'images').iterdir()))} PNG images in {data_dir} (same code "
                  "path, synthetic pictures)")
        cache_dir = Path(args.cache_dir) if args.cache_dir else tmp / "cache"
        split = load_split(data_dir, task=task.name, seed=args.seed)
        start = time.perf_counter()
        cache = images.build_cache(split, image_size=args.image_size, cache_dir=cache_dir, progress=False)
        report["cache_build_seconds"] = time.perf_counter() - start
        lookup = {c: i for i, c in enumerate(task.classes)}
        parts = {}
        for part in ("train", "val"):
            rows = split[split["part"] == part]
            rows = rows[rows["image"].isin(set(cache.rows["image"]))]
            parts[part] = (cache.select(rows["image"]), rows["label"].map(lookup).to_numpy(np.int64))
        (x_all, y_all), (x_val, y_val) = parts["train"], parts["val"]
        target = args.steps * args.batch_size
        keep = subsample_for_steps(y_all, num_classes=task.num_classes, images_per_epoch=target, seed=args.seed)
        x_train, y_train = x_all[keep], y_all[keep]
        print(f"data: {report['data']} -> cache {cache.key} ({len(cache)} images, "
              f"{report['cache_build_seconds']:.1f} s); train part {len(y_all)} images "
              f"{np.bincount(y_all, minlength=task.num_classes).tolist()}, subsampled to "
              f"{np.bincount(y_train, minlength=task.num_classes).tolist()} so that an oversampled epoch "
              f"is {target} images; validation {len(y_val)} images")
        report.update({"train_images_subset": int(len(y_train)), "val_images": int(len(y_val))})

        pipe = pipeline_ms_per_batch(x_train, y_train, num_classes=task.num_classes, batch_size=args.batch_size,
                                     images_per_epoch=args.steps * args.batch_size, seed=args.seed)
        report["pipeline_ms_per_batch"] = pipe
        if pipe:
            print(f"input pipeline alone (Keras data adapter, no model): (a) arrays {pipe['a']:.2f} ms/batch, "
                  f"(b) BatchSequence {pipe['b']:.2f} ms/batch")
        ratios, cpu_ratios = {}, {}
        common = dict(num_classes=task.num_classes, image_size=args.image_size, weights=weights,
                      batch_size=args.batch_size, epochs=args.epochs, learning_rate=lr, seed=args.seed,
                      verbose=verbose)
        for backbone in backbones:
            runs_a, runs_b = [], []
            for repeat in range(args.repeats):   # alternate the order: b, a; a, b; ...
                for path in (("b", "a") if repeat % 2 == 0 else ("a", "b")):
                    keras.backend.clear_session()
                    if path == "b":
                        runs_b.append(run_project(backbone, x_train=x_train, y_train=y_train, x_val=x_val,
                                                  y_val=y_val, **common))
                    else:
                        per_epoch = runs_b[0]["images_per_epoch"] if runs_b else len(
                            sampling.BatchSequence(x_train, y_train, num_classes=task.num_classes,
                                                   strategy="oversample").epoch_indices(0))
                        runs_a.append(run_bare(backbone, images_per_epoch=per_epoch, **common))
            a, b = combine(runs_a), combine(runs_b)
            b.update({k: runs_b[0][k] for k in ("getitem_ms_per_batch", "val_images", "unfrozen_layers")})
            ratio = b["images_per_second"] / a["images_per_second"]
            ratios[backbone] = ratio
            cpu_ratios[backbone] = b["images_per_cpu_second"] / a["images_per_cpu_second"]
            report["backbones"][backbone] = {"a_bare_fit": a, "b_project": b, "ratio_b_over_a": ratio,
                                             "load_average": load_average()}
            first = b["runs"][0]
            print(f"\n{backbone}: {first['steps']} steps x {args.batch_size} = {first['images_per_epoch']} "
                  f"images/epoch, {b['timed_epochs']} timed epochs per path ({args.repeats} fit(s) each), "
                  f"{b['unfrozen_layers']} unfrozen backbone layers with weights")
            print(f"  {'path':36s} {'img/s':>7s} {'mean':>7s} {'ms/step':>8s} {'cpu/wall':>8s} {'img/cpu-s':>9s} "
                  f"{'warm-up s':>9s}  img/s per timed epoch")
            for label, r in (("(a) bare fit, in-memory arrays", a), ("(b) fine_tune, cache+BatchSequence", b)):
                print(f"  {label:36s} {r['images_per_second']:7.1f} {r['mean_images_per_second']:7.1f} "
                      f"{r['step_ms']:8.1f} {r['cpu_share']:8.2f} {r['images_per_cpu_second']:9.1f} "
                      f"{r['warmup_train_seconds']:9.1f}  {r['images_per_second_per_epoch']}")
            print(f"  ratio b/a: {ratio:.3f} (medians; means: "
                  f"{b['mean_images_per_second'] / a['mean_images_per_second']:.3f}; per CPU-second: "
                  f"{b['images_per_cpu_second'] / a['images_per_cpu_second']:.3f})")
            print(f"  (b) besides: validation {b['validation_seconds_per_epoch']:.2f} s/epoch for {b['val_images']} "
                  f"images (not counted; {b['validation_seconds_per_epoch'] / (first['images_per_epoch'] / b['images_per_second']):.0%}"
                  f" of an epoch's training time), warm-up validation {b['warmup_validation_seconds']:.1f} s, "
                  f"BatchSequence.__getitem__ alone {b['getitem_ms_per_batch']:.2f} ms/batch")
            print(f"  load average now: {report['backbones'][backbone]['load_average']}")
        worst = min(ratios.values())
        report.update({"ratio": worst, "ratio_per_cpu_second": min(cpu_ratios.values()),
                       "ratios": ratios, "ratios_per_cpu_second": cpu_ratios})
        print("\nb/a per backbone (median img/s): " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
        print("b/a per backbone (img per process CPU-second, less sensitive to a shared CPU's load): "
              + ", ".join(f"{k} {v:.3f}" for k, v in cpu_ratios.items()))
        print(f"ratio: {worst:.3f}")

        if not args.skip_breakdown:
            keras.backend.clear_session()
            print()
            result = breakdown(data_dir=data_dir, backbone=backbones[0], image_size=args.image_size,
                               batch_size=args.batch_size, epochs=args.breakdown_epochs, weights=args.weights,
                               cache_dir=cache_dir, runs_dir=tmp / "runs", seed=args.seed)
            result["missing_keys"] = print_breakdown(result)
            report["breakdown"] = result
    report["load_average_end"] = load_average()
    print(f"load average at end: {report['load_average_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=float) + "\n")
        print(f"figures written to {args.json}")
    if not args.skip_breakdown:
        print(f"ratio: {worst:.3f}")   # again as the last line, for scripts
    return 0


if __name__ == "__main__":
    sys.exit(main())
