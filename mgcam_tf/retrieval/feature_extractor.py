"""FeatureExtractor: embeddings of person crops from Python, like torchreid's FeatureExtractor.

    from mgcam_tf.retrieval.feature_extractor import FeatureExtractor
    extractor = FeatureExtractor(model_dir="runs/market1501_stage2")
    features = extractor(["a.jpg", "b.jpg"])               # float32 [2, 128]
    features = extractor(crops_uint8, masks=masks_uint8)   # arrays of any size

The preprocessing is the training and evaluation one exactly: each image and
mask resized to 160x64 (`resize_to_input`) and packed through
`preprocess_packed`, as `mgcam_tf.data.pipeline.eval_dataset` does.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

import numpy as np

from mgcam_tf.errors import ConfigError

ImageLike = Union[str, os.PathLike, np.ndarray, Any]   # a path, a uint8 array or a tensor


class FeatureExtractor:
    """Embeddings (h_full, float32 [N, 128]) of images from one trained model.

    Give exactly one of:
      preset: a named, released model (`mgcam_tf.presets.load_preset`).
      model_dir: a training run's model directory (its latest checkpoint).
      saved_model: an export of mgcam-export (a version or the base folder).

    batch_size: images per forward pass.
    mask_model_path: the mask network's file for images given without a mask
      (BlazePose-full's `.tflite`, default `resolve_model_path`'s search; or
      the distilled network's weights). An export with the mask model in its
      graph makes masks itself for image files.
    segmenter: "blazepose" or "distilled" (`mgcam_tf.segmentation.choice`);
      None: the one mask_model_path is the model of, else $MGCAM_SEGMENTER's,
      else the default.

    Raises ConfigError for a missing or ambiguous model source.
    """

    def __init__(self, preset: Optional[str] = None, model_dir: Optional[os.PathLike] = None,
                 saved_model: Optional[os.PathLike] = None, batch_size: int = 64,
                 mask_model_path: Optional[os.PathLike] = None,
                 segmenter: Optional[str] = None):
        given = [n for n, v in (("preset", preset), ("model_dir", model_dir),
                                ("saved_model", saved_model)) if v]
        if len(given) != 1:
            raise ConfigError("FeatureExtractor: give exactly one of preset=, model_dir=, "
                              f"saved_model= (got {', '.join(given) or 'none'})")
        if batch_size < 1:
            raise ConfigError(f"FeatureExtractor: batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.mask_model_path = mask_model_path
        self.segmenter = segmenter
        self._segmenter = None
        self._embedder = None   # SavedModelEmbedder
        self._network = None    # a Keras MGCAM / MSCANBody
        if preset:
            try:
                from mgcam_tf.presets import load_preset
            except ImportError:
                raise ConfigError(f"preset={preset!r}: this install has no mgcam_tf.presets "
                                  "(use model_dir= or saved_model=)") from None
            loaded = load_preset(preset)
            if isinstance(loaded, (str, os.PathLike)):
                self._network = _load_model_dir(loaded)
            else:
                self._network = loaded
        elif model_dir:
            self._network = _load_model_dir(model_dir)
        else:
            from mgcam_tf.serving.loader import SavedModelEmbedder
            self._embedder = SavedModelEmbedder(saved_model)
        self._embed_fn = None

    @property
    def feature_dim(self) -> int:
        return int(self._network.feature_dim) if self._network is not None else 128

    def __call__(self, images: Union[ImageLike, Sequence[ImageLike]],
                 masks: Union[ImageLike, Sequence[ImageLike], None] = None) -> np.ndarray:
        """float32 [N, D] embeddings of `images`, in order.

        images: a file path, a uint8 [H, W, 3] array or tensor, a uint8
          [N, H, W, 3] batch, or a list of any of these (sizes may differ).
        masks: the same kinds, one per image (0 background .. 255 body,
          [H, W] or [H, W, 1]; a batch [N, H, W] or [N, H, W, 1]); None: made
          by the mask model.
        """
        items = _as_list(images)
        if not items:
            return np.zeros((0, self.feature_dim), np.float32)
        if masks is None and self._embedder is not None and self._embedder.has_mask_in_graph \
                and all(isinstance(i, (str, os.PathLike)) for i in items):
            # The export's image-only signature makes the masks in its graph.
            return np.asarray(self._embedder.embed_image_files(
                [os.fspath(i) for i in items], batch_size=self.batch_size), np.float32)
        mask_items = _as_list(masks, masks=True) if masks is not None else [None] * len(items)
        if len(mask_items) != len(items):
            raise ConfigError(f"FeatureExtractor: {len(items)} images but {len(mask_items)} masks")
        out = []
        for start in range(0, len(items), self.batch_size):
            pairs = zip(items[start:start + self.batch_size],
                        mask_items[start:start + self.batch_size])
            rgbm = self._rgbm([self._packed(image, mask) for image, mask in pairs])
            out.append(self._embed(rgbm))
        return np.concatenate(out).astype(np.float32, copy=False)

    # -- internals ------------------------------------------------------------------

    def _packed(self, image: ImageLike, mask: Optional[ImageLike]):
        import tensorflow as tf

        from mgcam_tf.data.preprocess import decode_image, decode_mask, resize_to_input

        pixels = _pixels(image, decode_image)
        if pixels.shape.rank != 3 or pixels.shape[-1] != 3:
            raise ConfigError(f"FeatureExtractor: an image must be [H, W, 3], got {pixels.shape}")
        if mask is None:
            mask = self._segment(pixels.numpy())
        mask = _pixels(mask, decode_mask)
        if mask.shape.rank == 2:
            mask = mask[..., tf.newaxis]
        return tf.concat([resize_to_input(pixels), resize_to_input(mask)], axis=-1)

    def _rgbm(self, packed: list):
        import tensorflow as tf

        from mgcam_tf.data.preprocess import preprocess_packed

        return preprocess_packed(tf.stack(packed))["rgbm"]

    def _segment(self, pixels: np.ndarray) -> np.ndarray:
        if self._segmenter is None:
            from mgcam_tf.segmentation import choice

            self._segmenter = choice.crop_segmenter(self.segmenter, self.mask_model_path)
        return self._segmenter(pixels)

    def _embed(self, rgbm) -> np.ndarray:
        import tensorflow as tf

        if self._embedder is not None:
            return self._embedder.embed_rgbm(rgbm)
        if self._embed_fn is None:
            network = self._network
            self._embed_fn = tf.function(lambda x: network.embed(x), reduce_retracing=True)
        return self._embed_fn(rgbm).numpy()


def _load_model_dir(model_dir: os.PathLike):
    from mgcam_tf.training.run_dir import load_trained_model

    return load_trained_model(model_dir)


def _as_list(value, masks: bool = False) -> list:
    """One image (path, [H, W, C] array or tensor) or many, as a list of single images.
    masks: a 3-D array is a batch of [H, W] masks unless its last axis is 1."""
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    array = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
    if array.ndim == 4 or (masks and array.ndim == 3 and array.shape[-1] != 1):
        return list(array)
    return [array]


def _pixels(value: ImageLike, decode):
    """uint8 tensor of a path (decoded) or of an array/tensor."""
    import tensorflow as tf

    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if not os.path.isfile(path):
            raise ConfigError(f"{path}: image file not found")
        return decode(tf.io.read_file(path))
    pixels = tf.convert_to_tensor(value)
    if pixels.dtype != tf.uint8:
        raise ConfigError(f"FeatureExtractor: images and masks must be uint8, got {pixels.dtype}")
    return pixels
