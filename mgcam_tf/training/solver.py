"""The optimiser and its learning-rate schedule.

The default is the official solver (`solver.prototxt` of the official
release; paper Section 4.1) in Keras terms: SGD with momentum, step learning
rate, L2 weight decay on weights only, biases at twice the learning rate.
The modern ReID recipe (Luo et al., CVPR-W 2019) adds, as options: Adam
(Kingma and Ba, ICLR 2015) or AdamW (Loshchilov and Hutter, ICLR 2019), a
linear warmup from `warmup_factor` x the rate, and cosine decay
(Loshchilov and Hutter, "SGDR", ICLR 2017) instead of steps.

Caffe's weight decay is an L2 term added to the gradient before momentum,
which is not what Keras' built-in (decoupled) `weight_decay` does, so the
train step adds `0.5 * decay * ||w||^2` to the loss for the kernels alone.
Doubling a bias' gradient under SGD with momentum is exactly doubling its
learning rate, so `lr_mult: 2` becomes a gradient multiplier (Adam's update
does not change when a gradient is scaled: there it does nothing, and the
recipe's experiments set it to 1). Adam keeps the coupled L2 term, as Luo et
al. do; AdamW decays the kernels itself (decoupled) and the train step adds
no term.
"""

from __future__ import annotations

import math

import keras

from mgcam_tf.errors import ConfigError
from mgcam_tf.training.config import SolverConfig


def step_learning_rate(config: SolverConfig) -> keras.optimizers.schedules.LearningRateSchedule:
    """Caffe's "step" policy: base_lr * gamma ** floor(iteration / lr_step)."""
    return keras.optimizers.schedules.ExponentialDecay(
        config.base_lr, decay_steps=config.lr_step, decay_rate=config.gamma,
        staircase=True)


@keras.saving.register_keras_serializable(package="mgcam_tf")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A linear warmup times a step or cosine decay.

    lr(t) = base_lr * w(t) * d(t), with w(t) rising linearly from
    warmup_factor at t = 0 to 1 at t = warmup_steps (Goyal et al., 2017, as
    Luo et al.'s WarmupMultiStepLR), and d(t) = gamma ** floor(t / lr_step)
    ("step") or 0.5 * (1 + cos(pi * (t - warmup) / (total - warmup)))
    ("cosine", reaching 0 at total_steps).
    """

    def __init__(self, base_lr: float, schedule: str, lr_step: int, gamma: float,
                 total_steps: int, warmup_steps: int, warmup_factor: float):
        self.base_lr = float(base_lr)
        self.schedule = schedule
        self.lr_step = int(lr_step)
        self.gamma = float(gamma)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)

    def __call__(self, step):
        t = keras.ops.cast(step, "float32")
        warm = float(max(self.warmup_steps, 1))
        rise = self.warmup_factor + (1.0 - self.warmup_factor) * t / warm
        w = keras.ops.where(t < self.warmup_steps, rise, 1.0)
        if self.schedule == "cosine":
            span = float(max(self.total_steps - self.warmup_steps, 1))
            progress = keras.ops.clip((t - self.warmup_steps) / span, 0.0, 1.0)
            d = 0.5 * (1.0 + keras.ops.cos(math.pi * progress))
        else:
            d = keras.ops.power(self.gamma, keras.ops.floor(t / self.lr_step))
        return self.base_lr * w * d

    def get_config(self):
        return {"base_lr": self.base_lr, "schedule": self.schedule, "lr_step": self.lr_step,
                "gamma": self.gamma, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "warmup_factor": self.warmup_factor}


def learning_rate(config: SolverConfig, total_steps: int | None
                  ) -> keras.optimizers.schedules.LearningRateSchedule:
    """The schedule `config` asks for; the paper's (step, no warmup) is Keras' own staircase."""
    if config.lr_schedule == "step" and not config.warmup_steps:
        return step_learning_rate(config)
    config.check_run_length(total_steps)
    return WarmupSchedule(config.base_lr, config.lr_schedule, config.lr_step, config.gamma,
                          total_steps, config.warmup_steps, config.warmup_factor)


def build_optimizer(config: SolverConfig, total_steps: int | None = None
                    ) -> keras.optimizers.Optimizer:
    """The optimiser on its schedule (coupled weight decay is the train step's).

    total_steps: the run's length, which cosine decay and the warmup check
    need (None: the paper's step schedule only).
    """
    if total_steps is None and (config.lr_schedule != "step" or config.warmup_steps):
        raise ConfigError("a cosine or warmup schedule needs the run's total_steps")
    lr = learning_rate(config, total_steps)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=config.momentum)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    optimizer = keras.optimizers.AdamW(learning_rate=lr, weight_decay=config.weight_decay)
    # Kernels only, as the coupled term: biases, norms' scales and shifts are not decayed.
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def is_decayed(variable) -> bool:
    """Kernels (convolution and FC weights) are decayed; biases are not."""
    return variable.path.endswith("kernel")


def is_bias(variable) -> bool:
    return variable.path.endswith("bias")
