"""The building blocks of MSCAN and MGCAM (paper Section 3 and Figure 2; the official `MGCAM_train.prototxt`), as serialisable Keras layers."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers, ops

from mgcam_tf import hardware

# The official prototxt: Xavier-initialised weights, zero biases, everywhere. Caffe's
# `xavier` filler defaults to variance_norm FAN_IN: uniform in
# +-sqrt(3 / fan_in), which is Keras' lecun_uniform (glorot_uniform averages
# fan-in and fan-out: 1.9x smaller limits for the 96->32 convolutions).
KERNEL_INITIALIZER = "lecun_uniform"
# Caffe's BatchNorm default epsilon.
BN_EPSILON = 1e-5
# Caffe averages with a fraction of 0.999 but divides by the sum of the
# weights it used, so its early estimates are unbiased. Keras' moving
# averages start from 0 and 1 with no such correction: at 0.999 they are
# still 74 % initial value after 300 steps, and a short run evaluates with
# statistics it never saw. 0.99 forgets the initial values within a few
# hundred steps and averages over the last ~100 batches.
BN_MOMENTUM = 0.99


def caffe_batch_norm(synchronized: bool = False, name: str | None = None,
                     dtype=None) -> layers.BatchNormalization:
    """Caffe BatchNorm without a Scale layer: normalisation with no learned gamma or beta.

    Under a mixed policy Keras' BatchNormalization computes its statistics in
    float32 and casts only its output to the compute dtype.
    """
    return layers.BatchNormalization(
        center=False, scale=False, epsilon=BN_EPSILON, momentum=BN_MOMENTUM,
        synchronized=synchronized, name=name, dtype=dtype)


def xavier_conv(filters: int, kernel_size: int, dilation_rate: int = 1,
                name: str | None = None, dtype=None) -> layers.Conv2D:
    """Stride-1, same-padded convolution with Xavier weights and zero bias."""
    return layers.Conv2D(
        filters, kernel_size, padding="same", dilation_rate=dilation_rate,
        kernel_initializer=KERNEL_INITIALIZER, bias_initializer="zeros", name=name,
        dtype=dtype)


def native_dilated_conv(dtype: str) -> bool:
    """Whether tf.nn.conv2d has a dilated-convolution gradient on this CPU in `dtype`.

    TF's own CPU kernels have none ("Current CPU implementations do not yet
    support dilation rates larger than 1"); oneDNN's have one for float32, and
    for bfloat16 where the CPU computes it (AVX512_BF16/AMX; elsewhere oneDNN
    hands bfloat16 back to TF's kernels). Where this is False the stages use
    tf.nn.convolution, the same function through space-to-batch.
    """
    return hardware.onednn_enabled() and (
        dtype == "float32" or (dtype == "bfloat16" and hardware.cpu_computes_bfloat16()))


def conv_bn(conv: layers.Conv2D, norm: layers.BatchNormalization, inputs, training=None,
            dtype="float32"):
    """`norm(conv(inputs))`, computed the fast way, with the same mathematics.

    inputs: [B, H, W, C_in] -> [B, H, W, conv.filters], in `dtype` (the
    compute dtype). The two layers keep their variables (kernel, bias, moving
    mean and variance, updated exactly as Keras does); only the ops differ:
    tf.nn.conv2d + tf.nn.bias_add (which grappler fuses into one oneDNN
    convolution, where Keras adds the bias as a separate broadcast add) and
    one FusedBatchNormV3 for Keras' moments + normalisation (several passes
    over the largest tensors of the network). On 2 CPU cores this makes a
    training step about 1.3x (float32) to 1.8x (bfloat16) faster; see
    docs/PERFORMANCE.md. Synchronized BatchNorm (cross-replica statistics),
    float16 and float64 keep Keras' own layers.
    """
    if norm.synchronized or dtype not in ("float32", "bfloat16"):
        # oneDNN computes float32 and bfloat16; TF's other CPU kernels have no
        # dilated Conv2D gradient (Keras' convolution goes through
        # space-to-batch there) and FusedBatchNormV3 no float64 kernel.
        return norm(conv(inputs), training=training)
    if not conv.built:  # the layers are not called, so Keras does not build them
        conv.build(inputs.shape)
    if not norm.built:
        norm.build(conv.compute_output_shape(inputs.shape))
    return fused_batch_norm(norm, fast_conv(conv, inputs, dtype), training)


def fast_conv(conv: layers.Conv2D, inputs, dtype: str, channels: slice = slice(None)):
    """`conv(inputs)[..., channels]` as tf.nn.conv2d + tf.nn.bias_add (see conv_bn), in
    `dtype`, computing only those output channels (the kernel and bias are sliced,
    not the output)."""
    x = ops.cast(inputs, dtype)
    kernel = ops.cast(conv.kernel[..., channels], dtype)
    if max(conv.dilation_rate) == 1 or native_dilated_conv(dtype):
        y = tf.nn.conv2d(x, kernel, strides=1, padding="SAME", dilations=conv.dilation_rate)
    else:
        # No dilated Conv2D gradient here (native_dilated_conv's docstring).
        y = tf.nn.convolution(x, kernel, padding="SAME", dilations=conv.dilation_rate)
    return tf.nn.bias_add(y, ops.cast(conv.bias[channels], dtype))


def fused_batch_norm(norm: layers.BatchNormalization, y, training=None):
    """`norm(y, training)` for a scale- and centre-free BatchNorm, as one FusedBatchNormV3.

    The moving statistics are updated exactly as Keras updates them.
    """
    channels = y.shape[-1]
    # No learned scale or shift (Caffe BatchNorm without Scale): 1 and 0.
    one, zero = tf.ones([channels], "float32"), tf.zeros([channels], "float32")
    if not training:
        return tf.raw_ops.FusedBatchNormV3(
            x=y, scale=one, offset=zero, mean=tf.cast(norm.moving_mean, "float32"),
            variance=tf.cast(norm.moving_variance, "float32"), epsilon=norm.epsilon,
            data_format="NHWC", is_training=False)[0]
    out, mean, unbiased, *_ = tf.raw_ops.FusedBatchNormV3(
        x=y, scale=one, offset=zero, mean=zero, variance=one, epsilon=norm.epsilon,
        exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
    # The op normalises with the biased batch variance but returns it with
    # Bessel's correction; Keras' moving average takes the biased one.
    count = tf.cast(tf.reduce_prod(tf.shape(y)[:-1]), "float32")
    variance = unbiased * (count - 1.0) / count
    momentum = norm.momentum
    norm.moving_mean.assign(norm.moving_mean * momentum + mean * (1.0 - momentum))
    norm.moving_variance.assign(
        norm.moving_variance * momentum + variance * (1.0 - momentum))
    return out


def instance_norm(norm: layers.GroupNormalization, y):
    """`norm(y)` for a GroupNormalization with one group per channel (instance norm).

    y: [B, H, W, C] -> [B, H, W, C] in y's dtype. Statistics per image and
    channel over H and W in float32, as Keras computes them, without Keras'
    reshape into groups (docs/PERFORMANCE.md, "The recipe's training step").
    """
    x = tf.cast(y, "float32")
    mean, variance = tf.nn.moments(x, axes=[1, 2], keepdims=True)
    inv = tf.math.rsqrt(variance + norm.epsilon) * tf.cast(norm.gamma, "float32")
    out = x * inv + (tf.cast(norm.beta, "float32") - mean * inv)
    return tf.cast(out, y.dtype)


@keras.saving.register_keras_serializable(package="mgcam_tf")
class MultiScaleContext(layers.Layer):
    """One MSCAN multi-scale context stage.

    Three parallel 3x3 convolutions (dilation 1, 2 and 3), each followed by
    BN, concatenated and passed through ReLU.

    ibn: IBN-Net's instance-batch normalisation (Pan et al., "Two at Once:
    Enhancing Learning and Generalization Capacities via IBN-Net", ECCV 2018,
    IBN-a): the first half of every branch's channels is instance-normalised
    (with a learned scale and shift), the rest batch-normalised as before.
    Instance norm removes each image's contrast and colour statistics, which
    is what changes from one camera to another.

    Input: [B, H, W, C]. Output: [B, H, W, 3 * filters] (96 channels by default).
    """

    def __init__(self, filters: int = 32, dilation_rates: tuple[int, ...] = (1, 2, 3),
                 synchronized_bn: bool = False, ibn: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.dilation_rates = tuple(dilation_rates)
        self.synchronized_bn = synchronized_bn
        self.ibn = bool(ibn)
        self.instance_channels = filters // 2 if self.ibn else 0
        # Keras sublayers do not inherit their parent's dtype policy: pass it on.
        self.convs = [xavier_conv(filters, 3, rate, name=f"conv_d{rate}",
                                  dtype=self.dtype_policy)
                      for rate in self.dilation_rates]
        self.norms = [caffe_batch_norm(synchronized_bn, name=f"bn_d{rate}",
                                       dtype=self.dtype_policy)
                      for rate in self.dilation_rates]
        # GroupNormalization with one group per channel is instance norm
        # (keras has no InstanceNormalization; tensorflow-addons' is gone).
        self.instance_norms = [
            layers.GroupNormalization(groups=self.instance_channels, epsilon=BN_EPSILON,
                                      name=f"in_d{rate}", dtype=self.dtype_policy)
            for rate in self.dilation_rates] if self.ibn else []
        for rate, norm in zip(self.dilation_rates, self.instance_norms):
            setattr(self, f"in_d{rate}", norm)
        # Attributes as well as lists: tf.train.Checkpoint does not follow
        # Keras' tracked lists, so without these the stage's kernels and BN
        # statistics were reachable from no checkpointed model (the kernels
        # were saved through the optimizer alone, the moving statistics not at
        # all). Paths: <stage>/conv_d1/_kernel, <stage>/bn_d1/moving_mean, ...
        for rate, conv, norm in zip(self.dilation_rates, self.convs, self.norms):
            setattr(self, f"conv_d{rate}", conv)
            setattr(self, f"bn_d{rate}", norm)

    def build(self, input_shape):
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            conv.build(input_shape)
            shape = conv.compute_output_shape(input_shape)
            if self.ibn:
                self.instance_norms[i].build((*shape[:-1], self.instance_channels))
                shape = (*shape[:-1], self.filters - self.instance_channels)
            norm.build(shape)
        self.built = True

    def call(self, inputs, training=None):
        return ops.relu(self.pre_activation(inputs, training=training))

    def pre_activation(self, inputs, training=None):
        """The concatenated BN outputs before the ReLU: [B, H, W, 3 * filters].

        A stage followed by max pooling is cheaper as relu(pool(.)) than as
        pool(relu(.)), the same function (both are monotone): the ReLU and
        its gradient then touch a quarter of the tensor.
        """
        if not self.built:  # called directly, outside Keras' __call__
            self.build(inputs.shape)
        if self.ibn:
            return self._ibn_pre_activation(inputs, training)
        branches = [conv_bn(conv, norm, inputs, training, self.compute_dtype)
                    for conv, norm in zip(self.convs, self.norms)]
        return ops.concatenate(branches, axis=-1)

    def _ibn_pre_activation(self, inputs, training):
        k = self.instance_channels
        if self.synchronized_bn or self.compute_dtype not in ("float32", "bfloat16"):
            branches = []
            for conv, norm, inorm in zip(self.convs, self.norms, self.instance_norms):
                y = conv(inputs)
                branches.append(ops.concatenate(
                    [ops.cast(inorm(y[..., :k]), self.compute_dtype),
                     ops.cast(norm(y[..., k:], training=training), self.compute_dtype)],
                    axis=-1))
            return ops.concatenate(branches, axis=-1)
        # Each branch as two convolutions of the kernel's two channel groups rather than
        # one convolution whose output is sliced: the slices' copies and their
        # gradients' padding were most of IBN's cost (the recipe's step 0.52 s against
        # 0.40 this way, 0.34 without BNNeck and IBN; docs/PERFORMANCE.md).
        branches = []
        for conv, norm, inorm in zip(self.convs, self.norms, self.instance_norms):
            branches.append(instance_norm(
                inorm, fast_conv(conv, inputs, self.compute_dtype, slice(None, k))))
            branches.append(fused_batch_norm(
                norm, fast_conv(conv, inputs, self.compute_dtype, slice(k, None)), training))
        return ops.concatenate(branches, axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters * len(self.dilation_rates))

    def get_config(self):
        config = {**super().get_config(), "filters": self.filters,
                  "dilation_rates": list(self.dilation_rates),
                  "synchronized_bn": self.synchronized_bn}
        if self.ibn:
            config["ibn"] = True
        return config


@keras.saving.register_keras_serializable(package="mgcam_tf")
class ContrastiveAttention(layers.Layer):
    """Mask-guided contrastive attention (paper §3.2).

    Soft mode: Phi+ = sigmoid(conv3x3(features)), Phi- = 1 - Phi+.
    Hard mode ("Ours (hard)" of Table 2): Phi+ is the binary body mask itself.

    Input: features [B, H, W, C] (soft), or [features, mask] with mask
    [B, H, W, 1] in 0..1 (hard).
    Output: (body [B, H, W, C], background [B, H, W, C], phi_plus [B, H, W, 1]);
    phi_plus is float32 under every dtype policy.
    """

    def __init__(self, mode: str = "soft", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("soft", "hard"):
            raise ValueError(f"attention mode must be 'soft' or 'hard', got {mode!r}")
        self.mode = mode
        self.conv = (xavier_conv(1, 3, name="attention_conv", dtype=self.dtype_policy)
                     if mode == "soft" else None)

    def build(self, input_shape):
        if self.conv is not None:
            self.conv.build(input_shape)
        self.built = True

    def call(self, inputs):
        if self.mode == "soft":
            features = inputs
            # The sigmoid and Phi+ (which L_att compares with the mask) stay
            # float32 whatever the compute dtype.
            phi_plus = ops.sigmoid(ops.cast(self.conv(features), "float32"))
        else:
            features, mask = inputs
            phi_plus = ops.cast(mask > 0.5, "float32")
        phi = ops.cast(phi_plus, features.dtype)
        return features * phi, features * (1.0 - phi), phi_plus

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
    in_place_dropout: in training, h is returned after the dropout (the
    official prototxt's in-place Dropout on fc1); off, as in the paper.
    bnneck: Luo et al.'s BNNeck (CVPR-W 2019): a BatchNorm (learned scale, no
    shift) between h and the classifier, so that the metric losses shape h
    and the identity loss its normalised copy. `embed(..., "bnneck")` gives
    that copy for retrieval.
    """

    def __init__(self, num_ids: int, feature_dim: int = 128, dropout: float = 0.2,
                 synchronized_bn: bool = False, in_place_dropout: bool = False,
                 bnneck: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.num_ids = num_ids
        self.feature_dim = feature_dim
        self.dropout_rate = dropout
        self.synchronized_bn = synchronized_bn
        self.in_place_dropout = in_place_dropout
        self.bnneck = bool(bnneck)
        dtype = self.dtype_policy
        self.stage3 = MultiScaleContext(synchronized_bn=synchronized_bn, name="stage3",
                                        dtype=dtype)
        self.stage4 = MultiScaleContext(synchronized_bn=synchronized_bn, name="stage4",
                                        dtype=dtype)
        self.pool = layers.MaxPooling2D(2, 2, dtype=dtype)
        self.flatten = layers.Flatten(dtype=dtype)
        self.embedding = layers.Dense(feature_dim, kernel_initializer=KERNEL_INITIALIZER,
                                      name="embedding", dtype=dtype)
        self.dropout = layers.Dropout(dropout, dtype=dtype)
        self.classifier = layers.Dense(num_ids, kernel_initializer=KERNEL_INITIALIZER,
                                       name="classifier", dtype=dtype)
        self.neck = layers.BatchNormalization(
            center=False, epsilon=BN_EPSILON, momentum=BN_MOMENTUM, synchronized=synchronized_bn,
            name="bnneck", dtype=dtype) if self.bnneck else None

    def build(self, input_shape):
        shape = self.pool.compute_output_shape(input_shape)
        self.stage3.build(shape)
        shape = self.pool.compute_output_shape(self.stage3.compute_output_shape(shape))
        self.stage4.build(shape)
        shape = self.pool.compute_output_shape(self.stage4.compute_output_shape(shape))
        flat = self.flatten.compute_output_shape(shape)
        self.embedding.build(flat)
        self.classifier.build((flat[0], self.feature_dim))
        if self.neck is not None:
            self.neck.build((flat[0], self.feature_dim))
        self.built = True

    def feature(self, inputs, training=None):
        """h [B, feature_dim] of stage-2 features [B, 40, 16, 96]."""
        x = self.pool(inputs)
        # relu(pool(.)) == pool(relu(.)), on a quarter of the values.
        x = ops.relu(self.pool(self.stage3.pre_activation(x, training=training)))
        x = ops.relu(self.pool(self.stage4.pre_activation(x, training=training)))
        return self.embedding(self.flatten(x))

    def embed(self, inputs, which: str = "h"):
        """The test-time feature: h, or ("bnneck") its BNNeck-normalised copy."""
        h = self.feature(inputs, training=False)
        return self.neck(h, training=False) if which == "bnneck" else h

    def call(self, inputs, training=None):
        h = self.feature(inputs, training=training)
        classified = self.neck(h, training=training) if self.neck is not None else h
        dropped = self.dropout(classified, training=training)
        logits = self.classifier(dropped)
        # The official net's Dropout is in place on fc1: in training, every
        # consumer of h (the region and Siamese losses too) sees the
        # dropped-out h. At test time dropout is the identity either way.
        return (dropped if self.in_place_dropout else h), logits

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.feature_dim), (input_shape[0], self.num_ids)

    def get_config(self):
        return {**super().get_config(), "num_ids": self.num_ids,
                "feature_dim": self.feature_dim, "dropout": self.dropout_rate,
                "synchronized_bn": self.synchronized_bn,
                "in_place_dropout": self.in_place_dropout, "bnneck": self.bnneck}
