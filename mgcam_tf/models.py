"""MGCAM (three streams with contrastive attention) and the MSCAN-body baseline.

Both take the 4-channel RGB-M tensor of `mgcam_tf.data.preprocess` and pick
the channels their input mode asks for, so that one data pipeline and one
exported signature serve every ablation of the paper's Table 2.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers, ops

from mgcam_tf import schedule
from mgcam_tf.errors import ConfigError
from mgcam_tf.layers import (ContrastiveAttention, MultiScaleContext, StreamHead,
                             caffe_batch_norm, conv_bn, xavier_conv)
from mgcam_tf.losses import MGCAMObjective

INPUT_MODES = ("rgb", "mask", "masked_rgb", "rgbm")
ATTENTION_MODES = ("soft", "hard", "none")
LOSS_TERMS = ("loss", "identity_loss", "triplet_loss", "attention_loss", "siamese_loss")
# The normalised value of a black pixel, (0 - mean) / 256 for R, G, B: what
# zeroing the background of the raw image becomes after preprocessing.
BLACK_RGB = (-122.675 / 256.0, -116.669 / 256.0, -104.008 / 256.0)
# f_stage2 is 40x16 for a 160x64 input: the stem and stage 1 pool twice.
FEATURE_STRIDE = 4


def select_input(rgbm, mode: str):
    """[B, H, W, 4] RGB-M -> the channels of an input mode ([B, H, W, 1 | 3 | 4])."""
    if mode == "rgbm":
        return rgbm
    if mode == "rgb":
        return rgbm[..., :3]
    if mode == "mask":
        return rgbm[..., 3:]
    body = rgbm[..., 3:] > 0.0  # (m - 127.5) / 255 > 0  <=>  m > 127.5
    black = ops.reshape(ops.convert_to_tensor(BLACK_RGB, dtype=rgbm.dtype), (1, 1, 1, 3))
    return ops.where(body, rgbm[..., :3], black)


def binary_mask_at_features(rgbm):
    """The mask channel of [B, 160, 64, 4] RGB-M as a 0/1 map at f_stage2 size [B, 40, 16, 1]."""
    mask01 = rgbm[..., 3:] + 0.5
    pooled = ops.average_pool(mask01, FEATURE_STRIDE, FEATURE_STRIDE, padding="valid")
    return ops.cast(pooled > 0.5, rgbm.dtype)


@keras.saving.register_keras_serializable(package="mgcam_tf")
class MGCAM(keras.Model):
    """Mask-guided Contrastive Attention Model (SPEC §2).

    Input: RGB-M [B, 160, 64, 4] (or the dict {"rgbm": ...} of the pipeline).
    Output dict: `h_full`, `h_body`, `h_bgd` [B, feature_dim]; `logits_full`,
    `logits_body`, `logits_bgd` [B, num_ids]; `attention` (Phi+) [B, 40, 16, 1].
    With `attention="none"` only the full stream is built: the MSCAN-body
    baseline, whose outputs are `h_full` and `logits_full`.
    """

    def __init__(self, num_ids: int, input_mode: str = "rgbm", attention: str = "soft",
                 feature_dim: int = 128, dropout: float = 0.2,
                 synchronized_bn: bool = False, **kwargs):
        super().__init__(**kwargs)
        if input_mode not in INPUT_MODES:
            raise ConfigError(f"input_mode must be one of {INPUT_MODES}, got {input_mode!r}")
        if attention not in ATTENTION_MODES:
            raise ConfigError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
        if num_ids < 2:
            raise ConfigError(f"num_ids must be >= 2, got {num_ids}")
        self.num_ids = num_ids
        self.input_mode = input_mode
        self.attention_mode = attention
        self.feature_dim = feature_dim
        self.dropout_rate = dropout
        self.synchronized_bn = synchronized_bn
        # Keras sublayers do not inherit the model's dtype policy (float32,
        # mixed_float16 or mixed_bfloat16): every one is given it, except the
        # attention, which computes in the variables' dtype (float32) under a
        # mixed policy.
        dtype = self.dtype_policy
        self.stem_conv = xavier_conv(32, 5, name="stem_conv", dtype=dtype)
        self.stem_bn = caffe_batch_norm(synchronized_bn, name="stem_bn", dtype=dtype)
        self.pool = layers.MaxPooling2D(2, 2, name="pool", dtype=dtype)
        self.stage1 = MultiScaleContext(synchronized_bn=synchronized_bn, name="stage1",
                                        dtype=dtype)
        self.stage2 = MultiScaleContext(synchronized_bn=synchronized_bn, name="stage2",
                                        dtype=dtype)
        head = dict(num_ids=num_ids, feature_dim=feature_dim, dropout=dropout,
                    synchronized_bn=synchronized_bn, dtype=dtype)
        self.full_stream = StreamHead(**head, name="full_stream")
        if attention != "none":
            self.attention = ContrastiveAttention(attention, name="contrastive_attention",
                                                  dtype=dtype.variable_dtype)
            self.body_stream = StreamHead(**head, name="body_stream")
            self.bgd_stream = StreamHead(**head, name="bgd_stream")
        self.objective = MGCAMObjective()
        self.weight_decay = 0.0
        self.bias_lr_mult = 1.0
        streams = ["full"] if attention == "none" else ["full", "body", "bgd"]
        # Metric state must exist before the model is built; `metrics` reports
        # only the terms the compiled objective actually computes.
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in LOSS_TERMS}
        self.accuracy_trackers = {
            f"accuracy_{s}": keras.metrics.SparseCategoricalAccuracy(name=f"accuracy_{s}")
            for s in streams}
        self._active_losses = ("loss", "identity_loss")

    def stage2_features(self, rgbm, training=None):
        """[B, 160, 64, 4] -> f_stage2 [B, 40, 16, 96]."""
        x = select_input(rgbm, self.input_mode)
        # relu(pool(.)) == pool(relu(.)) (both monotone), on a quarter of the values.
        x = conv_bn(self.stem_conv, self.stem_bn, x, training, self.compute_dtype)
        x = ops.relu(self.pool(x))
        x = ops.relu(self.pool(self.stage1.pre_activation(x, training=training)))
        return self.stage2(x, training=training)

    def call(self, inputs, training=None):
        rgbm = inputs["rgbm"] if isinstance(inputs, dict) else inputs
        features = self.stage2_features(rgbm, training=training)
        h_full, logits_full = self.full_stream(features, training=training)
        outputs = {"h_full": h_full, "logits_full": logits_full}
        if self.attention_mode == "none":
            return self._float32(outputs)
        if self.attention_mode == "soft":
            body, bgd, phi_plus = self.attention(features)
        else:
            body, bgd, phi_plus = self.attention([features, binary_mask_at_features(rgbm)])
        outputs["h_body"], outputs["logits_body"] = self.body_stream(body, training=training)
        outputs["h_bgd"], outputs["logits_bgd"] = self.bgd_stream(bgd, training=training)
        outputs["attention"] = phi_plus
        return self._float32(outputs)

    def _float32(self, outputs: dict) -> dict:
        # Under a mixed policy the features and logits come out in float16 or
        # bfloat16: the losses, the metrics and every consumer get the
        # variables' dtype (float32; float64 where floatx is float64).
        dtype = self.dtype_policy.variable_dtype
        return {k: ops.cast(v, dtype) for k, v in outputs.items()}

    def embed(self, rgbm):
        """The test-time feature h_full [B, feature_dim] alone, without the other streams."""
        h = self.full_stream(self.stage2_features(rgbm, training=False), training=False)[0]
        return ops.cast(h, self.dtype_policy.variable_dtype)

    def get_config(self):
        config = {"name": self.name, "num_ids": self.num_ids, "input_mode": self.input_mode,
                  "attention": self.attention_mode, "feature_dim": self.feature_dim,
                  "dropout": self.dropout_rate, "synchronized_bn": self.synchronized_bn}
        if self.dtype_policy.name != "float32":
            config["dtype"] = self.dtype_policy.name
        return config

    # -- training ---------------------------------------------------------

    def compile(self, optimizer, objective: MGCAMObjective | None = None,
                weight_decay: float = 0.0, bias_lr_mult: float = 1.0, **kwargs):
        """objective: the loss terms and weights; weight_decay: Caffe L2 on kernels;
        bias_lr_mult: the biases' learning-rate multiplier."""
        super().compile(optimizer=optimizer, **kwargs)
        self.objective = objective or MGCAMObjective()
        self.weight_decay = float(weight_decay)
        self.bias_lr_mult = float(bias_lr_mult)
        probe = self._objective_terms(
            {"pid": ops.zeros((2,), "int32"), "attention_target": ops.zeros((2, 40, 16, 1))},
            self(ops.zeros((2, 160, 64, 4)), training=False))
        self._active_losses = ("loss", *[k for k in probe if k != "total"])

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras (3.15, TF backend) draws a batch and all-reduces it across the
        # replicas before fit, only to build an unbuilt model symbolically;
        # under MultiWorkerMirroredStrategy that reduce fails on a dict batch.
        # build_model() and compile() leave nothing unbuilt but the optimizer.
        layers_built = all(layer.built for layer in self._flatten_layers())
        if layers_built and getattr(self, "_compile_metrics", None) is None:
            if self.optimizer is not None and not self.optimizer.built:
                with self.distribute_strategy.scope():
                    self.optimizer.build(self.trainable_variables)
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    @property
    def metrics(self):
        trackers = getattr(self, "loss_trackers", None)
        if trackers is None:
            return []
        return [*(trackers[k] for k in self._active_losses),
                *self.accuracy_trackers.values()]

    def _objective_terms(self, y, outputs) -> dict:
        if self.attention_mode == "hard":
            # A fixed binary map has nothing to learn: no attention loss.
            outputs = {k: v for k, v in outputs.items() if k != "attention"}
        return self.objective(y, outputs)

    def _decay_term(self):
        kernels = [v for v in self.trainable_variables if schedule.is_decayed(v)]
        if not kernels or self.weight_decay == 0:
            return 0.0
        return 0.5 * self.weight_decay * ops.sum(
            ops.stack([ops.sum(ops.square(ops.cast(k, "float32"))) for k in kernels]))

    def _update_metrics(self, y, outputs, terms) -> dict:
        self.loss_trackers["loss"].update_state(terms["total"])
        for name, value in terms.items():
            if name != "total":
                self.loss_trackers[name].update_state(value)
        for name, tracker in self.accuracy_trackers.items():
            tracker.update_state(y["pid"], outputs["logits_" + name.split("_", 1)[1]])
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            outputs = self(x, training=True)
            terms = self._objective_terms(y, outputs)
            # Means over the local batch: gradients are summed across replicas.
            loss = (terms["total"] + self._decay_term()) / replicas
            scaled = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        if self.bias_lr_mult != 1.0:
            grads = [g * self.bias_lr_mult if schedule.is_bias(v) else g
                     for g, v in zip(grads, variables)]
        self.optimizer.apply_gradients(zip(grads, variables))
        if not isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            # oneDNN's ReLU maps NaN to 0, so a NaN input or weight can leave
            # the loss finite while the gradients (and then the weights) are
            # NaN: the logged loss carries their finiteness, for StopOnNaN.
            # (Under loss scaling an overflowing step is skipped, not fatal.)
            terms = {**terms, "total": terms["total"] + 0.0 * tf.linalg.global_norm(
                [tf.cast(g, "float32") for g in grads if g is not None])}
        logs = self._update_metrics(y, outputs, terms)
        logs["learning_rate"] = self.optimizer.learning_rate
        return _reducible_logs(logs)

    def test_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        outputs = self(x, training=False)
        return _reducible_logs(self._update_metrics(y, outputs,
                                                    self._objective_terms(y, outputs)))


