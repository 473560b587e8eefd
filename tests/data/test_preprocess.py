"""preprocess() against hand-computed numpy (the official data layer) and the decoders."""

import numpy as np
import pytest
import tensorflow as tf

from mgcam_tf.data import preprocess as pp


def _random_inputs(rng, batch=None, height=160, width=64):
    lead = () if batch is None else (batch,)
    image = rng.integers(0, 256, lead + (height, width, 3), dtype=np.uint8)
    mask = rng.integers(0, 256, lead + (height, width, 1), dtype=np.uint8)
    return image, mask


def _numpy_reference(image, mask):
    """The official data layer's recipe by hand for 160x64 inputs (no resize needed)."""
    img = image.astype(np.float64)
    rgb = np.stack([(img[..., 0] - 122.675) / 256, (img[..., 1] - 116.669) / 256,
                    (img[..., 2] - 104.008) / 256], axis=-1)
    m = mask.astype(np.float64)
    rgbm = np.concatenate([rgb, (m - 127.5) / 255], axis=-1)
    # Bilinear 160x64 -> 40x16 with half-pixel centres samples source
    # coordinate 4i + 1.5: the mean of rows 4i+1, 4i+2 and cols 4j+1, 4j+2.
    blocks = (m[..., 1::4, :, :] + m[..., 2::4, :, :]) / 2
    target = (blocks[..., 1::4, :] + blocks[..., 2::4, :]) / 2 / 255
    return rgbm, target


def test_constants():
    assert pp.IMAGE_SIZE == (160, 64)
    assert pp.ATTENTION_SIZE == (40, 16)
    assert pp.RGB_MEAN == (122.675, 116.669, 104.008)


@pytest.mark.parametrize("batch", [None, 3])
def test_normalisation_matches_numpy(batch):
    rng = np.random.default_rng(0)
    image, mask = _random_inputs(rng, batch)
    out = pp.preprocess(image, mask)
    rgbm, target = _numpy_reference(image, mask)
    lead = () if batch is None else (batch,)
    assert out["rgbm"].shape == lead + (160, 64, 4)
    assert out["attention_target"].shape == lead + (40, 16, 1)
    assert out["rgbm"].dtype == tf.float32
    np.testing.assert_allclose(out["rgbm"].numpy(), rgbm, atol=1e-6)
    np.testing.assert_allclose(out["attention_target"].numpy(), target, atol=1e-6)


