"""Trains the distilled mask network (`mgcam_tf.segmentation.distilled`) and ships its weights.

  nice -n 10 python tools/train_mask_net.py \
      --data_dir=../shared/data/cuhk03_pair1 --epochs=30 --max_minutes=15

Trains on `DATA_DIR/bounding_box_train` and BlazePose-full's masks beside it
(`bounding_box_train_seg`) only, plus the `bounding_box_train` of each of
--extra_train_dirs (for example `cuhk03_pair1_labeled`: the same training
people's hand-drawn boxes, framed a few pixels apart), then measures the agreement (mean per-image
IoU) of its masks with BlazePose's on `query` + `bounding_box_test` (the dev
split, never trained on), and writes the weights and a provenance record
(data, command, commit, agreement) to --output_dir (default: the package's
`mgcam_tf/segmentation/`, where they ship).
"""

import json
import os
import pathlib
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
REPO = pathlib.Path(__file__).resolve().parents[1]
flags.DEFINE_string("data_dir", str(REPO.parent / "shared" / "data" / "cuhk03_pair1"),
                    "Data set folder with bounding_box_train(_seg), query(_seg), "
                    "bounding_box_test(_seg).")
flags.DEFINE_list("extra_train_dirs", [], "More data set folders whose bounding_box_train "
                  "(and its BlazePose masks) is trained on too; never their query or test "
                  "crops.")
flags.DEFINE_integer("epochs", 8, "Epochs (the cosine schedule's length).")
flags.DEFINE_float("max_minutes", 15.0, "Stop after the epoch that passes this wall time.")
flags.DEFINE_integer("batch_size", 32, "Training batch size.")
flags.DEFINE_float("learning_rate", 3e-3, "Adam's peak learning rate.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_bool("mixed_bfloat16", False, "Train in Keras' mixed_bfloat16 policy (slower than "
                  "float32 on this AVX512_BF16 CPU without AMX: 0.37 against 0.27 CPU s a step).")
flags.DEFINE_string("init_weights", "", "Continue from these weights (a second run with a "
                    "fresh schedule); empty: random initialisation.")
flags.DEFINE_string("output_dir", "", "Where the weights and provenance go; empty: the package.")


def _images(folder: pathlib.Path) -> list[str]:
    from mgcam_tf.conventions import is_image_file

    return sorted(str(p) for p in folder.iterdir() if is_image_file(p.name))


def _flag_text(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv):
    del argv
    from mgcam_tf import atomic_files
    from mgcam_tf.segmentation import agreement, distillation, distilled

    data = pathlib.Path(FLAGS.data_dir)
    folders = [data / "bounding_box_train"] + [
        pathlib.Path(extra) / "bounding_box_train" for extra in FLAGS.extra_train_dirs]
    for flag, folder in zip(["data_dir"] + ["extra_train_dirs"] * len(folders), folders):
        if not folder.is_dir():
            raise SystemExit(f"error: --{flag}: {folder} is not a folder")
    counts = {folder: len(_images(folder)) for folder in folders}
    train = [path for folder in folders for path in _images(folder)]
    dev = _images(data / "query") + _images(data / "bounding_box_test")
    print(f"training on {len(train)} crops of {', '.join(map(str, folders))}; "
          f"dev split {len(dev)} crops", flush=True)
    net, run = distillation.train_mask_net(
        train, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate, max_minutes=FLAGS.max_minutes,
        mixed_bfloat16=FLAGS.mixed_bfloat16, seed=FLAGS.seed,
        init_weights=FLAGS.init_weights or None)
    out = pathlib.Path(FLAGS.output_dir) if FLAGS.output_dir else \
        distilled.shipped_weights_path().parent
    out.mkdir(parents=True, exist_ok=True)
    weights = out / distilled.WEIGHTS_FILE
    # Keras writes the file itself: written beside and renamed, as atomic_files does.
    tmp = out / (".tmp-" + distilled.WEIGHTS_FILE)
    net.save_weights(str(tmp))
    os.replace(tmp, weights)
    start = time.monotonic()
    ious = {}
    for split in ("query", "bounding_box_test", "bounding_box_train"):
        paths = _images(data / split)
        pngs = dict(distilled.mask_pngs(net, paths))
        ious[split] = agreement.ious_of_pngs(pngs, distillation.teacher_pairs(paths), paths)
    previous = {}
    if FLAGS.init_weights:
        try:
            previous = json.loads((pathlib.Path(FLAGS.init_weights).parent
                                   / distilled.PROVENANCE_FILE).read_text())
        except (OSError, ValueError):
            previous = {"weights": FLAGS.init_weights}
    record = {
        "network": "mgcam_tf.segmentation.distilled.build_mask_net()",
        "parameters": int(net.count_params()),
        "weights_bytes": weights.stat().st_size,
        "teacher": "BlazePose-full segmentation (pose_landmark_full.tflite, mediapipe 0.10.21), "
                   "the masks X_seg/NAME.png of mgcam_tf.segmentation.segmenter",
        "training_data": " + ".join(f"{folder.parent.name}/{folder.name} ({n} crops)"
                                    for folder, n in counts.items())
        + ", with their BlazePose masks, mirrored and colour-jittered",
        "command": "nice -n 10 python tools/train_mask_net.py " + " ".join(
            f"--{k}={_flag_text(FLAGS[k].value)}"
            for k in ("extra_train_dirs", "epochs", "max_minutes", "batch_size",
                      "learning_rate", "seed", "mixed_bfloat16", "init_weights")
            if FLAGS[k].value not in ("", [])),
        "commit": _commit(),
        "training": run,
        "mean_iou_vs_blazepose": {k: round(float(np.mean(v)), 4) for k, v in ious.items()},
        "mean_iou_dev": round(float(np.mean(ious["query"] + ious["bounding_box_test"])), 4),
        "dev_images_below_iou_0.8": int(sum(
            v < 0.8 for v in ious["query"] + ious["bounding_box_test"])),
        "agreement_seconds": round(time.monotonic() - start, 1),
    }
    if previous:
        record["continued_from"] = previous
    atomic_files.write_text(str(out / distilled.PROVENANCE_FILE),
                            json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    app.run(main)
