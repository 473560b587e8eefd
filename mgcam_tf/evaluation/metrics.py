"""CMC and mAP under the official single-query ReID protocols (Market-1501's `evaluation.m`; docs/EVALUATION.md).

Rules (Market-1501's MATLAB scorer; also used for DukeMTMC-reID, CUHK03-NP and,
on tracklet features, MARS):

- for each query, gallery items with the query's id *and* camera are ignored
  ("junk"), and so are gallery items with id -1;
- gallery items with id 0 (distractors) are ordinary wrong matches;
- good matches: same id, other camera;
- the ranked list is the gallery sorted by ascending distance, ties broken by
  gallery order (a stable sort, as MATLAB's `sort`);
- queries without a good match have no defined AP: by default
  (``no_match="exclude"``, the Python toolkits' rule) they are left out of
  CMC, mAP and mINP and counted in `EvalResult.num_invalid`;
  ``no_match="count"`` follows Market-1501's `evaluation.m`, which averages
  over every query: such a query is a miss at every rank with AP 0 (and INP 0).

mINP (Ye et al., "Deep Learning for Person Re-identification: A Survey and
Outlook", TPAMI 2021; fast-reid's `evaluate_rank`): a query's INP is
(number of good matches) / (1-based position of its last good match among
non-junk items); mINP is their mean over the queries.

Two AP definitions (`ap=`):

- ``"official"`` (default), Market-1501's `compute_AP.m`: for the i-th good
  match (1-based) at position j among non-junk items (0-based), with
  ngood good matches in all, it adds
  ``(1/ngood) * (old_precision + i/(j+1)) / 2`` where
  ``old_precision = (i-1)/j`` (the precision one position earlier) or 1 when
  j == 0: a trapezoid between recall steps.
- ``"step"``: the non-interpolated AP most Python toolkits report,
  ``(1/ngood) * sum_i i/(j_i+1)``; 0.4-1.3 points higher on the same distances.

The fast path needs no per-query Python loop and no argsort: for a block of
queries it sorts the distance *values* (junk set to +inf) once, and finds
every good match's position with one `searchsorted` over row-tagged integer
keys, because a value sort is several times faster than an argsort and the
good matches are few (about 14 of 19,732 per Market query).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mgcam_tf.errors import ConfigError, DataError
from mgcam_tf.evaluation.blocks import run_blocks

AP_MODES = ("official", "step")
NO_MATCH_RULES = ("exclude", "count")
DEFAULT_RANKS = (1, 5, 10, 20)


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Single-query CMC and mAP.

    Attributes:
      cmc: float64 [max_rank]; cmc[k-1] = fraction of valid queries whose first
        good match is within the top k.
      mAP: mean AP over valid queries (fraction in [0, 1]).
      ap_mode: "official" or "step".
      num_query: all queries given.
      num_valid: queries with at least one good match.
      num_invalid: queries without one (left out of cmc, mAP and mINP, or
        counted as misses with AP 0 under no_match="count").
      ap: float64 [num_query] per-query AP; NaN for invalid queries.
      first_match: int64 [num_query] 0-based position of the first good match
        among non-junk gallery items; -1 for invalid queries.
      inp: float64 [num_query] per-query INP (module doc); NaN for invalid
        queries, or for results built without it.
      mINP: mean INP over the queries that `no_match` averages over.
      no_match: "exclude" or "count" (module doc).
    """

    cmc: np.ndarray
    mAP: float
    ap_mode: str
    num_query: int
    num_valid: int
    num_invalid: int
    ap: np.ndarray
    first_match: np.ndarray
    inp: np.ndarray | None = None
    mINP: float = float("nan")
    no_match: str = "exclude"

    def rank(self, k: int) -> float:
        """Rank-k accuracy (fraction); k beyond `max_rank` is an error."""
        if not 1 <= k <= len(self.cmc):
            raise ConfigError(f"rank {k} outside 1..{len(self.cmc)} (max_rank)")
        return float(self.cmc[k - 1])

    def summary(self, ranks: tuple[int, ...] = DEFAULT_RANKS) -> dict[str, float]:
        """`{"rank1": .., "rank5": .., "rank10": .., "rank20": .., "mAP": .., "mINP": ..}`,
        fractions (mINP only where the result has per-query INP)."""
        out = {f"rank{k}": self.rank(k) for k in ranks if k <= len(self.cmc)}
        out["mAP"] = float(self.mAP)
        if self.inp is not None:
            out["mINP"] = float(self.mINP)
        return out


