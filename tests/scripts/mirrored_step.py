"""One MGCAM train_step on one device and on 2 logical CPU devices under MirroredStrategy.

Run as a script (logical devices must be configured before any op runs, so
this cannot share a process with other tests). Prints the largest absolute
weight difference, with and without synchronized BatchNorm, as JSON.
"""

import json
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

import keras  # noqa: E402

# float64: float32 sums through BatchNorm cancel badly enough (about 1e-2
# relative in the stem) to hide a real error; in float64 both runs agree
# to rounding.
keras.config.set_floatx("float64")
import numpy as np  # noqa: E402

from mgcam_tf.modeling import models
from mgcam_tf.training import solver as schedule  # noqa: E402
from mgcam_tf.training import task  # noqa: E402
from mgcam_tf.modeling.objective import MGCAMObjective  # noqa: E402

rng = np.random.RandomState(0)
x = {"rgbm": rng.randn(8, 160, 64, 4)}
y = {"pid": np.array([0, 1, 2, 3, 0, 1, 2, 3], "int32"),
     "attention_target": rng.rand(8, 40, 16, 1)}
dataset = tf.data.Dataset.from_tensors((x, y)).repeat()

keras.utils.set_random_seed(0)
initial = models.build_model(4, dropout=0.0).get_weights()


def one_step(strategy, synchronized_bn):
    with strategy.scope():
        model = models.build_model(4, dropout=0.0, synchronized_bn=synchronized_bn)
        model.set_weights(initial)
        # The centre loss too: its centres move by all-reduced sums (Wen et al.'s rule).
        trainee = task.TrainingTask(model, MGCAMObjective(siamese_weight=0.01,
                                                          centre_weight=0.01),
                                    weight_decay=0.005, bias_lr_mult=2.0)
        trainee.compile(schedule.build_optimizer(schedule.SolverConfig()))
    trainee.fit(dataset, epochs=1, steps_per_epoch=1, verbose=0, shuffle=False)
    return [*model.get_weights(), keras.ops.convert_to_numpy(trainee.centres)]


single = one_step(tf.distribute.get_strategy(), False)
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert mirrored.num_replicas_in_sync == 2
report = {}
for sync in (True, False):
    weights = one_step(mirrored, sync)
    report["sync" if sync else "unsync"] = max(
        float(np.max(np.abs(a - b))) for a, b in zip(single, weights))
report["update"] = max(float(np.max(np.abs(a - b))) for a, b in zip(single, initial))
report["centres_moved"] = float(np.max(np.abs(single[-1])))   # they start at zero
json.dump(report, sys.stdout)
