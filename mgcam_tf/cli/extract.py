"""mgcam-extract: features of every image under a folder, resumable.

  mgcam-extract --saved_model=export/mgcam --image_dir=/photos/gallery --output_dir=feats/gallery

writes OUTPUT_DIR/features.npy (float32 [N, 128]), manifest.csv (index, path,
pid, camid, mask; ids and cameras read off Market-1501/Duke/CUHK03/MARS-style
names or numeric id folders, -1 otherwise) and extraction.json. Images
without a mask beside them (X_seg/NAME.png) get one from the BlazePose
segmenter (written to OUTPUT_DIR/masks/). Killed, the same command resumes
from the last finished chunk. mgcam-search takes OUTPUT_DIR as --gallery.

  mgcam-extract --saved_model=export/mgcam --image_dir=/photos/day2 \
      --output_dir=feats/day2 --index_dir=gallery.idx [--index_type=auto]
  mgcam-extract ... --workers=4 [--backend=beam]

--index_dir also adds the features to a persistent gallery index
(mgcam_tf/retrieval/index.py; created if absent, written atomically, other
folders' rows never re-embedded; features of another model are refused).
--workers > 1 spreads the images over worker processes (or Beam's
RunInference with --backend=beam), each shard written atomically, merged.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from mgcam_tf.cli.common import ProgressBar, define_preset_flag, require_one_of, run_tool, saved_model_or_preset

FLAGS = flags.FLAGS

flags.DEFINE_string("saved_model", None, "Export of mgcam-export (base or version folder).")
define_preset_flag("--saved_model")
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
flags.DEFINE_string("index_dir", "", "Also add the features to this gallery index folder "
                    "(created if absent; mgcam-search takes it as --gallery).")
flags.DEFINE_enum("index_type", "auto", ["auto", "flat", "ivf", "hnsw"],
                  "auto: exact (flat) up to 200,000 images, IVF-Flat beyond; flat: always "
                  "exact; ivf: IVF-Flat; hnsw: HNSW graph (slow to build).")
flags.DEFINE_integer("workers", 1, "Worker processes embedding shards in parallel "
                     "(1: in this process).")
flags.DEFINE_enum("backend", "processes", ["processes", "beam"],
                  "With --workers > 1 or beam: local worker processes, or Apache Beam's "
                  "RunInference on the DirectRunner (needs pip install apache-beam).")
flags.DEFINE_integer("shard_size", 1024, "Images per shard with --workers/--backend=beam.")
from mgcam_tf.cli.common import check_numbers  # noqa: E402
check_numbers("batch_size", "chunk_size", "workers", "shard_size", low=1)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    import tensorflow as tf

    from mgcam_tf.retrieval import extraction
    from mgcam_tf.serving.loader import SavedModelEmbedder

    tf.get_logger().setLevel("ERROR")
    progress = ProgressBar("features", enabled=FLAGS.progress)
    if FLAGS.workers > 1 or FLAGS.backend == "beam":
        from mgcam_tf.retrieval import distributed_extraction

        result = distributed_extraction.extract_distributed(
            saved_model_or_preset(), FLAGS.image_dir, FLAGS.output_dir, workers=FLAGS.workers,
            backend=FLAGS.backend, shard_size=FLAGS.shard_size, mask_policy=FLAGS.mask_policy,
            model_path=FLAGS.mask_model or None, batch_size=FLAGS.batch_size, progress=progress)
    else:
        embedder = SavedModelEmbedder(saved_model_or_preset())
        result = extraction.extract_folder(
            embedder, FLAGS.image_dir, FLAGS.output_dir, mask_policy=FLAGS.mask_policy,
            model_path=FLAGS.mask_model or None, batch_size=FLAGS.batch_size,
            chunk_size=FLAGS.chunk_size, progress=progress)
    print(f"{len(result)} images -> {FLAGS.output_dir}/{extraction.FEATURES_FILE} "
          f"{list(result.features.shape)} and {extraction.MANIFEST_FILE} "
          f"({sum(1 for m in result.masks if not m)} without mask)")
    if FLAGS.index_dir:
        from mgcam_tf.retrieval import index

        gallery = index.add_feature_folder(FLAGS.index_dir, FLAGS.output_dir,
                                           index_type=FLAGS.index_type,
                                           notify=lambda line: print(line, file=sys.stderr))
        print(f"index {FLAGS.index_dir}: {len(gallery)} images ({gallery.index_type}, "
              f"{os.path.basename(gallery.version_dir)})")


def run():
    """Console-script entry point of mgcam-extract."""
    require_one_of("saved_model", "preset")
    for name in ("image_dir", "output_dir"):
        flags.mark_flag_as_required(name)
    run_tool(main, __name__)


if __name__ == "__main__":
    run()
