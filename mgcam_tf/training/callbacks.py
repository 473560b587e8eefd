"""The Keras callbacks of a training run: checkpoints, the NaN guard, evaluation, TensorBoard.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import keras
import numpy as np
import tensorflow as tf
from mgcam_tf.errors import ConfigError, TrainingError
from mgcam_tf import atomic_files

class CheckpointEveryEpoch(keras.callbacks.Callback):
    """Saves model and optimizer at the end of each (checkpoint-sized) epoch.

    The checkpoint is numbered by the training steps run, `start_step` plus
    the batches of this fit, which is the optimizer's step count except under
    mixed_float16, whose loss scaling skips the update of a step whose
    gradients overflow; resuming counts steps run, so a run ends on time.
    Weights that are not finite are never saved: the last good checkpoint
    stays, and training stops with a TrainingError.

    A worker that is not the chief (MultiWorkerMirroredStrategy: all workers
    must take part in a save) passes the manager of a temporary folder of its
    own, `scratch_dir`, which is deleted after each save.
    """

    def __init__(self, manager: tf.train.CheckpointManager, is_chief: bool = True,
                 start_step: int = 0, scratch_dir: str | None = None):
        super().__init__()
        self.manager = manager
        self.is_chief = is_chief
        self.step = start_step
        self.scratch_dir = scratch_dir

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1

    def on_epoch_end(self, epoch, logs=None):
        network = getattr(self.model, "network", self.model)
        bad = [v.path for v in network.weights if not np.all(np.isfinite(v.numpy()))]
        if bad:
            raise TrainingError(
                f"{len(bad)} of {len(network.weights)} weights are not finite at step "
                f"{self.step} (first: {bad[0]}); nothing was saved and the last checkpoint "
                "was kept (check --base_lr and the data)")
        self.manager.save(checkpoint_number=self.step)
        if not self.is_chief and self.scratch_dir is not None:
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
    """Rank-1, mAP and mINP of a query/gallery split pair every `every` training steps.

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
            self._embed = tf.function(lambda rgbm: self.model.network.embed(rgbm),
                                      reduce_retracing=True)
        splits = {"query": self.query, "gallery": self.gallery}
        items = {name: features.features_of_split(
                     np.concatenate([self._embed(b).numpy() for b in batches]), splits[name])
                 for name, batches in self._images().items()}
        result = evaluator.ReidEvaluator("euclidean").evaluate(items["query"], items["gallery"])
        return {"rank1": result.result.rank(1), "mAP": result.result.mAP,
                "mINP": result.result.mINP}

    def _record(self, step: int) -> None:
        point = {"step": step, **self.evaluate()}
        self.points = [p for p in self.points if p["step"] < step] + [point]
        atomic_files.write_json(self.path, {"metric": "euclidean", "ap": "official",
                                      "protocol": "single_query", "points": self.points},
                                make_parents=True)
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


# Keras log name -> TensorBoard tag: grouped, so that TensorBoard draws the
# loss terms together and the accuracies together.
TAGS = {"loss": "loss/total", "identity_loss": "loss/identity", "triplet_loss": "loss/triplet",
        "attention_loss": "loss/attention", "siamese_loss": "loss/siamese",
        "batch_hard_loss": "loss/batch_hard", "centre_loss": "loss/centre",
        "accuracy_full": "accuracy/full", "accuracy_body": "accuracy/body",
        "accuracy_bgd": "accuracy/bgd", "learning_rate": "lr"}
# Logs that are not running means (Keras passes them through as they are).
_NOT_MEANS = {"learning_rate"}
ATTENTION_IMAGE_TAG = "attention/crop|mask|phi_plus"


def _tag(name: str) -> str:
    return TAGS.get(name, name if "/" in name else f"other/{name}")


def _hparam_value(value):
    # The hparams plugin takes bool, int, float and str only.
    if isinstance(value, (bool, int, float, str)):
        return value
    return "" if value is None else str(value)


