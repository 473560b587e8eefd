"""The one path from features to distances to metrics (fast-reid's evaluator shape).

`ReidEvaluator` is what `mgcam-eval`, the evaluation after `mgcam-train` and
the evaluation callback of training all call: features of the query and
gallery items (`SplitFeatures`), a distance (`distances.METRICS`), then CMC
and mAP under a protocol (`PROTOCOLS`).

Protocols:
  "single_query"  the data set's own query/gallery split (Market-1501's `evaluation.m` rules).
  "all_queries"   every test item (query and gallery together) is in turn the
                  query against the items of the other cameras. On CUHK03
                  pair 1 this makes 975 queries instead of 200: steps of 0.1
                  rank-1 points instead of 0.5. Computed camera by camera
                  (queries of camera c against every item not of camera c)
                  and reported as one set of queries, in query-then-gallery
                  order.
  "cuhk03_classic" the data set's split, the CMC averaged over galleries of
                  one random item per identity (`cuhk03_classic`: torchreid's
                  `eval_cuhk03`, 10 trials, seeded).

Conventions of the published code that change the figures, each a setting
here (docs/EVALUATION.md says which code does what): the training pairs
and XQDA form of the learned metrics (`distances`), L2-normalised
features (`normalize`: Zhong et al.'s evaluation scripts normalise before
every metric), the rounding of re-ranking's k1 / 2 (`rerank.HALF_ROUNDINGS`)
and queries without a match (`metrics.NO_MATCH_RULES`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from mgcam_tf.errors import ConfigError
from mgcam_tf.evaluation import cuhk03_classic, distances, large_scale, metrics, rerank
from mgcam_tf.evaluation.features import SplitFeatures

PROTOCOLS = ("single_query", "all_queries", "cuhk03_classic")


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """What an evaluation returns: the metrics and the inputs that produced them."""

    result: metrics.EvalResult
    metric: str
    protocol: str
    ap: str

    def summary(self) -> dict[str, float]:
        return self.result.summary()


def l2_normalized(items: SplitFeatures) -> SplitFeatures:
    """The items with each feature scaled to unit L2 norm (zero vectors kept)."""
    x = np.asarray(items.features, np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return dataclasses.replace(items, features=x / np.where(norm > 0, norm, 1.0))


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
    pairs, xqda_form: the learned metrics' training pairs and XQDA form
      (`distances.PAIR_RULES`, `distances.XQDA_FORMS`).
    normalize: L2-normalise every feature (train too) before the metric.
    half_rounding: re-ranking's rounding of k1 / 2 (`rerank.HALF_ROUNDINGS`).
    no_match: queries without a good match (`metrics.NO_MATCH_RULES`).
    seed: KISSME's sampled pairs and the cuhk03_classic draws.
    trials: galleries drawn per query by cuhk03_classic.
    The defaults are the library's own conventions (module doc).
    """

    def __init__(self, metric: str = "euclidean", ap: str = "official",
                 protocol: str = "single_query", *, k1: int = 20, k2: int = 6,
                 lambda_value: float = 0.3, pairs: str = "all", xqda_form: str = "paper",
                 normalize: bool = False, half_rounding: str = "python",
                 no_match: str = "exclude", seed: int = 0,
                 trials: int = cuhk03_classic.DEFAULT_TRIALS):
        distances.parse_metric(metric)  # raises ConfigError on an unknown name
        if ap not in metrics.AP_MODES:
            raise ConfigError(f"ap must be one of {metrics.AP_MODES}, got {ap!r}")
        if protocol not in PROTOCOLS:
            raise ConfigError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        distances.check_learning_options(pairs, xqda_form)
        rerank.half_size(k1, half_rounding)
        metrics.check_no_match(no_match)
        cuhk03_classic.check_trials(trials)
        self.metric, self.ap, self.protocol = metric, ap, protocol
        self.rerank_args = dict(k1=k1, k2=k2, lambda_value=lambda_value,
                                half_rounding=half_rounding)
        self.metric_args = dict(pairs=pairs, xqda_form=xqda_form, seed=seed)
        self.normalize, self.no_match = normalize, no_match
        self.seed, self.trials = seed, trials

    def distances(self, query: SplitFeatures, gallery: SplitFeatures,
                  train: SplitFeatures | None = None,
                  progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """float32 [Q, G] distances of the single-query protocol's queries to its gallery."""
        if self.normalize:
            query, gallery = l2_normalized(query), l2_normalized(gallery)
            train = None if train is None else l2_normalized(train)
        return distances.compute_distances(
            query.features, gallery.features, self.metric,
            train_features=None if train is None else train.features,
            train_pids=None if train is None else train.pids,
            train_camids=None if train is None else train.camids, progress=progress,
            **self.metric_args, **self.rerank_args)

    def _runs(self, query: SplitFeatures, gallery: SplitFeatures):
        """(queries, gallery) pairs the protocol evaluates, in the order of its queries."""
        if self.protocol != "all_queries":
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

    def _blockwise(self, query: SplitFeatures, gallery: SplitFeatures) -> bool:
        """Whether to evaluate without the [Q, G] matrix (`large_scale`): Euclidean
        distances past DENSE_LIMIT entries, where the two paths give the same numbers."""
        return (self.metric == "euclidean" and self.protocol != "cuhk03_classic"
                and self.no_match == "exclude"
                and len(query.pids) * len(gallery.pids) > DENSE_LIMIT)

    def evaluate(self, query: SplitFeatures, gallery: SplitFeatures,
                 train: SplitFeatures | None = None, *, max_rank: int = 50,
                 progress: Callable[[int, int], None] | None = None) -> Evaluation:
        """One path for any gallery size: the dense distance matrix while it is small,
        `large_scale.evaluate_features` (blockwise, bounded memory) past DENSE_LIMIT."""
        results = []
        for q, g in self._runs(query, gallery):
            if self._blockwise(q, g):
                if self.normalize:
                    q, g = l2_normalized(q), l2_normalized(g)
                results.append(large_scale.evaluate_features(
                    q.features, q.pids, q.camids, g.features, g.pids, g.camids, ap=self.ap,
                    max_rank=max_rank))
                continue
            distmat = self.distances(q, g, train, progress)
            if self.protocol == "cuhk03_classic":
                results.append(cuhk03_classic.evaluate(
                    distmat, q.pids, q.camids, g.pids, g.camids, ap=self.ap,
                    max_rank=max_rank, trials=self.trials, seed=self.seed,
                    no_match=self.no_match))
            else:
                results.append(metrics.evaluate(distmat, q.pids, q.camids, g.pids, g.camids,
                                                ap=self.ap, max_rank=max_rank,
                                                no_match=self.no_match))
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


# Entries of the [Q, G] distance matrix (float32: 4 bytes each, 400 MB here) past which
# Euclidean evaluation goes blockwise: Market-1501 (3,368 x 15,913) stays dense.
DENSE_LIMIT = 100_000_000


def _subset(items: SplitFeatures, keep: np.ndarray) -> SplitFeatures:
    idx = np.nonzero(keep)[0]
    return SplitFeatures(items.features[idx], items.pids[idx], items.camids[idx],
                         tuple(items.paths[i] for i in idx))
