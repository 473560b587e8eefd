"""Query-to-gallery distances: Euclidean, cosine, XQDA, KISSME, and re-ranking on top.

Every metric here is "squared Euclidean after a map of the features", which is
what lets k-reciprocal re-ranking (`rerank.py`) run on any of them without an
N x N matrix:

| metric | distance reported | `Metric.embed(x)` |
| --- | --- | --- |
| euclidean | ||a - b|| | x |
| cosine | 1 - cos(a, b) | x / ||x|| (squared distance = 2 (1 - cos)) |
| xqda | (a - b)^T M (a - b), M learned | x @ T with T T^T = M |
| kissme | (a - b)^T M (a - b), M learned | x @ T with T T^T = M |

Re-ranking works on the squared embedded distance, as Zhong et al.'s code
does (squared Euclidean; `MahDist` for XQDA in their MATLAB code); its row
normalisation makes the factor 2 of cosine irrelevant.

XQDA (Liao, Hu, Zhu, Li, CVPR 2015) and KISSME (Koestinger et al., CVPR 2012)
are learned on training features with ids. Both use the intra- and
extra-class covariances of feature differences over *all* ordered pairs of
distinct training samples, computed in closed form (no pair enumeration):
over pairs in a set with n items, sum (x_i - x_j)(x_i - x_j)^T = 2 n S - 2 s s^T
with S = sum x x^T and s = sum x.

- XQDA: Sigma_I += lambda I (lambda = 0.001); subspace W = generalized
  eigenvectors of (Sigma_E, Sigma_I) with eigenvalue > 1 (the paper's
  criterion; the authors' MATLAB takes an SVD of Sigma_I^-1 Sigma_E instead,
  whose vectors differ slightly), then
  M = W (W^T Sigma_I W)^-1 W^T - W (W^T Sigma_E W)^-1 W^T.
- KISSME: M = Sigma_S^-1 - Sigma_D^-1, projected onto the PSD cone (negative
  eigenvalues clipped), as the authors' code does.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import scipy.linalg

from mgcam_tf.errors import ConfigError, DataError
from mgcam_tf.evaluation.feature_matrix import feature_matrix

BASE_METRICS = ("euclidean", "cosine", "xqda", "kissme")
METRICS = ("euclidean", "cosine", "xqda", "kissme", "rerank", "euclidean+rerank",
           "cosine+rerank", "xqda+rerank", "kissme+rerank")
LEARNED = ("xqda", "kissme")


def parse_metric(metric: str) -> tuple[str, bool]:
    """`"xqda+rerank"` -> ("xqda", True); `"rerank"` -> ("euclidean", True)."""
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {', '.join(METRICS)}; got {metric!r}")
    if metric == "rerank":
        return "euclidean", True
    base, _, rr = metric.partition("+")
    return base, rr == "rerank"


@dataclasses.dataclass(frozen=True)
class Metric:
    """A distance of the family in the module doc.

    Attributes:
      name: one of BASE_METRICS.
      transform: float64 [D, K] with transform @ transform.T = M (xqda, kissme), else None.
      matrix: float64 [D, D] M (xqda, kissme), else None.
    """

    name: str
    transform: np.ndarray | None = None
    matrix: np.ndarray | None = None

    def embed(self, x: np.ndarray) -> np.ndarray:
        """float64 [N, K] features whose squared Euclidean distance is this metric's squared form."""
        x = feature_matrix("features", x)
        if self.name == "cosine":
            norm = np.linalg.norm(x, axis=1, keepdims=True)
            return x / np.where(norm > 0, norm, 1.0)
        if self.transform is not None:
            if x.shape[1] != self.transform.shape[0]:
                raise DataError(f"features have dim {x.shape[1]}, the learned {self.name} "
                                f"metric expects {self.transform.shape[0]}")
            return x @ self.transform
        return x

    def distance(self, query: np.ndarray, gallery: np.ndarray,
                 block_size: int = 1024) -> np.ndarray:
        """float32 [Q, G] distances as in the module table."""
        q, g = self.embed(query), self.embed(gallery)
        if q.shape[1] != g.shape[1]:
            raise DataError(f"query features dim {q.shape[1]} != gallery features dim {g.shape[1]}")
        out = np.empty((q.shape[0], g.shape[0]), dtype=np.float32)
        sq_g = np.einsum("ij,ij->i", g, g)
        for s in range(0, q.shape[0], block_size):
            qb = q[s:s + block_size]
            d = qb @ g.T
            if self.name == "cosine":
                out[s:s + block_size] = 1.0 - d
                continue
            d *= -2.0
            d += np.einsum("ij,ij->i", qb, qb)[:, None]
            d += sq_g[None, :]
            np.maximum(d, 0.0, out=d)
            if self.name == "euclidean":
                np.sqrt(d, out=d)
            out[s:s + block_size] = d
        return out


