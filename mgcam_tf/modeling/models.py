"""MGCAM (three streams with contrastive attention) and the MSCAN-body baseline.

Both take the 4-channel RGB-M tensor of `mgcam_tf.data.preprocess` and pick
the channels their input mode asks for, so that one data pipeline and one
exported signature serve every ablation of the paper's Table 2.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from mgcam_tf.conventions import (ARCHITECTURES, ATTENTION_MODES, IBN_STAGES, INPUT_MODES,
                                  PRECISIONS, RETRIEVAL_FEATURES)
from mgcam_tf.errors import ConfigError
from mgcam_tf.modeling.layers import ContrastiveAttention, MultiScaleContext, StreamHead, caffe_batch_norm, conv_bn, xavier_conv

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




def _check_recipe_options(bnneck: bool, ibn_stages, retrieval_feature: str,
                          in_place_dropout: bool) -> None:
    stages = list(ibn_stages)
    for stage in stages:
        if stage not in IBN_STAGES:
            raise ConfigError(f"ibn_stages: {stage!r} is not an MSCAN stage that takes "
                              f"instance norm; choose from {', '.join(IBN_STAGES)}")
    if len(set(stages)) != len(stages):
        raise ConfigError(f"ibn_stages lists a stage twice: {', '.join(stages)}")
    if retrieval_feature not in RETRIEVAL_FEATURES:
        raise ConfigError(f"retrieval_feature must be one of {RETRIEVAL_FEATURES}, "
                          f"got {retrieval_feature!r}")
    if retrieval_feature == "bnneck" and not bnneck:
        raise ConfigError("retrieval_feature 'bnneck' needs bnneck")
    if bnneck and in_place_dropout:
        raise ConfigError("bnneck and in_place_dropout cannot be combined (the official "
                          "in-place dropout acts on h, which BNNeck keeps apart)")


@keras.saving.register_keras_serializable(package="mgcam_tf")
class MGCAM(keras.Model):
    """Mask-guided Contrastive Attention Model (paper Section 3, Figure 2).

    Input: RGB-M [B, 160, 64, 4] (or the dict {"rgbm": ...} of the pipeline).
    Output dict: `h_full`, `h_body`, `h_bgd` [B, feature_dim]; `logits_full`,
    `logits_body`, `logits_bgd` [B, num_ids]; `attention` (Phi+) [B, 40, 16, 1].
    With `attention="none"` only the full stream is built: the MSCAN-body
    baseline, whose outputs are `h_full` and `logits_full`.
    """

    def __init__(self, num_ids: int, input_mode: str = "rgbm", attention: str = "soft",
                 feature_dim: int = 128, dropout: float = 0.2,
                 synchronized_bn: bool = False, in_place_dropout: bool = False,
                 bnneck: bool = False, ibn_stages: tuple[str, ...] = (),
                 retrieval_feature: str = "h", **kwargs):
        super().__init__(**kwargs)
        _check_recipe_options(bnneck, ibn_stages, retrieval_feature, in_place_dropout)
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
        self.in_place_dropout = in_place_dropout
        self.bnneck = bool(bnneck)
        self.ibn_stages = tuple(ibn_stages)
        self.retrieval_feature = retrieval_feature
        # Keras sublayers do not inherit the model's dtype policy (float32,
        # mixed_float16 or mixed_bfloat16): every one is given it, except the
        # attention, which computes in the variables' dtype (float32) under a
        # mixed policy.
        dtype = self.dtype_policy
        self.stem_conv = xavier_conv(32, 5, name="stem_conv", dtype=dtype)
        self.stem_bn = caffe_batch_norm(synchronized_bn, name="stem_bn", dtype=dtype)
        self.pool = layers.MaxPooling2D(2, 2, name="pool", dtype=dtype)
        self.stage1 = MultiScaleContext(synchronized_bn=synchronized_bn, name="stage1",
                                        ibn="stage1" in self.ibn_stages, dtype=dtype)
        self.stage2 = MultiScaleContext(synchronized_bn=synchronized_bn, name="stage2",
                                        ibn="stage2" in self.ibn_stages, dtype=dtype)
        head = dict(num_ids=num_ids, feature_dim=feature_dim, dropout=dropout,
                    synchronized_bn=synchronized_bn, in_place_dropout=in_place_dropout,
                    bnneck=self.bnneck, dtype=dtype)
        self.full_stream = StreamHead(**head, name="full_stream")
        if attention != "none":
            self.attention = ContrastiveAttention(attention, name="contrastive_attention",
                                                  dtype=dtype.variable_dtype)
            self.body_stream = StreamHead(**head, name="body_stream")
            self.bgd_stream = StreamHead(**head, name="bgd_stream")

    def stage2_features(self, rgbm, training=None):
        """[B, 160, 64, 4] -> f_stage2 [B, 40, 16, 96]."""
        x = select_input(rgbm, self.input_mode)
        # relu(pool(.)) == pool(relu(.)) (both monotone), on a quarter of the values.
        x = conv_bn(self.stem_conv, self.stem_bn, x, training, self.compute_dtype)
        x = ops.relu(self.pool(x))
        x = ops.relu(self.pool(self.stage1.pre_activation(x, training=training)))
        return self.stage2(x, training=training)

    def _attend(self, features, rgbm):
        """(body, background, Phi+) of f_stage2: learned (soft) or the mask itself (hard)."""
        if self.attention_mode == "soft":
            return self.attention(features)
        return self.attention([features, binary_mask_at_features(rgbm)])

    def call(self, inputs, training=None):
        rgbm = inputs["rgbm"] if isinstance(inputs, dict) else inputs
        features = self.stage2_features(rgbm, training=training)
        h_full, logits_full = self.full_stream(features, training=training)
        outputs = {"h_full": h_full, "logits_full": logits_full}
        if self.attention_mode == "none":
            return self._float32(outputs)
        body, bgd, phi_plus = self._attend(features, rgbm)
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

    def inference_outputs(self, rgbm, attention: bool = True) -> dict:
        """What test time needs, in inference mode: `h_full` [B, feature_dim] and,
        for MGCAM when `attention`, Phi+ `attention` [B, 40, 16, 1]. The body and
        background streams and the classifiers are not run."""
        features = self.stage2_features(rgbm, training=False)
        outputs = {"h_full": self.full_stream.embed(features, self.retrieval_feature)}
        if attention and self.attention_mode != "none":
            outputs["attention"] = self._attend(features, rgbm)[2]
        return self._float32(outputs)

    def embed(self, rgbm):
        """The test-time feature h_full [B, feature_dim] alone, without the other streams."""
        return self.inference_outputs(rgbm, attention=False)["h_full"]

    def get_config(self):
        config = {"name": self.name, "num_ids": self.num_ids, "input_mode": self.input_mode,
                  "attention": self.attention_mode, "feature_dim": self.feature_dim,
                  "dropout": self.dropout_rate, "synchronized_bn": self.synchronized_bn,
                  "in_place_dropout": self.in_place_dropout}
        # The recipe's options only when set, so that every configuration
        # written before them still reads as the same model.
        if self.bnneck:
            config["bnneck"] = True
        if self.ibn_stages:
            config["ibn_stages"] = list(self.ibn_stages)
        if self.retrieval_feature != "h":
            config["retrieval_feature"] = self.retrieval_feature
        if self.dtype_policy.name != "float32":
            config["dtype"] = self.dtype_policy.name
        return config


@keras.saving.register_keras_serializable(package="mgcam_tf")
class MSCANBody(MGCAM):
    """The MSCAN-body baseline: MGCAM's full stream alone, no attention."""

    def __init__(self, num_ids: int, input_mode: str = "rgbm", **kwargs):
        kwargs.pop("attention", None)
        super().__init__(num_ids, input_mode=input_mode, attention="none", **kwargs)




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


