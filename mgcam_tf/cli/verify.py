"""mgcam-verify: are two crops the same person?

  mgcam-verify --saved_model=export/mgcam A.jpg B.jpg
  mgcam-verify --saved_model=export/mgcam --threshold=1.5 --json A.jpg B.jpg

Compares the Euclidean distance of the two embeddings with the threshold
calibrated when the model was exported (mgcam-export --calibration_data;
chosen for a false-accept rate, printed with the answer), or --threshold.
Prints "same person" or "different people"; the exit status is 0 either way
(1 only for errors). Masks as in mgcam-extract (--mask_a/--mask_b name them).
"""

from __future__ import annotations

import json
import os
import tempfile

from absl import app, flags

from mgcam_tf.cli.common import one_line_errors

FLAGS = flags.FLAGS

flags.DEFINE_string("saved_model", None, "Export of mgcam-export (base or version folder).")
flags.DEFINE_float("threshold", None, "Distance threshold (default: the export's calibrated one).")
flags.DEFINE_string("mask_a", "", "Mask of the first image (default: beside it, or generated).")
flags.DEFINE_string("mask_b", "", "Mask of the second image.")
flags.DEFINE_enum("mask_policy", "auto", ["auto", "files", "generate", "full_body"],
                  "Masks of images without one (see mgcam-extract).")
flags.DEFINE_string("mask_model", "", "BlazePose-full .tflite; empty: $MGCAM_MASK_MODEL or fetched.")
flags.DEFINE_bool("json", False, "Print the answer as one JSON line.")


def main(argv):
    from mgcam_tf import user_images, verification
    from mgcam_tf.embedder import SavedModelEmbedder
    from mgcam_tf.errors import ConfigError, DataError

    if len(argv) != 3:
        raise ConfigError(f"give exactly two images (A.jpg B.jpg), got {len(argv) - 1}")
    images = argv[1:]
    for path in images:
        if not os.path.isfile(path):
            raise DataError(f"{path}: image not found")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    embedder = SavedModelEmbedder(FLAGS.saved_model)
    calibration = verification.from_metadata(embedder.metadata, str(embedder.export_dir))
    if FLAGS.threshold is not None:
        threshold, basis = FLAGS.threshold, "given threshold"
    elif calibration is not None:
        threshold = calibration.threshold
        basis = (f"calibrated threshold, FAR {100 * calibration.far:.2f}% and TAR "
                 f"{100 * calibration.tar:.2f}% on {calibration.source or 'its validation split'}")
    else:
        raise ConfigError(f"{embedder.export_dir} holds no calibrated threshold: export with "
                          "mgcam-export --calibration_data=..., or pass --threshold")
    with tempfile.TemporaryDirectory(prefix="mgcam-verify-") as tmp:
        masks = user_images.resolve_masks(images, FLAGS.mask_policy,
                                          given=[FLAGS.mask_a or None, FLAGS.mask_b or None],
                                          cache_dir=tmp, model_path=FLAGS.mask_model or None)
        a, b = embedder.embed_files(images, masks)
    dist = verification.distance(a, b)
    same = verification.same_person(dist, threshold)
    if FLAGS.json:
        print(json.dumps({"same_person": same, "distance": dist, "threshold": threshold,
                          "calibration": calibration.to_json() if calibration else None}))
    else:
        verdict = "same person" if same else "different people"
        print(f"{verdict}: distance {dist:.4f} {'<' if same else '>='} threshold "
              f"{threshold:.4f} ({basis})")


def run():
    """Console-script entry point of mgcam-verify."""
    flags.mark_flag_as_required("saved_model")
    app.run(one_line_errors(main))


if __name__ == "__main__":
    run()
