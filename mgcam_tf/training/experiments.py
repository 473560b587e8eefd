"""The paper's two training stages as configurations (SPEC §4), the one place their numbers live.

As keras-hub presets and Model Garden's `exp_factory` do, commands ask this
module for a stage's defaults instead of writing them out: stage 1 "MGCAM"
(random batches, no Siamese loss) and stage 2 "MGCAM-Siamese" (pair
batches, started from stage 1, with the Siamese loss).
"""

from __future__ import annotations

import dataclasses

from mgcam_tf.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Stage:
    """Solver and schedule of one stage (official solver files; stage 2's rate is the paper's)."""

    total_steps: int
    base_lr: float
    lr_step: int
    siamese: bool


STAGES = {
    "1": Stage(total_steps=75000, base_lr=0.01, lr_step=15000, siamese=False),
    # The paper gives lr 0.001 for stage 2; the official solver file 0.0001.
    "2": Stage(total_steps=20000, base_lr=0.001, lr_step=10000, siamese=True),
}


def stage(name: str) -> Stage:
    """The defaults of stage "1" or "2"."""
    if name not in STAGES:
        raise ConfigError(f"stage must be one of {sorted(STAGES)}, got {name!r}")
    return STAGES[name]
