"""mgcam-masks: write the body mask of every image under a data set folder.

  mgcam-masks --data_dir=/data/Market-1501
  mgcam-masks --data_dir=/data/MARS --num_workers=4
  mgcam-masks --data_dir=/data/mine --model_path=pose_landmark_full.tflite
  mgcam-masks --data_dir=/data/Market-1501 --segmenter=distilled

Every image folder `X` gets a mask folder `X_seg` with `NAME.png` (0 =
background, 255 = body) for `NAME.jpg`; below a split folder the suffix goes
on the split (MARS: `bbox_train/0001/` -> `bbox_train_seg/0001/`). Masks
follow MediaPipe BlazePose-full's recipe (`mgcam_tf/segmentation/graph_recipe.py`), or with --segmenter=distilled
come from the small network trained on BlazePose's masks
(mgcam_tf/segmentation/distilled.py; docs/PERFORMANCE.md, "Cheaper masks":
several times faster, IoU against BlazePose's masks there). Masks already
there are kept, so a killed run is resumed by running the same command again.

On first use the model file is taken out of the `mediapipe==0.10.21` wheel
(fetched with pip into --cache_dir, checked against its sha256); without
network access, pass the file or the wheel with --model_path.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags

from mgcam_tf.cli.common import ProgressBar, quiet_tflite_start, run_tool

FLAGS = flags.FLAGS

flags.DEFINE_string("data_dir", None, "Data set folder: every folder below it that holds "
                    "images (.jpg, .jpeg, .png, .bmp) gets a `_seg` mask folder.")
flags.DEFINE_string("model_path", "", "pose_landmark_full.tflite, or the mediapipe 0.10.21 "
                    "wheel holding it. Empty: $MGCAM_MASK_MODEL, else fetched into --cache_dir. "
                    "With --segmenter=distilled: its weights file (empty: the shipped one).")
flags.DEFINE_string("segmenter", "", "blazepose (BlazePose-full, the masks of the shared data) "
                    "or distilled (the small network trained on its masks); empty: "
                    "$MGCAM_SEGMENTER, else mgcam_tf.segmentation.choice.DEFAULT_SEGMENTER.")
flags.DEFINE_string("cache_dir", "", "Where the fetched model is kept (default "
                    "$MGCAM_CACHE_DIR, else ~/.cache/mgcam_tf).")
flags.DEFINE_integer("num_workers", 0, "Worker threads, each with its own interpreter; "
                     "0: one per CPU core.", lower_bound=0)
flags.DEFINE_bool("skip_bad_images", False, "Skip (and list) images that cannot be "
                  "decoded instead of stopping at the first one.")
flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.")

_BAD_LISTED = 10


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # Imported here so that --help and flag errors answer without loading TF.
    from mgcam_tf.segmentation import choice, writer

    segmenter = choice.for_model_file(FLAGS.segmenter, FLAGS.model_path)
    images, mask_paths = writer.mask_jobs(FLAGS.data_dir)
    if images and segmenter == choice.BLAZEPOSE:
        from mgcam_tf.segmentation import model_file

        model_path = model_file.resolve_model_path(FLAGS.model_path or None,
                                                   FLAGS.cache_dir or None)
        quiet_tflite_start(model_path)
    folders = len({os.path.dirname(m) for m in mask_paths})
    bad: list[tuple[str, Exception]] = []
    bar = ProgressBar("masks", len(images), FLAGS.progress)
    start = time.monotonic()
    try:
        written = writer.write_masks(
            images, mask_paths, model_path=FLAGS.model_path or None,
            num_workers=FLAGS.num_workers or None, progress=bar.advance,
            on_bad_image=(lambda path, err: bad.append((path, err)))
            if FLAGS.skip_bad_images else None,
            cache_dir=FLAGS.cache_dir or None, segmenter=segmenter)
    finally:
        bar.close()
    seconds = time.monotonic() - start
    existing = len(images) - written - len(bad)
    for path, err in bad[:_BAD_LISTED]:
        print(f"skipped: {err}", file=sys.stderr)
    if len(bad) > _BAD_LISTED:
        print(f"skipped: ... and {len(bad) - _BAD_LISTED} more", file=sys.stderr)
    rate = f" ({written / seconds:.1f} images/s)" if written and seconds > 0 else ""
    print(f"{written} masks written ({segmenter}) in {seconds:.1f} s{rate}, "
          f"{existing} already there, "
          f"{len(bad)} bad images skipped; {len(images)} images in {folders} mask folders "
          f"under {FLAGS.data_dir}")


def run():
    """Console-script entry point of mgcam-masks."""
    flags.mark_flag_as_required("data_dir")
    run_tool(main, __name__)


if __name__ == "__main__":
    run()
