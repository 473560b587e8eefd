"""mgcam-export: a trained model directory -> a SavedModel for TF Serving.

  mgcam-export --model_dir=runs/market1501_stage2 --export_dir=export/mgcam
  mgcam-export --model_dir=runs/market1501_stage2 --export_dir=export/mgcam \\
      --calibration_data=/data/my_validation_set --target_far=0.01

writes `export/mgcam/VERSION/` (the next free version unless --version is
given), complete or not at all. When the BlazePose-full mask model is
available the export also makes masks itself (signatures `serving_image`,
`serving_image_bytes`: the image alone in, the embedding out);
--mask_in_graph=false leaves it out. With --calibration_data it also stores the
same-person threshold of `mgcam-verify`, chosen on that data set's
--calibration_split so that at most --target_far of different-person pairs
are accepted (the measured FAR and TAR are printed and stored beside it in
`assets.extra/mgcam_export.json`). Use identities the model was not trained on.
See docs/SERVING.md for serving the export with the tensorflow/serving container.

--format=tflite or --format=onnx writes one file of the embedding function
instead (`mgcam_tf.serving.tflite`: rgbm float32 [N, 160, 64, 4] in,
preprocessed as the evaluation does; embedding float32 [N, D] out), with a
`.json` beside it:

  mgcam-export --preset=mgcam_siamese_cuhk03 --export_dir=export/lite --format=tflite \\
      --tflite_quantization=int8 --representative_data=/data/cuhk03_pair1
  mgcam-export --preset=mgcam_siamese_cuhk03 --export_dir=export/onnx --format=onnx
"""

from __future__ import annotations

from absl import app, flags

from mgcam_tf.data import layouts
from mgcam_tf.cli.common import define_preset_flag, model_dir_or_preset, require_one_of, run_tool

FLAGS = flags.FLAGS

flags.DEFINE_string("model_dir", None, "The training run to export (its latest checkpoint).")
define_preset_flag("--model_dir")
flags.DEFINE_string("export_dir", None, "Base folder of the exports (TF Serving's "
                    "model_base_path); the SavedModel goes to EXPORT_DIR/VERSION/.")
flags.DEFINE_integer("version", None, "Version number (default: one above the highest there).")
flags.DEFINE_string("calibration_data", "", "A data set (any --calibration_layout) whose "
                    "--calibration_split calibrates the mgcam-verify threshold.")
flags.DEFINE_enum("calibration_layout", "auto", list(layouts.layout_names()),
                  "Layout of --calibration_data.")
flags.DEFINE_enum("calibration_split", "test", ["test", "query", "gallery", "train"],
                  "Images to calibrate on (test = query + gallery).")
flags.DEFINE_enum("missing_masks", "error", list(layouts.MISSING_MASK_POLICIES),
                  "Calibration images without a mask.")
flags.DEFINE_float("target_far", 0.01, "False-accept rate the threshold is chosen for.")
flags.DEFINE_integer("batch_size", 256, "Images per forward pass while calibrating.")
from mgcam_tf.cli.common import check_numbers  # noqa: E402
check_numbers("version", "batch_size", low=1)
check_numbers("target_far", low=0, high=1, low_open=True, high_open=True)
# Bounds on one request to the served model (mgcam_tf/serving/limits.py, docs/SERVING.md);
# unset: the defaults of ServingLimits, which admit every real crop and camera frame.
flags.DEFINE_integer("max_batch", None, "Most images in one request (default 256).")
flags.DEFINE_integer("max_image_pixels", None, "Most pixels of one encoded image, read from "
                     "its header before decoding (default 36,000,000: an 8K frame is 33.2 MP).")
flags.DEFINE_integer("max_request_pixels", None, "Most pixels of all images of one request "
                     "(default 64,000,000).")
flags.DEFINE_integer("max_request_bytes", None, "Most bytes of the encoded images of one "
                     "request (default 64 MiB).")
check_numbers("max_batch", "max_image_pixels", "max_request_pixels", "max_request_bytes", low=1)
flags.DEFINE_enum("mask_in_graph", "auto", ["auto", "true", "false"],
                  "Put the BlazePose-full mask model into the export, with the image-only "
                  "signatures (serving_image, serving_image_bytes, ..._details): auto = when "
                  "pose_landmark_full.tflite is available (--mask_model_path, "
                  "$MGCAM_MASK_MODEL, the cache, or fetched with pip), true = required, "
                  "false = leave it out (the mask-taking signatures only).")
