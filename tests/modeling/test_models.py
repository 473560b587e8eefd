"""mgcam_tf.modeling.models: every tensor shape of the official prototxt, the ablations, and one train step each."""

import keras
from layer_contract import run_layer_test
import numpy as np
import pytest
import tensorflow as tf

from mgcam_tf.modeling import models
from mgcam_tf.training import solver as schedule
from mgcam_tf.training import task
from mgcam_tf.errors import ConfigError
from mgcam_tf.modeling.objective import MGCAMObjective

RNG = np.random.RandomState(0)
NUM_IDS = 5


def batch(n=4):
    x = {"rgbm": RNG.randn(n, 160, 64, 4).astype("float32")}
    y = {"pid": np.arange(n, dtype="int32") % NUM_IDS,
         "attention_target": RNG.rand(n, 40, 16, 1).astype("float32")}
    return x, y


def test_every_tensor_shape_of_spec_section_2():
    model = models.build_model(NUM_IDS)
    x = tf.constant(batch(2)[0]["rgbm"])
    stem = model.pool(tf.nn.relu(model.stem_bn(model.stem_conv(x))))
    assert tuple(stem.shape) == (2, 80, 32, 32)
    assert model.stem_conv.kernel_size == (5, 5)
    stage1 = model.pool(model.stage1(stem))
    assert tuple(stage1.shape) == (2, 40, 16, 96)
    f_stage2 = model.stage2(stage1)
    assert tuple(f_stage2.shape) == (2, 40, 16, 96)
    body, bgd, phi = model.attention(f_stage2)
    assert tuple(phi.shape) == (2, 40, 16, 1)
    assert tuple(body.shape) == tuple(bgd.shape) == (2, 40, 16, 96)
    head = model.full_stream
    pooled = head.pool(head.stage4(head.pool(head.stage3(head.pool(f_stage2)))))
    assert tuple(pooled.shape) == (2, 5, 2, 96)
    outputs = model(x, training=False)
    for stream in ("full", "body", "bgd"):
        assert tuple(outputs[f"h_{stream}"].shape) == (2, 128)
        assert tuple(outputs[f"logits_{stream}"].shape) == (2, NUM_IDS)
    assert tuple(outputs["attention"].shape) == (2, 40, 16, 1)


def test_streams_do_not_share_weights():
    model = models.build_model(NUM_IDS)
    ids = [{id(w) for w in s.weights} for s in
           (model.full_stream, model.body_stream, model.bgd_stream)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert len(model.full_stream.weights) == len(model.body_stream.weights) > 0


def test_embed_is_h_full_before_dropout():
    model = models.build_model(NUM_IDS)
    x = tf.constant(batch(3)[0]["rgbm"])
    np.testing.assert_allclose(model.embed(x).numpy(),
                               model(x, training=False)["h_full"].numpy(), atol=1e-5)


def test_input_modes_select_channels():
    rgbm = RNG.randn(1, 4, 4, 4).astype("float32")
    rgbm[..., 3] = np.where(np.arange(16).reshape(1, 4, 4) % 2, 0.5, -0.5)
    assert models.select_input(rgbm, "rgb").shape[-1] == 3
    np.testing.assert_array_equal(models.select_input(rgbm, "mask"), rgbm[..., 3:])
    masked = np.asarray(models.select_input(rgbm, "masked_rgb"))
    body = rgbm[..., 3] > 0
    np.testing.assert_array_equal(masked[body], rgbm[..., :3][body])
    np.testing.assert_allclose(masked[~body], np.broadcast_to(models.BLACK_RGB, masked[~body].shape))


def test_hard_attention_map_is_the_downsampled_mask():
    rgbm = np.zeros((1, 160, 64, 4), "float32")
    rgbm[..., 3] = -0.5
    rgbm[:, 40:120, 16:48, 3] = 0.5  # body in the middle
    mask = np.asarray(models.binary_mask_at_features(rgbm))
    assert mask.shape == (1, 40, 16, 1)
    assert mask[0, 10:30, 4:12].all() and mask.sum() == 20 * 8
    model = models.build_model(NUM_IDS, attention="hard")
    np.testing.assert_array_equal(model(rgbm)["attention"].numpy(), mask)


ABLATIONS = [(arch, mode, att) for mode in models.INPUT_MODES
             for arch, att in (("mscan", "none"), ("mgcam", "soft"), ("mgcam", "hard"))]


@pytest.mark.parametrize("architecture,input_mode,attention", ABLATIONS)
def test_baseline_and_every_ablation_trains_one_step(architecture, input_mode, attention):
    model = models.build_model(NUM_IDS, architecture, input_mode, attention)
    trainee = task.TrainingTask(model, MGCAMObjective(), weight_decay=0.005, bias_lr_mult=2.0)
    trainee.compile(schedule.build_optimizer(schedule.SolverConfig()), run_eagerly=True)
    before = [w.numpy().copy() for w in model.trainable_weights]
    logs = trainee.train_step(batch())
    assert np.isfinite(float(logs["loss"]))
    assert ("attention_loss" in logs) == (attention == "soft")
    assert ("triplet_loss" in logs) == (architecture == "mgcam")
    assert ("accuracy_body" in logs) == (architecture == "mgcam")
    changed = [not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights)]
    assert all(changed)


