"""The MGCAM objective (paper eq. 8) as a configuration: which loss terms, with which weights.

It is a plain dataclass, importable without TensorFlow (the experiment
configuration and the command lines read it); calling it computes the terms
with the functions of `mgcam_tf.modeling.losses`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

from mgcam_tf.errors import ConfigError

REGION_LOSSES = ("paper", "official")
SIAMESE_LOSSES = ("paper", "official")


@dataclasses.dataclass(frozen=True)
class MGCAMObjective:
    """Eq. 8: L = L_id + lambda * L_sia + alpha * L_trip + beta * L_att
    (+ the batch-hard triplet term of the modern recipe when its weight is set).

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
    # The modern recipe's terms (Luo et al., CVPR-W 2019), off in the paper's.
    label_smoothing: float = 0.0
    batch_hard_weight: float = 0.0
    batch_hard_margin: float = 0.3
    # The centre loss (Wen et al., ECCV 2016) on h, Luo et al.'s optional term (their
    # weight 0.0005); the centres move by Wen et al.'s rule at rate centre_alpha.
    centre_weight: float = 0.0
    centre_alpha: float = 0.5

    def __post_init__(self):
        if self.region_loss not in REGION_LOSSES:
            raise ConfigError(f"region_loss must be one of {REGION_LOSSES}, "
                              f"got {self.region_loss!r}")
        if self.siamese_loss not in SIAMESE_LOSSES:
            raise ConfigError(f"siamese_loss must be one of {SIAMESE_LOSSES}, "
                              f"got {self.siamese_loss!r}")
        if isinstance(self.label_smoothing, bool) or not isinstance(
                self.label_smoothing, (int, float)) or not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be a number in [0, 1), "
                              f"got {self.label_smoothing!r}")
        for field in ("siamese_weight", "triplet_weight", "attention_weight", "triplet_margin",
                      "siamese_margin", "official_pull_margin", "official_push_margin",
                      "batch_hard_weight", "batch_hard_margin", "centre_weight"):
            value = getattr(self, field)
            # `not value >= 0` is also true for NaN.
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not value >= 0:
                raise ConfigError(f"{field} must be a finite number >= 0, got {value!r}")
        if isinstance(self.centre_alpha, bool) or not isinstance(
                self.centre_alpha, (int, float)) or not 0.0 < self.centre_alpha <= 1.0:
            raise ConfigError(f"centre_alpha must be a number in (0, 1], "
                              f"got {self.centre_alpha!r}")

    def __call__(self, y: Mapping, outputs: Mapping) -> dict:
        """Returns each term and their weighted sum under `total`.

        y: {"pid": [B], "attention_target": [B, 40, 16, 1]}; outputs: the model's dict,
        plus `centres` [num_ids, D] where the centre loss is on (the training task's).
        """
        from keras import ops

        from mgcam_tf.modeling.losses import (attention_loss, batch_hard_triplet_loss,
                                              centre_loss, identity_loss, official_region_loss,
                                              official_siamese_loss, region_triplet_loss,
                                              siamese_loss)

        pids = y["pid"]
        streams = [outputs[k] for k in ("logits_full", "logits_body", "logits_bgd")
                   if k in outputs]
        terms = {"identity_loss": identity_loss(pids, streams, self.label_smoothing)}
        total = terms["identity_loss"]
        if self.batch_hard_weight > 0:
            terms["batch_hard_loss"] = batch_hard_triplet_loss(outputs["h_full"], pids,
                                                               self.batch_hard_margin)
            total = total + self.batch_hard_weight * terms["batch_hard_loss"]
        if self.centre_weight > 0 and "centres" in outputs:
            terms["centre_loss"] = centre_loss(outputs["h_full"], pids, outputs["centres"])
            total = total + self.centre_weight * terms["centre_loss"]
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
