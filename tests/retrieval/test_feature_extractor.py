"""FeatureExtractor (torchreid's name): a preset, arrays of any size, tensors,
batches, file paths with and without masks."""

import numpy as np
import pytest
import tensorflow as tf

import mgcam_tf
from mgcam_tf.data.preprocess import preprocess_packed, resize_to_input
from mgcam_tf.errors import ConfigError
from mgcam_tf.retrieval.feature_extractor import FeatureExtractor

PRESET = "mgcam_siamese_cuhk03"


@pytest.fixture(scope="module")
def extractor():
    return FeatureExtractor(preset=PRESET, batch_size=2)


def crops(seed: int, sizes):
    rng = np.random.RandomState(seed)
    images = [rng.randint(0, 256, (h, w, 3)).astype("uint8") for h, w in sizes]
    masks = [(rng.rand(h, w) > 0.5).astype("uint8") * 255 for h, w in sizes]
    return images, masks


def expected_embeddings(images, masks) -> np.ndarray:
    """The evaluation preprocessing by hand, through the preset's Keras model."""
    model = mgcam_tf.load_preset(PRESET)
    packed = tf.stack([tf.concat([resize_to_input(tf.constant(i)),
                                  resize_to_input(tf.constant(m[..., None]))], -1)
                       for i, m in zip(images, masks)])
    return model.embed(preprocess_packed(packed)["rgbm"]).numpy()


def test_preset_embeds_arrays_of_any_size_in_batches(extractor):
    images, masks = crops(0, [(160, 64), (300, 110), (97, 51)])   # 3 images, batches of 2
    features = extractor(images, masks=masks)
    assert features.shape == (3, 128) and features.dtype == np.float32
    np.testing.assert_allclose(features, expected_embeddings(images, masks), atol=1e-4)
    # A tensor, and a 4-D batch, give the same rows; masks may be [H, W, 1].
    np.testing.assert_allclose(extractor(tf.constant(images[1]), masks=masks[1][..., None]),
                               features[1:2], atol=1e-5)
    same_size, same_masks = crops(1, [(128, 48), (128, 48)])
    np.testing.assert_allclose(extractor(np.stack(same_size), masks=np.stack(same_masks)),
                               extractor(same_size, masks=same_masks), atol=1e-5)
    assert extractor([]).shape == (0, 128)


def test_files_without_masks_get_the_mask_models_masks(extractor, shared_data, mask_model):
    from mgcam_tf.data.preprocess import decode_image
    from mgcam_tf.segmentation.segmenter import BodySegmenter

    query = shared_data / "cuhk03_pair1" / "query"
    paths = sorted(str(p) for p in query.glob("*.jpg"))[:3]
    local = FeatureExtractor(preset=PRESET, mask_model_path=mask_model)
    segment = BodySegmenter(str(mask_model))
    pixels = [decode_image(tf.io.read_file(p)).numpy() for p in paths]
    made = [segment(p) for p in pixels]
    features = local(paths)
    assert features.shape == (3, 128)
    np.testing.assert_allclose(features, local(pixels, masks=made), atol=1e-5)


def test_the_distilled_segmenter_makes_the_masks_when_chosen(shared_data, monkeypatch):
    from mgcam_tf.data.preprocess import decode_image
    from mgcam_tf.segmentation.distilled import DistilledSegmenter

    query = shared_data / "cuhk03_pair1" / "query"
    paths = sorted(str(p) for p in query.glob("*.jpg"))[:2]
    pixels = [decode_image(tf.io.read_file(p)).numpy() for p in paths]
    made = [DistilledSegmenter()(p) for p in pixels]
    chosen = FeatureExtractor(preset=PRESET, segmenter="distilled")
    np.testing.assert_allclose(chosen(paths), chosen(pixels, masks=made), atol=1e-5)
    monkeypatch.setenv("MGCAM_SEGMENTER", "distilled")   # no BlazePose file needed either
    monkeypatch.setenv("MGCAM_MASK_MODEL", "/nonexistent/pose_landmark_full.tflite")
    np.testing.assert_allclose(FeatureExtractor(preset=PRESET)(paths),
                               chosen(pixels, masks=made), atol=1e-5)


def test_bad_calls_say_what_is_wrong(extractor, tmp_path):
    with pytest.raises(ConfigError, match="exactly one of"):
        FeatureExtractor(preset=PRESET, model_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="exactly one of"):
        FeatureExtractor()
    images, masks = crops(2, [(50, 20), (50, 20)])
    with pytest.raises(ConfigError, match="2 images but 1 masks"):
        extractor(images, masks=masks[:1])
    with pytest.raises(ConfigError, match="uint8"):
        extractor(images[0].astype("float32"), masks=masks[0])
    with pytest.raises(ConfigError, match="missing.jpg: image file not found"):
        extractor(str(tmp_path / "missing.jpg"), masks=masks[0])