# get_config() keys that are settings of a run, not of the model: a model
# directory's config.json leaves them out, so a checkpoint restores into the
# same network under any precision or BatchNorm synchronisation.
RUN_SETTINGS = ("name", "dtype", "synchronized_bn", "trainable")
_CLASSES = {"MGCAM": MGCAM, "MSCANBody": MSCANBody}


def serialize(model: MGCAM) -> dict:
    """`{"class_name", "config"}`: the model's get_config() less RUN_SETTINGS."""
    config = {k: v for k, v in model.get_config().items() if k not in RUN_SETTINGS}
    return {"class_name": type(model).__name__, "config": config}


def model_config(num_ids: int, architecture: str = "mgcam", input_mode: str = "rgbm",
                 attention: str = "soft", feature_dim: int = 128,
                 dropout: float = 0.2, in_place_dropout: bool = False,
                 bnneck: bool = False, ibn_stages: tuple[str, ...] = (),
                 retrieval_feature: str = "h") -> dict:
    """The serialised configuration (see `serialize`) of the model these
    arguments describe, without building it; `model_from_config` builds it."""
    if architecture not in ARCHITECTURES:
        raise ConfigError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    if input_mode not in INPUT_MODES:
        raise ConfigError(f"input_mode must be one of {INPUT_MODES}, got {input_mode!r}")
    if architecture == "mgcam" and attention not in ("soft", "hard"):
        raise ConfigError("architecture 'mgcam' needs attention 'soft' or 'hard'; "
                          "use architecture 'mscan' for the baseline")
    if num_ids < 2:
        raise ConfigError(f"num_ids must be >= 2, got {num_ids}")
    if not feature_dim >= 1:
        raise ConfigError(f"feature_dim must be >= 1, got {feature_dim}")
    if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
        raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}")
    _check_recipe_options(bnneck, ibn_stages, retrieval_feature, in_place_dropout)
    config = {"num_ids": int(num_ids), "input_mode": input_mode,
              "attention": attention if architecture == "mgcam" else "none",
              "feature_dim": int(feature_dim), "dropout": float(dropout),
              "in_place_dropout": bool(in_place_dropout)}
    # As MGCAM.get_config: the recipe's options only when set.
    if bnneck:
        config["bnneck"] = True
    if ibn_stages:
        config["ibn_stages"] = list(ibn_stages)
    if retrieval_feature != "h":
        config["retrieval_feature"] = retrieval_feature
    return {"class_name": "MGCAM" if architecture == "mgcam" else "MSCANBody",
            "config": config}


def model_from_config(serialized: dict, *, synchronized_bn: bool = False,
                      mixed_precision: str = "float32") -> MGCAM:
    """Builds (weights created) the model of a `serialize` / `model_config` dict."""
    name = serialized.get("class_name")
    if name not in _CLASSES:
        raise ConfigError(f"unknown model class {name!r}; expected one of {sorted(_CLASSES)}")
    config = dict(serialized["config"])
    architecture = "mgcam" if name == "MGCAM" else "mscan"
    num_ids = config.pop("num_ids")
    return build_model(num_ids, architecture, config.pop("input_mode", "rgbm"),
                       config.pop("attention", "soft"), mixed_precision=mixed_precision,
                       synchronized_bn=synchronized_bn, **config)