def pair_covariances(features: np.ndarray, pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean outer products of differences over same-id and different-id ordered pairs.

    Args:
      features: float [N, D]; pids: int [N].
    Returns:
      (intra [D, D], extra [D, D]) float64.
    Raises:
      DataError: fewer than one same-id or one different-id pair.
    """
    x = feature_matrix("train_features", features)
    pids = np.asarray(pids)
    if pids.shape != (x.shape[0],):
        raise DataError(f"train_pids must have shape ({x.shape[0]},), got {pids.shape}")
    n = x.shape[0]
    _, inv, counts = np.unique(pids, return_inverse=True, return_counts=True)
    class_sum = np.zeros((counts.size, x.shape[1]))
    np.add.at(class_sum, inv, x)
    # sum over classes of n_c * S_c, with S_c = sum of x x^T over the class.
    weighted = x * np.sqrt(counts[inv])[:, None]
    intra_sum = 2.0 * (weighted.T @ weighted) - 2.0 * (class_sum.T @ class_sum)
    total = x.sum(axis=0)
    all_sum = 2.0 * n * (x.T @ x) - 2.0 * np.outer(total, total)
    n_intra = float(np.sum(counts * (counts - 1)))
    n_extra = float(n * (n - 1)) - n_intra
    if n_intra == 0:
        raise DataError("train_pids: no id has two samples, cannot learn a metric")
    if n_extra == 0:
        raise DataError("train_pids: a single id, cannot learn a metric")
    return intra_sum / n_intra, (all_sum - intra_sum) / n_extra


def _psd_factor(m: np.ndarray) -> np.ndarray:
    """T with T T^T = the PSD part of symmetric m (negative eigenvalues clipped)."""
    m = (m + m.T) / 2.0
    vals, vecs = scipy.linalg.eigh(m)
    keep = vals > 0
    return vecs[:, keep] * np.sqrt(vals[keep])[None, :]


def learn_xqda(features: np.ndarray, pids: np.ndarray, *, ridge: float = 1e-3,
               dims: int = -1) -> Metric:
    """XQDA (module doc) on training features [N, D] with ids [N].

    Args:
      ridge: lambda added to the intra-class covariance (Liao et al.: 0.001).
      dims: subspace size; <= 0 keeps every direction with eigenvalue > 1
        (at least one), larger values are capped at that count.
    """
    if ridge < 0:
        raise ConfigError(f"xqda ridge must be >= 0, got {ridge}")
    intra, extra = pair_covariances(features, pids)
    intra = intra + ridge * np.eye(intra.shape[0])
    vals, vecs = scipy.linalg.eigh(extra, intra)   # extra w = val * intra w
    order = np.argsort(vals)[::-1]
    vals, vecs = vals[order], vecs[:, order]
    r = int(np.sum(vals > 1.0))
    if r == 0:
        # No direction where different ids differ more than the same id: the
        # metric would be empty (all distances 0), not merely weak.
        raise DataError("XQDA: no direction separates the training ids (no generalised "
                        "eigenvalue above 1); check train_features and train_pids")
    r = r if dims <= 0 else min(dims, r)
    w = vecs[:, :r]
    m_sub = np.linalg.inv(w.T @ intra @ w) - np.linalg.inv(w.T @ extra @ w)
    t_sub = _psd_factor(m_sub)
    transform = w @ t_sub
    return Metric("xqda", transform=transform, matrix=transform @ transform.T)


def learn_kissme(features: np.ndarray, pids: np.ndarray, *, ridge: float = 1e-6) -> Metric:
    """KISSME (module doc) on training features [N, D] with ids [N].

    Args:
      ridge: added to both covariances, relative to their mean diagonal,
        so that they can be inverted.
    """
    similar, dissimilar = pair_covariances(features, pids)
    eye = np.eye(similar.shape[0])
    similar = similar + ridge * np.trace(similar) / len(eye) * eye
    dissimilar = dissimilar + ridge * np.trace(dissimilar) / len(eye) * eye
    m = scipy.linalg.inv(similar, check_finite=False) - scipy.linalg.inv(dissimilar, check_finite=False)
    transform = _psd_factor(m)
    return Metric("kissme", transform=transform, matrix=transform @ transform.T)


def make_metric(name: str, train_features: np.ndarray | None = None,
                train_pids: np.ndarray | None = None) -> Metric:
    """The base metric `name` (BASE_METRICS), learning XQDA/KISSME on the training set."""
    if name not in BASE_METRICS:
        raise ConfigError(f"base metric must be one of {BASE_METRICS}, got {name!r}")
    if name in LEARNED:
        if train_features is None or train_pids is None:
            raise ConfigError(f"metric {name!r} is learned: it needs train_features and train_pids")
        return learn_xqda(train_features, train_pids) if name == "xqda" \
            else learn_kissme(train_features, train_pids)
    return Metric(name)


def compute_distances(query_features: np.ndarray, gallery_features: np.ndarray,
                      metric: str = "euclidean", *, train_features: np.ndarray | None = None,
                      train_pids: np.ndarray | None = None, k1: int = 20, k2: int = 6,
                      lambda_value: float = 0.3,
                      progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """float32 [Q, G] distances for any name in METRICS (module doc).

    `rerank` alone is Euclidean + re-ranking; `xqda+rerank` is the paper's default.
    """
    from mgcam_tf.evaluation import rerank as rerank_lib  # the heavier module, only when asked

    base, use_rerank = parse_metric(metric)
    q = feature_matrix("query_features", query_features)
    g = feature_matrix("gallery_features", gallery_features)
    if q.shape[1] != g.shape[1]:
        raise DataError(f"query_features dim {q.shape[1]} != gallery_features dim {g.shape[1]}")
    m = make_metric(base, train_features, train_pids)
    if not use_rerank:
        return m.distance(q, g)
    return rerank_lib.rerank(m.embed(q), m.embed(g), k1=k1, k2=k2,
                             lambda_value=lambda_value, progress=progress)
