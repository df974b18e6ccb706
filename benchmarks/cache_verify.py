"""What the cache's integrity check costs: opening a cache with and without its checksums.

``ImageCache.open`` (and so every ``build_cache`` that reuses a cache) reads ``images.npy``
and ``rows.csv`` once to compare their sha256 with the checksums recorded at build time.

Usage::

    python benchmarks/cache_verify.py --data-dir /work/shared/data/covid-chestxray-dataset \\
        [--image-size 224] [--repeats 7] [--cache-dir DIR]

Prints the cache's size and the best/median milliseconds of each step (the file is in the
page cache after the first read; a cold read adds the disk's time for the same bytes, which
``np.load`` would pay anyway once the images are used).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

from covidxr import data, images
from covidxr.images import cache as image_cache


def _timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return min(times), statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--cache-dir", default=None, help="default: a temporary folder")
    args = parser.parse_args(argv)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = data.load_dataset(args.data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = args.cache_dir or tmp
        start = time.perf_counter()
        cache = images.build_cache(frame, image_size=args.image_size, cache_dir=cache_dir, progress=False)
        mib = (cache.path / "images.npy").stat().st_size / 2 ** 20
        print(f"cache: {len(cache)} images at {args.image_size} px, images.npy {mib:.1f} MiB "
              f"(built or reused in {time.perf_counter() - start:.2f} s)")
        steps = {
            "ImageCache.open(verify=True)": lambda: images.ImageCache.open(cache.path),
            "ImageCache.open(verify=False)": lambda: images.ImageCache.open(cache.path, verify=False),
            "sha256 of images.npy": lambda: image_cache._sha256(cache.path / "images.npy"),
            "build_cache reuse (stat + verify)": lambda: images.build_cache(
                frame, image_size=args.image_size, cache_dir=cache_dir, progress=False),
        }
        for name, fn in steps.items():
            best, median = _timed(fn, args.repeats)
            print(f"{name:<36} best {best:7.1f} ms   median {median:7.1f} ms")
        best, _ = _timed(steps["sha256 of images.npy"], args.repeats)
        print(f"checksum throughput: {mib / best * 1000:.0f} MiB/s ({best / mib:.2f} ms per MiB)")


if __name__ == "__main__":
    main()
