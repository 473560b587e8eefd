"""Blockwise CMC/mAP against the dense metrics.evaluate path, and shortlist re-ranking."""

import numpy as np
import pytest

from mgcam_tf.errors import ConfigError, DataError
from mgcam_tf.evaluation import large_scale, metrics


def problem(nq=37, ng=411, dim=8, seed=0, integer=False):
    rng = np.random.default_rng(seed)
    qp = rng.integers(1, 12, nq)
    qc = rng.integers(1, 4, nq)
    gp = rng.integers(-1, 12, ng)          # -1 junk, 0 distractors included
    gc = rng.integers(1, 4, ng)
    centres = rng.standard_normal((13, dim))
    if integer:     # exact arithmetic, many ties: checks the tie rule too
        qf = rng.integers(-2, 3, (nq, dim)).astype(np.float32)
        gf = rng.integers(-2, 3, (ng, dim)).astype(np.float32)
    else:
        qf = (centres[qp] + rng.standard_normal((nq, dim))).astype(np.float32)
        gf = (centres[np.maximum(gp, 0)] + rng.standard_normal((ng, dim))).astype(np.float32)
    return qf, qp, qc, gf, gp, gc


@pytest.mark.parametrize("integer", [False, True])
@pytest.mark.parametrize("ap", ["official", "step"])
@pytest.mark.parametrize("block,threads", [(1, 1), (5, 2), (64, 1)])
def test_blockwise_equals_dense(integer, ap, block, threads, monkeypatch):
    monkeypatch.setattr(large_scale, "GALLERY_CHUNK", 50)     # several gallery chunks
    qf, qp, qc, gf, gp, gc = problem(seed=3 if integer else 1, integer=integer)
    dense = metrics.evaluate(large_scale.euclidean(qf, gf), qp, qc, gp, gc, ap=ap, max_rank=20)
    got = large_scale.evaluate_features(qf, qp, qc, gf, gp, gc, ap=ap, max_rank=20,
                                        query_block=block, threads=threads)
    np.testing.assert_array_equal(got.first_match, dense.first_match)
    np.testing.assert_array_equal(got.ap, dense.ap)        # NaN in the same places
    np.testing.assert_array_equal(got.cmc, dense.cmc)
    assert got.mAP == dense.mAP and got.num_invalid == dense.num_invalid


def test_same_camera_rule_and_block_without_valid_query():
    qf, qp, qc, gf, gp, gc = problem(nq=6, ng=40)
    # Queries 0..2: their only same-id gallery items share their camera -> invalid.
    gp = gp.copy()
    qp = np.array([50, 50, 50, 1, 2, 3])
    gp[:3], gc[:3] = 50, qc[0]
    qc[:3] = qc[0]
    res = large_scale.evaluate_features(qf, qp, qc, gf, gp, gc, query_block=3)
    dense = metrics.evaluate(large_scale.euclidean(qf, gf), qp, qc, gp, gc)
    assert res.num_invalid == dense.num_invalid >= 3
    np.testing.assert_array_equal(res.first_match, dense.first_match)


def test_memory_bound_block_size():
    assert large_scale.query_block_size(500_000, 2.0, 2) == 250
    assert large_scale.query_block_size(10, 2.0, 2) == 4096
    with pytest.raises(ConfigError):
        large_scale.evaluate_features(*problem(), memory_gb=0)
    qf, qp, qc, gf, gp, gc = problem()
    with pytest.raises(DataError, match="gallery_pids"):
        large_scale.evaluate_features(qf, qp, qc, gf, gp[:-1], gc)


def test_shortlist_rerank_full_shortlist_equals_rerank():
    from mgcam_tf.evaluation import rerank

    qf, qp, qc, gf, gp, gc = problem(nq=20, ng=120, seed=5)
    cand = np.tile(np.arange(120), (20, 1))        # the whole gallery: exact re-ranking
    short = large_scale.rerank_shortlist(qf, gf, cand, k1=6, k2=3)
    np.testing.assert_allclose(short, rerank.rerank(qf, gf, k1=6, k2=3), atol=1e-6)
    full = metrics.evaluate(rerank.rerank(qf, gf, k1=6, k2=3), qp, qc, gp, gc)
    got = large_scale.evaluate_features(qf, qp, qc, gf, gp, gc, rerank_top=120, k1=6, k2=3,
                                        query_block=20)
    np.testing.assert_array_equal(got.first_match, full.first_match)
    # A shortlist: those items first (re-ranked), the rest after in their own order.
    part = large_scale.evaluate_features(qf, qp, qc, gf, gp, gc, rerank_top=30, k1=6, k2=3,
                                         query_block=10)
    assert part.num_query == 20 and 0 < part.mAP <= 1


