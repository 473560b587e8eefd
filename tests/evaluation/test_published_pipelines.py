"""The published pipelines' conventions against NumPy references written from each
procedure (docs/EVALUATION.md): mINP (fast-reid's evaluate_rank), queries without a
match (Market-1501's evaluation.m), cross-camera pairs and XQDA.m's form (Liao's
LOMO+XQDA), KISSME's toolbox pairs, CUHK03's classic protocol (torchreid's
eval_cuhk03), re-ranking's k1/2 rounding and L2 normalisation."""

import json

import numpy as np
import pytest

import reference  # tests/reference.py
from mgcam_tf.errors import ConfigError, DataError
from mgcam_tf.evaluation import cuhk03_classic, distances, evaluator, large_scale, metrics
from mgcam_tf.evaluation import rerank as rr
from mgcam_tf.evaluation.features import SplitFeatures

from .test_evaluate_cli import make_npz, run_cli, untrained  # noqa: F401 (a fixture)


def market_like(seed, nq=30, ng=160, ids=25, dim=12, cams=4):
    """Query/gallery features around id centres, with junk (-1) and distractors (0)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids + 1, dim)) * 1.5
    gp = rng.integers(0, ids, ng)
    gp[:8] = -1
    qp = rng.integers(1, ids + 3, nq)   # ids beyond `ids` have no gallery match
    q = centres[np.minimum(qp, ids)] + rng.standard_normal((nq, dim))
    g = centres[np.maximum(gp, 0)] + rng.standard_normal((ng, dim))
    return (q, qp, rng.integers(0, cams, nq), g, gp, rng.integers(0, cams, ng))


def two_view_train(seed, ids=40, per_view=2, dim=10, noise=1.0):
    """A training set of two cameras (views), `per_view` images per id and view."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, dim)) * 1.5
    pids = np.repeat(np.arange(ids), 2 * per_view)
    camids = np.tile(np.repeat([0, 1], per_view), ids)
    shift = rng.standard_normal((2, dim)) * 0.7    # a per-camera bias, as real views have
    x = centres[pids] + shift[camids] + noise * rng.standard_normal((len(pids), dim))
    return x, pids, camids


# --- mINP and queries without a match -------------------------------------------------

def fastreid_inp(distmat, qp, qc, gp, gc):
    """fast-reid's evaluate_rank, per query: INP = cmc[max_pos] / (max_pos + 1) over the
    ranked gallery less same-id-same-camera items (and Market's junk id -1)."""
    out = []
    for i in range(len(qp)):
        order = np.argsort(distmat[i], kind="stable")
        remove = ((gp[order] == qp[i]) & (gc[order] == qc[i])) | (gp[order] == -1)
        raw_cmc = (gp[order] == qp[i])[~remove].astype(np.int64)
        if not raw_cmc.any():
            out.append(np.nan)
            continue
        cmc = raw_cmc.cumsum()
        max_pos = np.nonzero(raw_cmc)[0].max()
        out.append(cmc[max_pos] / (max_pos + 1.0))
    return np.array(out)


