"""The training task: MGCAM's objective, its metrics and the solver's rules around a network.

As TF Model Garden's `official/core/base_task.py` separates `build_model`,
`build_losses` and `train_step` from the network, `TrainingTask` holds what
training adds to a `mgcam_tf.modeling.models.MGCAM` / `MSCANBody`: the
objective (eq. 8) and one metric per loss term and stream accuracy, Caffe's
weight decay, the biases' learning-rate multiplier, `train_step` /
`test_step`, and the Keras 3.15 workarounds for multi-worker training. It is
a `keras.Model` so that `fit` runs it (callbacks, distribution); the network
is its only sublayer and what checkpoints, exports and evaluation see.

Weight decay stays an explicit term here rather than Keras regularizers:
`l2(weight_decay / 2)` on every kernel would give the same update (the
gradient of 0.5 * wd * ||w||^2 is wd * w), but it would put a setting of the
solver (Caffe's `weight_decay`, different per stage in principle) into the
network's configuration and every saved `.keras` file, where an exported
model has no use for it.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from mgcam_tf.modeling.losses import centre_sums
from mgcam_tf.modeling.objective import MGCAMObjective
from mgcam_tf.training import solver

LOSS_TERMS = ("loss", "identity_loss", "triplet_loss", "attention_loss", "siamese_loss",
              "batch_hard_loss", "centre_loss")


class TrainingTask(keras.Model):
    """`network` (MGCAM or MSCAN-body) with its objective, for `compile` + `fit`.

    Args:
      network: a built model of `mgcam_tf.modeling.models`.
      objective: the loss terms and weights (default: stage 1's).
      weight_decay: Caffe's coupled L2 on kernels (not biases).
      bias_lr_mult: the biases' learning-rate multiplier (Caffe `lr_mult: 2`).

    Batches are `(x, y)`: x = {"rgbm": [B, 160, 64, 4]}, y = {"pid": [B],
    "attention_target": [B, 40, 16, 1]} (see `mgcam_tf.data.pipeline`).
    """

    def __init__(self, network: keras.Model, objective: MGCAMObjective | None = None,
                 weight_decay: float = 0.0, bias_lr_mult: float = 1.0, **kwargs):
        # The network's dtype policy: under mixed_float16, compile() wraps the
        # optimizer in a LossScaleOptimizer because of it.
        kwargs.setdefault("dtype", network.dtype_policy)
        super().__init__(**kwargs)
        self.network = network
        self.objective = objective or MGCAMObjective()
        self.weight_decay = float(weight_decay)
        self.bias_lr_mult = float(bias_lr_mult)
        # The centre loss's identity centres [num_ids, feature_dim]: training state, not
        # the network's (exports have no use for them), checkpointed beside it. Every
        # replica computes the same update from all-reduced sums; the first one's lands.
        self.centres = None
        if self.objective.centre_weight > 0:
            self.centres = self.add_weight(
                shape=(network.num_ids, network.feature_dim), initializer="zeros",
                trainable=False, autocast=False,
                aggregation="only_first_replica", name="identity_centres")
        streams = ["full"] if network.attention_mode == "none" else ["full", "body", "bgd"]
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in LOSS_TERMS}
        self.accuracy_trackers = {
            f"accuracy_{s}": keras.metrics.SparseCategoricalAccuracy(name=f"accuracy_{s}")
            for s in streams}
        # `metrics` reports only the terms this objective computes for this
        # network. Calling the task (not the network) also marks it built, which
        # `_maybe_symbolic_build` relies on.
        probe = self.objective_terms(
            {"pid": ops.zeros((2,), "int32"), "attention_target": ops.zeros((2, 40, 16, 1))},
            self(ops.zeros((2, 160, 64, 4)), training=False))
        self._active_losses = ("loss", *[k for k in probe if k != "total"])

    def call(self, inputs, training=None):
        return self.network(inputs, training=training)

    @property
    def metrics(self):
        trackers = getattr(self, "loss_trackers", None)
        if trackers is None:
            return []
        return [*(trackers[k] for k in self._active_losses), *self.accuracy_trackers.values()]

    def objective_terms(self, y, outputs) -> dict:
        """Each loss term and their weighted sum (`total`) for the network's outputs."""
        if self.network.attention_mode == "hard":
            # A fixed binary map has nothing to learn: no attention loss.
            outputs = {k: v for k, v in outputs.items() if k != "attention"}
        if self.centres is not None:
            outputs = {**outputs, "centres": ops.convert_to_tensor(self.centres)}
        return self.objective(y, outputs)

    def _move_centres(self, h, pids):
        """Wen et al.'s update, c_j -= alpha * sum_i (c_j - h_i) / (1 + n_j), over the
        global batch: the replicas' sums and counts are added first."""
        sums, counts = centre_sums(h, pids, self.centres)
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            sums, counts = context.all_reduce("sum", [sums, counts])
        self.centres.assign_sub(self.objective.centre_alpha * sums / (1.0 + counts[:, None]))

    def decay_term(self):
        """0.5 * weight_decay * sum of squared kernels (Caffe's L2; biases are not decayed)."""
        kernels = [v for v in self.trainable_variables if solver.is_decayed(v)]
        if not kernels or self.weight_decay == 0:
            return 0.0
        return 0.5 * self.weight_decay * ops.sum(
            ops.stack([ops.sum(ops.square(ops.cast(k, "float32"))) for k in kernels]))

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras (3.15, TF backend) draws a batch and all-reduces it across the
        # replicas before fit, only to build an unbuilt model symbolically;
        # under MultiWorkerMirroredStrategy that reduce fails on a dict batch.
        # The network is built and nothing is unbuilt but the optimizer.
        layers_built = all(layer.built for layer in self._flatten_layers())
        if layers_built and getattr(self, "_compile_metrics", None) is None:
            if self.optimizer is not None and not self.optimizer.built:
                with self.distribute_strategy.scope():
                    self.optimizer.build(self.trainable_variables)
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def _update_metrics(self, y, outputs, terms) -> dict:
        self.loss_trackers["loss"].update_state(terms["total"])
        for name, value in terms.items():
            if name != "total":
                self.loss_trackers[name].update_state(value)
        for name, tracker in self.accuracy_trackers.items():
            tracker.update_state(y["pid"], outputs["logits_" + name.split("_", 1)[1]])
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            outputs = self.network(x, training=True)
            terms = self.objective_terms(y, outputs)
            # Means over the local batch: gradients are summed across replicas.
            loss = (terms["total"] + self.decay_term()) / replicas
            scaled = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        if self.bias_lr_mult != 1.0:
            grads = [g * self.bias_lr_mult if solver.is_bias(v) else g
                     for g, v in zip(grads, variables)]
        self.optimizer.apply_gradients(zip(grads, variables))
        if self.centres is not None:
            self._move_centres(outputs["h_full"], y["pid"])
        if not isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            # oneDNN's ReLU maps NaN to 0, so a NaN input or weight can leave
            # the loss finite while the gradients (and then the weights) are
            # NaN: the logged loss carries their finiteness, for StopOnNaN.
            # (Under loss scaling an overflowing step is skipped, not fatal.)
            terms = {**terms, "total": terms["total"] + 0.0 * tf.linalg.global_norm(
                [tf.cast(g, "float32") for g in grads if g is not None])}
        logs = self._update_metrics(y, outputs, terms)
        logs["learning_rate"] = self.optimizer.learning_rate
        return _reducible_logs(logs)

    def test_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        outputs = self.network(x, training=False)
        return _reducible_logs(self._update_metrics(y, outputs, self.objective_terms(y, outputs)))


def _reducible_logs(logs: dict) -> dict:
    """Scalar logs, as [1] tensors under MultiWorkerMirroredStrategy.

    Keras (3.15, TF backend) reduces a step's logs across workers with
    `strategy.reduce("MEAN", value, axis=0)`, which fails on a scalar; the
    mean of [1]-shaped values over axis 0 and the replicas is the scalar.
    """
    strategy = tf.distribute.get_strategy()
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and \
        strategy.extended._in_multi_worker_mode()  # noqa: SLF001 (what Keras checks)
    if not multi_worker:
        return logs
    return {k: ops.reshape(ops.convert_to_tensor(v), (1,)) for k, v in logs.items()}


def build_task(network: keras.Model, solver_config: solver.SolverConfig,
               objective: MGCAMObjective, *, jit_compile: bool | str = False,
               total_steps: int | None = None) -> TrainingTask:
    """The compiled task of `network` under `solver_config` (call inside the strategy's scope).

    total_steps: the run's length (cosine decay and warmup need it)."""
    task = TrainingTask(network, objective, weight_decay=solver_config.coupled_weight_decay,
                        bias_lr_mult=solver_config.bias_lr_mult)
    task.compile(optimizer=solver.build_optimizer(solver_config, total_steps),
                 jit_compile=jit_compile)
    return task
