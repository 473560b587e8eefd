"""CMC/mAP: the vectorised path against plain loops and hand-made ranked lists."""

import numpy as np
import pytest

import reference  # tests/reference.py
from mgcam_tf.errors import ConfigError, DataError
from mgcam_tf.evaluation import metrics


def matlab_compute_ap(good_index, junk_index, index):
    """Literal transcription of Market-1501's compute_AP.m (0-based indices)."""
    cmc = np.zeros(len(index))
    ngood = len(good_index)
    old_recall, old_precision, ap, intersect, j, good_now, njunk = 0.0, 1.0, 0.0, 0, 0, 0, 0
    for n, item in enumerate(index):
        flag = False
        if item in good_index:
            cmc[n - njunk:] = 1
            flag = True
            good_now += 1
        if item in junk_index:
            njunk += 1
            continue
        if flag:
            intersect += 1
        recall = intersect / ngood
        precision = intersect / (j + 1)
        ap += (recall - old_recall) * ((old_precision + precision) / 2)
        old_recall, old_precision = recall, precision
        j += 1
        if good_now == ngood:
            break
    return ap, cmc


def plain_loop(dist, qp, qc, gp, gc, ap_mode):
    """Per-query loop with good/junk index sets, as the MATLAB evaluation script."""
    aps, cmcs, invalid = [], [], 0
    for q in range(dist.shape[0]):
        index = np.argsort(dist[q], kind="stable")
        good = set(np.nonzero((gp == qp[q]) & (gc != qc[q]) & (gp != -1))[0].tolist())
        junk = set(np.nonzero((gp == -1) | ((gp == qp[q]) & (gc == qc[q])))[0].tolist())
        if not good:
            invalid += 1
            continue
        if ap_mode == "official":
            ap, cmc = matlab_compute_ap(good, junk, index)
        else:
            kept = [i for i in index if i not in junk]
            hits = [n for n, i in enumerate(kept) if i in good]
            ap = np.mean([(k + 1) / (h + 1) for k, h in enumerate(hits)])
            cmc = np.zeros(len(index))
            cmc[hits[0]:] = 1
        aps.append(ap)
        cmcs.append(cmc)
    return np.mean(aps), np.mean(cmcs, axis=0), invalid


def random_case(rng, nq=40, ng=300, nids=25, ncams=4, ties=False):
    qp = rng.integers(1, nids, nq)
    qc = rng.integers(1, ncams + 1, nq)
    gp = rng.integers(1, nids, ng)
    gp[rng.random(ng) < 0.15] = -1   # junk
    gp[rng.random(ng) < 0.15] = 0    # distractors
    gc = rng.integers(1, ncams + 1, ng)
    dist = rng.random((nq, ng))
    if ties:
        dist = np.round(dist * 8) / 8  # many exact ties
    return dist, qp, qc, gp, gc


@pytest.mark.parametrize("ap_mode", ["official", "step"])
@pytest.mark.parametrize("seed", range(6))
def test_fast_equals_plain_loop(seed, ap_mode):
    rng = np.random.default_rng(seed)
    dist, qp, qc, gp, gc = random_case(rng, ties=seed >= 4)
    if seed % 2:
        dist = dist.astype(np.float32)
    if seed in (2, 3):
        dist = dist - 0.5  # negative values take the general key path
    res = metrics.evaluate(dist, qp, qc, gp, gc, ap=ap_mode, max_rank=300, block_size=7,
                           threads=1 if seed == 0 else 3)
    m_ap, cmc, invalid = plain_loop(dist, qp, qc, gp, gc, ap_mode)
    assert res.num_invalid == invalid
    assert res.num_valid + res.num_invalid == len(qp)
    np.testing.assert_allclose(res.mAP, m_ap, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.cmc, cmc[:300], rtol=0, atol=1e-12)
    ref = reference.evaluate_loop(dist, qp, qc, gp, gc, ap=ap_mode, max_rank=300)
    np.testing.assert_allclose(res.ap, ref.ap, atol=1e-12)
    np.testing.assert_array_equal(res.first_match, ref.first_match)


