"""mgcam-search: rank a gallery for one or more query images.

  mgcam-search --saved_model=export/mgcam --gallery=/photos/gallery q1.jpg q2.jpg
  mgcam-search --saved_model=export/mgcam --gallery=feats/gallery --top_k=20 \\
      --sheet=result.html --json_out=result.json q1.jpg

--gallery is a folder of images (embedded now; give --gallery_features to
keep the features for next time), an output folder of mgcam-extract, or a
gallery index folder (mgcam-extract --index_dir): exact search for flat
indexes (up to 200,000 images by default), approximate for ivf/hnsw ones
unless --exact; --nprobe trades speed for recall on an IVF index.
Prints each query's top-k gallery images with their Euclidean distances;
--sheet writes them as an HTML page (self-contained: thumbnails inline) or a PNG
image, with the model and settings, right and wrong matches marked when the
file names carry ids (Market-style `0002_c1...`). Masks as in mgcam-extract.
--attention shows, beside each image of the sheet, Phi+ (MGCAM's contrastive
attention map) over it and the mask it was given:

  mgcam-search --preset=mgcam_siamese_cuhk03 --gallery=/photos/gallery --sheet=result.html \\
      --attention q1.jpg
"""

from __future__ import annotations

import os
import tempfile

from absl import flags

from mgcam_tf.cli.common import define_preset_flag, require_one_of, run_tool, saved_model_or_preset
from mgcam_tf import atomic_files

FLAGS = flags.FLAGS

flags.DEFINE_string("saved_model", None, "Export of mgcam-export (base or version folder).")
define_preset_flag("--saved_model")
flags.DEFINE_string("gallery", None, "Folder of gallery images, or an mgcam-extract output folder.")
flags.DEFINE_string("gallery_features", "", "With an image folder as --gallery: keep its "
                    "features here (an mgcam-extract output folder, resumed if present).")
flags.DEFINE_integer("top_k", 10, "Gallery images listed per query.")
flags.DEFINE_string("sheet", "", "Write the rankings to this .html or .png file.")
flags.DEFINE_string("json_out", "", "Write the rankings as JSON here.")
flags.DEFINE_bool("attention", False, "With --sheet: show beside each query and result "
                  "what the model looked at: Phi+ (MGCAM's contrastive attention map) over "
                  "the image, and the mask it was given.")
flags.DEFINE_enum("mask_policy", "auto", ["auto", "files", "generate", "full_body"],
                  "Masks of images without one (see mgcam-extract).")
flags.DEFINE_string("mask_model", "", "BlazePose-full .tflite; empty: $MGCAM_MASK_MODEL or fetched.")
flags.DEFINE_integer("batch_size", 64, "Images per forward pass.")
flags.DEFINE_bool("exact", False, "With an index as --gallery: brute-force search over all "
                  "its features even if the index is approximate.")
flags.DEFINE_integer("nprobe", 0, "With an IVF index: cells searched per query "
                     "(0: the value stored with the index; more = higher recall, slower).")
from mgcam_tf.cli.common import check_numbers  # noqa: E402
check_numbers("top_k", "batch_size", low=1)
check_numbers("nprobe", low=0)


