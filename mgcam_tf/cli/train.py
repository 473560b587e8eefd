"""mgcam-train: train MGCAM (stage 1) or MGCAM-Siamese (stage 2), resumable.

  mgcam-train --flagfile=flags/demo.flags
  mgcam-train --flagfile=flags/market1501_stage1.flags --data_dir=/data/Market-1501
  mgcam-train --flagfile=flags/market1501_stage2.flags --data_dir=... --init_from=runs/market1501_stage1

Started again with the same command after a crash (or kill -9), it resumes
from the last checkpoint in --model_dir with its step and optimizer state.
"""

from __future__ import annotations

import os

from absl import app, flags
from absl import logging as absl_logging

from mgcam_tf import conventions
from mgcam_tf.cli.common import ProgressBar, run_tool
from mgcam_tf.data import layouts
from mgcam_tf.training import experiments

FLAGS = flags.FLAGS

# -- data --------------------------------------------------------------------
flags.DEFINE_string("data_dir", "", "Data set folder (any layout of `--layout`). "
                    "Empty: the built-in synthetic data set, written under --model_dir.")
flags.DEFINE_enum("layout", "auto", list(layouts.layout_names()),
                  "Layout of --data_dir (mgcam_tf.data.layouts.LAYOUT_READERS).")
flags.DEFINE_enum("missing_masks", "error", list(layouts.MISSING_MASK_POLICIES),
                  "What to do with images that have no mask.")
flags.DEFINE_string("cache", "", "Cache decoded, resized samples: '' (or none/off: no "
                    "cache), 'memory', or a file path prefix (./none for a file named so).")
flags.DEFINE_integer("seed", 0, "Seed of sampling, mirroring and initialisation.")
flags.DEFINE_integer("synthetic_ids", 120, "Built-in data only: number of training ids.")
# -- model -------------------------------------------------------------------
flags.DEFINE_enum("architecture", "mgcam", list(conventions.ARCHITECTURES),
                  "mgcam: three streams with contrastive attention; mscan: the "
                  "MSCAN-body baseline (full stream only).")
flags.DEFINE_enum("input_mode", "rgbm", list(conventions.INPUT_MODES),
                  "Input channels (paper Table 2).")
flags.DEFINE_enum("attention", "soft", ["soft", "hard"],
                  "soft: learned Phi+; hard: the binary mask is the attention map.")
flags.DEFINE_integer("feature_dim", 128, "Size of h, the feature.")
flags.DEFINE_float("dropout", 0.2, "Dropout after h.")
flags.DEFINE_bool("in_place_dropout", False, "Official prototxt: the region and Siamese "
                  "losses read h after its (in-place) dropout; the paper's h is before it.")
flags.DEFINE_bool("sync_bn", False, "Synchronise BatchNorm statistics across replicas.")
# auto is the default since a full-length run in each precision differed by less than
# the same seed trained twice (docs/RESULTS.md, "bfloat16 against float32").
flags.DEFINE_enum("mixed_precision", "auto", list(conventions.PRECISIONS) + ["auto"],
                  "Keras dtype policy: float32, or float16/bfloat16 computation with float32 "
                  "variables (attention and losses stay float32; float16 gets loss "
                  "scaling). mixed_bfloat16 is about twice as fast on CPUs with AVX512_BF16 "
                  "or AMX; mixed_float16 is for GPUs. auto: mixed_bfloat16 where the CPU "
                  "or GPU computes in bfloat16, float32 elsewhere (the run records which).")
# -- schedule ------------------------------------------------------------------
flags.DEFINE_enum("stage", "1", sorted(experiments.STAGES),
                  "1: MGCAM (no Siamese loss, random batches); 2: MGCAM-Siamese "
                  "(pair batches, start from --init_from).")
flags.DEFINE_string("init_from", "", "Model directory or preset name to start from: stage 2 "
                    "from stage 1, or fine-tuning a preset (mgcam_siamese_cuhk03) on other "
                    "identities, whose classifiers then start fresh.")
flags.DEFINE_enum("sampler", "random", ["random", "pk"],
                  "Stage 1 batches: random over the training set, or P ids x K images.")
