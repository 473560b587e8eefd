"""CMC and mAP against a gallery of hundreds of thousands, in bounded memory.

`evaluate_features(query features, gallery features, ids, cameras)` never
holds the [Q x G] distance matrix and never sorts a row: it takes the
queries in blocks of B rows (B from `memory_gb`), computes their Euclidean
distances to the whole gallery in float32 (one BLAS matmul per gallery chunk
into one [B, G] buffer, `euclidean_into`), and finds the position of each
good match among the non-junk items by counting, since a query has few good
matches (about 14 in Market-1501):

  position(j) = #(non-junk items with d < d_j)
              + #(non-junk items with d == d_j and gallery index < g_j)

(the stable-sort tie rule of `mgcam_tf.evaluation.metrics`). Gallery junk
(id -1) is set to +inf in the block once; for each query the items closer
than its farthest good match are gathered and sorted (usually a short list:
the top of the ranking), the counts of the good distances read off it with
two `searchsorted`, genuine ties settled by an exact count over the row, and
the query's own junk (same id and camera: a handful) subtracted. The APs come
from the positions through `metrics.block_ap`, the code of the dense path,
so the result equals `metrics.evaluate(euclidean(Q, G), ...)` number for
number (per-query AP, first match, CMC, mAP, official and step AP, ties,
junk, distractors) whenever the dense matrix fits
(tests/evaluation/test_large_scale.py).

Memory: the gallery features (G x D x 4 bytes; a memory map is fine) plus,
per block in flight, about 8 B x G bytes (the float32 block and one row's
temporaries). docs/PERFORMANCE.md has time and peak memory at 500,000.

Re-ranking at that size (`rerank_shortlist`, `evaluate_features(...,
rerank_top=S)`): k-reciprocal re-ranking (`mgcam_tf.evaluation.rerank`) of
each query block against the union of its queries' S nearest gallery items
(from the exact distances of the block, or from a gallery index), the rest
of the gallery ranked after the shortlist in its original order. Re-ranking
only sees the neighbourhoods inside the shortlist union, so it approximates
re-ranking the whole gallery; with the shortlist = the whole gallery it is
exact (tested). How close it comes at smaller shortlists (rank-1 and mAP
against full re-ranking for S = 100, 300, 500) is measured by
`benchmarks/bench_search.py --rerank_check` (docs/PERFORMANCE.md): the
ranking of the top holds, the distances themselves are not close (the
Jaccard term is computed over other neighbourhoods). A good match outside a
query's shortlist keeps its original rank behind the shortlist, so larger S
recovers more mAP.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from mgcam_tf.errors import ConfigError, DataError
from mgcam_tf.evaluation import metrics
from mgcam_tf.evaluation.blocks import run_blocks

GALLERY_CHUNK = 65536
QUERY_TILE = 64       # query rows per BLAS call (euclidean_into)
BYTES_PER_ITEM = 8    # the float32 distance block, with room for the matmul's chunk copies


def _features(name: str, x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0:
        raise DataError(f"{name} must be a non-empty [N, D] array, got shape {x.shape}")
    return x


def euclidean_into(out: np.ndarray, q: np.ndarray, gallery: np.ndarray,
                   gallery_sq: np.ndarray, chunk: int = GALLERY_CHUNK,
                   first_row: int = 0) -> np.ndarray:
    """float32 Euclidean distances of queries q [B, D] to the gallery, written into out [B, G].

    The gallery is read chunk by chunk (it may be a memory map). BLAS's
    float32 products depend on the shape of the call (measured: 1 in 4 to 1
    in 100 distances differ in the last bit between query blocks of 1, 5,
    64, 250 and 500 rows), so the products are always taken in tiles of
    exactly QUERY_TILE query rows times one gallery chunk, into a contiguous
    buffer, query i (i = first_row + its row in q, its index in the whole
    query set) always at row i % QUERY_TILE of its tile, the rows of other
    blocks zero: a query's distances are then the same bits whatever block
    it comes in (tested), which is what makes the blockwise evaluation equal
    the dense one, ties included.
    """
    q = np.asarray(q, np.float32)
    q_sq = np.einsum("ij,ij->i", q, q)
    tile = np.zeros((QUERY_TILE, q.shape[1]), np.float32)
    prod = np.empty((QUERY_TILE, min(chunk, gallery.shape[0])), np.float32)
    # Row ranges [t, u) of q that share a tile, and their first row in it.
    bounds = []
    t = 0
    while t < len(q):
        at = (first_row + t) % QUERY_TILE
        u = min(len(q), t + QUERY_TILE - at)
        bounds.append((t, u, at))
        t = u
    for s in range(0, gallery.shape[0], chunk):
        e = min(s + chunk, gallery.shape[0])
        g_t = np.asarray(gallery[s:e], np.float32).T
        for t, u, at in bounds:
            tile[:] = 0.0
            tile[at:at + u - t] = q[t:u]
            p = prod[:, :e - s]
            np.matmul(tile, g_t, out=p)
            block = out[t:u, s:e]
            np.multiply(p[at:at + u - t], np.float32(-2.0), out=block)
            block += gallery_sq[None, s:e]
            block += q_sq[t:u, None]
            np.maximum(block, np.float32(0.0), out=block)
            np.sqrt(block, out=block)
    return out


def euclidean(query_features: np.ndarray, gallery_features: np.ndarray) -> np.ndarray:
    """The dense float32 [Q, G] matrix of the same distances (for galleries that fit)."""
    q = _features("query_features", query_features)
    g = _features("gallery_features", gallery_features)
    g_sq = np.einsum("ij,ij->i", np.asarray(g, np.float32), np.asarray(g, np.float32))
    return euclidean_into(np.empty((len(q), len(g)), np.float32), q, g, g_sq)


def query_block_size(num_gallery: int, memory_gb: float, threads: int) -> int:
    """Queries per block so that `threads` blocks in flight stay within `memory_gb`."""
    return int(max(1, min(4096, memory_gb * 1e9 // (BYTES_PER_ITEM * num_gallery * threads))))


def evaluate_features(query_features: np.ndarray, query_pids: np.ndarray,
                      query_camids: np.ndarray, gallery_features: np.ndarray,
                      gallery_pids: np.ndarray, gallery_camids: np.ndarray, *,
                      ap: str = "official", max_rank: int = 50, memory_gb: float = 2.0,
                      query_block: Optional[int] = None, threads: Optional[int] = None,
                      rerank_top: int = 0, candidates: Optional[np.ndarray] = None,
                      k1: int = 20, k2: int = 6, lambda_value: float = 0.3
                      ) -> metrics.EvalResult:
    """Single-query CMC and mAP on Euclidean distances of features, blockwise (module doc).

    Args:
      query_features: float [Q, D]; query_pids, query_camids: int [Q].
      gallery_features: float [G, D] (a memory map works); gallery_pids,
        gallery_camids: int [G] (-1 junk, 0 distractor).
      ap, max_rank: as `metrics.evaluate`.
      memory_gb: budget for the blocks in flight (the gallery features not counted).
      query_block: queries per block (default: from memory_gb).
      threads: blocks in flight (numpy releases the GIL); default 1, since
        the matmul already uses every core through BLAS (docs/PERFORMANCE.md).
      rerank_top: > 0: k-reciprocal re-ranking of a shortlist of this many
        gallery items per query (module doc); candidates: int [Q, S] shortlist
        (e.g. from `GalleryIndex.search`) instead of the exact top rerank_top.
      k1, k2, lambda_value: re-ranking parameters.
    Returns:
      metrics.EvalResult over all queries.
    Raises:
      ConfigError: bad sizes; DataError: shapes that disagree, no valid query.
    """
    q = _features("query_features", query_features)
    g = _features("gallery_features", gallery_features)
    if q.shape[1] != g.shape[1]:
        raise DataError(f"query_features dim {q.shape[1]} != gallery_features dim {g.shape[1]}")
    nq, ng = len(q), len(g)
    qp, qc = np.asarray(query_pids), np.asarray(query_camids)
    gp, gc = np.asarray(gallery_pids), np.asarray(gallery_camids)
    for name, arr, n in (("query_pids", qp, nq), ("query_camids", qc, nq),
                         ("gallery_pids", gp, ng), ("gallery_camids", gc, ng)):
        if arr.shape != (n,):
            raise DataError(f"{name} must have shape ({n},), got {arr.shape}")
    if memory_gb <= 0:
        raise ConfigError(f"memory_gb must be > 0, got {memory_gb}")
    if rerank_top < 0 or (candidates is not None and np.shape(candidates)[0] != nq):
        raise ConfigError(f"rerank_top must be >= 0 and candidates [{nq}, S], got {rerank_top}, "
                          f"{np.shape(candidates)}")
    threads = 1 if threads is None else threads
    if threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    if rerank_top or candidates is not None:
        threads = 1          # re-ranking runs its own two threads
    block = query_block or query_block_size(ng, memory_gb, threads)
    if block < 1:
        raise ConfigError(f"query_block must be >= 1, got {block}")
    if block > QUERY_TILE:      # whole tiles per block (euclidean_into)
        block -= block % QUERY_TILE
    if ap not in metrics.AP_MODES:
        raise ConfigError(f"ap must be one of {metrics.AP_MODES}, got {ap!r}")
    if max_rank < 1:
        raise ConfigError(f"max_rank must be >= 1, got {max_rank}")
    qp, qc, gp, gc = (_integer_ids(name, arr) for name, arr in (
        ("query_pids", qp), ("query_camids", qc), ("gallery_pids", gp), ("gallery_camids", gc)))
    if not np.all(np.isfinite(q)):
        raise DataError("query_features has non-finite values")
    g_sq = np.empty(ng, np.float32)
    for s in range(0, ng, GALLERY_CHUNK):
        chunk = np.asarray(g[s:s + GALLERY_CHUNK], np.float32)
        g_sq[s:s + len(chunk)] = np.einsum("ij,ij->i", chunk, chunk)
    if not np.all(np.isfinite(g_sq)):
        raise DataError("gallery_features has non-finite values")
    labels = GalleryLabels(gp, gc)
    ap_out = np.full(nq, np.nan)
    first = np.full(nq, -1, np.int64)
    inp = np.full(nq, np.nan)
    starts = list(range(0, nq, block))

    def one_block(start: int) -> int:       # writes its own rows of ap_out / first / inp
        stop = min(start + block, nq)
        dist = euclidean_into(np.empty((stop - start, ng), np.float32), q[start:stop], g, g_sq,
                              first_row=start)
        if rerank_top or candidates is not None:
            cand = (np.asarray(candidates[start:stop], np.int64) if candidates is not None
                    else np.argpartition(dist, min(rerank_top, ng) - 1, axis=1)[:, :rerank_top])
            dist = _apply_rerank(dist, q[start:stop], g, cand, k1, k2, lambda_value)
        rows, pos = good_positions(dist, qp[start:stop], qc[start:stop], labels)
        metrics.block_ap(rows, pos, ap, ap_out[start:stop], first[start:stop],
                         inp[start:stop])
        return stop - start

    run_blocks(one_block, starts, threads)
    return metrics._finish(ap_out, first, ap, max_rank, inp=inp)


def _integer_ids(name: str, arr: np.ndarray) -> np.ndarray:
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr)):
            return arr.astype(np.int64)
        raise DataError(f"{name} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


class GalleryLabels:
    """The gallery's ids and cameras grouped by id, for the per-query good/junk sets."""

    def __init__(self, gallery_pids: np.ndarray, gallery_camids: np.ndarray):
        self.pids = gallery_pids
        self.camids = gallery_camids
        self.order = np.argsort(gallery_pids, kind="stable")   # ascending index within an id
        self.ids, self.first = np.unique(gallery_pids[self.order], return_index=True)
        self.last = np.append(self.first[1:], len(self.order))
        self.junk = np.flatnonzero(gallery_pids == -1)        # junk for every query

    def same_id(self, pid: int) -> np.ndarray:
        """Gallery indices (ascending) with id `pid`."""
        i = int(np.searchsorted(self.ids, pid))
        if i == len(self.ids) or self.ids[i] != pid:
            return self.order[:0]
        return self.order[self.first[i]:self.last[i]]


