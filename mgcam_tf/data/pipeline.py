"""tf.data input pipelines for MGCAM: training, pair, P x K and evaluation.

Every dataset reads files, decodes image and mask, resizes both to 160x64
uint8 (one element at a time, in parallel), then batches and runs
`preprocess` on whole batches (mirror + normalisation + attention target are
vectorised: one op over [B, 160, 64, 4] instead of B small ones).

Batches (ARCHITECTURE.md):
  train / pair / pk: (x, y), x = {"rgbm": float32 [B, 160, 64, 4]},
    y = {"pid": int32 [B], "attention_target": float32 [B, 40, 16, 1]}.
  eval: x only, file order, never mirrored.

Bad files. A file that is empty, is not a JPEG/PNG/BMP/GIF, or is cut short
(a JPEG without its end marker, a PNG without IEND) fails an in-graph check
whose error (tf.errors.InvalidArgumentError, raised where the dataset is
iterated) contains "mgcam_tf: cannot decode" and the file's path. A mask
whose size differs from its image's fails the same way, naming both files,
unless `mask_size_mismatch="resize"`. A file damaged in the middle of its
data only fails inside the decoder, whose message has no path:
`verify_images(split)` decodes a split once and raises DataError listing
every file that does not decode.
"""

from __future__ import annotations

import hashlib
import os
from typing import Optional, Union

import numpy as np
import tensorflow as tf

from mgcam_tf.data.layouts import Split
from mgcam_tf.data.preprocess import (IMAGE_HEIGHT, IMAGE_WIDTH, decode_image,
                                      decode_mask, full_body_mask, preprocess,
                                      resize_to_input)
from mgcam_tf.errors import ConfigError, DataError

AUTOTUNE = tf.data.AUTOTUNE
MASK_SIZE_POLICIES = ("error", "resize")
# File caches are read back in one fixed order (a seeded permutation of the
# files), so shuffling after them uses a bounded window; each element holds
# 160*64*4 bytes, so 8192 of them are 335 MB.
_FILE_CACHE_SHUFFLE_BUFFER = 8192
_TAIL_BYTES = 64   # where the end marker of a complete JPEG/PNG must lie

CacheLike = Union[None, bool, str]


# --------------------------------------------------------------------------
# Reading one sample

def _bytes_equal(contents: tf.Tensor, start: int, expected: bytes) -> tf.Tensor:
    return tf.equal(tf.strings.substr(contents, start, len(expected)), expected)


def _contains(window: tf.Tensor, marker: bytes) -> tf.Tensor:
    """Whether `marker` occurs in the uint8 vector `window`."""
    n = len(marker)
    size = tf.size(window)
    hits = tf.ones([tf.maximum(size - n + 1, 0)], tf.bool)
    for i, byte in enumerate(marker):
        hits = tf.logical_and(hits, tf.equal(window[i:size - n + 1 + i], byte))
    return tf.reduce_any(hits)


def _checked(contents: tf.Tensor, path: tf.Tensor, what: str) -> tf.Tensor:
    """`contents` once an in-graph check says it is a complete image file.

    The decoders' own errors do not name the file; this check catches the
    usual damage (empty file, wrong format, download cut short) first and
    its message does: 'mgcam_tf: cannot decode <what> <path>: ...'.
    """
    size = tf.strings.length(contents)
    is_jpeg = _bytes_equal(contents, 0, b"\xff\xd8\xff")
    is_png = _bytes_equal(contents, 0, b"\x89PNG")
    known = tf.reduce_any(tf.stack([is_jpeg, is_png, _bytes_equal(contents, 0, b"BM"),
                                    _bytes_equal(contents, 0, b"GIF8")]))
    tail = tf.io.decode_raw(tf.strings.substr(contents, tf.maximum(size - _TAIL_BYTES, 0),
                                              _TAIL_BYTES), tf.uint8)
    # Cameras may pad after the JPEG end marker, hence a window, not the end.
    complete = tf.logical_and(
        tf.logical_or(tf.logical_not(is_jpeg), _contains(tail, b"\xff\xd9")),
        tf.logical_or(tf.logical_not(is_png), _contains(tail, b"IEND")))
    ok = tf.logical_and(tf.logical_and(size > 0, known), complete)
    check = tf.debugging.Assert(ok, [
        f"mgcam_tf: cannot decode {what}", path,
        ": empty, not a JPEG/PNG/BMP/GIF, or cut short; size in bytes:", size])
    with tf.control_dependencies([check]):
        return tf.identity(contents)


