"""tf.data input pipelines for MGCAM: training, pair, P x K and evaluation.

Every dataset reads files, decodes image and mask, resizes both to 160x64
uint8 (one element at a time, in parallel), then batches and runs
`preprocess` on whole batches (mirror + normalisation + attention target are
vectorised: one op over [B, 160, 64, 4] instead of B small ones).

Batches (ARCHITECTURE.md):
  train / pair / pk: (x, y), x = {"rgbm": float32 [B, 160, 64, 4]},
    y = {"pid": int32 [B], "attention_target": float32 [B, 40, 16, 1]}.
  eval: x only, file order, never mirrored.

Builders:
  train_dataset  stage 1, random over the whole set; endless by default
                 (use steps_per_epoch), repeat=False for one epoch per pass.
  pair_dataset   stage 2, endless; sample 2i pairs with 2i + 1; exactly
                 ceil(positive_fraction * P) positive pairs in every batch.
  pk_dataset     endless; P different ids x K images, id-major.
  eval_dataset   one pass in file order.
A seed fixes order and mirror flips; iterating again gives a new series.
Caches ("memory" or a file prefix) hold the decoded 160x64 uint8 image and
mask (40 KB per sample) before mirroring, so flips stay random per epoch.

Bad files. The decoders' own errors do not name the file, so each pass
over the files numbers them, decodes with `ignore_errors()`, and checks the
numbers that come out: a missing number stops the dataset with
tf.errors.InvalidArgumentError (raised where the dataset is iterated, e.g.
inside `model.fit`) whose message reads "mgcam_tf: cannot read or decode
image <path> or its mask <path> (...)". This covers missing, empty, cut
short, damaged and non-image files alike, at ~30 us per sample. A mask
whose size differs from its image's stops it the same way ("mgcam_tf: mask
<path> has size ... but its image <path> has ..."), unless
`mask_size_mismatch="resize"` (resize both independently, as the official
code does). `data_error_from(exc)` turns such an error into a one-line
DataError for the command-line layer; `verify_images(split)` decodes a split
once and raises DataError listing every bad file at once.
"""

from __future__ import annotations

import atexit
import glob
import hashlib
import logging
import math
import os
import re
import socket
from typing import Optional, Union

import numpy as np
import tensorflow as tf

from mgcam_tf.data.augment import Augmentation, augment_batch
from mgcam_tf.data.layouts import Split
from mgcam_tf.data.preprocess import (IMAGE_HEIGHT, IMAGE_WIDTH, decode_image,
                                      decode_mask, full_body_mask, preprocess_packed,
                                      resize_to_input)
from mgcam_tf.errors import ConfigError, DataError

AUTOTUNE = tf.data.AUTOTUNE
MASK_SIZE_POLICIES = ("error", "resize")
# File caches are read back in one fixed order (a seeded permutation of the
# files), so shuffling after them uses a bounded window; each element holds
# 160*64*4 bytes, so 8192 of them are 335 MB.
_FILE_CACHE_SHUFFLE_BUFFER = 8192

CacheLike = Union[None, bool, str]


# --------------------------------------------------------------------------
# Reading samples, with errors that name the file

