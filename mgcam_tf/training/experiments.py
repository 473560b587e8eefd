"""Named experiments: the paper's two stages, every row of docs/RESULTS.md, the modern recipe.

As Model Garden's `official/core/exp_factory.py`, an experiment is registered
under a name by a function that returns its `ExperimentConfig`, and a command
line picks it with `--experiment=NAME` and overrides fields with flags.

- paper_stage1 / paper_stage2: the official solver files (`solver.prototxt`
  of each stage): stage 1 "MGCAM" 75,000 iterations at 0.01, x0.1 every
  15,000; stage 2 "MGCAM-Siamese" (pair batches, the Siamese loss, started
  from stage 1) 20,000 at 0.001 (paper Section 4.1; the official stage-2
  solver says 0.0001), x0.1 every 10,000.
- cuhk03_pair1_*: the rows of docs/RESULTS.md's ablation on CUHK03 camera
  pair 1 (the paper's schedule cut to 4,000 iterations of 64: the records say why).
- cuhk03_pair1_recipe_*: the modern training recipe (Luo et al., "Bag of Tricks
  and a Strong Baseline for Deep Person Re-identification", CVPR-W 2019; IBN-Net,
  Pan et al., ECCV 2018) on the same data, and its ablation rows.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Callable, Mapping

from mgcam_tf.errors import ConfigError
from mgcam_tf.training.config import ExperimentConfig

_REGISTRY: dict[str, Callable[[], ExperimentConfig]] = {}


def register_experiment(name: str):
    """Decorator: registers a function returning an ExperimentConfig under `name`."""
    def decorate(make: Callable[[], ExperimentConfig]):
        if name in _REGISTRY:
            raise ConfigError(f"experiment {name!r} is registered twice")
        _REGISTRY[name] = make
        return make
    return decorate


def get_experiment(name: str) -> ExperimentConfig:
    """The configuration of a registered experiment (ConfigError naming the choices)."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown experiment {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]()


def experiment_names() -> list[str]:
    return sorted(_REGISTRY)


# -- a run's config.json ------------------------------------------------------------------
# Settings that the first config.json format ({"model", "settings"}: the flags of
# mgcam-train) recorded but that are not part of an experiment.
_NOT_EXPERIMENT = ("model_dir", "progress", "dry_run", "verbose", "config", "experiment",
                   "flagfile")


def experiment_from_run_file(path: os.PathLike) -> ExperimentConfig:
    """The experiment a run's config.json trained.

    Files of the earlier format (a flat `settings` object of mgcam-train's
    flags) are read too: their flags are the fields of today.
    """
    path = pathlib.Path(path)
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read configuration {path}: {err}") from None
    if not isinstance(stored, dict):
        raise ConfigError(f"{path}: a configuration must be a JSON object")
    if "experiment" in stored:
        return ExperimentConfig.from_dict(stored["experiment"], str(path))
    if "settings" in stored:
        return experiment_from_settings(stored["settings"], str(path))
    # A bare experiment (the sections at the top level), as a user writes one.
    return ExperimentConfig.from_dict(stored, str(path))


def experiment_from_settings(settings: Mapping, source: str) -> ExperimentConfig:
    """The experiment of a first-format `settings` object (mgcam-train's flags)."""
    values = {k: v for k, v in settings.items() if k not in _NOT_EXPERIMENT and v is not None}
    base = get_experiment(f"paper_stage{values.get('stage', '1')}")
    try:
        return base.override(values)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


# -- the paper ---------------------------------------------------------------------------

@register_experiment("paper_stage1")
def paper_stage1() -> ExperimentConfig:
    return ExperimentConfig()


@register_experiment("paper_stage2")
def paper_stage2() -> ExperimentConfig:
    # The paper gives lr 0.001 for stage 2; the official solver file 0.0001.
    return ExperimentConfig().override(
        {"stage": "2", "total_steps": 20000, "base_lr": 0.001, "lr_step": 10000})


# -- docs/RESULTS.md: CUHK03 camera pair 1 --------------------------------------------------
CUHK03_PAIR1 = "../shared/data/cuhk03_pair1"
CUHK03_PAIR1_LABELED = "../shared/data/cuhk03_pair1_labeled"

# The paper's recipe at the table's budget: 4,000 iterations of 64, lr x0.1 at 3,000,
# evaluated on the dev split every 250 steps.
_PAIR1 = {"data_dir": CUHK03_PAIR1, "layout": "market1501", "batch_size": 64,
          "total_steps": 4000, "base_lr": 0.01, "lr_step": 3000, "checkpoint_every": 250,
          "log_every": 50, "image_every": 500, "cache": "memory", "eval_every": 250,
          "evaluate": False}


