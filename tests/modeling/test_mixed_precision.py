"""Mixed precision: mixed_float16 (with loss scaling) and mixed_bfloat16 train
without NaN; attention, outputs and losses stay float32; variables and
checkpoints are float32, so a run resumes under another precision."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mgcam_tf.modeling import models
from mgcam_tf.training import solver as schedule
from mgcam_tf.training import run_dir
from mgcam_tf.training import task, trainer
from mgcam_tf.errors import ConfigError
from mgcam_tf.modeling.objective import MGCAMObjective

RNG = np.random.RandomState(0)
X = {"rgbm": RNG.randn(4, 160, 64, 4).astype("float32")}
Y = {"pid": np.array([0, 1, 2, 0], "int32"),
     "attention_target": RNG.rand(4, 40, 16, 1).astype("float32")}
COMPUTE = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_a_few_steps_without_nan(policy):
    keras.utils.set_random_seed(0)
    model = models.build_model(3, mixed_precision=policy)
    trainee = task.TrainingTask(model, MGCAMObjective(), weight_decay=0.005, bias_lr_mult=2.0)
    trainee.compile(schedule.build_optimizer(schedule.SolverConfig()), run_eagerly=True)
    # Computation in 16 bits, variables in 32; the attention map in float32.
    assert model.stem_conv.compute_dtype == COMPUTE[policy]
    assert model.full_stream.stage4.convs[2].compute_dtype == COMPUTE[policy]
    assert model.full_stream.classifier.compute_dtype == COMPUTE[policy]
    assert model.attention.compute_dtype == "float32"
    assert all(w.dtype == "float32" for w in model.weights)
    # float16 needs loss scaling, bfloat16 (float32's exponent range) does not.
    assert isinstance(trainee.optimizer, keras.optimizers.LossScaleOptimizer) == (
        policy == "mixed_float16")
    outputs = model(X["rgbm"], training=False)
    assert {str(v.dtype) for v in outputs.values()} == {"<dtype: 'float32'>"}
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = trainee.fit(tf.data.Dataset.from_tensors((X, Y)).repeat(), epochs=1,
                        steps_per_epoch=4, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    # mixed_float16 skips the update of a step whose scaled gradients
    # overflow while the loss scale comes down from 2**15.
    assert int(trainee.optimizer.iterations.numpy()) >= 1
    after = [w.numpy() for w in model.trainable_weights]
    assert all(np.all(np.isfinite(w)) for w in after)
    assert any(not np.array_equal(b, a) for b, a in zip(before, after))
    np.testing.assert_allclose(model.embed(X["rgbm"]).numpy(),
                               model(X["rgbm"], training=False)["h_full"].numpy(),
                               rtol=1e-2, atol=1e-2)


def test_unknown_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="mixed_precision"):
        models.build_model(3, mixed_precision="float8")


def test_checkpoints_restore_across_precisions(tmp_path):
    dataset = tf.data.Dataset.from_tensors((X, Y)).repeat()
    args = (dataset, models.model_config(3), schedule.SolverConfig(),
            MGCAMObjective())
    keras.utils.set_random_seed(0)
    trained = trainer.train(tmp_path, *args, run_dir.RunConfig(2, checkpoint_every=2),
                             mixed_precision="mixed_float16")
    # The float32 model of export and evaluation restores it...
    restored = run_dir.load_trained_model(tmp_path)
    for a, b in zip(trained.network.get_weights(), restored.get_weights()):
        np.testing.assert_array_equal(a, b)
    # ... and a bfloat16 run resumes it, at its step and with its momentum.
    resumed = trainer.train(tmp_path, *args, run_dir.RunConfig(4, checkpoint_every=2),
                             mixed_precision="mixed_bfloat16")
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-4")
    assert all(np.all(np.isfinite(w)) for w in resumed.get_weights())