class _SampleReader:
    """Decodes samples of one split; builds finite streams whose failures
    name the file at fault.

    The decoders' errors do not say which file they were decoding, so a
    stream reads its files with `ignore_errors()` and numbers them first: a
    number missing after that means the file before it failed, and a check
    downstream raises an error that names it. A sentinel closes the stream
    so that a failure in its last file is seen too.
    """

    def __init__(self, split: Split, mask_size_mismatch: str):
        if mask_size_mismatch not in MASK_SIZE_POLICIES:
            raise ConfigError(f"mask_size_mismatch must be one of {MASK_SIZE_POLICIES}, "
                              f"got {mask_size_mismatch!r}")
        if len(split) == 0:
            raise DataError("cannot build a dataset from an empty split")
        self.size = len(split)
        self._check_sizes = mask_size_mismatch == "error"
        has_mask = np.asarray([m is not None for m in split.mask_paths], bool)
        self._all_masks = bool(has_mask.all())
        # UTF-8 bytes (numpy's astype(bytes) is ASCII and fails on "dätä/ünï.jpg").
        self._images = tf.constant([os.fsencode(p) for p in split.image_paths], tf.string)
        self._masks = tf.constant(
            [os.fsencode(m or "") for m in split.mask_paths], tf.string)
        self._has_mask = tf.constant(has_mask)
        self.pids = tf.constant(np.asarray(split.pids), tf.int32)

    def read(self, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """File index -> (uint8 [160, 64, 4] RGB + mask, image hw, mask hw)."""
        image = decode_image(tf.io.read_file(self._images[index]))
        image_hw = tf.shape(image)[:2]

        def with_mask() -> tuple[tf.Tensor, tf.Tensor]:
            mask = decode_mask(tf.io.read_file(self._masks[index]))
            return resize_to_input(mask), tf.shape(mask)[:2]

        def without_mask() -> tuple[tf.Tensor, tf.Tensor]:
            return full_body_mask(IMAGE_HEIGHT, IMAGE_WIDTH), image_hw

        # The common case, every image with its mask, needs no cond.
        mask, mask_hw = (with_mask() if self._all_masks
                         else tf.cond(self._has_mask[index], with_mask, without_mask))
        packed = tf.concat([resize_to_input(image), mask], axis=-1)
        return packed, image_hw, mask_hw

    def stream(self, indices: tf.Tensor) -> tf.data.Dataset:
        """Finite dataset of (uint8 [160, 64, 4], pid int32) for `indices`
        (int64 [n], n >= 1), in that order; fails naming the first bad file."""
        indices = tf.cast(indices, tf.int64)
        n = tf.size(indices, out_type=tf.int64)
        # Element i carries the index of element i - 1: if element i arrives
        # when i - 1 was expected, that file is the one that failed.
        previous = tf.concat([[-1], indices[:-1]], axis=0)
        real = tf.data.Dataset.from_tensor_slices((tf.range(n), indices, previous)).map(
            lambda pos, idx, prev: (pos, idx, prev) + self.read(idx),
            num_parallel_calls=AUTOTUNE).ignore_errors()
        hw = tf.zeros([2], tf.int32)
        sentinel = tf.data.Dataset.from_tensors(
            (n, tf.constant(0, tf.int64), indices[-1],
             tf.zeros([IMAGE_HEIGHT, IMAGE_WIDTH, 4], tf.uint8), hw, hw))
        # take(n): the sentinel is only pulled (and checked) when a file
        # failed, which is exactly when the last file's failure shows.
        return real.concatenate(sentinel).scan(tf.constant(0, tf.int64), self._check).take(n)

    def _check(self, expected, element):
        pos, idx, prev, packed, image_hw, mask_hw = element
        unread = tf.debugging.Assert(tf.equal(pos, expected), [
            "mgcam_tf: cannot read or decode image", self._images[prev], "or its mask",
            self._masks[prev], "(missing, empty, cut short, damaged, or not a "
            "JPEG/PNG/BMP/GIF file)"])
        checks = [unread]
        if self._check_sizes:
            checks.append(tf.debugging.Assert(tf.reduce_all(tf.equal(image_hw, mask_hw)), [
                "mgcam_tf: mask", self._masks[idx], "has size (h, w)", mask_hw,
                "but its image", self._images[idx], "has", image_hw,
                "(a mask must be its image's size: remake it with mgcam-masks, or delete "
                "it and use --missing_masks=generate)"]))
        with tf.control_dependencies(checks):
            return pos + 1, (tf.identity(packed), self.pids[idx])


def _batch_to_xy(packed: tf.Tensor, pid: tf.Tensor, mirror: tf.Tensor,
                 augmentation: Optional[Augmentation] = None,
                 batch_seed: Optional[tf.Tensor] = None) -> tuple[dict, dict]:
    if augmentation is not None:
        # Its own seed, so that turning augmentation on leaves the mirror flips as they were.
        packed = augment_batch(packed, tf.random.experimental.stateless_fold_in(
            batch_seed, 1), augmentation)
    out = preprocess_packed(packed, mirror=mirror)
    return ({"rgbm": out["rgbm"]},
            {"pid": pid, "attention_target": out["attention_target"]})


def _mirror_flags(batch_seed: tf.Tensor, size: tf.Tensor, enabled: bool) -> tf.Tensor:
    """bool [size]: p = 0.5 per sample, a pure function of batch_seed [2]."""
    if not enabled:
        return tf.zeros([size], tf.bool)
    return tf.random.stateless_uniform([size], seed=batch_seed) < 0.5


def _seed_stream(seed: int) -> tf.data.Dataset:
    """Endless int64 [2] seeds; a new series each time the dataset is iterated."""
    return tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)


