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
are learned on training features with ids. Both use covariances of feature
differences over pairs of training samples, computed in closed form (no pair
enumeration): over ordered pairs in a set with n items,
sum (x_i - x_j)(x_i - x_j)^T = 2 n S - 2 s s^T with S = sum x x^T, s = sum x.

Which pairs (`pairs=`, `PAIR_RULES`):

- ``"all"`` (default): every ordered pair of distinct training samples;
  same id = intra-class (similar), other id = extra-class (dissimilar).
- ``"cross_camera"``: only pairs of two different cameras, as the official
  pipelines learn from a probe view against a gallery view (Liao's LOMO+XQDA
  demo calls `XQDA(galX, probX, galLabels, probLabels)` on the two cameras'
  training images; the KISSME toolbox's VIPeR demo pairs camera a with
  camera b). With two cameras this is exactly their pair set (a covariance
  of differences does not depend on the pair's direction). For KISSME the
  dissimilar pairs are then *sampled* as the toolbox does: as many as there
  are similar pairs, uniformly among the cross-camera pairs of different ids
  (`sample_dissimilar_pairs`, seeded).

XQDA's subspace (`xqda_form=`, `XQDA_FORMS`), both with
Sigma_I += lambda I (lambda = 0.001):

- ``"paper"`` (default): W = generalised eigenvectors of (Sigma_E, Sigma_I)
  with eigenvalue > 1 (the paper's criterion; an error when there is none).
- ``"official"``: Liao's `XQDA.m`: when the dimension exceeds the number of
  training samples, first a QR decomposition of the training features (the
  same metric in the span of the data, fewer dimensions); then
  [V, S] = svd(Sigma_I \\ Sigma_E), the left singular vectors of the
  singular values > 1 (at least one kept), and no clipping of M: it may be
  indefinite, and distances may be negative, as MATLAB's `MahDist` gives.

Then M = W (W^T Sigma_I W)^-1 W^T - W (W^T Sigma_E W)^-1 W^T; the paper form
clips the subspace M to its PSD part.

- KISSME: M = Sigma_S^-1 - Sigma_D^-1, projected onto the PSD cone (negative
  eigenvalues clipped), as the authors' code does.

An indefinite M (official XQDA) is kept as a positive and a negative factor
(`Metric.negative`); `Metric.embed`, which re-ranking needs, gives only the
PSD part, so `xqda+rerank` with the official form re-ranks on the clipped
metric.
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
PAIR_RULES = ("all", "cross_camera")
XQDA_FORMS = ("paper", "official")


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
      transform: float64 [D, K] with transform @ transform.T = M (xqda, kissme),
        or its PSD part when M is indefinite; else None.
      matrix: float64 [D, D] M (xqda, kissme), else None.
      negative: float64 [D, K2] with transform @ transform.T -
        negative @ negative.T = M, for an indefinite M (official XQDA); else None.
    """

    name: str
    transform: np.ndarray | None = None
    matrix: np.ndarray | None = None
    negative: np.ndarray | None = None

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
        if self.negative is not None:   # (a-b)^T M (a-b) of an indefinite M: may be < 0
            positive = dataclasses.replace(self, negative=None)
            negative = Metric(self.name, transform=self.negative)
            return (positive.distance(query, gallery, block_size)
                    - negative.distance(query, gallery, block_size))
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


def check_learning_options(pairs: str = "all", xqda_form: str = "paper") -> None:
    """ConfigError naming the choices for an unknown pair rule or XQDA form."""
    if pairs not in PAIR_RULES:
        raise ConfigError(f"pairs must be one of {PAIR_RULES}, got {pairs!r}")
    if xqda_form not in XQDA_FORMS:
        raise ConfigError(f"xqda_form must be one of {XQDA_FORMS}, got {xqda_form!r}")


def _training_set(features, pids, camids, pairs: str):
    """Checked (x float64 [N, D], pids int64 [N], camids int64 [N] or None)."""
    check_learning_options(pairs)
    x = feature_matrix("train_features", features)
    pids = np.asarray(pids)
    if pids.shape != (x.shape[0],):
        raise DataError(f"train_pids must have shape ({x.shape[0]},), got {pids.shape}")
    if pairs == "cross_camera":
        if camids is None:
            raise ConfigError("pairs='cross_camera' needs train_camids (the training items' "
                              "cameras); extract the features again or use pairs='all'")
        camids = np.asarray(camids)
        if camids.shape != (x.shape[0],):
            raise DataError(f"train_camids must have shape ({x.shape[0]},), got {camids.shape}")
        if np.unique(camids).size < 2:
            raise DataError("train_camids: a single camera, so there is no cross-camera pair")
    return x, pids, camids


def _grouped_pair_sums(x: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, float]:
    """(sum of (x_i - x_j)(x_i - x_j)^T, count) over ordered pairs i != j of one group.

    Per group c with n_c items, sum x x^T = S_c and sum x = s_c, the pairs add
    2 n_c S_c - 2 s_c s_c^T.
    """
    _, inv, counts = np.unique(groups, axis=0, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    class_sum = np.zeros((counts.size, x.shape[1]))
    np.add.at(class_sum, inv, x)
    weighted = x * np.sqrt(counts[inv])[:, None]
    total = 2.0 * (weighted.T @ weighted) - 2.0 * (class_sum.T @ class_sum)
    return total, float(np.sum(counts * (counts - 1.0)))


def _pair_sums(x: np.ndarray, pids: np.ndarray, camids: np.ndarray | None, pairs: str):
    """(intra_sum, n_intra, extra_sum, n_extra) over the pairs of `pairs` (module doc)."""
    n = x.shape[0]
    same_id, n_id = _grouped_pair_sums(x, pids)
    total = x.sum(axis=0)
    everything, n_all = 2.0 * n * (x.T @ x) - 2.0 * np.outer(total, total), float(n * (n - 1))
    if pairs == "all":
        return same_id, n_id, everything - same_id, n_all - n_id
    # Pairs of two cameras = all pairs less those within a camera (inclusion-exclusion).
    same_cam, n_cam = _grouped_pair_sums(x, camids)
    same_both, n_both = _grouped_pair_sums(x, np.stack([pids, camids], axis=1))
    return (same_id - same_both, n_id - n_both,
            everything - same_cam - same_id + same_both, n_all - n_cam - n_id + n_both)


def pair_covariances(features: np.ndarray, pids: np.ndarray, camids: np.ndarray | None = None,
                     *, pairs: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """Mean outer products of differences over same-id and different-id ordered pairs.

    Args:
      features: float [N, D]; pids: int [N]; camids: int [N] (cross_camera only).
      pairs: "all" or "cross_camera" (module doc).
    Returns:
      (intra [D, D], extra [D, D]) float64.
    Raises:
      DataError: fewer than one same-id or one different-id pair.
      ConfigError: cross_camera without camids.
    """
    x, pids, camids = _training_set(features, pids, camids, pairs)
    intra_sum, n_intra, extra_sum, n_extra = _pair_sums(x, pids, camids, pairs)
    where = " across cameras" if pairs == "cross_camera" else ""
    if n_intra == 0:
        raise DataError(f"train_pids: no id has two samples{where}, cannot learn a metric")
    if n_extra == 0:
        raise DataError(f"train_pids: no pair of two ids{where}, cannot learn a metric")
    return intra_sum / n_intra, extra_sum / n_extra


def sample_dissimilar_pairs(pids: np.ndarray, camids: np.ndarray, count: int,
                            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`count` random cross-camera pairs of different ids, as the KISSME toolbox draws
    its dissimilar pairs (as many as the similar ones, at random).

    Draws (i, j) uniformly over ordered pairs of items with
    numpy.random.default_rng(seed), in rounds of 2 * count, and keeps, in
    draw order, those of different ids and different cameras (with
    replacement, as independent random pairs are).

    Returns:
      (i int64 [count], j int64 [count]).
    """
    pids, camids = np.asarray(pids), np.asarray(camids)
    n = pids.shape[0]
    if not np.any((pids[:, None] != pids[None, :]) & (camids[:, None] != camids[None, :])):
        raise DataError("train_pids/train_camids: no cross-camera pair of different ids")
    rng = np.random.default_rng(seed)
    got_i, got_j, kept = [], [], 0
    while kept < count:
        i = rng.integers(0, n, size=2 * count)
        j = rng.integers(0, n, size=2 * count)
        ok = (pids[i] != pids[j]) & (camids[i] != camids[j])
        got_i.append(i[ok])
        got_j.append(j[ok])
        kept += int(ok.sum())
    return np.concatenate(got_i)[:count], np.concatenate(got_j)[:count]


def _psd_factor(m: np.ndarray) -> np.ndarray:
    """T with T T^T = the PSD part of symmetric m (negative eigenvalues clipped)."""
    m = (m + m.T) / 2.0
    vals, vecs = scipy.linalg.eigh(m)
    keep = vals > 0
    return vecs[:, keep] * np.sqrt(vals[keep])[None, :]


def learn_xqda(features: np.ndarray, pids: np.ndarray, camids: np.ndarray | None = None, *,
               ridge: float = 1e-3, dims: int = -1, pairs: str = "all",
               form: str = "paper") -> Metric:
    """XQDA (module doc) on training features [N, D] with ids [N] (and cameras [N]).

    Args:
      ridge: lambda added to the intra-class covariance (Liao et al.: 0.001).
      dims: subspace size; <= 0 keeps every direction with eigenvalue (official:
        singular value) > 1 (at least one), larger values are capped at that count.
      pairs: "all" or "cross_camera"; form: "paper" or "official" (module doc).
    """
    if ridge < 0:
        raise ConfigError(f"xqda ridge must be >= 0, got {ridge}")
    check_learning_options(pairs, form)
    intra, extra = pair_covariances(features, pids, camids, pairs=pairs)
    if form == "official":
        return _xqda_official(feature_matrix("train_features", features), intra, extra,
                              ridge, dims)
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


def _xqda_official(x: np.ndarray, intra: np.ndarray, extra: np.ndarray, ridge: float,
                   dims: int) -> Metric:
    """Liao's XQDA.m from the pair covariances (module doc's "official" form)."""
    basis = None
    if x.shape[1] > x.shape[0]:
        # XQDA.m: [W, X] = qr([galX', probX'], 0) when d > numGals + numProbs.
        # Covariances are sums of outer products of differences of the
        # columns, so in the QR basis they are Q^T C Q; lambda I comes after.
        basis, _ = np.linalg.qr(x.T)
        intra, extra = basis.T @ intra @ basis, basis.T @ extra @ basis
    intra = intra + ridge * np.eye(intra.shape[0])
    u, singular, _ = np.linalg.svd(np.linalg.solve(intra, extra))
    order = np.argsort(-singular, kind="stable")   # MATLAB: sort(latent, 'descend')
    r = int(np.sum(singular > 1.0))
    keep = max(1, r) if dims <= 0 or dims > r else dims
    v = u[:, order[:keep]]
    m_sub = np.linalg.inv(v.T @ intra @ v) - np.linalg.inv(v.T @ extra @ v)
    w = v if basis is None else basis @ v
    m_sub = (m_sub + m_sub.T) / 2.0
    vals, vecs = scipy.linalg.eigh(m_sub)
    positive = w @ (vecs[:, vals > 0] * np.sqrt(vals[vals > 0]))
    negative = w @ (vecs[:, vals < 0] * np.sqrt(-vals[vals < 0]))
    return Metric("xqda", transform=positive, matrix=w @ m_sub @ w.T,
                  negative=negative if negative.shape[1] else None)


def learn_kissme(features: np.ndarray, pids: np.ndarray, camids: np.ndarray | None = None, *,
                 ridge: float = 1e-6, pairs: str = "all", seed: int = 0) -> Metric:
    """KISSME (module doc) on training features [N, D] with ids [N] (and cameras [N]).

    Args:
      ridge: added to both covariances, relative to their mean diagonal,
        so that they can be inverted.
      pairs: "all" (every pair) or "cross_camera" (the toolbox's pairs: all
        cross-camera similar pairs, as many sampled dissimilar ones).
      seed: the dissimilar pairs' sample (cross_camera only).
    """
    similar, dissimilar = pair_covariances(features, pids, camids, pairs=pairs)
    if pairs == "cross_camera":
        x, pids, camids = _training_set(features, pids, camids, pairs)
        # As many dissimilar pairs as similar ones (each unordered pair once).
        _, n_intra, _, _ = _pair_sums(x, pids, camids, pairs)
        i, j = sample_dissimilar_pairs(pids, camids, int(n_intra) // 2, seed)
        diff = x[i] - x[j]
        dissimilar = diff.T @ diff / len(i)
    eye = np.eye(similar.shape[0])
    similar = similar + ridge * np.trace(similar) / len(eye) * eye
    dissimilar = dissimilar + ridge * np.trace(dissimilar) / len(eye) * eye
    m = scipy.linalg.inv(similar, check_finite=False) - scipy.linalg.inv(dissimilar, check_finite=False)
    transform = _psd_factor(m)
    return Metric("kissme", transform=transform, matrix=transform @ transform.T)


def make_metric(name: str, train_features: np.ndarray | None = None,
                train_pids: np.ndarray | None = None, train_camids: np.ndarray | None = None,
                *, pairs: str = "all", xqda_form: str = "paper", seed: int = 0) -> Metric:
    """The base metric `name` (BASE_METRICS), learning XQDA/KISSME on the training set
    (pairs, xqda_form, seed: module doc)."""
    if name not in BASE_METRICS:
        raise ConfigError(f"base metric must be one of {BASE_METRICS}, got {name!r}")
    check_learning_options(pairs, xqda_form)
    if name in LEARNED:
        if train_features is None or train_pids is None:
            raise ConfigError(f"metric {name!r} is learned: it needs train_features and train_pids")
        if name == "xqda":
            return learn_xqda(train_features, train_pids, train_camids, pairs=pairs,
                              form=xqda_form)
        return learn_kissme(train_features, train_pids, train_camids, pairs=pairs, seed=seed)
    return Metric(name)


def compute_distances(query_features: np.ndarray, gallery_features: np.ndarray,
                      metric: str = "euclidean", *, train_features: np.ndarray | None = None,
                      train_pids: np.ndarray | None = None,
                      train_camids: np.ndarray | None = None, pairs: str = "all",
                      xqda_form: str = "paper", seed: int = 0, k1: int = 20, k2: int = 6,
                      lambda_value: float = 0.3, half_rounding: str = "python",
                      progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """float32 [Q, G] distances for any name in METRICS (module doc).

    `rerank` alone is Euclidean + re-ranking; `xqda+rerank` is the paper's default.
    half_rounding: how re-ranking rounds k1 / 2 (`rerank.HALF_ROUNDINGS`).
    """
    from mgcam_tf.evaluation import rerank as rerank_lib  # the heavier module, only when asked

    base, use_rerank = parse_metric(metric)
    q = feature_matrix("query_features", query_features)
    g = feature_matrix("gallery_features", gallery_features)
    if q.shape[1] != g.shape[1]:
        raise DataError(f"query_features dim {q.shape[1]} != gallery_features dim {g.shape[1]}")
    m = make_metric(base, train_features, train_pids, train_camids, pairs=pairs,
                    xqda_form=xqda_form, seed=seed)
    if not use_rerank:
        return m.distance(q, g)
    return rerank_lib.rerank(m.embed(q), m.embed(g), k1=k1, k2=k2,
                             lambda_value=lambda_value, half_rounding=half_rounding,
                             progress=progress)