def test_float64_values_that_collide_in_float32():
    rng = np.random.default_rng(0)
    dist, qp, qc, gp, gc = random_case(rng)
    dist = 1.0 + rng.integers(0, 4, dist.shape) * 1e-12  # distinct in float64, equal in float32
    res = metrics.evaluate(dist, qp, qc, gp, gc, max_rank=300)
    m_ap, cmc, _ = plain_loop(dist, qp, qc, gp, gc, "official")
    np.testing.assert_allclose(res.mAP, m_ap, atol=1e-12)
    np.testing.assert_allclose(res.cmc, cmc[:300], atol=1e-12)


def hand_case(labels):
    """One query (id 1, camera 1); gallery in the order given, distances increasing.

    labels: 'g' good (id 1, cam 2), 'j' junk (id -1), 's' same id same camera,
    'd' distractor (id 0), 'w' wrong id.
    """
    table = {"g": (1, 2), "j": (-1, 2), "s": (1, 1), "d": (0, 3), "w": (7, 2)}
    gp = np.array([table[c][0] for c in labels])
    gc = np.array([table[c][1] for c in labels])
    dist = np.arange(len(labels), dtype=np.float64)[None]
    return dist, np.array([1]), np.array([1]), gp, gc


@pytest.mark.parametrize("labels", ["g", "wg", "gwg", "jswgdg", "gggw", "wwwwg", "dgjgsw"])
def test_official_ap_matches_matlab_formula(labels):
    dist, qp, qc, gp, gc = hand_case(labels)
    res = metrics.evaluate(dist, qp, qc, gp, gc, ap="official")
    good = set(np.nonzero([c == "g" for c in labels])[0].tolist())
    junk = set(np.nonzero([c in "js" for c in labels])[0].tolist())
    ap_ref, _ = matlab_compute_ap(good, junk, list(range(len(labels))))
    assert res.mAP == pytest.approx(ap_ref, abs=1e-15)
    # The closed form of the brief: i-th good match at position j among non-junk.
    kept = [c for c in labels if c not in "js"]
    hits = [j for j, c in enumerate(kept) if c == "g"]
    closed = sum(((i - 1) / j if j else 1.0) + i / (j + 1) for i, j in enumerate(hits, 1))
    assert res.mAP == pytest.approx(closed / 2 / len(hits), abs=1e-15)


def test_hand_values():
    # "wg": official (0 + 1/2)/2 = 0.25; step 0.5.
    case = hand_case("wg")
    assert metrics.evaluate(*case).mAP == pytest.approx(0.25)
    assert metrics.evaluate(*case, ap="step").mAP == pytest.approx(0.5)
    # junk and same-camera items in front do not count; rank-1 hit.
    res = metrics.evaluate(*hand_case("jsgw"))
    assert res.mAP == 1.0 and res.rank(1) == 1.0 and res.first_match[0] == 0
    # a distractor is a wrong match.
    res = metrics.evaluate(*hand_case("dg"))
    assert res.rank(1) == 0.0 and res.rank(2) == 1.0


def test_invalid_queries_are_counted_not_dropped_silently():
    dist, qp, qc, gp, gc = hand_case("gw")
    dist = np.vstack([dist, dist])
    qp, qc = np.array([1, 5]), np.array([1, 1])  # id 5 has no gallery match
    res = metrics.evaluate(dist, qp, qc, gp, gc)
    assert res.num_invalid == 1 and res.num_valid == 1 and np.isnan(res.ap[1])
    assert res.mAP == 1.0
    with pytest.raises(DataError, match="no query"):
        metrics.evaluate(dist[1:], qp[1:], qc[1:], gp, gc)


def test_summary_and_errors():
    res = metrics.evaluate(*hand_case("wgwwwwwwwwwwwwwwwwwww"))
    s = res.summary()
    assert set(s) == {"rank1", "rank5", "rank10", "rank20", "mAP", "mINP"}
    assert s["rank1"] == 0.0 and s["rank5"] == 1.0
    with pytest.raises(ConfigError, match="ap"):
        metrics.evaluate(*hand_case("g"), ap="bogus")
    dist, qp, qc, gp, gc = hand_case("gw")
    with pytest.raises(DataError, match="gallery_pids"):
        metrics.evaluate(dist, qp, qc, gp[:1], gc)
    with pytest.raises(DataError, match="non-finite"):
        metrics.evaluate(dist * np.nan, qp, qc, gp, gc)
