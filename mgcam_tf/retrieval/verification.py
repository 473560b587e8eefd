"""Same person or not: a distance threshold calibrated on a validation split.

Two crops show the same person when the Euclidean distance between their
embeddings (h_full) is below `threshold`. The threshold is chosen on a
validation split (identities not trained on) so that the fraction of
different-person pairs accepted, the false-accept rate (FAR), is at most
`target_far`; the calibration records the FAR and the true-accept rate
(TAR) it measured there, and is stored with the export
(`assets.extra/mgcam_export.json`, key "verification").
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from mgcam_tf.errors import ConfigError, DataError

METADATA_KEY = "verification"
# All pairs of this many images are compared (about 4.5 million pairs);
# larger splits are subsampled, evenly and deterministically.
MAX_IMAGES = 3000


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A verification threshold and what it achieved on its validation split.

    Decision: same person iff distance < threshold (Euclidean on embeddings).
    far: false-accept rate measured (<= target_far); tar: true-accept rate.
    """

    threshold: float
    target_far: float
    far: float
    tar: float
    num_positive_pairs: int
    num_negative_pairs: int
    num_images: int
    num_ids: int
    source: str = ""
    distance: str = "euclidean"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, payload: dict, where: str = "calibration") -> "Calibration":
        try:
            return cls(**{f.name: payload[f.name] for f in dataclasses.fields(cls)
                          if f.name in payload})
        except TypeError as err:
            raise ConfigError(f"{where}: not a verification calibration ({err})") from None


def pair_distances(features: np.ndarray, pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distances of all same-id and all different-id pairs.

    Args:
      features: float [N, D]; pids: int [N].
    Returns:
      (positive float64 [P], negative float64 [M]), each pair once.
    """
    x = np.asarray(features, np.float64)
    sq = np.sum(x * x, axis=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    dist = np.sqrt(np.maximum(d2, 0.0))
    i, j = np.triu_indices(len(x), k=1)
    same = pids[i] == pids[j]
    return dist[i[same], j[same]], dist[i[~same], j[~same]]


def calibrate(features: np.ndarray, pids: np.ndarray, target_far: float = 0.01, *,
              source: str = "", max_images: int = MAX_IMAGES) -> Calibration:
    """The largest threshold whose false-accept rate on these images is <= target_far.

    Args:
      features: float [N, D] embeddings of a validation split.
      pids: int [N]; ids <= 0 (junk, distractors) are left out.
      target_far: wanted false-accept rate, in (0, 1).
      source: where the features came from (kept in the record).
      max_images: larger splits are subsampled evenly to this many images.

    Raises:
      ConfigError: target_far outside (0, 1).
      DataError: shapes disagree, or no same-id or no different-id pair.
    """
    if not 0.0 < target_far < 1.0:
        raise ConfigError(f"target_far must be in (0, 1), got {target_far}")
    features = np.asarray(features)
    pids = np.asarray(pids).astype(np.int64)
    if features.ndim != 2 or pids.shape != (features.shape[0],):
        raise DataError(f"calibration: features {features.shape} and ids {pids.shape} "
                        "do not line up ([N, D] and [N])")
    keep = pids > 0
    features, pids = features[keep], pids[keep]
    if len(pids) > max_images:
        pick = np.linspace(0, len(pids) - 1, max_images).round().astype(np.int64)
        features, pids = features[pick], pids[pick]
    positive, negative = pair_distances(features, pids)
    if positive.size == 0 or negative.size == 0:
        raise DataError(f"calibration{' on ' + source if source else ''}: needs at least "
                        "two ids and one id with two images (found "
                        f"{positive.size} same-id and {negative.size} different-id pairs)")
    negative = np.sort(negative)
    # Accept d < threshold: with threshold = the (k+1)-th smallest negative
    # distance, at most k = floor(target_far * M) negatives are accepted.
    k = int(np.floor(target_far * negative.size))
    threshold = float(negative[k]) if k < negative.size else float(np.inf)
    return Calibration(
        threshold=threshold, target_far=float(target_far),
        far=float(np.mean(negative < threshold)), tar=float(np.mean(positive < threshold)),
        num_positive_pairs=int(positive.size), num_negative_pairs=int(negative.size),
        num_images=int(len(pids)), num_ids=int(len(np.unique(pids))), source=source)


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance of two embeddings [D]."""
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))


def same_person(dist: float, threshold: float) -> bool:
    """The decision rule of `Calibration`: distance < threshold."""
    return dist < threshold


def from_metadata(metadata: dict, where: str = "export") -> Optional[Calibration]:
    """The calibration stored in an export's metadata, or None when there is none."""
    payload = metadata.get(METADATA_KEY)
    return None if payload is None else Calibration.from_json(payload, where)