def matlab_evaluation(distmat, qp, qc, gp, gc, max_rank=50):
    """Market-1501's evaluation.m: compute_AP.m for every query, then the mean over
    *all* queries (a query without a good match adds AP 0 and a zero CMC row)."""
    aps, cmcs = [], []
    for i in range(len(qp)):
        index = np.argsort(distmat[i], kind="stable")
        good = set(np.nonzero((gp == qp[i]) & (gc != qc[i]))[0])
        junk = set(np.nonzero(((gp == qp[i]) & (gc == qc[i])) | (gp == -1))[0])
        cmc = np.zeros(len(index))
        ap, old_recall, old_precision, good_now, j, first = 0.0, 0.0, 1.0, 0, 0, True
        for n in index:
            if n in junk:
                continue
            if n in good:
                if first:
                    cmc[j:] = 1
                    first = False
                good_now += 1
                recall, precision = good_now / len(good), good_now / (j + 1)
                ap += (recall - old_recall) * (old_precision + precision) / 2
                old_recall, old_precision = recall, precision
            else:
                old_precision = good_now / (j + 1)
            j += 1
            if good_now == len(good):
                break
        aps.append(ap if good else 0.0)
        cmcs.append(cmc[:max_rank] if good else np.zeros(max_rank))
    return np.mean(cmcs, axis=0), float(np.mean(aps))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_minp_equals_fastreid_definition(seed):
    q, qp, qc, g, gp, gc = market_like(seed)
    dist = distances.Metric("euclidean").distance(q, g)
    want = fastreid_inp(dist, qp, qc, gp, gc)
    res = metrics.evaluate(dist, qp, qc, gp, gc, block_size=7)
    np.testing.assert_allclose(res.inp, want, rtol=0, atol=1e-12)
    assert res.mINP == pytest.approx(np.nanmean(want), abs=1e-12)
    assert res.summary()["mINP"] == res.mINP
    # The large-gallery path and the plain loop record the same INP.
    big = large_scale.evaluate_features(q, qp, qc, g, gp, gc, query_block=8)
    np.testing.assert_allclose(big.inp, want, rtol=0, atol=1e-6)


def test_minp_by_hand():
    # good matches at positions 1 and 4 (0-based) of the non-junk list: INP = 2 / 5.
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    gp, gc = np.array([9, 1, 9, 9, 1, 9]), np.array([2, 2, 2, 2, 2, 2])
    res = metrics.evaluate(dist, np.array([1]), np.array([1]), gp, gc)
    assert res.inp[0] == pytest.approx(0.4) and res.mINP == pytest.approx(0.4)


@pytest.mark.parametrize("seed", [0, 3])
def test_no_match_count_is_matlab_evaluation(seed):
    q, qp, qc, g, gp, gc = market_like(seed)
    dist = distances.Metric("euclidean").distance(q, g)
    cmc, m_ap = matlab_evaluation(dist, qp, qc, gp, gc)
    res = metrics.evaluate(dist, qp, qc, gp, gc, no_match="count")
    assert res.num_invalid > 0          # the case the rules differ on
    np.testing.assert_allclose(res.cmc, cmc, rtol=0, atol=1e-12)
    assert res.mAP == pytest.approx(m_ap, abs=1e-12)
    excluded = metrics.evaluate(dist, qp, qc, gp, gc)
    scale = res.num_valid / res.num_query
    assert res.mAP == pytest.approx(excluded.mAP * scale, abs=1e-12)
    assert res.mINP == pytest.approx(excluded.mINP * scale, abs=1e-12)
    with pytest.raises(ConfigError, match="no_match"):
        metrics.evaluate(dist, qp, qc, gp, gc, no_match="drop")


# --- training pairs, XQDA.m, the KISSME toolbox ----------------------------------------

def enumerated_covariances(x, pids, camids):
    """Mean outer products over explicitly enumerated ordered pairs of two cameras."""
    d = x.shape[1]
    sums = {True: np.zeros((d, d)), False: np.zeros((d, d))}
    counts = {True: 0, False: 0}
    for i in range(len(x)):
        for j in range(len(x)):
            if i != j and camids[i] != camids[j]:
                diff = (x[i] - x[j])[:, None]
                same = bool(pids[i] == pids[j])
                sums[same] += diff @ diff.T
                counts[same] += 1
    return sums[True] / counts[True], sums[False] / counts[False]