@pytest.mark.parametrize("ap", ["official", "step"])
@pytest.mark.parametrize("levels", [3, 20, 1000])
def test_counting_equals_sorting_on_any_distances(ap, levels):
    """good_positions (counts) vs metrics.evaluate (value sort) on distance matrices
    with many ties, junk (-1), distractors (0), query ids -1 and 0, a zero row."""
    rng = np.random.default_rng(levels)
    nq, ng = 60, 300
    qp = rng.integers(-1, 8, nq)
    qc = rng.integers(1, 4, nq)
    gp = rng.integers(-1, 8, ng)
    gc = rng.integers(1, 4, ng)
    dist = (rng.integers(0, levels, (nq, ng)) / levels).astype(np.float32)
    dist[3] = 0.0                                       # everything tied
    dist[4, ::2] = -0.0
    dense = metrics.evaluate(dist, qp, qc, gp, gc, ap=ap, max_rank=30)
    labels = large_scale.GalleryLabels(gp, gc)
    ap_out, first = np.full(nq, np.nan), np.full(nq, -1, np.int64)
    for s in range(0, nq, 7):
        rows, pos = large_scale.good_positions(dist[s:s + 7].copy(), qp[s:s + 7], qc[s:s + 7],
                                               labels)
        metrics.block_ap(rows, pos, ap, ap_out[s:s + 7], first[s:s + 7])
    np.testing.assert_array_equal(first, dense.first_match)
    np.testing.assert_array_equal(ap_out, dense.ap)


def test_distractor_gallery_equals_dense():
    """A gallery mostly of distractors (0) and junk (-1), ids as floats, step and official."""
    qf, qp, qc, gf, gp, gc = problem(nq=50, ng=900, seed=7)
    rng = np.random.default_rng(7)
    gp = np.where(rng.random(900) < 0.6, rng.choice([-1, 0], 900), gp).astype(np.float64)
    for ap in ("official", "step"):
        dense = metrics.evaluate(large_scale.euclidean(qf, gf), qp, qc, gp, gc, ap=ap)
        got = large_scale.evaluate_features(qf, qp, qc, gf, gp, gc, ap=ap, query_block=8)
        np.testing.assert_array_equal(got.ap, dense.ap)
        np.testing.assert_array_equal(got.cmc, dense.cmc)
        assert got.mAP == dense.mAP


def test_non_finite_features_rejected():
    qf, qp, qc, gf, gp, gc = problem()
    gf = gf.copy()
    gf[5, 0] = np.nan
    with pytest.raises(DataError, match="gallery_features"):
        large_scale.evaluate_features(qf, qp, qc, gf, gp, gc)


def test_distances_same_bits_whatever_the_block():
    """BLAS float32 products depend on the call's shape; euclidean_into's tiles do not."""
    rng = np.random.default_rng(0)
    q = rng.standard_normal((300, 128)).astype(np.float32)
    g = rng.standard_normal((5000, 128)).astype(np.float32)
    g_sq = np.einsum("ij,ij->i", g, g)
    dense = large_scale.euclidean(q, g)
    for block in (1, 5, 64, 100, 250):
        got = np.concatenate([
            large_scale.euclidean_into(np.empty((min(block, 300 - s), 5000), np.float32),
                                       q[s:s + block], g, g_sq, chunk=1500, first_row=s)
            for s in range(0, 300, block)])
        np.testing.assert_array_equal(got, large_scale.euclidean_into(
            np.empty((300, 5000), np.float32), q, g, g_sq, chunk=1500))
    np.testing.assert_array_equal(dense, large_scale.euclidean_into(
        np.empty((300, 5000), np.float32), q, g, g_sq))


@pytest.mark.parametrize("protocol", ["single_query", "all_queries"])
def test_the_evaluator_goes_blockwise_past_its_limit_with_the_same_numbers(protocol,
                                                                          monkeypatch):
    """ReidEvaluator is the one path for any gallery size: past DENSE_LIMIT entries it
    evaluates without the [Q, G] matrix, and the figures do not change."""
    from mgcam_tf.evaluation import evaluator
    from mgcam_tf.evaluation.features import SplitFeatures

    qf, qp, qc, gf, gp, gc = problem()
    gp = np.where(gp < 1, 1, gp)                     # all_queries needs plain ids
    query = SplitFeatures(qf, qp, qc, tuple(f"q{i}" for i in range(len(qp))))
    gallery = SplitFeatures(gf, gp, gc, tuple(f"g{i}" for i in range(len(gp))))
    judge = evaluator.ReidEvaluator(protocol=protocol)
    dense = judge.evaluate(query, gallery).result
    calls = []
    real = large_scale.evaluate_features
    monkeypatch.setattr(large_scale, "evaluate_features",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(evaluator, "DENSE_LIMIT", 10)
    blockwise = judge.evaluate(query, gallery).result
    assert calls
    np.testing.assert_array_equal(blockwise.cmc, dense.cmc)
    np.testing.assert_allclose(blockwise.ap, dense.ap, rtol=1e-6)
    assert blockwise.mAP == pytest.approx(dense.mAP, rel=1e-6)