def main(argv):
    queries = argv[1:]
    from mgcam_tf.retrieval import extraction
    from mgcam_tf.retrieval import index
    from mgcam_tf.retrieval import search
    from mgcam_tf.retrieval import user_images
    from mgcam_tf.serving.loader import SavedModelEmbedder
    from mgcam_tf.errors import ConfigError, DataError

    if not queries:
        raise ConfigError("give one or more query images after the flags")
    for q in queries:
        if not os.path.isfile(q):
            raise DataError(f"{q}: query image not found")
    if FLAGS.sheet and os.path.splitext(FLAGS.sheet)[1].lower() not in search.SHEET_FORMATS:
        raise ConfigError(f"--sheet={FLAGS.sheet}: must end in .html or .png")
    if FLAGS.attention and not FLAGS.sheet:
        raise ConfigError("--attention draws on the sheet: give --sheet=FILE.html or .png")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    embedder = SavedModelEmbedder(saved_model_or_preset())
    with tempfile.TemporaryDirectory(prefix="mgcam-search-") as tmp:
        if index.is_index(FLAGS.gallery):
            gallery = index.open_index(FLAGS.gallery)
            if gallery.fingerprint != embedder.fingerprint:
                raise ConfigError(f"--gallery={FLAGS.gallery}: an index of model "
                                  f"{gallery.fingerprint}, but --saved_model is model "
                                  f"{embedder.fingerprint}")
        elif extraction.is_feature_folder(FLAGS.gallery):
            stored = extraction.read_fingerprint(FLAGS.gallery)
            if stored != embedder.fingerprint:
                raise ConfigError(f"--gallery={FLAGS.gallery}: features of model {stored} "
                                  f"(extraction.json), but --saved_model is model "
                                  f"{embedder.fingerprint} ({embedder.export_dir}); extract "
                                  "the gallery again with this export")
            gallery = extraction.load_features(FLAGS.gallery)
        else:
            out = FLAGS.gallery_features or os.path.join(tmp, "gallery")
            gallery = extraction.extract_folder(
                embedder, FLAGS.gallery, out, mask_policy=FLAGS.mask_policy,
                model_path=FLAGS.mask_model or None, batch_size=FLAGS.batch_size)
        # An export with the mask model in its graph makes the missing masks itself.
        masks = user_images.resolve_masks(queries, FLAGS.mask_policy,
                                          cache_dir=os.path.join(tmp, "masks"),
                                          model_path=FLAGS.mask_model or None,
                                          in_graph=embedder.has_mask_in_graph)
        query_features = embedder.embed_images(queries, masks, batch_size=FLAGS.batch_size)
    extraction.refuse_non_finite(query_features, queries, "the query features")
    if query_features.shape[1] != gallery.features.shape[1]:
        raise DataError(f"--gallery={FLAGS.gallery}: features of size {gallery.features.shape[1]}, "
                        f"the export makes {query_features.shape[1]}: extract it with this export")
    if index.is_index(FLAGS.gallery):
        results = search.search(query_features, gallery, FLAGS.top_k, exact=FLAGS.exact or None,
                                nprobe=FLAGS.nprobe or None)
    else:
        results = search.search(query_features, gallery, FLAGS.top_k)
    for q, matches in zip(queries, results):
        print(f"query {q}")
        for m in matches:
            who = f"  id {m.pid}" if m.pid >= 0 else ""
            print(f"  {m.rank:3d}  {m.distance:8.4f}  {m.path}{who}")
    if FLAGS.json_out:
        atomic_files.write_json(FLAGS.json_out, {"queries": [
            {"query": q, "matches": [vars(m) for m in matches]} for q, matches in zip(queries, results)]})
    if FLAGS.sheet:
        preset = embedder.metadata.get("preset", {})
        approximate = index.is_index(FLAGS.gallery) and not FLAGS.exact and \
            gallery.index_type != "flat"
        settings = {"export": str(embedder.export_dir), "fingerprint": embedder.fingerprint,
                    "preset": preset.get("name", "") if isinstance(preset, dict) else "",
                    "gallery": FLAGS.gallery, "top_k": FLAGS.top_k, "distance": "euclidean",
                    "search": f"approximate ({gallery.index_type})" if approximate else "exact"}
        attention = attention_lookup(embedder, queries, results, gallery) \
            if FLAGS.attention else None
        search.write_sheet(FLAGS.sheet, queries, results, settings, attention)
        print(f"sheet: {FLAGS.sheet}")


def attention_lookup(embedder, queries, results, gallery):
    """Phi+ and the mask of every image the sheet shows (`attention_maps.AttentionLookup`),
    each image with its mask file: the gallery's own, else as --mask_policy says (an
    export that makes masks in its graph: made here, so that the sheet can show them)."""
    from mgcam_tf.retrieval import attention_maps, user_images

    gallery_masks = dict(zip(gallery.paths, gallery.masks))
    shown = list(dict.fromkeys([*queries, *(m.path for ms in results for m in ms)]))
    given = [gallery_masks.get(p) if os.path.isfile(gallery_masks.get(p) or "") else None
             for p in shown]
    with tempfile.TemporaryDirectory(prefix="mgcam-search-attention-") as tmp:
        masks = user_images.resolve_masks(shown, FLAGS.mask_policy, given=given,
                                          cache_dir=tmp, model_path=FLAGS.mask_model or None)
        maps, used = attention_maps.attention_for_files(embedder, shown, masks,
                                                        batch_size=FLAGS.batch_size)
    return attention_maps.lookup(shown, maps, used)


def run():
    """Console-script entry point of mgcam-search."""
    require_one_of("saved_model", "preset")
    flags.mark_flag_as_required("gallery")
    run_tool(main, __name__)


if __name__ == "__main__":
    run()
