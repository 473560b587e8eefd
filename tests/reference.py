"""Reference implementations the library is checked against (tests) and timed against
(benchmarks): plain, slow transcriptions, kept out of the package.

- `evaluate_loop`: the single-query protocol of `mgcam_tf.evaluation.metrics`
  as a per-query loop.
- `rerank_dense`: Zhong et al.'s dense k-reciprocal re-ranking, as published.
"""

from __future__ import annotations

import numpy as np

from mgcam_tf.errors import ConfigError
from mgcam_tf.evaluation import metrics, rerank


def evaluate_loop(distmat: np.ndarray, query_pids: np.ndarray, query_camids: np.ndarray,
                  gallery_pids: np.ndarray, gallery_camids: np.ndarray, *,
                  ap: str = "official", max_rank: int = 50) -> metrics.EvalResult:
    """The same protocol as `evaluate` as a plain per-query loop (stable argsort).

    Slow (about 6 s at Market-1501 scale on 2 cores); kept as the reference
    that tests and `benchmarks/bench_eval.py` compare the fast path with.
    """
    if ap not in metrics.AP_MODES:
        raise ConfigError(f"ap must be one of {metrics.AP_MODES}, got {ap!r}")
    distmat, qp, qc, gp, gc = metrics._check_inputs(distmat, query_pids, query_camids,
                                            gallery_pids, gallery_camids)
    nq = distmat.shape[0]
    ap_out = np.full(nq, np.nan)
    first = np.full(nq, -1, dtype=np.int64)
    for q in range(nq):
        order = np.argsort(distmat[q], kind="stable")
        pid, cam = gp[order], gc[order]
        junk = (pid == -1) | ((pid == qp[q]) & (cam == qc[q]))
        good = (pid == qp[q])[~junk]
        hits = np.nonzero(good)[0]
        if hits.size == 0:
            continue
        i = np.arange(1, hits.size + 1, dtype=np.float64)
        precision = i / (hits + 1)
        if ap == "official":
            old = np.where(hits > 0, (i - 1) / np.maximum(hits, 1), 1.0)
            ap_out[q] = np.sum((old + precision) / 2.0) / hits.size
        else:
            ap_out[q] = np.sum(precision) / hits.size
        first[q] = hits[0]
    return metrics._finish(ap_out, first, ap, max_rank)


def rerank_dense(original_dist: np.ndarray, num_query: int, *, k1: int = 20, k2: int = 6,
                 lambda_value: float = 0.3, half: int | None = None) -> np.ndarray:
    """Zhong et al.'s dense algorithm, written plainly (reference and baseline).

    O(N^2) memory (about 12 GB at Market-1501 scale) and per-item Python loops.

    Args:
      original_dist: float [N, N] distances of all items, queries first
        (squared Euclidean to match `rerank`).
      num_query: Q, the number of leading rows that are queries.
      half: the half-size sets' k (default int(np.around(k1 / 2)), re_ranking.py's).
    Returns:
      float32 [Q, N - Q] final distances.
    """
    rerank._check(k1, k2, lambda_value)
    dist = np.asarray(original_dist, dtype=np.float32)
    # Column max, then transpose: for a symmetric matrix, each row over its max.
    dist = np.transpose(dist / np.max(dist, axis=0))
    n = dist.shape[0]
    v = np.zeros_like(dist, dtype=np.float32)
    initial_rank = np.argsort(dist, axis=1, kind="stable").astype(np.int32)
    kh = int(np.around(k1 / 2.0)) if half is None else half
    for i in range(n):
        forward = initial_rank[i, :k1 + 1]
        backward = initial_rank[forward, :k1 + 1]
        recip = forward[np.where(backward == i)[0]]
        expansion = recip
        for cand in recip:
            c_forward = initial_rank[cand, :kh + 1]
            c_backward = initial_rank[c_forward, :kh + 1]
            c_recip = c_forward[np.where(c_backward == cand)[0]]
            if len(np.intersect1d(c_recip, recip)) > 2.0 / 3.0 * len(c_recip):
                expansion = np.append(expansion, c_recip)
        expansion = np.unique(expansion)
        weight = np.exp(-dist[i, expansion])
        v[i, expansion] = weight / np.sum(weight)
    original = dist[:num_query]
    if k2 != 1:
        v_qe = np.zeros_like(v, dtype=np.float32)
        for i in range(n):
            v_qe[i] = np.mean(v[initial_rank[i, :k2]], axis=0)
        v = v_qe
        del v_qe
    del initial_rank
    inv_index = [np.where(v[:, j] != 0)[0] for j in range(n)]
    jaccard = np.zeros_like(original, dtype=np.float32)
    for i in range(num_query):
        temp_min = np.zeros((1, n), dtype=np.float32)
        nonzero = np.where(v[i] != 0)[0]
        for k in nonzero:
            images = inv_index[k]
            temp_min[0, images] += np.minimum(v[i, k], v[images, k])
        jaccard[i] = 1 - temp_min / (2.0 - temp_min)
    final = jaccard * (1 - lambda_value) + original * lambda_value
    return final[:, num_query:]


def squared_euclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 [A, B] squared Euclidean distances (clamped at 0), for `rerank_dense` inputs."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    d = np.einsum("ij,ij->i", a, a)[:, None] + np.einsum("ij,ij->i", b, b)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)
