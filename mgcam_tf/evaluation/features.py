"""Test-time features: h_full of every image, and MARS tracklet pooling (paper Section 4; MARS' own evaluation code pools tracklets).

The library does not print: `extract_features` reports its progress through a
callback that the command line turns into a progress bar.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import numpy as np

from mgcam_tf.errors import ConfigError, DataError

FEATURE_KEY = "h_full"
# Output names a SavedModel signature may use for the feature, in order of preference.
_FEATURE_KEYS = (FEATURE_KEY, "features", "feature", "embedding", "embeddings")


def _select_feature(outputs: Any) -> Any:
    """The feature tensor of a model's outputs (a dict with `h_full`, or a tensor)."""
    if isinstance(outputs, dict):
        for key in _FEATURE_KEYS:
            if key in outputs:
                return outputs[key]
        if len(outputs) == 1:
            return next(iter(outputs.values()))
        raise ConfigError(f"the model's outputs {sorted(outputs)} hold no {FEATURE_KEY!r}")
    return outputs


def _rgbm_of(batch: Any) -> Any:
    """The rgbm tensor of an evaluation batch: `{"rgbm": ...}`, `(x, y)` or a tensor."""
    if isinstance(batch, (tuple, list)):
        batch = batch[0]
    if isinstance(batch, dict):
        if "rgbm" not in batch:
            raise DataError(f"evaluation batches must hold 'rgbm'; got keys {sorted(batch)}")
        batch = batch["rgbm"]
    import tensorflow as tf

    rgbm = tf.convert_to_tensor(batch)
    if rgbm.shape.rank != 4 or rgbm.shape[-1] != 4:
        raise DataError(f"rgbm batches must be [B, H, W, 4], got shape {rgbm.shape}")
    return rgbm


def extract_features(model: Callable, dataset: Iterable, *, flip_average: bool = False,
                     progress: Callable[[int, int | None], None] | None = None,
                     total: int | None = None) -> np.ndarray:
    """h_full for every sample of `dataset`, in order.

    Args:
      model: a Keras model of `mgcam_tf.modeling.models` (its `embed`), a
        Keras model whose `model(x, training=False)` returns a dict with
        `h_full` [B, D] or the tensor, or any callable taking the
        `{"rgbm": ...}` dict and returning such a dict or the [B, D] tensor.
      dataset: yields `x = {"rgbm": float32 [B, 160, 64, 4]}` (or `(x, y)`).
      flip_average: also run the mirrored images (rgbm flipped along the
        width) and average the two features. Off by default, as in the paper.
      progress: optional callback(images_done, total).
      total: number of images, passed to `progress` (None if unknown).
    Returns:
      float32 [N, D].
    Raises:
      DataError: an empty dataset or malformed batches.
    """
    import tensorflow as tf  # here: evaluating saved features needs no TensorFlow

    if hasattr(model, "trainable_variables"):  # a Keras model or tf.Module
        # This package's models give their test-time feature (h, or its BNNeck copy when
        # the model retrieves with that) by `embed`, without the body and background
        # streams; other models through their outputs.
        def feature(rgbm):
            if hasattr(model, "embed"):
                return model.embed(rgbm)
            return _select_feature(model({"rgbm": rgbm}, training=False))

        # One traced graph for all batches: eager calls of a Keras model are slow.
        forward = tf.function(feature, reduce_retracing=True)
    else:
        def forward(rgbm):
            return _select_feature(model({"rgbm": rgbm}))

    chunks = []
    done = 0
    for batch in dataset:
        rgbm = _rgbm_of(batch)
        h = forward(rgbm)
        if flip_average:
            h = (h + forward(tf.reverse(rgbm, axis=[2]))) / 2.0
        h = np.asarray(h, dtype=np.float32)
        if h.ndim != 2 or h.shape[0] != rgbm.shape[0]:
            raise DataError(f"the model returned features of shape {h.shape} for a batch of "
                            f"{rgbm.shape[0]}; expected [B, D]")
        chunks.append(h)
        done += h.shape[0]
        if progress is not None:
            progress(done, total)
    if not chunks:
        raise DataError("the evaluation dataset yielded no batch")
    return np.concatenate(chunks, axis=0)


