"""Which segmenter makes the masks: BlazePose-full (the recipe) or the distilled network.

- `blazepose`: BlazePose-full's segmentation on the 256x256 letterbox
  (`segmenter`, `graph_recipe` + `blazepose_graph`), the masks of
  ../shared/data; `model_path` names `pose_landmark_full.tflite` (or the
  mediapipe wheel).
- `distilled`: the small network trained on BlazePose's masks of the
  training crops (`distilled`), at the model's 160x64 input; `model_path`
  names its weights file (default: the one shipped in the package).

The default is the one whose measured agreement and retrieval figures meet
the quality bar (docs/PERFORMANCE.md, "Cheaper masks"); `$MGCAM_SEGMENTER`
overrides it for every command that makes masks, including those without a
--segmenter flag (mgcam-extract, mgcam-search, mgcam-verify's user images).
"""

from __future__ import annotations

import os
from typing import Callable, Optional

import numpy as np

from mgcam_tf.errors import ConfigError

BLAZEPOSE = "blazepose"
DISTILLED = "distilled"
SEGMENTERS = (BLAZEPOSE, DISTILLED)
DEFAULT_SEGMENTER = BLAZEPOSE
SEGMENTER_ENV = "MGCAM_SEGMENTER"


def check_segmenter(name: str) -> str:
    """The segmenter's name, checked.

    Raises:
      ConfigError: not one of SEGMENTERS.
    """
    if name not in SEGMENTERS:
        raise ConfigError(f"segmenter must be one of {', '.join(SEGMENTERS)}, got {name!r}")
    return name


def default_segmenter() -> str:
    """`$MGCAM_SEGMENTER` when set, else DEFAULT_SEGMENTER.

    Raises:
      ConfigError: the variable names no segmenter.
    """
    name = os.environ.get(SEGMENTER_ENV, "").strip()
    if not name:
        return DEFAULT_SEGMENTER
    try:
        return check_segmenter(name)
    except ConfigError:
        raise ConfigError(f"${SEGMENTER_ENV} must be one of {', '.join(SEGMENTERS)}, "
                          f"got {name!r}") from None


def resolve(name: Optional[str]) -> str:
    """`name` checked, or `default_segmenter()` when None or empty."""
    return check_segmenter(name) if name else default_segmenter()


def for_model_file(name: Optional[str], model_path: Optional[os.PathLike]) -> str:
    """The segmenter to run: `name` when given; else the one `model_path` is the
    model of (an HDF5 weights file: distilled; any other file: BlazePose's
    .tflite or wheel), so that callers that pass BlazePose's file keep
    BlazePose whatever the default; else `default_segmenter()`.

    Raises:
      ConfigError: an unknown name.
    """
    if name:
        return check_segmenter(name)
    if model_path:
        try:
            with open(model_path, "rb") as f:
                return DISTILLED if f.read(8) == b"\x89HDF\r\n\x1a\n" else BLAZEPOSE
        except OSError:
            return BLAZEPOSE    # a missing file is reported by the segmenter's loader
    return default_segmenter()


def crop_segmenter(name: Optional[str], model_path: Optional[os.PathLike] = None,
                   cache_dir: Optional[str] = None) -> Callable[[np.ndarray], np.ndarray]:
    """A one-crop segmenter: uint8 RGB [H, W, 3] -> uint8 mask [H, W] (0 / 255).

    Args:
      name: one of SEGMENTERS; None: `default_segmenter()`.
      model_path: the segmenter's model file (module doc); None: its default
        (BlazePose: `$MGCAM_MASK_MODEL`, else fetched into `cache_dir`).
        With `name` None it also picks the segmenter (`for_model_file`).

    Raises:
      ConfigError: an unknown name. DataError: the model cannot be had.
    """
    if for_model_file(name, model_path) == DISTILLED:
        from mgcam_tf.segmentation import distilled

        return distilled.DistilledSegmenter(model_path)
    from mgcam_tf.segmentation import model_file, segmenter

    return segmenter.BodySegmenter(model_file.resolve_model_path(
        str(model_path) if model_path else None, cache_dir))


__all__ = ["BLAZEPOSE", "DISTILLED", "SEGMENTERS", "DEFAULT_SEGMENTER", "SEGMENTER_ENV",
           "check_segmenter", "default_segmenter", "resolve", "for_model_file", "crop_segmenter"]
