"""Training runs: a model directory that can be killed at any moment and resumed.

A model directory holds
  config.json          the model's architecture and the run's settings
  checkpoints/         tf.train checkpoints of model and optimizer (step included)
  logs/                TensorBoard: every loss, the learning rate, the
                       accuracies, and images of Phi+ beside its mask target

tf.train.CheckpointManager writes a checkpoint's files first and then
renames the `checkpoint` state file onto its new content, so a run killed
mid-save resumes from the previous, complete checkpoint.

Several workers (tf.distribute.MultiWorkerMirroredStrategy): every worker
takes part in each save, as the strategy requires, but only the chief's files
count: the others write into a temporary folder of their own and delete it.
Every worker resumes from the chief's latest checkpoint, so `model_dir` must be
one folder that all workers can read (a shared file system or a bucket).
Keras' BackupAndRestore callback is not used: it overwrites one weights file
in place (a worker killed mid-write leaves no good backup), saves no
optimizer state (SGD momentum) and has every worker write the same file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import tempfile
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from mgcam_tf import models, schedule
from mgcam_tf.errors import ConfigError, TrainingError
from mgcam_tf.losses import MGCAMObjective

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"
# Keys of config.json["model"]: what must match for a checkpoint to restore.
MODEL_KEYS = ("architecture", "num_ids", "input_mode", "attention", "feature_dim",
              "dropout")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    num_ids: int
    architecture: str = "mgcam"
    input_mode: str = "rgbm"
    attention: str = "soft"
    feature_dim: int = 128
    dropout: float = 0.2

    def build(self, synchronized_bn: bool = False,
              mixed_precision: str = "float32") -> models.MGCAM:
        """mixed_precision is a run setting, not part of the model: the
        variables are float32 under every policy (see models.PRECISIONS)."""
        return models.build_model(
            self.num_ids, self.architecture, self.input_mode,
            "none" if self.architecture == "mscan" else self.attention,
            feature_dim=self.feature_dim, dropout=self.dropout,
            synchronized_bn=synchronized_bn, mixed_precision=mixed_precision)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """How long to train and how often to save and log."""

    total_steps: int = 75000
    checkpoint_every: int = 1000
    log_every: int = 50
    image_every: int = 1000
    max_checkpoints: int = 3

    def __post_init__(self):
        for field in ("total_steps", "checkpoint_every", "log_every", "image_every",
                      "max_checkpoints"):
            if getattr(self, field) <= 0:
                raise ConfigError(f"{field} must be > 0, got {getattr(self, field)}")
        if self.total_steps % self.checkpoint_every:
            # fit's epochs are checkpoint intervals (see `train`): they must tile the run.
            raise ConfigError(f"total_steps ({self.total_steps}) must be a multiple of "
                              f"checkpoint_every ({self.checkpoint_every})")


def write_json_atomic(path: os.PathLike, payload: dict) -> None:
    """Writes JSON to a temporary name beside `path`, then renames it onto `path`."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_model_config(model_dir: os.PathLike) -> ModelConfig:
    path = pathlib.Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{model_dir} is not a model directory: {path} is missing")
    try:
        stored = json.loads(path.read_text())["model"]
        return ModelConfig(**{k: stored[k] for k in MODEL_KEYS})
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{path} is not a valid mgcam_tf model config: {err}") from None


def prepare_model_dir(model_dir: os.PathLike, model_config: ModelConfig, settings: dict) -> None:
    """Creates the model directory, or checks that it holds the same model."""
    model_dir = pathlib.Path(model_dir)
    if (model_dir / CONFIG_FILE).is_file():
        stored = read_model_config(model_dir)
        if stored != model_config:
            differs = [k for k in MODEL_KEYS
                       if getattr(stored, k) != getattr(model_config, k)]
            raise ConfigError(
                f"--model_dir {model_dir} holds a different model ({', '.join(differs)} "
                f"differ); resume with the same settings or choose a new --model_dir")
    write_json_atomic(model_dir / CONFIG_FILE,
                      {"model": dataclasses.asdict(model_config), "settings": settings})


