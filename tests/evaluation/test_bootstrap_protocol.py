"""The paired bootstrap on cases with known answers, and the all-queries protocol on a
hand-made gallery."""

import numpy as np
import pytest

from mgcam_tf.evaluation import bootstrap, evaluator
from mgcam_tf.evaluation.features import SplitFeatures


def test_bootstrap_of_a_constant_difference_is_that_constant():
    a = np.linspace(0, 1, 50)
    d = bootstrap.paired_bootstrap(a, a + 0.1, metric="mAP")
    assert d.difference == pytest.approx(0.1)
    assert d.low == pytest.approx(0.1) and d.high == pytest.approx(0.1)


def test_bootstrap_interval_matches_the_normal_approximation():
    # Differences +-1 with p = 1/2: mean 0, standard error 1/sqrt(Q).
    q = 400
    diff = np.tile([1.0, -1.0], q // 2)
    d = bootstrap.paired_bootstrap(np.zeros(q), diff, resamples=4000, seed=1)
    assert d.difference == 0.0
    half = 1.96 / np.sqrt(q)
    assert d.low == pytest.approx(-half, abs=0.015) and d.high == pytest.approx(half, abs=0.015)


def test_bootstrap_leaves_out_invalid_queries_and_rank1_hits():
    hits = bootstrap.rank1_hits(np.array([0, 3, -1, 0]))
    np.testing.assert_array_equal(hits[[0, 1, 3]], [1.0, 0.0, 1.0])
    assert np.isnan(hits[2])
    d = bootstrap.paired_bootstrap(hits, np.array([1.0, 1.0, 0.0, 1.0]))
    assert d.num_queries == 3 and d.difference == pytest.approx(1 / 3)


def _items(features, pids, camids):
    return SplitFeatures(np.asarray(features, np.float32)[:, None], np.asarray(pids),
                         np.asarray(camids), tuple(f"{i}.jpg" for i in range(len(pids))))


def test_all_queries_protocol_on_a_hand_made_case():
    # 1-d features. Camera 1: ids 1, 2; camera 2: ids 1, 2, 3.
    query = _items([0.0, 10.0], [1, 2], [1, 1])
    gallery = _items([0.5, 30.0, 10.2], [1, 3, 2], [2, 2, 2])
    single = evaluator.ReidEvaluator("euclidean").evaluate(query, gallery).result
    assert single.num_query == 2 and single.rank(1) == 1.0
    every = evaluator.ReidEvaluator("euclidean", protocol="all_queries").evaluate(query, gallery)
    r = every.result
    # Camera 1's two images against camera 2's three, then camera 2's three against
    # camera 1's two; id 3 has no match in camera 1: invalid.
    assert r.num_query == 5 and r.num_valid == 4 and r.num_invalid == 1
    np.testing.assert_array_equal(r.first_match, [0, 0, 0, -1, 0])
    assert r.rank(1) == 1.0 and r.mAP == pytest.approx(1.0)
    # Same-camera images are never in a query's gallery: a same-camera near
    # duplicate of another id does not count as a miss.
    query = _items([0.0, 0.1], [1, 2], [1, 1])
    gallery = _items([0.5, 0.2], [1, 2], [2, 2])
    r = evaluator.ReidEvaluator("euclidean", protocol="all_queries").evaluate(query, gallery).result
    np.testing.assert_array_equal(r.first_match, [1, 0, 1, 0])
    order = evaluator.ReidEvaluator(protocol="all_queries").query_order(query, gallery)
    np.testing.assert_array_equal(order.camids, [1, 1, 2, 2])


def test_all_queries_needs_two_cameras():
    items = _items([0.0, 1.0], [1, 1], [1, 1])
    with pytest.raises(Exception, match="two cameras"):
        evaluator.ReidEvaluator(protocol="all_queries").evaluate(items, items)
