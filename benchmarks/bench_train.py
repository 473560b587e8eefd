"""Training throughput of MGCAM on this machine, against a baseline, a large
matmul and PyTorch, all measured in the same run.

    python benchmarks/bench_train.py                      # batch 128, 160x64x4
    python benchmarks/bench_train.py --precision=float32 --rounds=8

What is measured, in rounds (the machine may be shared: every figure is a
median over rounds that alternate between the contenders, so that a change
of load touches them all alike):
  ours      mgcam_tf as `mgcam-train` runs it: build_model + compile + fit,
            fed by the real input pipeline (mgcam_tf.data.pipeline.train_dataset
            on the built-in synthetic data set, decoded samples cached in
            memory, random mirror), batch 128, all four losses of stage 1
            (identity x3, region triplet, attention; weight decay, bias lr x2).
            Only steps that follow one of ours are timed, so the pipeline
            cannot prefetch during the other contenders' turns.
  baseline  a plain tf.function training step of the same architecture built
            from stock Keras layers (Conv2D, BatchNormalization), float32,
            on synthetic tensors: where mgcam_tf started (docs/PERFORMANCE.md: ~83 images/s
            on a quiet 2-core machine).
  matmul    a 4096^3 tf.matmul, float32 (and bfloat16, for reference).
  torch     benchmarks/torch_mgcam.py: the same network, losses and solver in
            PyTorch eager (channels_last, in a child process of its own),
            in float32 and, when ours runs
            mixed_bfloat16, with bfloat16 autocast too: torch_images_per_s is
            the faster of the two.

flop_utilisation = images_per_s * model FLOPs per training image / float32
matmul FLOP/s. Model FLOPs: the convolutions and FC layers, 2 per
multiply-add, forward x 3 for a training step (forward, input gradients,
weight gradients) = 1.245 GFLOP per image at 751 ids.

The last line of output is one JSON object with images_per_s,
flop_utilisation, matmul_gflops and torch_images_per_s (and more).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402

from mgcam_tf.modeling import models
from mgcam_tf.training import solver as schedule
from mgcam_tf.training import task  # noqa: E402
from mgcam_tf.data import layouts, pipeline, synthetic  # noqa: E402
from mgcam_tf.modeling.objective import MGCAMObjective  # noqa: E402

H, W = 160, 64


def cpu_has_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def forward_flops(num_ids: int) -> float:
    """Multiply-adds x 2 of one image's forward pass (convolutions and FC)."""

    def conv(h, w, k, cin, cout):
        return 2.0 * h * w * k * k * cin * cout

    def stage(h, w, cin):
        return 3 * conv(h, w, 3, cin, 32)

    trunk = conv(H, W, 5, 4, 32) + stage(80, 32, 32) + stage(40, 16, 96)
    attention = conv(40, 16, 3, 96, 1)
    stream = stage(20, 8, 96) + stage(10, 4, 96) + 2.0 * (960 * 128 + 128 * num_ids)
    return trunk + attention + 3 * stream


# -- the baseline: stock Keras layers, plain tf.function step --------------------

def baseline_model(num_ids: int) -> keras.Model:
    """MGCAM from stock Keras layers (paper Section 3), float32."""

    def bn():
        return layers.BatchNormalization(center=False, scale=False, epsilon=1e-5,
                                         momentum=0.999)

    def stage(x):
        return layers.ReLU()(layers.Concatenate()([
            bn()(layers.Conv2D(32, 3, padding="same", dilation_rate=r)(x))
            for r in (1, 2, 3)]))

    pool = layers.MaxPooling2D(2, 2)
    inp = keras.Input((H, W, 4))
    x = pool(layers.ReLU()(bn()(layers.Conv2D(32, 5, padding="same")(inp))))
    f = stage(pool(stage(x)))
    phi = layers.Conv2D(1, 3, padding="same", activation="sigmoid")(f)
    outputs = {"attention": phi}
    for name, feats in (("full", f), ("body", f * phi), ("bgd", f * (1.0 - phi))):
        x = pool(stage(pool(stage(pool(feats)))))
        h = layers.Dense(128)(layers.Flatten()(x))
        outputs["h_" + name] = h
        outputs["logits_" + name] = layers.Dense(num_ids)(layers.Dropout(0.2)(h))
    return keras.Model(inp, outputs)


