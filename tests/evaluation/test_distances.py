"""Distances: closed forms, and XQDA/KISSME recovering a known metric on Gaussian data."""

import numpy as np
import pytest

import reference  # tests/reference.py
from mgcam_tf.errors import ConfigError, DataError
from mgcam_tf.evaluation import distances as dl
from mgcam_tf.evaluation import rerank as rr


def gaussian_classes(rng, num_ids=300, per_id=12, dim=6):
    """Within-class covariance W, class means with covariance B living in 2 directions."""
    rot, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    w = rot @ np.diag(rng.uniform(0.5, 1.5, dim)) @ rot.T
    b = rot @ np.diag([4.0, 2.0] + [0.0] * (dim - 2)) @ rot.T
    means = rng.multivariate_normal(np.zeros(dim), b, num_ids)
    pids = np.repeat(np.arange(num_ids), per_id)
    x = means[pids] + rng.multivariate_normal(np.zeros(dim), w, len(pids))
    return x, pids, w, b


def rel_err(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def test_pair_covariances_match_pair_enumeration():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 4))
    pids = rng.integers(0, 5, 30)
    intra, extra = dl.pair_covariances(x, pids)
    si, se, ni, ne = np.zeros((4, 4)), np.zeros((4, 4)), 0, 0
    for i in range(30):
        for j in range(30):
            if i == j:
                continue
            d = np.outer(x[i] - x[j], x[i] - x[j])
            if pids[i] == pids[j]:
                si, ni = si + d, ni + 1
            else:
                se, ne = se + d, ne + 1
    np.testing.assert_allclose(intra, si / ni, atol=1e-10)
    np.testing.assert_allclose(extra, se / ne, atol=1e-10)


def test_kissme_recovers_known_metric():
    rng = np.random.default_rng(1)
    x, pids, w, b = gaussian_classes(rng)
    # Expected: similar-pair covariance 2W, dissimilar 2(W + B).
    truth = np.linalg.inv(2 * w) - np.linalg.inv(2 * (w + b))
    m = dl.learn_kissme(x, pids)
    assert rel_err(m.matrix, truth) < 0.15
    np.testing.assert_allclose(m.transform @ m.transform.T, m.matrix, atol=1e-12)
    assert np.all(np.linalg.eigvalsh(m.matrix) > -1e-12)  # PSD


def test_xqda_recovers_known_metric_and_subspace():
    rng = np.random.default_rng(2)
    x, pids, w, b = gaussian_classes(rng)
    truth = np.linalg.inv(2 * w) - np.linalg.inv(2 * (w + b))
    m = dl.learn_xqda(x, pids)
    assert rel_err(m.matrix, truth) < 0.15
    # The two strongest directions of the learned metric span B's range.
    vals, vecs = np.linalg.eigh(m.matrix)
    top = vecs[:, -2:]
    bvals, bvecs = np.linalg.eigh(b)
    b_range = bvecs[:, -2:]
    # principal angles between the learned directions (in the W^-1 geometry) and B's range:
    proj = np.linalg.svd(np.linalg.qr(w @ top)[0].T @ b_range, compute_uv=False)
    assert proj.min() > 0.95
    d = m.distance(x[:5], x[5:9])
    diff = x[:5, None, :] - x[None, 5:9, :]
    np.testing.assert_allclose(d, np.einsum("abi,ij,abj->ab", diff, m.matrix, diff), rtol=1e-4)


def test_simple_metrics():
    rng = np.random.default_rng(3)
    q, g = rng.standard_normal((4, 8)), rng.standard_normal((6, 8))
    e = dl.compute_distances(q, g, "euclidean")
    np.testing.assert_allclose(e, np.linalg.norm(q[:, None] - g[None], axis=2), rtol=1e-5)
    c = dl.compute_distances(q, g, "cosine")
    cos = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
    np.testing.assert_allclose(c, 1 - cos, atol=1e-6)


def test_rerank_variants_use_embedded_squared_distance():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((80, 8))
    q, g = x[:10], x[10:]
    train, tp = rng.standard_normal((60, 8)), np.repeat(np.arange(15), 4)
    got = dl.compute_distances(q, g, "xqda+rerank", train_features=train, train_pids=tp)
    m = dl.learn_xqda(train, tp)
    e = m.embed(x)
    want = reference.rerank_dense(reference.squared_euclidean(e, e), 10)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # cosine + re-ranking = re-ranking of 1 - cos (row normalisation cancels the 2).
    got = dl.compute_distances(q, g, "cosine+rerank", k1=5, k2=2)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    want = reference.rerank_dense(1 - xn @ xn.T, 10, k1=5, k2=2)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(dl.compute_distances(q, g, "rerank"),
                               rr.rerank(q, g), atol=1e-7)


def test_errors():
    rng = np.random.default_rng(5)
    q, g = rng.standard_normal((4, 8)), rng.standard_normal((6, 8))
    with pytest.raises(ConfigError, match="metric must be one of"):
        dl.compute_distances(q, g, "manhattan")
    with pytest.raises(ConfigError, match="train_features"):
        dl.compute_distances(q, g, "xqda")
    with pytest.raises(DataError, match="dim"):
        dl.compute_distances(q, g[:, :3], "euclidean")
    with pytest.raises(DataError, match="two samples"):
        dl.learn_xqda(q, np.arange(4))
    assert dl.parse_metric("rerank") == ("euclidean", True)
    assert dl.parse_metric("xqda+rerank") == ("xqda", True)


def test_xqda_without_separating_direction_is_an_error():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((40, 3))
    pids = np.repeat(np.arange(2), 20)
    x[pids == 1] = x[pids == 0]   # both ids identical sets: nothing separates them
    with pytest.raises(DataError, match="no direction"):
        dl.learn_xqda(x, pids)
