"""Training the distilled mask network on BlazePose-full's masks (knowledge distillation).

Hinton et al., "Distilling the Knowledge in a Neural Network" (2015): the
student learns the teacher's outputs. The teacher's outputs here are the
binary masks BlazePose-full made for the training crops (`X_seg/NAME.png`
beside each image folder, `segmenter.BodySegmenter`'s recipe); each is
resized to 160x64 with antialiasing, so that a pixel's target is the
fraction of it the teacher calls body, and the student's logits are fitted
with binary cross-entropy. Mirrored copies (image and mask flipped
together) and a small brightness/contrast jitter augment the crops.
"""

from __future__ import annotations

import os
import time
from typing import Optional, Sequence

from mgcam_tf.conventions import default_mask_path
from mgcam_tf.errors import DataError
from mgcam_tf.segmentation import distilled, graph_recipe


def teacher_pairs(image_paths: Sequence[str]) -> list[str]:
    """The teacher's mask (`X_seg/NAME.png`) of every image, checked to exist.

    Raises:
      DataError: a mask is missing (run mgcam-masks on the folder first).
    """
    masks = [default_mask_path(p) for p in image_paths]
    missing = [m for m in masks if not os.path.isfile(m)]
    if missing:
        raise DataError(f"{missing[0]}: missing teacher mask ({len(missing)} missing; "
                        "make them with mgcam-masks --segmenter=blazepose)")
    return masks


def _load(image_path, mask_path):
    """uint8 [160, 64, 3] network pixels and float32 [160, 64, 1] body fraction in [0, 1]."""
    import tensorflow as tf

    from mgcam_tf.image_io import decode_mask, resize_to_input

    image = graph_recipe.decode_crop(tf.io.read_file(image_path))
    mask = tf.cast(decode_mask(tf.io.read_file(mask_path)), tf.float32) / 255.0
    target = tf.image.resize(mask, distilled.INPUT_SIZE, method="bilinear", antialias=True)
    return resize_to_input(image), tf.clip_by_value(target, 0.0, 1.0)


def distillation_dataset(image_paths: Sequence[str], mask_paths: Sequence[str], *,
                         batch_size: int, augment: bool, seed: int = 0):
    """tf.data of (float32 [B, 160, 64, 3] RGB in [0, 1], float32 [B, 160, 64, 1] targets).

    The decoded, resized pairs are cached in memory (6,264 CUHK03 crops:
    about 260 MB); with `augment`, shuffled each epoch, mirrored with
    probability 1/2 and jittered in brightness (+-0.08) and contrast (x0.8-1.2).
    """
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((list(map(str, image_paths)),
                                             list(map(str, mask_paths))))
    ds = ds.map(_load, num_parallel_calls=tf.data.AUTOTUNE).cache()

    def augmented(image, target):
        image = tf.cast(image, tf.float32) / 255.0
        if not augment:
            return image, target
        flip = tf.random.uniform([]) < 0.5
        image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
        target = tf.cond(flip, lambda: tf.reverse(target, [1]), lambda: target)
        image = tf.image.random_brightness(image, 0.08)
        image = tf.image.random_contrast(image, 0.8, 1.2)
        return tf.clip_by_value(image, 0.0, 1.0), target

    if augment:
        ds = ds.shuffle(len(image_paths), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(augmented, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=augment).prefetch(tf.data.AUTOTUNE)


def train_mask_net(image_paths: Sequence[str], *, epochs: int, batch_size: int = 32,
                   learning_rate: float = 3e-3, max_minutes: Optional[float] = None,
                   mixed_bfloat16: bool = False, seed: int = 0, verbose: int = 2,
                   init_weights: Optional[str] = None):
    """Trains `distilled.build_mask_net()` on the teacher masks of `image_paths`.

    Adam with a cosine-decayed learning rate over `epochs`; training stops
    early (after the epoch that crosses it) at `max_minutes` of wall time.
    `init_weights`: a weights file to continue from (a second run with a
    fresh schedule), None: random initialisation.

    Returns:
      (the trained float32-weight model, {"epochs": run, "loss": [per epoch], "seconds": s}).

    Raises:
      DataError: a teacher mask is missing.
    """
    import keras
    import tensorflow as tf

    mask_paths = teacher_pairs(image_paths)
    keras.utils.set_random_seed(seed)
    previous = keras.mixed_precision.global_policy()
    if mixed_bfloat16:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        net = distilled.build_mask_net()
        if init_weights:
            net.set_weights(distilled.load_mask_net(init_weights).get_weights())
    finally:
        keras.mixed_precision.set_global_policy(previous)
    ds = distillation_dataset(image_paths, mask_paths, batch_size=batch_size, augment=True,
                              seed=seed)
    steps = max(1, len(image_paths) // batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, epochs * steps, alpha=0.02)
    net.compile(optimizer=keras.optimizers.Adam(schedule),
                loss=keras.losses.BinaryCrossentropy(from_logits=True))
    start = time.monotonic()

    class WallClock(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if max_minutes is not None and time.monotonic() - start > 60.0 * max_minutes:
                self.model.stop_training = True

    history = net.fit(ds, epochs=epochs, callbacks=[WallClock()], verbose=verbose)
    seconds = time.monotonic() - start
    # A float32 copy for inference and for the shipped file.
    result = distilled.build_mask_net()
    result.set_weights([tf.cast(w, tf.float32).numpy() for w in net.get_weights()])
    losses = [float(v) for v in history.history.get("loss", [])]
    return result, {"epochs": len(losses), "loss": losses, "seconds": round(seconds, 1)}


__all__ = ["teacher_pairs", "distillation_dataset", "train_mask_net"]
