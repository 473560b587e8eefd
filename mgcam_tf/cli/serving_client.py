"""mgcam-serving-client: embeddings of image files from a TF Serving server.

  mgcam-serving-client --protocol=rest --server=localhost:8501 A.jpg B.jpg
  mgcam-serving-client --protocol=grpc --server=localhost:8500 --output=emb.npy *.jpg
  mgcam-serving-client --signature=pixels A.jpg        # resize here, send uint8 tensors
  mgcam-serving-client --signature=image A.jpg         # the image alone: the export makes the mask

--signature=bytes (default) sends the files as they are to `serving_bytes`
(the server decodes and resizes them); pixels decodes and resizes them here
and sends uint8 tensors to `serving_default`. Masks: --masks names them (one
per image), else the mask beside each image (X_seg/NAME.png) or one made by
the BlazePose segmenter (--mask_policy=auto); --mask_policy=full_body sends
none. Prints one line per image (the embedding's norm and first values);
--output writes all embeddings to a .npy file. See docs/SERVING.md.
"""

from __future__ import annotations

import io
import os
import tempfile

from absl import flags

from mgcam_tf.cli.common import run_tool
from mgcam_tf import atomic_files

FLAGS = flags.FLAGS

flags.DEFINE_enum("protocol", "rest", ["rest", "grpc"], "REST (port 8501) or gRPC (8500).")
flags.DEFINE_string("server", "", "host:port (REST may be a URL); default localhost:8501 "
                    "for REST, localhost:8500 for gRPC.")
flags.DEFINE_string("model_name", "mgcam", "The served model's name.")
flags.DEFINE_integer("version", None, "Model version (default: the latest served).")
flags.DEFINE_enum("signature", "bytes", ["bytes", "pixels", "image"],
                  "bytes: send encoded files; pixels: send uint8 [N, 160, 64, C] tensors; "
                  "image: send the files alone to serving_image_bytes (the export makes "
                  "the masks; exports with the mask model in the graph).")
flags.DEFINE_list("masks", [], "Mask files, one per image, in order.")
flags.DEFINE_enum("mask_policy", "auto", ["auto", "files", "generate", "full_body"],
                  "Masks of images without one (see mgcam-extract).")
flags.DEFINE_string("mask_model", "", "BlazePose-full .tflite; empty: $MGCAM_MASK_MODEL or fetched.")
flags.DEFINE_integer("batch_size", 64, "Images per request.")
flags.DEFINE_float("timeout", 30.0, "Seconds per request.")
flags.DEFINE_string("output", "", "Write the embeddings (float32 [N, D]) to this .npy file.")


def _read(path: str) -> bytes:
    from mgcam_tf.errors import DataError

    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None


def _pixels(paths, masks):
    """uint8 [N, 160, 64, 3] and [N, 160, 64, 1], resized as the export would."""
    import numpy as np
    import tensorflow as tf

    from mgcam_tf.data import preprocess
    from mgcam_tf.errors import DataError

    images, mask_arrays = [], []
    for path, mask in zip(paths, masks):
        try:
            images.append(preprocess.resize_to_input(preprocess.decode_image(_read(path))).numpy())
            mask_arrays.append(np.full((160, 64, 1), 255, np.uint8) if mask is None else
                               preprocess.resize_to_input(preprocess.decode_mask(_read(mask))).numpy())
        except tf.errors.InvalidArgumentError as err:
            raise DataError(f"{path}: cannot decode ({err.message.splitlines()[0]})") from None
    return np.stack(images), np.stack(mask_arrays)


def main(argv):
    from mgcam_tf.serving import client as serving_client
    from mgcam_tf.retrieval import user_images
    from mgcam_tf.errors import ConfigError, DataError

    paths = argv[1:]
    if not paths:
        raise ConfigError("give one or more image files after the flags")
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(f"{path}: image not found")
    if FLAGS.masks and len(FLAGS.masks) != len(paths):
        raise ConfigError(f"--masks names {len(FLAGS.masks)} files for {len(paths)} images")
    client = serving_client.make_client(FLAGS.protocol, FLAGS.server, model_name=FLAGS.model_name,
                                        version=FLAGS.version, timeout=FLAGS.timeout,
                                        batch_size=FLAGS.batch_size)
    if FLAGS.signature == "image":
        if FLAGS.masks:
            raise ConfigError("--signature=image sends no masks (the export makes them); "
                              "drop --masks or use --signature=bytes")
        result = client.predict_images([_read(p) for p in paths])
    else:
        with tempfile.TemporaryDirectory(prefix="mgcam-client-") as tmp:
            masks = user_images.resolve_masks(paths, FLAGS.mask_policy,
                                              given=FLAGS.masks or None, cache_dir=tmp,
                                              model_path=FLAGS.mask_model or None)
            if FLAGS.signature == "bytes":
                result = client.predict_encoded([_read(p) for p in paths],
                                                [b"" if m is None else _read(m) for m in masks])
            else:
                result = client.predict(*_pixels(paths, masks))
    import numpy as np

    embeddings = result["embedding"]
    for path, e in zip(paths, embeddings):
        head = " ".join(f"{v:+.4f}" for v in e[:4])
        print(f"{path}\tnorm {np.linalg.norm(e):.4f}\t[{head} ...] ({e.shape[0]} values)")
    if FLAGS.output:
        buffer = io.BytesIO()
        np.save(buffer, embeddings.astype(np.float32), allow_pickle=False)
        atomic_files.write_bytes(FLAGS.output, buffer.getvalue())


def run():
    """Console-script entry point of mgcam-serving-client."""
    run_tool(main, __name__)


if __name__ == "__main__":
    run()
