"""The official code's choices (developfeng/MGCAM) offered beside the paper's: each
trains one step, and each does what the official files do."""

import numpy as np
import pytest

from mgcam_tf.data import layouts, pipeline, synthetic
from mgcam_tf.modeling import losses, models
from mgcam_tf.modeling.objective import MGCAMObjective
from mgcam_tf.training import solver, task

NUM_IDS = 4


def _batch(n=8):
    rng = np.random.RandomState(0)
    return ({"rgbm": rng.randn(n, 160, 64, 4).astype("float32")},
            {"pid": np.array([0, 0, 1, 2, 3, 3, 1, 2][:n], "int32"),
             "attention_target": rng.rand(n, 40, 16, 1).astype("float32")})


def _one_step(model, objective):
    trainee = task.TrainingTask(model, objective, weight_decay=0.005, bias_lr_mult=2.0)
    trainee.compile(solver.build_optimizer(solver.SolverConfig()), run_eagerly=True)
    logs = trainee.train_step(_batch())
    assert all(np.isfinite(float(v)) for v in logs.values())
    return logs


def test_in_place_dropout_feeds_the_losses_dropped_features():
    model = models.build_model(NUM_IDS, in_place_dropout=True, dropout=0.5)
    rgbm = _batch()[0]["rgbm"]
    train = model(rgbm, training=True)["h_full"].numpy()
    test = model(rgbm, training=False)["h_full"].numpy()
    # Dropout 0.5 zeroes about half of h in training; inference is unchanged.
    assert 0.3 < np.mean(train == 0) < 0.7 and np.mean(test == 0) < 0.05
    np.testing.assert_array_equal(model.embed(rgbm).numpy(), test)
    assert model.get_config()["in_place_dropout"] is True
    assert "siamese_loss" in _one_step(model, MGCAMObjective(siamese_weight=0.01))


def test_official_siamese_loss_is_caffe_contrastive():
    h = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0], [1.0, 0.0]], "float32")
    pids = np.array([1, 1, 1, 2])
    # Pair 1 similar: d^2 = 25; pair 2 dissimilar, d = 1: max(10 - 1, 0)^2 = 81; 1/(2*2).
    value = float(losses.official_siamese_loss(h, pids, margin=10.0))
    assert value == pytest.approx((25.0 + 81.0) / 4.0)
    model = models.build_model(NUM_IDS)
    logs = _one_step(model, MGCAMObjective(siamese_weight=0.01, siamese_loss="official",
                                           region_loss="official"))
    assert "siamese_loss" in logs and "triplet_loss" in logs


def test_official_pair_sampling_forces_39_of_128(tmp_path):
    root = synthetic.write_synthetic_market(tmp_path / "data", num_train_ids=6,
                                            num_test_ids=4, num_cameras=2, images_per_camera=2)
    train = layouts.load_dataset(str(root)).train
    data = pipeline.pair_dataset(train, 128, positive_fraction=0.3, seed=0,
                                 sampling="official", cache=True)
    for _, y in data.take(2):
        pids = y["pid"].numpy().reshape(-1, 2)
        assert pids.shape == (128, 2)
        assert np.all(pids[:39, 0] == pids[:39, 1])      # the forced positives
    model = models.build_model(int(np.max(train.pids)) + 1)
    x, y = next(iter(data.take(1)))
    trainee = task.TrainingTask(model, MGCAMObjective(siamese_weight=0.01))
    trainee.compile(solver.build_optimizer(solver.SolverConfig()))
    logs = trainee.train_step((x, y))
    assert np.isfinite(float(logs["siamese_loss"]))
    with pytest.raises(Exception, match="sampling"):
        pipeline.pair_dataset(train, 4, seed=0, sampling="caffe")