def _finish(samples: tf.data.Dataset, batch_size: Optional[int], drop_remainder: bool,
            mirror: bool, seed: int,
            augmentation: Optional[Augmentation] = None) -> tf.data.Dataset:
    """(packed, pid) samples -> batches of (x, y), augmented and mirrored per sample.
    batch_size None: `samples` already holds batches."""
    batches = samples if batch_size is None else samples.batch(
        batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE)
    batches = tf.data.Dataset.zip((batches, _seed_stream(seed + 1))).map(
        lambda sample, batch_seed: _batch_to_xy(
            *sample, _mirror_flags(batch_seed, tf.shape(sample[1])[0], mirror),
            augmentation, batch_seed),
        num_parallel_calls=AUTOTUNE)
    return batches.prefetch(AUTOTUNE).with_options(_options())


def _options() -> tf.data.Options:
    options = tf.data.Options()
    # Order stays deterministic: a seed must give the same batches.
    options.deterministic = True
    options.autotune.enabled = True
    # Each op works on one small image or one batch: splitting it over
    # threads costs more than it saves; parallelism comes from the maps.
    options.threading.max_intra_op_parallelism = 1
    return options


# Words that read as "no cache" on a command line; taken as file prefixes they would
# write a cache the size of the data set into the working directory ("./none" does).
CACHE_OFF_WORDS = ("none", "off", "false")


def _cache_mode(cache: CacheLike) -> Optional[str]:
    """None (off), "" (memory) or a file prefix."""
    if (cache is None or cache is False or cache == ""
            or (isinstance(cache, str) and cache.lower() in CACHE_OFF_WORDS)):
        return None
    if cache is True or cache == "memory":
        return ""
    return os.fspath(cache)


def _cache_path(cache: str, split: Split) -> str:
    """`cache` plus a digest of the file list, so that a cache file is never
    read back for a different list of files (tf.data would do so silently).

    tf.data writes the cache under a temporary name (`*.tempstate*`) and
    renames it when a pass completes, so an interrupted run never leaves a
    half cache that reads as complete; it only discards a pass that was not
    read to its end.
    """
    digest = hashlib.sha1("\n".join(split.image_paths).encode()
                          + b"\0" + "\n".join(m or "" for m in split.mask_paths).encode())
    path = f"{cache}.{digest.hexdigest()[:12]}"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ConfigError(f"cache: folder {parent} does not exist")
    # tf.data leaves its lock file behind when a run dies while writing the
    # cache, and the next run would fail deep inside the iterator. Each run
    # that uses the cache records its pid beside it (`CACHE.owner`): a lock
    # file whose recorded owner is no longer running is taken over.
    lockfile = f"{path}_0.lockfile"
    owner_file = f"{path}.owner"
    from mgcam_tf import process_lock

    if os.path.exists(lockfile):
        owner = process_lock.read_owner(owner_file)
        pid = owner.get("pid")
        if owner.get("host") == socket.gethostname() and isinstance(pid, int) \
                and pid != os.getpid() and not process_lock.pid_alive(pid):
            logging.getLogger("mgcam_tf").warning(
                "cache: %s was left by run pid %d, which is no longer running; "
                "taking it over", lockfile, pid)
            for leftover in [lockfile] + glob.glob(glob.escape(path) + "*.tempstate*"):
                try:
                    os.unlink(leftover)
                except OSError:
                    pass
        elif pid != os.getpid() or not owner:
            who = f"run pid {pid} on {owner.get('host', '?')}" if pid else "an unknown run"
            raise ConfigError(
                f"cache: {lockfile} exists: {who} is writing this cache, or one "
                f"stopped while writing it; if no other run uses it, delete it and "
                f"{path}_0.data-*.tempstate*")
    if process_lock.read_owner(owner_file).get("pid") != os.getpid():
        from mgcam_tf import atomic_files

        atomic_files.write_json(owner_file, {"pid": os.getpid(), "host": socket.gethostname()})
        atexit.register(_release_owner, owner_file)
    return path


