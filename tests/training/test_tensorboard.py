"""TensorBoard logs each step's own value (not Keras' running mean), grouped tags, settings."""

import glob

import keras
import numpy as np
import tensorflow as tf

from mgcam_tf.modeling import models
from mgcam_tf.modeling.objective import MGCAMObjective
from mgcam_tf.training import callbacks, run_dir, solver, trainer


def read_events(log_dir):
    """{tag: {step: value}} of scalars, and the set of every tag with its plugin."""
    scalars, plugins = {}, {}
    for path in glob.glob(f"{log_dir}/events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                plugins.setdefault(value.tag, plugin or plugins.get(value.tag))
                if plugins[value.tag] == "scalars":
                    scalars.setdefault(value.tag, {})[event.step] = float(
                        tf.make_ndarray(value.tensor))
    return scalars, plugins


def test_logged_loss_is_each_steps_own_loss(tmp_path):
    # Three different batches, a learning rate of ~0 and no dropout: the
    # network does not change, so each step's loss can be computed afterwards.
    rng = np.random.RandomState(0)
    x = {"rgbm": rng.randn(3, 4, 160, 64, 4).astype("float32")}
    y = {"pid": rng.randint(0, 3, size=(3, 4)).astype("int32"),
         "attention_target": rng.rand(3, 4, 40, 16, 1).astype("float32")}
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).repeat()
    keras.utils.set_random_seed(0)
    settings = {"data_dir": "/nowhere", "batch_size": 4, "base_lr": 0.0, "total_steps": None}
    task = trainer.train(
        tmp_path, dataset, models.model_config(3, dropout=0.0),
        solver.SolverConfig(base_lr=1e-20, weight_decay=0.0), MGCAMObjective(),
        run_dir.RunConfig(total_steps=3, checkpoint_every=3, log_every=1, image_every=3),
        settings=settings)

    own = []
    for k in range(3):
        xk = {"rgbm": x["rgbm"][k]}
        yk = {key: v[k] for key, v in y.items()}
        own.append(float(task.objective_terms(yk, task.network(xk, training=True))["total"]))
    assert abs(own[1] - own[0]) > 1e-3 and abs(own[2] - own[1]) > 1e-3  # means would differ

    scalars, plugins = read_events(tmp_path / run_dir.LOG_DIR)
    logged = [scalars["loss/total"][step] for step in (1, 2, 3)]
    np.testing.assert_allclose(logged, own, rtol=1e-4, atol=1e-5)
    running_mean = np.cumsum(own) / np.arange(1, 4)
    assert abs(logged[2] - running_mean[2]) > 1e-4  # the old, misleading value

    for tag in ("loss/identity", "loss/triplet", "loss/attention", "accuracy/full",
                "accuracy/body", "accuracy/bgd", "lr"):
        assert tag in scalars, sorted(scalars)
    assert plugins["run/settings"] == "text"
    assert "hparams" in plugins.values()
    assert plugins[callbacks.ATTENTION_IMAGE_TAG] == "images"


def test_training_progress_counts_the_whole_run():
    seen = []

    class Optimizer:
        iterations = tf.Variable(4, dtype=tf.int64)

    class Model:
        optimizer = Optimizer()

    progress = callbacks.TrainingProgress(lambda done, total: seen.append((done, total)), 10)
    progress.set_model(Model())
    progress.on_train_begin()
    for batch in range(3):
        progress.on_train_batch_end(batch)
    progress.on_train_begin()  # trainer.train's second fit of a resumed run
    progress.on_train_batch_end(0)
    assert seen == [(4, 10), (5, 10), (6, 10), (7, 10), (8, 10)]