def _reducible_logs(logs: dict) -> dict:
    """Scalar logs, as [1] tensors under MultiWorkerMirroredStrategy.

    Keras (3.15, TF backend) reduces a step's logs across workers with
    `strategy.reduce("MEAN", value, axis=0)`, which fails on a scalar; the
    mean of [1]-shaped values over axis 0 and the replicas is the scalar.
    """
    strategy = tf.distribute.get_strategy()
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and \
        strategy.extended._in_multi_worker_mode()  # noqa: SLF001 (what Keras checks)
    if not multi_worker:
        return logs
    return {k: ops.reshape(ops.convert_to_tensor(v), (1,)) for k, v in logs.items()}


@keras.saving.register_keras_serializable(package="mgcam_tf")
class MSCANBody(MGCAM):
    """The MSCAN-body baseline: MGCAM's full stream alone, no attention."""

    def __init__(self, num_ids: int, input_mode: str = "rgbm", **kwargs):
        kwargs.pop("attention", None)
        super().__init__(num_ids, input_mode=input_mode, attention="none", **kwargs)


ARCHITECTURES = ("mgcam", "mscan")
# Keras dtype policies: variables stay float32 under all three, so a
# checkpoint restores into a model of any of them.
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def build_model(num_ids: int, architecture: str = "mgcam", input_mode: str = "rgbm",
                attention: str = "soft", mixed_precision: str = "float32",
                **kwargs) -> MGCAM:
    """Builds (and creates the weights of) MGCAM or the MSCAN-body baseline.

    mixed_precision: one of PRECISIONS, the Keras dtype policy of every layer
    but the attention (float32 always); outputs are float32 under all of them.
    """
    if mixed_precision not in PRECISIONS:
        raise ConfigError(f"mixed_precision must be one of {PRECISIONS}, "
                          f"got {mixed_precision!r}")
    if mixed_precision != "float32":
        kwargs["dtype"] = mixed_precision
    if architecture == "mgcam":
        if attention == "none":
            raise ConfigError("architecture 'mgcam' needs attention 'soft' or 'hard'; "
                              "use architecture 'mscan' for the baseline")
        model = MGCAM(num_ids, input_mode=input_mode, attention=attention, **kwargs)
    elif architecture == "mscan":
        model = MSCANBody(num_ids, input_mode=input_mode, **kwargs)
    else:
        raise ConfigError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    model(ops.zeros((1, 160, 64, 4)), training=False)
    return model
