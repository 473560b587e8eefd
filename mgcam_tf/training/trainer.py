"""Training runs: `train` resumes a model directory, killed at any moment, to its last checkpoint.

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

import os
from typing import Sequence

import keras
import tensorflow as tf

from mgcam_tf.modeling import models
from mgcam_tf.modeling.objective import MGCAMObjective
from mgcam_tf.training import callbacks as run_callbacks
from mgcam_tf.training import distribution, run_dir, task
from mgcam_tf.training import solver as schedule
from mgcam_tf.training.config import ExperimentConfig


def train(model_dir: os.PathLike, dataset: tf.data.Dataset, model_config: dict,
          solver: schedule.SolverConfig, objective: MGCAMObjective, run: run_dir.RunConfig,
          *, strategy: tf.distribute.Strategy | None = None,
          synchronized_bn: bool = False, init_from: os.PathLike | None = None,
          settings: dict | None = None, verbose: int | str = 0,
          callbacks: Sequence[keras.callbacks.Callback] = (),
          mixed_precision: str = "float32", jit_compile: bool = False,
          experiment: dict | None = None) -> task.TrainingTask:
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
    settings: shown in TensorBoard (the run's flat settings).
    experiment: the ExperimentConfig's dict, recorded in config.json (default:
    `settings`, as the first format did).
    Returns the training task; `.network` is the trained model. Raises
    TrainingError if the loss becomes NaN.
    """
    strategy = strategy or tf.distribute.get_strategy()
    chief = distribution.is_chief(strategy)
    # One trainer per model directory (the chief's lock; the other workers of
    # a multi-worker run share the directory by design).
    with run_dir.trainer_lock(model_dir, enabled=chief):
        return _train(model_dir, dataset, model_config, solver, objective, run,
                      strategy=strategy, chief=chief, synchronized_bn=synchronized_bn,
                      init_from=init_from, settings=settings, verbose=verbose,
                      callbacks=callbacks, mixed_precision=mixed_precision,
                      jit_compile=jit_compile, experiment=experiment)


def _train(model_dir, dataset, model_config, solver, objective, run, *, strategy, chief,
           synchronized_bn, init_from, settings, verbose, callbacks, mixed_precision,
           jit_compile, experiment) -> task.TrainingTask:
    run_dir.remove_partial_saves(model_dir)
    with strategy.scope():
        network = models.model_from_config(model_config, synchronized_bn=synchronized_bn,
                                           mixed_precision=mixed_precision)
        model = task.build_task(network, solver, objective, jit_compile=jit_compile,
                                total_steps=run.total_steps)
        model.optimizer.build(model.trainable_variables)
    if chief:
        run_dir.prepare_model_dir(model_dir, model_config, settings or {}, experiment)
    # Checkpoints hold the network (as `model`) and the optimizer, the same
    # object paths as before the task was split from the network.
    state = {} if model.centres is None else {"centres": model.centres}
    manager = run_dir.checkpoint_manager(model_dir, network, model.optimizer,
                                         run.max_checkpoints, training_state=state)
    done = 0
    # A damaged latest checkpoint (a truncated data file) is skipped with a warning.
    restored = run_dir.restore_newest_intact(manager, f"--model_dir {model_dir}")
    if restored:
        done = run_dir.checkpoint_step(restored)
    elif init_from:
        run_dir.initialise_from(network, init_from)
    if done >= run.total_steps:
        return model
    scratch_dir = None
    if not chief:
        # This worker's saves only keep the strategy's collectives in step.
        scratch_dir = os.path.join(model_dir, f".worker{distribution.task_id(strategy)}_checkpoints.tmp")
        manager = run_dir.checkpoint_manager(model_dir, network, model.optimizer, 1,
                                             directory=scratch_dir, training_state=state)
    image_batch = next(iter(dataset.take(1))) if chief else None
    saver = run_callbacks.CheckpointEveryEpoch(manager, chief, done, scratch_dir)
    all_callbacks = [run_callbacks.StopOnNaN(), saver, *callbacks]
    if chief:
        all_callbacks.append(run_callbacks.TensorBoardLogger(os.path.join(model_dir, run_dir.LOG_DIR),
                                               run.log_every, run.image_every, image_batch, settings=settings))
    # An "epoch" is one checkpoint interval. A run resumed from a checkpoint
    # that is not on this run's interval grid (another --checkpoint_every)
    # first trains up to the next multiple of the interval.
    every = run.checkpoint_every
    fits = []
    if done % every:
        fits.append(dict(epochs=1, initial_epoch=0,
                         steps_per_epoch=min(every - done % every, run.total_steps - done)))
    boundary = done + sum(f["steps_per_epoch"] for f in fits)
    if boundary < run.total_steps:
        fits.append(dict(epochs=run.total_steps // every, initial_epoch=boundary // every,
                         steps_per_epoch=every))
    for fit in fits:
        model.fit(dataset, callbacks=all_callbacks, verbose=verbose, shuffle=False, **fit)
    return model