def test_known_pixel_values():
    image = np.zeros((160, 64, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 255, 0, 128
    mask = np.full((160, 64, 1), 255, np.uint8)
    out = pp.preprocess(image, mask)
    np.testing.assert_allclose(out["rgbm"][0, 0].numpy(),
                               [(255 - 122.675) / 256, -116.669 / 256,
                                (128 - 104.008) / 256, 0.5], rtol=1e-6)
    np.testing.assert_allclose(out["attention_target"].numpy(), 1.0)


def test_mirror_flips_image_mask_and_target_together():
    rng = np.random.default_rng(1)
    image, mask = _random_inputs(rng)
    mask[:, :32] = 255   # body on the left half only
    mask[:, 32:] = 0
    plain = pp.preprocess(image, mask)
    for flag in (True, tf.constant(True)):
        flipped = pp.preprocess(image, mask, mirror=flag)
        np.testing.assert_array_equal(flipped["rgbm"].numpy(), plain["rgbm"].numpy()[:, ::-1])
        np.testing.assert_allclose(flipped["attention_target"].numpy(),
                                   plain["attention_target"].numpy()[:, ::-1], atol=1e-7)
    # The body is on the right after mirroring, in both outputs.
    flipped = pp.preprocess(image, mask, mirror=True)
    assert flipped["rgbm"][0, -1, 3] > 0 > flipped["rgbm"][0, 0, 3]
    assert flipped["attention_target"][0, -1, 0] == 1.0
    assert flipped["attention_target"][0, 0, 0] == 0.0
    np.testing.assert_array_equal(pp.preprocess(image, mask, mirror=tf.constant(False))["rgbm"],
                                  plain["rgbm"])


def test_per_sample_mirror_vector():
    rng = np.random.default_rng(2)
    image, mask = _random_inputs(rng, batch=4)
    plain = pp.preprocess(image, mask)["rgbm"].numpy()
    out = pp.preprocess(image, mask, mirror=tf.constant([True, False, False, True]))
    rgbm = out["rgbm"].numpy()
    np.testing.assert_array_equal(rgbm[0], plain[0][:, ::-1])
    np.testing.assert_array_equal(rgbm[1], plain[1])
    np.testing.assert_array_equal(rgbm[3], plain[3][:, ::-1])


def test_resizes_other_sizes_and_mask_size_independently():
    image = np.full((128, 48, 3), 200, np.uint8)
    mask = np.full((64, 32, 1), 255, np.uint8)
    out = pp.preprocess(image, mask)
    assert out["rgbm"].shape == (160, 64, 4)
    np.testing.assert_allclose(out["rgbm"][..., 0].numpy(), (200 - 122.675) / 256, rtol=1e-6)
    np.testing.assert_allclose(out["rgbm"][..., 3].numpy(), 0.5, rtol=1e-6)


def test_resize_to_input_is_bilinear_half_pixel():
    ramp = np.tile(np.arange(0, 256, 2, dtype=np.uint8)[None, :, None], (320, 1, 3))  # 320x128
    out = pp.resize_to_input(ramp).numpy()
    assert out.shape == (160, 64, 3) and out.dtype == np.uint8
    # Half-pixel centres: output column j samples input 2j + 0.5 -> 4j + 1.
    np.testing.assert_array_equal(out[0, :, 0], np.arange(64) * 4 + 1)


def test_runs_in_tf_function_with_unknown_shapes_and_tensor_mirror():
    @tf.function(input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.uint8),
        tf.TensorSpec([None, None, None, 1], tf.uint8),
        tf.TensorSpec([], tf.bool)])
    def serve(image, mask, mirror):
        return pp.preprocess(image, mask, mirror=mirror)

    rng = np.random.default_rng(3)
    image, mask = _random_inputs(rng, batch=2)
    out = serve(image, mask, tf.constant(True))
    eager = pp.preprocess(image, mask, mirror=True)
    np.testing.assert_allclose(out["rgbm"].numpy(), eager["rgbm"].numpy(), atol=1e-6)
    assert out["attention_target"].shape == (2, 40, 16, 1)


def test_works_inside_tf_data():
    rng = np.random.default_rng(4)
    image, mask = _random_inputs(rng, batch=3)
    ds = tf.data.Dataset.from_tensor_slices((image, mask)).map(
        lambda i, m: pp.preprocess(i, m, mirror=True))
    first = next(iter(ds))
    np.testing.assert_allclose(first["rgbm"].numpy(),
                               pp.preprocess(image[0], mask[0], mirror=True)["rgbm"].numpy())


def test_decode_grayscale_jpeg_to_rgb():
    gray = np.full((20, 10, 1), 90, np.uint8)
    image = pp.decode_image(tf.io.encode_jpeg(gray))
    assert image.shape == (20, 10, 3) and image.dtype == tf.uint8
    np.testing.assert_array_equal(image[..., 0].numpy(), image[..., 2].numpy())


def test_decode_rgba_png_drops_alpha():
    rgba = np.zeros((8, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 10, 77
    image = pp.decode_image(tf.io.encode_png(rgba))
    assert image.shape == (8, 4, 3)
    np.testing.assert_array_equal(image[..., 0].numpy(), 10)


def test_decode_mask_soft_and_rgb():
    soft = np.arange(0, 256, dtype=np.uint8).reshape(16, 16, 1)
    np.testing.assert_array_equal(pp.decode_mask(tf.io.encode_png(soft)).numpy(), soft)
    rgb = np.zeros((6, 3, 3), np.uint8)
    rgb[..., 0] = 255   # a colour mask: the first channel is taken
    out = pp.decode_mask(tf.io.encode_png(rgb))
    assert out.shape == (6, 3, 1)
    np.testing.assert_array_equal(out.numpy(), 255)


def test_full_body_mask():
    mask = pp.full_body_mask()
    assert mask.shape == (160, 64, 1) and mask.dtype == tf.uint8
    assert int(tf.reduce_min(mask)) == 255