def _pair1(**fields) -> ExperimentConfig:
    return paper_stage1().override({**_PAIR1, **fields})


_ROWS = {
    "cuhk03_pair1_mgcam_rgbm": {},
    "cuhk03_pair1_mgcam_rgb": {"input_mode": "rgb"},
    "cuhk03_pair1_mgcam_hard_rgbm": {"attention": "hard"},
    "cuhk03_pair1_mscan_rgbm": {"architecture": "mscan"},
    "cuhk03_pair1_mscan_rgb": {"architecture": "mscan", "input_mode": "rgb"},
}
for _name, _fields in _ROWS.items():
    register_experiment(_name)(lambda fields=_fields: _pair1(**fields))


@register_experiment("cuhk03_pair1_mgcam_siamese_rgbm")
def cuhk03_pair1_mgcam_siamese_rgbm() -> ExperimentConfig:
    """Stage 2 on stage 1's run (give --init_from): 1,000 iterations at 0.001."""
    return _pair1(stage="2", total_steps=1000, base_lr=0.001, lr_step=500, log_every=10)


@register_experiment("cuhk03_pair1_mgcam_continued_rgbm")
def cuhk03_pair1_mgcam_continued_rgbm() -> ExperimentConfig:
    """The Siamese row's control: stage 1 continued from its run (--init_from) for the
    same 1,000 iterations at the same rate, random batches, no Siamese loss."""
    return _pair1(total_steps=1000, base_lr=0.001, lr_step=500, log_every=10)


# -- the modern recipe ------------------------------------------------------------------------
# Luo et al.'s recipe on MGCAM, as the steps its ablation adds one at a time
# (docs/RESULTS.md, "The modern recipe"), each on top of the ones before:
RECIPE_STEPS = (
    # Adam at 3.5e-4 with a linear warmup and cosine decay; weight decay 5e-4
    # (coupled, as theirs); no bias lr multiplier (Adam ignores gradient scale).
    ("optimizer", {"optimizer": "adam", "base_lr": 3.5e-4, "weight_decay": 5e-4,
                   "bias_lr_mult": 1.0, "lr_schedule": "cosine", "warmup_steps": 800,
                   "warmup_factor": 0.01, "total_steps": 8000, "eval_every": 500,
                   "checkpoint_every": 500, "image_every": 1000}),
    # P x K batches (16 x 4) and a batch-hard triplet loss (margin 0.3) on h.
    ("batch_hard", {"sampler": "pk", "pk_k": 4, "batch_hard_weight": 1.0,
                    "batch_hard_margin": 0.3}),
    ("label_smoothing", {"label_smoothing": 0.1}),
    # Random erasing (p 0.5, the image only) and pad 10 + random crop.
    ("erasing", {"random_erasing": 0.5, "pad_crop": 10}),
    # BNNeck; no dropout (Luo et al. have none).
    ("bnneck", {"bnneck": True, "dropout": 0.0}),
    # IBN-Net's instance norm in the two shared MSCAN stages.
    ("ibn", {"ibn_stages": ("stage1", "stage2")}),
)


def _recipe_fields(upto: int, steps=RECIPE_STEPS) -> dict:
    """The fields of the first `upto` steps of an ablation, each on top of the ones before."""
    fields = {}
    for _, step in steps[:upto]:
        fields.update(step)
    return fields


RECIPE = _recipe_fields(len(RECIPE_STEPS))

for _number, (_step, _) in enumerate(RECIPE_STEPS, 1):
    register_experiment(f"cuhk03_pair1_recipe_{_number}_{_step}")(
        lambda upto=_number: _pair1(**_recipe_fields(upto)))


@register_experiment("cuhk03_pair1_recipe_mgcam_rgbm")
def cuhk03_pair1_recipe_mgcam_rgbm() -> ExperimentConfig:
    """The whole recipe (the last ablation step)."""
    return _pair1(**RECIPE)


@register_experiment("cuhk03_pair1_recipe_mscan_rgbm")
def cuhk03_pair1_recipe_mscan_rgbm() -> ExperimentConfig:
    return _pair1(**RECIPE, architecture="mscan")


@register_experiment("cuhk03_pair1_recipe_labeled_mgcam_rgbm")
def cuhk03_pair1_recipe_labeled_mgcam_rgbm() -> ExperimentConfig:
    """The recipe trained on the detected and the hand-drawn (labelled) boxes of the
    same training images: the ids merge, twice the crops."""
    return _pair1(**RECIPE, extra_train_dirs=(CUHK03_PAIR1_LABELED,))