def test_cross_camera_covariances_match_enumeration():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((36, 4))
    pids, camids = rng.integers(0, 6, 36), rng.integers(0, 3, 36)   # three cameras
    intra, extra = distances.pair_covariances(x, pids, camids, pairs="cross_camera")
    want_intra, want_extra = enumerated_covariances(x, pids, camids)
    np.testing.assert_allclose(intra, want_intra, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(extra, want_extra, rtol=1e-10, atol=1e-12)


def xqda_m(gal_x, prob_x, gal_labels, prob_labels, lam=0.001):
    """Liao's XQDA.m step by step, with the pairs enumerated: (W, M)."""
    n_gal, d = gal_x.shape
    w_qr = None
    if d > n_gal + len(prob_x):
        w_qr, r = np.linalg.qr(np.hstack([gal_x.T, prob_x.T]))
        gal_x, prob_x = r[:, :n_gal].T, r[:, n_gal:].T
        d = r.shape[0]
    in_cov, ex_cov, ni, ne = np.zeros((d, d)), np.zeros((d, d)), 0, 0
    for a in range(n_gal):
        for b in range(len(prob_x)):
            diff = (gal_x[a] - prob_x[b])[:, None]
            if gal_labels[a] == prob_labels[b]:
                in_cov += diff @ diff.T
                ni += 1
            else:
                ex_cov += diff @ diff.T
                ne += 1
    in_cov = in_cov / ni + lam * np.eye(d)
    ex_cov = ex_cov / ne
    u, latent, _ = np.linalg.svd(np.linalg.solve(in_cov, ex_cov))   # [V, S] = svd(...)
    r = int(np.sum(latent > 1))
    v = u[:, :max(1, r)]
    m = np.linalg.inv(v.T @ in_cov @ v) - np.linalg.inv(v.T @ ex_cov @ v)
    return (v if w_qr is None else w_qr @ v), m


def mah_dist(m, a, b):
    """MahDist.m: x' M x + z' M z - 2 x' M z for every row pair."""
    return (np.einsum("ij,jk,ik->i", a, m, a)[:, None] + np.einsum("ij,jk,ik->i", b, m, b)[None, :]
            - 2 * a @ m @ b.T)


@pytest.mark.parametrize("dim,ids", [(10, 40), (30, 6)])   # (30, 6): d > n, the QR route
def test_official_xqda_pipeline_matches_xqda_m(dim, ids):
    x, pids, camids = two_view_train(1, ids=ids, dim=dim)
    gal, prob = camids == 0, camids == 1
    w, m = xqda_m(x[gal], x[prob], pids[gal], pids[prob])
    q, qp, qc, g, gp, gc = market_like(2, dim=dim)
    want = mah_dist(m, q @ w, g @ w)
    got = distances.compute_distances(q, g, "xqda", train_features=x, train_pids=pids,
                                      train_camids=camids, pairs="cross_camera",
                                      xqda_form="official")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    res = metrics.evaluate(got, qp, qc, gp, gc)
    ref = metrics.evaluate(want, qp, qc, gp, gc)
    assert res.mAP == pytest.approx(ref.mAP, abs=1e-7) and np.array_equal(res.cmc, ref.cmc)


def test_official_form_differs_from_paper_form_and_pairs_matter():
    x, pids, camids = two_view_train(3, ids=60, per_view=3, dim=8, noise=1.5)
    rng = np.random.default_rng(4)
    # Directions without id information: eigenvalues near 1 on both sides, so
    # the two forms keep different subspaces (a full subspace gives one M).
    x = np.hstack([x, rng.standard_normal((len(x), 8))])
    q = rng.standard_normal((5, 16))
    kwargs = dict(train_features=x, train_pids=pids)
    paper = distances.compute_distances(q, q, "xqda", **kwargs)
    same = distances.compute_distances(q, q, "xqda", train_camids=camids, **kwargs)
    np.testing.assert_array_equal(paper, same)     # "all" pairs ignore the cameras
    cross = distances.compute_distances(q, q, "xqda", train_camids=camids,
                                        pairs="cross_camera", **kwargs)
    official = distances.compute_distances(q, q, "xqda", train_camids=camids,
                                           xqda_form="official", **kwargs)
    assert not np.allclose(cross, paper) and not np.array_equal(official, paper)
    with pytest.raises(ConfigError, match="train_camids"):
        distances.compute_distances(q, q, "xqda", pairs="cross_camera", **kwargs)
    with pytest.raises(ConfigError, match="xqda_form"):
        distances.compute_distances(q, q, "xqda", xqda_form="matlab", **kwargs)
    with pytest.raises(DataError, match="single camera"):
        distances.compute_distances(q, q, "xqda", train_camids=np.zeros_like(camids),
                                    pairs="cross_camera", **kwargs)


def test_dissimilar_pair_sample():
    _, pids, camids = two_view_train(0, ids=30)
    i, j = distances.sample_dissimilar_pairs(pids, camids, 500, seed=3)
    assert i.shape == j.shape == (500,)
    assert np.all(pids[i] != pids[j]) and np.all(camids[i] != camids[j])
    again = distances.sample_dissimilar_pairs(pids, camids, 500, seed=3)
    other = distances.sample_dissimilar_pairs(pids, camids, 500, seed=4)
    assert np.array_equal(i, again[0]) and np.array_equal(j, again[1])
    assert not np.array_equal(i, other[0])
    with pytest.raises(DataError, match="no cross-camera pair"):
        distances.sample_dissimilar_pairs(np.array([1, 1, 2]), np.array([0, 1, 0]) * 0, 3)


def test_kissme_toolbox_pipeline():
    """KISSME toolbox: similar pairs = every (view a, view b) pair of one id, dissimilar =
    as many random cross-camera pairs of two ids; M = inv(S) - inv(D) on the PSD cone."""
    x, pids, camids = two_view_train(6, ids=50, dim=8)
    a, b = np.nonzero(camids == 0)[0], np.nonzero(camids == 1)[0]
    sim = [(i, j) for i in a for j in b if pids[i] == pids[j]]
    diff = np.array([x[i] - x[j] for i, j in sim])
    cov_s = diff.T @ diff / len(sim)
    di, dj = distances.sample_dissimilar_pairs(pids, camids, len(sim), seed=0)
    diff = x[di] - x[dj]
    cov_d = diff.T @ diff / len(di)
    m = np.linalg.inv(cov_s) - np.linalg.inv(cov_d)
    vals, vecs = np.linalg.eigh(m)
    m = vecs @ np.diag(np.maximum(vals, 0)) @ vecs.T
    q, qp, qc, g, gp, gc = market_like(7, dim=8)
    want = mah_dist(m, q, g)
    got = distances.compute_distances(q, g, "kissme", train_features=x, train_pids=pids,
                                      train_camids=camids, pairs="cross_camera")
    # The library's 1e-6 relative ridge (so that both covariances invert) is the only gap.
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * want.max())
    assert metrics.evaluate(got, qp, qc, gp, gc).mAP == pytest.approx(
        metrics.evaluate(want, qp, qc, gp, gc).mAP, abs=1e-6)
    all_pairs = distances.compute_distances(q, g, "kissme", train_features=x, train_pids=pids)
    assert not np.allclose(all_pairs, got)