def _check_inputs(distmat, query_pids, query_camids, gallery_pids, gallery_camids):
    distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise DataError(f"distmat must be 2-D [num_query, num_gallery], got shape {distmat.shape}")
    if not np.issubdtype(distmat.dtype, np.floating):
        distmat = distmat.astype(np.float64)
    nq, ng = distmat.shape
    arrays = []
    for name, arr, n in (("query_pids", query_pids, nq), ("query_camids", query_camids, nq),
                         ("gallery_pids", gallery_pids, ng), ("gallery_camids", gallery_camids, ng)):
        arr = np.asarray(arr)
        if arr.shape != (n,):
            raise DataError(f"{name} must have shape ({n},) to match distmat {distmat.shape}, "
                            f"got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            if np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr)):
                arr = arr.astype(np.int64)
            else:
                raise DataError(f"{name} must hold integers, got dtype {arr.dtype}")
        arrays.append(arr.astype(np.int64, copy=False))
    if nq == 0 or ng == 0:
        raise DataError(f"empty query or gallery: distmat has shape {distmat.shape}")
    return (distmat, *arrays)


def _ordered_u32(x: np.ndarray) -> np.ndarray:
    """Map float32 values to uint32 keys with the same order (-0.0 == +0.0 kept apart is harmless)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    # Negative floats: flip all bits; positive: set the sign bit. Standard radix-sort trick.
    neg = (bits >> np.uint32(31)).astype(bool)
    return np.where(neg, ~bits, bits | np.uint32(0x80000000))


def _good_positions(block: np.ndarray, junk: np.ndarray, good: np.ndarray):
    """Positions of the good matches of a block of queries.

    Args:
      block: float [B, G] distances.
      junk: bool [B, G] items to ignore.
      good: bool [B, G] good matches (disjoint from junk).
    Returns:
      rows int64 [M], pos int64 [M]: for every good match, its query row in the
      block and its 0-based position among the non-junk items of that row,
      ties broken by gallery index.
    """
    b, g = block.shape
    rows, cols = np.divmod(np.flatnonzero(good), g)  # a 2-D np.nonzero is much slower
    if rows.size == 0:
        return rows.astype(np.int64), rows.astype(np.int64)
    # Sort values only (float32 keys): much faster than an argsort.
    masked = np.where(junk, np.float32(np.inf), block.astype(np.float32, copy=False))
    masked += np.float32(0.0)  # -0.0 -> +0.0, so that equal values get equal keys
    masked.sort(axis=1)
    row_tag = (np.arange(b, dtype=np.uint64) << np.uint64(32))
    # Non-negative floats (the usual case; column 0 holds each row's minimum
    # after the sort) already order like their bit patterns: skip the remap.
    to_key = _ordered_u32 if masked[:, 0].min() < 0 else (lambda v: v.view(np.uint32))
    sorted_keys = (to_key(masked).astype(np.uint64) | row_tag[:, None]).ravel()
    del masked
    good_vals = block[rows, cols]
    good_keys = (to_key(good_vals.astype(np.float32) + np.float32(0.0)).astype(np.uint64)
                 | row_tag[rows])
    left = np.searchsorted(sorted_keys, good_keys, side="left")
    right = np.searchsorted(sorted_keys, good_keys, side="right")
    pos = (left - rows * g).astype(np.int64)
    # Another non-junk item shares the float32 value (a genuine tie, or two
    # float64 values that round together): settle these few exactly, in the
    # input's precision, with the stable-sort tie rule.
    tied = np.nonzero(right - left > 1)[0]
    for t in tied:  # rare: not a per-query loop
        r, c, v = rows[t], cols[t], good_vals[t]
        d = block[r]
        before = (d < v) | ((d == v) & (np.arange(g) < c))
        pos[t] = int(np.count_nonzero(before & ~junk[r]))
    return rows.astype(np.int64), pos


def block_ap(rows: np.ndarray, pos: np.ndarray, ap: str, ap_out: np.ndarray,
             first: np.ndarray, inp_out: np.ndarray | None = None) -> None:
    """Per-query AP, first match and INP from the positions of the good matches.

    Args:
      rows: int [M] query row (within the block) of each good match; pos: int
        [M] its 0-based position among the row's non-junk items (any order).
      ap: "official" or "step".
      ap_out, first: float64 / int64 [B] views written for rows with a good match.
      inp_out: optional float64 [B] view: ngood / (1 + position of the last good match).
    """
    if rows.size == 0:
        return
    b = len(ap_out)
    order = np.lexsort((pos, rows))  # by row, then by position
    rows, pos = rows[order], pos[order]
    ngood = np.bincount(rows, minlength=b)
    row_start = np.concatenate([[0], np.cumsum(ngood)[:-1]])
    i = (np.arange(rows.size) - row_start[rows] + 1).astype(np.float64)  # 1-based
    precision = i / (pos + 1)
    if ap == "official":
        old = np.where(pos > 0, (i - 1) / np.maximum(pos, 1), 1.0)
        contrib = (old + precision) / 2.0
    else:
        contrib = precision
    sums = np.bincount(rows, weights=contrib, minlength=b)
    valid = ngood > 0
    ap_out[valid] = sums[valid] / ngood[valid]
    first[valid] = pos[row_start[valid]]
    if inp_out is not None:
        last = pos[row_start[valid] + ngood[valid] - 1]
        inp_out[valid] = ngood[valid] / (last + 1.0)


def evaluate(distmat: np.ndarray, query_pids: np.ndarray, query_camids: np.ndarray,
             gallery_pids: np.ndarray, gallery_camids: np.ndarray, *,
             ap: str = "official", max_rank: int = 50, block_size: int = 128,
             threads: int | None = None, no_match: str = "exclude") -> EvalResult:
    """Single-query CMC and mAP with the official Market-1501 rules (module doc).

    Args:
      distmat: float [Q, G] query-to-gallery distances (smaller = more similar).
      query_pids, query_camids: int [Q].
      gallery_pids, gallery_camids: int [G]; pid -1 junk, 0 distractor.
      ap: "official" (MATLAB trapezoid) or "step" (non-interpolated).
      max_rank: length of the returned CMC curve.
      block_size: queries processed at once (memory ~ 20 * block_size * G bytes
        per thread).
      threads: blocks processed at once; default min(2, CPUs).
      no_match: "exclude" or "count" (module doc).
    Returns:
      EvalResult.
    Raises:
      ConfigError: unknown `ap` or `no_match`, bad `max_rank`/`block_size`.
      DataError: shapes that disagree, non-finite distances, no valid query.
    """
    if ap not in AP_MODES:
        raise ConfigError(f"ap must be one of {AP_MODES}, got {ap!r}")
    if max_rank < 1:
        raise ConfigError(f"max_rank must be >= 1, got {max_rank}")
    if block_size < 1:
        raise ConfigError(f"block_size must be >= 1, got {block_size}")
    check_no_match(no_match)
    distmat, qp, qc, gp, gc = _check_inputs(distmat, query_pids, query_camids,
                                            gallery_pids, gallery_camids)
    nq, ng = distmat.shape
    ap_out = np.full(nq, np.nan)
    first = np.full(nq, -1, dtype=np.int64)
    inp = np.full(nq, np.nan)
    gallery_junk = gp == -1

    def one_block(start: int) -> int:  # writes its own rows of ap_out / first / inp
        stop = min(start + block_size, nq)
        block = distmat[start:stop]
        if not np.all(np.isfinite(block)):
            raise DataError(f"distmat has non-finite values in query rows {start}..{stop - 1}")
        same_id = gp[None, :] == qp[start:stop, None]
        same_cam = gc[None, :] == qc[start:stop, None]
        junk = (same_id & same_cam) | gallery_junk[None, :]
        good = same_id & ~junk
        rows, pos = _good_positions(block, junk, good)
        block_ap(rows, pos, ap, ap_out[start:stop], first[start:stop], inp[start:stop])
        return stop - start

    # numpy releases the GIL in sort, searchsorted and the mask arithmetic.
    run_blocks(one_block, list(range(0, nq, block_size)), threads)
    return _finish(ap_out, first, ap, max_rank, inp=inp, no_match=no_match)


def check_no_match(no_match: str) -> None:
    if no_match not in NO_MATCH_RULES:
        raise ConfigError(f"no_match must be one of {NO_MATCH_RULES}, got {no_match!r}")


def concatenate(results: "list[EvalResult]", max_rank: int = 50) -> EvalResult:
    """One result for the queries of several evaluations, in order (same AP mode and
    no-match rule)."""
    modes = {r.ap_mode for r in results}
    if len(modes) != 1:
        raise ConfigError(f"cannot combine results of AP modes {sorted(modes)}")
    rules = {r.no_match for r in results}
    if len(rules) != 1:
        raise ConfigError(f"cannot combine results of no_match rules {sorted(rules)}")
    inp = None
    if all(r.inp is not None for r in results):
        inp = np.concatenate([r.inp for r in results])
    return _finish(np.concatenate([r.ap for r in results]),
                   np.concatenate([r.first_match for r in results]), modes.pop(), max_rank,
                   inp=inp, no_match=rules.pop())


def _finish(ap_out: np.ndarray, first: np.ndarray, ap: str, max_rank: int,
            inp: np.ndarray | None = None, no_match: str = "exclude") -> EvalResult:
    """The result of per-query AP, first-match positions and INP (module doc's rules)."""
    check_no_match(no_match)
    valid = first >= 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise DataError("no query has a good match in the gallery (same id, other camera): "
                        "check query/gallery ids and cameras")
    firsts = first[valid]
    # "count" (evaluation.m): the mean runs over every query, and a query
    # without a good match adds 0 to the CMC at every rank, to AP and to INP.
    denominator = num_valid if no_match == "exclude" else len(first)
    cmc = np.bincount(np.minimum(firsts, max_rank), minlength=max_rank + 1)[:max_rank]
    cmc = np.cumsum(cmc) / denominator
    m_inp = float("nan") if inp is None else float(np.sum(inp[valid]) / denominator)
    return EvalResult(cmc=cmc.astype(np.float64),
                      mAP=float(np.sum(ap_out[valid]) / denominator),
                      ap_mode=ap, num_query=len(first), num_valid=num_valid,
                      num_invalid=len(first) - num_valid, ap=ap_out, first_match=first,
                      inp=inp, mINP=m_inp, no_match=no_match)
