"""The official solver (SPEC §4) in Keras terms: SGD with momentum, step learning
rate, L2 weight decay on weights only, biases at twice the learning rate.

Caffe's weight decay is an L2 term added to the gradient before momentum,
which is not what Keras' built-in (decoupled) `weight_decay` does, so the
train step adds `0.5 * decay * ||w||^2` to the loss for the kernels alone.
Doubling a bias' gradient under SGD with momentum is exactly doubling its
learning rate, so `lr_mult: 2` becomes a gradient multiplier.
"""

from __future__ import annotations

import dataclasses
import math

import keras

from mgcam_tf.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class SolverConfig:
    """Defaults are stage 1 of the official solver."""

    base_lr: float = 0.01
    momentum: float = 0.9
    step_size: int = 15000
    gamma: float = 0.1
    weight_decay: float = 0.005
    bias_lr_mult: float = 2.0

    def __post_init__(self):
        # NaN compares false with everything: check finiteness first.
        for field in ("base_lr", "momentum", "gamma", "weight_decay", "bias_lr_mult"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{field} must be a finite number, got {value!r}")
        if self.base_lr <= 0:
            raise ConfigError(f"base_lr must be > 0, got {self.base_lr}")
        if self.step_size <= 0:
            raise ConfigError(f"step_size must be > 0, got {self.step_size}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.bias_lr_mult <= 0:
            raise ConfigError(f"bias_lr_mult must be > 0, got {self.bias_lr_mult}")


def step_learning_rate(config: SolverConfig) -> keras.optimizers.schedules.LearningRateSchedule:
    """Caffe's "step" policy: base_lr * gamma ** floor(iteration / step_size)."""
    return keras.optimizers.schedules.ExponentialDecay(
        config.base_lr, decay_steps=config.step_size, decay_rate=config.gamma,
        staircase=True)


def build_optimizer(config: SolverConfig) -> keras.optimizers.Optimizer:
    """SGD with momentum on the step schedule (weight decay is the train step's)."""
    return keras.optimizers.SGD(learning_rate=step_learning_rate(config),
                                momentum=config.momentum)


def is_decayed(variable) -> bool:
    """Kernels (convolution and FC weights) are decayed; biases are not."""
    return variable.path.endswith("kernel")


def is_bias(variable) -> bool:
    return variable.path.endswith("bias")