def test_model_config_round_trip():
    for model in (models.build_model(NUM_IDS, "mgcam", "masked_rgb", "hard"),
                  models.build_model(NUM_IDS, "mscan", "rgb")):
        clone = type(model).from_config(model.get_config())
        assert clone.get_config() == model.get_config()


def test_weight_decay_is_coupled_l2_on_kernels_only():
    model = models.build_model(NUM_IDS)
    trainee = task.TrainingTask(model, weight_decay=0.5)
    kernel, bias = model.full_stream.embedding.kernel, model.full_stream.embedding.bias
    with tf.GradientTape() as tape:
        decay = trainee.decay_term()
    kernel_grad, bias_grad = tape.gradient(decay, [kernel, bias])
    np.testing.assert_allclose(kernel_grad.numpy(), 0.5 * kernel.numpy(), rtol=1e-5, atol=1e-7)
    assert bias_grad is None


def test_bias_learning_rate_multiplier_doubles_bias_steps_only():
    data = batch()
    deltas = {}
    for mult in (1.0, 2.0):
        keras.utils.set_random_seed(3)
        model = models.build_model(NUM_IDS, dropout=0.0)
        trainee = task.TrainingTask(model, MGCAMObjective(), bias_lr_mult=mult)
        trainee.compile(keras.optimizers.SGD(0.01), run_eagerly=True)
        before = [w.numpy().copy() for w in model.trainable_weights]
        trainee.train_step(data)
        deltas[mult] = [(w.path, w.numpy() - b) for w, b in zip(model.trainable_weights, before)]
    for (path, delta), (_, delta2) in zip(deltas[1.0], deltas[2.0]):
        factor = 2.0 if path.endswith("bias") else 1.0
        np.testing.assert_allclose(delta2, factor * delta, rtol=1e-3, atol=1e-6)


def test_bad_model_settings_are_config_errors():
    with pytest.raises(ConfigError, match="input_mode"):
        models.build_model(NUM_IDS, input_mode="depth")
    with pytest.raises(ConfigError, match="architecture"):
        models.build_model(NUM_IDS, architecture="resnet")
    with pytest.raises(ConfigError, match="mscan"):
        models.build_model(NUM_IDS, "mgcam", attention="none")


@pytest.mark.parametrize("architecture,attention", [("mgcam", "soft"), ("mgcam", "hard"),
                                                    ("mscan", "none")])