flags.DEFINE_string("mask_model_path", "", "pose_landmark_full.tflite or the mediapipe "
                    "0.10.21 wheel (default: $MGCAM_MASK_MODEL, else the cache, else fetched); "
                    "with --segmenter=distilled its weights file (default: the shipped one).")
flags.DEFINE_string("segmenter", "", "Which network makes the image-only signatures' masks: "
                    "blazepose (BlazePose-full, the masks of the shared data) or distilled (the "
                    "small network trained on its masks, mgcam_tf/segmentation/distilled.py); "
                    "empty: $MGCAM_SEGMENTER, else mgcam_tf.segmentation.choice.DEFAULT_SEGMENTER.")
# Strings checked in main (mgcam_tf.serving.tflite.check_*), not enums: a bad
# value then ends in the one-line `error: ...` of every other mistake.
flags.DEFINE_bool("flip_average", False, "Bake the mirror average into the signatures: each "
                  "embedding is the mean of the image's and its mirror's (as mgcam-eval "
                  "--flip_average); recorded in the export's metadata. Off: the paper's feature.")
flags.DEFINE_string("format", "saved_model", "What to write: saved_model (TF Serving, "
                    "EXPORT_DIR/VERSION/), tflite (EXPORT_DIR/mgcam_rgbm_QUANTIZATION.tflite) "
                    "or onnx (EXPORT_DIR/mgcam_rgbm.onnx; needs tf2onnx). tflite and onnx hold "
                    "the serving_rgbm function: rgbm float32 [N,160,64,4] -> embedding float32.")
flags.DEFINE_string("tflite_quantization", "float32", "--format=tflite: float32, float16 "
                    "(float16 weights) or int8 (full-integer, calibrated on "
                    "--representative_data; input and output stay float32).")
flags.DEFINE_string("representative_data", "", "--tflite_quantization=int8: a data set (any "
                    "--calibration_layout) whose --representative_split calibrates the int8 "
                    "scales.")
flags.DEFINE_enum("representative_split", "train", ["train", "query", "gallery"],
                  "Images of --representative_data that calibrate int8.")
flags.DEFINE_integer("representative_images", 200, "Images (evenly spread over the split) "
                     "that calibrate int8.")


def _segmenter() -> str:
    from mgcam_tf.segmentation import choice

    return choice.for_model_file(FLAGS.segmenter, FLAGS.mask_model_path)


def _mask_model():
    """The checked mask model file for --mask_in_graph, or None (left out)."""
    from mgcam_tf.errors import DataError
    from mgcam_tf.segmentation import model_file

    if FLAGS.mask_in_graph == "false":
        return None
    if _segmenter() == "distilled":
        from mgcam_tf.segmentation import distilled

        return FLAGS.mask_model_path or distilled.shipped_weights_path()
    try:
        return model_file.resolve_model_path(FLAGS.mask_model_path or None)
    except DataError as err:
        if FLAGS.mask_in_graph == "true":
            raise
        print(f"note: exporting without the mask model (--mask_in_graph=auto): {err}")
        return None


def _calibrate(model):
    """Calibration of `model`'s embeddings on --calibration_data."""
    import numpy as np

    from mgcam_tf.retrieval import verification
    from mgcam_tf.data import layouts
    from mgcam_tf.evaluation import features

    dataset = layouts.load_dataset(FLAGS.calibration_data, layout=FLAGS.calibration_layout,
                                   missing_masks=FLAGS.missing_masks)
    names = ["query", "gallery"] if FLAGS.calibration_split == "test" else [FLAGS.calibration_split]
    feats, pids = [], []
    for name in names:
        # The threshold is calibrated on the features the export will serve.
        out = features.split_features(model, getattr(dataset, name),
                                      batch_size=FLAGS.batch_size,
                                      flip_average=FLAGS.flip_average)
        feats.append(out.features)
        pids.append(out.pids)
    return verification.calibrate(
        np.concatenate(feats), np.concatenate(pids), FLAGS.target_far,
        source=f"{FLAGS.calibration_data} ({FLAGS.calibration_split})")


def _check_format_flags() -> None:
    """Refuses, before the model is loaded, flags that do not go with --format."""
    from mgcam_tf.errors import ConfigError
    from mgcam_tf.serving import tflite

    if tflite.check_format(FLAGS.format) == "saved_model":
        return
    for name in ("calibration_data", "version", "flip_average"):
        if FLAGS[name].present:
            raise ConfigError(f"--{name} applies to --format=saved_model only, "
                              f"not --format={FLAGS.format}")
    if FLAGS.format == "tflite" and tflite.check_quantization(
            FLAGS.tflite_quantization) == "int8" and not FLAGS.representative_data:
        raise ConfigError("--tflite_quantization=int8 needs --representative_data: real "
                          "crops calibrate the int8 scales")