def pool_tracklets(features: np.ndarray, pids: np.ndarray, camids: np.ndarray,
                   tracklets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MARS: a tracklet's feature is the mean of its frames' features.

    Args:
      features: float [N, D] frame features; pids, camids, tracklets: int [N].
    Returns:
      (features float32 [T, D], pids int64 [T], camids int64 [T],
      tracklet ids int64 [T]), tracklets in order of first appearance.
    Raises:
      DataError: misaligned inputs, or a tracklet whose frames disagree on id or camera.
    """
    features = np.asarray(features)
    n = features.shape[0] if features.ndim == 2 else -1
    if features.ndim != 2:
        raise DataError(f"features must be 2-D [N, D], got shape {features.shape}")
    arrays = {}
    for name, arr in (("pids", pids), ("camids", camids), ("tracklets", tracklets)):
        arr = np.asarray(arr)
        if arr.shape != (n,):
            raise DataError(f"{name} must have shape ({n},) to match features, got {arr.shape}")
        arrays[name] = arr.astype(np.int64)
    uniq, first, inverse = np.unique(arrays["tracklets"], return_index=True, return_inverse=True)
    # Order tracklets by first appearance (file order), not by id.
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    group = rank[inverse]
    t = uniq.size
    sums = np.zeros((t, features.shape[1]), dtype=np.float64)
    np.add.at(sums, group, features.astype(np.float64))
    counts = np.bincount(group, minlength=t)
    out_pids = arrays["pids"][first[order]]
    out_cams = arrays["camids"][first[order]]
    bad = (arrays["pids"] != out_pids[group]) | (arrays["camids"] != out_cams[group])
    if np.any(bad):
        i = int(np.nonzero(bad)[0][0])
        raise DataError(f"tracklet {arrays['tracklets'][i]} mixes ids or cameras "
                        f"(frame {i}: id {arrays['pids'][i]}, camera {arrays['camids'][i]})")
    pooled = (sums / counts[:, None]).astype(np.float32)
    return pooled, out_pids, out_cams, uniq[order]


@dataclasses.dataclass(frozen=True)
class SplitFeatures:
    """Features of one split, aligned with ids, cameras and a picture of each item.

    For MARS (a split with tracklets) the items are tracklets: the mean
    feature of their frames, and their first frame as the picture.

    features: float32 [N, D]; pids, camids: int64 [N]; paths: N image paths.
    """

    features: np.ndarray
    pids: np.ndarray
    camids: np.ndarray
    paths: tuple[str, ...]


def split_features(model: Callable, split: Any, *, batch_size: int = 256,
                   flip_average: bool = False,
                   progress: Callable[[int, int | None], None] | None = None) -> SplitFeatures:
    """h_full of every image of a `mgcam_tf.data.layouts.Split`, pooled per tracklet if it has any.

    Uses `mgcam_tf.data.pipeline.eval_dataset(split, batch_size)` (file order).
    """
    from mgcam_tf.data import pipeline  # TF input pipeline, only when images are read

    feats = extract_features(model, pipeline.eval_dataset(split, batch_size),
                             flip_average=flip_average, progress=progress, total=len(split))
    return features_of_split(feats, split)


def features_of_split(feats: np.ndarray, split: Any) -> SplitFeatures:
    """Per-image features [N, D] of a split (file order) as its items: images,
    or tracklets (mean feature, first frame as picture) where it has any."""
    if feats.shape[0] != len(split):
        raise DataError(f"got {feats.shape[0]} features for a split of {len(split)} images")
    pids = np.asarray(split.pids, dtype=np.int64)
    camids = np.asarray(split.camids, dtype=np.int64)
    if split.tracklets is None:
        return SplitFeatures(feats, pids, camids, tuple(split.image_paths))
    pooled, tp, tc, tids = pool_tracklets(feats, pids, camids, split.tracklets)
    _, first = np.unique(np.asarray(split.tracklets), return_index=True)
    first_of = dict(zip(np.unique(np.asarray(split.tracklets)).tolist(), first.tolist()))
    paths = tuple(split.image_paths[first_of[t]] for t in tids.tolist())
    return SplitFeatures(pooled, tp, tc, paths)
