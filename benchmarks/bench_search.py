"""Search and evaluation at a million images, beside exact numpy brute force in the same run.

  nice -n 5 python benchmarks/bench_search.py                 # about 5 minutes on 2 cores
  python benchmarks/bench_search.py --n_gallery=200000 --skip_eval
  python benchmarks/bench_search.py --rerank_check           # shortlist re-ranking vs full

- 1,000,000 synthetic clustered 128-d float32 gallery features (20,000
  Gaussian clusters, as many identities x 50 images) and 10,000 queries
  drawn the same way. The gallery index (`mgcam_tf.retrieval.index`, the
  type `auto` picks at this size: IVF-Flat) is built into a temporary folder
  with `add_features` (atomic write included): build_s.
- queries/s at batch 1 (first 1,000 queries, one at a time) and batch 100
  (all 10,000), medians over batches; the exact baseline is numpy brute
  force at batch 100 on the first 2,000 queries (`exact_topk`: float32 BLAS
  matmul blocked over 65,536-row gallery chunks into a reused buffer,
  argpartition per chunk, running merge of the top 10), whose results are
  the ground truth of recall@10.
- an IVF index is also searched at --nprobe_sweep values (recall@10 and
  queries/s at batch 100 on the 2,000 ground-truth queries): the
  measurement behind index.default_nprobe.
- The distractor-scale evaluation (`mgcam_tf.evaluation.large_scale`):
  3,368 queries x 500,000 gallery (`market_like` ids, junk and distractors
  for the first 19,732 rows, then `distractors`: images of other people),
  every person a Gaussian cluster so that true matches are findable; CMC +
  official and step mAP, in a fresh process so that its peak resident
  memory (VmHWM) is its own; before it, on the first 19,732 gallery rows,
  the check that it equals the dense metrics.evaluate number for number.
- --rerank_check: on Market-1501-shaped data (the first 1,000 queries x
  19,732 gallery) full k-reciprocal re-ranking (`evaluation.rerank`) against
  the shortlist re-ranking of `evaluation.large_scale` (S = 100, 300, 500;
  blocks of 256 queries): rank-1 and mAP differences, and the largest
  |distance difference| over the shortlisted items.

The last line of output is one JSON object with n_gallery, build_s,
qps_batch1, qps_batch100, recall_at_10, exact_qps_batch100, eval_500k_s,
eval_500k_peak_gb (and a few more).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from market_like import DIM, NUM_CAMS  # noqa: E402
from market_like import market_like as _market_like  # noqa: E402
from peak_memory import peak_gb  # noqa: E402

CENTRE_SCALE = 0.8     # identity centres N(0, 0.8^2 I) + unit noise: findable, not trivial


def market_like(scale: float = 1.0, seed: int = 0):
    """market_like's test set with junk and distractors of other people (not noise)."""
    return _market_like(scale, seed, centre_scale=CENTRE_SCALE, other_people=True)


