"""The package's fixed conventions, in one small module without TensorFlow.

File naming (the data sets' own), the network's input and map sizes and normalisation
(the official data layer), and the exported SavedModel's signature, input and output names
(`mgcam_tf.serving.export`). Every other module imports them from here, so
that a client, a data reader or a test never carries its own copy.
"""

from __future__ import annotations

import os
import re
from typing import Optional

# -- files -----------------------------------------------------------------------
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
# The mask folder of image folder X is X + MASK_SUFFIX, masks named NAME.png.
MASK_SUFFIX = "_seg"
# A camera token in a file name: `_c3`, `-c3`, `c3` at the start.
CAMERA_TOKEN = re.compile(r"(?:^|[_\-.])c(\d+)", re.I)


def is_image_file(name: str) -> bool:
    """Whether a file name (or path) is an image this package reads; hidden files are not."""
    return (not os.path.basename(name).startswith(".")
            and name.lower().endswith(IMAGE_EXTENSIONS))


def default_mask_path(image_path: str, image_root: Optional[str] = None) -> str:
    """Where the mask of `image_path` belongs: `X_seg/NAME.png` for `X/NAME.jpg`.

    With `image_root` (an ancestor folder of the image, e.g. MARS'
    `bbox_train`), the `_seg` suffix goes on that folder instead:
    `bbox_train_seg/0001/NAME.png`.
    """
    folder = image_root if image_root is not None else os.path.dirname(image_path)
    rel_dir = os.path.relpath(os.path.dirname(image_path), folder)
    stem = os.path.splitext(os.path.basename(image_path))[0]
    return os.path.normpath(os.path.join(folder.rstrip("/\\") + MASK_SUFFIX, rel_dir, stem + ".png"))


# -- the network's input ------------------------------------------------------------
# Network input size (height, width) of the official data layer.
IMAGE_HEIGHT = 160
IMAGE_WIDTH = 64
IMAGE_SIZE = (IMAGE_HEIGHT, IMAGE_WIDTH)
# Size of the attention map Phi+ (stage-2 features, 1/4 of the input).
ATTENTION_HEIGHT = 40
ATTENTION_WIDTH = 16
ATTENTION_SIZE = (ATTENTION_HEIGHT, ATTENTION_WIDTH)
# The official code subtracts B 104.008, G 116.669, R 122.675 from BGR
# images. We keep images in RGB order and subtract each mean from its own
# channel, so the listed order here is R, G, B.
RGB_MEAN = (122.675, 116.669, 104.008)
IMAGE_SCALE = 256.0            # the official code divides by 256, not 255
MASK_MEAN = 127.5
MASK_SCALE = 255.0

# -- the exported SavedModel's contract ----------------------------------------------
SIGNATURE_DEFAULT = "serving_default"
SIGNATURE_BYTES = "serving_bytes"
SIGNATURE_RGBM = "serving_rgbm"
INPUT_IMAGE = "image"
INPUT_MASK = "mask"
INPUT_IMAGE_BYTES = "image_bytes"
INPUT_MASK_BYTES = "mask_bytes"
INPUT_RGBM = "rgbm"
OUTPUT_EMBEDDING = "embedding"
OUTPUT_ATTENTION = "attention"
SERVING_TAG = "serve"
PREDICT_METHOD = "tensorflow/serving/predict"
# Image-only signatures: the mask is made in the graph (mgcam_tf.segmentation).
SIGNATURE_IMAGE = "serving_image"
SIGNATURE_IMAGE_BYTES = "serving_image_bytes"
SIGNATURE_IMAGE_DETAILS = "serving_image_details"
SIGNATURE_IMAGE_BYTES_DETAILS = "serving_image_bytes_details"
OUTPUT_MASK = "mask"
OUTPUT_MASK_PNG = "mask_png"

# -- model choices (the paper's Table 2 ablations) ---------------------------------------
ARCHITECTURES = ("mgcam", "mscan")
INPUT_MODES = ("rgb", "mask", "masked_rgb", "rgbm")
ATTENTION_MODES = ("soft", "hard", "none")
# Keras dtype policies: variables stay float32 under all three, so a
# checkpoint restores into a model of any of them.
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
# MSCAN stages that may take IBN-Net's instance norm: the shallow ones, shared
# by the three streams (Pan et al., ECCV 2018, put it in the early layers only).
IBN_STAGES = ("stage1", "stage2")
# The test-time feature: h, or its BNNeck-normalised copy (Luo et al., CVPR-W 2019).
RETRIEVAL_FEATURES = ("h", "bnneck")

# The mask entry of an image whose mask the export makes itself
# (`user_images.resolve_masks(..., in_graph=True)`, `SavedModelEmbedder.embed_images`):
# never a real file name. Here because serving and retrieval both read it.
MASK_IN_GRAPH = "<mask made in the exported graph>"
