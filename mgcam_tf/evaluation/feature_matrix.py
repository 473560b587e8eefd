"""The one check of a feature matrix, shared by distances, re-ranking and the evaluator."""

from __future__ import annotations

import numpy as np

from mgcam_tf.errors import DataError


def feature_matrix(name: str, x) -> np.ndarray:
    """x as float64 [n, dim]; DataError naming `name` if it is not 2-D or not finite."""
    raw = np.asarray(x)
    if raw.dtype.kind not in "biuf":    # strings, objects: not a conversion traceback
        raise DataError(f"{name} must hold numbers, got {raw.dtype} values")
    x = raw.astype(np.float64, copy=False)
    if x.ndim != 2:
        raise DataError(f"{name} must be 2-D [n, dim], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{name} holds non-finite values")
    return x
