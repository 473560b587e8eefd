"""CUHK03's classic protocol: one gallery image per identity, averaged over random trials.

The protocol of the CUHK03 paper (Li et al., CVPR 2014) and of the older
tables that report CUHK03 with 100 test ids (the MGCAM paper's Table 3
among them), as torchreid's `eval_cuhk03` computes it (its `num_repeats` =
10 trials):

- for each query, gallery items of the query's id *and* camera are removed
  (and, as in `metrics`, items of id -1);
- in each trial, one gallery item per remaining identity is drawn at random;
  the query's CMC is that of the drawn gallery (one correct item at most);
- the CMC is the mean over trials, then over queries;
- AP (hence mAP and mINP) is computed once, on the whole gallery, as
  torchreid does: the same figures as the single-query protocol (`--ap=step`
  gives torchreid's AP).

The draw is seeded (numpy.random.default_rng(seed)); for each valid query in
order, one uniform matrix u [trials, identities] picks, for the identities
sorted by id, member floor(u * size) of the identity's items in ranked order.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mgcam_tf.errors import ConfigError
from mgcam_tf.evaluation import metrics

DEFAULT_TRIALS = 10   # torchreid's num_repeats


def check_trials(trials: int) -> None:
    if trials < 1:
        raise ConfigError(f"trials must be >= 1, got {trials}")


def evaluate(distmat: np.ndarray, query_pids: np.ndarray, query_camids: np.ndarray,
             gallery_pids: np.ndarray, gallery_camids: np.ndarray, *, ap: str = "official",
             max_rank: int = 50, trials: int = DEFAULT_TRIALS, seed: int = 0,
             no_match: str = "exclude") -> metrics.EvalResult:
    """CMC averaged over `trials` sampled galleries, AP/mINP on the whole gallery (module doc).

    Args:
      distmat: float [Q, G]; ids and cameras int [Q] / [G] as `metrics.evaluate`.
      trials: sampled galleries per query (>= 1).
      seed: the draw's seed.
    Returns:
      `metrics.EvalResult` whose `cmc` is the classic protocol's; `ap`, `inp`,
      `first_match` are the whole gallery's.
    """
    check_trials(trials)
    whole = metrics.evaluate(distmat, query_pids, query_camids, gallery_pids, gallery_camids,
                             ap=ap, max_rank=max_rank, no_match=no_match)
    distmat, qp, qc, gp, gc = metrics._check_inputs(distmat, query_pids, query_camids,
                                                    gallery_pids, gallery_camids)
    rng = np.random.default_rng(seed)
    hits = np.zeros(max_rank)
    for q in np.flatnonzero(whole.first_match >= 0):
        keep = np.flatnonzero(~((gp == qp[q]) & (gc == qc[q])) & (gp != -1))
        ranked = keep[np.argsort(distmat[q, keep], kind="stable")]
        ids, group = np.unique(gp[ranked], return_inverse=True)
        sizes = np.bincount(group)
        # Ranked positions grouped by identity, each group in ranked order.
        by_group = np.argsort(group, kind="stable")
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        u = rng.random((trials, ids.size))
        drawn = by_group[starts[None, :] + np.floor(u * sizes[None, :]).astype(np.int64)]
        own = drawn[:, np.searchsorted(ids, qp[q])]
        position = np.sum(drawn < own[:, None], axis=1)   # 0-based, in the drawn gallery
        hits += np.mean(position[:, None] < np.arange(1, max_rank + 1)[None, :], axis=0)
    denominator = whole.num_valid if no_match == "exclude" else whole.num_query
    return dataclasses.replace(whole, cmc=hits / denominator)
