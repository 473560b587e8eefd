"""One experiment configuration: every setting of a training run, each default written once.

In the spirit of TF Model Garden's `official/core/config_definitions.py`, an
`ExperimentConfig` is made of typed sections:

  data          DataConfig          where the images are, how batches are drawn
  augmentation  data.augment.Augmentation
  model         ModelConfig         the network (`modeling.models.model_config`)
  losses        modeling.objective.MGCAMObjective
  optimizer     SolverConfig        optimiser and learning-rate schedule (`training.solver`)
  schedule      ScheduleConfig      stage, starting point, length, saving and logging
  evaluation    EvaluationConfig    evaluation during and after training
  runtime       RuntimeConfig       seed, precision, distribution

The module imports without TensorFlow, so that a command's --help and flag
checks answer at once. Every field name is unique across the sections and is the name of the
`mgcam-train` flag that overrides it (`--batch_size` sets `data.batch_size`),
so a configuration reads the same as a command line. Named experiments (the
paper's stages, every row of docs/RESULTS.md, the modern recipe) live in
`training/experiments.py`. A run's `config.json` holds the experiment it
trained (`"experiment"`) beside the network it built (`"model"`), and
`mgcam-train --config=RUN/config.json` trains it again.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from typing import Any, Mapping

from mgcam_tf.conventions import ARCHITECTURES, ATTENTION_MODES, INPUT_MODES, PRECISIONS
from mgcam_tf.data.augment import Augmentation
from mgcam_tf.errors import ConfigError
from mgcam_tf.modeling.objective import MGCAMObjective

STAGES = ("1", "2")
SAMPLERS = ("random", "pk")
PAIR_SAMPLINGS = ("paper", "official")
MISSING_MASK_POLICIES = ("error", "full_body", "skip", "generate")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")


def _at_least(section, low: int, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be a whole number >= {low}, got {value!r}")


def _one_of(section, name: str, choices) -> None:
    if getattr(section, name) not in choices:
        raise ConfigError(f"{name} must be one of {tuple(choices)}, "
                          f"got {getattr(section, name)!r}")


OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("step", "cosine")


@dataclasses.dataclass(frozen=True)
class SolverConfig:
    """The optimiser and its schedule (`training.solver` builds them); defaults are
    stage 1 of the official solver (`solver.prototxt`)."""

    base_lr: float = 0.01
    momentum: float = 0.9
    lr_step: int = 15000
    gamma: float = 0.1
    weight_decay: float = 0.005
    bias_lr_mult: float = 2.0
    optimizer: str = "sgd"
    lr_schedule: str = "step"
    warmup_steps: int = 0
    warmup_factor: float = 0.01

    def __post_init__(self):
        # NaN compares false with everything: check finiteness first.
        for field in ("base_lr", "momentum", "gamma", "weight_decay", "bias_lr_mult",
                      "warmup_factor"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{field} must be a finite number, got {value!r}")
        if self.base_lr <= 0:
            raise ConfigError(f"base_lr must be > 0, got {self.base_lr}")
        if self.lr_step <= 0:
            raise ConfigError(f"lr_step must be > 0, got {self.lr_step}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.bias_lr_mult <= 0:
            raise ConfigError(f"bias_lr_mult must be > 0, got {self.bias_lr_mult}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {LR_SCHEDULES}, "
                              f"got {self.lr_schedule!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps!r}")
        if not 0 < self.warmup_factor <= 1:
            raise ConfigError(f"warmup_factor must be in (0, 1], got {self.warmup_factor}")

    def check_run_length(self, total_steps: int) -> None:
        """A warmup must end before the run does (ConfigError naming warmup_steps)."""
        if self.warmup_steps >= total_steps:
            raise ConfigError(f"warmup_steps ({self.warmup_steps}) must be shorter than the "
                              f"run (total_steps {total_steps})")

    @property
    def coupled_weight_decay(self) -> float:
        """The L2 term the train step adds (Caffe's; AdamW decays by itself)."""
        return 0.0 if self.optimizer == "adamw" else self.weight_decay


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The training data and how its batches are drawn.

    data_dir: the data set ("" = the built-in synthetic one); its query and
    gallery are the evaluation's. extra_train_dirs: more folders whose
    training splits are trained on too. A folder holding the same training
    files as another (the same images in other boxes, such as CUHK03's
    detected and labelled boxes) shares its ids; any other folder's ids are
    new ones (`data.layouts.merge_train_splits`). train_on_test_ids: train on
    each folder's query and gallery people too (`data.layouts.split_with_test_ids`):
    for a model to ship, whose figures on these folders are then in-sample.
    """

    data_dir: str = ""
    extra_train_dirs: tuple[str, ...] = ()
    train_on_test_ids: bool = False
    layout: str = "auto"
    missing_masks: str = "error"
    cache: str = ""
    synthetic_ids: int = 120
    batch_size: int = 128
    sampler: str = "random"
    pk_k: int = 4
    pair_sampling: str = "paper"
    positive_fraction: float = 0.3

    def __post_init__(self):
        _at_least(self, 1, "batch_size", "pk_k", "synthetic_ids")
        _one_of(self, "sampler", SAMPLERS)
        _one_of(self, "pair_sampling", PAIR_SAMPLINGS)
        _one_of(self, "missing_masks", MISSING_MASK_POLICIES)
        if not isinstance(self.positive_fraction, (int, float)) or \
                not 0.0 <= self.positive_fraction <= 1.0:  # also refuses nan
            raise ConfigError(f"positive_fraction must be in [0, 1], "
                              f"got {self.positive_fraction}")
        seen = {}
        for folder in (self.data_dir, *self.extra_train_dirs):
            if not folder:
                continue
            key = os.path.realpath(folder)
            if key in seen:
                raise ConfigError(f"extra_train_dirs: {folder} is listed twice "
                                  f"(as {seen[key]} too)")
            seen[key] = folder
        if self.train_on_test_ids and not self.data_dir:
            raise ConfigError("train_on_test_ids needs a data_dir (the built-in data set "
                              "is for trying the package out)")
        if self.extra_train_dirs and not self.data_dir:
            raise ConfigError("extra_train_dirs needs a data_dir (the built-in data set has "
                              "nothing to merge with)")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The network; `models.model_config` checks the values."""

    architecture: str = "mgcam"
    input_mode: str = "rgbm"
    attention: str = "soft"
    feature_dim: int = 128
    dropout: float = 0.2
    in_place_dropout: bool = False
    bnneck: bool = False
    ibn_stages: tuple[str, ...] = ()
    retrieval_feature: str = "h"

    def __post_init__(self):
        _one_of(self, "architecture", ARCHITECTURES)
        _one_of(self, "input_mode", INPUT_MODES)
        _one_of(self, "attention", ATTENTION_MODES)
        _at_least(self, 1, "feature_dim")
        self.serialized(2)  # the model's own checks

    def serialized(self, num_ids: int) -> dict:
        """`models.model_config` of this network for `num_ids` identities."""
        from mgcam_tf.modeling import models

        return models.model_config(num_ids, **dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """How long to train and how often to save and log (`trainer.train`'s run).
    Defaults are stage 1 of the official solver (`solver.prototxt`)."""

    total_steps: int = 75000
    checkpoint_every: int = 1000
    log_every: int = 50
    image_every: int = 1000
    max_checkpoints: int = 3

    def __post_init__(self):
        _at_least(self, 1, "total_steps", "checkpoint_every", "log_every", "image_every",
                  "max_checkpoints")
        if self.total_steps % self.checkpoint_every:
            # fit's epochs are checkpoint intervals (trainer.train): they must tile the run.
            raise ConfigError(f"total_steps ({self.total_steps}) must be a multiple of "
                              f"checkpoint_every ({self.checkpoint_every})")


@dataclasses.dataclass(frozen=True)
class ScheduleConfig(RunConfig):
    """The run (`RunConfig`) and which stage trains from where.

    stage "1": MGCAM (no Siamese loss); "2": MGCAM-Siamese (pair batches,
    started from init_from). init_from: a run folder (or preset) whose
    weights start this run.
    """

    stage: str = "1"
    init_from: str = ""

    def __post_init__(self):
        super().__post_init__()
        _one_of(self, "stage", STAGES)


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """eval_every: evaluate rank-1/mAP every this many steps (0: off) on
    eval_data_dir's query and gallery (default: data_dir's); evaluate: after
    training."""

    eval_every: int = 0
    eval_data_dir: str = ""
    evaluate: bool = True
    eval_batch_size: int = 256

    def __post_init__(self):
        _at_least(self, 0, "eval_every")
        _at_least(self, 1, "eval_batch_size")


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """seed: sampling, augmentation and initialisation. mixed_precision: a
    Keras policy or "auto" (`training.precision`). sync_bn: BatchNorm
    statistics across replicas."""

    seed: int = 0
    # auto since a full-length run in each precision differed by less than the
    # same seed trained twice (docs/RESULTS.md, "bfloat16 against float32").
    mixed_precision: str = "auto"
    strategy: str = "auto"
    sync_bn: bool = False

    def __post_init__(self):
        _at_least(self, 0, "seed")
        _one_of(self, "mixed_precision", (*PRECISIONS, "auto"))
        _one_of(self, "strategy", STRATEGIES)


SECTIONS = {"data": DataConfig, "augmentation": Augmentation, "model": ModelConfig,
            "losses": MGCAMObjective, "optimizer": SolverConfig, "schedule": ScheduleConfig,
            "evaluation": EvaluationConfig, "runtime": RuntimeConfig}


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """A whole training run; see the module docstring."""

    # Factories: a section is made (and checked: the model's checks load Keras)
    # when an experiment is, not when this module is imported.
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    augmentation: Augmentation = dataclasses.field(default_factory=Augmentation)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    # lambda of L_sia is the paper's 0.01; `objective()` leaves it out of stage 1.
    losses: MGCAMObjective = dataclasses.field(
        default_factory=lambda: MGCAMObjective(siamese_weight=0.01))
    optimizer: SolverConfig = dataclasses.field(default_factory=SolverConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)

    def __post_init__(self):
        self.optimizer.check_run_length(self.schedule.total_steps)
        if self.losses.batch_hard_weight and self.schedule.stage == "1" \
                and self.data.sampler != "pk":
            raise ConfigError("batch_hard_weight needs sampler 'pk' (random batches seldom "
                              "hold two images of one id)")

    # -- what training is built from --------------------------------------------------
    def objective(self) -> MGCAMObjective:
        """The losses as trained: stage 1 has no Siamese term (its weight is stage 2's)."""
        if self.schedule.stage == "1":
            return dataclasses.replace(self.losses, siamese_weight=0.0)
        return self.losses

    # -- overrides, dictionaries, files ------------------------------------------------
    def override(self, values: Mapping[str, Any]) -> "ExperimentConfig":
        """A copy with fields replaced by name (`{"batch_size": 64}`); checked again."""
        changes: dict[str, dict] = {}
        for name, value in values.items():
            section = field_section(name)
            changes.setdefault(section, {})[name] = _coerce(SECTIONS[section], name, value)
        return dataclasses.replace(self, **{
            section: dataclasses.replace(getattr(self, section), **fields)
            for section, fields in changes.items()})

    def to_dict(self) -> dict:
        """{section: {field: value}}, JSON-ready (tuples as lists)."""
        return {section: {k: list(v) if isinstance(v, tuple) else v
                          for k, v in dataclasses.asdict(getattr(self, section)).items()}
                for section in SECTIONS}

    def flat(self) -> dict:
        """{field: value} over all sections (field names are unique)."""
        return {k: v for section in self.to_dict().values() for k, v in section.items()}

    @classmethod
    def from_dict(cls, values: Mapping, source: str = "configuration") -> "ExperimentConfig":
        """The configuration of `to_dict`'s form; an unknown or misspelt key is a
        ConfigError naming it (and what it may have meant)."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: an experiment must be a JSON object of sections")
        sections = {}
        for section, fields in values.items():
            if section not in SECTIONS:
                raise ConfigError(f"{source}: unknown section {section!r}{_hint(section, SECTIONS)}")
            if not isinstance(fields, Mapping):
                raise ConfigError(f"{source}: section {section!r} must be an object")
            known = {f.name for f in dataclasses.fields(SECTIONS[section])}
            for name in fields:
                if name not in known:
                    raise ConfigError(f"{source}: unknown key {section}.{name}"
                                      f"{_hint(name, known)}")
            sections[section] = SECTIONS[section](**{
                k: _coerce(SECTIONS[section], k, v) for k, v in fields.items()})
        return cls(**sections)


def field_section(name: str) -> str:
    """The section that holds field `name` (ConfigError if none does)."""
    for section, kind in SECTIONS.items():
        if name in {f.name for f in dataclasses.fields(kind)}:
            return section
    raise ConfigError(f"unknown setting {name!r}{_hint(name, all_fields())}")


def all_fields() -> list[str]:
    return [f.name for kind in SECTIONS.values() for f in dataclasses.fields(kind)]


def _hint(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(kind, name: str, value):
    """JSON and flag values into the field's type: lists into tuples, ints into floats."""
    hints = typing.get_type_hints(kind)
    hint = hints.get(name)
    if hint is not None and typing.get_origin(hint) is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        return tuple(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


# -- config.json ------------------------------------------------------------------------
def run_settings(stored: Mapping) -> dict:
    """{field: value} of a run's config.json contents, either format."""
    if "experiment" in stored:
        return ExperimentConfig.from_dict(stored["experiment"]).flat()
    return dict(stored.get("settings", {}))
