"""mgcam-train: train MGCAM (stage 1) or MGCAM-Siamese (stage 2), resumable.

  mgcam-train --flagfile=flags/demo.flags
  mgcam-train --experiment=cuhk03_pair1_recipe_mgcam_rgbm --model_dir=runs/recipe
  mgcam-train --config=runs/recipe/config.json --model_dir=runs/recipe_again --seed=1
  mgcam-train --flagfile=flags/market1501_stage1.flags --data_dir=/data/Market-1501
  mgcam-train --flagfile=flags/market1501_stage2.flags --data_dir=... --init_from=runs/market1501_stage1

A run is one experiment configuration (mgcam_tf/training/config.py): a named
experiment (--experiment, mgcam_tf/training/experiments.py) or a run's
config.json (--config), else the paper's stage --stage; every other flag
overrides the field of its name. Started again with the same command after a
crash (or kill -9), it resumes from the last checkpoint in --model_dir with
its step and optimizer state.
"""

from __future__ import annotations

import dataclasses
import os
import typing

from absl import app, flags
from absl import logging as absl_logging

from mgcam_tf.cli.common import ProgressBar, run_tool

FLAGS = flags.FLAGS

# Every field of the experiment configuration is a flag of the same name; the help
# texts are here, the defaults in the configuration (a flag left out keeps the
# experiment's value). Choices are read from the configuration's own lists.
_HELP = {
    # data
    "data_dir": "Data set folder (any layout of --layout). Empty: the built-in synthetic "
                "data set, written under --model_dir.",
    "extra_train_dirs": "Comma-separated folders whose training splits are trained on too "
                        "(the same images in other boxes share ids; other data sets get "
                        "new ids).",
    "train_on_test_ids": "Train on the query and gallery people too (their ids after the "
                         "training ids), in every data folder: for a model to ship, whose "
                         "figures on these folders are then in-sample.",
    "layout": "Layout of --data_dir (mgcam_tf.data.layouts.LAYOUT_READERS).",
    "missing_masks": "What to do with images that have no mask.",
    "cache": "Cache decoded, resized samples: '' (or none/off: no cache), 'memory', or a "
             "file path prefix (./none for a file named so).",
    "synthetic_ids": "Built-in data only: number of training ids.",
    "batch_size": "Images per batch (stage 2: 2 x pairs).",
    "sampler": "Stage 1 batches: random over the training set, or P ids x K images.",
    "pk_k": "Images per identity with --sampler=pk.",
    "pair_sampling": "Stage 2: paper: exactly ceil(fraction x pairs) positive pairs, the "
                     "others of two different ids; official: the official data layer, anchors "
                     "over images with int(fraction x pairs) + 1 forced positive partners and "
                     "random others (its batch: --batch_size=256, 128 pairs, 39 forced "
                     "positives).",
    "positive_fraction": "Stage 2: least fraction of positive pairs.",
    # augmentation
    "mirror": "Random horizontal mirror (p 0.5).",
    "random_erasing": "Probability of random erasing (Zhong et al., AAAI 2020).",
    "erasing_scope": "What random erasing covers: the image, or image and mask (the "
                     "attention target follows the mask).",
    "pad_crop": "Pad by this many pixels and crop a random 160x64 window (0: off).",
    "color_jitter": "Brightness, contrast and saturation factors in [1 - s, 1 + s] (0: off).",
    "hue_jitter": "Hue shift in [-h, h] of the colour circle (0: off).",
    "grayscale": "Probability of turning an image grey.",
    # model
    "architecture": "mgcam: three streams with contrastive attention; mscan: the "
                    "MSCAN-body baseline (full stream only).",
    "input_mode": "Input channels (paper Table 2).",
    "attention": "soft: learned Phi+; hard: the binary mask is the attention map.",
    "feature_dim": "Size of h, the feature.",
    "dropout": "Dropout after h.",
    "in_place_dropout": "Official prototxt: the region and Siamese losses read h after its "
                        "(in-place) dropout; the paper's h is before it.",
    "bnneck": "BNNeck (Luo et al., CVPR-W 2019): a BatchNorm between h and the classifiers.",
    "ibn_stages": "Comma-separated MSCAN stages (stage1, stage2) with IBN-Net instance norm "
                  "on half their channels.",
    "retrieval_feature": "The test-time feature: h, or its BNNeck-normalised copy (bnneck).",
    # losses
    "siamese_weight": "lambda of L_sia (stage 2 only).",
    "triplet_weight": "alpha of L_trip.",
    "attention_weight": "beta of L_att.",
    "triplet_margin": "m of the region-level triplet loss (eq. 6).",
    "siamese_margin": "m of the Siamese loss (eq. 7).",
    "siamese_loss": "paper: eq. 7 (squared distance, margin on it); official: Caffe's "
                    "ContrastiveLoss of the stage-2 prototxt (plain distance, margin 10, "
                    "1/(2N)).",
    "region_loss": "paper: eq. 6; official: the prototxt's two contrastive losses (pull "
                   "margin 0.1, push margin 100).",
    "label_smoothing": "epsilon of label smoothing on the identity losses.",
    "batch_hard_weight": "Weight of a batch-hard triplet loss on h (Hermans et al. 2017; "
                         "needs --sampler=pk).",
    "batch_hard_margin": "Margin of the batch-hard triplet loss (Euclidean).",
    "centre_weight": "Weight of a centre loss on h (Wen et al., ECCV 2016; Luo et al. "
                     "use 0.0005): the mean squared distance of h to its identity's centre.",
    "centre_alpha": "Rate of Wen et al.'s centre update (c -= alpha * mean of c - h over "
                    "the identity's images of the batch, over 1 + their count), in (0, 1].",
    # optimizer
    "optimizer": "sgd (the official solver), adam or adamw.",
    "base_lr": "Learning rate.",
    "lr_schedule": "step: x --gamma every --lr_step steps; cosine: to 0 at --total_steps.",
    "lr_step": "Multiply the learning rate by --gamma every this many steps.",
    "gamma": "Learning rate step factor.",
    "warmup_steps": "Linear warmup from --warmup_factor x the rate over this many steps.",
    "warmup_factor": "Where the warmup starts, as a fraction of the rate.",
    "momentum": "SGD momentum.",
    "weight_decay": "L2 weight decay on weights (not biases); decoupled with adamw.",
    "bias_lr_mult": "Learning-rate multiplier of the biases (SGD).",
    # schedule
    "stage": "1: MGCAM (no Siamese loss, random batches); 2: MGCAM-Siamese (pair batches, "
             "start from --init_from). Without --experiment/--config it also picks the "
             "paper's solver of that stage.",
    "init_from": "Model directory or preset name to start from: stage 2 from stage 1, or "
                 "fine-tuning a preset (mgcam_siamese_cuhk03) on other identities, whose "
                 "classifiers then start fresh.",
    "total_steps": "Iterations.",
    "checkpoint_every": "Steps between checkpoints.",
    "log_every": "Steps between TensorBoard scalars.",
    "image_every": "Steps between TensorBoard attention images.",
    "max_checkpoints": "Checkpoints kept.",
    # evaluation
    "eval_every": "Evaluate rank-1 and mAP (Euclidean) every this many steps during "
                  "training, into TensorBoard (eval/rank1, eval/mAP) and "
                  "model_dir/eval_history.json; 0: off.",
    "eval_data_dir": "Data set whose query/gallery --eval_every uses (default: --data_dir's).",
    "evaluate": "After training, print rank-1 and mAP on query/gallery.",
    "eval_batch_size": "Batch size of feature extraction.",
    # runtime
    "seed": "Seed of sampling, augmentation, mirroring and initialisation.",
    "mixed_precision": "Keras dtype policy: float32, or float16/bfloat16 computation with "
                       "float32 variables (attention and losses stay float32; float16 gets "
                       "loss scaling). mixed_bfloat16 is about twice as fast on CPUs with "
                       "AVX512_BF16 or AMX; mixed_float16 is for GPUs. auto: mixed_bfloat16 "
                       "where the CPU or GPU computes in bfloat16, float32 elsewhere (the "
                       "run records which).",
    "strategy": "Distribution strategy (auto: multi_worker when TF_CONFIG names several "
                "workers, mirrored with several GPUs).",
    "sync_bn": "Synchronise BatchNorm statistics across replicas.",
}
# Fields without a flag: settings of the official variants that no experiment changes.
_NO_FLAG = ("official_pull_margin", "official_push_margin")


