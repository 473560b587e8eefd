"""Training-input speed of mgcam_tf.data.pipeline, beside a per-image OpenCV loop run in the same process.

  python benchmarks/bench_pipeline.py              # about a minute on 2 cores
  python benchmarks/bench_pipeline.py --repeats=1

Data: ../shared/data/cuhk03_pair1/bounding_box_train (6,264 JPEG crops of
about 66x196 to 140x325 px, each with a PNG mask), or --data_dir. Every image
and mask is read once before timing so that all runs find them in the page
cache.

- first pass: `train_dataset(...)` as training uses it (endless, no cache),
  one epoch's worth of batches of 128 (read + decode + resize of image and
  mask to 160x64, random mirror of image, mask and target, normalisation,
  attention target) timed in steady state, after one warm-up batch.
- cached: the same with `cache="memory"`; one epoch fills the cache, the
  next epochs are timed (shuffle, mirror, normalisation and batching still
  run).
- recipe: the cached pipeline with every augmentation of the modern recipe
  on (`mgcam_tf.data.augment`: pad 10 + random crop, colour jitter 0.3, hue
  0.1, grayscale 0.1, random erasing 0.5) and P x K batches, as
  `cuhk03_pair1_recipe_*` trains (which uses no colour jitter: this is the
  dearest case). The trainer takes about 300 images/s in mixed_bfloat16 on
  this 2-core CPU: the pipeline must stay well above that.
- baseline: what the official Caffe data layer does per image, one image at
  a time in Python: cv2.imread of image and mask, cv2.resize of both to
  64x160, a coin flip and cv2.flip of both.
  Needs opencv-python-headless (benchmark only; the library does not use it).

Each figure is the median of --repeats runs, interleaved so that load from
other processes hits all three alike; process CPU time per image is printed
too (a steadier figure on a shared machine). The last line of output is one
JSON object with first_pass_images_per_s, cached_images_per_s,
recipe_images_per_s, baseline_images_per_s (plus a few more).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_DATA = pathlib.Path(os.environ.get("MGCAM_SHARED_DATA", REPO.parent / "shared" / "data"))


def _timed(run) -> tuple[float, float]:
    """(images per second, CPU microseconds per image) of run() -> images."""
    wall, cpu = time.perf_counter(), time.process_time()
    images = run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return images / wall, cpu / images * 1e6


def _batches(iterator, count: int) -> int:
    """Pulls `count` batches; returns the images they held."""
    images = 0
    for _ in range(count):
        x, _ = next(iterator)
        images += int(x["rgbm"].shape[0])
    return images


def _baseline(image_paths, mask_paths) -> int:
    import cv2

    rng = random.Random(0)
    for image_path, mask_path in zip(image_paths, mask_paths):
        image = cv2.resize(cv2.imread(image_path, cv2.IMREAD_COLOR), (64, 160))
        mask = cv2.resize(cv2.imread(mask_path, cv2.IMREAD_GRAYSCALE), (64, 160))
        if rng.random() < 0.5:
            image, mask = cv2.flip(image, 1), cv2.flip(mask, 1)
    return len(image_paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=str(DEFAULT_DATA / "cuhk03_pair1"))
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cached_epochs", type=int, default=3,
                        help="timed epochs read from the cache, per repeat")
    args = parser.parse_args()

    import tensorflow as tf

    from mgcam_tf.data.layouts import load_dataset
    from mgcam_tf.data.augment import Augmentation
    from mgcam_tf.data.pipeline import pk_dataset, train_dataset

    recipe = Augmentation(pad_crop=10, color_jitter=0.3, hue_jitter=0.1, grayscale=0.1,
                          random_erasing=0.5)

    split = load_dataset(args.data_dir).train
    paths = [*split.image_paths, *split.mask_paths]
    total_bytes = sum(len(pathlib.Path(p).read_bytes()) for p in paths)   # page cache
    print(f"{len(split)} images + masks ({total_bytes / 2**20:.0f} MiB) from {args.data_dir}; "
          f"batch {args.batch_size}; TF {tf.__version__}; {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)

    results: dict[str, list[tuple[float, float]]] = {"first": [], "cached": [], "recipe": [],
                                                     "baseline": []}
    for repeat in range(args.repeats):
        results["baseline"].append(_timed(lambda: _baseline(split.image_paths, split.mask_paths)))

        # As training reads them: endless datasets, timed in steady state (one
        # warm-up batch first, so the fixed cost of starting the pipeline's
        # threads and graphs is not spread over the images).
        batches_per_epoch = len(split) // args.batch_size
        first = iter(train_dataset(split, args.batch_size, seed=repeat))
        _batches(first, 1)
        results["first"].append(_timed(lambda: _batches(first, batches_per_epoch)))

        cached = iter(train_dataset(split, args.batch_size, seed=repeat, cache="memory"))
        _batches(cached, batches_per_epoch + 1)           # fills the cache
        for _ in range(args.cached_epochs):
            results["cached"].append(_timed(lambda: _batches(cached, batches_per_epoch)))
        augmented = iter(pk_dataset(split, args.batch_size // 4, 4, seed=repeat,
                                    cache="memory", augmentation=recipe))
        _batches(augmented, 1)                            # decodes the split into memory
        results["recipe"].append(_timed(lambda: _batches(augmented, batches_per_epoch)))
        print(f"repeat {repeat + 1}: " + ", ".join(
            f"{name} {runs[-1][0]:,.0f} images/s ({runs[-1][1]:.0f} us CPU/image)"
            for name, runs in results.items()), flush=True)

    median = {name: float(np.median([r[0] for r in runs])) for name, runs in results.items()}
    cpu = {name: float(np.median([r[1] for r in runs])) for name, runs in results.items()}
    for name, label in (("first", "first pass (page cache)"), ("cached", "from memory cache"),
                        ("recipe", "recipe augmentations"),
                        ("baseline", "OpenCV per-image loop")):
        print(f"{label:>24}: {median[name]:>8,.0f} images/s  (median of {len(results[name])}; "
              f"{cpu[name]:.0f} us CPU per image)")
    print(json.dumps({
        "first_pass_images_per_s": round(median["first"], 1),
        "cached_images_per_s": round(median["cached"], 1),
        "recipe_images_per_s": round(median["recipe"], 1),
        "baseline_images_per_s": round(median["baseline"], 1),
        "cpu_us_per_image": {k: round(v, 1) for k, v in cpu.items()},
        "images": len(split), "batch_size": args.batch_size, "repeats": args.repeats,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
