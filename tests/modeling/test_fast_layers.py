"""The fast conv + BatchNorm path (layers.conv_bn) computes what the Keras
layers compute: outputs, gradients and moving statistics, training and not."""

import numpy as np
import pytest
import tensorflow as tf

from mgcam_tf.modeling import layers as layers_module
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


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "tf-kernels"])
@pytest.mark.parametrize("training", [True, False])
def test_fast_stage_matches_keras_layers(training, onednn, monkeypatch):
    """Both convolution paths: oneDNN's dilated Conv2D, and space-to-batch for TF's
    own CPU kernels, which have no dilated Conv2D gradient (an AVX2-only CPU)."""
    if onednn and not layers_module.native_dilated_conv("float32"):
        pytest.skip("TensorFlow runs without oneDNN here (TF_ENABLE_ONEDNN_OPTS=0?)")
    monkeypatch.setattr(layers_module, "native_dilated_conv", lambda dtype: onednn)
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
    n = len(layer.convs)
    for i, (g, e) in enumerate(zip(grads, expected_grads)):
        noise = 5e-3 if training and i >= n else 1e-3  # a bias's gradient under BN: ~0
        np.testing.assert_allclose(g.numpy(), e, rtol=1e-3, atol=noise)
    stats = [w for n in layer.norms for w in n.get_weights()]
    for s, e in zip(stats, expected_stats):
        np.testing.assert_allclose(s, e, rtol=1e-5, atol=1e-6)


NO_ONEDNN_STEP = """
import tensorflow as tf  # before mgcam_tf: TF starts with the variable below
from mgcam_tf import hardware
from mgcam_tf.modeling import layers
assert not hardware.onednn_enabled()
layer = layers.MultiScaleContext(filters=4)
x = tf.random.normal([2, 12, 8, 3])
@tf.function
def step():
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x, training=True))
    return tape.gradient(loss, layer.trainable_variables)
print(all(bool(tf.reduce_all(tf.math.is_finite(g))) for g in step()))
"""


def test_dilated_stage_trains_without_onednn():
    """TF's own CPU kernels (oneDNN off, as TF itself chooses on AVX2-only CPUs)
    have no dilated Conv2D gradient; the stage still trains there."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, "-c", NO_ONEDNN_STEP], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.parametrize("training", [True, False])
def test_fast_ibn_stage_matches_keras_layers(training):
    """The IBN stage's fused path (instance norm by moments, the batch-norm half as
    FusedBatchNormV3) computes what Keras' GroupNormalization + BatchNormalization
    compute, and updates the same moving statistics."""
    from keras import layers as keras_layers

    x = tf.constant(np.random.RandomState(1).randn(4, 20, 8, 16).astype("float32") * 2 + 1)
    layer = MultiScaleContext(filters=8, ibn=True)
    layer.build(x.shape)
    rng = np.random.RandomState(2)
    for inorm in layer.instance_norms:
        inorm.gamma.assign(rng.uniform(0.5, 1.5, 4).astype("float32"))
        inorm.beta.assign(rng.uniform(-0.5, 0.5, 4).astype("float32"))
    for norm in layer.norms:
        norm.moving_mean.assign(np.linspace(-0.5, 0.5, 4).astype("float32"))
        norm.moving_variance.assign(np.linspace(0.5, 2.0, 4).astype("float32"))
    reference = []
    for conv, norm, inorm in zip(layer.convs, layer.norms, layer.instance_norms):
        c = xavier_conv(8, 3, conv.dilation_rate[0])
        n = caffe_batch_norm()
        g = keras_layers.GroupNormalization(groups=4, epsilon=inorm.epsilon)
        c.build(x.shape)
        n.build((*c.compute_output_shape(x.shape)[:-1], 4))
        g.build((*c.compute_output_shape(x.shape)[:-1], 4))
        c.set_weights(conv.get_weights())
        n.set_weights(norm.get_weights())
        g.set_weights(inorm.get_weights())
        reference.append((c, n, g))

    def loss_of(y):
        return tf.reduce_sum(y * tf.sin(tf.range(y.shape[-1], dtype=y.dtype)))

    with tf.GradientTape() as tape:
        parts = []
        for c, n, g in reference:
            y = c(x)
            parts += [g(y[..., :4]), n(y[..., 4:], training=training)]
        expected = tf.nn.relu(tf.concat(parts, -1))
        expected_loss = loss_of(expected)
    expected_grads = tape.gradient(
        expected_loss, [c.kernel for c, _, _ in reference] + [g.gamma for _, _, g in reference])
    with tf.GradientTape() as tape:
        y = layer(x, training=training)
        loss = loss_of(y)
    grads = tape.gradient(
        loss, [c.kernel for c in layer.convs] + [g.gamma for g in layer.instance_norms])
    np.testing.assert_allclose(y.numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)
    for g, e in zip(grads, expected_grads):
        # A kernel gradient sums thousands of products of size ~1: in float32 an element
        # near 0 carries the rounding of its neighbours of size ~5, and the order of the
        # sums varies from run to run (one element of 1,152 was off by 1.04e-3 once in
        # CI). So the tolerance is relative to the gradient's scale.
        scale = float(np.abs(e.numpy()).max())
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-3, atol=1e-3 * scale)
    for norm, (_, n, _) in zip(layer.norms, reference):
        for s, e in zip(norm.get_weights(), n.get_weights()):
            np.testing.assert_allclose(s, e, rtol=1e-5, atol=1e-6)