def _release_owner(owner_file: str) -> None:
    from mgcam_tf import process_lock

    if process_lock.read_owner(owner_file).get("pid") == os.getpid():
        try:
            os.unlink(owner_file)
        except OSError:
            pass


# --------------------------------------------------------------------------
# Public builders

def train_dataset(split: Split, batch_size: int, *, seed: int, shuffle: bool = True,
                  mirror: bool = True, cache: CacheLike = None,
                  drop_remainder: bool = False, repeat: bool = True,
                  mask_size_mismatch: str = "error",
                  augmentation: Optional[Augmentation] = None) -> tf.data.Dataset:
    """Stage-1 batches drawn at random over the whole training set.

    Args:
      split: the training split (any split works).
      batch_size: B.
      seed: makes the order and the mirror flips repeatable.
      shuffle: a new random order every epoch (False: file order).
      mirror: random horizontal mirror, p = 0.5 per sample.
      cache: None / False / "" (decode every epoch), True or "memory" (keep
        the decoded 160x64 uint8 samples in memory, 40 KB each), or a file
        prefix for `Dataset.cache(filename)` (a digest of the file list is
        appended). Samples are cached before mirroring, so flips stay random.
        With a cache, files are read in one fixed seeded order and shuffled
        after the cache (memory: the whole split; file: an 8192-sample window).
      drop_remainder: drop a last short batch (matters with repeat=False).
      repeat: True (default): the dataset never ends, epochs follow each
        other with a new order each, and a batch may straddle two epochs;
        give Keras `steps_per_epoch`. False: one epoch per iteration, a new
        order and new flips each time it is iterated.
      mask_size_mismatch: "error" (default): a mask whose size differs from
        its image's stops the dataset with an error naming both; "resize":
        resize both independently, as the official code does.
      augmentation: the recipe's augmentations (`mgcam_tf.data.augment`),
        applied to each batch before the mirror; None: none.

    Returns:
      tf.data.Dataset of (x, y): x = {"rgbm": float32 [B, 160, 64, 4]},
      y = {"pid": int32 [B], "attention_target": float32 [B, 40, 16, 1]}.
      A file that cannot be read or decoded stops it with
      tf.errors.InvalidArgumentError whose message names the file.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    reader = _SampleReader(split, mask_size_mismatch)
    n = len(split)
    cache = _cache_mode(cache)
    if cache is None:
        # One finite checked stream per epoch, each in a fresh seeded order.
        epochs = _seed_stream(seed)
        if not repeat:
            epochs = epochs.take(1)
        if shuffle:
            orders = epochs.map(lambda s: tf.random.experimental.stateless_shuffle(
                tf.range(n, dtype=tf.int64), seed=s))
        else:
            orders = epochs.map(lambda s: tf.range(n, dtype=tf.int64))
        samples = orders.flat_map(reader.stream)
    else:
        order = (np.random.default_rng(seed).permutation(n) if shuffle
                 else np.arange(n)).astype(np.int64)
        samples = reader.stream(tf.constant(order))
        if cache == "":
            samples, buffer = samples.cache(), n
        else:
            samples = samples.cache(_cache_path(cache, split))
            buffer = min(n, _FILE_CACHE_SHUFFLE_BUFFER)
        if shuffle:
            samples = samples.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            samples = samples.repeat()
    return _finish(samples, batch_size, drop_remainder, mirror, seed, augmentation)


class _IdTable:
    """Images grouped by id, for sampling by identity in TF ops."""

    def __init__(self, split: Split):
        pids = np.asarray(split.pids)
        order = np.argsort(pids, kind="stable")
        ids, starts, counts = np.unique(pids[order], return_index=True, return_counts=True)
        self.num_ids = len(ids)
        self.max_count = int(counts.max())
        self.order = tf.constant(order.astype(np.int64))
        self.starts = tf.constant(starts.astype(np.int64))
        self.counts = tf.constant(counts.astype(np.int64))
        self.counts_np = counts
        # Dense id of every image (file index -> position in `ids`).
        self.id_of_image = tf.constant(np.searchsorted(ids, pids).astype(np.int64))
        self.num_images = len(pids)
        # Ids with two images or more can form a positive pair.
        self.pairable = tf.constant(np.flatnonzero(counts >= 2).astype(np.int64))
        self.num_pairable = int((counts >= 2).sum())

    def image_of(self, ids: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """A random image index of each id (same shape as ids)."""
        return self.offset_image(ids, _randint(tf.shape(ids), seed))

    def offset_image(self, ids: tf.Tensor, draws: tf.Tensor) -> tf.Tensor:
        """Image number draws % count of each id, as a file index."""
        counts = tf.gather(self.counts, ids)
        return tf.gather(self.order, tf.gather(self.starts, ids) + tf.math.floormod(draws, counts))


def _randint(shape, seed: tf.Tensor) -> tf.Tensor:
    """Non-negative int64 draws (use with floormod; the bias is < 2**-40)."""
    return tf.random.stateless_uniform(shape, seed=seed, minval=0, maxval=2**62,
                                       dtype=tf.int64)


def _chunks(seed: int, batch_size: int, make: "callable") -> tf.data.Dataset:
    """Endless stream of file-index chunks of whole batches: [M * batch_size].

    Each chunk is decoded as one finite, checked stream (a failing file is
    named); chunks of ~4096 samples make the restart between them cheap.
    """
    batches_per_chunk = max(1, 4096 // batch_size)
    return _seed_stream(seed).map(lambda s: tf.reshape(make(s, batches_per_chunk), [-1]))


def _cached_batches(reader: "_SampleReader", split: Split, cache: str,
                    index_batches: tf.data.Dataset) -> tf.data.Dataset:
    """Batches gathered from all samples decoded once into memory.

    Pair and P x K batches pick files at random, which a tf.data cache
    (sequential) cannot serve; so with a cache the split is decoded once
    (through the file cache when `cache` is a path) into one uint8
    [N, 160, 64, 4] tensor (40 KB per sample) and batches are gathered.
    """
    samples = reader.stream(tf.range(len(split), dtype=tf.int64))
    if cache:
        samples = samples.cache(_cache_path(cache, split))
    packed = np.concatenate([p.numpy() for p, _ in samples.batch(1024)])
    table = tf.constant(packed)
    return index_batches.map(lambda idx: (tf.gather(table, idx), tf.gather(reader.pids, idx)),
                             num_parallel_calls=AUTOTUNE)


PAIR_SAMPLINGS = ("paper", "official")


def pair_dataset(split: Split, pairs_per_batch: int, *, positive_fraction: float = 0.3,
                 seed: int, mirror: bool = True, cache: CacheLike = None,
                 mask_size_mismatch: str = "error",
                 sampling: str = "paper",
                 augmentation: Optional[Augmentation] = None) -> tf.data.Dataset:
    """Stage-2 (Siamese) batches of image pairs, without end.

    Sample 2i pairs with sample 2i + 1 (ARCHITECTURE.md: interleaved, so a
    batch split across replicas keeps its pairs). Each batch holds exactly
    ceil(positive_fraction * pairs_per_batch) positive pairs (same id: an id
    with two images or more, then two different images of it) and the rest
    negative (two different ids, each drawn uniformly, then an image of
    each), in random slots. The trainer derives positives from y["pid"].

    Args:
      split: the training split.
      pairs_per_batch: P; batches hold B = 2P samples.
      positive_fraction: 0..1, the least fraction of positive pairs (paper Section 4.1:
        at least 30 %).
      seed: makes the batches and flips repeatable.
      mirror: random horizontal mirror per sample, p = 0.5.
      cache: as in `train_dataset`, but any cache decodes the whole split
        into memory first (see `_cached_batches`).
      mask_size_mismatch, augmentation: as in `train_dataset`.
      sampling: "paper" (above) or "official", the official data layer
        (`MGCAM_SIA_DataLayer`): P anchors drawn over images, each with a
        partner; the first int(positive_fraction * P) + 1 partners are forced
        positives (any image of the anchor's id, possibly the anchor itself),
        the others random images (a positive only by chance). Its batch of 128
        images + 128 partners with 39 forced positives is `pairs_per_batch=128`.

    Returns:
      tf.data.Dataset of (x, y) as `train_dataset`, batch 2P.
    """
    if sampling not in PAIR_SAMPLINGS:
        raise ConfigError(f"sampling must be one of {PAIR_SAMPLINGS}, got {sampling!r}")
    if pairs_per_batch < 1:
        raise ConfigError(f"pairs_per_batch must be >= 1, got {pairs_per_batch}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ConfigError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    reader = _SampleReader(split, mask_size_mismatch)
    table = _IdTable(split)
    if sampling == "official":
        n_pos = min(pairs_per_batch, int(positive_fraction * pairs_per_batch) + 1)
    else:
        n_pos = int(math.ceil(positive_fraction * pairs_per_batch - 1e-9))
    n_neg = pairs_per_batch - n_pos
    if n_pos and not table.num_pairable:
        raise DataError("pair batches need positive pairs, but no id of the split has "
                        "two images")
    if n_neg and table.num_ids < 2 and sampling == "paper":
        raise DataError("pair batches need negative pairs, but the split has one id")

    def make_official(s: tf.Tensor, m: int) -> tf.Tensor:
        seeds = tf.random.experimental.stateless_split(s, num=3)
        anchors = tf.math.floormod(_randint([m, pairs_per_batch], seeds[0]), table.num_images)
        forced = table.image_of(tf.gather(table.id_of_image, anchors[:, :n_pos]), seeds[1])
        others = tf.math.floormod(_randint([m, n_neg], seeds[2]), table.num_images)
        return tf.stack([anchors, tf.concat([forced, others], axis=1)], axis=-1)

    def make(s: tf.Tensor, m: int) -> tf.Tensor:
        seeds = tf.random.experimental.stateless_split(s, num=7)
        # Positive pairs: an id with >= 2 images, two different images of it.
        ids = tf.gather(table.pairable, tf.math.floormod(
            _randint([m, n_pos], seeds[0]), table.num_pairable))
        counts = tf.gather(table.counts, ids)
        first = _randint([m, n_pos], seeds[1])
        second = first + 1 + tf.math.floormod(_randint([m, n_pos], seeds[2]),
                                              tf.maximum(counts - 1, 1))
        positives = tf.stack([table.offset_image(ids, first),
                              table.offset_image(ids, second)], axis=-1)
        # Negative pairs: two different ids.
        id_a = tf.math.floormod(_randint([m, n_neg], seeds[3]), table.num_ids)
        id_b = tf.math.floormod(id_a + 1 + tf.math.floormod(
            _randint([m, n_neg], seeds[4]), max(table.num_ids - 1, 1)), table.num_ids)
        negatives = tf.stack([table.image_of(id_a, seeds[5]),
                              table.image_of(id_b, seeds[6])], axis=-1)
        pairs = tf.concat([positives, negatives], axis=1)           # [m, P, 2]
        # Random slots, so positives are not always first.
        slots = tf.argsort(tf.random.stateless_uniform([m, pairs_per_batch], seed=s), axis=-1)
        return tf.gather(pairs, slots, batch_dims=1)

    return _sampled(reader, split, 2 * pairs_per_batch,
                    make_official if sampling == "official" else make, seed, mirror, cache,
                    augmentation)


def pk_dataset(split: Split, p: int, k: int, *, seed: int, mirror: bool = True,
               cache: CacheLike = None, mask_size_mismatch: str = "error",
               augmentation: Optional[Augmentation] = None) -> tf.data.Dataset:
    """P x K batches, without end: P different ids, K images of each.

    Samples p*K .. p*K + K - 1 of a batch share an id. An id with K images
    or more gives K different ones; one with fewer is sampled with
    replacement.

    Args:
      split: the training split; it needs at least P ids.
      p, k: identities per batch and images per identity (B = P * K).
      seed, mirror, cache, mask_size_mismatch, augmentation: as in `pair_dataset`.

    Returns:
      tf.data.Dataset of (x, y) as `train_dataset`, batch P * K.
    """
    if p < 1 or k < 1:
        raise ConfigError(f"p and k must be >= 1, got p={p}, k={k}")
    reader = _SampleReader(split, mask_size_mismatch)
    table = _IdTable(split)
    if table.num_ids < p:
        raise DataError(f"P x K batches need p={p} different ids, but the split has "
                        f"{table.num_ids}")

    def make(s: tf.Tensor, m: int) -> tf.Tensor:
        seeds = tf.random.experimental.stateless_split(s, num=3)
        # P different ids per batch: the P smallest of random keys.
        _, ids = tf.math.top_k(tf.random.stateless_uniform([m, table.num_ids], seed=seeds[0]), p)
        ids = tf.cast(ids, tf.int64)                                   # [m, p]
        counts = tf.gather(table.counts, ids)[..., tf.newaxis]         # [m, p, 1]
        # Without replacement: the K largest random keys among the id's images.
        keys = tf.random.stateless_uniform([m, p, table.max_count], seed=seeds[1])
        valid = tf.range(table.max_count, dtype=tf.int64) < counts
        _, distinct = tf.math.top_k(tf.where(valid, keys, -1.0), min(k, table.max_count))
        distinct = tf.cast(distinct, tf.int64)
        if k > table.max_count:
            distinct = tf.concat([distinct, tf.zeros([m, p, k - table.max_count], tf.int64)], -1)
        repeated = _randint([m, p, k], seeds[2])
        offsets = tf.where(counts >= k, distinct, repeated)
        ids = tf.broadcast_to(ids[..., tf.newaxis], [m, p, k])
        return table.offset_image(ids, offsets)

    return _sampled(reader, split, p * k, make, seed, mirror, cache, augmentation)


def _sampled(reader: "_SampleReader", split: Split, batch_size: int, make, seed: int,
             mirror: bool, cache: CacheLike,
             augmentation: Optional[Augmentation]) -> tf.data.Dataset:
    chunks = _chunks(seed, batch_size, make)
    cache = _cache_mode(cache)
    if cache is None:
        samples = chunks.flat_map(reader.stream)
        return _finish(samples, batch_size, True, mirror, seed, augmentation)
    index_batches = chunks.map(lambda c: tf.reshape(c, [-1, batch_size])).unbatch()
    return _finish(_cached_batches(reader, split, cache, index_batches), None, True,
                   mirror, seed, augmentation)


def eval_dataset(split: Split, batch_size: int, *,
                 mask_size_mismatch: str = "error") -> tf.data.Dataset:
    """Evaluation batches: x = {"rgbm": float32 [B, 160, 64, 4]} only, in
    file order (split.image_paths), never mirrored, one pass. Errors as in
    `train_dataset`."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    reader = _SampleReader(split, mask_size_mismatch)
    samples = reader.stream(tf.range(len(split), dtype=tf.int64))
    batches = samples.batch(batch_size, num_parallel_calls=AUTOTUNE).map(
        lambda packed, pid: {"rgbm": preprocess_packed(packed)["rgbm"]},
        num_parallel_calls=AUTOTUNE)
    return batches.prefetch(AUTOTUNE).with_options(_options())


def file_batches(image_paths, mask_paths, batch_size: int):
    """rgbm batches float32 [B, 160, 64, 4], in order, of image files (any size) with
    their mask files (None: no mask, all body; a mask of another size than its
    image is resized on its own): `eval_dataset` over files that are not a data
    set. A file that cannot be read or decoded is a DataError naming it."""
    n = len(image_paths)
    split = Split(image_paths=tuple(map(str, image_paths)),
                  mask_paths=tuple(None if m is None else str(m) for m in mask_paths),
                  pids=np.zeros(n, np.int64), camids=np.zeros(n, np.int64))
    try:
        for batch in eval_dataset(split, batch_size, mask_size_mismatch="resize"):
            yield batch["rgbm"]
    except tf.errors.InvalidArgumentError as err:
        message = " ".join(err.message.split("\n")[0].split())
        raise DataError(message.replace("assertion failed: ", "")) from None


_ERROR_TAG = "mgcam_tf: "


def data_error_from(error: BaseException) -> Optional[DataError]:
    """The DataError behind a dataset's bad-file error, or None.

    The datasets report a bad file from inside the tf.data runtime, so it
    reaches the caller (e.g. `model.fit`) as tf.errors.InvalidArgumentError
    with TF's decoration around it. For such an error this returns
    DataError("cannot read or decode image <path> or its mask <path> (...)")
    (or the mask-size message); for any other error, None. Use:

        except tf.errors.InvalidArgumentError as exc:
            raise (pipeline.data_error_from(exc) or exc) from exc
    """
    message = str(error)
    start = message.find("[" + _ERROR_TAG)
    if start < 0:
        return None
    line = message[start:].split("\n", 1)[0]
    parts = re.findall(r"\[(.*?)\](?= \[|$|\s)", line)
    text = " ".join(p.strip() for p in parts if p.strip()).replace("\\'", "'")
    return DataError(text[len(_ERROR_TAG):] if text.startswith(_ERROR_TAG) else text)


def verify_images(split: Split, *, mask_size_mismatch: str = "error") -> None:
    """Decodes every image and mask of `split` once.

    Raises:
      DataError listing every file that cannot be read or decoded (the
      datasets stop at the first one). About one epoch of decoding.
    """
    reader = _SampleReader(split, mask_size_mismatch)
    n = len(split)

    def ok(i):
        _, image_hw, mask_hw = reader.read(i)
        same = tf.reduce_all(tf.equal(image_hw, mask_hw)) | (mask_size_mismatch == "resize")
        return i, same

    results = (tf.data.Dataset.range(n).map(ok, num_parallel_calls=AUTOTUNE)
               .ignore_errors().batch(4096))
    good = np.zeros(n, bool)
    size_ok = np.ones(n, bool)
    for index, same in results:
        good[index.numpy()] = True
        size_ok[index.numpy()] = same.numpy()
    bad = [f"{split.image_paths[i]} (or its mask {split.mask_paths[i]})"
           for i in np.flatnonzero(~good)]
    bad += [f"{split.mask_paths[i]} (size differs from {split.image_paths[i]})"
            for i in np.flatnonzero(good & ~size_ok)]
    if bad:
        raise DataError(f"{len(bad)} of {n} samples cannot be read or decoded: "
                        f"{', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}")