class TensorBoardLogger(keras.callbacks.Callback):
    """Scalars every `log_every` steps and attention images every `image_every` steps,
    both at the optimizer's step so that resumed runs continue their curves.

    Each scalar is that step's own value. Keras hands callbacks the running
    mean of every metric since the start of fit's "epoch", which is a whole
    checkpoint interval here, so its curves would flatten towards the
    interval's mean. With m_n the mean after the n-th step of an epoch, the
    n-th step's value is n*m_n - (n-1)*m_(n-1) (the batches are of one size,
    so the accuracies are means over steps too). The learning rate is logged
    as it is.

    settings: the run's flags or settings, written once as a text table
    (`run/settings`) and as TensorBoard hparams, so runs can be compared in
    the HParams tab.
    """

    def __init__(self, log_dir: str, log_every: int, image_every: int,
                 image_batch: tuple | None = None, max_images: int = 4,
                 settings: dict | None = None):
        super().__init__()
        self.writer = tf.summary.create_file_writer(log_dir)
        self.log_every = log_every
        self.image_every = image_every
        self.image_batch = image_batch
        self.max_images = max_images
        self.settings = dict(settings or {})
        self._settings_written = False
        self._previous_means: dict[str, float] = {}

    def on_train_begin(self, logs=None):
        # Once per run: a resumed run may call fit twice (see trainer.train).
        if not self.settings or self._settings_written:
            return
        self._settings_written = True
        from tensorboard.plugins.hparams import api as hparams_api

        step = int(self.model.optimizer.iterations.numpy())
        rows = "\n".join(f"| {name} | `{value!r}` |" for name, value in sorted(self.settings.items()))
        with self.writer.as_default(step=step):
            tf.summary.text("run/settings", "| setting | value |\n|---|---|\n" + rows)
            hparams_api.hparams({name: _hparam_value(v) for name, v in self.settings.items()})
        self.writer.flush()

    def on_epoch_begin(self, epoch, logs=None):
        # Keras resets its metrics here: the means start again.
        self._previous_means = {}

    def step_values(self, batch: int, logs: dict) -> dict[str, float]:
        """Each metric's value at the step that ended the epoch's batch `batch` (0-based)."""
        n = batch + 1
        values = {}
        for name, mean in logs.items():
            mean = float(np.asarray(mean).reshape(-1)[0])
            previous = self._previous_means.get(name)
            if name in _NOT_MEANS or previous is None or n == 1:
                values[name] = mean
            else:
                values[name] = n * mean - (n - 1) * previous
            self._previous_means[name] = mean
        return values

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        # Every step updates the stored means, logged or not.
        values = self.step_values(batch, logs) if logs else {}
        if step % self.log_every == 0 and values:
            with self.writer.as_default(step=step):
                for name, value in values.items():
                    tf.summary.scalar(_tag(name), value)
        if step % self.image_every == 0:
            self.write_attention_images(step)

    def write_attention_images(self, step: int) -> None:
        from mgcam_tf.conventions import IMAGE_SCALE, IMAGE_SIZE, MASK_MEAN, MASK_SCALE, RGB_MEAN

        if self.image_batch is None or self.model.network.attention_mode == "none":
            return
        x, _ = self.image_batch
        rgbm = x["rgbm"][: self.max_images]
        phi = tf.cast(self.model(x, training=False)["attention"][: self.max_images], tf.float32)
        rgbm = tf.cast(rgbm, tf.float32)
        # The crop and mask the network saw, undoing preprocess()'s (x - mean) / scale.
        crop = (rgbm[..., :3] * IMAGE_SCALE + tf.constant(RGB_MEAN)) / 255.0
        mask = (rgbm[..., 3:] * MASK_SCALE + MASK_MEAN) / 255.0
        phi = tf.image.resize(phi, IMAGE_SIZE, method="nearest")
        gap = tf.ones_like(crop[:, :, :2])  # a white gap between the panels
        panels = [crop, gap, tf.tile(mask, [1, 1, 1, 3]), gap, tf.tile(phi, [1, 1, 1, 3])]
        side_by_side = tf.clip_by_value(tf.concat(panels, axis=2), 0.0, 1.0)
        with self.writer.as_default(step=step):
            tf.summary.image(
                ATTENTION_IMAGE_TAG, side_by_side, max_outputs=self.max_images,
                description="Left to right: the input crop, its body mask (the M channel), "
                            "Phi+ (the learned attention map, 40x16 shown at 160x64).")

    def on_train_end(self, logs=None):
        self.writer.flush()


class TrainingProgress(keras.callbacks.Callback):
    """Calls `progress(done, total)` after every step, over the whole run.

    fit's own progress bar counts one "epoch" (a checkpoint interval) at a
    time; this counts steps towards `total_steps` from the step a resumed run
    starts at. The caller decides what to show (mgcam_tf.cli's ProgressBar);
    the library prints nothing.
    """

    def __init__(self, progress, total_steps: int):
        super().__init__()
        self.progress = progress
        self.total_steps = int(total_steps)
        self.done: int | None = None

    def on_train_begin(self, logs=None):
        if self.done is None:  # the first of trainer.train's fit calls
            self.done = int(self.model.optimizer.iterations.numpy())
            self.progress(self.done, self.total_steps)

    def on_train_batch_end(self, batch, logs=None):
        # Counted, not read from the optimizer: under mixed_float16 a skipped
        # update does not advance `iterations`, but the step still ran.
        self.done += 1
        self.progress(min(self.done, self.total_steps), self.total_steps)
