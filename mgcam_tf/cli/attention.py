"""mgcam-attention: what MGCAM looks at, for every image of a folder.

  mgcam-attention --preset=mgcam_siamese_cuhk03 --image_dir=/photos/gallery --output_dir=attention
  mgcam-attention --saved_model=export/mgcam --image_dir=/data/Market-1501/query --output_dir=att

Writes, for each image under --image_dir, `<output_dir>/<its path>_attention.png`:
the image, Phi+ (the contrastive attention map of MGCAM, paper Sec. 3.3:
blue low, red high) over it, and the mask it was given (background dimmed),
side by side. Masks as in mgcam-extract (--mask_policy). In Python:
`mgcam_tf.retrieval.attention_maps.attention_maps(model, rgbm)` returns the
maps of a batch.
"""

from __future__ import annotations

import os
import tempfile

from absl import flags

from mgcam_tf.cli.common import (ProgressBar, check_numbers, define_preset_flag, require_one_of,
                                 run_tool, saved_model_or_preset)

FLAGS = flags.FLAGS

flags.DEFINE_string("saved_model", None, "Export of mgcam-export (base or version folder) "
                    "of an MGCAM model.")
define_preset_flag("--saved_model")
flags.DEFINE_string("image_dir", None, "Folder of images (searched recursively).")
flags.DEFINE_string("output_dir", None, "Where the pictures go (created).")
flags.DEFINE_enum("mask_policy", "auto", ["auto", "files", "generate", "full_body"],
                  "Masks of images without one (see mgcam-extract).")
flags.DEFINE_string("mask_model", "", "BlazePose-full .tflite; empty: $MGCAM_MASK_MODEL or fetched.")
flags.DEFINE_integer("batch_size", 64, "Images per forward pass.")
flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.")
check_numbers("batch_size", low=1)


def main(argv):
    from mgcam_tf.errors import ConfigError
    from mgcam_tf.retrieval import attention_maps, user_images
    from mgcam_tf.serving.loader import SavedModelEmbedder

    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
    images = user_images.list_images(FLAGS.image_dir)
    embedder = SavedModelEmbedder(saved_model_or_preset())
    bar = ProgressBar("attention", len(images), enabled=FLAGS.progress)
    with tempfile.TemporaryDirectory(prefix="mgcam-attention-") as tmp:
        masks = user_images.resolve_masks(images, FLAGS.mask_policy, cache_dir=tmp,
                                          model_path=FLAGS.mask_model or None)
        maps, used = attention_maps.attention_for_files(embedder, images, masks,
                                                        batch_size=FLAGS.batch_size,
                                                        progress=bar)
    bar.close()
    written = attention_maps.write_overlays(FLAGS.output_dir, images, maps, used,
                                            root=FLAGS.image_dir)
    print(f"{len(written)} attention pictures in {os.path.abspath(FLAGS.output_dir)}")


def run():
    """Console-script entry point of mgcam-attention."""
    require_one_of("saved_model", "preset")
    flags.mark_flag_as_required("image_dir")
    flags.mark_flag_as_required("output_dir")
    run_tool(main, __name__)


if __name__ == "__main__":
    run()