def test_keras_file_round_trip(tmp_path, architecture, attention):
    """The models keep the layer contract (tests/layer_contract.py) too."""
    model = models.build_model(NUM_IDS, architecture, "rgbm", attention)
    rgbm = np.random.RandomState(2).randn(2, 160, 64, 4).astype("float32")
    shapes = {"h_full": (2, 128), "logits_full": (2, NUM_IDS)}
    if architecture == "mgcam":
        shapes.update({"h_body": (2, 128), "logits_body": (2, NUM_IDS), "h_bgd": (2, 128),
                       "logits_bgd": (2, NUM_IDS), "attention": (2, 40, 16, 1)})
    run_layer_test(lambda: model, rgbm, shapes, tmp_path, call_kwargs={"training": False})
    loaded = keras.models.load_model(tmp_path / f"{model.name}.keras")
    assert models.serialize(loaded) == models.serialize(model)


def test_model_config_is_the_models_own_config():
    for args in ((NUM_IDS, "mgcam", "masked_rgb", "hard"), (NUM_IDS, "mscan", "rgb", "none")):
        config = models.model_config(*args)
        assert models.serialize(models.model_from_config(config)) == config


RECIPE_MODELS = [dict(bnneck=True), dict(ibn_stages=("stage1", "stage2")),
                 dict(bnneck=True, ibn_stages=("stage1",), retrieval_feature="bnneck")]


@pytest.mark.parametrize("options", RECIPE_MODELS)
def test_bnneck_and_ibn_serialise_save_load_and_restore(tmp_path, options):
    model = models.build_model(NUM_IDS, **options)
    rgbm = np.random.RandomState(4).randn(2, 160, 64, 4).astype("float32")
    config = models.serialize(model)
    assert config == models.model_config(NUM_IDS, **options)
    # .keras file
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert models.serialize(loaded) == config
    np.testing.assert_allclose(loaded.embed(rgbm).numpy(), model.embed(rgbm).numpy(),
                               rtol=1e-5, atol=1e-6)
    # tf.train checkpoint into a model rebuilt from the config (how runs restore)
    tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    rebuilt = models.model_from_config(config)
    tf.train.Checkpoint(model=rebuilt).read(str(tmp_path / "ckpt")).assert_consumed()
    np.testing.assert_allclose(rebuilt.embed(rgbm).numpy(), model.embed(rgbm).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_ibn_instance_normalises_half_of_each_branch():
    from mgcam_tf.modeling.layers import MultiScaleContext

    stage = MultiScaleContext(ibn=True)
    x = np.random.RandomState(5).randn(2, 12, 8, 16).astype("float32") * 3 + 1
    out = stage.pre_activation(x, training=True).numpy()
    # Instance norm: channels 0..15 of each 32-channel branch have zero mean per image.
    for branch in range(3):
        half = out[..., branch * 32: branch * 32 + 16]
        np.testing.assert_allclose(half.mean(axis=(1, 2)), 0.0, atol=1e-4)
    assert len(stage.instance_norms) == 3 and stage.get_config()["ibn"] is True


def test_bnneck_retrieval_feature_is_the_normalised_h():
    model = models.build_model(NUM_IDS, bnneck=True, retrieval_feature="bnneck")
    rgbm = np.random.RandomState(6).randn(2, 160, 64, 4).astype("float32")
    h = model(rgbm, training=False)["h_full"]
    np.testing.assert_allclose(model.embed(rgbm).numpy(),
                               model.full_stream.neck(h, training=False).numpy(), rtol=1e-5)


def test_recipe_model_settings_are_refused_by_name():
    with pytest.raises(ConfigError, match="ibn_stages"):
        models.model_config(NUM_IDS, ibn_stages=("stage3",))
    with pytest.raises(ConfigError, match="twice"):
        models.model_config(NUM_IDS, ibn_stages=("stage1", "stage1"))
    with pytest.raises(ConfigError, match="needs bnneck"):
        models.model_config(NUM_IDS, retrieval_feature="bnneck")
