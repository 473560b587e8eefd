"""The training task's own state: the centre loss's centres and Wen et al.'s update."""

import numpy as np
import tensorflow as tf

from mgcam_tf.modeling.models import build_model
from mgcam_tf.modeling.objective import MGCAMObjective
from mgcam_tf.training import solver, task


def test_a_train_step_moves_the_centres_by_wens_rule():
    rng = np.random.RandomState(0)
    x = {"rgbm": rng.randn(6, 160, 64, 4).astype("float32")}
    pids = np.array([0, 0, 0, 2, 2, 1], "int32")
    y = {"pid": pids, "attention_target": rng.rand(6, 40, 16, 1).astype("float32")}
    network = build_model(3, dropout=0.0)
    trainee = task.TrainingTask(network, MGCAMObjective(centre_weight=0.1, centre_alpha=0.5))
    trainee.compile(solver.build_optimizer(solver.SolverConfig()))
    assert trainee.centres.shape == (3, network.feature_dim)
    assert all(w is not trainee.centres for w in network.weights)     # not exported
    # Training-mode BatchNorm uses the batch's statistics: the step sees this h.
    h = np.asarray(network(x, training=True)["h_full"])
    trainee.fit(tf.data.Dataset.from_tensors((x, y)), epochs=1, verbose=0, shuffle=False)
    expected = np.zeros((3, network.feature_dim), "float32")
    for j in range(3):
        mine = pids == j
        # c_j -= alpha * sum(c_j - h_i) / (1 + n_j), from c_j = 0
        expected[j] = 0.5 * h[mine].sum(0) / (1 + mine.sum())
    np.testing.assert_allclose(np.asarray(trainee.centres), expected, rtol=1e-4, atol=1e-5)
    assert "centre_loss" in [m.name for m in trainee.metrics]


def test_no_centres_without_the_centre_loss():
    trainee = task.TrainingTask(build_model(3), MGCAMObjective())
    assert trainee.centres is None
    assert "centre_loss" not in [m.name for m in trainee.metrics]