# The recipe's first answer (docs/RESULTS.md) put its loss at the start, where Adam with a
# warmup trails the paper's SGD. The hand-made trial kept the paper's SGD and
# added label smoothing and random erasing (46.5 % rank-1 at 4,000 iterations, seed 0):
# the SGD recipe is that trial made of the package's options, at the paper's budget,
# and the paper's Siamese stage 2 on top of it (same options, give --init_from).
SGD_RECIPE = {"label_smoothing": 0.1, "random_erasing": 0.5, "erasing_scope": "image"}


@register_experiment("cuhk03_pair1_recipe_sgd_mgcam_rgbm")
def cuhk03_pair1_recipe_sgd_mgcam_rgbm() -> ExperimentConfig:
    """The paper's recipe (SGD 0.01, x0.1 at 3,000 of 4,000) + label smoothing 0.1 +
    random erasing 0.5 on the image."""
    return _pair1(**SGD_RECIPE)


_RECIPE_ON_SGD = {k: v for _, step in RECIPE_STEPS[1:] for k, v in step.items()}

# Twice the paper's budget: 8,000 iterations, x0.1 at 6,000 (the same three quarters),
# evaluated every 500. At 4,000 the recipe's rank-1 curves still rose when they stopped
# (docs/RESULTS.md), and the issue asks for the budget each row's curve asks for; 8,000
# iterations of 64 are about 82 passes over the 6,264 training crops (Luo et al. train
# 120 epochs).
BUDGET_8K = {"total_steps": 8000, "lr_step": 6000, "eval_every": 500}

# The ablation on the paper's solver at that budget: from the two options to the
# whole recipe, the rest of RECIPE_STEPS 2-6 added one at a time, each on top of the ones
# before (label smoothing and erasing are in the first; pad + crop, which RECIPE_STEPS
# adds with erasing, is a step of its own here). Steps 1-4 are registered as
# cuhk03_pair1_recipe_sgd_<n>_<step>; the last is cuhk03_pair1_recipe_sgd_whole_8k_mgcam_rgbm
# below. They are read against the paper's recipe at the same budget (the control below).
_STEP = dict(RECIPE_STEPS)
SGD_RECIPE_STEPS = (
    ("two_options", SGD_RECIPE),
    ("batch_hard", _STEP["batch_hard"]),
    ("pad_crop", {"pad_crop": _STEP["erasing"]["pad_crop"]}),
    ("bnneck", _STEP["bnneck"]),
    ("ibn", _STEP["ibn"]),
)


for _number, (_step, _) in enumerate(SGD_RECIPE_STEPS[:-1], 1):
    register_experiment(f"cuhk03_pair1_recipe_sgd_{_number}_{_step}")(
        lambda upto=_number: _pair1(**_recipe_fields(upto, SGD_RECIPE_STEPS), **BUDGET_8K))


@register_experiment("cuhk03_pair1_mgcam_8k_rgbm")
def cuhk03_pair1_mgcam_8k_rgbm() -> ExperimentConfig:
    """The paper's recipe at twice its budget: the control of every 8,000-iteration row
    (is a gain the recipe's or the budget's?)."""
    return _pair1(**BUDGET_8K)


@register_experiment("cuhk03_pair1_recipe_sgd_whole_mgcam_rgbm")
def cuhk03_pair1_recipe_sgd_whole_mgcam_rgbm() -> ExperimentConfig:
    """The whole recipe but its optimiser (RECIPE_STEPS 2-6: P x K + batch-hard, label
    smoothing, erasing + pad/crop, BNNeck, IBN) on the paper's solver and budget. Row 1
    alone (Adam + warmup + cosine) cost the paper's recipe 11 rank-1 points (docs/
    RESULTS.md), and rows 2-6 on top of it gained 9 under all queries."""
    return _pair1(**_RECIPE_ON_SGD)


@register_experiment("cuhk03_pair1_recipe_sgd_whole_mscan_rgbm")
def cuhk03_pair1_recipe_sgd_whole_mscan_rgbm() -> ExperimentConfig:
    """The same recipe on the MSCAN-body baseline (RGB-M input, one stream, no attention):
    does MGCAM's lead over MSCAN-body (the paper's Table 2) survive the recipe?"""
    return _pair1(**_RECIPE_ON_SGD, architecture="mscan")