# -- an experiment, end to end ----------------------------------------------------------

def training_data(config: ExperimentConfig, model_dir: os.PathLike):
    """(the data set of `data_dir`, the training split of it and `extra_train_dirs`,
    the number of training ids). The built-in data is written under model_dir."""
    from mgcam_tf.data import layouts, synthetic

    data = config.data
    data_dir = data.data_dir or str(synthetic.write_synthetic_market(
        os.path.join(model_dir, "synthetic_data"), num_train_ids=data.synthetic_ids,
        seed=config.runtime.seed))
    dataset = layouts.load_dataset(data_dir, layout=data.layout,
                                   missing_masks=data.missing_masks)
    def split_of(folder_data, purpose):
        if data.train_on_test_ids:
            folder_data.require_train(purpose)
            return layouts.split_with_test_ids(folder_data)
        return folder_data.require_train(purpose), folder_data.num_train_ids

    train_split, num_ids = split_of(dataset, "mgcam-train")
    if data.extra_train_dirs:
        extra = [split_of(layouts.load_dataset(d, layout="auto",
                                               missing_masks=data.missing_masks),
                          "extra_train_dirs")[0] for d in data.extra_train_dirs]
        train_split, num_ids = layouts.merge_train_splits([train_split, *extra])
    return dataset, train_split, num_ids


def training_batches(config: ExperimentConfig, train_split, replicas: int) -> tf.data.Dataset:
    """The tf.data batches of the stage, sampler and augmentation `config` asks for."""
    from mgcam_tf.data import pipeline
    from mgcam_tf.errors import ConfigError

    data, seed = config.data, config.runtime.seed
    stage2 = config.schedule.stage == "2"
    unit = 2 * replicas if stage2 else replicas
    if data.batch_size % unit:
        raise ConfigError(f"batch_size {data.batch_size} must split evenly over "
                          f"{replicas} replica(s)" + (" in whole pairs" if stage2 else ""))
    common = dict(seed=seed, cache=data.cache, mirror=config.augmentation.mirror,
                  augmentation=config.augmentation)
    if stage2:
        return pipeline.pair_dataset(train_split, data.batch_size // 2,
                                     positive_fraction=data.positive_fraction,
                                     sampling=data.pair_sampling, **common)
    if data.sampler == "pk":
        if data.batch_size % data.pk_k:
            raise ConfigError(f"batch_size {data.batch_size} must be a multiple of "
                              f"pk_k {data.pk_k}")
        return pipeline.pk_dataset(train_split, data.batch_size // data.pk_k, data.pk_k,
                                   **common)
    # A batch split across replicas must never leave one replica empty.
    return pipeline.train_dataset(train_split, data.batch_size, drop_remainder=True, **common)


def train_experiment(config: ExperimentConfig, model_dir: os.PathLike, *,
                     strategy: tf.distribute.Strategy | None = None,
                     callbacks: Sequence[keras.callbacks.Callback] = (),
                     extra_callbacks=None, verbose: int | str = 0,
                     init_from_dir: os.PathLike | None = None):
    """Trains `config` into `model_dir` (resuming it): returns (task, the data set).

    init_from_dir: the folder `config.schedule.init_from` names, where that is a
    name the caller resolved (a preset's: `presets.model_dir_or_preset`).

    extra_callbacks: called with (strategy, data set) once the data is read, returns
    more callbacks (evaluation during training needs the data set's query/gallery).
    """
    from mgcam_tf.training import precision

    strategy = strategy or tf.distribute.get_strategy()
    keras.utils.set_random_seed(config.runtime.seed)
    dataset, train_split, num_ids = training_data(config, model_dir)
    batches = training_batches(config, train_split, strategy.num_replicas_in_sync)
    mixed = precision.resolve_precision(config.runtime.mixed_precision)
    # What ran: the precision `auto` chose.
    recorded = config.override({"mixed_precision": mixed})
    more = list(extra_callbacks(strategy, dataset)) if extra_callbacks else []
    model = train(model_dir, batches, config.model.serialized(num_ids), config.optimizer,
                  config.objective(), config.schedule, strategy=strategy,
                  synchronized_bn=config.runtime.sync_bn,
                  init_from=init_from_dir or config.schedule.init_from or None,
                  settings=recorded.flat(), experiment=recorded.to_dict(),
                  mixed_precision=mixed, callbacks=[*callbacks, *more], verbose=verbose)
    return model, dataset
