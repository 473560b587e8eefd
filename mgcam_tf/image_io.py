"""Decoding image and mask files and resizing them to the network's input, in TF ops.

The lowest layer that touches pixels: the data pipeline
(`mgcam_tf.data.preprocess`, which re-exports these), the segmenters and the
served graphs all decode and resize the same way.
"""

from __future__ import annotations

import tensorflow as tf

from mgcam_tf.conventions import IMAGE_SIZE


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
    if pixels.dtype == tf.uint8 and tuple(pixels.shape[-3:-1]) == IMAGE_SIZE:
        return pixels
    if pixels.dtype not in (tf.uint8, tf.float32):
        pixels = tf.cast(pixels, tf.float32)
    rank3 = pixels.shape.rank == 3
    batch = pixels[tf.newaxis] if rank3 else pixels
    # Half-pixel-centre bilinear without antialiasing: what cv2.resize
    # (INTER_LINEAR, the official data layer) and tf.image.resize compute.
    # The raw op takes uint8 directly and skips tf.image.resize's shape
    # checks, which matter at thousands of small images per second.
    resized = tf.raw_ops.ResizeBilinear(images=batch, size=IMAGE_SIZE,
                                        half_pixel_centers=True)
    # Round half up; a convex combination of 0..255 needs no clipping, but a
    # float input might hold anything.
    if pixels.dtype == tf.uint8:
        out = tf.cast(resized + 0.5, tf.uint8)
    else:
        out = tf.saturate_cast(resized + 0.5, tf.uint8)
    return out[0] if rank3 else out


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