def baseline_step(num_ids: int):
    model = baseline_model(num_ids)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    objective = MGCAMObjective()
    kernels = [v for v in model.trainable_variables if v.path.endswith("kernel")]

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            outputs = model(x, training=True)
            loss = objective(y, outputs)["total"] + 0.0025 * tf.add_n(
                [tf.reduce_sum(tf.square(k)) for k in kernels])
        grads = tape.gradient(loss, model.trainable_variables)
        grads = [g * 2.0 if v.path.endswith("bias") else g
                 for g, v in zip(grads, model.trainable_variables)]
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return step


# -- matmul --------------------------------------------------------------------

def matmul_fn(n: int, dtype):
    a = tf.random.normal((n, n), dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(tf.transpose(a), dtype)

    @tf.function
    def run():
        return tf.reduce_sum(tf.cast(tf.matmul(a, b)[:1, :1], tf.float32))

    return run


class TorchWorker:
    """benchmarks/torch_mgcam.py --serve in a child process: steps on request.

    A process of its own, so that PyTorch's OpenMP threads and TensorFlow's
    thread pools (and tf.data's) never share one; while it runs, this
    process waits.
    """

    def __init__(self, batch: int, bf16: bool, num_ids: int):
        cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                            "torch_mgcam.py"),
               "--serve", "--batch", str(batch), "--num_ids", str(num_ids)]
        if bf16:
            cmd.append("--bf16")
        # Passive OpenMP waits: with the default (active spinning) PyTorch's
        # 2 threads collapse to less than half their speed as soon as another
        # process wants a core (measured: 18 vs 39-44 images/s on a loaded
        # 2-core machine); on a quiet one passive costs next to nothing.
        env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        json.loads(self.proc.stdout.readline())  # built and warmed up

    def steps(self, n: int) -> list[float]:
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