# --- CUHK03's classic protocol ---------------------------------------------------------

def torchreid_cuhk03(distmat, qp, qc, gp, gc, trials, seed, max_rank=50):
    """torchreid's eval_cuhk03 with the documented draw (module doc of cuhk03_classic)."""
    rng = np.random.default_rng(seed)
    all_cmc = []
    for i in range(len(qp)):
        order = np.argsort(distmat[i], kind="stable")
        keep = ~(((gp[order] == qp[i]) & (gc[order] == qc[i])) | (gp[order] == -1))
        raw_cmc = (gp[order] == qp[i])[keep]
        if not raw_cmc.any():
            continue
        kept_pids = gp[order][keep]
        ids = np.unique(kept_pids)
        members = {pid: np.nonzero(kept_pids == pid)[0] for pid in ids}   # ranked order
        u = rng.random((trials, ids.size))
        cmc = np.zeros(max_rank)
        for t in range(trials):
            mask = np.zeros(len(raw_cmc), bool)
            for k, pid in enumerate(ids):
                mask[members[pid][int(np.floor(u[t, k] * len(members[pid])))]] = True
            sampled = raw_cmc[mask].cumsum()
            sampled[sampled > 1] = 1
            row = np.zeros(max_rank)
            row[:min(max_rank, len(sampled))] = sampled[:max_rank]
            if len(sampled) < max_rank:
                row[len(sampled):] = sampled[-1]
            cmc += row
        all_cmc.append(cmc / trials)
    return np.mean(all_cmc, axis=0)


