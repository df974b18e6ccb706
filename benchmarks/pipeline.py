"""Images per second: batches from the warm decode-once cache vs decoding files every epoch.

The baseline does what ``ImageDataGenerator.flow_from_dataframe`` does: for every image of
every epoch, open the file, decode it and resize it (``keras.utils.load_img`` in grayscale
at the target size, nearest-neighbour as Keras' default, then ``img_to_array``), served
through the same ``keras.utils.PyDataset`` interface and the same shuffled order.

Usage::

    python benchmarks/pipeline.py --data-dir /work/shared/data/covid-chestxray-dataset \\
        [--image-size 224] [--epochs 2] [--batch-size 32] [--cache-dir DIR]

The last line is ``ratio: N.N`` (cache images/s divided by decode images/s).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import warnings

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from covidxr import data, images, sampling  # noqa: E402


class DecodeEverySequence(keras.utils.PyDataset):
    """Baseline: open + decode + resize each file whenever its batch is asked for."""

    def __init__(self, paths, labels, *, image_size, batch_size, seed=0):
        super().__init__()
        self.paths = np.asarray(paths)
        self.labels = np.asarray(labels)
        self.image_size = image_size
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self._order = np.random.default_rng((seed, 0)).permutation(len(self.paths))

    def __len__(self):
        return math.ceil(len(self.paths) / self.batch_size)

    def __getitem__(self, index):
        idx = self._order[index * self.batch_size: (index + 1) * self.batch_size]
        x = np.stack([
            keras.utils.img_to_array(
                keras.utils.load_img(self.paths[i], color_mode="grayscale",
                                     target_size=(self.image_size, self.image_size)),
                dtype="uint8")
            for i in idx
        ])
        return x, self.labels[idx].astype(np.float32)[:, None]

    def on_epoch_end(self):
        self.epoch += 1
        self._order = np.random.default_rng((self.seed, self.epoch)).permutation(len(self.paths))


def images_per_second(sequence, epochs):
    """Iterate ``sequence`` as ``fit`` does (every batch, then on_epoch_end); images/s."""
    count = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for i in range(len(sequence)):
            x, _ = sequence[i]
            count += len(x)
        sequence.on_epoch_end()
    return count / (time.perf_counter() - start), count


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--task", default="covid-vs-rest")
    parser.add_argument("--cache-dir", default=None, help="default: a temporary folder, removed afterwards")
    args = parser.parse_args(argv)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = data.load_dataset(args.data_dir, task=args.task)
    task = data.get_task(args.task)
    print(f"dataset: {len(frame)} images ({args.data_dir}), task {task.name}, "
          f"{args.image_size}px, batch {args.batch_size}, {args.epochs} epoch(s)")

    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = args.cache_dir or tmp
        start = time.perf_counter()
        cache = images.build_cache(frame, image_size=args.image_size, cache_dir=cache_dir, progress=False)
        print(f"cache build (cold, once): {time.perf_counter() - start:.1f} s -> {cache.path.name}")
        cache = images.ImageCache.open(cache.path)     # warm: a later run opens it
        labels = cache.labels(task.classes)
        seq = sampling.BatchSequence(cache.images, labels, num_classes=task.num_classes,
                                     batch_size=args.batch_size, seed=0)
        images_per_second(seq, 1)                      # page the memmap in (warm cache)
        cached, n_cached = images_per_second(seq, args.epochs)

    decode_seq = DecodeEverySequence(cache.rows["path"], labels, image_size=args.image_size,
                                     batch_size=args.batch_size)
    decoded, n_decoded = images_per_second(decode_seq, args.epochs)
    print(f"warm cache (BatchSequence): {cached:10.1f} images/s ({n_cached} images)")
    print(f"decode every epoch (flow_from_dataframe-style): {decoded:10.1f} images/s ({n_decoded} images)")
    print(f"ratio: {cached / decoded:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
