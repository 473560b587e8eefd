"""The fast conv + BatchNorm path (layers.conv_bn) computes what the Keras
layers compute: outputs, gradients and moving statistics, training and not."""

import numpy as np
import pytest
import tensorflow as tf

from mgcam_tf.modeling.layers import MultiScaleContext, caffe_batch_norm, xavier_conv


def keras_reference(layer, x, training):
    """The stage as plain Keras layers, on copies of its variables."""
    branches = []
    for conv, norm in zip(layer.convs, layer.norms):
        c = xavier_conv(conv.filters, 3, conv.dilation_rate[0])
        n = caffe_batch_norm()
        c.build(x.shape)
        n.build(c.compute_output_shape(x.shape))
        c.set_weights(conv.get_weights())
        n.set_weights(norm.get_weights())
        branches.append((c, n))
    with tf.GradientTape() as tape:
        y = tf.nn.relu(tf.concat([n(c(x), training=training) for c, n in branches], -1))
        loss = tf.reduce_sum(y * tf.sin(tf.range(y.shape[-1], dtype=y.dtype)))
    grads = tape.gradient(loss, [c.kernel for c, _ in branches] + [c.bias for c, _ in branches])
    stats = [w for _, n in branches for w in n.get_weights()]
    return y.numpy(), [g.numpy() for g in grads], stats


@pytest.mark.parametrize("training", [True, False])
def test_fast_stage_matches_keras_layers(training):
    x = tf.constant(np.random.RandomState(0).randn(4, 20, 8, 16).astype("float32"))
    layer = MultiScaleContext()
    layer.build(x.shape)
    # Moving statistics away from 0 and 1, as after some training.
    for norm in layer.norms:
        norm.moving_mean.assign(np.linspace(-0.5, 0.5, 32).astype("float32"))
        norm.moving_variance.assign(np.linspace(0.5, 2.0, 32).astype("float32"))
    expected, expected_grads, expected_stats = keras_reference(layer, x, training)
    with tf.GradientTape() as tape:
        y = layer(x, training=training)
        loss = tf.reduce_sum(y * tf.sin(tf.range(y.shape[-1], dtype=y.dtype)))
    grads = tape.gradient(loss, [c.kernel for c in layer.convs] + [c.bias for c in layer.convs])
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-4, atol=1e-4)
    # Kernels, then biases (in training, where BN removes the mean, a bias
    # gets rounding noise alone on both paths).
    for g, e in zip(grads, expected_grads):
        np.testing.assert_allclose(g.numpy(), e, rtol=1e-3, atol=1e-3)
    stats = [w for n in layer.norms for w in n.get_weights()]
    for s, e in zip(stats, expected_stats):
        np.testing.assert_allclose(s, e, rtol=1e-5, atol=1e-6)
