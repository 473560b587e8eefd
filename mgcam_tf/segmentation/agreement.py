"""How closely one segmenter's masks agree with reference masks: per-image IoU.

The quality bar of a faster segmenter is its agreement with BlazePose-full's
masks (the ones in ../shared/data, made by `segmenter.BodySegmenter`) on
crops it was not trained on.
"""

from __future__ import annotations

import numpy as np


def mask_iou(mask: np.ndarray, reference: np.ndarray) -> float:
    """Intersection over union of two 0/255 (or boolean) masks [H, W] of one size.

    Two empty masks agree fully (1.0).

    Raises:
      ValueError: the shapes differ.
    """
    if mask.shape != reference.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the reference's "
                         f"{reference.shape}")
    ours, ref = np.asarray(mask) > 127, np.asarray(reference) > 127
    union = int((ours | ref).sum())
    return 1.0 if union == 0 else float((ours & ref).sum()) / union


def read_mask(path: str) -> np.ndarray:
    """A mask file as uint8 [H, W] (its first channel)."""
    import tensorflow as tf

    from mgcam_tf.image_io import decode_mask

    return decode_mask(tf.io.read_file(path)).numpy()[..., 0]


def mean_iou(mask_paths, reference_paths) -> float:
    """Mean per-image IoU of mask files against reference mask files (paired lists)."""
    ious = [mask_iou(read_mask(str(m)), read_mask(str(r)))
            for m, r in zip(mask_paths, reference_paths, strict=True)]
    if not ious:
        raise ValueError("mean_iou: no masks given")
    return float(np.mean(ious))


def ious_of_pngs(pngs: dict, reference_paths, image_paths) -> list[float]:
    """Per-image IoU of PNG-encoded masks (`{image path: PNG bytes}`, e.g. from
    `distilled.mask_pngs`) against the reference mask files of those images.

    Raises:
      ValueError: an image has no mask in `pngs`.
    """
    import tensorflow as tf

    ious = []
    for image, reference in zip(image_paths, reference_paths, strict=True):
        if image not in pngs:
            raise ValueError(f"{image}: no mask was made")
        ours = tf.io.decode_png(pngs[image], channels=1).numpy()[..., 0]
        ious.append(mask_iou(ours, read_mask(str(reference))))
    return ious


__all__ = ["mask_iou", "read_mask", "mean_iou", "ious_of_pngs"]
