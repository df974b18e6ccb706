"""Speed of the bundled lung segmenter: loading it (offline, sha256 checked) and segmenting
``--n`` images at 256 px, on whatever CPU or GPU Keras sees.

    python benchmarks/segmenter.py [--data-dir ../shared/data/covid-chestxray-dataset] [--n 500]

Images are the collection's frontal X-rays, repeated up to ``--n`` (synthetic grey images when
no data folder is given); they are decoded and pad-resized before the clock starts, so the time
is the segmenter's forward pass and the mapping of each mask back to its image's size
(:func:`covidxr.lungmasks.segment`). Prints the times and the per-image cost.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def images(data_dir, n):
    """``n`` decoded grey images (uint8 (H, W))."""
    if data_dir is None:
        rng = np.random.default_rng(0)
        return [rng.integers(0, 255, (480, 400), dtype=np.uint8) for _ in range(n)]
    import warnings

    from covidxr.data import load_dataset
    from covidxr.images import load_image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = list(load_dataset(data_dir, task="covid-vs-rest")["path"])
    decoded = [load_image(p) for p in paths[: min(n, len(paths))]]
    return [decoded[i % len(decoded)] for i in range(n)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args(argv)
    greys = images(args.data_dir, args.n)
    started = time.perf_counter()
    from covidxr.models.segmenter import load_segmenter  # imports Keras and its backend

    imported = time.perf_counter() - started
    started = time.perf_counter()
    model, info = load_segmenter()
    loaded = time.perf_counter() - started
    from covidxr.lungmasks import segment

    segment(greys[:2], model, batch_size=args.batch_size)  # warm-up: builds the predict function
    started = time.perf_counter()
    masks = segment(greys, model, batch_size=args.batch_size)
    seconds = time.perf_counter() - started
    share = float(np.mean([m.mean() for m in masks]))
    print(f"segmenter {info['sha256'][:12]}: Keras imported in {imported:.2f} s, then checked and loaded in {loaded:.2f} s")
    print(f"{len(masks)} images at {info['image_size']} px in {seconds:.1f} s: {1000 * seconds / len(masks):.1f} ms "
          f"per image (mean lung share {share:.3f}, {os.cpu_count()} CPUs visible)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
