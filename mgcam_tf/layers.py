"""The building blocks of MSCAN and MGCAM (SPEC §2), as serialisable Keras layers."""

from __future__ import annotations

import keras
from keras import layers, ops

# SPEC §2: Xavier-initialised weights, zero biases, everywhere.
KERNEL_INITIALIZER = "glorot_uniform"
# Caffe's BatchNorm default epsilon.
BN_EPSILON = 1e-5
# Caffe averages with a fraction of 0.999 but divides by the sum of the
# weights it used, so its early estimates are unbiased. Keras' moving
# averages start from 0 and 1 with no such correction: at 0.999 they are
# still 74 % initial value after 300 steps, and a short run evaluates with
# statistics it never saw. 0.99 forgets the initial values within a few
# hundred steps and averages over the last ~100 batches.
BN_MOMENTUM = 0.99


def caffe_batch_norm(synchronized: bool = False, name: str | None = None) -> layers.BatchNormalization:
    """Caffe BatchNorm without a Scale layer: normalisation with no learned gamma or beta."""
    return layers.BatchNormalization(
        center=False, scale=False, epsilon=BN_EPSILON, momentum=BN_MOMENTUM,
        synchronized=synchronized, name=name)


def xavier_conv(filters: int, kernel_size: int, dilation_rate: int = 1,
                name: str | None = None) -> layers.Conv2D:
    """Stride-1, same-padded convolution with Xavier weights and zero bias."""
    return layers.Conv2D(
        filters, kernel_size, padding="same", dilation_rate=dilation_rate,
        kernel_initializer=KERNEL_INITIALIZER, bias_initializer="zeros", name=name)


@keras.saving.register_keras_serializable(package="mgcam_tf")
class MultiScaleContext(layers.Layer):
    """One MSCAN multi-scale context stage.

    Three parallel 3x3 convolutions (dilation 1, 2 and 3), each followed by
    BN, concatenated and passed through ReLU.

    Input: [B, H, W, C]. Output: [B, H, W, 3 * filters] (96 channels by default).
    """

    def __init__(self, filters: int = 32, dilation_rates: tuple[int, ...] = (1, 2, 3),
                 synchronized_bn: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.dilation_rates = tuple(dilation_rates)
        self.synchronized_bn = synchronized_bn
        self.convs = [xavier_conv(filters, 3, rate, name=f"conv_d{rate}")
                      for rate in self.dilation_rates]
        self.norms = [caffe_batch_norm(synchronized_bn, name=f"bn_d{rate}")
                      for rate in self.dilation_rates]

    def build(self, input_shape):
        for conv, norm in zip(self.convs, self.norms):
            conv.build(input_shape)
            norm.build(conv.compute_output_shape(input_shape))
        self.built = True

    def call(self, inputs, training=None):
        branches = [norm(conv(inputs), training=training)
                    for conv, norm in zip(self.convs, self.norms)]
        return ops.relu(ops.concatenate(branches, axis=-1))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters * len(self.dilation_rates))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters,
                "dilation_rates": list(self.dilation_rates),
                "synchronized_bn": self.synchronized_bn}


@keras.saving.register_keras_serializable(package="mgcam_tf")
class ContrastiveAttention(layers.Layer):
    """Mask-guided contrastive attention (paper §3.2).

    Soft mode: Phi+ = sigmoid(conv3x3(features)), Phi- = 1 - Phi+.
    Hard mode ("Ours (hard)" of Table 2): Phi+ is the binary body mask itself.

    Input: features [B, H, W, C] (soft), or [features, mask] with mask
    [B, H, W, 1] in 0..1 (hard).
    Output: (body [B, H, W, C], background [B, H, W, C], phi_plus [B, H, W, 1]).
    """

    def __init__(self, mode: str = "soft", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("soft", "hard"):
            raise ValueError(f"attention mode must be 'soft' or 'hard', got {mode!r}")
        self.mode = mode
        self.conv = xavier_conv(1, 3, name="attention_conv") if mode == "soft" else None

    def build(self, input_shape):
        if self.conv is not None:
            self.conv.build(input_shape)
        self.built = True

    def call(self, inputs):
        if self.mode == "soft":
            features = inputs
            phi_plus = ops.sigmoid(self.conv(features))
        else:
            features, mask = inputs
            phi_plus = ops.cast(mask > 0.5, features.dtype)
        return features * phi_plus, features * (1.0 - phi_plus), phi_plus

    def compute_output_shape(self, input_shape):
        features_shape = input_shape if self.mode == "soft" else input_shape[0]
        return features_shape, features_shape, (*features_shape[:-1], 1)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="mgcam_tf")
class StreamHead(layers.Layer):
    """One stream after stage 2, with its own weights.

    maxpool - stage 3 - maxpool - stage 4 - maxpool - flatten - FC 128 (= h)
    - dropout - FC num_ids.

    Input: [B, 40, 16, 96]. Output: (h [B, feature_dim], logits [B, num_ids]).
    """

    def __init__(self, num_ids: int, feature_dim: int = 128, dropout: float = 0.2,
                 synchronized_bn: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.num_ids = num_ids
        self.feature_dim = feature_dim
        self.dropout_rate = dropout
        self.synchronized_bn = synchronized_bn
        self.stage3 = MultiScaleContext(synchronized_bn=synchronized_bn, name="stage3")
        self.stage4 = MultiScaleContext(synchronized_bn=synchronized_bn, name="stage4")
        self.pool = layers.MaxPooling2D(2, 2)
        self.flatten = layers.Flatten()
        self.embedding = layers.Dense(feature_dim, kernel_initializer=KERNEL_INITIALIZER,
                                      name="embedding")
        self.dropout = layers.Dropout(dropout)
        self.classifier = layers.Dense(num_ids, kernel_initializer=KERNEL_INITIALIZER,
                                       name="classifier")

    def build(self, input_shape):
        shape = self.pool.compute_output_shape(input_shape)
        self.stage3.build(shape)
        shape = self.pool.compute_output_shape(self.stage3.compute_output_shape(shape))
        self.stage4.build(shape)
        shape = self.pool.compute_output_shape(self.stage4.compute_output_shape(shape))
        flat = self.flatten.compute_output_shape(shape)
        self.embedding.build(flat)
        self.classifier.build((flat[0], self.feature_dim))
        self.built = True

    def call(self, inputs, training=None):
        x = self.pool(inputs)
        x = self.pool(self.stage3(x, training=training))
        x = self.pool(self.stage4(x, training=training))
        h = self.embedding(self.flatten(x))
        logits = self.classifier(self.dropout(h, training=training))
        return h, logits

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.feature_dim), (input_shape[0], self.num_ids)

    def get_config(self):
        return {**super().get_config(), "num_ids": self.num_ids,
                "feature_dim": self.feature_dim, "dropout": self.dropout_rate,
                "synchronized_bn": self.synchronized_bn}