def _read_sample(image_path: tf.Tensor, mask_path: tf.Tensor, has_mask: tf.Tensor,
                 *, all_masks: bool, mask_size_mismatch: str) -> tuple[tf.Tensor, tf.Tensor]:
    """Decoded, resized uint8 image [160, 64, 3] and mask [160, 64, 1]."""
    image = decode_image(_checked(tf.io.read_file(image_path), image_path, "image"))

    def read_mask() -> tf.Tensor:
        mask = decode_mask(_checked(tf.io.read_file(mask_path), mask_path, "mask"))
        if mask_size_mismatch == "error":
            same = tf.reduce_all(tf.equal(tf.shape(mask)[:2], tf.shape(image)[:2]))
            check = tf.debugging.Assert(same, [
                "mgcam_tf: cannot decode mask", mask_path, ": its size (h, w)",
                tf.shape(mask)[:2], "differs from its image's", tf.shape(image)[:2],
                image_path])
            with tf.control_dependencies([check]):
                mask = tf.identity(mask)
        return resize_to_input(mask)

    if all_masks:   # the common case: no cond in the graph
        mask = read_mask()
    else:
        mask = tf.cond(has_mask, read_mask,
                       lambda: full_body_mask(IMAGE_HEIGHT, IMAGE_WIDTH))
    return resize_to_input(image), mask


def _file_table(split: Split) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images = np.asarray(split.image_paths, dtype=object).astype(bytes)
    masks = np.asarray([m or "" for m in split.mask_paths], dtype=object).astype(bytes)
    has_mask = np.asarray([m is not None for m in split.mask_paths], bool)
    return images, masks, has_mask


