"""Model directories: what a run writes, how it is checked, restored and resumed.

A model directory holds
  config.json          the model's configuration (its get_config()) and the run's settings
  checkpoints/         tf.train checkpoints of model and optimizer (step included)
  logs/                TensorBoard event files
  eval_history.json    rank-1/mAP during training (when evaluated)

tf.train.CheckpointManager writes a checkpoint's files first and then
renames the `checkpoint` state file onto its new content, so a run killed
mid-save resumes from the previous, complete checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import shutil
import keras
import tensorflow as tf
from keras import ops
from mgcam_tf.modeling import models
from mgcam_tf.errors import ConfigError, OutputError
from mgcam_tf import atomic_files, process_lock
# How long a run trains and how often it saves: part of the experiment configuration.
from mgcam_tf.training.config import RunConfig  # noqa: F401

CONFIG_FILE = "config.json"


CHECKPOINT_DIR = "checkpoints"


LOG_DIR = "logs"


def read_model_config(model_dir: os.PathLike) -> dict:
    """The serialised model configuration of a model directory (`models.serialize`).

    config.json files written before the configuration became the model's
    get_config() (flat `architecture`, `num_ids`, ... keys) are read too.
    """
    path = pathlib.Path(model_dir) / CONFIG_FILE
    if pathlib.Path(model_dir).is_file():
        raise ConfigError(f"--model_dir {model_dir} is a file, not a model directory")
    if not path.is_file():
        raise ConfigError(f"{model_dir} is not a model directory: {path} is missing")
    try:
        stored = json.loads(path.read_text())["model"]
        if "class_name" not in stored:  # the first format
            return models.model_config(
                stored["num_ids"], stored["architecture"], stored["input_mode"],
                stored["attention"], stored["feature_dim"], stored["dropout"])
        return {"class_name": stored["class_name"], "config": dict(stored["config"])}
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{path} is not a valid mgcam_tf model config: {err}") from None


def prepare_model_dir(model_dir: os.PathLike, model_config: dict, settings: dict,
                      experiment: dict | None = None) -> None:
    """Writes config.json, or checks that the directory holds the same model.

    config.json holds `{"model": model_config, "experiment": experiment}`
    (`training.config.ExperimentConfig.to_dict`); without an experiment,
    `{"model", "settings"}` as the first format did.

    Call it once the model is built from `model_config`, so that a start that
    fails before leaves no config.json behind to refuse the corrected command.
    """
    model_dir = pathlib.Path(model_dir)
    if model_dir.exists() and not model_dir.is_dir():
        raise ConfigError(f"--model_dir {model_dir} is a file, not a folder")
    if (model_dir / CONFIG_FILE).is_file():
        stored = read_model_config(model_dir)
        if stored != model_config:
            differs = sorted(k for k in set(stored["config"]) | set(model_config["config"])
                             if stored["config"].get(k) != model_config["config"].get(k))
            if stored["class_name"] != model_config["class_name"]:
                differs.insert(0, "architecture")
            raise ConfigError(
                f"--model_dir {model_dir} holds a different model ({', '.join(differs)} "
                f"differ); resume with the same settings or choose a new --model_dir")
    record = ({"model": model_config, "experiment": experiment} if experiment is not None
              else {"model": model_config, "settings": settings})
    atomic_files.write_json(model_dir / CONFIG_FILE, record, make_parents=True)


def checkpoint_manager(model_dir: os.PathLike, model: keras.Model,
                       optimizer: keras.optimizers.Optimizer | None = None,
                       max_to_keep: int = 3,
                       directory: os.PathLike | None = None,
                       training_state: dict | None = None) -> tf.train.CheckpointManager:
    """Model (and optimizer) checkpoints in `model_dir`/checkpoints, or in `directory`.

    training_state: more variables a resume needs that are neither the network's nor
    the optimizer's (the centre loss's centres), by checkpoint name.

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
    objects.update(training_state or {})
    directory = directory or os.path.join(model_dir, CHECKPOINT_DIR)
    return tf.train.CheckpointManager(tf.train.Checkpoint(**objects), os.fspath(directory),
                                      max_to_keep=max_to_keep)


def checkpoint_step(path: str) -> int:
    """The step a checkpoint was saved at, from its name (`.../ckpt-<step>`)."""
    return int(path.rsplit("-", 1)[1])


