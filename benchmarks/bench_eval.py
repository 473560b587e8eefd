"""Evaluation speed at Market-1501 scale, beside the baselines measured in the same run.

  python benchmarks/bench_eval.py            # full benchmark (about 2-3 minutes on 2 cores)
  python benchmarks/bench_eval.py --repeats=1 --skip_dense

Market-1501 scale: 3,368 queries (750 ids, 6 cameras), 19,732 gallery images
of which 3,819 junk (id -1) and 2,793 distractors (id 0); 128-d features,
random Gaussian with a weak per-id component so that rank-1 and mAP are not
trivial (junk and distractors: pure noise).

- CMC + mAP (`metrics.evaluate`, official AP) against the plain per-query
  numpy loop (`metrics.evaluate_loop`), on the same Euclidean distances;
  both must give the same numbers.
- Re-ranking of all 23,100 images (`rerank.rerank`), in a fresh process so
  that its peak resident memory (ru_maxrss, whole process) is its own.
- The dense transcription of Zhong et al. (`rerank.rerank_dense`) needs about
  12 GB and 130 s at full scale: it runs at half scale (`rerank_baseline_n`
  images), beside the fast one at the same half scale, and both must agree
  on rank-1 and mAP (and on every distance within 1e-5).

Fast timings are medians of --repeats runs. The last line of output is one
JSON object: cmc_map_s, baseline_cmc_map_s, rerank_s, rerank_peak_gb,
rerank_n, rerank_baseline_s, rerank_baseline_n (plus a few more).
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
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import reference  # noqa: E402 (tests/reference.py: the slow reference implementations)
from market_like import market_like  # noqa: E402
from mgcam_tf.evaluation import metrics, rerank  # noqa: E402
from peak_memory import peak_gb  # noqa: E402


def euclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(d, 0.0)).astype(np.float32)


def child(args) -> None:
    """One re-ranking job in this (fresh) process; prints a JSON line."""
    qf, qp, qc, gf, gp, gc = market_like(args.scale, args.seed)
    rss_before = peak_gb()
    times = []
    for _ in range(args.repeats if args.child == "fast" else 1):
        t = time.perf_counter()
        if args.child == "fast":
            final = rerank.rerank(qf, gf)
        else:
            x = np.concatenate([qf, gf]).astype(np.float64)
            final = reference.rerank_dense(reference.squared_euclidean(x, x), len(qf))
            del x
        times.append(time.perf_counter() - t)
    rss = peak_gb()
    res = metrics.evaluate(final, qp, qc, gp, gc)
    if args.save:
        np.save(args.save, final)
    print(json.dumps({"seconds": float(np.median(times)), "all_seconds": times,
                      "peak_gb": rss, "peak_gb_before": rss_before, "n": len(qf) + len(gf),
                      "rank1": res.rank(1), "mAP": res.mAP}))


def run_child(kind: str, scale: float, repeats: int, seed: int, save: str = "") -> dict:
    cmd = [sys.executable, __file__, f"--child={kind}", f"--scale={scale}",
           f"--repeats={repeats}", f"--seed={seed}"] + ([f"--save={save}"] if save else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{kind} re-ranking child failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each fast measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline_scale", type=float, default=0.5,
                        help="scale of the dense re-ranking baseline (1.0 needs ~12 GB)")
    parser.add_argument("--skip_dense", action="store_true", help="no dense baseline")
    parser.add_argument("--child", choices=["fast", "dense"], help=argparse.SUPPRESS)
    parser.add_argument("--scale", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--save", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    print(f"numpy {np.__version__}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at start")
    qf, qp, qc, gf, gp, gc = market_like(1.0, args.seed)
    dist = euclidean(qf, gf)
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        fast = metrics.evaluate(dist, qp, qc, gp, gc)
        times.append(time.perf_counter() - t)
    cmc_map_s = float(np.median(times))
    t = time.perf_counter()
    slow = reference.evaluate_loop(dist, qp, qc, gp, gc)
    baseline_cmc_map_s = time.perf_counter() - t
    same = (np.allclose(fast.ap, slow.ap, equal_nan=True, atol=1e-12)
            and np.array_equal(fast.first_match, slow.first_match))
    print(f"CMC + mAP, {len(qp)} x {len(gp)} (Euclidean): fast {cmc_map_s:.3f} s "
          f"(median of {args.repeats}), per-query loop {baseline_cmc_map_s:.2f} s, "
          f"x{baseline_cmc_map_s / cmc_map_s:.1f}; identical results: {same} "
          f"(rank-1 {fast.rank(1):.4f}, mAP {fast.mAP:.4f})")
    del dist

    full = run_child("fast", 1.0, args.repeats, args.seed)
    print(f"re-ranking, {full['n']} images: {full['seconds']:.2f} s (median of {args.repeats}: "
          f"{', '.join(f'{s:.2f}' for s in full['all_seconds'])}), peak RSS {full['peak_gb']:.2f} GB "
          f"(process, {full['peak_gb_before']:.2f} GB before); rank-1 {full['rank1']:.4f}, "
          f"mAP {full['mAP']:.4f}")

    result = {"cmc_map_s": round(cmc_map_s, 4), "baseline_cmc_map_s": round(baseline_cmc_map_s, 3),
              "cmc_map_identical": bool(same), "rerank_s": round(full["seconds"], 3),
              "rerank_peak_gb": round(full["peak_gb"], 3), "rerank_n": full["n"]}
    if not args.skip_dense:
        with tempfile.TemporaryDirectory() as tmp:
            half_fast = run_child("fast", args.baseline_scale, 1, args.seed,
                                  save=os.path.join(tmp, "fast.npy"))
            dense = run_child("dense", args.baseline_scale, 1, args.seed,
                              save=os.path.join(tmp, "dense.npy"))
            diff = float(np.max(np.abs(np.load(os.path.join(tmp, "fast.npy"))
                                       - np.load(os.path.join(tmp, "dense.npy")))))
        agree = half_fast["rank1"] == dense["rank1"] and abs(half_fast["mAP"] - dense["mAP"]) < 1e-6
        print(f"re-ranking at {args.baseline_scale:g} scale, {dense['n']} images: dense "
              f"{dense['seconds']:.1f} s, peak {dense['peak_gb']:.2f} GB; fast "
              f"{half_fast['seconds']:.2f} s, peak {half_fast['peak_gb']:.2f} GB; "
              f"x{dense['seconds'] / half_fast['seconds']:.0f}; rank-1 {dense['rank1']:.4f} vs "
              f"{half_fast['rank1']:.4f}, mAP {dense['mAP']:.6f} vs {half_fast['mAP']:.6f}, "
              f"max |difference| {diff:.2e}")
        result.update(rerank_baseline_s=round(dense["seconds"], 2),
                      rerank_baseline_n=dense["n"],
                      rerank_baseline_peak_gb=round(dense["peak_gb"], 3),
                      rerank_fast_same_n_s=round(half_fast["seconds"], 3),
                      rerank_same_rank1_map=bool(agree), rerank_max_abs_diff=diff)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
