"""The one path from features to distances to metrics (fast-reid's evaluator shape).

`ReidEvaluator` is what `mgcam-eval`, the evaluation after `mgcam-train` and
the evaluation callback of training all call: features of the query and
gallery items (`SplitFeatures`), a distance (`distances.METRICS`), then CMC
and mAP under a protocol (`PROTOCOLS`).

Protocols:
  "single_query"  the data set's own query/gallery split (SPEC §5).
  "all_queries"   every test item (query and gallery together) is in turn the
                  query against the items of the other cameras. On CUHK03
                  pair 1 this makes 975 queries instead of 200: steps of 0.1
                  rank-1 points instead of 0.5. Computed camera by camera
                  (queries of camera c against every item not of camera c)
                  and reported as one set of queries, in query-then-gallery
                  order.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from mgcam_tf.errors import ConfigError
from mgcam_tf.evaluation import distances, metrics
from mgcam_tf.evaluation.features import SplitFeatures

PROTOCOLS = ("single_query", "all_queries")


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """What an evaluation returns: the metrics and the inputs that produced them."""

    result: metrics.EvalResult
    metric: str
    protocol: str
    ap: str

    def summary(self) -> dict[str, float]:
        return self.result.summary()


def combined(query: SplitFeatures, gallery: SplitFeatures) -> SplitFeatures:
    """Query and gallery items as one set (the all-queries protocol's items)."""
    return SplitFeatures(np.concatenate([query.features, gallery.features]),
                         np.concatenate([query.pids, gallery.pids]),
                         np.concatenate([query.camids, gallery.camids]),
                         tuple(query.paths) + tuple(gallery.paths))


class ReidEvaluator:
    """Distances and metrics for features of query and gallery items.

    metric: a name of `distances.METRICS` (learned ones need `train`).
    ap: "official" or "step" (see `metrics`).
    protocol: one of PROTOCOLS.
    """

    def __init__(self, metric: str = "euclidean", ap: str = "official",
                 protocol: str = "single_query", *, k1: int = 20, k2: int = 6,
                 lambda_value: float = 0.3):
        distances.parse_metric(metric)  # raises ConfigError on an unknown name
        if ap not in metrics.AP_MODES:
            raise ConfigError(f"ap must be one of {metrics.AP_MODES}, got {ap!r}")
        if protocol not in PROTOCOLS:
            raise ConfigError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.metric, self.ap, self.protocol = metric, ap, protocol
        self.rerank_args = dict(k1=k1, k2=k2, lambda_value=lambda_value)

    def distances(self, query: SplitFeatures, gallery: SplitFeatures,
                  train: SplitFeatures | None = None,
                  progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """float32 [Q, G] distances of the single-query protocol's queries to its gallery."""
        return distances.compute_distances(
            query.features, gallery.features, self.metric,
            train_features=None if train is None else train.features,
            train_pids=None if train is None else train.pids, progress=progress,
            **self.rerank_args)

    def _runs(self, query: SplitFeatures, gallery: SplitFeatures):
        """(queries, gallery) pairs the protocol evaluates, in the order of its queries."""
        if self.protocol == "single_query":
            return [(query, gallery)]
        items = combined(query, gallery)
        runs = []
        for cam in np.unique(items.camids):
            own = items.camids == cam
            runs.append((_subset(items, own), _subset(items, ~own)))
        if len(runs) < 2:
            raise ConfigError("the all_queries protocol needs test items of two cameras or "
                              "more; this test set has one")
        return runs

    def evaluate(self, query: SplitFeatures, gallery: SplitFeatures,
                 train: SplitFeatures | None = None, *, max_rank: int = 50,
                 progress: Callable[[int, int], None] | None = None) -> Evaluation:
        results = []
        for q, g in self._runs(query, gallery):
            distmat = self.distances(q, g, train, progress)
            results.append(metrics.evaluate(distmat, q.pids, q.camids, g.pids, g.camids,
                                            ap=self.ap, max_rank=max_rank))
        result = results[0] if len(results) == 1 else metrics.concatenate(results, max_rank)
        return Evaluation(result, self.metric, self.protocol, self.ap)

    def query_order(self, query: SplitFeatures, gallery: SplitFeatures) -> SplitFeatures:
        """The protocol's queries in the order of `Evaluation.result.ap`."""
        runs = self._runs(query, gallery)
        if len(runs) == 1:
            return runs[0][0]
        qs = [q for q, _ in runs]
        return SplitFeatures(np.concatenate([q.features for q in qs]),
                             np.concatenate([q.pids for q in qs]),
                             np.concatenate([q.camids for q in qs]),
                             sum((tuple(q.paths) for q in qs), ()))


def _subset(items: SplitFeatures, keep: np.ndarray) -> SplitFeatures:
    idx = np.nonzero(keep)[0]
    return SplitFeatures(items.features[idx], items.pids[idx], items.camids[idx],
                         tuple(items.paths[i] for i in idx))
