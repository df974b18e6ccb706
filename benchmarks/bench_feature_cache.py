"""Phase 1 with and without cached backbone features: wall time and agreement.

    KERAS_BACKEND=tensorflow python benchmarks/bench_feature_cache.py --backbone resnet50 \
        --images 192 --image-size 128 --epochs 5

Both runs train the head only (backbone frozen, no augmentation) on the same random uint8
images with the same seed and batch order; the cached run includes the time to compute the
features. Prints one JSON line per run and the speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from covidxr.models import build_model  # noqa: E402
from covidxr.training import fit_head  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--val-images", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    size = args.image_size
    x = rng.integers(0, 256, (args.images, size, size, 1), dtype=np.uint8)
    y = (np.arange(args.images) % 2).astype(np.int64)
    xv = rng.integers(0, 256, (args.val_images, size, size, 1), dtype=np.uint8)
    yv = (np.arange(args.val_images) % 2).astype(np.int64)
    results, probs = {}, {}
    for cached in (True, False):
        keras.utils.set_random_seed(0)
        model = build_model(args.backbone, num_classes=2, image_size=size, weights=None, augmentation=None, seed=0)
        start = time.perf_counter()
        _, info = fit_head(model, x, y, xv, yv, num_classes=2, epochs=args.epochs, batch_size=args.batch_size,
                           cache_features=cached, patience=args.epochs, verbose=0)
        seconds = time.perf_counter() - start
        probs[cached] = model.predict(xv, verbose=0)
        results[cached] = {"cache_features": cached, "backbone": args.backbone, "images": args.images,
                           "val_images": args.val_images, "image_size": size, "epochs": args.epochs,
                           "batch_size": args.batch_size, "seconds": round(seconds, 2),
                           "feature_seconds": round(info["feature_seconds"], 2),
                           "fit_seconds": round(info["fit_seconds"], 2),
                           "keras_backend": keras.backend.backend(), "cpus": os.cpu_count()}
        print(json.dumps(results[cached]), flush=True)
    print(json.dumps({"speedup": round(results[False]["seconds"] / results[True]["seconds"], 2),
                      "max_abs_prob_difference": float(np.abs(probs[True] - probs[False]).max())}))


if __name__ == "__main__":
    main()
