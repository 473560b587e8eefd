"""mgcam_tf.modeling.layers: shapes, semantics and serialisation of the building blocks."""

import keras
import numpy as np
import pytest

from layer_contract import run_layer_test
from mgcam_tf.modeling.layers import ContrastiveAttention, MultiScaleContext, StreamHead


def test_multi_scale_context_shape_and_branches():
    layer = MultiScaleContext(name="stage")
    x = np.random.RandomState(0).randn(2, 40, 16, 32).astype("float32")
    y = layer(x, training=False)
    assert tuple(y.shape) == (2, 40, 16, 96)
    assert [c.dilation_rate for c in layer.convs] == [(1, 1), (2, 2), (3, 3)]
    assert all(c.kernel_size == (3, 3) and c.filters == 32 for c in layer.convs)
    # ReLU after the concatenation.
    assert float(np.min(y)) >= 0.0


def test_batch_norm_has_no_learned_scale_or_shift():
    layer = MultiScaleContext()
    layer.build((None, 40, 16, 96))
    bn_trainable = [w for n in layer.norms for w in n.trainable_weights]
    assert bn_trainable == []
    assert all(not n.center and not n.scale for n in layer.norms)


def test_caffe_xavier_is_fan_in_uniform_and_bias_zero():
    # Caffe's xavier filler: uniform in +-sqrt(3 / fan_in); fan_in = 3 * 3 * 96.
    layer = MultiScaleContext()
    layer.build((None, 40, 16, 96))
    limit = np.sqrt(3.0 / (3 * 3 * 96))
    for conv in layer.convs:
        kernel = conv.kernel.numpy()
        assert np.abs(kernel).max() <= limit
        # A fan-average filler (glorot) would stay within sqrt(6 / (864 + 288)) = 0.72 limit.
        assert np.abs(kernel).max() > 0.95 * limit
        np.testing.assert_allclose(kernel.std(), limit / np.sqrt(3.0), rtol=0.05)
        np.testing.assert_array_equal(conv.bias.numpy(), 0.0)


def test_soft_attention_splits_features_into_body_and_background():
    features = np.random.RandomState(1).randn(2, 40, 16, 96).astype("float32")
    body, bgd, phi = ContrastiveAttention()(features)
    assert tuple(phi.shape) == (2, 40, 16, 1)
    assert np.all((phi.numpy() > 0) & (phi.numpy() < 1))
    np.testing.assert_allclose(body.numpy() + bgd.numpy(), features, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(body.numpy(), features * phi.numpy(), rtol=1e-6)


def test_hard_attention_uses_the_binary_mask():
    features = np.ones((1, 4, 2, 3), "float32")
    mask = np.array([1, 0, 1, 0, 0, 1, 1, 1], "float32").reshape(1, 4, 2, 1)
    body, bgd, phi = ContrastiveAttention("hard")([features, mask])
    np.testing.assert_array_equal(phi.numpy(), mask)
    np.testing.assert_array_equal(body.numpy(), features * mask)
    np.testing.assert_array_equal(bgd.numpy(), features * (1 - mask))


def test_unknown_attention_mode_is_rejected():
    with pytest.raises(ValueError, match="soft"):
        ContrastiveAttention("fuzzy")


def test_stream_head_shapes():
    head = StreamHead(num_ids=7)
    h, logits = head(np.zeros((3, 40, 16, 96), "float32"), training=False)
    assert tuple(h.shape) == (3, 128) and tuple(logits.shape) == (3, 7)
    # 40x16 pooled three times: 5x2x96 = 960 inputs to the 128-d FC.
    assert tuple(head.embedding.kernel.shape) == (960, 128)


def _features(*shape, seed=0):
    return np.random.RandomState(seed).randn(*shape).astype("float32")


# Every custom layer of mgcam_tf.modeling.layers, through the one layer contract
# (build, call shapes, get_config round trip, .keras save and load).
LAYER_CASES = {
    "multi_scale_context": (lambda: MultiScaleContext(filters=8, dilation_rates=(1, 3)),
                            _features(2, 12, 8, 16), (2, 12, 8, 16), {"training": False}),
    "multi_scale_context_ibn": (lambda: MultiScaleContext(filters=8, ibn=True),
                                _features(2, 12, 8, 16), (2, 12, 8, 24), {"training": False}),
    "soft_attention": (lambda: ContrastiveAttention("soft"), _features(2, 40, 16, 96),
                       ((2, 40, 16, 96), (2, 40, 16, 96), (2, 40, 16, 1)), {}),
    "hard_attention": (lambda: ContrastiveAttention("hard"),
                       [_features(2, 40, 16, 96), (_features(2, 40, 16, 1) > 0).astype("float32")],
                       ((2, 40, 16, 96), (2, 40, 16, 96), (2, 40, 16, 1)), {}),
    "stream_head": (lambda: StreamHead(num_ids=5, feature_dim=16, dropout=0.1),
                    _features(2, 40, 16, 96), ((2, 16), (2, 5)), {"training": False}),
    "stream_head_bnneck": (lambda: StreamHead(num_ids=5, feature_dim=16, bnneck=True),
                           _features(2, 40, 16, 96), ((2, 16), (2, 5)), {"training": False}),
}


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layer_contract(case, tmp_path):
    make, inputs, shapes, kwargs = LAYER_CASES[case]
    run_layer_test(make, inputs, shapes, tmp_path, call_kwargs=kwargs)


def test_synchronized_bn_round_trips_through_the_config():
    layer = MultiScaleContext(filters=8, dilation_rates=(1, 3), synchronized_bn=True)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(clone) is type(layer) and clone.get_config() == layer.get_config()
