"""What the model looked at: the contrastive attention map Phi+ of MGCAM over its images.

Phi+ (paper Sec. 3.3, eq. 3-4: sigmoid of a 3x3 convolution of the stage-2
features, [40, 16] for a 160x64 input) weighs the body stream; the
attention loss (eq. 8) pulls it towards the mask. The paper shows it over
its pedestrians (Fig. 5); torchreid's `visactmap` draws its activation maps
the same way, a colour map blended over the image.

    maps = attention_maps(model, rgbm)                          # [B, 40, 16] in 0..1
    maps, masks = attention_for_files(model, paths, mask_paths)  # from files
    tile = overlay(image, maps[0])                               # uint8 picture

`model` is a Keras MGCAM (`load_trained_model`, `load_preset`) or a
`SavedModelEmbedder` of an MGCAM export (its `serving_rgbm` returns the
`attention` output); the MSCAN-body baseline has no attention.
"""

from __future__ import annotations

import os
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from mgcam_tf.atomic_files import write_bytes
from mgcam_tf.conventions import MASK_MEAN, MASK_SCALE
from mgcam_tf.errors import ConfigError, DataError

# Blend of the colour map over the image: enough colour to read the map,
# enough image to see where on the person it lies.
OVERLAY_ALPHA = 0.5
# How much of the image shows where the mask says background.
BACKGROUND_LEFT = 0.25


def attention_maps(model, rgbm) -> np.ndarray:
    """float32 [B, 40, 16], Phi+ in 0..1, of a preprocessed batch rgbm [B, 160, 64, 4].

    Raises:
      ConfigError: the model has no attention (MSCAN-body, or an export of one).
    """
    if hasattr(model, "inference_outputs"):
        outputs = model.inference_outputs(rgbm)
    else:
        outputs = model({"rgbm": rgbm})
    if "attention" not in outputs:
        raise ConfigError("this model has no attention map (the MSCAN-body baseline, or "
                          "an export of it): only MGCAM computes Phi+")
    return np.asarray(outputs["attention"], np.float32)[..., 0]


def attention_for_files(model, image_paths: Sequence[str],
                        mask_paths: Sequence[Optional[str]], *, batch_size: int = 64,
                        progress: Optional[Callable[[int, int], None]] = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(Phi+ float32 [N, 40, 16], the masks the model was given uint8 [N, 160, 64]) of
    image files with their masks (None: no mask, all body), through the
    evaluation pipeline (`mgcam_tf.data.pipeline.eval_dataset`).

    Raises:
      DataError: no image, or a file that cannot be read (named).
    """
    from mgcam_tf.data import pipeline

    if len(image_paths) == 0:
        raise DataError("no image to show the attention of")
    maps, masks = [], []
    for rgbm in pipeline.file_batches(image_paths, mask_paths, batch_size):
        maps.append(attention_maps(model, rgbm))
        # The mask channel back in 0..255 (preprocess: (mask - MASK_MEAN) / MASK_SCALE).
        masks.append(np.clip(np.rint(rgbm.numpy()[..., 3] * MASK_SCALE + MASK_MEAN),
                             0, 255).astype(np.uint8))
        if progress is not None:
            progress(sum(len(m) for m in maps), len(image_paths))
    return np.concatenate(maps), np.concatenate(masks)


def _resize(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """float [h, w] -> float32 [height, width], bilinear with half-pixel centres (each
    map cell covers its 4x4 pixels of the input, as the features it came from)."""
    import tensorflow as tf

    resized = tf.image.resize(np.asarray(values, np.float32)[..., None], (height, width),
                              method="bilinear")
    return resized.numpy()[..., 0]


def colour_map(values: np.ndarray) -> np.ndarray:
    """float [...] in 0..1 -> uint8 [..., 3], the "jet" colour map (blue low, red high)."""
    v = np.clip(np.asarray(values, np.float32), 0.0, 1.0)[..., None]
    rgb = np.clip(1.5 - np.abs(4.0 * v - np.array([3.0, 2.0, 1.0], np.float32)), 0.0, 1.0)
    return np.rint(rgb * 255).astype(np.uint8)


def overlay(image: np.ndarray, phi: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """uint8 [H, W, 3]: Phi+ [h, w] (0..1), resized to the image and coloured, blended
    over `image` (uint8 [H, W, 3]) with weight `alpha`."""
    image = np.asarray(image)
    heat = colour_map(_resize(phi, image.shape[0], image.shape[1]))
    return np.rint((1 - alpha) * image + alpha * heat).astype(np.uint8)


def masked(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3]: the image with its background (mask [h, w] uint8, 0 = background)
    darkened to BACKGROUND_LEFT: the mask the model was given, over the image."""
    image = np.asarray(image)
    body = _resize(np.asarray(mask, np.float32) / MASK_SCALE, image.shape[0], image.shape[1])
    weight = BACKGROUND_LEFT + (1 - BACKGROUND_LEFT) * np.clip(body, 0, 1)[..., None]
    return np.rint(image * weight).astype(np.uint8)


def attention_tiles(image: np.ndarray, phi: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    """[the image, Phi+ over it, the mask over it], each uint8 of the image's size."""
    return [np.asarray(image), overlay(image, phi), masked(image, mask)]


def write_overlays(output_dir: str, image_paths: Sequence[str], maps: np.ndarray,
                   masks: np.ndarray, *, root: Optional[str] = None, height: int = 320,
                   width: int = 128) -> list[str]:
    """Writes, per image, a PNG of the image, Phi+ over it and the mask over it side by
    side (each `height` x `width`): `<output_dir>/<path below root, no extension>
    _attention.png` (root: the folder the images were listed from; None: the
    file name alone). Returns the files written, atomically each.

    Raises:
      DataError: an image that cannot be read (named).
    """
    from mgcam_tf.evaluation import reports

    written = []
    for path, phi, mask in zip(image_paths, maps, masks):
        name = os.path.relpath(path, root) if root else os.path.basename(path)
        picture = np.concatenate(attention_tiles(reports.read_tile(path, height, width), phi,
                                                 mask), axis=1)
        target = os.path.join(output_dir, os.path.splitext(name)[0] + "_attention.png")
        write_bytes(target, reports.encode_png(picture), make_parents=True)
        written.append(target)
    return written


AttentionLookup = Mapping[str, tuple[np.ndarray, np.ndarray]]
"""image path -> (Phi+ [40, 16], mask [160, 64]): what the sheets draw beside an image."""

PANELS = ("image", "Phi+ (attention)", "mask")


def lookup(image_paths: Sequence[str], maps: np.ndarray, masks: np.ndarray) -> dict:
    """The AttentionLookup of `attention_for_files`' results."""
    return {p: (phi, mask) for p, phi, mask in zip(image_paths, maps, masks)}


def sheet_panels(image: np.ndarray, path: str,
                 attention: Optional[AttentionLookup]) -> list[np.ndarray]:
    """What a sheet shows of an image: the image alone without `attention`, else its
    `attention_tiles` (an image missing from the lookup: itself, then white panels)."""
    if attention is None:
        return [image]
    if path not in attention:
        return [image] + [np.full_like(image, 255)] * (len(PANELS) - 1)
    return attention_tiles(image, *attention[path])
