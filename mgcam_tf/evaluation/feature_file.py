"""The features file: an .npz of one data set's query, gallery (and training) features.

Keys: query_features, query_pids, query_camids, gallery_features,
gallery_pids, gallery_camids (required); train_features, train_pids,
train_camids (the learned metrics; train_camids for their cross-camera
pairs); query_paths, gallery_paths (ranked-list pictures);
model_fingerprint (the model that produced them). `mgcam-eval
--save_features` writes it; `mgcam-eval --features` reads it.
"""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np

from mgcam_tf import atomic_files
from mgcam_tf.errors import ConfigError, DataError
from mgcam_tf.evaluation.features import SplitFeatures

REQUIRED = ("query_features", "query_pids", "query_camids",
            "gallery_features", "gallery_pids", "gallery_camids")
TRAIN_KEYS = ("train_features", "train_pids")
FINGERPRINT_KEY = "model_fingerprint"


def read(path: str, *, label: str | None = None, train_needed_by: str = "",
         camids_needed_by: str = "", need_paths: bool = False) -> dict:
    """The arrays of a features file, checked.

    Args:
      label: how messages name the file (default: the path).
      train_needed_by: when not empty, the train keys are required, and a
        missing one's message says this needs them.
      camids_needed_by: with train_needed_by, when not empty, train_camids is
        required too (cross-camera pairs), and its message says what needs it.
      need_paths: query_paths and gallery_paths required.
    Raises:
      ConfigError: a missing file or key; DataError: not a readable .npz.
    """
    label = label or path
    if not os.path.isfile(path):
        raise ConfigError(f"{label}: file not found")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an .npz of named arrays")
        with loaded as npz:
            data = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        why = str(err) or type(err).__name__
        raise DataError(f"{label}: not a readable .npz, truncated or another "
                        f"format ({why})") from None
    for key in REQUIRED:
        if key not in data:
            raise ConfigError(f"{label}: missing key {key!r}")
    if train_needed_by:
        for key in TRAIN_KEYS:
            if key not in data:
                raise ConfigError(f"{label}: missing key {key!r}, needed by {train_needed_by}")
        if camids_needed_by and "train_camids" not in data:
            raise ConfigError(f"{label}: missing key 'train_camids', needed by "
                              f"{camids_needed_by}")
    if need_paths:
        for key in ("query_paths", "gallery_paths"):
            if key not in data:
                raise ConfigError(f"{label}: missing key {key!r}, needed by --ranked_png")
    return data


def write(path: str, data: dict) -> None:
    """The array values of `data` as an .npz at `path` (atomically)."""
    buffer = io.BytesIO()
    np.savez(buffer, **{k: v for k, v in data.items() if isinstance(v, np.ndarray)})
    atomic_files.write_bytes(path, buffer.getvalue())


def arrays_of(name: str, items: SplitFeatures) -> dict:
    """The file's keys for one split ("query", "gallery", "train")."""
    return {f"{name}_features": items.features, f"{name}_pids": items.pids,
            f"{name}_camids": items.camids, f"{name}_paths": np.array(items.paths, dtype=str)}


def paths(data: dict, key: str) -> list[str]:
    """A paths array as str (an .npz written elsewhere may hold bytes)."""
    return [p.decode() if isinstance(p, bytes) else str(p) for p in data[key].tolist()]


def splits(data: dict) -> tuple[SplitFeatures, SplitFeatures, SplitFeatures | None]:
    """Query, gallery and (when present) train items of a file's arrays.

    The train items' cameras are None when the file has no train_camids
    (files written before they were saved): only cross-camera pairs need them.
    """
    def items(split):
        return SplitFeatures(np.asarray(data[f"{split}_features"]),
                             np.asarray(data[f"{split}_pids"]),
                             np.asarray(data[f"{split}_camids"]),
                             tuple(paths(data, f"{split}_paths"))
                             if f"{split}_paths" in data else ())

    train = None
    if "train_features" in data:
        camids = data.get("train_camids")
        train = SplitFeatures(np.asarray(data["train_features"]),
                              np.asarray(data["train_pids"]),
                              None if camids is None else np.asarray(camids), ())
    return items("query"), items("gallery"), train