def distractors(n: int, seed: int, per_person: int = 5, centre_scale: float = CENTRE_SCALE):
    """n more gallery images of n / per_person other people: 90 % id 0, 10 % junk -1."""
    rng = np.random.default_rng(seed + 1)
    people = centre_scale * rng.standard_normal((max(1, n // per_person), DIM)).astype(np.float32)
    feats = np.empty((n, DIM), np.float32)
    for s in range(0, n, 100_000):
        e = min(s + 100_000, n)
        feats[s:e] = people[rng.integers(0, len(people), e - s)] + \
            rng.standard_normal((e - s, DIM), dtype=np.float32)
    return feats, np.where(rng.random(n) < 0.1, -1, 0), rng.integers(1, NUM_CAMS + 1, n)


def clustered(n: int, nq: int, clusters: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM)).astype(np.float32)
    gallery = np.empty((n, DIM), np.float32)
    for s in range(0, n, 100_000):   # in chunks: no float64 temporaries of 1 GB
        e = min(s + 100_000, n)
        gallery[s:e] = centres[rng.integers(0, clusters, e - s)] + \
            0.6 * rng.standard_normal((e - s, DIM), dtype=np.float32)
    queries = centres[rng.integers(0, clusters, nq)] + \
        0.6 * rng.standard_normal((nq, DIM), dtype=np.float32)
    return gallery, queries.astype(np.float32)


def exact_topk(queries: np.ndarray, gallery: np.ndarray, g_sq: np.ndarray, k: int,
               chunk: int = 65536) -> np.ndarray:
    """Exact top-k by numpy brute force, the fair baseline: float32 BLAS matmul of the
    queries against one gallery chunk at a time into a reused buffer (cache-sized,
    no [Q, N] temporary), argpartition to each chunk's k best, a running merge."""
    nq = len(queries)
    best_d = np.full((nq, k), np.inf, np.float32)
    best_i = np.zeros((nq, k), np.int64)
    buf = np.empty((nq, chunk), np.float32)
    for s in range(0, len(gallery), chunk):
        e = min(s + chunk, len(gallery))
        d = buf[:, :e - s]
        np.matmul(queries, gallery[s:e].T, out=d)
        d *= np.float32(-2.0)
        d += g_sq[None, s:e]                      # + |q|^2 does not change the order
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        cand_d = np.concatenate([best_d, np.take_along_axis(d, part, 1)], axis=1)
        cand_i = np.concatenate([best_i, part + s], axis=1)
        keep = np.argpartition(cand_d, k - 1, axis=1)[:, :k]
        best_d = np.take_along_axis(cand_d, keep, 1)
        best_i = np.take_along_axis(cand_i, keep, 1)
    order = np.argsort(best_d, axis=1, kind="stable")
    return np.take_along_axis(best_i, order, 1)


def eval_child(args) -> None:
    from mgcam_tf.evaluation import large_scale

    scale = args.eval_gallery / 19732
    # A 500k gallery: Market-like ids, junk and distractors for the first
    # 19,732 rows, then images of other people (`distractors`).
    qf, qp, qc, gf, gp, gc = market_like(1.0, args.seed)
    from mgcam_tf.evaluation import metrics

    small_res = large_scale.evaluate_features(qf, qp, qc, gf, gp, gc)
    small = (len(gp), rank1_map(small_res))
    # Where the dense matrix fits: the same numbers as metrics.evaluate (both AP modes).
    identical = True
    for mode in ("official", "step"):
        dense = metrics.evaluate(large_scale.euclidean(qf, gf), qp, qc, gp, gc, ap=mode)
        got = large_scale.evaluate_features(qf, qp, qc, gf, gp, gc, ap=mode)
        identical &= bool(np.array_equal(got.ap, dense.ap, equal_nan=True)
                          and np.array_equal(got.first_match, dense.first_match)
                          and np.array_equal(got.cmc, dense.cmc) and got.mAP == dense.mAP)
    ef, ep, ec = distractors(args.eval_gallery - len(gp), args.seed)
    gf, gp, gc = np.concatenate([gf, ef]), np.concatenate([gp, ep]), np.concatenate([gc, ec])
    del ef
    before = peak_gb()
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        res = large_scale.evaluate_features(qf, qp, qc, gf, gp, gc, memory_gb=2.0)
        times.append(time.perf_counter() - t)
    step = large_scale.evaluate_features(qf, qp, qc, gf, gp, gc, memory_gb=2.0, ap="step")
    print(json.dumps({"seconds": float(np.median(times)), "all_seconds": times,
                      "peak_gb": peak_gb(), "peak_gb_before": before, "scale": scale,
                      "rank1": res.rank(1), "mAP": res.mAP, "mAP_step": step.mAP,
                      "n_gallery": len(gp), "small_gallery": small[0],
                      "small_rank1_mAP": small[1], "identical_to_dense": identical}))


def rank1_map(res) -> list:
    return [round(res.rank(1), 4), round(res.mAP, 4)]


def rerank_check(args) -> dict:
    """Shortlist re-ranking (large_scale, blocks of 256 queries) against full re-ranking."""
    from mgcam_tf.evaluation import large_scale, metrics, rerank

    qf, qp, qc, gf, gp, gc = market_like(1.0, args.seed)
    qf, qp, qc = qf[:args.rerank_queries], qp[:args.rerank_queries], qc[:args.rerank_queries]
    t = time.perf_counter()
    full_d = rerank.rerank(qf, gf)
    full = metrics.evaluate(full_d, qp, qc, gp, gc)
    full_s = time.perf_counter() - t
    plain_d = large_scale.euclidean(qf, gf)
    plain = metrics.evaluate(plain_d, qp, qc, gp, gc)
    out = {"rerank_queries": len(qf), "rerank_gallery": len(gf), "rerank_full_s": full_s,
           "rerank_full_rank1": full.rank(1), "rerank_full_mAP": full.mAP,
           "plain_rank1": plain.rank(1), "plain_mAP": plain.mAP, "shortlists": {}}
    print(f"re-ranking {len(qf):,} x {len(gf):,}: full {full_s:.1f} s rank-1 {full.rank(1):.4f} "
          f"mAP {full.mAP:.4f}; no re-ranking rank-1 {plain.rank(1):.4f} mAP {plain.mAP:.4f}")
    for size in args.shortlist:
        t = time.perf_counter()
        short = large_scale.evaluate_features(qf, qp, qc, gf, gp, gc, rerank_top=size,
                                              query_block=256)
        short_s = time.perf_counter() - t
        # The re-ranked distances of the shortlisted items, block by block as above.
        worst = 0.0
        for s in range(0, len(qf), 256):
            cand = np.argpartition(plain_d[s:s + 256], size - 1, axis=1)[:, :size]
            got = large_scale.rerank_shortlist(qf[s:s + 256], gf, cand)
            worst = max(worst, float(np.abs(got - np.take_along_axis(full_d[s:s + 256], cand,
                                                                      1)).max()))
        row = {"seconds": short_s, "rank1": short.rank(1), "mAP": short.mAP,
               "d_rank1": short.rank(1) - full.rank(1), "d_mAP": short.mAP - full.mAP,
               "max_abs_distance_diff": worst}
        out["shortlists"][size] = row
        print(f"  shortlist S={size}: {short_s:.1f} s rank-1 {short.rank(1):.4f} "
              f"({row['d_rank1']:+.4f}) mAP {short.mAP:.4f} ({row['d_mAP']:+.4f}); max |distance "
              f"- full re-ranking's| over the shortlisted items {worst:.4f}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n_gallery", type=int, default=1_000_000)
    parser.add_argument("--n_query", type=int, default=10_000)
    parser.add_argument("--clusters", type=int, default=20_000)
    parser.add_argument("--index_type", default="auto")
    parser.add_argument("--eval_gallery", type=int, default=500_000)
    parser.add_argument("--repeats", type=int, default=1, help="runs of the 500k evaluation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip_eval", action="store_true")
    parser.add_argument("--rerank_check", action="store_true")
    parser.add_argument("--shortlist", type=int, nargs="+", default=[100, 300, 500])
    parser.add_argument("--rerank_queries", type=int, default=1000)
    parser.add_argument("--nprobe_sweep", type=int, nargs="*", default=[4, 8, 16, 32, 64, 125],
                        help="IVF nprobe values also measured (recall@10, queries/s)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        eval_child(args)
        return
    if args.rerank_check:
        print(json.dumps(rerank_check(args)))
        return
    import faiss

    from mgcam_tf.retrieval import index

    print(f"numpy {np.__version__}, faiss {faiss.__version__}, {os.cpu_count()} CPUs, load "
          f"average {os.getloadavg()[0]:.1f} at start")
    gallery, queries = clustered(args.n_gallery, args.n_query, args.clusters, args.seed)
    n = len(gallery)
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        t = time.perf_counter()
        built = index.add_features(os.path.join(tmp, "idx"), gallery, np.zeros(n, np.int64),
                                   np.zeros(n, np.int64), [""] * n, fingerprint="bench",
                                   source="bench", index_type=args.index_type)
        build_s = time.perf_counter() - t
        print(f"index build ({built.index_type}, {built.meta['params']}): {build_s:.1f} s; "
              f"peak RSS {peak_gb():.2f} GB")
        built.search(queries[:100], 10)          # loads the faiss file
        b1 = []
        for i in range(min(1000, len(queries))):
            t = time.perf_counter()
            built.search(queries[i:i + 1], 10)
            b1.append(time.perf_counter() - t)
        b100, approx = [], []
        for s in range(0, len(queries), 100):
            t = time.perf_counter()
            idx, _ = built.search(queries[s:s + 100], 10)
            b100.append(time.perf_counter() - t)
            approx.append(idx)
        approx = np.concatenate(approx)
        qps1 = 1.0 / float(np.median(b1))
        qps100 = 100.0 / float(np.median(b100))
        g_sq = np.einsum("ij,ij->i", gallery, gallery)
        n_exact = min(2000, len(queries))
        ex, exact_ids = [], []
        for s in range(0, n_exact, 100):
            t = time.perf_counter()
            exact_ids.append(exact_topk(queries[s:s + 100], gallery, g_sq, 10))
            ex.append(time.perf_counter() - t)
        exact_ids = np.concatenate(exact_ids)
        exact_qps = 100.0 / float(np.median(ex))
        recall = float(np.mean([len(set(a) & set(b)) / 10.0
                                for a, b in zip(approx[:n_exact], exact_ids)]))
        sweep = {}
        if built.index_type == "ivf":
            for nprobe in args.nprobe_sweep:      # the choice of the default (index.py)
                times, found = [], []
                for s in range(0, n_exact, 100):
                    t = time.perf_counter()
                    idx, _ = built.search(queries[s:s + 100], 10, nprobe=nprobe)
                    times.append(time.perf_counter() - t)
                    found.append(idx)
                found = np.concatenate(found)
                rec = float(np.mean([len(set(a) & set(b)) / 10.0
                                     for a, b in zip(found, exact_ids)]))
                sweep[nprobe] = (round(rec, 4), round(100.0 / float(np.median(times)), 1))
            print("nprobe sweep (recall@10, queries/s at batch 100, medians): " +
                  "; ".join(f"{k}: {r:.4f}, {q:.0f}" for k, (r, q) in sweep.items()))
        index_mb = sum(f.stat().st_size for f in pathlib.Path(built.version_dir).iterdir()) / 1e6
        print(f"{n} x {DIM}: queries/s batch 1 {qps1:.0f}, batch 100 {qps100:.0f} (medians); "
              f"exact numpy batch 100 {exact_qps:.1f} q/s; x{qps100 / exact_qps:.0f}; "
              f"recall@10 {recall:.4f} on {n_exact} queries; index folder {index_mb:.0f} MB; "
              f"peak RSS {peak_gb():.2f} GB")
        del built
    result = {"n_gallery": n, "build_s": round(build_s, 2), "qps_batch1": round(qps1, 1),
              "qps_batch100": round(qps100, 1), "recall_at_10": round(recall, 4),
              "exact_qps_batch100": round(exact_qps, 1), "index_mb": round(index_mb, 1),
              "search_peak_gb": round(peak_gb(), 3), "nprobe_sweep": sweep}
    del gallery, queries
    if not args.skip_eval:
        out = subprocess.run([sys.executable, __file__, "--child",
                              f"--eval_gallery={args.eval_gallery}", f"--repeats={args.repeats}",
                              f"--seed={args.seed}"], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"evaluation child failed:\n{out.stderr}")
        ev = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"evaluation 3,368 x {ev['n_gallery']:,}: {ev['seconds']:.1f} s (median of "
              f"{args.repeats}: {', '.join(f'{x:.1f}' for x in ev['all_seconds'])}), peak RSS "
              f"{ev['peak_gb']:.2f} GB ({ev['peak_gb_before']:.2f} GB data); rank-1 "
              f"{ev['rank1']:.4f}, mAP {ev['mAP']:.4f} (official), {ev['mAP_step']:.4f} (step); "
              f"the first {ev['small_gallery']:,} gallery rows alone: rank-1, mAP "
              f"{ev['small_rank1_mAP']}, identical to the dense metrics.evaluate (per-query AP, "
              f"first match, CMC, mAP; official and step): {ev['identical_to_dense']}")
        result.update(eval_500k_s=round(ev["seconds"], 2), eval_500k_peak_gb=round(ev["peak_gb"], 3),
                      eval_500k_rank1=round(ev["rank1"], 4), eval_500k_mAP=round(ev["mAP"], 4),
                      eval_identical_to_dense=ev["identical_to_dense"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