@register_experiment("cuhk03_pair1_recipe_sgd_whole_8k_mgcam_rgbm")
def cuhk03_pair1_recipe_sgd_whole_8k_mgcam_rgbm() -> ExperimentConfig:
    """The same at twice the budget (BUDGET_8K); the last step of the ablation on SGD."""
    return _pair1(**_RECIPE_ON_SGD, **BUDGET_8K)


@register_experiment("cuhk03_pair1_recipe_sgd_whole_siamese_rgbm")
def cuhk03_pair1_recipe_sgd_whole_siamese_rgbm() -> ExperimentConfig:
    """The paper's Siamese stage 2 on that run (give --init_from), with the same options
    (its network has BNNeck and IBN, so the stage must too): 1,000 iterations at 0.001."""
    return _pair1(**_RECIPE_ON_SGD, stage="2", total_steps=1000, base_lr=0.001,
                  lr_step=500, log_every=10)


@register_experiment("cuhk03_pair1_recipe_sgd_whole_8k_siamese_rgbm")
def cuhk03_pair1_recipe_sgd_whole_8k_siamese_rgbm() -> ExperimentConfig:
    """The same Siamese stage on the 8,000-iteration run (give --init_from): its own name,
    so that its runs and records stay apart from the 4,000-iteration ones."""
    return cuhk03_pair1_recipe_sgd_whole_siamese_rgbm()


@register_experiment("cuhk03_pair1_recipe_sgd_whole_8k_labeled_mgcam_rgbm")
def cuhk03_pair1_recipe_sgd_whole_8k_labeled_mgcam_rgbm() -> ExperimentConfig:
    """The 8,000-iteration recipe on the training ids' detected and hand-drawn boxes (ids
    merged by name, twice the crops): the preset's data on the dev split, so that its
    figures say what the preset's box sets give on people it never saw."""
    return cuhk03_pair1_recipe_sgd_whole_8k_mgcam_rgbm().override(
        {"extra_train_dirs": (CUHK03_PAIR1_LABELED,)})


@register_experiment("cuhk03_pair1_recipe_sgd_whole_8k_labeled_siamese_rgbm")
def cuhk03_pair1_recipe_sgd_whole_8k_labeled_siamese_rgbm() -> ExperimentConfig:
    """Its Siamese stage (give --init_from), on the same two box sets."""
    return cuhk03_pair1_recipe_sgd_whole_8k_siamese_rgbm().override(
        {"extra_train_dirs": (CUHK03_PAIR1_LABELED,)})


@register_experiment("cuhk03_pair1_recipe_sgd_siamese_rgbm")
def cuhk03_pair1_recipe_sgd_siamese_rgbm() -> ExperimentConfig:
    """The paper's Siamese stage 2 on the SGD recipe's run (give --init_from), with the
    same two options: 1,000 iterations at 0.001."""
    return _pair1(**SGD_RECIPE, stage="2", total_steps=1000, base_lr=0.001, lr_step=500,
                  log_every=10)


# The shipped preset `mgcam_recipe_cuhk03` is the recipe docs/RESULTS.md chose ("Twice
# the budget"): the whole recipe on SGD at 8,000 iterations and its Siamese stage, trained
# on all 743 people of camera pair 1 (training and dev ids) in their detected and
# hand-drawn boxes. Its figures on cuhk03_pair1 are in-sample, so it is not evaluated
# while it trains.
_PRESET_DATA = {"extra_train_dirs": (CUHK03_PAIR1_LABELED,), "train_on_test_ids": True,
                "eval_every": 0}


@register_experiment("cuhk03_pair1_recipe_preset")
def cuhk03_pair1_recipe_preset() -> ExperimentConfig:
    """The preset's stage 1."""
    return cuhk03_pair1_recipe_sgd_whole_8k_mgcam_rgbm().override(_PRESET_DATA)


@register_experiment("cuhk03_pair1_recipe_preset_siamese")
def cuhk03_pair1_recipe_preset_siamese() -> ExperimentConfig:
    """The preset's Siamese stage (give --init_from the stage-1 run): the files it ships."""
    return cuhk03_pair1_recipe_sgd_whole_8k_siamese_rgbm().override(_PRESET_DATA)


@register_experiment("demo")
def demo() -> ExperimentConfig:
    """The README's first command: the built-in data, 300 steps."""
    return paper_stage1().override(
        {"batch_size": 64, "total_steps": 300, "base_lr": 0.01, "lr_step": 200,
         "checkpoint_every": 50, "log_every": 10, "image_every": 50, "cache": "memory"})
