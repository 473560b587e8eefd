"""Images per second of `mgcam_tf.segmentation.writer.write_masks` on real CUHK03 crops.

  python benchmarks/bench_masks.py [--images=800] [--repeats=3] [--num_workers=0]

Copies the first --images crops of `cuhk03_pair1/bounding_box_train`
(../shared/data, or $MGCAM_SHARED_DATA) into a temporary folder and writes
all their masks from scratch, --repeats times, with all cores
(--num_workers) and with one worker (num_workers=1), alternating so that
both see the same machine load, and with the distilled mask network
(`segmenter="distilled"`, mgcam_tf/segmentation/distilled.py: tf.data
decoding, batches of 64) beside them. Each timing covers the whole call:
model check or load, interpreters, decode, segmentation, PNG writes. The
last line is JSON: {"masks_images_per_s": ..., "single_process_images_per_s":
..., "distilled_images_per_s": ..., "distilled_cpu_ms_per_image": ...,
"distilled_speedup": ..., ...} (medians; the unprefixed keys are BlazePose's;
"single_process" is one worker thread, whose interpreter then uses all cores;
"cpu_ms_per_image" is CPU time, which other jobs on the machine barely change).
The model comes from $MGCAM_MASK_MODEL or the cache (`fetch_model`).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from mgcam_tf.segmentation import model_file
from mgcam_tf.segmentation import writer  # noqa: E402

SHARED = pathlib.Path(os.environ.get("MGCAM_SHARED_DATA", REPO.parent / "shared" / "data"))


def timed_run(images: list[str], out_dir: pathlib.Path, model: str | None,
              num_workers: int | None, segmenter: str = "blazepose") -> tuple[float, float]:
    """(images/s, CPU ms per image) of one write_masks call that writes every mask.

    CPU time (all threads of this process) per image barely moves with the
    machine's load, unlike images/s: it tells a slow run from a busy machine.
    """
    shutil.rmtree(out_dir, ignore_errors=True)
    out = [str(out_dir / (pathlib.Path(p).stem + ".png")) for p in images]
    start, cpu = time.perf_counter(), time.process_time()
    written = writer.write_masks(images, out, model_path=model, num_workers=num_workers,
                                 segmenter=segmenter)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert written == len(images), (written, len(images))
    return written / seconds, 1000.0 * cpu / written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=800)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num_workers", type=int, default=0, help="0: one per core")
    parser.add_argument("--model_path", default=None)
    args = parser.parse_args()

    source = SHARED / "cuhk03_pair1" / "bounding_box_train"
    if not source.is_dir():
        sys.exit(f"error: {source}: not found (set MGCAM_SHARED_DATA)")
    model = str(model_file.resolve_model_path(args.model_path))
    with tempfile.TemporaryDirectory(prefix="bench_masks_") as tmp:
        tmp_dir = pathlib.Path(tmp)
        (tmp_dir / "images").mkdir()
        images = []
        for name in sorted(p.name for p in source.glob("*.jpg"))[:args.images]:
            shutil.copyfile(source / name, tmp_dir / "images" / name)
            images.append(str(tmp_dir / "images" / name))
        # Warm-up: TensorFlow's first ops and the per-size resize tables.
        timed_run(images[:20], tmp_dir / "warmup", model, args.num_workers or None)
        timed_run(images[:20], tmp_dir / "warmup2", None, args.num_workers or None, "distilled")

        multi, single, cpu_ms, small, small_ms = [], [], [], [], []
        for r in range(args.repeats):
            rate, ms = timed_run(images, tmp_dir / "out", model, args.num_workers or None)
            multi.append(rate)
            cpu_ms.append(ms)
            single.append(timed_run(images, tmp_dir / "out", model, 1)[0])
            rate, ms = timed_run(images, tmp_dir / "out", None, args.num_workers or None,
                                 "distilled")
            small.append(rate)
            small_ms.append(ms)
            print(f"repeat {r + 1}/{args.repeats}: BlazePose all workers {multi[-1]:.1f} "
                  f"images/s ({cpu_ms[-1]:.1f} CPU ms/image), one worker {single[-1]:.1f} "
                  f"images/s; distilled {rate:.1f} images/s ({ms:.1f} CPU ms/image) "
                  f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    result = {
        "masks_images_per_s": round(statistics.median(multi), 1),
        "single_process_images_per_s": round(statistics.median(single), 1),
        "cpu_ms_per_image": round(statistics.median(cpu_ms), 2),
        "distilled_images_per_s": round(statistics.median(small), 1),
        "distilled_cpu_ms_per_image": round(statistics.median(small_ms), 2),
        "distilled_speedup": round(statistics.median(small) / statistics.median(multi), 2),
        "images": len(images),
        "num_workers": args.num_workers or writer.available_cores(),
        "cpu_cores": writer.available_cores(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