@pytest.mark.parametrize("seed,trials", [(0, 10), (1, 3)])
def test_cuhk03_classic_matches_torchreid_procedure(seed, trials):
    q, qp, qc, g, gp, gc = market_like(seed, cams=2)
    dist = distances.Metric("euclidean").distance(q, g)
    want = torchreid_cuhk03(dist, qp, qc, gp, gc, trials, seed=11)
    res = cuhk03_classic.evaluate(dist, qp, qc, gp, gc, trials=trials, seed=11)
    np.testing.assert_allclose(res.cmc, want, rtol=0, atol=1e-12)
    whole = metrics.evaluate(dist, qp, qc, gp, gc)
    assert res.mAP == whole.mAP and res.mINP == whole.mINP   # AP on the whole gallery
    assert not np.array_equal(res.cmc, whole.cmc)


def test_cuhk03_classic_with_one_image_per_id_is_single_query():
    rng = np.random.default_rng(2)
    g = rng.standard_normal((20, 5))
    gp, gc = np.arange(20), np.full(20, 2)
    q = g[:10] + 0.3 * rng.standard_normal((10, 5))
    qp, qc = np.arange(10), np.full(10, 1)
    dist = distances.Metric("euclidean").distance(q, g)
    res = cuhk03_classic.evaluate(dist, qp, qc, gp, gc, trials=4)
    np.testing.assert_allclose(res.cmc, metrics.evaluate(dist, qp, qc, gp, gc).cmc)
    with pytest.raises(ConfigError, match="trials"):
        cuhk03_classic.evaluate(dist, qp, qc, gp, gc, trials=0)


# --- re-ranking's rounding, normalisation, the evaluator ----------------------------------

def test_half_rounding_rules():
    table = {k1: [rr.half_size(k1, r) for r in ("python", "matlab", "floor")]
             for k1 in (19, 20, 21, 23)}
    assert table == {19: [10, 10, 9], 20: [10, 10, 10], 21: [10, 11, 10], 23: [12, 12, 11]}
    with pytest.raises(ConfigError, match="half_rounding"):
        rr.half_size(21, "banker")


@pytest.mark.parametrize("k1,rounding", [(9, "matlab"), (7, "floor"), (9, "python")])
def test_rerank_rounding_matches_dense_reference(k1, rounding):
    rng = np.random.default_rng(k1)
    x = rng.standard_normal((70, 12))
    half = {"python": int(np.around(k1 / 2)), "matlab": int(np.floor(k1 / 2 + 0.5)),
            "floor": k1 // 2}[rounding]
    dense = reference.rerank_dense(reference.squared_euclidean(x, x), 15, k1=k1, half=half)
    fast = rr.rerank(x[:15], x[15:], k1=k1, half_rounding=rounding)
    np.testing.assert_allclose(fast, dense, rtol=0, atol=1e-5)


def as_split(x, pids, camids):
    return SplitFeatures(np.asarray(x), np.asarray(pids), np.asarray(camids), ())


def test_evaluator_settings():
    q, qp, qc, g, gp, gc = market_like(4, cams=2)
    x, tp, tc = two_view_train(4, dim=12)
    query, gallery, train = as_split(q, qp, qc), as_split(g, gp, gc), as_split(x, tp, tc)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)   # noqa: E731
    got = evaluator.ReidEvaluator("xqda", normalize=True, pairs="cross_camera",
                                  xqda_form="official").evaluate(query, gallery, train).result
    dist = distances.compute_distances(unit(q), unit(g), "xqda", train_features=unit(x),
                                       train_pids=tp, train_camids=tc, pairs="cross_camera",
                                       xqda_form="official")
    want = metrics.evaluate(dist, qp, qc, gp, gc)
    assert got.mAP == want.mAP and got.mINP == want.mINP
    classic = evaluator.ReidEvaluator("euclidean", protocol="cuhk03_classic", seed=5,
                                      no_match="count").evaluate(query, gallery).result
    want = cuhk03_classic.evaluate(distances.Metric("euclidean").distance(q, g), qp, qc, gp, gc,
                                   seed=5, no_match="count")
    np.testing.assert_array_equal(classic.cmc, want.cmc)
    for bad in (dict(pairs="some"), dict(xqda_form="x"), dict(no_match="x"),
                dict(half_rounding="x"), dict(trials=0)):
        with pytest.raises(ConfigError):
            evaluator.ReidEvaluator("xqda", **bad)


