"""The one preprocessing function of MGCAM (the official Python data layer, `MGCAM_DataLayer`) and the image/mask decoders.

`preprocess` serves training (tf.data), evaluation and the exported
SavedModel, so it is written in plain TF ops only: it runs eagerly, inside a
`tf.data` map, a `tf.function` and a serving graph with unknown input sizes.

Inputs are resized to 160x64 and rounded back to uint8 before normalisation.
The rounding costs at most half a grey level but makes the result identical
whether the resize happened here or earlier in the input pipeline (which
caches uint8 160x64 crops to keep memory small).
"""

from __future__ import annotations

from typing import Union

import tensorflow as tf

from mgcam_tf.conventions import (ATTENTION_SIZE, IMAGE_HEIGHT, IMAGE_SCALE, IMAGE_SIZE, IMAGE_WIDTH,  # noqa: F401
                                  MASK_MEAN, MASK_SCALE, RGB_MEAN)
# The decoders and the resize live below the data layer (segmentation uses them
# too); they are part of this module's interface as before.
from mgcam_tf.image_io import decode_image, decode_mask, resize_to_input  # noqa: F401

# Per-channel affine map of the RGB-M input, (x - mean) * scale, applied as
# x * scale - mean * scale (within an ulp or two of the division).
_RGBM_MEAN = RGB_MEAN + (MASK_MEAN,)
_RGBM_SCALE = (1.0 / IMAGE_SCALE,) * 3 + (1.0 / MASK_SCALE,)
_ROW_SCALE = _RGBM_SCALE * IMAGE_WIDTH
_ROW_OFFSET = tuple(-m * s for m, s in zip(_RGBM_MEAN, _RGBM_SCALE)) * IMAGE_WIDTH

MirrorLike = Union[bool, tf.Tensor]


def _mirror_packed(rgbm_u8: tf.Tensor, mirror: MirrorLike) -> tf.Tensor:
    """Flips uint8 [..., H, W, 4] left-right where `mirror` is true.

    `mirror` is a Python bool (decided while tracing), a bool scalar tensor
    (whole input) or, for rank-4 input, a bool [B] tensor (one flag per
    sample: the training pipeline mirrors whole batches this way).
    """
    # Seen as one uint32 per pixel, the flip and the select move 4-byte
    # words instead of broadcasting over a 4-wide channel axis (10x faster).
    words = tf.bitcast(rgbm_u8, tf.uint32)                  # [..., H, W]
    if isinstance(mirror, bool):
        return tf.bitcast(tf.reverse(words, axis=[-1]), tf.uint8) if mirror else rgbm_u8
    mirror = tf.convert_to_tensor(mirror)
    if mirror.dtype != tf.bool:
        raise TypeError(f"mirror must be a bool or a bool tensor, got {mirror.dtype}")
    if mirror.shape.rank == 1:
        # One flag per sample: broadcast over height and width.
        mirror = tf.reshape(mirror, [-1, 1, 1])
    return tf.bitcast(tf.where(mirror, tf.reverse(words, axis=[-1]), words), tf.uint8)


def preprocess(image: tf.Tensor, mask: tf.Tensor,
               mirror: MirrorLike = False) -> dict[str, tf.Tensor]:
    """RGB-M network input and attention target of the official data layer.

    Args:
      image: uint8 [..., H, W, 3] RGB, rank 3 or 4, any H, W.
      mask: uint8 [..., H, W, 1], 0 = background .. 255 = body (soft values
        are kept). Its H, W may differ from the image's: both are resized to
        160x64 independently, as in the official code.
      mirror: Python bool, bool scalar tensor, or (rank 4 only) bool [B]
        tensor. Image, mask channel and attention target flip together.

    Returns:
      {"rgbm": float32 [..., 160, 64, 4] with channels
         (R - 122.675) / 256, (G - 116.669) / 256, (B - 104.008) / 256,
         (mask - 127.5) / 255;
       "attention_target": float32 [..., 40, 16, 1] = mask resized to 40x16
         (bilinear, from the 160x64 mask) / 255, in 0..1}
    """
    packed = tf.concat([resize_to_input(image), resize_to_input(mask)], axis=-1)
    return preprocess_packed(packed, mirror)


def preprocess_packed(rgbm_u8: tf.Tensor, mirror: MirrorLike = False) -> dict[str, tf.Tensor]:
    """`preprocess` of image and mask already resized and stacked.

    The input pipeline keeps each sample as one uint8 [160, 64, 4] tensor
    (RGB + mask), which halves the tensors it batches and caches; this is
    the second half of `preprocess`, shared by both.

    Args:
      rgbm_u8: uint8 [..., 160, 64, 4], rank 3 or 4.
      mirror: as in `preprocess`.

    Returns:
      The dict of `preprocess`.
    """
    # Mirroring the 4-channel uint8 tensor once flips image and mask together
    # and touches a quarter of the bytes the float tensor would.
    rgbm_u8 = _mirror_packed(rgbm_u8, mirror)
    # (x - mean) * scale as x * scale + offset over rows of W * 4 values: a
    # 256-wide broadcast runs ~3x faster than one over the 4-wide channels.
    rows = tf.reshape(tf.cast(rgbm_u8, tf.float32), [-1, IMAGE_WIDTH * 4])
    rows = rows * tf.constant(_ROW_SCALE) + tf.constant(_ROW_OFFSET)
    rgbm = tf.reshape(rows, tf.shape(rgbm_u8))
    rgbm.set_shape(rgbm_u8.shape)
    # The target comes from the (possibly mirrored) 160x64 mask; a 4x
    # bilinear reduction with half-pixel centres commutes with the flip.
    mask = rgbm_u8[..., 3:]
    rank3 = mask.shape.rank == 3
    target = tf.raw_ops.ResizeBilinear(images=mask[tf.newaxis] if rank3 else mask,
                                       size=ATTENTION_SIZE, half_pixel_centers=True)
    target = target * (1.0 / MASK_SCALE)
    return {"rgbm": rgbm, "attention_target": target[0] if rank3 else target}


def full_body_mask(height: int = IMAGE_HEIGHT, width: int = IMAGE_WIDTH) -> tf.Tensor:
    """uint8 [height, width, 1] all 255: the mask of an image without one."""
    return tf.fill([height, width, 1], tf.constant(255, tf.uint8))
