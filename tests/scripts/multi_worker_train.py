"""Trains a small MGCAM with mgcam_tf.training.trainer.train, on one worker or as one of several.

usage: multi_worker_train.py MODEL_DIR TOTAL_STEPS WEIGHTS_NPZ
With TF_CONFIG naming several workers, `make_strategy("auto")` gives
MultiWorkerMirroredStrategy (created first: it must exist before any TF op
runs). Every worker reads the same 8 fixed samples in global batches of 4.
Writes the final weights to WEIGHTS_NPZ and prints one JSON line.

float64 with synchronized BatchNorm and no dropout: then one worker with the
global batch and two workers with half of it each compute the same step up
to rounding (float32 would leave about 1e-2 of cancellation noise in the
BN statistics, see mirrored_step.py).
"""

import json
import sys

import keras
import numpy as np

from mgcam_tf.training import distribution
from mgcam_tf.modeling import models
from mgcam_tf.training import run_dir
from mgcam_tf.training import trainer

strategy = distribution.make_strategy("auto")
keras.config.set_floatx("float64")

import tensorflow as tf  # noqa: E402

from mgcam_tf.training import solver as schedule  # noqa: E402
from mgcam_tf.modeling.objective import MGCAMObjective  # noqa: E402

model_dir, total_steps, weights_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rng = np.random.RandomState(0)
x = {"rgbm": rng.randn(8, 160, 64, 4)}
y = {"pid": np.array([0, 1, 2, 3, 0, 1, 2, 3], "int32"),
     "attention_target": rng.rand(8, 40, 16, 1)}
dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4, drop_remainder=True).repeat()

keras.utils.set_random_seed(0)
model = trainer.train(
    model_dir, dataset, models.model_config(4, dropout=0.0),
    schedule.SolverConfig(), MGCAMObjective(),
    run_dir.RunConfig(total_steps=total_steps, checkpoint_every=2, log_every=1,
                       image_every=2),
    strategy=strategy, synchronized_bn=True)
np.savez(weights_path, *[np.asarray(w) for w in model.network.get_weights()])
print(json.dumps({"replicas": strategy.num_replicas_in_sync,
                  "chief": distribution.is_chief(strategy),
                  "step": int(model.optimizer.iterations.numpy())}))
