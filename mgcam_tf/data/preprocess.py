"""The one preprocessing function of MGCAM (SPEC §1) and the image/mask decoders.

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

# Per-channel affine map of the RGB-M input, applied as (x - mean) * scale:
# one subtract and one multiply over the 4-channel tensor (1/256 is exact in
# float32; 1/255 differs from a division by at most one ulp).
_RGBM_MEAN = RGB_MEAN + (MASK_MEAN,)
_RGBM_SCALE = (1.0 / IMAGE_SCALE,) * 3 + (1.0 / MASK_SCALE,)

MirrorLike = Union[bool, tf.Tensor]


def resize_to_input(pixels: tf.Tensor) -> tf.Tensor:
    """Bilinear resize of uint8 pixels to 160x64, rounded back to uint8.

    Args:
      pixels: uint8 (or float holding 0..255) [..., H, W, C], rank 3 or 4.

    Returns:
      uint8 [..., 160, 64, C]. When the input is already uint8 160x64 (known
      statically) it is returned unchanged, which is the common case inside
      the training pipeline.
    """
    pixels = tf.convert_to_tensor(pixels)
    static_hw = pixels.shape[-3:-1]
    if pixels.dtype == tf.uint8 and tuple(static_hw) == IMAGE_SIZE:
        return pixels
    # Half-pixel-centre bilinear without antialiasing is what cv2.resize
    # (INTER_LINEAR), used by the official data layer, computes.
    resized = tf.image.resize(tf.cast(pixels, tf.float32), IMAGE_SIZE,
                              method="bilinear", antialias=False)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def _mirror(x: tf.Tensor, mirror: MirrorLike) -> tf.Tensor:
    """Flips x [..., H, W, C] left-right where `mirror` is true.

    `mirror` is a Python bool (decided while tracing), a bool scalar tensor
    (whole input) or, for rank-4 input, a bool [B] tensor (one flag per
    sample: the training pipeline mirrors whole batches this way).
    """
    if isinstance(mirror, bool):
        return tf.reverse(x, axis=[-2]) if mirror else x
    mirror = tf.convert_to_tensor(mirror)
    if mirror.dtype != tf.bool:
        raise TypeError(f"mirror must be a bool or a bool tensor, got {mirror.dtype}")
    flipped = tf.reverse(x, axis=[-2])
    if mirror.shape.rank == 1:
        # One flag per sample: broadcast over height, width and channels.
        mirror = tf.reshape(mirror, [-1, 1, 1, 1])
    return tf.where(mirror, flipped, x)


def preprocess(image: tf.Tensor, mask: tf.Tensor,
               mirror: MirrorLike = False) -> dict[str, tf.Tensor]:
    """RGB-M network input and attention target of SPEC §1.

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
    image = resize_to_input(image)
    mask = resize_to_input(mask)
    # Mirroring the 4-channel uint8 tensor once flips image and mask together
    # and touches a quarter of the bytes the float tensor would.
    rgbm_u8 = _mirror(tf.concat([image, mask], axis=-1), mirror)
    rgbm = (tf.cast(rgbm_u8, tf.float32) - tf.constant(_RGBM_MEAN)) * tf.constant(_RGBM_SCALE)
    # The target comes from the (possibly mirrored) 160x64 mask; a 4x
    # bilinear reduction with half-pixel centres commutes with the flip.
    mask_f = tf.cast(rgbm_u8[..., 3:], tf.float32)
    target = tf.image.resize(mask_f, ATTENTION_SIZE, method="bilinear",
                             antialias=False) * (1.0 / MASK_SCALE)
    return {"rgbm": rgbm, "attention_target": target}


def decode_image(contents: tf.Tensor) -> tf.Tensor:
    """Decodes JPEG/PNG/BMP/GIF bytes to uint8 RGB.

    Args:
      contents: string scalar, the encoded file.

    Returns:
      uint8 [H, W, 3]. Grayscale becomes 3 equal channels, RGBA drops alpha;
      a GIF gives its first frame.
    """
    image = tf.io.decode_image(contents, channels=3, dtype=tf.uint8,
                               expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def decode_mask(contents: tf.Tensor) -> tf.Tensor:
    """Decodes a mask file (PNG usually) to one uint8 channel.

    Args:
      contents: string scalar, the encoded file.

    Returns:
      uint8 [H, W, 1], values as stored (soft 0..255 masks stay soft). An
      RGB(A) or grey+alpha mask gives its first channel: masks saved as
      colour images store the same value in every channel, and a luminance
      conversion would turn e.g. a pure red body (255, 0, 0) into 76.
    """
    mask = tf.io.decode_image(contents, channels=0, dtype=tf.uint8,
                              expand_animations=False)
    mask = mask[..., :1]
    mask.set_shape([None, None, 1])
    return mask


def full_body_mask(height: int = IMAGE_HEIGHT, width: int = IMAGE_WIDTH) -> tf.Tensor:
    """uint8 [height, width, 1] all 255: the mask of an image without one."""
    return tf.fill([height, width, 1], tf.constant(255, tf.uint8))