def checkpoint_manager(model_dir: os.PathLike, model: keras.Model,
                       optimizer: keras.optimizers.Optimizer | None = None,
                       max_to_keep: int = 3,
                       directory: os.PathLike | None = None) -> tf.train.CheckpointManager:
    """Model (and optimizer) checkpoints in `model_dir`/checkpoints, or in `directory`.

    mixed_float16 wraps the optimizer in a LossScaleOptimizer; the checkpoint
    holds the wrapped optimizer alone, so that a run keeps the same variable
    names under every precision and can resume under another one. The
    dynamic loss scale is not saved: after a resume it starts again from its
    initial value and adapts within a few steps.
    """
    objects = {"model": model}
    if optimizer is not None:
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            optimizer = optimizer.inner_optimizer
        objects["optimizer"] = optimizer
    directory = directory or os.path.join(model_dir, CHECKPOINT_DIR)
    return tf.train.CheckpointManager(tf.train.Checkpoint(**objects), os.fspath(directory),
                                      max_to_keep=max_to_keep)


def checkpoint_step(path: str) -> int:
    """The step a checkpoint was saved at, from its name (`.../ckpt-<step>`)."""
    return int(path.rsplit("-", 1)[1])


def load_trained_model(model_dir: os.PathLike) -> models.MGCAM:
    """The model of a model directory with the weights of its latest checkpoint."""
    model_config = read_model_config(model_dir)
    model = model_config.build()
    manager = checkpoint_manager(model_dir, model)
    if manager.latest_checkpoint is None:
        raise ConfigError(f"{model_dir} holds no checkpoint yet: train it first")
    manager.checkpoint.restore(manager.latest_checkpoint).expect_partial()
    return model


def initialise_from(model: keras.Model, model_dir: os.PathLike) -> str:
    """Copies the weights (not the optimizer state) of another run's latest checkpoint.

    Stage 2 starts from stage 1 this way; the models must have the same shape.
    """
    other = read_model_config(model_dir)
    if other.num_ids != model.num_ids:
        raise ConfigError(f"--init_from {model_dir} has {other.num_ids} ids, "
                          f"this data set {model.num_ids}")
    source = checkpoint_manager(model_dir, model)
    if source.latest_checkpoint is None:
        raise ConfigError(f"--init_from {model_dir} holds no checkpoint")
    source.checkpoint.restore(source.latest_checkpoint).expect_partial()
    # The model tracks its optimizer, so the restore also brought back the
    # other run's step count and momentum. A new stage starts its own
    # schedule from step 0 with fresh momentum, as a Caffe solver given
    # --weights does; keeping the count would make stage 2 of the default
    # flags (20,000 steps after 75,000) end before it starts.
    optimizer = getattr(model, "optimizer", None)
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    if optimizer is not None:
        optimizer.iterations.assign(0)
        for slot in getattr(optimizer, "momentums", []) or []:
            slot.assign(tf.zeros_like(slot))
    return source.latest_checkpoint


class CheckpointEveryEpoch(keras.callbacks.Callback):
    """Saves model and optimizer at the end of each (checkpoint-sized) epoch.

    The checkpoint is numbered by the training steps run, (epoch + 1) *
    steps_per_epoch, which is the optimizer's step count except under
    mixed_float16, whose loss scaling skips the update of a step whose
    gradients overflow; resuming counts steps run, so a run ends on time.

    A worker that is not the chief (MultiWorkerMirroredStrategy: all workers
    must take part in a save) passes the manager of a temporary folder of its
    own, `scratch_dir`, which is deleted after each save.
    """

    def __init__(self, manager: tf.train.CheckpointManager, is_chief: bool = True,
                 steps_per_epoch: int | None = None, scratch_dir: str | None = None):
        super().__init__()
        self.manager = manager
        self.is_chief = is_chief
        self.steps_per_epoch = steps_per_epoch
        self.scratch_dir = scratch_dir

    def on_epoch_end(self, epoch, logs=None):
        if self.steps_per_epoch:
            step = (epoch + 1) * self.steps_per_epoch
        else:
            step = int(self.model.optimizer.iterations.numpy())
        if self.is_chief:
            self.manager.save(checkpoint_number=step)
        elif self.scratch_dir is not None:
            self.manager.save(checkpoint_number=step)
            tf.io.gfile.rmtree(self.scratch_dir)