def _export_file(model, metadata: dict):
    """--format=tflite or onnx: the file (and its .json beside it); returns the file's path."""
    import os
    import pathlib

    import tensorflow as tf

    from mgcam_tf import atomic_files
    from mgcam_tf.serving import tflite

    base = pathlib.Path(FLAGS.export_dir)
    info = {"format": FLAGS.format, "function": "serving_rgbm",
            "inputs": {"rgbm": ["float32", [-1, 160, 64, 4]]},
            "outputs": {"embedding": ["float32", [-1, int(model.feature_dim)]]},
            "feature": "h_full", "tensorflow_version": tf.__version__, **metadata}
    if FLAGS.format == "onnx":
        path = tflite.write_onnx(model, base / "mgcam_rgbm.onnx")
        info["onnx_opset"] = tflite.ONNX_OPSET
    else:
        quantization = tflite.check_quantization(FLAGS.tflite_quantization)
        representative = None
        if quantization == "int8" and FLAGS.representative_data:
            dataset = layouts.load_dataset(FLAGS.representative_data,
                                           layout=FLAGS.calibration_layout,
                                           missing_masks=FLAGS.missing_masks)
            representative = tflite.representative_rgbm(
                getattr(dataset, FLAGS.representative_split), FLAGS.representative_images)
            info["representative_data"] = {
                "data": os.path.abspath(FLAGS.representative_data),
                "split": FLAGS.representative_split, "images": FLAGS.representative_images}
        path = tflite.write_tflite(model, base / f"mgcam_rgbm_{quantization}.tflite",
                                   quantization, representative)
        info["tflite_quantization"] = quantization
    atomic_files.write_json(path.with_name(path.name + ".json"), info)
    return path


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    import os

    import tensorflow as tf

    from mgcam_tf.serving import export
    from mgcam_tf.training import run_dir
    from mgcam_tf.retrieval import verification

    tf.get_logger().setLevel("ERROR")
    _check_format_flags()
    model_dir = model_dir_or_preset()
    model = run_dir.load_trained_model(model_dir, allow_older=False)
    metadata = {"model_dir": os.path.abspath(model_dir),
                "model": run_dir.read_model_config(model_dir)}
    if FLAGS.preset:
        from mgcam_tf import presets

        metadata["preset"] = presets.preset_info(FLAGS.preset)
    calibration = None
    if FLAGS.calibration_data:
        calibration = _calibrate(model)
        metadata[verification.METADATA_KEY] = calibration.to_json()
    if FLAGS.format != "saved_model":
        path = _export_file(model, metadata)
        print(f"exported {FLAGS.preset or model_dir} to {path} "
              f"({path.stat().st_size / 1e6:.1f} MB): rgbm float32 [-1, 160, 64, 4] -> embedding float32 [-1, {model.feature_dim}]")
        return
    from mgcam_tf.serving.limits import ServingLimits

    bounds = {name: FLAGS[name].value for name in ("max_batch", "max_image_pixels",
                                                   "max_request_pixels", "max_request_bytes")
              if FLAGS[name].value is not None}
    limits = ServingLimits(**bounds)
    target = export.export_saved_model(model, FLAGS.export_dir, FLAGS.version, metadata=metadata,
                                       mask_model_path=_mask_model(), segmenter=_segmenter(),
                                       limits=limits, flip_average=FLAGS.flip_average)
    print(f"exported {FLAGS.preset or model_dir} to {target}")
    for name, sig in export.read_metadata(target)["signatures"].items():
        ins = ", ".join(f"{k} {d}{s}" for k, (d, s) in sig["inputs"].items())
        outs = ", ".join(f"{k} {d}{s}" for k, (d, s) in sig["outputs"].items())
        print(f"  {name}: {ins} -> {outs}")
    print("  bounds: " + ", ".join(f"{k} {v}" for k, v in limits.as_dict().items()))
    if calibration is not None:
        print(f"verification threshold {calibration.threshold:.4f} (Euclidean): FAR "
              f"{100 * calibration.far:.2f}% (target {100 * calibration.target_far:.2f}%), "
              f"TAR {100 * calibration.tar:.2f}% on {calibration.num_images} images of "
              f"{calibration.num_ids} ids")


def run():
    """Console-script entry point of mgcam-export."""
    require_one_of("model_dir", "preset")
    flags.mark_flag_as_required("export_dir")
    run_tool(main, __name__)


if __name__ == "__main__":
    run()
