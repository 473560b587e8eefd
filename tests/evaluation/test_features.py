"""Feature extraction (order, flip averaging, progress) and MARS tracklet pooling."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from mgcam_tf.errors import DataError
from mgcam_tf.evaluation import features as fl


class TinyModel(keras.Model):
    """rgbm (or {"rgbm": ...}) -> dict with h_full [B,8]; not mirror-symmetric."""

    def __init__(self):
        super().__init__()
        self.pool = keras.layers.AveragePooling2D((40, 16))
        self.flat = keras.layers.Flatten()
        self.dense = keras.layers.Dense(8)

    def call(self, x, training=False):
        if isinstance(x, dict):
            x = x["rgbm"]
        h = self.dense(self.flat(self.pool(x)))
        return {"h_full": h, "logits_full": h[:, :3]}


def tiny_model():
    return TinyModel()


def batches(x, bs):
    return tf.data.Dataset.from_tensor_slices({"rgbm": x}).batch(bs)


def test_extract_in_order_with_progress_and_flip():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 160, 64, 4)).astype(np.float32)
    model = tiny_model()
    seen = []
    got = fl.extract_features(model, batches(x, 3), progress=lambda d, t: seen.append((d, t)),
                              total=7)
    want = model(x, training=False)["h_full"].numpy()
    assert got.shape == (7, 8) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert seen == [(3, 7), (6, 7), (7, 7)]
    flipped = fl.extract_features(model, batches(x, 4), flip_average=True)
    mirror = model(x[:, :, ::-1, :], training=False)["h_full"].numpy()
    np.testing.assert_allclose(flipped, (want + mirror) / 2, atol=1e-5)
    assert not np.allclose(flipped, want, atol=1e-3)


def test_plain_callable_and_tuple_batches():
    x = np.ones((5, 160, 64, 4), np.float32)
    ds = tf.data.Dataset.from_tensor_slices(({"rgbm": x}, np.arange(5))).batch(2)
    got = fl.extract_features(lambda b: tf.reduce_mean(b["rgbm"], axis=[1, 2]), ds)
    np.testing.assert_allclose(got, np.ones((5, 4)))
    with pytest.raises(DataError, match="no batch"):
        fl.extract_features(lambda b: b, [])


def test_pool_tracklets_means_frames_in_first_appearance_order():
    feats = np.arange(12, dtype=np.float32).reshape(6, 2)
    pids = np.array([5, 5, 3, 5, 3, 9])
    cams = np.array([1, 1, 2, 1, 2, 4])
    tracks = np.array([7, 7, 2, 7, 2, 11])
    pooled, p, c, t = fl.pool_tracklets(feats, pids, cams, tracks)
    np.testing.assert_allclose(pooled, [feats[[0, 1, 3]].mean(0), feats[[2, 4]].mean(0), feats[5]])
    np.testing.assert_array_equal(p, [5, 3, 9])
    np.testing.assert_array_equal(c, [1, 2, 4])
    np.testing.assert_array_equal(t, [7, 2, 11])
    with pytest.raises(DataError, match="mixes"):
        fl.pool_tracklets(feats, np.array([5, 6, 3, 5, 3, 9]), cams, tracks)
    with pytest.raises(DataError, match="tracklets"):
        fl.pool_tracklets(feats, pids, cams, tracks[:3])


def test_a_bnneck_model_is_evaluated_with_its_retrieval_feature():
    """mgcam-eval's features are the model's test-time feature (`embed`), which for a
    model trained with retrieval_feature='bnneck' is not the h_full its call returns."""
    from mgcam_tf.modeling import models

    model = models.build_model(5, bnneck=True, retrieval_feature="bnneck")
    model.full_stream.neck.moving_mean.assign(np.linspace(-1, 1, 128).astype("float32"))
    x = np.random.RandomState(3).randn(3, 160, 64, 4).astype(np.float32)
    got = fl.extract_features(model, batches(x, 2))
    np.testing.assert_allclose(got, model.embed(x).numpy(), atol=1e-4)
    raw = model({"rgbm": x}, training=False)["h_full"].numpy()
    assert not np.allclose(got, raw, atol=1e-2)
