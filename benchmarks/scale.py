"""How the cost grows with the number of images: a synthetic dataset of N images per size, timed
through the command line (each step a fresh process, its peak RSS read from ``wait4``).

For each size N (default 1k, 4k, 16k, 64k) it writes N JPEG radiograph-like images (three
classes, three images per patient, every image its own film) and a CSV manifest under
``--work`` (default: a new temporary folder, outside the repository), then times:

* ``eda cold``: ``covidxr eda`` on a new cache folder (decodes and hashes every image, finds the
  duplicate pairs); ``eda warm``: the same again (hash index and pairs stored);
* ``split cold``/``split warm``: ``covidxr split`` on another new cache folder, then again;
* ``cache cold``/``cache warm`` and ``features cold``/``features warm``: one
  ``covidxr train`` (VGG16, random weights, ``--image-size``, one phase-1 epoch, no phase 2), then
  a second one: the run's own ``cache_seconds`` and ``phase1_feature_seconds``
  (``--skip-train`` leaves them out);
* ``hash workers=1``/``hash workers=2``: cold hashing of the ``--compare`` size
  (default 16k, when it is among the sizes) with one and two processes, side by side in one run.

It prints one table (seconds, ms per image, peak RSS), the growth ratio for each 4× images and
the line ``workers 2/1: R`` (the done-when targets: warm ``eda`` on 16k ≤ 15 s, 64k/16k warm
``eda`` ratio ≤ 5, workers 2/1 ≤ 0.65 on 16k).

Usage::

    python benchmarks/scale.py [--sizes 1000,4000,16000,64000] [--work DIR] [--image-px 256]
        [--image-size 64] [--compare 16000] [--skip-train | --train-sizes 1000,4000] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("COVID-19", "Pneumonia", "No Finding")
ROOT = Path(__file__).resolve().parents[1]


def _film(rng, px):
    """A radiograph-like grey image (px, px): body, two lungs, random blobs and noise."""
    y, x = np.mgrid[0:px, 0:px] / px
    img = 150 + 40 * np.sin(x * np.pi)
    for cx in (0.3, 0.7):
        img -= 70 * (((x - cx) / 0.17) ** 2 + ((y - 0.5) / 0.33) ** 2 < 1)
    low = rng.uniform(-50, 50, (6, 6))   # low-frequency structure of its own: a film of its own
    img += np.asarray(Image.fromarray(low.astype(np.float32)).resize((px, px), Image.Resampling.BICUBIC))
    img += 5 * rng.standard_normal((px, px))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def make_dataset(folder: Path, n: int, *, px: int, seed=0) -> Path:
    """``n`` JPEG films and ``manifest.csv`` (path, label, patient) in ``folder``; reused when complete."""
    manifest = folder / "manifest.csv"
    if manifest.is_file():
        return manifest
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = ["path,label,patient"]
    for i in range(n):
        name = f"images/im{i:06d}.jpg"
        _film(rng, px).save(folder / name, quality=85)
        patient = i // 3
        lines.append(f"{name},{CLASSES[patient % 3]},p{patient}")
    manifest.with_suffix(".tmp").write_text("\n".join(lines) + "\n")
    os.replace(manifest.with_suffix(".tmp"), manifest)
    return manifest


def timed(args, *, env=None) -> tuple[float, float]:
    """Run a command; its wall seconds and peak RSS in MiB (``wait4``: this child only)."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(map(str, args))}\n{err[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def _covidxr(*args) -> list:
    return [sys.executable, "-m", "covidxr.cli", *map(str, args)]


def _hash_only(manifest, cache, workers) -> list:
    code = ("import sys, warnings; warnings.simplefilter('ignore'); from covidxr.data import load_dataset; "
            "from covidxr.images import image_hashes; "
            "image_hashes(load_dataset(sys.argv[1], task=None), cache_dir=sys.argv[2], workers=int(sys.argv[3]))")
    return [sys.executable, "-c", code, str(manifest), str(cache), str(workers)]


