"""Features of every image under a folder, on disk, resumable and atomic.

An output folder holds
  features.npy     float32 [N, D], row i the embedding of manifest row i
  manifest.csv     index,path,pid,camid,mask (pid/camid -1 when the file
                   name says nothing; mask: the mask file used, or empty
                   for none)
  extraction.json  the image folder, the export and its fingerprint, N, D
  masks/           masks made by the segmenter for images without one

Images are embedded in chunks; each chunk is saved as `.parts/part-NNNNN.npz`
(written to a temporary name and renamed), so a killed run started again
embeds only the chunks it had not finished. The three result files are
written the same way (temporary name, rename), `extraction.json` last, and
the parts are removed after it: a folder with `extraction.json` is complete.
"""

from __future__ import annotations

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


def _read_part(path: str, expected_paths: Sequence[str], fingerprint: str) -> Optional[np.ndarray]:
    """The features of a finished chunk, or None when it is not this chunk's."""
    try:
        with np.load(path, allow_pickle=False) as part:
            if str(part["fingerprint"]) != fingerprint:
                return None
            if part["paths"].tolist() != list(expected_paths):
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
    info_path = os.path.join(output_dir, INFO_FILE)
    if os.path.isfile(info_path):
        try:
            info = json.loads(open(info_path).read())
        except (OSError, ValueError):
            info = {}
        if info.get("fingerprint") == fingerprint and info.get("num_images") == len(paths):
            done = load_features(output_dir)
            if list(done.paths) == paths:
                if progress is not None:
                    progress(len(paths), len(paths))
                return done
    try:
        os.makedirs(os.path.join(output_dir, PARTS_DIR), exist_ok=True)
    except OSError as err:
        raise DataError(f"{output_dir}: cannot create the output folder ({err.strerror})") from None
    # An export with the mask model in its graph makes the missing masks itself.
    in_graph = segmenter is None and getattr(embedder, "has_mask_in_graph", False)
    masks = user_images.resolve_masks(paths, mask_policy,
                                      cache_dir=os.path.join(output_dir, MASKS_DIR),
                                      segmenter=segmenter, model_path=model_path,
                                      in_graph=in_graph)
    chunks = []
    for start in range(0, len(paths), chunk_size):
        stop = min(start + chunk_size, len(paths))
        part_path = os.path.join(output_dir, PARTS_DIR, f"part-{start // chunk_size:05d}.npz")
        features = _read_part(part_path, paths[start:stop], fingerprint)
        if features is None:
            def chunk_progress(done, _total, start=start):
                if progress is not None:
                    progress(start + done, len(paths))

            if in_graph:
                features = embedder.embed_images(paths[start:stop], masks[start:stop],
                                                 batch_size=batch_size)
                chunk_progress(stop - start, None)
            else:
                features = embedder.embed_files(paths[start:stop], masks[start:stop],
                                                batch_size=batch_size, progress=chunk_progress)
            buffer = io.BytesIO()
            np.savez(buffer, features=features, paths=np.array(paths[start:stop]),
                     fingerprint=np.array(fingerprint))
            atomic_files.write_bytes(part_path, buffer.getvalue())
        elif progress is not None:
            progress(stop, len(paths))
        chunks.append(features)
    features = np.concatenate(chunks).astype(np.float32)
    result = write_feature_folder(output_dir, features, paths, masks, image_dir=image_dir,
                                  export=str(embedder.export_dir), fingerprint=fingerprint,
                                  mask_policy=mask_policy)
    shutil.rmtree(os.path.join(output_dir, PARTS_DIR), ignore_errors=True)
    return result


def write_feature_folder(output_dir: str, features: np.ndarray, paths: Sequence[str],
                         masks: Sequence[Optional[str]], *, image_dir: str, export: str,
                         fingerprint: str, mask_policy: str) -> FeatureSet:
    """Writes the three result files of a finished extraction (module doc),
    `extraction.json` last; ids and cameras read off the names.

    Also the merge step of `mgcam_tf.retrieval.distributed_extraction`.
    """
    features = np.asarray(features, np.float32)
    paths = [str(p) for p in paths]
    ids = [user_images.identity_of(p) for p in paths]
    pids = np.array([i[0] for i in ids], np.int64)
    camids = np.array([i[1] for i in ids], np.int64)
    mask_names = [m or "" for m in masks]
    atomic_files.write_bytes(os.path.join(output_dir, FEATURES_FILE), _npy_bytes(features))
    atomic_files.write_bytes(os.path.join(output_dir, MANIFEST_FILE),
                  _manifest_bytes(paths, pids, camids, mask_names))
    info = {"image_dir": os.path.abspath(image_dir), "export": export,
            "fingerprint": fingerprint, "num_images": len(paths),
            "feature_dim": int(features.shape[1]), "mask_policy": mask_policy,
            "files": {"features": FEATURES_FILE, "manifest": MANIFEST_FILE}}
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
    try:
        return FeatureSet(features.astype(np.float32), tuple(r["path"] for r in rows),
                          np.array([int(r["pid"]) for r in rows], np.int64),
                          np.array([int(r["camid"]) for r in rows], np.int64),
                          tuple(r["mask"] for r in rows))
    except (KeyError, ValueError) as err:
        raise DataError(f"{manifest_path}: malformed row ({err}); expected columns "
                        f"{', '.join(MANIFEST_COLUMNS)}") from None
