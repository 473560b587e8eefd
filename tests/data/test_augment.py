"""The recipe's augmentations keep image, mask and attention target aligned."""

import numpy as np
import pytest
import tensorflow as tf

from mgcam_tf.conventions import RGB_MEAN
from mgcam_tf.data import augment
from mgcam_tf.data.preprocess import preprocess_packed
from mgcam_tf.errors import ConfigError


def packed_batch(batch=16, seed=0):
    """uint8 [B, 160, 64, 4] whose mask is a function of the red channel (mask = 255
    where red > 127), so any op that moves pixels must move the mask with them."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (batch, 160, 64, 3), dtype=np.uint8)
    mask = np.where(rgb[..., :1] > 127, 255, 0).astype(np.uint8)
    return np.concatenate([rgb, mask], axis=-1)


def test_pad_and_crop_moves_image_and_mask_together():
    x = packed_batch()
    out = augment.pad_and_crop(tf.constant(x), 10, tf.constant([3, 4], tf.int64)).numpy()
    assert out.shape == x.shape
    inside = out[..., 3] > 0
    np.testing.assert_array_equal(inside, out[..., 0] > 127)     # still the red rule
    # Each sample is its own shifted window: some moved, and what is not padding is
    # a window of the original.
    assert (out != x).any(axis=(1, 2, 3)).sum() > 8


@pytest.mark.parametrize("scope", augment.ERASING_SCOPES)
def test_random_erasing_fills_a_box_with_the_mean_and_keeps_the_target_on_the_mask(scope):
    x = packed_batch()
    out = augment.random_erase(tf.constant(x), tf.constant([1, 2], tf.int64), 1.0,
                               erase_mask=scope == "image_and_mask").numpy()
    box = (out[..., :3] != x[..., :3]).any(-1)                 # where the image changed
    assert box.any(axis=(1, 2)).all()                            # p = 1: every sample
    mean = np.array([round(m) for m in RGB_MEAN], np.uint8)
    assert (out[..., :3][box] == mean).all()
    if scope == "image":
        np.testing.assert_array_equal(out[..., 3], x[..., 3])   # the mask shows the body
    else:
        assert (out[..., 3][box] == 0).all()                     # erased to background
        np.testing.assert_array_equal(out[..., 3][~box], x[..., 3][~box])
    # The attention target is made from the (erased or not) mask channel.
    target = preprocess_packed(tf.constant(out))["attention_target"].numpy()
    expected = preprocess_packed(tf.constant(
        np.concatenate([x[..., :3], out[..., 3:]], -1)))["attention_target"].numpy()
    np.testing.assert_allclose(target, expected)


def test_erasing_boxes_cover_two_to_forty_percent():
    boxes = augment.erasing_boxes(tf.constant(2000), tf.constant([5, 6], tf.int64), 1.0).numpy()
    area = boxes.mean(axis=(1, 2, 3))
    assert area.min() >= 0.015 and area.max() <= 0.41
    assert 0.15 < area.mean() < 0.25                       # uniform in [0.02, 0.4]: 0.21


def test_colour_jitter_and_grayscale_touch_rgb_only():
    x = packed_batch()
    config = augment.Augmentation(color_jitter=0.3, hue_jitter=0.1, grayscale=1.0)
    out = augment.augment_batch(tf.constant(x), tf.constant([7, 8], tf.int64), config).numpy()
    np.testing.assert_array_equal(out[..., 3], x[..., 3])
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_augmentation_is_a_function_of_the_seed():
    x = tf.constant(packed_batch())
    config = augment.Augmentation(random_erasing=0.5, pad_crop=8, color_jitter=0.2)
    a = augment.augment_batch(x, tf.constant([1, 1], tf.int64), config).numpy()
    b = augment.augment_batch(x, tf.constant([1, 1], tf.int64), config).numpy()
    c = augment.augment_batch(x, tf.constant([1, 2], tf.int64), config).numpy()
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_the_paper_recipe_leaves_pixels_alone():
    x = tf.constant(packed_batch())
    out = augment.augment_batch(x, tf.constant([1, 1], tf.int64), augment.Augmentation())
    assert out is x


@pytest.mark.parametrize("field, value", [("random_erasing", 1.5), ("grayscale", -0.1),
                                          ("random_erasing", float("nan")),
                                          ("color_jitter", 2.0), ("hue_jitter", 0.6),
                                          ("pad_crop", -1), ("pad_crop", 2.5),
                                          ("erasing_scope", "mask")])
def test_out_of_range_settings_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        augment.Augmentation(**{field: value})