class Interleave(keras.callbacks.Callback):
    """Times ours' steps inside fit; every `steps` of ours, runs the others."""

    def __init__(self, steps: int, rounds: int, others: dict, warmup: int):
        super().__init__()
        self.steps, self.rounds, self.others, self.warmup = steps, rounds, others, warmup
        self.times = {"ours": [], **{k: [] for k in others}}
        self.batch_start = None
        self.count = 0
        self.fresh = True  # the step after the others' turn is not timed

    def on_train_batch_begin(self, batch, logs=None):
        self.batch_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        float(logs["loss"])  # waits for the step
        elapsed = time.perf_counter() - self.batch_start
        self.count += 1
        if self.count <= self.warmup:
            return
        if not self.fresh:
            self.times["ours"].append(elapsed)
        self.fresh = False
        done = self.count - self.warmup
        if done % self.steps == 0:
            for name, (fn, reps) in self.others.items():
                if isinstance(fn, TorchWorker):
                    self.times[name].extend(fn.steps(reps))
                else:
                    self.times[name].extend(timed(fn) for _ in range(reps))
            self.fresh = True
            if done // self.steps >= self.rounds:
                self.model.stop_training = True


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--precision", default="auto",
                        choices=["auto", "float32", "mixed_bfloat16"],
                        help="ours' dtype policy; auto: mixed_bfloat16 where the CPU has "
                             "AVX512_BF16 or AMX, else float32")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4, help="ours' steps per round")
    parser.add_argument("--ids", type=int, default=751, help="classifier size")
    parser.add_argument("--synthetic_ids", type=int, default=100)
    parser.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(),
                                                           "mgcam_bench_data"))
    parser.add_argument("--no_torch", action="store_true")
    parser.add_argument("--jit_compile", action="store_true", help="ours' step under XLA")
    args = parser.parse_args()
    precision = args.precision
    if precision == "auto":
        precision = "mixed_bfloat16" if cpu_has_bf16() else "float32"
    load_before = os.getloadavg()

    root = synthetic.write_synthetic_market(args.data_dir, num_train_ids=args.synthetic_ids,
                                            seed=0)
    split = layouts.load_dataset(str(root)).train
    dataset = pipeline.train_dataset(split, args.batch, seed=0, cache="memory",
                                     drop_remainder=True)
    # The pipeline yields pids of the synthetic set; the classifier has --ids outputs.
    keras.utils.set_random_seed(0)
    network = models.build_model(args.ids, mixed_precision=precision)
    model = task.build_task(network, schedule.SolverConfig(), MGCAMObjective(),
                            jit_compile=args.jit_compile)

    rng = np.random.RandomState(0)
    x = tf.constant(rng.randn(args.batch, H, W, 4).astype("float32"))
    y = {"pid": tf.constant(rng.randint(0, args.ids, args.batch).astype("int32")),
         "attention_target": tf.constant(rng.rand(args.batch, 40, 16, 1).astype("float32"))}
    base = baseline_step(args.ids)
    n = 4096
    mm32, mm16 = matmul_fn(n, tf.float32), matmul_fn(n, tf.bfloat16)
    others = {"baseline": (lambda: float(base(x, y)), 2),
              "matmul_f32": (lambda: float(mm32()), 3),
              "matmul_bf16": (lambda: float(mm16()), 3)}
    torch_info, workers = {}, []
    if not args.no_torch:
        try:
            import torch  # noqa: F401  (only to know that it is there)
        except ImportError as err:
            torch_info["torch_error"] = str(err)
        else:
            bf16 = precision == "mixed_bfloat16"
            workers.append(TorchWorker(args.batch, bf16, args.ids))
            others["torch"] = (workers[-1], 2)
            if bf16:
                workers.append(TorchWorker(args.batch, False, args.ids))
                others["torch_f32"] = (workers[-1], 2)
    for fn, _ in others.values():  # traces / first-call costs out of the way
        if not isinstance(fn, TorchWorker):
            fn()
    interleave = Interleave(args.steps, args.rounds, others, warmup=2)
    try:
        model.fit(dataset, epochs=1, steps_per_epoch=10 ** 6, callbacks=[interleave],
                  verbose=0)
    finally:
        for worker in workers:
            worker.close()

    def per_s(name, work):
        return work / float(np.median(interleave.times[name]))

    flops_image = 3.0 * forward_flops(args.ids)
    images = per_s("ours", args.batch)
    matmul = per_s("matmul_f32", 2.0 * n ** 3)
    result = {
        "images_per_s": round(images, 1),
        "flop_utilisation": round(images * flops_image / matmul, 3),
        "matmul_gflops": round(matmul / 1e9, 1),
        # torch's faster precision (its bfloat16 autocast can be the slower one).
        "torch_images_per_s": (round(max(per_s(k, args.batch) for k in ("torch", "torch_f32")
                                         if k in interleave.times), 1)
                               if "torch" in interleave.times else None),
        "precision": precision,
        "jit_compile": args.jit_compile,
        "baseline_images_per_s": round(per_s("baseline", args.batch), 1),
        "speedup_vs_baseline": round(images / per_s("baseline", args.batch), 2),
        "matmul_bf16_gflops": round(per_s("matmul_bf16", 2.0 * n ** 3) / 1e9, 1),
        "gflop_per_training_image": round(flops_image / 1e9, 3),
        "batch": args.batch,
        "timed_steps": len(interleave.times["ours"]),
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "cpus": os.cpu_count(),
        **torch_info,
    }
    if "torch_f32" in interleave.times:
        result["torch_bf16_images_per_s"] = round(per_s("torch", args.batch), 1)
        result["torch_f32_images_per_s"] = round(per_s("torch_f32", args.batch), 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
