"""Training-time augmentation of packed RGB-M batches, in tf.data.

The modern ReID recipe (Luo et al., "Bag of Tricks and a Strong Baseline for
Deep Person Re-identification", CVPR-W 2019; torchreid's and fast-reid's
transforms) adds to the paper's random mirror:

- pad + random crop: pad by `pad_crop` pixels on every side, crop a random
  160x64 window back out. Image and mask move together (the pad is black
  image, background mask), so the mask, and the attention target made from
  it, stay on the body.
- colour jitter (brightness, contrast, saturation: factors drawn uniformly
  in [1 - s, 1 + s], as torchvision's ColorJitter; hue: a shift drawn in
  [-h, h] of the colour circle) and random grayscale, on the RGB channels
  only: colour says nothing about where the body is.
- random erasing (Zhong et al., "Random Erasing Data Augmentation", AAAI
  2020): with probability p, a rectangle of 2-40 % of the area and aspect
  ratio 0.3-3.3 is filled with the data set mean (what normalisation maps to
  0, as Luo et al.'s version does). `erasing_scope` decides what it covers:
  "image" (the RGB channels; the mask still shows the hidden body) or
  "image_and_mask" (the mask is erased too, set to background, as a body
  segmenter would see an occluder; the attention target follows the mask).

The configuration imports without TensorFlow (command lines read it before
they load TF); the operations import it when they run.

Every operation works on a whole batch of uint8 [B, 160, 64, 4] at once,
each sample with its own random draws, a pure function of a per-batch seed,
so a seed gives the same batches on every run.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from mgcam_tf.conventions import IMAGE_HEIGHT, IMAGE_WIDTH, RGB_MEAN
from mgcam_tf.errors import ConfigError

if TYPE_CHECKING:
    import tensorflow as tf

ERASING_SCOPES = ("image", "image_and_mask")
# Zhong et al.'s defaults (and torchreid's / fast-reid's).
ERASING_AREA = (0.02, 0.4)
ERASING_ASPECT = (0.3, 1.0 / 0.3)


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """What the training pipeline does to a batch; all off but the mirror (the paper's recipe)."""

    mirror: bool = True
    random_erasing: float = 0.0
    erasing_scope: str = "image"
    pad_crop: int = 0
    color_jitter: float = 0.0
    hue_jitter: float = 0.0
    grayscale: float = 0.0

    def __post_init__(self):
        for name in ("random_erasing", "grayscale"):
            _check_range(name, getattr(self, name), 0.0, 1.0, "[0, 1]")
        _check_range("color_jitter", self.color_jitter, 0.0, 1.0, "[0, 1]")
        _check_range("hue_jitter", self.hue_jitter, 0.0, 0.5, "[0, 0.5]")
        if self.erasing_scope not in ERASING_SCOPES:
            raise ConfigError(f"erasing_scope must be one of {ERASING_SCOPES}, "
                              f"got {self.erasing_scope!r}")
        if not isinstance(self.pad_crop, int) or isinstance(self.pad_crop, bool) \
                or not 0 <= self.pad_crop <= IMAGE_WIDTH // 2:
            raise ConfigError(f"pad_crop must be a whole number of pixels in "
                              f"[0, {IMAGE_WIDTH // 2}], got {self.pad_crop!r}")

    @property
    def changes_pixels(self) -> bool:
        """Whether anything but the mirror is on."""
        return bool(self.random_erasing or self.pad_crop or self.color_jitter
                    or self.hue_jitter or self.grayscale)


def _check_range(name: str, value, low: float, high: float, text: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not low <= value <= high:
        raise ConfigError(f"{name} must be a number in {text}, got {value!r}")


def augment_batch(packed: "tf.Tensor", seed: "tf.Tensor", config: Augmentation) -> "tf.Tensor":
    """uint8 [B, 160, 64, 4] RGB + mask -> the same, augmented per sample (not mirrored:
    the mirror stays with `preprocess_packed`). seed: int [2], the batch's."""
    import tensorflow as tf

    if not config.changes_pixels:
        return packed
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=4)
    if config.pad_crop:
        packed = pad_and_crop(packed, config.pad_crop, seeds[0])
    rgb, mask = packed[..., :3], packed[..., 3:]
    if config.color_jitter or config.hue_jitter or config.grayscale:
        rgb = jitter_colours(rgb, seeds[1], config.color_jitter, config.hue_jitter,
                             config.grayscale)
    packed = tf.concat([rgb, mask], axis=-1)
    if config.random_erasing:
        packed = random_erase(packed, seeds[2], config.random_erasing,
                              erase_mask=config.erasing_scope == "image_and_mask")
    return packed


def pad_and_crop(packed: "tf.Tensor", pad: int, seed: "tf.Tensor") -> "tf.Tensor":
    """Zero-pads [B, H, W, C] by `pad` on each side and crops each sample's own H x W window."""
    import tensorflow as tf

    batch = tf.shape(packed)[0]
    height, width = packed.shape[1], packed.shape[2]
    padded = tf.pad(packed, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    offsets = tf.random.stateless_uniform([batch, 2], seed=seed, minval=0, maxval=2 * pad + 1,
                                          dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(height)[tf.newaxis]          # [B, H]
    cols = offsets[:, 1:] + tf.range(width)[tf.newaxis]           # [B, W]
    out = tf.gather(padded, rows, axis=1, batch_dims=1)           # [B, H, W + 2p, C]
    return tf.gather(out, cols, axis=2, batch_dims=1)             # [B, H, W, C]


def jitter_colours(rgb: "tf.Tensor", seed: "tf.Tensor", strength: float, hue: float,
                   grayscale: float) -> "tf.Tensor":
    """uint8 [B, H, W, 3] -> uint8, brightness/contrast/saturation/hue jitter then grayscale."""
    import tensorflow as tf

    batch = tf.shape(rgb)[0]
    seeds = tf.random.experimental.stateless_split(seed, num=5)
    x = tf.cast(rgb, tf.float32) / 255.0

    def factor(s):
        return tf.random.stateless_uniform([batch, 1, 1, 1], seed=s, minval=1.0 - strength,
                                           maxval=1.0 + strength)

    if strength:
        x = x * factor(seeds[0])                                                  # brightness
        grey_mean = tf.reduce_mean(tf.image.rgb_to_grayscale(x), axis=[1, 2, 3], keepdims=True)
        x = grey_mean + factor(seeds[1]) * (x - grey_mean)                         # contrast
        x = tf.clip_by_value(x, 0.0, 1.0)
        x = tf.image.rgb_to_grayscale(x) + factor(seeds[2]) * (x - tf.image.rgb_to_grayscale(x))
        x = tf.clip_by_value(x, 0.0, 1.0)                                          # saturation
    if hue:
        hsv = tf.image.rgb_to_hsv(x)
        shift = tf.random.stateless_uniform([batch, 1, 1], seed=seeds[3], minval=-hue, maxval=hue)
        hsv = tf.stack([tf.math.floormod(hsv[..., 0] + shift, 1.0), hsv[..., 1], hsv[..., 2]],
                       axis=-1)
        x = tf.image.hsv_to_rgb(hsv)
    if grayscale:
        grey = tf.random.stateless_uniform([batch, 1, 1, 1], seed=seeds[4]) < grayscale
        x = tf.where(grey, tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(x)), x)
    return tf.saturate_cast(tf.round(x * 255.0), tf.uint8)


def erasing_boxes(batch: "tf.Tensor", seed: "tf.Tensor", probability: float,
                  height: int = IMAGE_HEIGHT, width: int = IMAGE_WIDTH) -> "tf.Tensor":
    """bool [B, H, W, 1]: each sample's erased rectangle (all False where not erased).

    Zhong et al. retry until a drawn rectangle fits; here the side lengths
    are clipped to the image instead, which keeps the op batched and changes
    only the rare draws that would not fit.
    """
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed, num=5)
    area = tf.random.stateless_uniform([batch], seed=seeds[0], minval=ERASING_AREA[0],
                                       maxval=ERASING_AREA[1]) * float(height * width)
    log_aspect = tf.random.stateless_uniform(
        [batch], seed=seeds[1], minval=math.log(ERASING_ASPECT[0]),
        maxval=math.log(ERASING_ASPECT[1]))
    aspect = tf.exp(log_aspect)
    box_h = tf.clip_by_value(tf.round(tf.sqrt(area * aspect)), 1.0, float(height))
    box_w = tf.clip_by_value(tf.round(tf.sqrt(area / aspect)), 1.0, float(width))
    top = tf.floor(tf.random.stateless_uniform([batch], seed=seeds[2]) * (height - box_h + 1))
    left = tf.floor(tf.random.stateless_uniform([batch], seed=seeds[3]) * (width - box_w + 1))
    erased = tf.random.stateless_uniform([batch], seed=seeds[4]) < probability
    rows = tf.range(height, dtype=tf.float32)[tf.newaxis]
    cols = tf.range(width, dtype=tf.float32)[tf.newaxis]
    in_rows = (rows >= top[:, None]) & (rows < (top + box_h)[:, None])           # [B, H]
    in_cols = (cols >= left[:, None]) & (cols < (left + box_w)[:, None])         # [B, W]
    box = in_rows[:, :, None] & in_cols[:, None, :] & erased[:, None, None]
    return box[..., tf.newaxis]


def random_erase(packed: "tf.Tensor", seed: "tf.Tensor", probability: float,
                 erase_mask: bool = False) -> "tf.Tensor":
    """uint8 [B, H, W, 4]: a random rectangle per sample (with `probability`) set to the
    mean colour; with `erase_mask`, the mask there set to background (0) too."""
    import tensorflow as tf

    box = erasing_boxes(tf.shape(packed)[0], seed, probability, packed.shape[1], packed.shape[2])
    mean = tf.constant([round(m) for m in RGB_MEAN] + [0], tf.uint8)
    fill = tf.broadcast_to(mean, tf.shape(packed))
    channels = tf.constant([True, True, True, erase_mask])
    return tf.where(box & channels, fill, packed)
