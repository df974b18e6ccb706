"""What a per-epoch checkpoint of phase 2 writes, and what it costs the training thread.

ResNet50 (random weights, built as ``covidxr.models.build_model`` builds it, augmentation
included), unfrozen from ``--fine-tune-from`` (default ``"auto"``, the last block, as phase 2
does) and compiled as ``covidxr.training`` compiles it, is fitted on random uint8 images in
memory with the callbacks ``covidxr.training.run_phase`` gives phase 2 (early stopping,
ReduceLROnPlateau, the history recorder, the best-model keeper and
:class:`covidxr.training.RunCheckpoint`, last). A scripted ``val_auc`` rises every epoch, so
every epoch is a new best: the best full model (which is also early stopping's best: one file)
is written each time (the worst case, and what a run that keeps improving writes).

Three fits, each ``--epochs`` epochs (the first one, with tracing/compilation, is left out):

* ``none``: no checkpoint: the epoch time of training itself;
* ``sync``: the checkpoint written on the training thread (``background=False``; what every
  epoch cost before the background writer);
* ``background``: the variables copied to host arrays on the training thread, the files
  written by the background writer (the default now).

Prints the files of one epoch's checkpoint (bytes each, total), the time of the checkpoint work
on the training thread per epoch (``RunCheckpoint.seconds``) and of the writes themselves
(``writer.write_seconds``), the median epoch time of each fit, and ratios: checkpoint time /
epoch time (``sync``, ``background``), and the last line ``ratio: N.NN`` (the sync
checkpoint's time over the epoch's). With ``--checkpoint-every N`` a run pays that 1/N times.

Usage::

    KERAS_BACKEND=tensorflow python benchmarks/checkpoint.py --image-size 64 --batch-size 16 \\
        --steps 4 --epochs 4 [--fine-tune-from auto] [--dir TMPDIR]

Not a test: figures depend on the machine, its disk and its load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from covidxr.models import build_model, resolve_fine_tune_from, set_trainable_from  # noqa: E402
from covidxr.training import EpochRecorder, RunCheckpoint, SaveBest, compile_model, schedules  # noqa: E402
from covidxr.training import checkpoint as checkpoint_module  # noqa: E402


class Rising(keras.callbacks.Callback):
    """First callback: a new best ``val_auc`` every epoch; times each epoch (begin to the end of
    the callback list, see :class:`EpochEnd`)."""

    def __init__(self):
        super().__init__()
        self.begin, self.seconds = None, []

    def on_epoch_begin(self, epoch, logs=None):
        self.begin = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs["val_auc"] = 0.5 + 0.4 * (1 - 1 / (epoch + 2))


class EpochEnd(keras.callbacks.Callback):
    """Last callback: closes the epoch's time opened by :class:`Rising`."""

    def __init__(self, rising):
        super().__init__()
        self.rising = rising

    def on_epoch_end(self, epoch, logs=None):
        self.rising.seconds.append(time.perf_counter() - self.rising.begin)


class TimedCheckpoint(RunCheckpoint):
    """:class:`RunCheckpoint` that also sums the time of its ``on_epoch_end`` (the training thread's
    share of the per-epoch checkpoints; the phase's start and end are left out)."""

    epoch_seconds = epoch_wait_seconds = 0.0

    def on_epoch_end(self, epoch, logs=None):
        start, waited = time.perf_counter(), self.writer.wait_seconds
        super().on_epoch_end(epoch, logs)
        self.epoch_seconds += time.perf_counter() - start
        self.epoch_wait_seconds += self.writer.wait_seconds - waited