def load_trained_model(model_dir: os.PathLike, *, allow_older: bool = True,
                       retrieval_feature: str | None = None) -> models.MGCAM:
    """The model of a model directory with the weights of its latest checkpoint.

    Args:
      allow_older: when the latest checkpoint cannot be read (a truncated
        data file), restore the newest intact one with a warning naming the
        skipped one (evaluation); False: refuse (export, which must not
        export older weights silently).
      retrieval_feature: "h" or "bnneck" in place of the run's own test-time
        feature (a BNNeck model has both; which retrieves better is measured,
        not assumed); None: the run's.
    """
    config = read_model_config(model_dir)
    if retrieval_feature:
        config = {**config, "config": {**config["config"],
                                       "retrieval_feature": retrieval_feature}}
    model = models.model_from_config(config)
    manager = checkpoint_manager(model_dir, model)
    if manager.latest_checkpoint is None:
        raise ConfigError(f"{model_dir} holds no checkpoint yet: train it first")
    restore_newest_intact(manager, str(model_dir), allow_older=allow_older)
    return model


class UnreadableCheckpoint(ConfigError):
    """A checkpoint whose files cannot be read whole (truncated, corrupt)."""


# What reading a damaged checkpoint raises: TF's own errors, and the Python
# reader's IndexError ("Read less bytes than requested") for a truncated file.
_DAMAGED_CHECKPOINT_ERRORS = (tf.errors.OpError, IndexError, ValueError, OSError, EOFError)


def _damaged_file(path: str) -> str:
    """The file of checkpoint `path` to name in a message: its data file (the one a
    truncation hits) when there is exactly one, else the checkpoint's prefix."""
    data = sorted(pathlib.Path(path).parent.glob(pathlib.Path(path).name + ".data-*"))
    return str(data[0]) if len(data) == 1 else path


def restore_newest_intact(manager: tf.train.CheckpointManager, what: str, *,
                          allow_older: bool = True) -> str | None:
    """Restores the newest of `manager`'s checkpoints that reads whole; returns its path
    (None when there is none).

    A damaged checkpoint is skipped with a warning naming its file on the
    `mgcam_tf` logger when `allow_older`, else refused.

    Raises:
      UnreadableCheckpoint: the latest is damaged and not `allow_older`, or
        every checkpoint is; one line naming the file.
      ConfigError: as `restore_complete`.
    """
    candidates = list(reversed(manager.checkpoints))
    if manager.latest_checkpoint and manager.latest_checkpoint not in candidates:
        candidates.insert(0, manager.latest_checkpoint)
    skipped = []
    for path in candidates:
        try:
            restore_complete(manager.checkpoint, path, what)
        except _DAMAGED_CHECKPOINT_ERRORS as err:
            reason = " ".join(str(err).split())[:200] or type(err).__name__
            problem = f"checkpoint {_damaged_file(path)} cannot be read ({reason})"
            if not allow_older:
                raise UnreadableCheckpoint(
                    f"{what}: {problem}; refusing to use an older checkpoint: delete "
                    "the damaged one or restore it from a copy") from None
            logging.getLogger("mgcam_tf").warning("%s: %s; skipping it", what, problem)
            skipped.append(problem)
            continue
        if skipped:
            logging.getLogger("mgcam_tf").warning("%s: restored the newest intact checkpoint %s",
                                                  what, path)
        return path
    if skipped:
        raise UnreadableCheckpoint(f"{what}: no checkpoint can be read ({skipped[0]})")
    return None


def model_fingerprint(model_dir: os.PathLike) -> str:
    """Identifies the weights `load_trained_model` restores: "checkpoint:" and the
    sha1 of the model config and the latest checkpoint's index file."""
    import hashlib

    config = read_model_config(model_dir)
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, CHECKPOINT_DIR))
    if latest is None:
        raise ConfigError(f"{model_dir} holds no checkpoint yet: train it first")
    digest = hashlib.sha1(json.dumps(config, sort_keys=True).encode())
    digest.update(pathlib.Path(latest + ".index").read_bytes())
    return "checkpoint:" + digest.hexdigest()


def restore_complete(checkpoint: tf.train.Checkpoint, path: str, what: str) -> None:
    """Restores `path` into `checkpoint`'s objects; every variable of them must be in it.

    Values in the file that the objects do not use (an optimizer's slots, the
    old layout's model-tracked optimizer) are allowed; a variable of the
    model that the file lacks is a ConfigError naming it, never a silent
    random start.
    """
    status = checkpoint.restore(path).expect_partial()
    try:
        status.assert_existing_objects_matched()
    except AssertionError as err:
        missing = [line.strip() for line in str(err).splitlines() if "Unresolved object" in line
                   or "variable" in line.lower()][:3]
        raise ConfigError(f"{what}: checkpoint {path} does not hold every weight of this "
                          f"model ({'; '.join(missing) or str(err).splitlines()[0]})") from None


