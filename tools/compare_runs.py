"""Did two runs of one command train the same? Their losses step by step and their weights.

  python tools/compare_runs.py RUN_A RUN_B

For two mgcam-train model directories, prints the first logged step at which their
total training loss differs (and both values), each run's wall time per step, and
how many of the network's variables differ between their last checkpoints, with
the largest absolute difference. Training on CPU with oneDNN is not bitwise reproducible for one seed
(docs/RESULTS.md, "The same seed trained twice"); this is how that was measured.
Exit status 0 either way; 2 when a folder has no checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results_table  # noqa: E402  (tools/results_table.py)

LOSS = "loss/total"
NETWORK = ("model/", "optimizer/_trainable_variables/")


def _loss_points(run: str) -> list[list[float]]:
    """[[step, total loss, wall time]] of a run (its TensorBoard log or its record)."""
    return results_table.run_scalars(run).get(LOSS, [])


def seconds_per_step(run: str) -> float | None:
    """Wall time per step between the second and the last logged loss (the first
    logged step includes tracing the train step); None with fewer than three."""
    points = _loss_points(run)
    if len(points) < 3:
        return None
    (s0, _, t0), (s1, _, t1) = points[1], points[-1]
    return (t1 - t0) / (s1 - s0)


def first_loss_difference(run_a: str, run_b: str) -> tuple[int, float, float] | None:
    """(step, loss a, loss b) at the first step both logged with different total loss;
    None when every common step agrees."""
    losses = [{int(p[0]): p[1] for p in _loss_points(run)} for run in (run_a, run_b)]
    for step in sorted(set(losses[0]) & set(losses[1])):
        if losses[0][step] != losses[1][step]:
            return step, losses[0][step], losses[1][step]
    return None


def weight_differences(run_a: str, run_b: str) -> dict[str, float]:
    """{variable: largest absolute difference} of the network's variables in both last
    checkpoints, the optimizer's momenta left out."""
    import tensorflow as tf

    readers = []
    for run in (run_a, run_b):
        latest = tf.train.latest_checkpoint(os.path.join(run, "checkpoints"))
        if latest is None:
            raise FileNotFoundError(f"{run}: no checkpoint in {run}/checkpoints")
        readers.append(tf.train.load_checkpoint(latest))
    shapes_a, shapes_b = (r.get_variable_to_shape_map() for r in readers)
    # A variable is saved once, under the first path to it: Keras 3's optimizer reaches
    # the trainable weights first (`optimizer/_trainable_variables/<i>`), the network
    # itself only the rest (`model/...`: BatchNorm's moving statistics).
    names = [n for n in shapes_a if n.startswith(NETWORK) and n in shapes_b]
    out = {}
    for name in sorted(names):
        a, b = (np.asarray(r.get_tensor(name)) for r in readers)
        if a.dtype.kind in "fiu" and a.shape == b.shape:
            out[name] = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    args = parser.parse_args(argv)
    try:
        diffs = weight_differences(args.run_a, args.run_b)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    first = first_loss_difference(args.run_a, args.run_b)
    if first is None:
        print(f"{LOSS}: equal at every step both logged")
    else:
        print(f"{LOSS}: first differs at step {first[0]}: {first[1]!r} against {first[2]!r}")
    for run in (args.run_a, args.run_b):
        pace = seconds_per_step(run)
        if pace is not None:
            print(f"{run}: {pace:.3g} s per step")
    differ = [v for v in diffs.values() if v > 0]
    print(f"weights: {len(differ)} of {len(diffs)} variables differ; largest absolute "
          f"difference {max(diffs.values(), default=0.0):.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
