"""Distribution strategies and the chief/worker roles of a multi-worker run.
"""

from __future__ import annotations

import json
import os
import tensorflow as tf
from mgcam_tf.errors import ConfigError

def make_strategy(name: str) -> tf.distribute.Strategy:
    """auto: MultiWorkerMirroredStrategy when TF_CONFIG names several workers,
    MirroredStrategy with several GPUs, else the default strategy."""
    if name == "auto":
        tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
        workers = tf_config.get("cluster", {}).get("worker", [])
        if len(workers) > 1:
            name = "multi_worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ConfigError(f"strategy must be auto, default, mirrored or multi_worker, got {name!r}")


def task_id(strategy: tf.distribute.Strategy) -> int:
    """This worker's index in the cluster (0 without one)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return int(getattr(resolver, "task_id", None) or 0) if resolver is not None else 0


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in (None, "chief") or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict())
