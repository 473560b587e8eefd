"""Trains a small MGCAM on fixed random tensors with mgcam_tf.training.trainer.train.

usage: train_steps.py MODEL_DIR TOTAL_STEPS [nan | init=STAGE1_MODEL_DIR]
Prints one JSON line: the step and a weight checksum at the start of fit
(after any resume) and at the end.
"""

import json
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from mgcam_tf.training import solver as schedule
from mgcam_tf.modeling import models
from mgcam_tf.training import run_dir
from mgcam_tf.training import trainer
from mgcam_tf.modeling.objective import MGCAMObjective

model_dir, total_steps = sys.argv[1], int(sys.argv[2])
poison = len(sys.argv) > 3 and sys.argv[3] == "nan"
init_from = sys.argv[3][len("init="):] if len(sys.argv) > 3 and sys.argv[3].startswith("init=") else None
rng = np.random.RandomState(0)
x = {"rgbm": rng.randn(4, 160, 64, 4).astype("float32")}
if poison:
    x["rgbm"][0, 0, 0, 0] = np.nan
y = {"pid": np.array([0, 1, 2, 0], "int32"),
     "attention_target": rng.rand(4, 40, 16, 1).astype("float32")}
dataset = tf.data.Dataset.from_tensors((x, y)).repeat()
report = {}


class Probe(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        report["start_step"] = int(self.model.optimizer.iterations.numpy())
        report["start_momentum_abs_sum"] = float(sum(
            np.abs(m.numpy()).sum() for m in self.model.optimizer.momentums))
        report["start_kernel_sum"] = float(np.sum(self.model.network.stem_conv.kernel.numpy()))

    def on_train_batch_end(self, batch, logs=None):
        time.sleep(0.05)  # leaves the killing test a window between checkpoints


keras.utils.set_random_seed(0)
model = trainer.train(
    model_dir, dataset, models.model_config(3), schedule.SolverConfig(),
    MGCAMObjective(), run_dir.RunConfig(total_steps=total_steps, checkpoint_every=2,
                                         log_every=1, image_every=2),
    callbacks=[Probe()], init_from=init_from)
report["end_step"] = int(model.optimizer.iterations.numpy())
print(json.dumps(report))
