"""mgcam-verify: are two crops the same person?

  mgcam-verify --saved_model=export/mgcam A.jpg B.jpg
  mgcam-verify --saved_model=export/mgcam --threshold=1.5 --json A.jpg B.jpg

Compares the Euclidean distance of the two embeddings with the threshold
calibrated when the model was exported (mgcam-export --calibration_data;
chosen for a false-accept rate, printed with the answer), or --threshold.
Prints "same person" or "different people"; the exit status is 0 either way
(1 only for errors). Masks as in mgcam-extract (--mask_a/--mask_b name them);
an export made with the mask model in its graph makes missing masks itself.
"""

from __future__ import annotations

import json
import os
import tempfile

from absl import flags

from mgcam_tf.cli.common import define_preset_flag, require_one_of, run_tool, saved_model_or_preset

FLAGS = flags.FLAGS

flags.DEFINE_string("saved_model", None, "Export of mgcam-export (base or version folder).")
define_preset_flag("--saved_model")
flags.DEFINE_float("threshold", None, "Distance threshold (default: the export's calibrated one).")
flags.DEFINE_string("mask_a", "", "Mask of the first image (default: beside it, or generated).")
flags.DEFINE_string("mask_b", "", "Mask of the second image.")
flags.DEFINE_enum("mask_policy", "auto", ["auto", "files", "generate", "full_body"],
                  "Masks of images without one (see mgcam-extract).")
flags.DEFINE_string("mask_model", "", "BlazePose-full .tflite; empty: $MGCAM_MASK_MODEL or fetched.")
flags.DEFINE_bool("json", False, "Print the answer as one JSON line.")
from mgcam_tf.cli.common import check_numbers  # noqa: E402
check_numbers("threshold", low=0, low_open=True)


def main(argv):
    from mgcam_tf.retrieval import user_images
    from mgcam_tf.retrieval import verification
    from mgcam_tf.serving.loader import SavedModelEmbedder
    from mgcam_tf.errors import ConfigError, DataError

    if len(argv) != 3:
        raise ConfigError(f"give exactly two images (A.jpg B.jpg), got {len(argv) - 1}")
    images = argv[1:]
    for path in images:
        if not os.path.isfile(path):
            raise DataError(f"{path}: image not found")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    embedder = SavedModelEmbedder(saved_model_or_preset())
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
    for image, mask, name in zip(images, (FLAGS.mask_a, FLAGS.mask_b), ("--mask_a", "--mask_b")):
        if mask and os.path.isfile(mask):
            user_images.check_mask_size(image, mask, name)
    with tempfile.TemporaryDirectory(prefix="mgcam-verify-") as tmp:
        # An export with the mask model in its graph makes the missing masks itself.
        masks = user_images.resolve_masks(images, FLAGS.mask_policy,
                                          given=[FLAGS.mask_a or None, FLAGS.mask_b or None],
                                          cache_dir=tmp, model_path=FLAGS.mask_model or None,
                                          in_graph=embedder.has_mask_in_graph)
        a, b = embedder.embed_images(images, masks)
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
    require_one_of("saved_model", "preset")
    run_tool(main, __name__)


if __name__ == "__main__":
    run()
