"""mgcam-extract: features of every image under a folder, resumable.

  mgcam-extract --saved_model=export/mgcam --image_dir=/photos/gallery --output_dir=feats/gallery

writes OUTPUT_DIR/features.npy (float32 [N, 128]), manifest.csv (index, path,
pid, camid, mask; ids and cameras read off Market-1501/Duke/CUHK03/MARS-style
names or numeric id folders, -1 otherwise) and extraction.json. Images
without a mask beside them (X_seg/NAME.png) get one from the BlazePose
segmenter (written to OUTPUT_DIR/masks/). Killed, the same command resumes
from the last finished chunk. mgcam-search takes OUTPUT_DIR as --gallery.
"""

from __future__ import annotations


from absl import app, flags

from mgcam_tf.cli.common import ProgressBar, one_line_errors

FLAGS = flags.FLAGS

flags.DEFINE_string("saved_model", None, "Export of mgcam-export (base or version folder).")
flags.DEFINE_string("image_dir", None, "Folder of images (searched recursively).")
flags.DEFINE_string("output_dir", None, "Where features.npy and manifest.csv go.")
flags.DEFINE_enum("mask_policy", "auto", ["auto", "files", "generate", "full_body"],
                  "auto: the mask beside each image, else a generated one; files: masks "
                  "must exist; generate: always generate; full_body: no mask = all body.")
flags.DEFINE_string("mask_model", "", "BlazePose-full .tflite (or mediapipe 0.10.21 wheel); "
                    "empty: $MGCAM_MASK_MODEL, else fetched once with pip.")
flags.DEFINE_integer("batch_size", 64, "Images per forward pass.")
flags.DEFINE_integer("chunk_size", 1024, "Images per saved part (the unit of resuming).")
flags.DEFINE_bool("progress", True, "Progress on stderr.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    import tensorflow as tf

    from mgcam_tf import extraction
    from mgcam_tf.embedder import SavedModelEmbedder

    tf.get_logger().setLevel("ERROR")
    embedder = SavedModelEmbedder(FLAGS.saved_model)
    result = extraction.extract_folder(
        embedder, FLAGS.image_dir, FLAGS.output_dir, mask_policy=FLAGS.mask_policy,
        model_path=FLAGS.mask_model or None, batch_size=FLAGS.batch_size,
        chunk_size=FLAGS.chunk_size, progress=ProgressBar("features", enabled=FLAGS.progress))
    print(f"{len(result)} images -> {FLAGS.output_dir}/{extraction.FEATURES_FILE} "
          f"{list(result.features.shape)} and {extraction.MANIFEST_FILE} "
          f"({sum(1 for m in result.masks if not m)} without mask)")


def run():
    """Console-script entry point of mgcam-extract."""
    for name in ("saved_model", "image_dir", "output_dir"):
        flags.mark_flag_as_required(name)
    app.run(one_line_errors(main))


if __name__ == "__main__":
    run()