def good_positions(dist: np.ndarray, query_pids: np.ndarray, query_camids: np.ndarray,
                   labels: GalleryLabels) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the good matches of a block of queries, by counting (module doc).

    Args:
      dist: float32 [B, G] distances (finite); overwritten at gallery junk (+inf).
      query_pids, query_camids: int [B].
      labels: the gallery's.
    Returns:
      rows int64 [M], pos int64 [M]: every good match's query row in the block
      and its 0-based position among that row's non-junk items (ties by
      gallery index), as `metrics._good_positions` on the same block.
    """
    if labels.junk.size:
        dist[:, labels.junk] = np.inf
    all_rows, all_pos = [], []
    for r in range(dist.shape[0]):
        pid, cam = int(query_pids[r]), int(query_camids[r])
        if pid == -1:
            continue                      # its same-id items are all junk
        same = labels.same_id(pid)
        same_cam = labels.camids[same] == cam
        good, junk = same[~same_cam], same[same_cam]
        if good.size == 0:
            continue
        row = dist[r]
        v = row[good]
        if not np.all(np.isfinite(v)):
            raise DataError(f"non-finite distances for query row {r} of a block")
        order = np.lexsort((good, v))     # by value, then gallery index: ranked order
        good, v = good[order], v[order]
        closer = np.sort(row[row <= v[-1]])
        less = np.searchsorted(closer, v, side="left")
        equal = np.searchsorted(closer, v, side="right") - less
        pos = less.astype(np.int64)
        for t in np.flatnonzero(equal > 1):     # a tie with another item: the index rule
            pos[t] += int(np.count_nonzero(row[:good[t]] == v[t]))
        if junk.size:
            jv = row[junk]
            before = (jv[None, :] < v[:, None]) | ((jv[None, :] == v[:, None]) &
                                                   (junk[None, :] < good[:, None]))
            pos -= before.sum(axis=1)
        all_rows.append(np.full(len(pos), r, np.int64))
        all_pos.append(pos)
    if not all_rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(all_rows), np.concatenate(all_pos)


def _empty(n: int, ap: str, max_rank: int) -> metrics.EvalResult:
    """A block none of whose queries has a good match (kept for the query count)."""
    return metrics.EvalResult(cmc=np.zeros(max_rank), mAP=float("nan"), ap_mode=ap,
                              num_query=n, num_valid=0, num_invalid=n, ap=np.full(n, np.nan),
                              first_match=np.full(n, -1, np.int64), inp=np.full(n, np.nan))


def rerank_shortlist(query_features: np.ndarray, gallery_features: np.ndarray,
                     candidates: np.ndarray, *, k1: int = 20, k2: int = 6,
                     lambda_value: float = 0.3) -> np.ndarray:
    """Re-ranked distances float32 [Q, S] of each query to its candidate gallery rows.

    All queries given are re-ranked together against the union of their
    candidates (module doc: an approximation of re-ranking the whole gallery).
    """
    from mgcam_tf.evaluation import rerank

    cand = np.asarray(candidates, np.int64)
    if cand.ndim != 2 or cand.shape[0] != len(query_features) or cand.size == 0:
        raise ConfigError(f"candidates must be [Q, S] with Q = {len(query_features)}, "
                          f"got {cand.shape}")
    union, inverse = np.unique(cand[cand >= 0], return_inverse=True)
    sub = np.asarray(gallery_features[union], np.float32)
    final = rerank.rerank(np.asarray(query_features, np.float32), sub, k1=k1, k2=k2,
                          lambda_value=lambda_value)
    cols = np.full(cand.shape, -1, np.int64)
    cols[cand >= 0] = inverse
    out = np.take_along_axis(final, np.maximum(cols, 0), axis=1)
    out[cols < 0] = np.inf
    return out


def _apply_rerank(dist: np.ndarray, q: np.ndarray, g: np.ndarray, cand: np.ndarray,
                  k1: int, k2: int, lambda_value: float) -> np.ndarray:
    """The block's distances with its shortlist re-ranked and the rest ranked after it."""
    reranked = rerank_shortlist(q, g, cand, k1=k1, k2=k2, lambda_value=lambda_value)
    finite = reranked[np.isfinite(reranked)]
    offset = np.float32((finite.max() if finite.size else 0.0) + 1.0)
    dist += offset          # everything outside the shortlist after it, in its own order
    rows = np.repeat(np.arange(len(cand)), cand.shape[1])
    keep = cand.ravel() >= 0
    dist[rows[keep], cand.ravel()[keep]] = reranked.ravel()[keep]
    return dist