def initialise_from(model: keras.Model, model_dir: os.PathLike) -> str:
    """Copies the weights (not the optimizer state) of another run's latest checkpoint.

    Stage 2 starts from stage 1 this way; the models must be the same network.
    The optimizer is not part of the restored objects, so the new stage starts
    its own schedule from step 0 with fresh momentum, as a Caffe solver given
    --weights does (keeping the count would make stage 2 of the default flags,
    20,000 steps after 75,000, end before it starts).

    Fine-tuning on other identities: when the two models differ only in
    `num_ids`, everything but the identity classifiers is restored and the
    classifiers keep their fresh initialisation (as Caffe's --weights does
    for a renamed layer, and torchreid's load_pretrained_weights for the
    size-mismatched ones); a warning on the `mgcam_tf` logger names them.
    Another architecture or input mode is still refused.
    """
    other, mine = read_model_config(model_dir), models.serialize(model)
    if other != mine and not _differ_in_identities_only(other, mine):
        raise ConfigError(f"--init_from {model_dir} holds another model ({other['class_name']} "
                          f"{other['config']}) than this run's ({mine['class_name']} "
                          f"{mine['config']})")
    source = checkpoint_manager(model_dir, model)
    if source.latest_checkpoint is None:
        raise ConfigError(f"--init_from {model_dir} holds no checkpoint")
    if other == mine:
        restore_complete(source.checkpoint, source.latest_checkpoint, f"--init_from {model_dir}")
        return source.latest_checkpoint
    fresh = restore_all_but_classifiers(model, other, source.latest_checkpoint,
                                        f"--init_from {model_dir}")
    logging.getLogger("mgcam_tf").warning(
        "--init_from %s: every weight restored but the identity classifiers (%s), which start "
        "fresh: the checkpoint classifies %d identities, this run's data %d",
        model_dir, ", ".join(dict.fromkeys(name.rsplit("/", 1)[0] for name in fresh)),
        other["config"]["num_ids"], mine["config"]["num_ids"])
    return source.latest_checkpoint


def _differ_in_identities_only(other: dict, mine: dict) -> bool:
    def rest(config: dict) -> dict:
        return {k: v for k, v in config["config"].items() if k != "num_ids"}

    return other["class_name"] == mine["class_name"] and rest(other) == rest(mine)


def _path_in_model(variable) -> str:
    # A variable's path starts with its model's name ("mgcam/", "mgcam_1/"...),
    # which differs between two models built in one process.
    return variable.path.split("/", 1)[1]


def restore_all_but_classifiers(model: keras.Model, source_config: dict, path: str,
                                what: str) -> list[str]:
    """Restores checkpoint `path` of the model `source_config` (the same network with
    another `num_ids`) into `model`, all but the identity classifiers.

    The checkpoint is read whole into a model of its own configuration (so
    that a missing weight is the same ConfigError as `restore_complete`),
    then every weight of the same name and shape is copied. Returns the
    names of the weights left as they were: the classifiers' kernels and
    biases, whose shape [feature_dim, num_ids] differs.
    """
    source = models.model_from_config(source_config)
    restore_complete(tf.train.Checkpoint(model=source), path, what)
    stored = {_path_in_model(v): v for v in source.weights}
    fresh = []
    for variable in model.weights:
        name = _path_in_model(variable)
        if name not in stored:
            raise ConfigError(f"{what}: checkpoint {path} has no weight {name}")
        if tuple(stored[name].shape) == tuple(variable.shape):
            variable.assign(ops.cast(stored[name].value, variable.dtype))
        elif name.rsplit("/", 2)[-2] == "classifier":
            fresh.append(name)
        else:
            raise ConfigError(f"{what}: weight {name} has shape {tuple(stored[name].shape)} "
                              f"there, {tuple(variable.shape)} here")
    return fresh


LOCK_FILE = ".trainer.lock"


@contextlib.contextmanager
def trainer_lock(model_dir: os.PathLike, enabled: bool = True):
    """Holds `model_dir/.trainer.lock` (this host and pid) while a trainer runs.

    A second trainer of the same directory gets a ConfigError naming the
    first one's pid. A lock left by a process that is no longer running (a
    kill -9), or one whose owner cannot be read once a few seconds old, is
    taken over with a warning on the `mgcam_tf` logger (`mgcam_tf.process_lock`).
    """
    if not enabled:
        yield
        return
    model_dir = pathlib.Path(model_dir)
    if model_dir.exists() and not model_dir.is_dir():
        raise ConfigError(f"--model_dir {model_dir} is a file, not a folder")
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"--model_dir {model_dir}: cannot create it ({err.strerror})") from None
    with process_lock.held(model_dir / LOCK_FILE, f"--model_dir {model_dir}", "trainer",
                           "choose another --model_dir"):
        yield


def remove_partial_saves(model_dir: os.PathLike) -> None:
    """Removes what a save killed mid-way leaves (`checkpoints/ckpt-N_temp*`); call
    it holding the lock, when no save can be running."""
    folder = pathlib.Path(model_dir) / CHECKPOINT_DIR
    if folder.is_dir():
        for leftover in folder.glob("*_temp*"):
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() \
                else leftover.unlink(missing_ok=True)
