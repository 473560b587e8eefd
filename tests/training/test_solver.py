"""The optimiser options and the warmup / cosine / step schedules."""

import math

import keras
import numpy as np
import pytest

from mgcam_tf.errors import ConfigError
from mgcam_tf.training import solver
from mgcam_tf.training.config import SolverConfig


def values(schedule, steps):
    return np.array([float(schedule(s)) for s in steps])


def test_warmup_then_cosine_reaches_zero_at_the_end():
    config = SolverConfig(base_lr=0.1, lr_schedule="cosine", warmup_steps=10,
                          warmup_factor=0.01)
    lr = solver.learning_rate(config, total_steps=110)
    steps = [0, 5, 10, 60, 110]
    expected = [0.1 * 0.01, 0.1 * (0.01 + 0.99 * 0.5), 0.1,
                0.1 * 0.5 * (1 + math.cos(math.pi * 0.5)), 0.0]
    np.testing.assert_allclose(values(lr, steps), expected, atol=1e-7)


def test_warmup_times_steps():
    config = SolverConfig(base_lr=1.0, lr_step=20, gamma=0.1, warmup_steps=10,
                          warmup_factor=0.1)
    lr = solver.learning_rate(config, total_steps=100)
    np.testing.assert_allclose(values(lr, [0, 5, 10, 19, 20, 45]),
                               [0.1, 0.55, 1.0, 1.0, 0.1, 0.01], rtol=1e-6)


def test_the_paper_schedule_is_keras_staircase():
    lr = solver.learning_rate(SolverConfig(), total_steps=75000)
    assert isinstance(lr, keras.optimizers.schedules.ExponentialDecay)
    np.testing.assert_allclose(values(lr, [0, 14999, 15000, 30000]),
                               [0.01, 0.01, 0.001, 0.0001], rtol=1e-6)


def test_the_schedule_serialises():
    config = SolverConfig(lr_schedule="cosine", warmup_steps=5)
    lr = solver.learning_rate(config, total_steps=50)
    again = solver.WarmupSchedule.from_config(lr.get_config())
    np.testing.assert_allclose(values(lr, range(0, 50, 7)), values(again, range(0, 50, 7)))


@pytest.mark.parametrize("name, kind", [("sgd", keras.optimizers.SGD),
                                        ("adam", keras.optimizers.Adam),
                                        ("adamw", keras.optimizers.AdamW)])
def test_optimizers(name, kind):
    config = SolverConfig(optimizer=name)
    assert type(solver.build_optimizer(config, 100)) is kind
    # AdamW decays by itself: the train step adds no coupled term then.
    assert config.coupled_weight_decay == (0.0 if name == "adamw" else config.weight_decay)


def test_a_warmup_longer_than_the_run_is_refused():
    with pytest.raises(ConfigError, match="warmup_steps"):
        solver.learning_rate(SolverConfig(warmup_steps=100), total_steps=100)


@pytest.mark.parametrize("field, value", [("optimizer", "rmsprop"), ("lr_schedule", "poly"),
                                          ("warmup_steps", -1), ("warmup_factor", 0.0)])
def test_bad_settings_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        SolverConfig(**{field: value})
