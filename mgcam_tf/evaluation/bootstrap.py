"""Paired bootstrap intervals of a metric difference between two models over the same queries.

Both models are evaluated on the same queries (same protocol, same order:
`EvalResult.ap` and `EvalResult.first_match`). Resampling queries with
replacement, the same resample for both models, gives the distribution of
the difference of their means; its 2.5 and 97.5 percentiles are the 95 %
interval. Queries without a good match (NaN AP) are left out of both.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mgcam_tf.errors import DataError


@dataclasses.dataclass(frozen=True)
class Difference:
    """b - a, in fractions: the observed difference and its bootstrap interval."""

    metric: str
    difference: float
    low: float
    high: float
    num_queries: int


def paired_bootstrap(a: np.ndarray, b: np.ndarray, *, metric: str = "", level: float = 0.95,
                     resamples: int = 10000, seed: int = 0) -> Difference:
    """Interval of mean(b) - mean(a) for per-query scores a, b [Q] (e.g. AP, or rank-1 hits 0/1)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise DataError(f"per-query scores must be two [Q] arrays of one length, got "
                        f"{a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    diff = b[keep] - a[keep]
    if diff.size == 0:
        raise DataError("no query has a score in both evaluations")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 1000):  # bounded memory: 1000 x Q indices at a time
        n = min(1000, resamples - start)
        idx = rng.integers(0, diff.size, size=(n, diff.size))
        means[start:start + n] = diff[idx].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Difference(metric, float(diff.mean()), float(low), float(high), int(diff.size))


def rank1_hits(first_match: np.ndarray) -> np.ndarray:
    """1.0 where the first good match is at rank 1, 0.0 elsewhere, NaN for invalid queries."""
    first = np.asarray(first_match)
    return np.where(first < 0, np.nan, (first == 0).astype(np.float64))