flags.DEFINE_integer("pk_k", 4, "Images per identity with --sampler=pk.")
flags.DEFINE_enum("pair_sampling", "paper", ["paper", "official"],
                  "Stage 2: paper: exactly ceil(fraction x pairs) positive pairs, the others "
                  "of two different ids; official: the official data layer, anchors over "
                  "images with int(fraction x pairs) + 1 forced positive partners and random "
                  "others (its batch: --batch_size=256, 128 pairs, 39 forced positives).")
flags.DEFINE_float("positive_fraction", 0.3, "Stage 2: least fraction of positive pairs.")
flags.DEFINE_integer("batch_size", 128, "Images per batch (stage 2: 2 x pairs).")
flags.DEFINE_integer("total_steps", None, "Iterations (default 75000 stage 1, 20000 stage 2).")
flags.DEFINE_float("base_lr", None, "Learning rate (default 0.01 stage 1, 0.001 stage 2).")
flags.DEFINE_integer("lr_step", None, "Multiply the learning rate by --gamma every this "
                     "many steps (default 15000 stage 1, 10000 stage 2).")
flags.DEFINE_float("gamma", 0.1, "Learning rate step factor.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_float("weight_decay", 0.005, "L2 weight decay on weights (not biases).")
flags.DEFINE_float("bias_lr_mult", 2.0, "Learning-rate multiplier of the biases.")
# -- losses ----------------------------------------------------------------------
flags.DEFINE_float("siamese_weight", 0.01, "lambda of L_sia (stage 2 only).")
flags.DEFINE_float("triplet_weight", 0.01, "alpha of L_trip.")
flags.DEFINE_float("attention_weight", 0.1, "beta of L_att.")
flags.DEFINE_float("triplet_margin", 10.0, "m of the region-level triplet loss (eq. 6).")
flags.DEFINE_float("siamese_margin", 10.0, "m of the Siamese loss (eq. 7).")
flags.DEFINE_enum("siamese_loss", "paper", ["paper", "official"],
                  "paper: eq. 7 (squared distance, margin on it); official: Caffe's "
                  "ContrastiveLoss of the stage-2 prototxt (plain distance, margin 10, 1/(2N)).")
flags.DEFINE_enum("region_loss", "paper", ["paper", "official"],
                  "paper: eq. 6; official: the prototxt's two contrastive losses "
                  "(pull margin 0.1, push margin 100).")
# -- run -----------------------------------------------------------------------
flags.DEFINE_string("model_dir", None, "Checkpoints, TensorBoard logs and config.json.")
flags.DEFINE_integer("checkpoint_every", 1000, "Steps between checkpoints.")
flags.DEFINE_integer("log_every", 50, "Steps between TensorBoard scalars.")
flags.DEFINE_integer("image_every", 1000, "Steps between TensorBoard attention images.")
flags.DEFINE_enum("strategy", "auto", ["auto", "default", "mirrored", "multi_worker"],
                  "Distribution strategy (auto: multi_worker when TF_CONFIG names "
                  "several workers, mirrored with several GPUs).")
flags.DEFINE_integer("eval_every", 0, "Evaluate rank-1 and mAP (Euclidean) every this many "
                     "steps during training, into TensorBoard (eval/rank1, eval/mAP) and "
                     "model_dir/eval_history.json; 0: off.")
flags.DEFINE_string("eval_data_dir", "", "Data set whose query/gallery --eval_every uses "
                    "(default: --data_dir's).")
flags.DEFINE_bool("evaluate", True, "After training, print rank-1 and mAP on query/gallery.")
flags.DEFINE_integer("eval_batch_size", 256, "Batch size of feature extraction.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_bool("dry_run", False, "Check the flags (and a flagfile) and exit without "
                  "reading data or training.")

def stage_default(name: str):
    """The flag's value, or the stage's default from the library when the flag is unset."""
    from mgcam_tf.training import experiments

    value = getattr(FLAGS, name)
    return getattr(experiments.stage(FLAGS.stage), name) if value is None else value


def configs_from_flags():
    """The solver, objective and run settings the flags ask for (validated)."""
    from mgcam_tf.training import solver as schedule
    from mgcam_tf.training import run_dir
    from mgcam_tf.errors import ConfigError
    from mgcam_tf.modeling.losses import MGCAMObjective

    import math
    import re

    # The library names its fields; the user typed flags.
    field_flags = {"step_size": "lr_step"}
    try:
        solver = schedule.SolverConfig(
            base_lr=stage_default("base_lr"), momentum=FLAGS.momentum,
            step_size=stage_default("lr_step"), gamma=FLAGS.gamma,
            weight_decay=FLAGS.weight_decay, bias_lr_mult=FLAGS.bias_lr_mult)
        objective = MGCAMObjective(
            siamese_weight=FLAGS.siamese_weight if FLAGS.stage == "2" else 0.0,
            triplet_weight=FLAGS.triplet_weight, attention_weight=FLAGS.attention_weight,
            triplet_margin=FLAGS.triplet_margin, siamese_margin=FLAGS.siamese_margin,
            region_loss=FLAGS.region_loss, siamese_loss=FLAGS.siamese_loss)
    except ConfigError as err:
        raise ConfigError(re.sub(r"^(\w+)", lambda m: "--" + field_flags.get(m.group(1),
                                                                         m.group(1)),
                                 str(err))) from None
    # Stage 1 ignores --siamese_weight, but a bad value is still a mistake.
    if not (math.isfinite(FLAGS.siamese_weight) and FLAGS.siamese_weight >= 0):
        raise ConfigError(f"--siamese_weight must be a finite number >= 0, "
                          f"got {FLAGS.siamese_weight}")
    for name, low in (("pk_k", 1), ("eval_batch_size", 1), ("eval_every", 0),
                      ("batch_size", 1), ("feature_dim", 1), ("synthetic_ids", 1),
                      ("seed", 0)):
        if getattr(FLAGS, name) < low:
            raise ConfigError(f"--{name} must be >= {low}, got {getattr(FLAGS, name)}")
    if not 0.0 <= FLAGS.positive_fraction <= 1.0:  # also refuses nan
        raise ConfigError(f"--positive_fraction must be in [0, 1], got {FLAGS.positive_fraction}")
    if not 0.0 <= FLAGS.dropout < 1.0:
        raise ConfigError(f"--dropout must be in [0, 1), got {FLAGS.dropout}")
    try:
        run = run_dir.RunConfig(total_steps=stage_default("total_steps"),
                                checkpoint_every=FLAGS.checkpoint_every,
                                log_every=FLAGS.log_every, image_every=FLAGS.image_every)
    except ConfigError as err:
        raise ConfigError(re.sub(r"^(\w+) must", r"--\1 must", str(err))) from None
    return solver, objective, run


def model_config_from_flags(num_ids: int):
    from mgcam_tf.modeling import models

    return models.model_config(
        num_ids, FLAGS.architecture, FLAGS.input_mode, FLAGS.attention,
        feature_dim=FLAGS.feature_dim, dropout=FLAGS.dropout,
        in_place_dropout=FLAGS.in_place_dropout)


def batches_from_flags(train_split, replicas: int):
    """The tf.data batches of the stage and sampler the flags ask for."""
    from mgcam_tf.data import pipeline
    from mgcam_tf.errors import ConfigError

    unit = 2 * replicas if FLAGS.stage == "2" else replicas
    if FLAGS.batch_size % unit:
        raise ConfigError(f"--batch_size {FLAGS.batch_size} must split evenly over "
                          f"{replicas} replica(s)"
                          + (" in whole pairs" if FLAGS.stage == "2" else ""))
    cache = {"": None, "memory": True}.get(FLAGS.cache, FLAGS.cache)
    if FLAGS.stage == "2":
        return pipeline.pair_dataset(train_split, FLAGS.batch_size // 2,
                                     positive_fraction=FLAGS.positive_fraction,
                                     seed=FLAGS.seed, cache=cache,
                                     sampling=FLAGS.pair_sampling)
    if FLAGS.sampler == "pk":
        if FLAGS.batch_size % FLAGS.pk_k:
            raise ConfigError(f"--batch_size {FLAGS.batch_size} must be a multiple of "
                              f"--pk_k {FLAGS.pk_k}")
        return pipeline.pk_dataset(train_split, FLAGS.batch_size // FLAGS.pk_k,
                                   FLAGS.pk_k, seed=FLAGS.seed, cache=cache)
    # A batch split across replicas must never leave one replica empty.
    return pipeline.train_dataset(train_split, FLAGS.batch_size, seed=FLAGS.seed,
                                  cache=cache, drop_remainder=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # Imported here so that --help and flag errors answer without loading TF.
    import keras
    import tensorflow as tf

    from mgcam_tf.training import callbacks
    from mgcam_tf.training import distribution
    from mgcam_tf.training import precision
    from mgcam_tf.training import run_dir
    from mgcam_tf.training import trainer
    from mgcam_tf.data import layouts, synthetic
    from mgcam_tf.errors import ConfigError

    # TF's own INFO lines (checkpoint sharding and the like) drown the progress bar.
    tf.get_logger().setLevel("WARNING")
    absl_logging.set_verbosity(absl_logging.WARNING)

    solver, objective, run = configs_from_flags()
    if FLAGS.dry_run:
        print(f"flags are valid: {solver}\n{objective}\n{run}")
        return
    if FLAGS.stage == "2" and not FLAGS.init_from and not os.path.isdir(
            os.path.join(FLAGS.model_dir, run_dir.CHECKPOINT_DIR)):
        raise ConfigError("--stage=2 starts from a stage-1 model: give --init_from")
    # MultiWorkerMirroredStrategy must exist before any TF op runs.
    strategy = distribution.make_strategy(FLAGS.strategy)
    keras.utils.set_random_seed(FLAGS.seed)

    data_dir = FLAGS.data_dir
    if not data_dir:
        data_dir = str(synthetic.write_synthetic_market(
            os.path.join(FLAGS.model_dir, "synthetic_data"),
            num_train_ids=FLAGS.synthetic_ids, seed=FLAGS.seed))
    dataset = layouts.load_dataset(data_dir, layout=FLAGS.layout,
                                   missing_masks=FLAGS.missing_masks)
    batches = batches_from_flags(dataset.require_train("mgcam-train"), strategy.num_replicas_in_sync)
    own_flags = FLAGS.flags_by_module_dict()[FLAGS.find_module_defining_flag("model_dir")]
    settings = {flag.name: flag.value for flag in own_flags}
    settings["data_dir"] = data_dir
    settings["mixed_precision"] = precision.resolve_precision(FLAGS.mixed_precision)
    extra_callbacks = []
    if FLAGS.eval_every and distribution.is_chief(strategy):
        target = dataset if not FLAGS.eval_data_dir else layouts.load_dataset(
            FLAGS.eval_data_dir, layout="auto", missing_masks=FLAGS.missing_masks)
        extra_callbacks.append(callbacks.PeriodicEvaluation(
            target.query, target.gallery, FLAGS.eval_every, FLAGS.model_dir,
            batch_size=FLAGS.eval_batch_size,
            log_dir=os.path.join(FLAGS.model_dir, run_dir.LOG_DIR)))
    # One bar over the whole run: fit's own (verbose=1) restarts every
    # checkpoint interval, which is its "epoch" here.
    bar = ProgressBar("training", run.total_steps,
                      enabled=FLAGS.progress and distribution.is_chief(strategy))
    extra_callbacks.append(callbacks.TrainingProgress(bar, run.total_steps))
    model = trainer.train(
        FLAGS.model_dir, batches, model_config_from_flags(dataset.num_train_ids), solver,
        objective, run, strategy=strategy, synchronized_bn=FLAGS.sync_bn,
        init_from=FLAGS.init_from or None, settings=settings,
        mixed_precision=settings["mixed_precision"], callbacks=extra_callbacks, verbose=0)
    bar.close()
    step = int(model.optimizer.iterations.numpy())
    print(f"trained {step} steps; checkpoints and TensorBoard logs in {FLAGS.model_dir}")
    if FLAGS.evaluate and distribution.is_chief(strategy):
        from mgcam_tf.cli import reporting
        reporting.print_evaluation(model.network, dataset, FLAGS.eval_batch_size, FLAGS.progress)


def run():
    """Console-script entry point of mgcam-train."""
    flags.mark_flag_as_required("model_dir")
    run_tool(main, __name__)


if __name__ == "__main__":
    run()
