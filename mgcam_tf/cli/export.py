"""mgcam-export: a trained model directory -> a SavedModel for TF Serving.

  mgcam-export --model_dir=runs/market1501_stage2 --export_dir=export/mgcam
  mgcam-export --model_dir=runs/market1501_stage2 --export_dir=export/mgcam \\
      --calibration_data=/data/my_validation_set --target_far=0.01

writes `export/mgcam/VERSION/` (the next free version unless --version is
given), complete or not at all. With --calibration_data it also stores the
same-person threshold of `mgcam-verify`, chosen on that data set's
--calibration_split so that at most --target_far of different-person pairs
are accepted (the measured FAR and TAR are printed and stored beside it in
`assets.extra/mgcam_export.json`). Use identities the model was not trained on.
See docs/SERVING.md for serving the export with the tensorflow/serving container.
"""

from __future__ import annotations

from absl import app, flags

from mgcam_tf.cli.common import one_line_errors

FLAGS = flags.FLAGS

flags.DEFINE_string("model_dir", None, "The training run to export (its latest checkpoint).")
flags.DEFINE_string("export_dir", None, "Base folder of the exports (TF Serving's "
                    "model_base_path); the SavedModel goes to EXPORT_DIR/VERSION/.")
flags.DEFINE_integer("version", None, "Version number (default: one above the highest there).")
flags.DEFINE_string("calibration_data", "", "A data set (any --calibration_layout) whose "
                    "--calibration_split calibrates the mgcam-verify threshold.")
flags.DEFINE_enum("calibration_layout", "auto", ["auto", "market1501", "dukemtmc", "cuhk03",
                                                 "cuhk03_labeled", "cuhk03_detected", "mars",
                                                 "folders", "manifest"],
                  "Layout of --calibration_data.")
flags.DEFINE_enum("calibration_split", "test", ["test", "query", "gallery", "train"],
                  "Images to calibrate on (test = query + gallery).")
flags.DEFINE_enum("missing_masks", "error", ["error", "generate", "full_body", "skip"],
                  "Calibration images without a mask.")
flags.DEFINE_float("target_far", 0.01, "False-accept rate the threshold is chosen for.")
flags.DEFINE_integer("batch_size", 256, "Images per forward pass while calibrating.")


def _calibrate(model):
    """Calibration of `model`'s embeddings on --calibration_data."""
    import numpy as np

    from mgcam_tf import verification
    from mgcam_tf.data import layouts
    from mgcam_tf.evaluation import features

    dataset = layouts.load_dataset(FLAGS.calibration_data, layout=FLAGS.calibration_layout,
                                   missing_masks=FLAGS.missing_masks)
    names = ["query", "gallery"] if FLAGS.calibration_split == "test" else [FLAGS.calibration_split]
    feats, pids = [], []
    for name in names:
        out = features.split_features(model, getattr(dataset, name),
                                      batch_size=FLAGS.batch_size)
        feats.append(out.features)
        pids.append(out.pids)
    return verification.calibrate(
        np.concatenate(feats), np.concatenate(pids), FLAGS.target_far,
        source=f"{FLAGS.calibration_data} ({FLAGS.calibration_split})")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    import dataclasses
    import os

    import tensorflow as tf

    from mgcam_tf import export, training, verification

    tf.get_logger().setLevel("ERROR")
    model = training.load_trained_model(FLAGS.model_dir)
    metadata = {"model_dir": os.path.abspath(FLAGS.model_dir),
                "model": dataclasses.asdict(training.read_model_config(FLAGS.model_dir))}
    calibration = None
    if FLAGS.calibration_data:
        calibration = _calibrate(model)
        metadata[verification.METADATA_KEY] = calibration.to_json()
    target = export.export_saved_model(model, FLAGS.export_dir, FLAGS.version, metadata=metadata)
    print(f"exported {FLAGS.model_dir} to {target}")
    for name, sig in export.read_metadata(target)["signatures"].items():
        ins = ", ".join(f"{k} {d}{s}" for k, (d, s) in sig["inputs"].items())
        outs = ", ".join(f"{k} {d}{s}" for k, (d, s) in sig["outputs"].items())
        print(f"  {name}: {ins} -> {outs}")
    if calibration is not None:
        print(f"verification threshold {calibration.threshold:.4f} (Euclidean): FAR "
              f"{100 * calibration.far:.2f}% (target {100 * calibration.target_far:.2f}%), "
              f"TAR {100 * calibration.tar:.2f}% on {calibration.num_images} images of "
              f"{calibration.num_ids} ids")


def run():
    """Console-script entry point of mgcam-export."""
    flags.mark_flag_as_required("model_dir")
    flags.mark_flag_as_required("export_dir")
    app.run(one_line_errors(main))


if __name__ == "__main__":
    run()
