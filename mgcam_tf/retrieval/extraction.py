"""Features of every image under a folder, on disk, resumable and atomic.

An output folder holds
  features.npy     float32 [N, D], row i the embedding of manifest row i
  manifest.csv     index,path,pid,camid,mask (pid/camid -1 when the file
                   name says nothing; mask: the mask file used, or empty
                   for none)
  stamps.npy       int64 [N, 4]: size and mtime (ns) of each image and of its
                   mask file (-1, -1 for none) when it was embedded
  extraction.json  the image folder, the export and its fingerprint, N, D
  masks/           masks made by the segmenter for images without one

A rerun into a finished folder embeds only what changed: images added,
images whose size or mtime differ from the recorded stamps (overwritten in
place; their generated masks are made again), images whose mask file
changed; removed images leave the result. Rows whose image, mask and model
are unchanged are reused. Features that are not finite (NaN, Inf) are
refused wherever they enter: embedding, reading a folder, an index.

Images are embedded in chunks; each chunk is saved as `.parts/part-NNNNN.npz`
(written to a temporary name and renamed), so a killed run started again
embeds only the chunks it had not finished. The three result files are
written the same way (temporary name, rename), `extraction.json` last, and
the parts are removed after it: a folder with `extraction.json` is complete.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import shutil
import zipfile
from typing import Callable, Optional, Sequence

import numpy as np

from mgcam_tf.retrieval import user_images
from mgcam_tf.errors import ConfigError, DataError
from mgcam_tf import atomic_files

FEATURES_FILE = "features.npy"
MANIFEST_FILE = "manifest.csv"
INFO_FILE = "extraction.json"
STAMPS_FILE = "stamps.npy"
PARTS_DIR = ".parts"
MASKS_DIR = "masks"
MANIFEST_COLUMNS = ("index", "path", "pid", "camid", "mask")


@dataclasses.dataclass(frozen=True)
class FeatureSet:
    """Embeddings of image files with what their names say.

    features: float32 [N, D]; paths: N image files; pids, camids: int64 [N]
    (-1 unknown); masks: N mask files ("" for none).
    """

    features: np.ndarray
    paths: tuple[str, ...]
    pids: np.ndarray
    camids: np.ndarray
    masks: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _manifest_bytes(paths, pids, camids, masks) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for i, row in enumerate(zip(paths, pids, camids, masks)):
        writer.writerow([i, row[0], int(row[1]), int(row[2]), row[3] or ""])
    return text.getvalue().encode()


def refuse_non_finite(features: np.ndarray, paths: Sequence[str], source: str) -> None:
    """DataError naming the first row (and its image) of float [N, D] that holds NaN or Inf.

    A NaN row would rank anywhere (distance nan) without a word.
    """
    bad = ~np.isfinite(np.asarray(features)).all(axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        name = paths[row] if row < len(paths) else "?"
        raise DataError(f"{source}: row {row} ({name}) holds NaN or Inf "
                        f"({int(bad.sum())} such rows); extract the features again")


def _stamp(path: Optional[str]) -> tuple[int, int]:
    """(size, mtime ns) of a file; (-1, -1) for no file (no mask, a mask made in the graph)."""
    if not path or not os.path.isfile(path):
        return (-1, -1)
    info = os.stat(path)
    return (int(info.st_size), int(info.st_mtime_ns))


def file_stamps(paths: Sequence[str], masks: Sequence[Optional[str]]) -> np.ndarray:
    """int64 [N, 4]: `_stamp` of each image and of its mask."""
    return np.array([(*_stamp(p), *_stamp(m)) for p, m in zip(paths, masks)],
                    np.int64).reshape(-1, 4)


def _read_part(path: str, expected_paths: Sequence[str], fingerprint: str,
               stamps: np.ndarray) -> Optional[np.ndarray]:
    """The features of a finished chunk, or None when it is not this chunk's."""
    try:
        with np.load(path, allow_pickle=False) as part:
            if str(part["fingerprint"]) != fingerprint:
                return None
            if part["paths"].tolist() != list(expected_paths):
                return None
            if "stamps" not in part or not np.array_equal(part["stamps"], stamps):
                return None
            return part["features"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None      # unreadable or truncated (a kill mid-write): embed the chunk again


def extract_folder(embedder, image_dir: str, output_dir: str, *, mask_policy: str = "auto",
                   segmenter=None, model_path: Optional[str] = None, batch_size: int = 64,
                   chunk_size: int = 1024,
                   progress: Optional[Callable[[int, int], None]] = None) -> FeatureSet:
    """Embeds every image under `image_dir` into `output_dir` (module doc).

    Args:
      embedder: a `mgcam_tf.serving.loader.SavedModelEmbedder`.
      image_dir: the folder (searched recursively; `*_seg` folders skipped).
      output_dir: the result folder (created).
      mask_policy, segmenter, model_path: see `mgcam_tf.retrieval.user_images.resolve_masks`;
        generated masks go to `output_dir/masks/`.
      chunk_size: images per saved part (the unit of resuming).
      progress: called with (images done, N), counting resumed chunks.

    Returns:
      The FeatureSet written.

    Raises:
      DataError: no images, an unreadable image, an unwritable folder.
      ConfigError: bad sizes or policy.
    """
    if chunk_size < 1 or batch_size < 1:
        raise ConfigError(f"chunk_size and batch_size must be >= 1, got {chunk_size}, {batch_size}")
    paths = user_images.list_images(image_dir)
    fingerprint = embedder.fingerprint
    masks_dir = os.path.join(output_dir, MASKS_DIR)
    previous = _previous_rows(output_dir, fingerprint)
    for path in paths:
        # An image overwritten in place needs its generated mask made again.
        old = previous.get(path)
        if old is not None and old[0][:2] != _stamp(path) and old[1].startswith(masks_dir):
            with contextlib.suppress(OSError):
                os.remove(old[1])
    try:
        os.makedirs(os.path.join(output_dir, PARTS_DIR), exist_ok=True)
    except OSError as err:
        raise DataError(f"{output_dir}: cannot create the output folder ({err.strerror})") from None
    # An export with the mask model in its graph makes the missing masks itself.
    in_graph = segmenter is None and getattr(embedder, "has_mask_in_graph", False)
    masks = user_images.resolve_masks(paths, mask_policy, cache_dir=masks_dir,
                                      segmenter=segmenter, model_path=model_path,
                                      in_graph=in_graph)
    stamps = file_stamps(paths, masks)
    features = np.zeros((len(paths), 0), np.float32)
    todo = []
    for i, (path, mask) in enumerate(zip(paths, masks)):
        old = previous.get(path)
        if old is not None and old[0] == tuple(stamps[i]) and old[1] == (mask or ""):
            if features.shape[1] == 0:
                features = np.zeros((len(paths), len(old[2])), np.float32)
            features[i] = old[2]
        else:
            todo.append(i)
    if not todo and list(previous) == paths:
        shutil.rmtree(os.path.join(output_dir, PARTS_DIR), ignore_errors=True)
        if progress is not None:
            progress(len(paths), len(paths))
        return load_features(output_dir)
    for start in range(0, len(todo), chunk_size):
        rows = todo[start:start + chunk_size]
        chunk_paths = [paths[i] for i in rows]
        chunk_masks = [masks[i] for i in rows]
        part_path = os.path.join(output_dir, PARTS_DIR, f"part-{start // chunk_size:05d}.npz")
        chunk = _read_part(part_path, chunk_paths, fingerprint, stamps[rows])
        if chunk is None:
            def chunk_progress(done, _total, start=start):
                if progress is not None:
                    progress(len(paths) - len(todo) + start + done, len(paths))

            if in_graph:
                chunk = embedder.embed_images(chunk_paths, chunk_masks, batch_size=batch_size)
                chunk_progress(len(rows), None)
            else:
                chunk = embedder.embed_files(chunk_paths, chunk_masks, batch_size=batch_size,
                                             progress=chunk_progress)
            refuse_non_finite(chunk, chunk_paths, f"{embedder.export_dir}: the model's features")
            buffer = io.BytesIO()
            np.savez(buffer, features=chunk, paths=np.array(chunk_paths),
                     fingerprint=np.array(fingerprint), stamps=stamps[rows])
            atomic_files.write_bytes(part_path, buffer.getvalue())
        elif progress is not None:
            progress(len(paths) - len(todo) + start + len(rows), len(paths))
        if features.shape[1] == 0:
            features = np.zeros((len(paths), chunk.shape[1]), np.float32)
        features[rows] = chunk
    result = write_feature_folder(output_dir, features, paths, masks, image_dir=image_dir,
                                  export=str(embedder.export_dir), fingerprint=fingerprint,
                                  mask_policy=mask_policy, stamps=stamps)
    shutil.rmtree(os.path.join(output_dir, PARTS_DIR), ignore_errors=True)
    return result


def _previous_rows(output_dir: str, fingerprint: str) -> dict[str, tuple[tuple, str, np.ndarray]]:
    """{image path: (stamps, mask, feature)} of a finished folder of the same model, in its
    order; {} when there is none (or it predates the stamps: everything is embedded again)."""
    if not is_feature_folder(output_dir) or not os.path.isfile(
            os.path.join(output_dir, STAMPS_FILE)):
        return {}
    try:
        if read_fingerprint(output_dir) != fingerprint:
            return {}
        done = load_features(output_dir)
        stamps = np.load(os.path.join(output_dir, STAMPS_FILE), allow_pickle=False)
    except (DataError, OSError, ValueError):
        return {}      # unreadable: embed everything again
    if stamps.shape != (len(done), 4):
        return {}
    return {path: (tuple(stamp), mask, feature)
            for path, stamp, mask, feature in zip(done.paths, stamps, done.masks, done.features)}


def write_feature_folder(output_dir: str, features: np.ndarray, paths: Sequence[str],
                         masks: Sequence[Optional[str]], *, image_dir: str, export: str,
                         fingerprint: str, mask_policy: str,
                         stamps: Optional[np.ndarray] = None) -> FeatureSet:
    """Writes the result files of a finished extraction (module doc),
    `extraction.json` last; ids and cameras read off the names.

    `stamps`: `file_stamps` of the images and masks as they were embedded
    (None: read now).

    Also the merge step of `mgcam_tf.retrieval.distributed_extraction`.
    """
    features = np.asarray(features, np.float32)
    paths = [str(p) for p in paths]
    refuse_non_finite(features, paths, f"{export}: the model's features")
    if stamps is None:
        stamps = file_stamps(paths, masks)
    ids = [user_images.identity_of(p) for p in paths]
    pids = np.array([i[0] for i in ids], np.int64)
    camids = np.array([i[1] for i in ids], np.int64)
    mask_names = [m or "" for m in masks]
    atomic_files.write_bytes(os.path.join(output_dir, FEATURES_FILE), _npy_bytes(features))
    atomic_files.write_bytes(os.path.join(output_dir, MANIFEST_FILE),
                  _manifest_bytes(paths, pids, camids, mask_names))
    atomic_files.write_bytes(os.path.join(output_dir, STAMPS_FILE),
                             _npy_bytes(np.asarray(stamps, np.int64)))
    info = {"image_dir": os.path.abspath(image_dir), "export": export,
            "fingerprint": fingerprint, "num_images": len(paths),
            "feature_dim": int(features.shape[1]), "mask_policy": mask_policy,
            "files": {"features": FEATURES_FILE, "manifest": MANIFEST_FILE,
                      "stamps": STAMPS_FILE}}
    atomic_files.write_bytes(os.path.join(output_dir, INFO_FILE),
                             (json.dumps(info, indent=2, sort_keys=True) + "\n").encode())
    return FeatureSet(features, tuple(paths), pids, camids, tuple(mask_names))


def read_fingerprint(output_dir: str) -> str:
    """The model fingerprint a finished feature folder's extraction.json records."""
    path = os.path.join(output_dir, INFO_FILE)
    try:
        return str(json.loads(open(path).read())["fingerprint"])
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"{path}: no model fingerprint ({err})") from None