class StopOnNaN(keras.callbacks.Callback):
    """Raises before a NaN can reach a checkpoint; the last good one stays."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            step = int(self.model.optimizer.iterations.numpy())
            raise TrainingError(
                f"the loss became {float(loss)} at step {step}; training stopped and the "
                f"last checkpoint was kept (try a lower --base_lr or check the data)")


class PeriodicEvaluation(keras.callbacks.Callback):
    """Rank-1 and mAP of a query/gallery split pair every `every` training steps.

    Euclidean distances on h_full, official AP, single-query protocol. Each
    point goes to TensorBoard (`eval/rank1`, `eval/mAP`) and to
    `model_dir/eval_history.json` (rewritten atomically; a resumed run keeps
    the points up to its checkpoint). The network runs in inference mode in a
    graph of its own, so the training (weights, BatchNorm statistics, random
    streams) is the same with and without this callback.
    """

    HISTORY_FILE = "eval_history.json"

    def __init__(self, query, gallery, every: int, model_dir: os.PathLike,
                 batch_size: int = 256, log_dir: str | None = None):
        super().__init__()
        if every <= 0:
            raise ConfigError(f"eval_every must be > 0, got {every}")
        self.query, self.gallery, self.every = query, gallery, every
        self.batch_size = batch_size
        self.path = pathlib.Path(model_dir) / self.HISTORY_FILE
        self.writer = tf.summary.create_file_writer(log_dir) if log_dir else None
        self._batches = None
        self._embed = None
        self.points: list[dict] = []

    def _images(self):
        from mgcam_tf.data import pipeline

        if self._batches is None:  # decoded once, kept for every evaluation
            self._batches = {
                name: [b["rgbm"] for b in pipeline.eval_dataset(split, self.batch_size)]
                for name, split in (("query", self.query), ("gallery", self.gallery))}
        return self._batches

    def evaluate(self) -> dict:
        from mgcam_tf.evaluation import evaluator, features

        if self._embed is None:
            self._embed = tf.function(lambda rgbm: self.model.embed(rgbm),
                                      reduce_retracing=True)
        splits = {"query": self.query, "gallery": self.gallery}
        items = {name: features.features_of_split(
                     np.concatenate([self._embed(b).numpy() for b in batches]), splits[name])
                 for name, batches in self._images().items()}
        result = evaluator.ReidEvaluator("euclidean").evaluate(items["query"], items["gallery"])
        return {"rank1": result.result.rank(1), "mAP": result.result.mAP}

    def _record(self, step: int) -> None:
        point = {"step": step, **self.evaluate()}
        self.points = [p for p in self.points if p["step"] < step] + [point]
        write_json_atomic(self.path, {"metric": "euclidean", "ap": "official",
                                      "protocol": "single_query", "points": self.points})
        if self.writer is not None:
            with self.writer.as_default(step=step):
                tf.summary.scalar("eval/rank1", point["rank1"])
                tf.summary.scalar("eval/mAP", point["mAP"])
            self.writer.flush()

    def on_train_begin(self, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if self.path.is_file():
            stored = json.loads(self.path.read_text()).get("points", [])
            self.points = [p for p in stored if p["step"] <= step]
        if step == 0:
            self._record(0)

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step % self.every == 0:
            self._record(step)


class TensorBoardLogger(keras.callbacks.Callback):
    """Scalars every `log_every` steps and attention images every `image_every` steps,
    both at the optimizer's step so that resumed runs continue their curves."""

    def __init__(self, log_dir: str, log_every: int, image_every: int,
                 image_batch: tuple | None = None, max_images: int = 4):
        super().__init__()
        self.writer = tf.summary.create_file_writer(log_dir)
        self.log_every = log_every
        self.image_every = image_every
        self.image_batch = image_batch
        self.max_images = max_images

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step % self.log_every == 0 and logs:
            with self.writer.as_default(step=step):
                for name, value in logs.items():
                    tf.summary.scalar(name, float(value))
        if step % self.image_every == 0:
            self.write_attention_images(step)

    def write_attention_images(self, step: int) -> None:
        if self.image_batch is None or getattr(self.model, "attention_mode", "none") == "none":
            return
        x, y = self.image_batch
        outputs = self.model(x, training=False)
        phi = outputs["attention"][: self.max_images]
        target = tf.cast(y["attention_target"][: self.max_images], phi.dtype)
        # Phi+ on the left, the mask it is trained towards on the right.
        side_by_side = tf.concat([phi, tf.ones_like(phi[:, :, :1]), target], axis=2)
        side_by_side = tf.image.resize(side_by_side, (160, 132), method="nearest")
        with self.writer.as_default(step=step):
            tf.summary.image("attention_vs_mask", side_by_side, max_outputs=self.max_images)

    def on_train_end(self, logs=None):
        self.writer.flush()


