"""mgcam-search: rank a gallery for one or more query images.

  mgcam-search --saved_model=export/mgcam --gallery=/photos/gallery q1.jpg q2.jpg
  mgcam-search --saved_model=export/mgcam --gallery=feats/gallery --top_k=20 \\
      --sheet=result.html --json_out=result.json q1.jpg

--gallery is a folder of images (embedded now; give --gallery_features to
keep the features for next time) or an output folder of mgcam-extract.
Prints each query's top-k gallery images with their Euclidean distances;
--sheet writes them as an HTML page or a PNG image. Masks as in mgcam-extract.
"""

from __future__ import annotations

import os
import tempfile

from absl import app, flags

from mgcam_tf.cli.common import one_line_errors

FLAGS = flags.FLAGS

flags.DEFINE_string("saved_model", None, "Export of mgcam-export (base or version folder).")
flags.DEFINE_string("gallery", None, "Folder of gallery images, or an mgcam-extract output folder.")
flags.DEFINE_string("gallery_features", "", "With an image folder as --gallery: keep its "
                    "features here (an mgcam-extract output folder, resumed if present).")
flags.DEFINE_integer("top_k", 10, "Gallery images listed per query.")
flags.DEFINE_string("sheet", "", "Write the rankings to this .html or .png file.")
flags.DEFINE_string("json_out", "", "Write the rankings as JSON here.")
flags.DEFINE_enum("mask_policy", "auto", ["auto", "files", "generate", "full_body"],
                  "Masks of images without one (see mgcam-extract).")
flags.DEFINE_string("mask_model", "", "BlazePose-full .tflite; empty: $MGCAM_MASK_MODEL or fetched.")
flags.DEFINE_integer("batch_size", 64, "Images per forward pass.")


def main(argv):
    queries = argv[1:]
    from mgcam_tf import extraction, search, user_images
    from mgcam_tf.embedder import SavedModelEmbedder
    from mgcam_tf.errors import ConfigError, DataError
    from mgcam_tf.evaluation import reports

    if not queries:
        raise ConfigError("give one or more query images after the flags")
    for q in queries:
        if not os.path.isfile(q):
            raise DataError(f"{q}: query image not found")
    if FLAGS.sheet and os.path.splitext(FLAGS.sheet)[1].lower() not in search.SHEET_FORMATS:
        raise ConfigError(f"--sheet={FLAGS.sheet}: must end in .html or .png")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    embedder = SavedModelEmbedder(FLAGS.saved_model)
    with tempfile.TemporaryDirectory(prefix="mgcam-search-") as tmp:
        if extraction.is_feature_folder(FLAGS.gallery):
            gallery = extraction.load_features(FLAGS.gallery)
        else:
            out = FLAGS.gallery_features or os.path.join(tmp, "gallery")
            gallery = extraction.extract_folder(
                embedder, FLAGS.gallery, out, mask_policy=FLAGS.mask_policy,
                model_path=FLAGS.mask_model or None, batch_size=FLAGS.batch_size)
        masks = user_images.resolve_masks(queries, FLAGS.mask_policy,
                                          cache_dir=os.path.join(tmp, "masks"),
                                          model_path=FLAGS.mask_model or None)
        query_features = embedder.embed_files(queries, masks, batch_size=FLAGS.batch_size)
    if query_features.shape[1] != gallery.features.shape[1]:
        raise DataError(f"--gallery={FLAGS.gallery}: features of size {gallery.features.shape[1]}, "
                        f"the export makes {query_features.shape[1]}: extract it with this export")
    results = search.search(query_features, gallery, FLAGS.top_k)
    for q, matches in zip(queries, results):
        print(f"query {q}")
        for m in matches:
            who = f"  id {m.pid}" if m.pid >= 0 else ""
            print(f"  {m.rank:3d}  {m.distance:8.4f}  {m.path}{who}")
    if FLAGS.json_out:
        reports.write_json(FLAGS.json_out, {"queries": [
            {"query": q, "matches": [vars(m) for m in matches]} for q, matches in zip(queries, results)]})
    if FLAGS.sheet:
        search.write_sheet(FLAGS.sheet, queries, results)
        print(f"sheet: {FLAGS.sheet}")


def run():
    """Console-script entry point of mgcam-search."""
    flags.mark_flag_as_required("saved_model")
    flags.mark_flag_as_required("gallery")
    app.run(one_line_errors(main))


if __name__ == "__main__":
    run()
