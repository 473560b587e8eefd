"""Trains 4 deterministic steps on the built-in data, with or without PeriodicEvaluation.

usage: eval_callback_run.py WORK_DIR (with|without)
Writes WORK_DIR/<with|without>/weights.npz (the network's weights after training).
"""

import os
import sys

import tensorflow as tf

tf.config.experimental.enable_op_determinism()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from mgcam_tf.data import layouts, pipeline, synthetic  # noqa: E402
from mgcam_tf.modeling import models  # noqa: E402
from mgcam_tf.modeling.objective import MGCAMObjective  # noqa: E402
from mgcam_tf.training import callbacks, run_dir, solver, trainer  # noqa: E402

work, mode = sys.argv[1], sys.argv[2]
data_dir = synthetic.write_synthetic_market(os.path.join(work, "data"), num_train_ids=6,
                                            num_test_ids=4, num_cameras=2,
                                            images_per_camera=2)
dataset = layouts.load_dataset(str(data_dir))
batches = pipeline.train_dataset(dataset.train, 8, seed=0, drop_remainder=True)
model_dir = os.path.join(work, mode)
extra = []
if mode == "with":
    extra.append(callbacks.PeriodicEvaluation(dataset.query, dataset.gallery, 2, model_dir,
                                              batch_size=8))
keras.utils.set_random_seed(0)
result = trainer.train(model_dir, batches, models.model_config(dataset.num_train_ids),
                       solver.SolverConfig(), MGCAMObjective(),
                       run_dir.RunConfig(total_steps=4, checkpoint_every=2, log_every=1,
                                         image_every=2), callbacks=extra)
np.savez(os.path.join(model_dir, "weights.npz"), *result.network.get_weights())