def _define_field_flags() -> None:
    """One flag per configuration field, typed and with the field's choices."""
    from mgcam_tf import conventions
    from mgcam_tf.data import augment, layouts
    from mgcam_tf.modeling import objective
    from mgcam_tf.training import config

    # absl checks these at parsing, naming the flag and the value given.
    choices = {"layout": layouts.layout_names(), "missing_masks": config.MISSING_MASK_POLICIES,
               "sampler": config.SAMPLERS, "pair_sampling": config.PAIR_SAMPLINGS,
               "stage": config.STAGES, "strategy": config.STRATEGIES,
               "architecture": conventions.ARCHITECTURES, "input_mode": conventions.INPUT_MODES,
               "attention": ("soft", "hard"),
               "mixed_precision": (*conventions.PRECISIONS, "auto"),
               "region_loss": objective.REGION_LOSSES, "siamese_loss": objective.SIAMESE_LOSSES,
               "optimizer": config.OPTIMIZERS, "lr_schedule": config.LR_SCHEDULES,
               "erasing_scope": augment.ERASING_SCOPES,
               "retrieval_feature": conventions.RETRIEVAL_FEATURES}
    for section, kind in config.SECTIONS.items():
        hints = typing.get_type_hints(kind)
        for field in dataclasses.fields(kind):
            name = field.name
            if name in _NO_FLAG:
                continue
            helptext = f"{_HELP[name]} [{section}.{name}; default {field.default!r}]"
            hint = hints[name]
            if typing.get_origin(hint) is tuple:
                flags.DEFINE_list(name, None, helptext)
            elif hint is bool:
                flags.DEFINE_bool(name, None, helptext)
            elif hint is int:
                flags.DEFINE_integer(name, None, helptext)
            elif hint is float:
                flags.DEFINE_float(name, None, helptext)
            elif choices.get(name):
                flags.DEFINE_enum(name, None, list(choices[name]), helptext)
            else:
                flags.DEFINE_string(name, None, helptext)


