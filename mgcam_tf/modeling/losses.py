"""The four MGCAM losses (paper eq. 5-8, SPEC §3), as pure functions of tensors.

Each returns a scalar averaged over the examples it is given (the local
batch, under a distribution strategy): dividing by the replica count is the
train step's job, not these functions'.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

from keras import ops

from mgcam_tf.errors import ConfigError


def squared_distance(a, b):
    """Squared Euclidean distance row by row: [B, D], [B, D] -> [B]."""
    return ops.sum(ops.square(a - b), axis=-1)


def identity_loss(pids, logits: Sequence):
    """L_id: softmax cross-entropy of each stream's logits, summed over the streams.

    pids: int [B]; logits: a sequence of [B, num_ids]. The official code
    gives the background stream the identity labels too.
    """
    total = 0.0
    for stream_logits in logits:
        total = total + ops.mean(ops.sparse_categorical_crossentropy(
            pids, ops.cast(stream_logits, "float32"), from_logits=True))
    return total


def attention_loss(target, phi_plus):
    """L_att (eq. 5) as Caffe's EuclideanLoss: 1/(2N) * sum over batch and map of (M - Phi+)^2.

    target, phi_plus: [B, 40, 16, 1], target in 0..1.
    """
    batch = ops.cast(ops.shape(phi_plus)[0], "float32")
    diff = ops.cast(target, "float32") - ops.cast(phi_plus, "float32")
    return ops.sum(ops.square(diff)) / (2.0 * batch)


def region_triplet_loss(h_full, h_body, h_bgd, margin: float = 10.0):
    """L_trip (eq. 6), within one image: anchor h_full, positive h_body, negative h_bgd.

    mean over the batch of ||h_full - h_body||^2 + max(m - ||h_full - h_bgd||^2, 0).
    Inputs: [B, D] each.
    """
    pull = squared_distance(h_full, h_body)
    push = ops.relu(margin - squared_distance(h_full, h_bgd))
    return ops.mean(pull + push)


def siamese_loss(h, pids, margin: float = 10.0):
    """L_sia (eq. 7) on interleaved pairs: example 2i is paired with example 2i + 1.

    ||h(p) - h(g)||^2 for a positive pair, max(m - ||h(p) - h(g)||^2, 0) for a
    negative one, averaged over the pairs. h: [2P, D]; pids: [2P].
    """
    dim = ops.shape(h)[-1]
    pairs = ops.reshape(h, (-1, 2, dim))
    pair_ids = ops.reshape(pids, (-1, 2))
    same = ops.cast(ops.equal(pair_ids[:, 0], pair_ids[:, 1]), "float32")
    dist = squared_distance(pairs[:, 0], pairs[:, 1])
    return ops.mean(same * dist + (1.0 - same) * ops.relu(margin - dist))


def caffe_contrastive_loss(a, b, similar, margin: float):
    """Caffe's ContrastiveLoss layer: 1/(2N) * sum of d^2 (similar) or max(m - d, 0)^2 (dissimilar).

    d is the Euclidean (not squared) distance. a, b: [B, D]; similar: [B] 0/1.
    """
    dist_sq = squared_distance(a, b)
    dist = ops.sqrt(ops.maximum(dist_sq, 1e-12))
    similar = ops.cast(similar, "float32")
    per_pair = similar * dist_sq + (1.0 - similar) * ops.square(ops.relu(margin - dist))
    return ops.mean(per_pair) / 2.0


def official_region_loss(h_full, h_body, h_bgd, pull_margin: float = 0.1,
                         push_margin: float = 100.0):
    """The official prototxt's stand-in for eq. 6: two ContrastiveLoss layers.

    body is pulled to full as a similar pair (margin 0.1, which Caffe's
    formula leaves unused for similar pairs), background pushed from full as a
    dissimilar pair with margin 100. Inputs: [B, D] each.
    """
    ones = ops.ones_like(h_full[:, 0])
    return (caffe_contrastive_loss(h_full, h_body, ones, pull_margin)
            + caffe_contrastive_loss(h_full, h_bgd, 0.0 * ones, push_margin))


REGION_LOSSES = ("paper", "official")
SIAMESE_LOSSES = ("paper", "official")


def official_siamese_loss(h, pids, margin: float = 10.0):
    """The official stage-2 net's Siamese loss: Caffe's ContrastiveLoss on interleaved pairs.

    1/(2P) * sum of d^2 (same id) or max(m - d, 0)^2 (different ids), d the
    plain (not squared) distance, m = 10. h: [2P, D]; pids: [2P].
    """
    dim = ops.shape(h)[-1]
    pairs = ops.reshape(h, (-1, 2, dim))
    pair_ids = ops.reshape(pids, (-1, 2))
    same = ops.equal(pair_ids[:, 0], pair_ids[:, 1])
    return caffe_contrastive_loss(pairs[:, 0], pairs[:, 1], same, margin)


@dataclasses.dataclass(frozen=True)
class MGCAMObjective:
    """Eq. 8: L = L_id + lambda * L_sia + alpha * L_trip + beta * L_att.

    Terms whose weight is zero, or whose inputs the model does not produce
    (the MSCAN-body baseline has no attention or body/background streams),
    are left out. Stage 1 trains with `siamese_weight=0`.
    """

    siamese_weight: float = 0.0
    triplet_weight: float = 0.01
    attention_weight: float = 0.1
    triplet_margin: float = 10.0
    siamese_margin: float = 10.0
    region_loss: str = "paper"
    siamese_loss: str = "paper"
    official_pull_margin: float = 0.1
    official_push_margin: float = 100.0

    def __post_init__(self):
        if self.region_loss not in REGION_LOSSES:
            raise ConfigError(f"region_loss must be one of {REGION_LOSSES}, "
                              f"got {self.region_loss!r}")
        if self.siamese_loss not in SIAMESE_LOSSES:
            raise ConfigError(f"siamese_loss must be one of {SIAMESE_LOSSES}, "
                              f"got {self.siamese_loss!r}")
        for field in ("siamese_weight", "triplet_weight", "attention_weight", "triplet_margin",
                      "siamese_margin", "official_pull_margin", "official_push_margin"):
            value = getattr(self, field)
            # `not value >= 0` is also true for NaN.
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not value >= 0:
                raise ConfigError(f"{field} must be a finite number >= 0, got {value!r}")

    def __call__(self, y: Mapping, outputs: Mapping) -> dict:
        """Returns each term and their weighted sum under `total`.

        y: {"pid": [B], "attention_target": [B, 40, 16, 1]}; outputs: the model's dict.
        """
        pids = y["pid"]
        streams = [outputs[k] for k in ("logits_full", "logits_body", "logits_bgd")
                   if k in outputs]
        terms = {"identity_loss": identity_loss(pids, streams)}
        total = terms["identity_loss"]
        has_regions = "h_body" in outputs
        if has_regions and self.triplet_weight > 0:
            h = [ops.cast(outputs[k], "float32") for k in ("h_full", "h_body", "h_bgd")]
            if self.region_loss == "paper":
                term = region_triplet_loss(*h, margin=self.triplet_margin)
            else:
                term = official_region_loss(*h, self.official_pull_margin,
                                            self.official_push_margin)
            terms["triplet_loss"] = term
            total = total + self.triplet_weight * term
        if "attention" in outputs and self.attention_weight > 0:
            terms["attention_loss"] = attention_loss(y["attention_target"],
                                                     outputs["attention"])
            total = total + self.attention_weight * terms["attention_loss"]
        if self.siamese_weight > 0:
            pair_loss = siamese_loss if self.siamese_loss == "paper" else official_siamese_loss
            terms["siamese_loss"] = pair_loss(ops.cast(outputs["h_full"], "float32"),
                                              pids, self.siamese_margin)
            total = total + self.siamese_weight * terms["siamese_loss"]
        terms["total"] = total
        return terms