def fit(args, mode, folder):
    keras.utils.set_random_seed(0)
    model = build_model("resnet50", num_classes=2, image_size=args.image_size, weights=None,
                        augmentation={"hflip": False}, seed=0)
    set_trainable_from(model, resolve_fine_tune_from(model, args.fine_tune_from))
    compile_model(model, num_classes=2, learning_rate=1e-4)
    n = args.steps * args.batch_size
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, args.image_size, args.image_size, 1), dtype=np.uint8)
    y = rng.integers(0, 2, (n, 1)).astype("float32")
    early_stopping, reduce_lr = schedules(args.epochs)
    rising = Rising()
    callbacks = [rising, early_stopping, reduce_lr, EpochRecorder(2), SaveBest(model)]
    checkpoint = None
    if mode != "none":
        checkpoint = TimedCheckpoint(folder, phase=2, full_model=model, epochs=args.epochs,
                                   early_stopping=early_stopping, reduce_lr=reduce_lr, recorder=callbacks[3],
                                   saver=callbacks[4], background=(mode == "background"))
        callbacks.append(checkpoint)
    callbacks.append(EpochEnd(rising))
    model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, shuffle=False, verbose=0, callbacks=callbacks)
    epoch = statistics.median(rising.seconds[1:])
    if checkpoint is None:
        return {"epoch": epoch}
    writes = max(1, len(checkpoint.written))
    return {"epoch": epoch, "checkpoint": checkpoint.epoch_seconds / writes,
            "wait": checkpoint.epoch_wait_seconds / writes}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=4, help="training steps per epoch")
    p.add_argument("--epochs", type=int, default=4, help="epochs per fit (the first is not timed)")
    p.add_argument("--fine-tune-from", default="auto")
    p.add_argument("--dir", default=None, help="where the checkpoints are written (default: a temporary folder)")
    args = p.parse_args(argv)

    files = defaultdict(list)  # (mode, file name) -> [(bytes, seconds)]
    real_save = checkpoint_module.save_arrays
    mode = None

    def measured(path, arrays):
        start = time.perf_counter()
        out = real_save(path, arrays)
        files[mode, Path(path).name].append((Path(path).stat().st_size, time.perf_counter() - start))
        return out

    checkpoint_module.save_arrays = measured
    results = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for mode in ("none", "sync", "background"):
            results[mode] = fit(args, mode, Path(tmp) / mode)
            print(f"{mode:>10}: median epoch {results[mode]['epoch']:.2f} s", flush=True)
    for mode in ("sync", "background"):  # the files of epochs 2.. (epoch 1 has no early-stopping file yet)
        per_epoch = [sum(seconds for (m, name), rows in files.items() for _, seconds in rows
                         if m == mode and f"-e{k}." in name) for k in range(2, args.epochs + 1)]
        results[mode]["write"] = statistics.median(per_epoch)
    sizes = {name: rows[0][0] for (m, name), rows in files.items() if m == "sync"}
    print(f"\nResNet50, {args.image_size} px, batch {args.batch_size}, {args.steps} steps/epoch, "
          f"fine-tune from {args.fine_tune_from!r}, Keras {keras.__version__} on {keras.backend.backend()}")
    epoch_files = {k: v for k, v in sizes.items() if "-e2." in k}
    print("one epoch's checkpoint (a new best each epoch):")
    for name, size in sorted(epoch_files.items()):
        print(f"  {name:<18} {size / 2 ** 20:8.1f} MiB")
    print(f"  {'total':<18} {sum(epoch_files.values()) / 2 ** 20:8.1f} MiB"
          f"  (and once per phase: base-p2.npz {sizes['base-p2.npz'] / 2 ** 20:.1f} MiB, end-p2.npz "
          f"{sizes['end-p2.npz'] / 2 ** 20:.1f} MiB)")
    epoch = results["none"]["epoch"]
    for mode in ("sync", "background"):
        r = results[mode]
        print(f"{mode:>10}: training thread {r['checkpoint']:.2f} s per checkpoint ({r['wait']:.2f} s of it waiting "
              f"for the previous write), its files {r['write']:.2f} s, "
              f"epoch {r['epoch']:.2f} s vs {epoch:.2f} s without: checkpoint / epoch "
              f"{r['checkpoint'] / epoch:.3f}, epoch time x{r['epoch'] / epoch:.2f}")
    print(f"ratio: {results['sync']['checkpoint'] / epoch:.2f}")


if __name__ == "__main__":
    main()
