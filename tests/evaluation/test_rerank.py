"""Fast k-reciprocal re-ranking against the plain dense transcription of Zhong et al."""

import numpy as np
import pytest

import reference  # tests/reference.py
from mgcam_tf.errors import ConfigError, DataError
from mgcam_tf.evaluation import rerank as rr


def clustered(rng, n, dim=16, ids=12, spread=0.6):
    centres = rng.standard_normal((ids, dim))
    labels = rng.integers(0, ids, n)
    return centres[labels] + spread * rng.standard_normal((n, dim))


@pytest.mark.parametrize("seed,nq,ng,k1,k2,lam", [
    (0, 20, 120, 20, 6, 0.3),
    (1, 35, 90, 20, 6, 0.3),
    (2, 10, 60, 7, 3, 0.5),
    (3, 25, 150, 5, 1, 0.0),
    (4, 40, 200, 20, 6, 1.0),
])
def test_fast_equals_dense_reference(seed, nq, ng, k1, k2, lam):
    rng = np.random.default_rng(seed)
    x = clustered(rng, nq + ng) if seed % 2 == 0 else rng.standard_normal((nq + ng, 32))
    q, g = x[:nq], x[nq:]
    dense = reference.rerank_dense(reference.squared_euclidean(x, x), nq, k1=k1, k2=k2, lambda_value=lam)
    # Small blocks and budgets exercise the blockwise paths.
    fast = rr.rerank(q, g, k1=k1, k2=k2, lambda_value=lam, block_size=17, triple_budget=500)
    assert fast.shape == (nq, ng) and fast.dtype == np.float32
    np.testing.assert_allclose(fast, dense, rtol=0, atol=1e-5)
    big = rr.rerank(q, g, k1=k1, k2=k2, lambda_value=lam)
    np.testing.assert_allclose(big, fast, rtol=0, atol=1e-6)


def test_exact_ties_follow_the_stable_order():
    """Duplicated images: equal distances, broken by index in both implementations."""
    rng = np.random.default_rng(7)
    base = rng.standard_normal((60, 8))
    x = np.concatenate([base, base[:30], base[10:20]])   # many exact duplicates
    nq = 15
    dense = reference.rerank_dense(reference.squared_euclidean(x, x), nq, k1=6, k2=3)
    fast = rr.rerank(x[:nq], x[nq:], k1=6, k2=3, block_size=9)
    np.testing.assert_allclose(fast, dense, rtol=0, atol=1e-5)


def test_large_offset_features_stay_accurate():
    rng = np.random.default_rng(8)
    x = clustered(rng, 150) + 1000.0
    dense = reference.rerank_dense(reference.squared_euclidean(x, x), 30)
    np.testing.assert_allclose(rr.rerank(x[:30], x[30:]), dense, rtol=0, atol=1e-5)


def test_threads_do_not_change_the_result():
    rng = np.random.default_rng(9)
    x = clustered(rng, 300)
    one = rr.rerank(x[:50], x[50:], threads=1, block_size=16, triple_budget=2000)
    two = rr.rerank(x[:50], x[50:], threads=3, block_size=16, triple_budget=2000)
    np.testing.assert_array_equal(one, two)


def test_progress_and_errors():
    rng = np.random.default_rng(0)
    q, g = rng.standard_normal((5, 8)), rng.standard_normal((30, 8))
    seen = []
    rr.rerank(q, g, progress=lambda done, total: seen.append((done, total)), block_size=10)
    assert seen[-1] == (35, 35) and len(seen) == 4
    with pytest.raises(ConfigError, match="lambda_value"):
        rr.rerank(q, g, lambda_value=2.0)
    with pytest.raises(ConfigError, match="k1"):
        rr.rerank(q, g, k1=100)
    with pytest.raises(DataError, match="dim"):
        rr.rerank(q, g[:, :4])
    with pytest.raises(DataError, match="non-finite"):
        rr.rerank(q * np.nan, g)
    with pytest.raises(ConfigError, match="threads"):
        rr.rerank(q, g, threads=0)