_define_field_flags()
flags.DEFINE_string("experiment", None, "A named experiment (mgcam_tf/training/experiments.py) "
                    "to start from; other flags override its fields.")
flags.DEFINE_string("config", None, "A run's config.json (or an experiment JSON file) to train "
                    "again; other flags override its fields.")
flags.DEFINE_string("model_dir", None, "Checkpoints, TensorBoard logs and config.json.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_bool("dry_run", False, "Check the flags (and a flagfile) and exit without "
                  "reading data or training.")


def experiment_from_flags():
    """The ExperimentConfig the command line asks for (checked)."""
    import re

    from mgcam_tf.errors import ConfigError
    from mgcam_tf.training import config, experiments

    if FLAGS.experiment and FLAGS.config:
        raise ConfigError("give --experiment or --config, not both")
    overrides = {name: getattr(FLAGS, name) for name in config.all_fields()
                 if name not in _NO_FLAG and getattr(FLAGS, name) is not None}
    if FLAGS.config:
        base = experiments.experiment_from_run_file(FLAGS.config)
    else:
        base = experiments.get_experiment(
            FLAGS.experiment or f"paper_stage{overrides.get('stage', '1')}")
    try:
        return base.override(overrides)
    except ConfigError as err:
        # The library names its fields; the user typed flags of the same names.
        raise ConfigError(re.sub(r"^(\w+)", r"--\1", str(err))) from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # Imported here so that --help and flag errors answer without loading TF.
    import tensorflow as tf

    from mgcam_tf.errors import ConfigError
    from mgcam_tf.training import callbacks, distribution, run_dir, trainer

    # TF's own INFO lines (checkpoint sharding and the like) drown the progress bar.
    tf.get_logger().setLevel("WARNING")
    absl_logging.set_verbosity(absl_logging.WARNING)

    experiment = experiment_from_flags()
    if FLAGS.dry_run:
        print("flags are valid:")
        for section, fields in experiment.to_dict().items():
            print(f"  {section}: " + ", ".join(f"{k}={v!r}" for k, v in fields.items()))
        return
    schedule, evaluation = experiment.schedule, experiment.evaluation
    if schedule.stage == "2" and not schedule.init_from and not os.path.isdir(
            os.path.join(FLAGS.model_dir, run_dir.CHECKPOINT_DIR)):
        raise ConfigError("--stage=2 starts from a stage-1 model: give --init_from")
    # MultiWorkerMirroredStrategy must exist before any TF op runs.
    strategy = distribution.make_strategy(experiment.runtime.strategy)
    chief = distribution.is_chief(strategy)

    def evaluation_callbacks(strategy, dataset):
        if not (evaluation.eval_every and chief):
            return []
        from mgcam_tf.data import layouts
        target = dataset if not evaluation.eval_data_dir else layouts.load_dataset(
            evaluation.eval_data_dir, layout="auto",
            missing_masks=experiment.data.missing_masks)
        return [callbacks.PeriodicEvaluation(
            target.query, target.gallery, evaluation.eval_every, FLAGS.model_dir,
            batch_size=evaluation.eval_batch_size,
            log_dir=os.path.join(FLAGS.model_dir, run_dir.LOG_DIR))]

    # One bar over the whole run: fit's own (verbose=1) restarts every
    # checkpoint interval, which is its "epoch" here.
    bar = ProgressBar("training", schedule.total_steps, enabled=FLAGS.progress and chief)
    from mgcam_tf import presets

    init_from = schedule.init_from and presets.model_dir_or_preset(schedule.init_from)
    model, dataset = trainer.train_experiment(
        experiment, FLAGS.model_dir, strategy=strategy, init_from_dir=init_from or None,
        callbacks=[callbacks.TrainingProgress(bar, schedule.total_steps)],
        extra_callbacks=evaluation_callbacks, verbose=0)
    bar.close()
    step = int(model.optimizer.iterations.numpy())
    print(f"trained {step} steps; checkpoints and TensorBoard logs in {FLAGS.model_dir}")
    if evaluation.evaluate and chief:
        from mgcam_tf.cli import reporting
        reporting.print_evaluation(model.network, dataset, evaluation.eval_batch_size,
                                   FLAGS.progress)


def run():
    """Console-script entry point of mgcam-train."""
    flags.mark_flag_as_required("model_dir")
    run_tool(main, __name__)


if __name__ == "__main__":
    run()