def bench_size(n, work: Path, opts, env) -> dict:
    """Every step's ``(seconds, MiB)`` for one size."""
    folder = work / f"n{n}"
    t = time.perf_counter()
    manifest = make_dataset(folder, n, px=opts.image_px)
    print(f"[{n}] dataset ready ({time.perf_counter() - t:.0f} s)", flush=True)
    data = ["--data-dir", manifest, "--layout", "manifest", "--task", "three-class"]
    workers = [] if opts.workers is None else ["--workers", opts.workers]
    out, stamp = {}, time.strftime("%H%M%S")
    for name, cache in (("eda", folder / f"cache-eda-{stamp}"), ("split", folder / f"cache-split-{stamp}")):
        for state in ("cold", "warm"):
            extra = ["--out", folder / f"split-{state}-{stamp}.csv"] if name == "split" else []
            out[f"{name} {state}"] = timed(_covidxr(name, *data, "--cache-dir", cache, *workers, *extra), env=env)
            print(f"[{n}] {name} {state}: {out[f'{name} {state}'][0]:.1f} s", flush=True)
    if not opts.skip_train and (opts.train_sizes is None or n in opts.train_sizes):
        cache = folder / f"cache-eda-{stamp}"
        for state in ("cold", "warm"):
            runs = folder / f"runs-{state}-{stamp}"
            seconds, mib = timed(_covidxr("train", *data, "--cache-dir", cache, *workers, "--backbone", "vgg16",
                                          "--weights", "none", "--image-size", opts.image_size, "--epochs", 1,
                                          "--fine-tune-epochs", 0, "--runs-dir", runs, "--no-tensorboard",
                                          "--verbose", 0, "--no-memory-check"), env=env)
            timing = json.loads(next(runs.glob("*/config.json")).read_text())["timing"]
            out[f"cache {state}"] = (timing["cache_seconds"], mib)
            out[f"features {state}"] = (timing["phase1_feature_seconds"], mib)
            out[f"train {state}"] = (seconds, mib)
            print(f"[{n}] train {state}: {seconds:.1f} s ({timing})", flush=True)
    if n == opts.compare:
        for w in (2, 1):
            out[f"hash workers={w}"] = timed(_hash_only(manifest, folder / f"cache-w{w}-{stamp}", w), env=env)
            print(f"[{n}] cold hashing, workers={w}: {out[f'hash workers={w}'][0]:.1f} s", flush=True)
    return out


def report(results: dict) -> str:
    """The markdown table, growth ratios and the workers line."""
    sizes = sorted(results)
    steps = list(dict.fromkeys(step for n in sizes for step in results[n]))
    lines = ["| step | " + " | ".join(f"{n:,} images" for n in sizes) + " | growth per 4× |",
             "| --- | " + " | ".join("---" for _ in sizes) + " | --- |"]
    for step in steps:
        cells, growth = [], []
        for n in sizes:
            if step in results[n]:
                s, mib = results[n][step]
                cells.append(f"{s:.1f} s · {1000 * s / n:.2f} ms/img · {mib:.0f} MiB")
                if n // 4 in results and step in results[n // 4] and results[n // 4][step][0] > 0:
                    growth.append(f"{s / results[n // 4][step][0]:.1f}")
            else:
                cells.append("")
        lines.append(f"| {step} | " + " | ".join(cells) + f" | {', '.join(growth)} |")
    for n in sizes:
        if "hash workers=1" in results[n]:
            ratio = results[n]["hash workers=2"][0] / results[n]["hash workers=1"][0]
            lines.append(f"\nworkers 2/1: {ratio:.2f} (cold hashing of {n:,} images, "
                         f"{results[n]['hash workers=2'][0]:.1f} s vs {results[n]['hash workers=1'][0]:.1f} s)")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,4000,16000,64000", help="comma-separated numbers of images")
    p.add_argument("--work", default=None, help="work folder (default: a new temporary folder); datasets are reused")
    p.add_argument("--image-px", type=int, default=256, help="side of the synthetic JPEG files")
    p.add_argument("--image-size", type=int, default=64, help="train: input side (cache and features)")
    p.add_argument("--compare", type=int, default=16000, help="size at which cold hashing is timed with 1 and 2 workers")
    p.add_argument("--workers", type=int, default=None, help="--workers of the timed commands (default: all cores)")
    p.add_argument("--skip-train", action="store_true", help="leave out the cache and phase-1 feature steps")
    p.add_argument("--train-sizes", default=None, help="comma-separated sizes at which to time them (default: all)")
    opts = p.parse_args(argv)
    if opts.train_sizes is not None:
        opts.train_sizes = {int(s) for s in opts.train_sizes.split(",") if s.strip()}
    sizes = [int(s) for s in opts.sizes.split(",") if s.strip()]
    work = Path(opts.work or tempfile.mkdtemp(prefix="covidxr-scale-")).resolve()
    if ROOT in work.parents or work == ROOT:
        raise SystemExit(f"--work must be outside the repository ({ROOT}). Received: work={str(work)!r}")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2", MPLBACKEND="Agg")
    print(f"work folder: {work}", flush=True)
    results = {n: bench_size(n, work, opts, env) for n in sizes}
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