def make_strategy(name: str) -> tf.distribute.Strategy:
    """auto: MultiWorkerMirroredStrategy when TF_CONFIG names several workers,
    MirroredStrategy with several GPUs, else the default strategy."""
    if name == "auto":
        tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
        workers = tf_config.get("cluster", {}).get("worker", [])
        if len(workers) > 1:
            name = "multi_worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ConfigError(f"strategy must be auto, default, mirrored or multi_worker, got {name!r}")


def task_id(strategy: tf.distribute.Strategy) -> int:
    """This worker's index in the cluster (0 without one)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return int(getattr(resolver, "task_id", None) or 0) if resolver is not None else 0


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in (None, "chief") or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict())


def compile_model(model: models.MGCAM, solver: schedule.SolverConfig,
                  objective: MGCAMObjective, jit_compile: bool | str = False) -> None:
    """Under mixed_float16 Keras' compile wraps the optimizer in a
    LossScaleOptimizer (the model's train_step already scales its loss)."""
    model.compile(optimizer=schedule.build_optimizer(solver), objective=objective,
                  weight_decay=solver.weight_decay, bias_lr_mult=solver.bias_lr_mult,
                  jit_compile=jit_compile)


def train(model_dir: os.PathLike, dataset: tf.data.Dataset, model_config: ModelConfig,
          solver: schedule.SolverConfig, objective: MGCAMObjective, run: RunConfig,
          *, strategy: tf.distribute.Strategy | None = None,
          synchronized_bn: bool = False, init_from: os.PathLike | None = None,
          settings: dict | None = None, verbose: int | str = 0,
          callbacks: Sequence[keras.callbacks.Callback] = (),
          mixed_precision: str = "float32", jit_compile: bool = False) -> models.MGCAM:
    """Trains `run.total_steps` steps, resuming from `model_dir` if it holds a checkpoint.

    dataset: an infinite tf.data.Dataset of (x, y) batches (see docs/ARCHITECTURE.md),
    of the global batch size under a strategy (each worker builds the same one;
    tf.data splits every batch between the replicas).
    strategy: default, MirroredStrategy (one machine, several GPUs) or
    MultiWorkerMirroredStrategy (see the module docstring: only the chief
    writes config.json, checkpoints and TensorBoard logs).
    mixed_precision: "float32", "mixed_float16" or "mixed_bfloat16" (Keras dtype
    policies; attention and losses stay float32; float16 gets loss scaling).
    jit_compile: compile the train step with XLA.
    Returns the trained model. Raises TrainingError if the loss becomes NaN.
    """
    strategy = strategy or tf.distribute.get_strategy()
    chief = is_chief(strategy)
    if chief:
        prepare_model_dir(model_dir, model_config, settings or {})
    with strategy.scope():
        model = model_config.build(synchronized_bn=synchronized_bn,
                                   mixed_precision=mixed_precision)
        compile_model(model, solver, objective, jit_compile=jit_compile)
        model.optimizer.build(model.trainable_variables)
    manager = checkpoint_manager(model_dir, model, model.optimizer, run.max_checkpoints)
    done = 0
    if manager.latest_checkpoint:
        manager.checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        done = checkpoint_step(manager.latest_checkpoint)
    elif init_from:
        initialise_from(model, init_from)
    if done >= run.total_steps:
        return model
    scratch_dir = None
    if not chief:
        # This worker's saves only keep the strategy's collectives in step.
        scratch_dir = os.path.join(model_dir, f".worker{task_id(strategy)}_checkpoints.tmp")
        manager = checkpoint_manager(model_dir, model, model.optimizer, 1,
                                     directory=scratch_dir)
    # An "epoch" is one checkpoint interval, so a resumed run restarts exactly
    # at a checkpoint boundary with fit's own epoch counter.
    epochs = run.total_steps // run.checkpoint_every
    image_batch = next(iter(dataset.take(1))) if chief else None
    all_callbacks = [StopOnNaN(),
                     CheckpointEveryEpoch(manager, chief, run.checkpoint_every, scratch_dir),
                     *callbacks]
    if chief:
        all_callbacks.append(TensorBoardLogger(os.path.join(model_dir, LOG_DIR),
                                               run.log_every, run.image_every, image_batch))
    model.fit(dataset, epochs=epochs, initial_epoch=done // run.checkpoint_every,
              steps_per_epoch=run.checkpoint_every, callbacks=all_callbacks,
              verbose=verbose, shuffle=False)
    return model