def _sample_reader(split: Split, mask_size_mismatch: str):
    """A tf.data map function: file index -> (image u8, mask u8, pid int32)."""
    if mask_size_mismatch not in MASK_SIZE_POLICIES:
        raise ConfigError(f"mask_size_mismatch must be one of {MASK_SIZE_POLICIES}, "
                          f"got {mask_size_mismatch!r}")
    if len(split) == 0:
        raise DataError("cannot build a dataset from an empty split")
    images, masks, has_mask = _file_table(split)
    all_masks = bool(has_mask.all())
    images_t = tf.constant(images)
    masks_t = tf.constant(masks)
    has_t = tf.constant(has_mask)
    pids_t = tf.constant(np.asarray(split.pids), tf.int32)

    def read(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        image, mask = _read_sample(images_t[index], masks_t[index], has_t[index],
                                   all_masks=all_masks,
                                   mask_size_mismatch=mask_size_mismatch)
        return image, mask, pids_t[index]

    return read


def _to_batch(image: tf.Tensor, mask: tf.Tensor, pid: tf.Tensor,
              mirror: tf.Tensor) -> tuple[dict, dict]:
    out = preprocess(image, mask, mirror=mirror)
    return ({"rgbm": out["rgbm"]},
            {"pid": pid, "attention_target": out["attention_target"]})


def _mirror_flags(batch_seed: tf.Tensor, size: tf.Tensor, enabled: bool) -> tf.Tensor:
    """bool [size]: p = 0.5 per sample, a pure function of batch_seed [2]."""
    if not enabled:
        return tf.zeros([size], tf.bool)
    return tf.random.stateless_uniform([size], seed=batch_seed) < 0.5


def _options(deterministic: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = deterministic
    # Elements are small; let tf.data fuse map/batch work and pick buffers.
    options.experimental_optimization.map_parallelization = True
    options.autotune.enabled = True
    return options


def _cache_path(cache: str, split: Split) -> str:
    """`cache` plus a digest of the file list, so that a cache file is never
    read back for a different list of files (tf.data would do so silently)."""
    digest = hashlib.sha1("\n".join(split.image_paths).encode()
                          + b"\0" + "\n".join(m or "" for m in split.mask_paths).encode())
    path = f"{cache}.{digest.hexdigest()[:12]}"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ConfigError(f"cache: folder {parent} does not exist")
    return path


# --------------------------------------------------------------------------
# Public builders

def train_dataset(split: Split, batch_size: int, *, seed: int, shuffle: bool = True,
                  mirror: bool = True, cache: CacheLike = None,
                  drop_remainder: bool = False, repeat: bool = True,
                  mask_size_mismatch: str = "error") -> tf.data.Dataset:
    """Stage-1 batches drawn at random over the whole training set.

    Args:
      split: the training split (any split works).
      batch_size: B.
      seed: makes the order and the mirror flips repeatable.
      shuffle: reshuffle the files every epoch (False: file order).
      mirror: random horizontal mirror, p = 0.5 per sample.
      cache: None/False (decode every epoch), True or "" (keep the decoded
        160x64 uint8 samples in memory, ~40 KB each), or a file prefix for
        `Dataset.cache(filename)` (a digest of the file list is appended).
        Cached samples are taken before mirroring, so flips stay random.
      drop_remainder: drop the last short batch (matters with repeat=False).
      repeat: True (default): the dataset never ends, epochs follow each
        other with a new shuffle each, and batches may straddle two epochs;
        give Keras `steps_per_epoch`. False: one epoch per iteration.
      mask_size_mismatch: "error" (default) fails naming the mask whose size
        differs from its image's; "resize" resizes both independently as the
        official code does.

    Returns:
      tf.data.Dataset of (x, y): x = {"rgbm": float32 [B, 160, 64, 4]},
      y = {"pid": int32 [B], "attention_target": float32 [B, 40, 16, 1]}.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    read = _sample_reader(split, mask_size_mismatch)
    n = len(split)
    rng = np.random.default_rng(seed)
    indices = tf.data.Dataset.from_tensor_slices(np.arange(n, dtype=np.int64))
    if cache is None or cache is False:
        # Shuffle file indices (cheap) before reading.
        if shuffle:
            indices = indices.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            indices = indices.repeat()
        samples = indices.map(read, num_parallel_calls=AUTOTUNE)
    else:
        # Read in one fixed random order, cache, then shuffle the cached
        # elements: a file cache can only be read back in its own order, so
        # a seeded permutation keeps a bounded shuffle window well mixed.
        if shuffle:
            indices = tf.data.Dataset.from_tensor_slices(rng.permutation(n).astype(np.int64))
        samples = indices.map(read, num_parallel_calls=AUTOTUNE)
        if cache is True or cache == "":
            samples = samples.cache()
            buffer = n
        else:
            samples = samples.cache(_cache_path(os.fspath(cache), split))
            buffer = min(n, _FILE_CACHE_SHUFFLE_BUFFER)
        if shuffle:
            samples = samples.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            samples = samples.repeat()
    batches = samples.batch(batch_size, drop_remainder=drop_remainder,
                            num_parallel_calls=AUTOTUNE)
    # Mirror flags from a seeded stream: one [2] seed per batch.
    seeds = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True).batch(2)
    batches = tf.data.Dataset.zip((batches, seeds)).map(
        lambda sample, batch_seed: _to_batch(
            *sample, _mirror_flags(batch_seed, tf.shape(sample[2])[0], mirror)),
        num_parallel_calls=AUTOTUNE)
    return batches.prefetch(AUTOTUNE).with_options(_options(deterministic=True))


def eval_dataset(split: Split, batch_size: int, *,
                 mask_size_mismatch: str = "error") -> tf.data.Dataset:
    """Evaluation batches: x = {"rgbm": float32 [B, 160, 64, 4]} only, in
    file order (split.image_paths), never mirrored, one pass."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    read = _sample_reader(split, mask_size_mismatch)
    samples = tf.data.Dataset.range(len(split)).map(read, num_parallel_calls=AUTOTUNE)
    batches = samples.batch(batch_size, num_parallel_calls=AUTOTUNE).map(
        lambda image, mask, pid: {"rgbm": preprocess(image, mask)["rgbm"]},
        num_parallel_calls=AUTOTUNE)
    return batches.prefetch(AUTOTUNE).with_options(_options(deterministic=True))


def verify_images(split: Split, *, mask_size_mismatch: str = "error") -> None:
    """Decodes every image and mask of `split` once.

    Raises:
      DataError listing every file that does not decode (the decoders'
      own errors do not name the file). About one training epoch of
      decoding; worth it before a long run on new data.
    """
    read = _sample_reader(split, mask_size_mismatch)
    n = len(split)
    ok_ds = (tf.data.Dataset.range(n)
             .map(lambda i: (i, tf.shape(read(i)[0])[0]), num_parallel_calls=AUTOTUNE)
             .ignore_errors()
             .map(lambda i, _: i))
    good = np.zeros(n, bool)
    for batch in ok_ds.batch(4096):
        good[batch.numpy()] = True
    bad = np.flatnonzero(~good)
    if bad.size:
        names = [f"{split.image_paths[i]} (mask {split.mask_paths[i]})" for i in bad[:5]]
        raise DataError(f"{bad.size} of {n} images or their masks cannot be decoded: "
                        f"{', '.join(names)}{', ...' if bad.size > 5 else ''}")