def test_cli_official_pipelines_and_minp(tmp_path):
    data = make_npz(tmp_path / "f.npz")
    data["train_camids"] = np.tile([1, 1, 1, 2, 2, 2], 20)
    np.savez(tmp_path / "f.npz", **data)
    out = run_cli(f"--features={tmp_path / 'f.npz'}", "--metric=xqda", "--pairs=cross_camera",
                  "--xqda_form=official", "--no_match=count", f"--json_out={tmp_path / 'r.json'}")
    assert out.returncode == 0, out.stderr
    assert "mINP" in out.stdout and "no_match=count" in out.stdout
    result = json.loads((tmp_path / "r.json").read_text())
    dist = distances.compute_distances(
        data["query_features"], data["gallery_features"], "xqda",
        train_features=data["train_features"], train_pids=data["train_pids"],
        train_camids=data["train_camids"], pairs="cross_camera", xqda_form="official")
    want = metrics.evaluate(dist, data["query_pids"], data["query_camids"],
                            data["gallery_pids"], data["gallery_camids"], no_match="count")
    assert result["mAP"] == pytest.approx(want.mAP, abs=1e-9)
    assert result["mINP"] == pytest.approx(want.mINP, abs=1e-9)
    assert result["settings"]["pairs"] == "cross_camera"
    assert result["settings"]["xqda_form"] == "official"
    del data["train_camids"]
    np.savez(tmp_path / "g.npz", **data)
    out = run_cli(f"--features={tmp_path / 'g.npz'}", "--metric=kissme", "--pairs=cross_camera")
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1
    assert "missing key 'train_camids'" in out.stderr


def test_saved_features_carry_train_camids(untrained):
    """A model run writes train_camids beside the training features, and the file then
    evaluates the cross-camera pipeline to the same figures as the model run."""
    from mgcam_tf.data import layouts

    root = untrained["root"]
    flags = ["--metric=xqda", "--pairs=cross_camera", "--xqda_form=official"]
    out = run_cli(f"--model_dir={root / 'run'}", f"--data_dir={untrained['data_dir']}",
                  "--batch_size=16", *flags, f"--save_features={root / 'cc.npz'}",
                  f"--json_out={root / 'cc.json'}")
    assert out.returncode == 0, out.stderr
    saved = np.load(root / "cc.npz")
    train = layouts.load_dataset(str(untrained["data_dir"])).train
    np.testing.assert_array_equal(saved["train_camids"], train.camids)
    assert np.unique(saved["train_camids"]).size > 1
    again = run_cli(f"--features={root / 'cc.npz'}", *flags, f"--json_out={root / 'cc2.json'}")
    assert again.returncode == 0, again.stderr
    first = json.loads((root / "cc.json").read_text())
    second = json.loads((root / "cc2.json").read_text())
    assert (first["rank1"], first["mAP"], first["mINP"]) == (
        second["rank1"], second["mAP"], second["mINP"])