def is_feature_folder(path: str) -> bool:
    """Whether `path` is a finished output folder of `extract_folder`."""
    return os.path.isfile(os.path.join(path, INFO_FILE)) and \
        os.path.isfile(os.path.join(path, FEATURES_FILE))


def load_features(output_dir: str) -> FeatureSet:
    """Reads an output folder of `extract_folder`.

    Raises:
      DataError: files missing, unreadable, or disagreeing in length.
    """
    features_path = os.path.join(output_dir, FEATURES_FILE)
    manifest_path = os.path.join(output_dir, MANIFEST_FILE)
    if not is_feature_folder(output_dir):
        raise DataError(f"{output_dir}: not a finished feature folder ({INFO_FILE} and "
                        f"{FEATURES_FILE} missing); run mgcam-extract")
    try:
        features = np.load(features_path, allow_pickle=False)
        with open(manifest_path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{output_dir}: cannot read the features ({err or type(err).__name__})") \
            from None
    if features.ndim != 2 or len(rows) != len(features):
        raise DataError(f"{output_dir}: {FEATURES_FILE} has shape {features.shape} but "
                        f"{MANIFEST_FILE} {len(rows)} rows")
    if features.dtype.kind not in "fiu":
        raise DataError(f"{features_path}: holds {features.dtype} values, not numbers")
    refuse_non_finite(features, [r.get("path", "?") for r in rows], features_path)
    try:
        return FeatureSet(features.astype(np.float32), tuple(r["path"] for r in rows),
                          np.array([int(r["pid"]) for r in rows], np.int64),
                          np.array([int(r["camid"]) for r in rows], np.int64),
                          tuple(r["mask"] for r in rows))
    except (KeyError, ValueError) as err:
        raise DataError(f"{manifest_path}: malformed row ({err}); expected columns "
                        f"{', '.join(MANIFEST_COLUMNS)}") from None
